"""The search rules of ``--algo``: each one's fitness shaping and optimizer over a FlipES; and the schedules of σ
and of the step over the generations (``--sigma-decay``, ``--lr-decay``: evosax's OpenES ``sigma_decay`` and
``lrate_decay``).

openai-es: centered ranks and Adam (Salimans et al., 2017, arXiv:1703.03864); pgpe: ClipUp (Toklu et
al., 2020, arXiv:2008.02387) with an adaptive σ; ars: Mania, Guy & Recht's weights of mirrored pairs
and SGD (NeurIPS 2018, arXiv:1803.07055).

For a loop of your own over ``flipes.FlipES``: :class:`SigmaDecay` (a σ schedule) and :func:`clipup` (``--algo pgpe``'s
optimizer) take plain numbers; the other functions here take ``flipes.train``'s ``TrainConfig``. The shaping functions
are ``flipes.shaping``'s, the optimizers ``flipes.optim``'s. Black-box search over a plain vector is ``flipes.nn.Vector``
under a FlipES (README: "Black-box search over a vector").
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from flipes.config import TrainConfig
from flipes.errors import UsageError
from flipes.es import shaping
from flipes.optim import ClipUp
from flipes.plugins import Plugins


def search_rule(
    config: TrainConfig, plugins: Plugins | None = None
) -> tuple[Callable[[Tensor], Tensor], Callable[[list], torch.optim.Optimizer] | type[torch.optim.Optimizer] | None]:
    """``--algo``'s fitness shaping (or ``--shaping``'s) and optimizer (``None``: FlipES's Adam at ``--lr``);
    ``--optimizer`` replaces the optimizer of any of them."""
    plugins = plugins or Plugins()
    if config.algo == "ars":  # SGD at lr·σ: a FlipES step is then ARS's α/(b σ_R) Σ (r+ - r-) δ (flipes.shaping.ars)
        top = config.ars_top or None
        shape: Callable[[Tensor], Tensor] = functools.partial(shaping.ars, top=top)
        optimizer: Callable[[list], torch.optim.Optimizer] | None = functools.partial(
            torch.optim.SGD, lr=config.lr * config.sigma
        )
    else:
        shape = SHAPINGS[config.shaping] if config.shaping in SHAPINGS else plugins.shaping_fn(config.shaping)
        optimizer = functools.partial(clipup, max_speed=config.max_speed, lr=config.lr) if config.algo == "pgpe" else None
    return shape, plugins.optimizer_fn(config.optimizer) if config.optimizer else optimizer


SHAPINGS: MappingProxyType[str, Callable[[Tensor], Tensor]] = MappingProxyType(
    {
        "auto": shaping.centered_ranks,
        "centered-ranks": shaping.centered_ranks,
        "z-score": shaping.z_score,
        "raw": shaping.raw,
    }
)


def own_shaping(spec: str) -> Callable[[Tensor], Tensor] | str:
    """The function of flipes' own that the ``--shaping`` value ``spec`` names (``z-score``, ``flipes.shaping:z_score``,
    ``flipes.es.shaping:z_score``: one rule, three spellings), else ``spec`` unchanged."""
    if spec in SHAPINGS:
        return SHAPINGS[spec]
    module, _, name = spec.partition(":")
    fn = getattr(shaping, name, None) if module in ("flipes.shaping", "flipes.es.shaping") and name else None
    return fn if callable(fn) else spec


def clipup(params: Iterable[Tensor] | Iterable[dict], max_speed: float, lr: float) -> ClipUp:
    """ClipUp at ``max_speed``, step size half of it, momentum 0.9 (the paper's recommended ratios).

    ``max_speed`` 0 is ``lr·√D/2`` for D parameters: half of Adam's first step at ``lr`` (each parameter
    moves ``lr``), because ClipUp keeps its speed where Adam's steps shrink once the gradient is mostly
    noise. Probed on Pendulum, digits and HalfCheetah (2 seeds, bench_algos budgets): ``lr·√D`` reached
    the thresholds in 0/2, 0/2 runs; ``lr·√D/4`` 0/2, 2/2, 1/2; ``lr·√D/2`` 1/2, 2/2, 2/2. A task's row
    sets ``lr`` for Adam, where ``lr`` alone was ClipUp's speed before: far too slow for thousands of
    parameters (the length of the whole update, not per parameter).

    ``params`` as torch's optimizers take it: a list or ``model.parameters()``, or param groups (D counts all of
    them)."""
    # a list, as torch's optimizers take model.parameters() (a generator, which counting D would use up) and groups
    params = [{**p, "params": _as_list(p["params"])} if isinstance(p, dict) else p for p in params]
    entries = [q for p in params for q in (p["params"] if isinstance(p, dict) else [p])]
    speed = max_speed or 0.5 * lr * math.sqrt(sum(q.numel() for q in entries))
    return ClipUp(params, lr=speed / 2, momentum=0.9, max_speed=speed)


def _as_list(params: Tensor | Iterable[Tensor]) -> list[Tensor]:
    """A param group's ``params`` as a list: torch takes one tensor there too."""
    return [params] if isinstance(params, Tensor) else list(params)


