"""One member's explicit parameters ``θ̄ + σu_n``: a plain set of weights for member ``n`` of a generation.

``σu_n`` is the ES weighted sum ``Σ_m c_m σu_m`` of ``flipes.es.gradient`` with one-hot coefficients
``c = e_n``, taken over the rows of member ``n`` alone (and its mirrored twin, which shares its
signs). Every entry is a noise value times ±1, plus zeros: exactly ``σε_g ∘ (r_n ⊗ s_n)`` (full-rank
noise; low-rank ``σε_g`` is the product ``A_g B_g``), the bias noise and the dense noise the
population applies to member ``n``, at each slot's own σ. The noise of a member in a group this
process does not evaluate is sampled again from ``(seed, generation, group, slot)``: what the
process that evaluates it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, SupportsIndex

import torch
from torch import Tensor

from flipes.es.checks import integer
from flipes.es.evolved import check_requires_grad
from flipes.es.gradient import accumulate, weighted_dense, weighted_perturbation
from flipes.nn.functional import without_autocast

if TYPE_CHECKING:
    from flipes.es.engine import FlipES


@dataclass(repr=False)
class BestMember:
    """The fittest member of any generation so far (``FlipES(track_best=True)``, ``es.best``): of the
    highest fitness, or of the lowest with ``maximize=False``.

    Attributes:
        fitness: its fitness as told (the whole population's maximum in its generation, or minimum).
        generation: the generation it was evaluated in.
        index: its global member index in that generation.
        state_dict: ``model.state_dict()`` as it evaluated, on the CPU: its parameters ``θ̄ + σu``,
            the buffers then; ``plain_model.load_state_dict(es.best.state_dict)`` runs it.
    """

    fitness: float
    generation: int
    index: int
    state_dict: dict[str, Any]

    def __post_init__(self) -> None:  # on the CPU: no second copy of a large model on its GPU
        self.state_dict = {k: v.cpu() if isinstance(v, Tensor) else v for k, v in self.state_dict.items()}

    def __repr__(self) -> str:
        """Fitness, generation and index, the state dict counted (its tensors printed would fill a notebook cell)."""
        values = sum(v.numel() for v in self.state_dict.values() if isinstance(v, Tensor))
        return (
            f"BestMember(fitness={self.fitness!r}, generation={self.generation}, index={self.index}, "
            f"state_dict=<{len(self.state_dict)} entries, {values:,} values>)"
        )


def member_deltas(es: FlipES, index: int) -> dict[int, Tensor]:
    """``σu`` of global member ``index`` for every evolved parameter, keyed by ``id(parameter)``, in
    each parameter's dtype. Needs the current generation's noise (``es.population()`` entered)."""
    with without_autocast(es.params[0].device):
        return _member_deltas(es, index)


def _member_deltas(es: FlipES, index: int) -> dict[int, Tensor]:
    group_size = es.popsize // es.groups
    group = index // group_size
    if group in es.local_groups and isinstance(es._noise, tuple):  # the noise the population holds
        slot_noise, dense_noise = es._noise
        first = es.local_groups.start
    else:  # another process's group, or noise sampled per part: a pure function of (seed, generation, group, slot)
        slot_noise, dense_noise = es._sample(range(group, group + 1))
        first = group
    row = index - first * group_size  # the member's row in the noise
    start = row - row % 2 if es.mirrored else row
    rows = slice(start, start + (2 if es.mirrored else 1))

    def one_hot(like: Tensor) -> Tensor:
        c = torch.zeros(rows.stop - rows.start, dtype=like.dtype, device=like.device)
        c[row - start] = 1
        return c

    deltas: dict[int, Tensor] = {}

    def add(p: Tensor | None, d: Tensor | None) -> None:  # as tell does, in the parameter's dtype
        accumulate(deltas, p, None if p is None or d is None else d.to(p.dtype))

    for pw, noise in zip(es.slots, slot_noise, strict=True):
        weight, bias = weighted_perturbation(pw, noise.rows(slice(group - first, group - first + 1), rows), one_hot(noise.s))
        add(pw.weight, pw.stored(weight))
        add(pw.bias, bias)
    for (_, _, p), noise in zip(es.dense_slots, dense_noise, strict=True):
        add(p, weighted_dense(noise.rows(rows), one_hot(noise.delta)))
    return deltas


def member_index(es: FlipES, index: SupportsIndex) -> int:
    """``index`` checked as a global member of the generation being evaluated: in range, after its population was
    entered and before ``tell``, the evolved set unchanged. Building a member counts as evaluating the population."""
    index = integer("index", index)
    if not 0 <= index < es.popsize:
        raise IndexError(f"member index {index} is out of range: members are 0 .. popsize - 1 = {es.popsize - 1}")
    es._redraw_freed()
    if es._noise is None:
        when = (
            "before the first population"
            if es.generation == 0
            else f"after tell() ended generation {es.generation - 1} (its mean has moved on)"
        )
        raise RuntimeError(
            f"no member to build {when}: call it inside `with es.population()`, or after that block and before "
            "es.tell(), for the generation being evaluated"
        )
    check_requires_grad(es)
    es._evaluated = True  # a member evaluated by the user's own code
    return index


def member_parameters(es: FlipES, index: int) -> dict[str, Tensor]:
    """Every parameter of ``es.model`` by name (``named_parameters()``): ``θ̄ + σu_index`` where
    evolved, the plain value where frozen; new detached tensors (later updates do not change them)."""
    deltas = member_deltas(es, index)
    with torch.no_grad():
        return {
            name: p.detach() + deltas[id(p)] if id(p) in deltas else p.detach().clone()
            for name, p in es._module.named_parameters()
        }


def member_noise(es: FlipES, index: int) -> dict[str, Tensor]:
    """``σu_index`` of every evolved parameter of ``es.model`` by name (``named_parameters()``; frozen ones absent): the
    perturbation exactly as the population applies it, at each parameter's own σ; new detached tensors."""
    deltas = member_deltas(es, index)
    return {name: deltas[id(p)] for name, p in es._module.named_parameters() if id(p) in deltas}


def member_state_dict(es: FlipES, index: int) -> dict[str, Any]:
    """``es.model.state_dict()`` with member ``index``'s parameters in place of the mean ones (a tied
    parameter under each of its names), every tensor a copy."""
    deltas = member_deltas(es, index)
    params = {name: p for name, p in es._module.named_parameters(remove_duplicate=False)}
    state = es._module.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            p = params.get(key)
            if p is not None and id(p) in deltas:
                state[key] = p.detach() + deltas[id(p)]
            elif isinstance(value, Tensor):
                state[key] = value.clone()
    return state
