"""The evolved set as FlipES was built: its parameters named, and the checks that the model still holds them, with
the same ``requires_grad`` flags, unchanged since the population ended, and finite.

The slots, noise and optimizer were fixed over these parameters at construction: a parameter unfrozen, replaced
or edited later would be perturbed but never stepped, or stepped from values its members did not run.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from flipes.es.checks import NonFiniteFitness
from flipes.es.slots import DenseSlot
from flipes.nn.base import PerturbedWeight
from flipes.nn.convert import flipout_class, parameter_report, uncompiled

if TYPE_CHECKING:
    from flipes.es.engine import FlipES


def first_names(names: list[str], shown: int = 5) -> str:
    """The first ``shown`` of ``names``, comma-separated, with ``...`` where there are more: an error's list."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def parameter_names(model: nn.Module, params: list[Tensor], shown: int = 5) -> str:
    """``params`` by their names in ``model`` (a parameter of another module: its shape)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return first_names([names.get(id(p), f"a parameter of shape {tuple(p.shape)} not in the model") for p in params], shown)


def check_requires_grad(es: FlipES) -> None:
    """Raise if a parameter's ``requires_grad`` changed since construction: the evolved set, its
    noise slots and the optimizer were fixed then, so an unfrozen parameter would be perturbed but
    never updated, and a frozen one would break ``tell``. Python flags only: runs every generation."""
    check_held(es)
    changed = [p for p, flag in es._requires_grad if p.requires_grad != flag]
    if changed:
        shown = parameter_names(es._module, changed)
        raise ValueError(
            f"requires_grad of {shown} changed after this FlipES was built (it evolves the parameters "
            "trainable then); set it back, or build a new FlipES for the model: the model keeps its weights, the "
            "optimizer starts afresh (load_state_dict of the old FlipES's state fails: its optimizer holds other "
            "parameters)"
        )


def check_held(es: FlipES) -> None:
    """Raise if the model holds other Parameter objects than at construction (an attribute assigned a new
    ``nn.Parameter``, ``load_state_dict(..., assign=True)``, weights tied anew): the slots, noise and optimizer
    hold the old ones, so members would run the new values while ``tell`` stepped the old, and nothing trained.
    Also raise if it gained trainable parameters (a layer appended in a notebook cell, converted or not): neither
    perturbed nor stepped, they would silently never train.
    Runs every generation: one dict lookup per parameter and module, the names walked only when one changed."""
    if all(slots.get(key) is obj for slots, key, obj in es._held_in) and all(len(d) == n for d, n in es._held_sizes):
        return
    now = dict(es._module.named_parameters(remove_duplicate=False))
    names = [k for k, p in es._held.items() if now.get(k) is not p]
    if names:
        shown = first_names(names)
        raise ValueError(
            f"FlipES: the model's parameter(s) {shown} are other Parameter objects than when this FlipES was built "
            "(a new nn.Parameter assigned, load_state_dict(..., assign=True), weights tied anew): it perturbs and steps "
            "the ones it was built with, so the new ones would never train; copy values in place instead "
            "(load_state_dict without assign, or param.data.copy_(value)), or build a new FlipES for the model"
        )
    held = {id(p) for p in es._held.values()}
    added = [k for k, p in now.items() if p.requires_grad and id(p) not in held]
    if added:  # a backprop noise model's ρ (attach_noise) is trained by backprop, never by ES: it may come later
        how = {row.name: row.how for row in parameter_report(es._module).rows}
        added = [k for k in added if how.get(k) != "backprop noise"]
    if added:
        shown = first_names(added)
        raise ValueError(
            f"FlipES: the model gained trainable parameter(s) {shown} after this FlipES was built: it neither perturbs "
            "nor steps them, so they would never train; convert the model again (model = flipes.flipout(model) "
            "leaves converted layers as they are) and build a new FlipES for it, or freeze them with "
            "requires_grad_(False)"
        )
    # nothing to refuse (a frozen layer added, an activation swapped): the next generation takes the fast path again,
    # and a module replaced is no longer kept alive by the lookup
    es._held_in, es._held_sizes = held_in(es._module), held_sizes(es._module)


def changed_since_population(es: FlipES) -> list[str]:
    """The names of the parameters written in place since this generation's last population block ended."""
    if es._versions is None:
        return []
    changed = [p for p, v in zip(es.params, es._versions, strict=True) if p._version != v]
    if not changed:  # the usual tell: no walk of the model's names
        return []
    names = {id(p): name for name, p in es._module.named_parameters()}
    return [names.get(id(p), "?") for p in changed]