@dataclass(frozen=True)
class SigmaDecay:
    """σ of generation ``g``: ``max(sigma·decay^g, min)``, a schedule for ``FlipES(sigma=...)``, and what
    ``--sigma-decay`` / ``--sigma-min`` build. A function of the generation alone (evosax's OpenES
    ``sigma_decay`` and ``sigma_limit``, with no state of its own): a resumed run, or every MPI rank, computes
    the same σ bit for bit. A dataclass rather than a closure, so a FlipES holding it pickles and deep-copies.

    >>> SigmaDecay(0.1, 0.5, 0.02)(2)  # 0.1·0.5² = 0.025
    0.025
    """

    sigma: float
    decay: float = 1.0
    min: float = 0.0

    def __post_init__(self) -> None:
        # as --sigma, --sigma-decay and --sigma-min are checked: here for FlipES(sigma=SigmaDecay(...)) in a loop of
        # one's own, where a decay above 1 grew σ and a floor above σ replaced it, without a word
        for name, value in (("sigma", self.sigma), ("decay", self.decay), ("min", self.min)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"SigmaDecay: {name} must be a finite number, got {value!r}")
        if not (self.sigma > 0 and 0 < self.decay <= 1 and 0 <= self.min <= self.sigma):
            raise ValueError(
                f"SigmaDecay({self.sigma!r}, {self.decay!r}, {self.min!r}): σ of generation g is max(sigma·decay^g, min), "
                "with sigma > 0, decay in (0, 1] (1 keeps σ fixed) and min in [0, sigma]; e.g. SigmaDecay(0.1, 0.999, 0.01)"
            )

    def __call__(self, generation: int) -> float:
        return max(self.sigma * self.decay**generation, self.min)


def sigma_schedule(config: TrainConfig) -> float | SigmaDecay:
    """``--sigma`` as FlipES takes it: the number itself where σ is fixed (``--sigma-decay 1``), else its schedule."""
    return config.sigma if config.sigma_decay == 1 else SigmaDecay(config.sigma, config.sigma_decay, config.sigma_min)


STEP_SETTINGS = ("lr", "max_speed")  # what --lr-decay scales in a param group: a step size, and ClipUp's speed with it


def scheduled_lr(config: TrainConfig, generation: int) -> float:
    """``--lr`` of ``generation`` on ``--lr-decay``'s schedule, ``max(lr·d^g, --lr-min)``: a function of the generation
    alone (a power, where evosax multiplies its lrate by d each step: equal to rounding), so a resume and every MPI
    rank step alike. The optimizer's step settings are their first times ``scheduled_lr / lr``."""
    return max(config.lr * config.lr_decay**generation, config.lr_min)


def check_decayable(config: TrainConfig, optimizer: torch.optim.Optimizer) -> None:
    """Refuse ``--lr-decay`` with an optimizer having a param group of no step setting (``STEP_SETTINGS``): an
    ``--optimizer`` of one's own that names its step otherwise would step at its first size throughout, while the
    rows' lr decayed."""
    bare = [str(i) for i, group in enumerate(optimizer.param_groups) if all(group.get(n) is None for n in STEP_SETTINGS)]
    if config.lr_decay == 1 or not bare:
        return
    where = "its param groups" if len(bare) == len(optimizer.param_groups) else f"param group(s) {', '.join(bare)}"
    raise UsageError(
        "--lr-decay",
        f"{config.lr_decay:g} scales each param group's lr, and --optimizer {config.optimizer} builds "
        f"{type(optimizer).__name__} with no lr in {where}",
        "keep its step size in each group's lr, or drop --lr-decay and schedule the step in a callback",
    )


def step_settings(optimizer: torch.optim.Optimizer) -> list[tuple[float, ...]]:
    """Each param group's step settings (``STEP_SETTINGS``) as numbers: what :func:`scale_steps` wrote, to tell
    whether anything set them since."""
    return [tuple(float(group[n]) for n in STEP_SETTINGS if group.get(n) is not None) for group in optimizer.param_groups]


def scale_steps(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Each param group's step settings (``STEP_SETTINGS``) at ``factor`` times the group's first: what ARS's SGD at
    lr·σ, ClipUp's step and speed, and an ``--optimizer``'s own lr scale by alike. The first is kept in the group as
    ``initial_<name>`` (torch's schedulers' ``initial_lr``), so it rides in the checkpoint's optimizer state."""
    for group in optimizer.param_groups:
        for name in STEP_SETTINGS:
            if name not in group or group[name] is None:
                continue
            first = group.setdefault(f"initial_{name}", float(group[name]))
            if isinstance(group[name], Tensor):  # a capturable optimizer's lr tensor is read where it is
                group[name].fill_(first * factor)
            else:
                group[name] = first * factor
