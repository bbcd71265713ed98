"""The evolved set as FlipES was built: its parameters named, and the checks that the model still holds them, with
the same ``requires_grad`` flags, unchanged since the population ended, and finite.

The slots, noise and optimizer were fixed over these parameters at construction: a parameter unfrozen, replaced
or edited later would be perturbed but never stepped, or stepped from values its members did not run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from flipes.es.checks import NonFiniteFitness

if TYPE_CHECKING:
    from flipes.es.engine import FlipES


def parameter_names(model: nn.Module, params: list[Tensor], shown: int = 5) -> str:
    """``params`` by their names in ``model`` (a parameter of another module: its shape)."""
    names = {id(p): name for name, p in model.named_parameters()}
    out = [names.get(id(p), f"a parameter of shape {tuple(p.shape)} not in the model") for p in params[:shown]]
    return ", ".join(out) + (", ..." if len(params) > shown else "")


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
    Runs every generation: one dict lookup per parameter and module, the names walked only when one changed."""
    if all(slots.get(key) is obj for slots, key, obj in es._held_in):
        return
    now = dict(es._module.named_parameters(remove_duplicate=False))
    names = [k for k, p in es._held.items() if now.get(k) is not p]  # new ones (a backprop noise model's ρ) aside
    if not names:
        return
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    raise ValueError(
        f"FlipES: the model's parameter(s) {shown} are other Parameter objects than when this FlipES was built "
        "(a new nn.Parameter assigned, load_state_dict(..., assign=True), weights tied anew): it perturbs and steps "
        "the ones it was built with, so the new ones would never train; copy values in place instead "
        "(load_state_dict without assign, or param.data.copy_(value)), or build a new FlipES for the model"
    )


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
