"""A plug-in's mistakes reach ``flipes.train``'s caller and the command line as one UsageError line naming the option."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import flipes


def _model(env: None) -> torch.nn.Module:
    return flipes.flipout(torch.nn.Linear(3, 2))


def fitness(model: torch.nn.Module, pop: flipes.Population) -> torch.Tensor:
    return -model(torch.ones(pop.size, 3)).square().sum(1)


@pytest.mark.parametrize(
    ("factory", "problem"),
    [
        (lambda p: torch.optim.SGD(list(p)[1:], lr=0.1), r"builds SGD over other parameters than the 2 given \(leaves out 1"),
        (lambda p: torch.optim.SGD([*p, torch.nn.Parameter(torch.zeros(1))], lr=0.1), r"the 2 given \(adds 1 others\)"),
        (lambda p: "sgd", r"returned str, not a torch.optim.Optimizer"),
        (lambda p: torch.optim.SGD(p, lr=0.1, maximize=True), r"SGD\(maximize=True\) would step downhill"),
        (lambda p: torch.optim.LBFGS(p), r"LBFGS.step needs a closure"),
    ],
)
def test_an_optimizer_factory_building_what_flipes_cannot_step_is_one_line(
    tmp_path: Path, factory: Callable[[list[torch.nn.Parameter]], object], problem: str
) -> None:
    """An ``optimizer=`` factory whose optimizer FlipES would refuse is a UsageError naming ``--optimizer`` and the
    problem (the command line's one line, not a traceback), before any run directory is written."""
    kw = dict(env="none", popsize=4, generations=1, tensorboard=False, plot=False, progress=False, out=str(tmp_path / "r"))
    with pytest.raises(flipes.UsageError, match=rf"^--optimizer: .*<lambda>.*{problem}"):
        flipes.train(model=_model, fitness=fitness, optimizer=factory, **kw)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("shaping", "problem"),
    [
        (lambda f: f * float("nan"), r"to finite weights of that shape, got shape \(4,\) with non-finite values"),
        (lambda f: f[:2], r"got shape \(2,\)"),
        (lambda f: None, r"must return weights \(N,\) as a Tensor or array of numbers, got NoneType"),
    ],
)
def test_a_shaping_returning_unusable_weights_is_one_line(tmp_path: Path, shaping: Callable, problem: str) -> None:
    """A ``shaping=`` function whose weights FlipES cannot use (NaN, another length, no numbers) stops training with a
    UsageError naming ``--shaping``, the function and the problem: the command line's one line."""
    kw = dict(env="none", popsize=4, generations=1, tensorboard=False, plot=False, progress=False, out=str(tmp_path / "r"))
    with pytest.raises(flipes.UsageError, match=rf"^--shaping: .*<lambda>: .*{problem}; return one finite weight per member"):
        flipes.train(model=_model, fitness=fitness, shaping=shaping, **kw)


def test_a_plugged_ars_shaping_keeps_flipes_checks_of_ars(tmp_path: Path) -> None:
    """``shaping=functools.partial(flipes.shaping.ars, top=2)`` given to ``flipes.train`` is still recognized as ARS
    under the one-line check of its weights: refused with unpaired members, naming mirrored=True."""
    import functools

    kw = dict(env="none", popsize=8, generations=1, tensorboard=False, plot=False, progress=False, out=str(tmp_path / "r"))
    with pytest.raises(ValueError, match=r"shaping=flipes.shaping.ars compares the returns of mirrored pairs"):
        flipes.train(model=_model, fitness=fitness, shaping=functools.partial(flipes.shaping.ars, top=2), mirrored=False, **kw)


class StepOpt(torch.optim.Optimizer):
    """An optimizer of one's own whose step size is not called lr."""

    def __init__(self, params: list[torch.nn.Parameter], step_size: float = 0.1) -> None:
        super().__init__(params, {"step_size": step_size})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.sub_(group["step_size"] * p.grad)


def test_an_optimizer_class_without_lr_is_refused_naming_a_factory(tmp_path: Path) -> None:
    """``optimizer=`` a class is built as ``cls(params, lr=lr)``: one whose constructor takes no ``lr`` is refused
    before training in one line naming ``--optimizer`` and the factory to write instead, not a TypeError from the
    build."""
    kw = dict(env="none", popsize=4, generations=1, tensorboard=False, plot=False, progress=False, out=str(tmp_path / "r"))
    refused = r"^--optimizer: .*StepOpt is a class built as StepOpt\(params, lr=--lr\), and it takes no lr .*; "
    with pytest.raises(flipes.UsageError, match=refused + r"name a factory instead: def opt\(params\): return StepOpt\("):
        flipes.train(model=_model, fitness=fitness, optimizer=StepOpt, **kw)
    assert not (tmp_path / "r").exists()


def halved_ranks(fitness: torch.Tensor) -> torch.Tensor:
    return flipes.shaping.centered_ranks(fitness) / 2


def test_a_checked_shaping_is_named_by_its_code_where_ranks_and_repr_read_it() -> None:
    """A ``--shaping`` of one's own, wrapped to check its weights, is named as the unwrapped function in what the
    processes compare (``shaping_name``) and in ``repr(es)``, never as the wrapper's class."""
    from flipes.es.ranks import shaping_name
    from flipes.plugins import Plugins

    checked = Plugins(shaping=halved_ranks).shaping_fn("")
    assert checked is not halved_ranks
    assert shaping_name(checked) == shaping_name(halved_ranks) == f"{halved_ranks.__module__}:halved_ranks"
    es = flipes.FlipES(_model(None), popsize=4, sigma=0.1, shaping=checked)
    assert "shaping=halved_ranks," in repr(es)


class MomentumOpt(StepOpt):
    """An optimizer of one's own that takes lr, and a momentum it has no default for."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float, momentum: float) -> None:
        torch.optim.Optimizer.__init__(self, params, {"step_size": lr, "momentum": momentum})


def test_an_optimizer_class_needing_more_than_lr_is_not_said_to_take_no_lr(tmp_path: Path) -> None:
    """A class that takes ``lr`` but needs another argument too is refused before training naming what it lacks,
    not said to take no lr."""
    kw = dict(env="none", popsize=4, generations=1, tensorboard=False, plot=False, progress=False, out=str(tmp_path / "r"))
    refused = r"^--optimizer: .*MomentumOpt is a class built as MomentumOpt\(params, lr=--lr\), which it cannot take "
    with pytest.raises(flipes.UsageError, match=refused + r"\(missing a required argument: 'momentum'\); name a factory") as e:
        flipes.train(model=_model, fitness=fitness, optimizer=MomentumOpt, **kw)
    assert "takes no lr" not in str(e.value)
    assert not (tmp_path / "r").exists()
