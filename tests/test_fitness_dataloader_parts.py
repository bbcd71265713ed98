"""A supervised fitness reading a ``Dataset`` through a ``DataLoader`` in ``flipes.train``: built in the fitness with
``pop.minibatch`` as its sampler, every ``members_per_pass`` part of a generation gets the same examples and random
augmentations, and a resumed run the stream of the run it continues; a loader with a ``generator=`` of its own gives
each part another batch."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import flipes

EXAMPLES, BATCH = 24, 4
X = torch.randn(EXAMPLES, 3, generator=torch.Generator().manual_seed(0))


class Augmented(Dataset):
    """Each example with a random shift drawn when it is read, as a per-example transform draws it."""

    def __len__(self) -> int:
        return EXAMPLES

    def __getitem__(self, i: int) -> torch.Tensor:
        return X[i] + 0.1 * torch.randn(3)


DATA = Augmented()
OWN = DataLoader(DATA, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
seen: list[tuple[int, tuple[int, ...], torch.Tensor]] = []


def make_model(env: object = None) -> nn.Module:
    return nn.Linear(3, 1)


def score(model: nn.Module, pop: flipes.Population, x: torch.Tensor) -> torch.Tensor:
    seen.append((pop.generation, tuple(pop.members), x))
    return -model(x.expand(pop.size, *x.shape)).square().mean((1, 2))


def by_minibatch(model: nn.Module, pop: flipes.Population) -> torch.Tensor:
    loader = DataLoader(DATA, batch_size=BATCH, sampler=pop.minibatch(len(DATA), BATCH).tolist())
    return score(model, pop, next(iter(loader)))


def by_own_generator(model: nn.Module, pop: flipes.Population) -> torch.Tensor:
    return score(model, pop, next(iter(OWN)))


def train(fitness: object, out: Path, generations: int, **options: object) -> list[tuple[int, tuple[int, ...], torch.Tensor]]:
    seen.clear()
    flipes.train(env="none", model=make_model, fitness=fitness, popsize=4, members_per_pass=2, generations=generations,
                 out=str(out), tensorboard=False, plot=False, progress=False, **options)  # fmt: skip
    return list(seen)


def test_a_loader_sampling_pop_minibatch_gives_every_part_and_a_resume_the_same_batch(tmp_path: Path) -> None:
    """Both parts of a generation read the same examples with the same augmentations, another batch each
    generation, and a run stopped after generation 0 and resumed reads in generation 1 what the uninterrupted run
    read."""
    whole = train(by_minibatch, tmp_path / "whole", 2)
    assert [(g, m) for g, m, _ in whole] == [(0, (0, 1)), (0, (2, 3)), (1, (0, 1)), (1, (2, 3))]
    assert torch.equal(whole[0][2], whole[1][2]) and torch.equal(whole[2][2], whole[3][2])
    assert not torch.equal(whole[0][2], whole[2][2])
    train(by_minibatch, tmp_path / "half", 1)
    resumed = train(by_minibatch, tmp_path / "half", 2, resume=str(tmp_path / "half"))
    assert [g for g, _, _ in resumed] == [1, 1]
    assert all(torch.equal(x, y) for (_, _, x), (_, _, y) in zip(resumed, whole[2:], strict=True))


def test_a_loader_with_a_generator_of_its_own_gives_each_part_another_batch(tmp_path: Path) -> None:
    """``DataLoader(..., generator=g)`` draws its order from ``g``, which each call advances: the parts of one
    generation read different examples (so the README says to leave ``generator=`` out)."""
    first, second = train(by_own_generator, tmp_path, 1)
    assert not torch.equal(first[2], second[2])
