"""Why :func:`flipes.train`'s loop stops after a generation: the target, the timestep budget, the time limit, a
callback's request or a signal."""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from flipes.callbacks import Callback
from flipes.config import TrainConfig
from flipes.errors import UsageError

if TYPE_CHECKING:
    from flipes.train_state import TrainState


def stop_asked(callback: Callback, answer: Any) -> bool:
    """Whether ``callback``'s ``on_generation`` asked to stop: a flag read as ``bool`` does (True or a nonzero integer
    stops; False, 0 or None goes on). Anything else is refused, as a returned row (the way of other loggers) is truthy
    and would stop the run after one generation."""
    flag = isinstance(answer, Tensor) and answer.numel() == 1 and not answer.is_floating_point() and not answer.is_complex()
    if answer is None or flag or isinstance(answer, numbers.Integral | np.bool_):  # Integral: bool and numpy ints too
        return bool(answer)
    raise UsageError(
        "callbacks",
        f"{type(callback).__name__}.on_generation returned a {type(answer).__name__}, not True (stop), False or None",
        "return True to stop training, nothing to go on (what it sets in the row is logged as it is)",
    )


def stop_reason(state: TrainState, row: dict[str, Any], interrupted: bool, asked: bool, time_up: float) -> str | None:
    """Why to stop after this row, or None to go on; ``time_up``: this call's seconds once ``--max-seconds``
    had passed when the generation's evaluation was decided (so a run it ends was evaluated last), else 0."""
    target = state.target
    if target is not None and row.get("eval_return", -math.inf) >= target:
        return f"solved: eval_return {row['eval_return']:.2f} >= {target:g}"
    if budget_spent(state.config, row["timesteps"]):
        return f"timestep budget reached: {row['timesteps']:,} timesteps >= --max-timesteps {state.config.max_timesteps:,}"
    if time_up:
        return f"stopped after {seconds(time_up)} s of this call (--max-seconds {state.config.max_seconds:g})"
    if asked:
        return "stopped by a callback"
    if interrupted:
        return "interrupted"
    return None


def seconds(t: float) -> str:
    """``t`` seconds to the digits that say it: 0.31, 4.2, 37 (not 0 for a limit under a second)."""
    return f"{t:.2g}" if t < 10 else f"{t:.0f}"


def budget_spent(config: TrainConfig, timesteps: int) -> bool:
    """Whether a run at ``timesteps`` (all ranks' training env steps, over resumes) has spent its ``--max-timesteps``."""
    return 0 < config.max_timesteps <= timesteps