def raise_if_not_finite(es: FlipES, error: NonFiniteFitness) -> None:
    """Raise naming the parameters where evolved ones are NaN or inf: the members' fitness is then not finite
    whatever the fitness function does, so ``error`` (which tells it to clip) would point at the wrong code."""
    broken = [p for p in es.params if not torch.isfinite(p).all()]
    if broken:
        shown = parameter_names(es._module, broken)
        raise ValueError(
            f"{error.what}: {len(broken)} evolved parameter(s) of the model are not finite ({shown}), "
            "after an update that overflowed (its tell() returned a non-finite update_ratio) or a load of such a state; "
            "lower lr or sigma and start again from finite parameters"
        ) from None
    if es.log_sigma is not None:  # members as far out as σ has grown: finite parameters, overflowing fitness
        grown, start = math.exp(float(es.log_sigma.max())), es.sigma_at(0)
        if not math.isfinite(grown) or grown > 1e3 * start:
            raise ValueError(
                f"{error.what}: adaptive σ has grown to {grown:.3g} from {start:.3g} (sigma_lr={es.sigma_lr:g}), so the "
                "members lie that far from the center; a fitness that rewards spread grows σ without limit: bound the "
                "fitness or lower sigma_lr (the fitness function itself may be fine)"
            ) from None


def refuse_unhandled(model: nn.Module) -> None:
    """Raise where a trainable parameter of ``model`` is perturbed by no Flipout layer or per-member module: it
    would never be evolved."""
    unhandled = [row for row in parameter_report(model).rows if row.how == "unhandled"]
    if unhandled:
        shown = first_names([f"{r.name} ({r.module})" for r in unhandled])
        layer = type(uncompiled(model))
        raise ValueError(
            f"FlipES: {len(unhandled)} trainable parameter(s) would not be evolved, no Flipout layer or per-member "
            f"module perturbs them: {shown}; convert the model with flipes.flipout(model), which evolves every "
            "parameter it can and names any it cannot, or freeze them with requires_grad_(False)"
            + (
                f"; a {layer.__name__} given to flipout alone is not converted in place but replaced: evolve the "
                "layer it returns, model = flipes.flipout(model)"
                if flipout_class(layer) is not None
                else ""
            )
        )


def evolved_parameters(slots: list[PerturbedWeight], dense_slots: list[DenseSlot]) -> list[nn.Parameter]:
    """The parameters FlipES evolves, each once in slot order: the Flipout slots' weights and biases, then the dense
    parameters, those with ``requires_grad``; an error where there are none."""
    params: list[nn.Parameter] = []
    candidates = [p for pw in slots for p in (pw.weight, pw.bias)] + [p for _, _, p in dense_slots]
    for p in candidates:
        if p is not None and p.requires_grad and all(p is not q for q in params):
            params.append(p)
    if not params:
        raise ValueError(
            "FlipES: the model has no trainable parameter to evolve; convert it with flipes.flipout(model) "
            "(parameters with requires_grad=False stay frozen)"
        )
    return params


def held_in(model: nn.Module) -> list[tuple[dict[str, Any], str, Any]]:
    """Where ``model`` holds its parameters and modules: each module's own dicts with their keys and objects, looked up
    every generation (:func:`check_held`) instead of walking the names. A slot that holds None (a layer built without
    a bias) is kept too: a parameter put in it later changes no dict's size, only the object it holds."""
    return [
        (slots, key, obj)
        for m in model.modules()
        if not isinstance(m, torch.jit.ScriptModule)  # frozen (flipout refuses a trainable one); its dicts have no .get
        for slots in (m._parameters, m._modules)
        for key, obj in slots.items()
    ]


def held_sizes(model: nn.Module) -> list[tuple[dict[str, Any], int]]:
    """Each module's own parameter and module dicts with their sizes: a dict grown since (a layer or parameter added)
    sends :func:`check_held` to walk the names."""
    return [
        (slots, len(slots))
        for m in model.modules()
        if not isinstance(m, torch.jit.ScriptModule)
        for slots in (m._parameters, m._modules)
    ]
