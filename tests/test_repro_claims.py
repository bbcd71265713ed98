"""Same seed, same parameters: the initial parameters of a model of one's own, and what the ranks are told when they
start from other ones."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import flipes
from flipes.errors import UsageError
from flipes.resume import agree

QUIET = {"progress": False, "tensorboard": False, "plot": False}


def numpy_initialized_model(env: object) -> torch.nn.Module:
    """A model initialized as ported NumPy code does: from NumPy's and Python's global generators, not torch's."""
    net = torch.nn.Linear(3, 1)
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(np.random.randn(1, 3)))
        net.bias.fill_(random.gauss(0.0, 1.0))
    return net


def reach_one(model: torch.nn.Module, pop: flipes.Population) -> torch.Tensor:
    return -(model(torch.ones(pop.size, 3)).squeeze(1) - 1.0).square()


def initial_parameters(tmp_path: Path, name: str, seed: int) -> list[torch.Tensor]:
    result = flipes.train(
        env="none", model=numpy_initialized_model, fitness=reach_one, popsize=4, generations=1, seed=seed,
        out=str(tmp_path / name), **QUIET,
    )  # fmt: skip
    return [p.detach().clone() for p in flipes.load_checkpoint(result.run_dir / "previous.pt")["es"]["model"].values()]


def test_a_model_drawing_from_numpy_and_random_starts_from_the_seeds_parameters(tmp_path: Path) -> None:
    """--seed seeds NumPy's and Python's global generators while the model is built, as it seeds torch's: two runs of
    one seed start from equal parameters (bit for bit) whatever those generators held before, another seed from
    other ones, and the caller's generators are left as they were."""
    np.random.seed(1)
    random.seed(1)
    first = initial_parameters(tmp_path, "a", seed=3)
    after = (np.random.randn(2).tolist(), random.random())
    np.random.seed(1)
    random.seed(1)
    assert after == (np.random.randn(2).tolist(), random.random()), "train drew from the caller's generators"
    np.random.seed(2)  # other global states: the run must not depend on them
    random.seed(2)
    again = initial_parameters(tmp_path, "b", seed=3)
    other = initial_parameters(tmp_path, "c", seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


class TwoRanks:
    """Rank 0 of two whose other rank sends ``other`` (what :func:`agree` gathers) in place of this rank's own."""

    rank, size = 0, 2

    def __init__(self, edit: object) -> None:
        self.edit = edit

    def allgather_object(self, mine: tuple) -> list[tuple]:
        return [mine, self.edit(mine)]


@pytest.mark.parametrize(("resumed", "said"), [
    (False, r"--model: the ranks built other initial parameters \(rank 0 [0-9a-f]{12}, rank 1 [0-9a-f]{12}\)"),
    (True, r"--resume: the ranks start from other parameters \(rank 0 [0-9a-f]{12}, rank 1 [0-9a-f]{12}\)"),
])  # fmt: skip
def test_ranks_starting_from_other_parameters_are_told_why(resumed: bool, said: str) -> None:
    """Ranks that start a new run from other parameters are told that their model is built from more than the seed
    (not to resume from one checkpoint, which they did not); ranks resuming other parameters, to resume one."""
    config = flipes.TrainConfig(env="none", popsize=4)
    model = torch.nn.Linear(2, 1)
    state = SimpleNamespace(es=SimpleNamespace(generation=0), model=model, resumed=resumed)
    comm = TwoRanks(lambda mine: (mine[0], mine[1], "f" * 64))
    with pytest.raises(UsageError, match=said) as e:
        agree(comm, config, state)
    assert ("seed" in e.value.fix) != resumed and ("checkpoint" in e.value.fix) == resumed


def test_a_resume_at_another_thread_count_continues_bit_for_bit(tmp_path: Path) -> None:
    """--threads is among the options a resume may change without a rounding note: a generation at --threads 1,
    resumed for 2 more at --threads 2, logs the parameters of an unstopped run at 1 thread, generation by generation,
    bit for bit. Layers of 64 and 32 members make products a BLAS may split across threads;
    observation normalization, action noise and a σ schedule ride along."""
    kw = {
        "env": "flipes/Pendulum-v1", "popsize": 32, "groups": 4, "hidden": [64, 64], "max_episode_steps": 40,
        "action_noise": 0.1, "sigma_decay": 0.9, "eval_every": 100, "eval_episodes": 1, "target": None, **QUIET,
    }  # fmt: skip
    ref = [row["params_sha256"] for row in flipes.train(**kw, threads=1, generations=3, out=str(tmp_path / "ref")).metrics]
    run = str(tmp_path / "resumed")
    flipes.train(**kw, threads=1, generations=1, out=run)
    flipes.train(**kw, threads=2, generations=3, resume=run)
    assert [row["params_sha256"] for row in flipes.read_metrics(run)] == ref


def tie_broken_ranks(fitness: torch.Tensor) -> torch.Tensor:
    """Centered ranks whose ties are broken at random (from torch's global generator), as some ES code does."""
    key = torch.as_tensor(fitness, dtype=torch.float64) + 1e-9 * torch.rand(len(fitness), dtype=torch.float64)
    return key.argsort().argsort().double() / (len(fitness) - 1) - 0.5


def above_median(model: torch.nn.Module, pop: flipes.Population) -> torch.Tensor:
    """1 where the member's output exceeds the population's median, else 0: a fitness of many ties."""
    y = model(torch.ones(pop.size, 3)).squeeze(1)
    return (y > y.median()).double()


def test_a_shaping_drawing_random_numbers_gives_the_seeds_parameters(tmp_path: Path) -> None:
    """A shaping (or an optimizer) that draws from the global generators in tell draws the seed's numbers: two runs of
    one seed, whatever torch's generator held before each, end on equal parameters generation by generation."""
    kw = {"env": "none", "model": numpy_initialized_model, "fitness": above_median, "shaping": tie_broken_ranks,
          "popsize": 16, "generations": 3, "seed": 0, **QUIET}  # fmt: skip
    runs = []
    for before in (1, 2):
        torch.manual_seed(before)
        runs.append([row["params_sha256"] for row in flipes.train(**kw, out=str(tmp_path / str(before))).metrics])
    assert runs[0] == runs[1]
