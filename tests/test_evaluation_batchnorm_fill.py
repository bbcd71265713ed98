"""An evaluation during ``flipes.train`` that fills a fresh BatchNorm's running statistics itself (``update_bn``, then
eval mode), or keeps a copy of the model (the best one), works on a plain BatchNorm: its numbers are those of the
same model outside training, and the model leaves the evaluation as it came."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import flipes

X = torch.randn(32, 4, generator=torch.Generator().manual_seed(0)) * 5 + 3
Y = (X[:, 0] > 3).long()


def make_model(env: object = None) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))


def fitness(model: nn.Module, pop: flipes.Population) -> torch.Tensor:
    logits = model(X.expand(pop.size, *X.shape).flatten(0, 1))
    return -F.cross_entropy(logits, Y.repeat(pop.size), reduction="none").view(pop.size, -1).mean(1)


def filled_loss(model: nn.Module) -> float:
    """The validation loss in eval mode once ``update_bn`` has filled the running statistics."""
    torch.optim.swa_utils.update_bn([X], model)
    model.eval()
    return F.cross_entropy(model(X), Y).item()


def reference(model: nn.Module) -> float:
    """``filled_loss`` on a fresh plain model holding ``model``'s parameters and buffers."""
    plain = make_model()
    plain.load_state_dict(model.state_dict())
    return filled_loss(plain)


def test_an_evaluate_that_fills_the_running_statistics_judges_by_them(tmp_path: Path) -> None:
    """``update_bn`` then eval mode inside ``evaluate`` gives the loss of a plain copy doing the same (it gave the
    loss by the initial statistics), and the fresh BatchNorm's running statistics are put back after it."""
    seen: list[tuple[float, float]] = []

    def evaluate(model: nn.Module) -> float:
        expected = reference(model)
        seen.append((filled_loss(model), expected))
        return -seen[-1][0]

    run = flipes.train(env="none", model=make_model, fitness=fitness, evaluate=evaluate, popsize=4, generations=2,
                       eval_every=1, out=str(tmp_path), tensorboard=False, plot=False, progress=False)  # fmt: skip
    assert len(seen) == 2 and all(got == expected for got, expected in seen), seen
    bn = run.model[1]
    assert bn.training and bn.track_running_stats and int(bn.num_batches_tracked) == 0
    assert torch.equal(bn.running_mean, torch.zeros(6)) and torch.equal(bn.running_var, torch.ones(6))


def test_a_copy_kept_by_evaluate_is_a_plain_batch_norm(tmp_path: Path) -> None:
    """A best model kept as ``copy.deepcopy(model)`` inside ``evaluate`` tracks running statistics, so filling them
    after training gives the loss of a plain model with its weights (a copy that did not track them stayed at the
    initial statistics in eval mode)."""
    kept: list[nn.Module] = []

    def evaluate(model: nn.Module) -> float:
        kept.append(copy.deepcopy(model))
        return 0.0

    flipes.train(env="none", model=make_model, fitness=fitness, evaluate=evaluate, popsize=4, generations=1,
                 out=str(tmp_path), tensorboard=False, plot=False, progress=False)  # fmt: skip
    (best,) = kept
    assert best[1].track_running_stats
    expected = reference(best)
    assert filled_loss(best) == expected


def test_the_evaluation_leaves_an_instance_norms_running_statistics_alone(tmp_path: Path) -> None:
    """An InstanceNorm tracking running statistics, never filled, is evaluated by each example's statistics and keeps
    its initial running ones (it updates whatever running buffers it holds, tracked or not: they drifted with every
    evaluation)."""
    signal = torch.randn(8, 2, 6, generator=torch.Generator().manual_seed(1)) * 4 + 2

    def make(env: object = None) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv1d(2, 3, 3), nn.InstanceNorm1d(3, track_running_stats=True), nn.Flatten(), nn.Linear(12, 1))

    def fit(model: nn.Module, pop: flipes.Population) -> torch.Tensor:
        return -model(signal[:2].expand(pop.size, 2, 2, 6).flatten(0, 1)).view(pop.size, 2).square().mean(1)

    def evaluate(model: nn.Module) -> float:
        return -model(signal).square().mean().item()

    run = flipes.train(env="none", model=make, fitness=fit, evaluate=evaluate, popsize=4, generations=2, eval_every=1,
                       out=str(tmp_path), tensorboard=False, plot=False, progress=False)  # fmt: skip
    norm = run.model[1]
    assert torch.equal(norm.running_mean, torch.zeros(3)) and torch.equal(norm.running_var, torch.ones(3))
    assert int(norm.num_batches_tracked) == 0
