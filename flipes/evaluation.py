"""The center policy's evaluation during :func:`flipes.train`, in eval mode as it is deployed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from flipes.train_state import TrainState


def evaluate_center(state: TrainState, evaluator: Callable[..., dict] | None, generation: int) -> dict[str, float]:
    """The center policy's evaluation at ``generation``, on rank 0 (empty where there is none), in eval
    mode as ``load_policy`` gives it (no dropout): ``best.pt`` and ``--target`` judge the model that is
    deployed. A BatchNorm whose running statistics were never updated (a population leaves them alone)
    normalizes by the evaluation's batch statistics instead, as in training, without updating them: in
    eval mode it would normalize by its initial ones. Each module's mode is set back afterwards (the
    fitness runs in the model's own)."""
    if evaluator is None:
        return {}
    t0 = time.perf_counter()
    modes = [(m, m.training) for m in state.model.modules()]
    unfilled = [m for m, _ in modes if _unfilled_batch_norm(m)]
    for module, _ in modes:
        module.training = module in unfilled
    for module in unfilled:  # batch statistics, running ones left as they are
        module.track_running_stats = False
    try:
        result = evaluator(state.model, generation)
    finally:
        for module in unfilled:
            module.track_running_stats = True
        for module, training in modes:
            module.training = training
    return {**result, "eval_seconds": time.perf_counter() - t0}


def _unfilled_batch_norm(module: torch.nn.Module) -> bool:
    """A BatchNorm (or InstanceNorm) tracking running statistics that were never updated."""
    tracked = getattr(module, "num_batches_tracked", None)
    return isinstance(module, torch.nn.modules.batchnorm._NormBase) and tracked is not None and int(tracked) == 0
