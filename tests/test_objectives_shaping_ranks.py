"""A shaping or scalarization that reads other members' values, under several processes (ranks played by threads):
the shaping function gets every member's fitness on every rank in both comm modes, and objectives gathered with
``es.comm.allgather_tensor`` give each rank the whole population's, so a rank-based scalarization of them steps as one
process does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import ThreadComm, run_thread_ranks

import flipes
from flipes.shaping import centered_ranks

POPSIZE, GROUPS, GENERATIONS = 8, 4, 3


def _objectives(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two objectives of each member's vector (rows), in tension: near 1 and near -1."""
    return -(v - 1).square().sum(1), -(v + 1).square().sum(1)


def _es(comm: object | None, mode: str, shaping: Callable = centered_ranks) -> tuple[flipes.nn.Vector, flipes.FlipES]:
    x = flipes.flipout(flipes.nn.Vector(torch.tensor([2.0, -0.5, 0.0], dtype=torch.float64)))
    kwargs = {"comm": comm, "comm_mode": mode} if comm is not None else {}
    return x, flipes.FlipES(x, popsize=POPSIZE, groups=GROUPS, sigma=0.1, lr=0.05, seed=1, shaping=shaping, **kwargs)


def _failed(results: list) -> None:
    for rank, result in enumerate(results):
        if isinstance(result, BaseException):
            raise AssertionError(f"rank {rank} failed") from result


@pytest.mark.parametrize("mode", ["allreduce", "seeds"])
def test_a_shaping_gets_every_members_fitness_on_every_rank(mode: str) -> None:
    """On each of 2 ranks the shaping function is called once per generation with all 8 members' fitness, in member
    order, what it gets in one process (each rank told only its 4): bit for bit with ``seeds``, to float64 rounding
    with ``allreduce`` (whose summed update rounds the parameters apart)."""

    def run(comm: ThreadComm | None) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []

        def shaping(f: torch.Tensor) -> torch.Tensor:
            seen.append(f.clone())
            return centered_ranks(f)

        x, es = _es(comm, mode, shaping)
        for _ in range(GENERATIONS):
            with es.population():
                fitness = _objectives(x())[0]
            es.tell(fitness)
        return seen

    one = run(None)
    results = run_thread_ranks(run, 2)
    _failed(results)
    assert len(one) == GENERATIONS and all(f.shape == (POPSIZE,) for f in one)
    for seen in results:
        assert len(seen) == GENERATIONS
        for got, want in zip(seen, one, strict=True):
            torch.testing.assert_close(got, want, **({"rtol": 0, "atol": 0} if mode == "seeds" else {"rtol": 1e-12, "atol": 0}))


@pytest.mark.parametrize("mode", ["allreduce", "seeds"])
def test_gathered_objectives_ranked_together_step_as_one_process(mode: str) -> None:
    """README's recipe for a scalarization across members (the mean of each objective's centered ranks): objectives
    gathered with ``es.comm.allgather_tensor``, scored on every rank, each rank telling ``score[pop.members]``. Two ranks
    end on one process's parameters: bit for bit with ``seeds``, to float64 rounding with ``allreduce``. Without the
    gathering (each rank ranking its own 4 members) they do not."""

    def run(comm: ThreadComm | None, gather: bool = True) -> torch.Tensor:
        x, es = _es(comm, mode)
        for _ in range(GENERATIONS):
            with es.population() as pop:
                a, b = _objectives(x())
            if gather:
                a, b = es.comm.allgather_tensor(a), es.comm.allgather_tensor(b)
                score = ((centered_ranks(a) + centered_ranks(b)) / 2)[pop.members]
            else:
                score = (centered_ranks(a) + centered_ranks(b)) / 2
            es.tell(score)
        return x.value.detach().clone()

    one = run(None)
    results = run_thread_ranks(run, 2)
    _failed(results)
    for got in results:
        if mode == "seeds":
            assert torch.equal(got, one)
        else:
            torch.testing.assert_close(got, one, rtol=1e-12, atol=1e-14)
    local = run_thread_ranks(lambda comm: run(comm, gather=False), 2)
    _failed(local)
    assert not torch.allclose(local[0], one, rtol=1e-6, atol=1e-8)


def test_a_shaping_reading_a_cost_the_fitness_kept_on_its_rank_is_told_to_gather() -> None:
    """A shaping that ranks by a cost the fitness kept (a lexicographic order of cost, then fitness) gets 8 members'
    fitness but the cost of its rank's 4: on each rank the error names the cause and gathering, before any step."""

    def run(comm: ThreadComm) -> BaseException | None:
        kept: dict[str, torch.Tensor] = {}

        def lexicographic(f: torch.Tensor) -> torch.Tensor:  # ranks by cost alone where it differs: a sketch
            return -centered_ranks(kept["cost"])

        x, es = _es(comm, "seeds", lexicographic)
        with es.population():
            v = x()
            kept["cost"] = v.abs().sum(1)
        try:
            es.tell(_objectives(v)[0])
        except ValueError as error:
            assert es.generation == 0
            return error
        return None

    results = run_thread_ranks(run, 2)
    for error in results:
        assert isinstance(error, ValueError), error
        assert "got shape (4,); it gets every member's fitness, on every process" in str(error)
        assert "gather them first" in str(error)


def test_train_names_gathering_for_a_shaping_of_too_few_weights(tmp_path: Path) -> None:
    """``flipes.train`` given a shaping that returns fewer weights than members says it in its one line, with gathering
    after the fix (the problem itself ends at the shapes, as for any wrong length)."""

    def fitness(model: torch.nn.Module, pop: Any) -> torch.Tensor:
        return model().sum(1)

    with pytest.raises(flipes.UsageError, match=r"got shape \(2,\); return one finite weight .*; it gets every member's"):
        flipes.train(env="none", model=lambda env: flipes.nn.Vector(torch.zeros(3)), fitness=fitness, popsize=4,
                     shaping=lambda f: f[:2], generations=1, out=str(tmp_path / "run"), progress=False, plot=False,
                     tensorboard=False)  # fmt: skip
