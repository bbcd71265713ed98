"""The layers' noise: a generation's noise held between ``population()`` and ``tell``, and the Flipout layers and
dense-noise modules pointed at it (all local members, or a part's rows) or cleared.

The layers' noise is written to their instance dicts: what ``nn.Module.__setattr__`` does for a value that is no
Parameter, Module or buffer, without its checks for those (a few µs per write, twice per layer per generation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from flipes.es.gradient import MemberPerturbations
from flipes.noise import DenseNoise, SlotNoise

if TYPE_CHECKING:
    from flipes.es.engine import FlipES


HeldNoise = tuple[list[SlotNoise], list[DenseNoise]]


class Deferred:
    """The noise of a generation of a ``FlipES(hold_noise=False)``: sampled for a part's ε groups when the
    part is entered (all local groups for a forward outside any part), the latest block kept while parts
    stay inside it (parts within one group), and sampled again by ``tell``, ``block`` groups at a time
    (those of the largest part)."""

    def __init__(self) -> None:
        self.groups = range(0)  # global groups of the block held
        self.noise: HeldNoise | None = None
        self.block = 0
        self.whole = False  # the layers hold every local member's noise (a forward outside any part)

    def held(self, es: FlipES, groups: range) -> HeldNoise:
        """The noise of a block that holds ``groups`` (global), sampled unless the block held has them."""
        self.block = max(self.block, len(groups))
        if self.noise is None or groups.start < self.groups.start or groups.stop > self.groups.stop:
            self.noise = None  # freed before the next block is drawn
            self.noise, self.groups = es._sample(groups), groups
        return self.noise


def install_whole(es: FlipES) -> None:
    """``hold_noise=False``: a forward of the whole population (not a part) samples every local group."""
    noise = es._noise
    if es._in_part or not isinstance(noise, Deferred) or noise.whole:
        return
    install(es, *noise.held(es, es.local_groups), len(es.members))
    noise.whole = True


def uninstall(es: FlipES, forget_shared_ids: bool = True) -> None:
    for layer in es.layers:
        held = layer.__dict__
        held["noise"] = None
        if forget_shared_ids:
            held.pop("_flipes_shared_ids", None)
            held.pop("_flipes_extra_dims", None)
    if forget_shared_ids:
        for module in es.dense_modules:
            module.__dict__.pop("_flipes_no_input", None)
    for module in [*es.layers, *es.dense_modules]:
        module.__dict__["member_noise"] = None


def install(es: FlipES, slot_noise: list[SlotNoise], dense_noise: list[DenseNoise], size: int) -> None:
    """Point every Flipout layer and dense-noise module at this noise of ``size`` members."""
    for module in es.dense_modules:  # also those with no evolved parameter (a BatchNorm's batch statistics)
        module.__dict__.update(member_noise={}, flipes_members=size)
    for layer, weights in zip(es.layers, es._weight_counts, strict=True):  # not perturbed_weights() anew
        layer.__dict__["noise"] = tuple(layer_noise(es, layer, j, slot_noise, dense_noise) for j in range(weights))
    for uses, nz in zip(es._dense_uses, dense_noise, strict=True):
        for module, name in uses:
            if module.member_noise is None:
                module.__dict__["member_noise"] = {}
            module.member_noise[name] = nz.delta
    # a Flipout weight a dense module reads: each member's σu_n (size × numel), one per slot and built at the first
    # read, not here: the whole population's is installed around its parts, where only the parts' are read
    deltas: dict[int, MemberPerturbations] = {}
    for module, name, i in es._weight_uses:
        if i not in deltas:
            deltas[i] = MemberPerturbations(slot_noise[i], es.slots[i])
        if module.member_noise is None:
            module.__dict__["member_noise"] = {}
        module.member_noise[name] = deltas[i]


def layer_noise(es: FlipES, layer: nn.Module, j: int, slot_noise: list[SlotNoise], dense_noise: list[DenseNoise]) -> SlotNoise:
    """The noise of ``layer``'s ``j``-th weight: its slot's, with the bias perturbation of this layer's bias."""
    key = (id(layer), j)
    noise = slot_noise[es._slot_index[key]]
    if key not in es._bias_of:  # the usual case: the slot's own bias
        return noise
    k = es._bias_of[key]
    return noise.with_bias(None if k is None else dense_noise[k].delta)
