"""A run on one GPU of several leaves torch's current GPU as the caller had it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

import flipes
from flipes import dist, training
from flipes.plugins import Plugins


class Finished(Exception):
    pass


@pytest.mark.parametrize("ends", ["returns", "raises"])
def test_a_cuda_n_run_gives_the_callers_current_gpu_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ends: str) -> None:
    """A run on ``cuda:2`` has GPU 2 as torch's current device while it lasts and the caller's (GPU 1) again after it,
    whether it returns or raises: a sweep's next trial or a notebook's next cell would otherwise run on the last run's
    GPU. torch's current-device bookkeeping is simulated here (the CPU suite has no GPU; scripts/gpu_check.py has)."""
    current = [1]

    def exchange(index: int) -> int:  # torch.cuda._exchange_device's contract: set index (if >= 0), return the old one
        if index < 0:
            return -1
        current[0], old = index, current[0]
        return old

    monkeypatch.setattr(torch.cuda, "_exchange_device", exchange)
    monkeypatch.setattr(torch.cuda, "_maybe_exchange_device", exchange)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: current.__setitem__(0, torch.device(device).index))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    during: list[int] = []

    def run(*args: Any, **kwargs: Any) -> str:
        during.append(current[0])
        if ends == "raises":
            raise Finished
        return "result"

    monkeypatch.setattr(training, "_set_up_and_run", run)
    config = flipes.TrainConfig(env="CartPole-v1", device="cuda:2", out=str(tmp_path))
    if ends == "raises":
        with pytest.raises(Finished):
            training._train_watched(config, dist.SerialComm(), [], Plugins(), [], time.time())
    else:
        assert training._train_watched(config, dist.SerialComm(), [], Plugins(), [], time.time()) == "result"
    assert during == [2]
    assert current == [1]
