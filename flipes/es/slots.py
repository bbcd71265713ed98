"""Noise slots: which noise each evolved parameter of a model reads in a population.

A slot is one sample per member. A Flipout weight is one slot however many layers use it (tied
weights are one parameter, so one perturbation); its bias rides on the weight's noise when only
that weight uses it. Every other trainable parameter a population perturbs (norms, bare
parameters, a bias shared between weights) gets a dense slot: explicit per-member noise. A dense
module that also reads a Flipout weight reads that weight's slot, materialized per member.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from flipes.nn.base import PerturbedWeight
from flipes.nn.dense import PerMember

DenseSlot = tuple[nn.Module, str, nn.Parameter]  # (module, name, parameter): its first reader
WeightUse = tuple[nn.Module, str, int]  # (dense module, parameter name, Flipout slot): a Flipout weight read as a parameter


def dense_params(module: nn.Module, named: bool = False) -> list[Any]:
    """The trainable parameters ``module`` perturbs with dense noise (``(name, p)`` pairs if ``named``)."""
    if isinstance(module, PerMember):
        items = list(module.named_parameters(remove_duplicate=False))
    else:
        items = list(module.dense_parameters().items())
    items = [(name, p) for name, p in items if p.requires_grad]
    return items if named else [p for _, p in items]


def layout(pw: PerturbedWeight) -> tuple:
    """What two layers sharing a weight must agree on to share its perturbation (their biases may
    differ: a bias the weight's noise does not carry gets dense noise of its own)."""
    return (pw.in_channels, pw.out_channels, pw.conv_groups, pw.transposed)


def flipout_slots(
    layers: list[nn.Module], dense_owners: list[nn.Module]
) -> tuple[list[PerturbedWeight], dict[tuple[int, int], int]]:
    """Each perturbed weight of ``layers`` once (a weight tied between layers, or also read as a plain
    parameter by a dense module, is ONE sample per member), and the slot of every (id(layer), weight index)
    pair. A slot's noise carries a bias only
    if that bias is used with no other weight and has no dense use in ``dense_owners``; any other bias
    gets dense noise (:func:`dense_slots`)."""
    uses = [(layer, j, pw) for layer in layers for j, pw in enumerate(layer.perturbed_weights())]
    dense = {id(p): m for m in dense_owners for p in dense_params(m)}
    weights_of: dict[int, set[int]] = {}
    for _, _, pw in uses:
        if pw.bias is not None:
            weights_of.setdefault(id(pw.bias), set()).add(id(pw.weight))
    slots: list[PerturbedWeight] = []
    index: dict[tuple[int, int], int] = {}
    by_weight: dict[int, int] = {}
    for layer, j, pw in uses:
        i = by_weight.setdefault(id(pw.weight), len(slots))
        if i == len(slots):
            own = pw.bias is not None and weights_of[id(pw.bias)] == {id(pw.weight)} and id(pw.bias) not in dense
            slots.append(pw if own or pw.bias is None else dataclasses.replace(pw, bias=None))
        elif layout(pw) != layout(slots[i]):
            raise ValueError(
                f"FlipES: {type(layer).__name__} shares a weight of shape {tuple(pw.weight.shape)} with another "
                "layer that uses it with another layout; tied weights need one (out, in) layout"
            )
        elif pw.fixed_rows != slots[i].fixed_rows:  # e.g. a tied embedding's padding row: never perturbed
            slots[i] = dataclasses.replace(slots[i], fixed_rows=tuple(sorted({*pw.fixed_rows, *slots[i].fixed_rows})))
        index[(id(layer), j)] = i
    for m in dense_owners:  # a dense embedding reading a Flipout weight (Gemma's): its padding row stays fixed too
        for name, p in dense_params(m, named=True):
            rows = padding_rows(m, name)
            if rows and id(p) in by_weight and not set(rows) <= set(slots[by_weight[id(p)]].fixed_rows):
                i = by_weight[id(p)]
                slots[i] = dataclasses.replace(slots[i], fixed_rows=tuple(sorted({*rows, *slots[i].fixed_rows})))
    return slots, index


def padding_rows(module: nn.Module, name: str) -> tuple[int, ...]:
    """Rows of ``module``'s parameter ``name`` that torch never updates, and a population never perturbs: the
    padding row of an embedding's table (an ``nn.Embedding`` subclass with its own forward is a dense module)."""
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    is_table = isinstance(owner, nn.Embedding | nn.EmbeddingBag) and leaf == "weight"
    return (owner.padding_idx,) if is_table and owner.padding_idx is not None else ()


def dense_slots(
    layers: list[nn.Module],
    dense_owners: list[nn.Module],
    slots: list[PerturbedWeight],
    slot_index: dict[tuple[int, int], int],
) -> tuple[list[DenseSlot], list[list[tuple[nn.Module, str]]], dict[tuple[int, int], int | None], list[WeightUse]]:
    """``(module, name, parameter)`` of every trainable parameter with dense per-member noise, each
    parameter once (a parameter tied between modules is ONE sample per member); every
    ``(module, name)`` that reads it from ``member_noise``; the dense slot of each (layer, weight)
    pair whose bias its weight's noise does not carry (a weight tied to layers with other biases); and
    every ``(module, name, slot)`` where a dense module reads a Flipout weight (Gemma's scaled embedding
    tied to its head): it reads that slot's perturbation, materialized per member.
    ``slots`` and ``slot_index`` are :func:`flipout_slots`' answer for the same modules."""
    found: list[DenseSlot] = []
    uses: list[list[tuple[nn.Module, str]]] = []
    where: dict[int, int] = {}
    flipout_slot = {id(pw.weight): i for i, pw in enumerate(slots) if pw.weight.requires_grad}
    weight_uses: list[WeightUse] = []

    def slot(module: nn.Module, name: str, p: nn.Parameter) -> int:
        k = where.setdefault(id(p), len(found))
        if k == len(found):
            found.append((module, name, p))
            uses.append([])
        return k

    for module in dense_owners:
        for name, p in dense_params(module, named=True):
            if id(p) in flipout_slot:
                weight_uses.append((module, name, flipout_slot[id(p)]))
            else:
                uses[slot(module, name, p)].append((module, name))
    bias_of: dict[tuple[int, int], int | None] = {}  # None: this layer adds no bias noise (none, or frozen)
    for layer in layers:
        for j, pw in enumerate(layer.perturbed_weights()):
            if pw.bias is slots[slot_index[(id(layer), j)]].bias:
                continue
            if pw.bias is None or not pw.bias.requires_grad:
                bias_of[(id(layer), j)] = None
            else:  # read through the weight's noise (SlotNoise.with_bias), not member_noise
                bias_of[(id(layer), j)] = slot(layer, "bias", pw.bias)
    return found, uses, bias_of, weight_uses
