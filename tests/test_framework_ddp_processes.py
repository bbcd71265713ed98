"""FlipES under torch.distributed without a comm of flipes: a DistributedDataParallel model over several processes is
refused naming the fix (DDP syncs gradients in backward, which ES never runs, so replicas would drift apart), and a
plain model in several torch.distributed processes is warned of; one process, or a comm given, goes on as before."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

import flipes

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[None]:
    """A gloo group of this one process (a test makes its world size read as 2: a second process costs seconds)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _net() -> nn.Module:
    torch.manual_seed(0)
    return flipes.flipout(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))


def test_ddp_over_two_processes_is_refused(world: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """FlipES(DDP(net)) with no comm in a world of 2 raises naming the unwrapped module and comm=; with
    comm=SerialComm() (independent runs meant) it is built."""
    model = nn.parallel.DistributedDataParallel(_net())
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    with pytest.raises(ValueError, match=r"DistributedDataParallel over 2 processes.*model\.module.*comm=flipes\.dist"):
        flipes.FlipES(model, popsize=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flipes.FlipES(model, popsize=8, comm=flipes.dist.SerialComm())


def test_ddp_of_one_process_steps_as_the_plain_model(world: None) -> None:
    """World size 1: FlipES over DDP(net), and over DataParallel(net) on the CPU, takes the very step of FlipES over an
    equal plain net, bit for bit."""
    x = torch.randn(8, 3)
    results = []
    for wrap in (None, nn.parallel.DistributedDataParallel, nn.DataParallel):
        net = _net()
        model = wrap(net) if wrap is not None else net
        es = flipes.FlipES(model, popsize=8, sigma=0.1, seed=1)
        with es.population():
            fitness = -(model(x) - 1).pow(2).sum(-1)
        es.tell(fitness)
        results.append([p.detach().clone() for p in net.parameters()])
    assert all(torch.equal(a, b) for r in results[1:] for a, b in zip(results[0], r, strict=True))


def test_plain_model_in_two_processes_is_warned_of(world: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A FlipES with no comm on rank 0 of a torch.distributed world of 2 warns that each process runs all members alone."""
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    with pytest.warns(UserWarning, match=r"one of 2 processes of torch\.distributed.*mpiexec -n 2"):
        flipes.FlipES(_net(), popsize=8)
