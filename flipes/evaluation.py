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
    normalizes by the evaluation's batch statistics instead, as in training: in eval mode it would normalize by
    its initial ones. Its running statistics (and their count) are put back afterwards, as is each module's mode
    (the fitness runs in the model's own). The module is otherwise left as it is: an evaluation that fills them
    itself (``update_bn``, then eval mode) uses what it filled, and a copy it keeps (the best model) is a plain
    BatchNorm that ``update_bn`` can fill."""
    if evaluator is None:
        return {}
    t0 = time.perf_counter()
    modes = [(m, m.training) for m in state.model.modules()]
    unfilled = [m for m, _ in modes if _unfilled_batch_norm(m)]
    for module, _ in modes:
        module.training = module in unfilled
    # batch statistics in training mode; the running ones it updates put back after. Not track_running_stats=False:
    # eval mode would then still normalize by the initial statistics, and update_bn could not fill them
    saved = [(m, name, getattr(m, name).clone()) for m in unfilled for name in _RUNNING if getattr(m, name) is not None]
    try:
        result = evaluator(state.model, generation)
    finally:
        with torch.no_grad():
            for module, name, value in saved:
                if (running := getattr(module, name)) is not None:  # an evaluate may have dropped it
                    running.copy_(value)
        for module, training in modes:
            module.training = training
    return {**result, "eval_seconds": time.perf_counter() - t0}


_RUNNING = ("running_mean", "running_var", "num_batches_tracked")


def _unfilled_batch_norm(module: torch.nn.Module) -> bool:
    """A BatchNorm (or InstanceNorm) tracking running statistics that were never updated."""
    tracked = getattr(module, "num_batches_tracked", None)
    return isinstance(module, torch.nn.modules.batchnorm._NormBase) and tracked is not None and int(tracked) == 0
