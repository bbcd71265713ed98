"""Optimizers for ES updates.

ClipUp: Toklu, Liskowski, Mańdziuk, Gomez & Schmidhuber, "ClipUp: A Simple and Powerful Optimizer
for Distribution-based Policy Evolution", PPSN 2020 (arXiv:2008.02387).
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


class ClipUp(torch.optim.Optimizer):
    r"""Normalized gradient steps with heavy-ball momentum and a speed limit (ClipUp).

    Over the whole parameter vector ``θ``, all parameter groups together, with gradient ``g`` (``.grad``, the
    gradient of the loss, as ``flipes.FlipES.tell`` writes it), as Toklu et al. (2020) define it:

        v ← momentum · v + lr · g / ‖g‖
        v ← v · min(1, max_speed / ‖v‖)
        θ ← θ − v

    so no step is longer than ``max_speed``, whatever the scale of the fitness or of σ. The paper
    recommends ``lr = max_speed / 2`` and ``momentum = 0.9``. A zero gradient adds nothing to ``v``; one of any
    finite scale adds ``lr`` along it (where its squares would overflow or underflow, its norm is taken after a
    power-of-two rescaling). Parameter groups with their own ``lr``, ``momentum`` or ``max_speed`` apply them to
    their part of ``v``: ``‖g‖`` and ``‖v‖`` are still those of the whole vector (a group's part of ``v`` is scaled by
    ``min(1, its max_speed / ‖v‖)``), so with one ``max_speed`` no step is longer than it, however many groups.

    Args:
        params: parameters or parameter groups.
        lr: length of the normalized gradient step added to the velocity (the paper's α).
        momentum: decay of the velocity, in [0, 1).
        max_speed: the largest step, > 0; default ``2 · lr``.

    Examples::

        >>> es = flipes.FlipES(model, popsize=256, optimizer=lambda p: ClipUp(p, lr=0.075, max_speed=0.15))
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        max_speed: float | None = None,
    ) -> None:
        for name, value in (("lr", lr), ("momentum", momentum), ("max_speed", max_speed)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real | Tensor)):
                raise TypeError(f"ClipUp: {name} must be a number, got {value!r} ({type(value).__name__})")
        if not math.isfinite(lr):  # an infinite step (and max_speed 2·lr): the first step makes every parameter inf
            raise ValueError(f"ClipUp: lr must be a finite number > 0, got {lr}")
        max_speed = 2 * lr if max_speed is None else max_speed
        if not lr > 0:
            raise ValueError(f"ClipUp: lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"ClipUp: momentum must be in [0, 1), got {momentum}")
        if not max_speed > 0:
            raise ValueError(f"ClipUp: max_speed must be > 0, got {max_speed}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "max_speed": max_speed})

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One ClipUp step, a descent along ``.grad`` as torch's optimizers take: the velocity
        ``v = momentum·v + lr·g/‖g‖`` clipped to norm ``max_speed`` (norms over all groups), then ``p -= v``.

        Args:
            closure: re-evaluates the model and returns the loss, as for torch's optimizers; optional.

        Returns:
            The closure's loss, or None without one.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # the paper's ClipUp: g normalized and v clipped over the whole parameter vector, all groups together (a
        # group's own lr, momentum and max_speed apply to its part), so G groups do not step √G·max_speed
        groups = [(group, [p for p in group["params"] if p.grad is not None]) for group in self.param_groups]
        groups = [(group, params) for group, params in groups if params]
        if not groups:
            return loss
        params = [p for _, ps in groups for p in ps]
        # at least float32 (half-precision parameters keep a float32 velocity), float64 for float64
        dtypes = [_state_dtype(p) for p in params]
        acc = functools.reduce(torch.promote_types, dtypes)
        grads = [p.grad.to(dtype) for p, dtype in zip(params, dtypes, strict=True)]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g).to(acc) for g in grads]))
        if not _norm_in_range(norm):  # squares that overflowed (‖g‖ = inf) or underflowed (0, or too few bits left)
            # only g/‖g‖ is read: g scaled by a power of two, so that its squares stay in range
            grads = _unit_scaled(grads, dtypes)
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g).to(acc) for g in grads]))
        starts = list(itertools.accumulate((len(ps) for _, ps in groups), initial=0))  # each group's first in params
        velocities = []
        for (group, ps), start in zip(groups, starts, strict=False):
            scale = torch.where(norm > 0, group["lr"] / norm, torch.zeros_like(norm))
            for p, g in zip(ps, grads[start : start + len(ps)], strict=True):
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p, dtype=g.dtype)
                v = state["velocity"]
                v.mul_(group["momentum"]).add_(g.to(v.dtype) * scale.to(v.dtype))
                velocities.append(v)
        speed = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v).to(acc) for v in velocities]))
        host = float(speed)  # one sync a step, as for ‖g‖; the rescaled norm only where ‖v‖ is out of range:
        if not _in_range(host, acc):  # past 1.8e19 (float32) it overflowed to inf, a clip of 0: no step at all
            speed = torch.tensor(finite_norm(velocities, host, acc), dtype=torch.float64, device=speed.device)
        for (group, ps), start in zip(groups, starts, strict=False):
            clip = torch.clamp(group["max_speed"] / speed.clamp_min(torch.finfo(acc).tiny), max=1.0)
            for p, v in zip(ps, velocities[start : start + len(ps)], strict=True):
                v.mul_(clip.to(v.dtype))
                p.sub_(v.to(p.dtype))
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # torch casts floating-point state to its parameter's dtype, which would round the float32 velocity
        # of half-precision parameters: put the saved velocity back, only moved to the parameter's device
        super().load_state_dict(state_dict)
        saved = itertools.chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = itertools.chain.from_iterable(g["params"] for g in self.param_groups)
        for i, p in zip(saved, params, strict=True):
            v = state_dict["state"].get(i, {}).get("velocity")
            if v is not None:
                self.state[p]["velocity"] = v.to(device=p.device, dtype=_state_dtype(p))


def _norm_in_range(norm: Tensor) -> bool:
    """Whether ``‖g‖`` is finite and far enough above the smallest normal number (√tiny/eps) that squares lost to
    underflow could not have changed it: then ``g/‖g‖`` is computed from ``g`` as given. One sync, once a step."""
    return _in_range(float(norm), norm.dtype)


def _in_range(norm: float, dtype: torch.dtype) -> bool:
    info = torch.finfo(dtype)
    return math.sqrt(info.tiny) / info.eps <= norm < math.inf


def unit_factor(grads: list[Tensor], dtypes: list[torch.dtype]) -> Tensor | None:
    """For the computations invariant to their input's scale (ClipUp's g/‖g‖, z_score, ars): the power of two that
    brings the largest entry of ``grads`` to [0.5, 1), bounded so that it is a normal number in the widest dtype (a
    float64 gradient past float32's range beside float32 ones needs a factor float32 cannot hold: scale in that dtype);
    None where every gradient is empty."""
    acc = functools.reduce(torch.promote_types, dtypes)
    tops = [torch.linalg.vector_norm(g, ord=math.inf).to(acc) for g in grads if g.numel()]
    if not tops:
        return None
    _, exponent = torch.frexp(torch.stack(tops).amax())  # the largest entry = mantissa · 2^exponent
    bound = -int(math.log2(torch.finfo(acc).tiny)) - 1
    return torch.ldexp(torch.ones((), dtype=acc, device=tops[0].device), -exponent.clamp(-bound, bound))


def _unit_scaled(grads: list[Tensor], dtypes: list[torch.dtype]) -> list[Tensor]:
    """``grads`` times ``unit_factor``: a gradient past 1e19 (float32) overflowed ‖g‖ to inf (a step of 0), one
    below 1e-19 underflowed it to 0 (no step). Copies; empty parameters keep their gradients."""
    factor = unit_factor(grads, dtypes)
    return grads if factor is None else [(g.to(factor.dtype) * factor).to(g.dtype) for g in grads]


def finite_norm(g: Tensor | list[Tensor], norm: float, dtype: torch.dtype | None = None) -> float:
    """``norm``, ``‖g‖`` as computed, where it is in range (as is: no cost); else, where its squares overflowed to inf
    or underflowed, ``‖g‖`` of ``g`` scaled by ``unit_factor``, divided by it (a power of two: exact), as a float64
    number (a float32 ``g`` past 1e19 has a finite norm). A non-finite ``g`` keeps its inf or NaN norm. ``g`` may be
    a list of tensors (the parameters); ``dtype``: the one ``norm`` was computed in, the widest of ``g``'s if None."""
    gs = [g] if isinstance(g, Tensor) else g
    if not gs or _in_range(norm, dtype or functools.reduce(torch.promote_types, (t.dtype for t in gs))):
        return norm  # in range: no pass over the parameters (tell calls this three times a generation)
    dtypes = [t.dtype for t in gs]
    factor = unit_factor(gs, dtypes)
    if factor is None:
        return norm
    norms = [torch.linalg.vector_norm(t.to(factor.dtype) * factor) for t in gs]
    return float(torch.linalg.vector_norm(torch.stack(norms))) / float(factor)


def _state_dtype(p: Tensor) -> torch.dtype:
    return torch.promote_types(p.dtype, torch.float32)
