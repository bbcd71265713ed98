"""Plug-ins of one's own that keep state across generations: their state rides in the FlipES's state dict, so a
resumed run is the unstopped one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import flipes
from flipes.checkpoint import tensors_sha256


class Baseline:
    """A shaping with state: fitness minus a running mean of past generations' mean fitness."""

    def __init__(self) -> None:
        self.b = 0.0

    def __call__(self, fitness: torch.Tensor) -> torch.Tensor:
        out = fitness - self.b
        self.b = 0.5 * self.b + 0.5 * float(fitness.mean())
        return out

    def state_dict(self) -> dict[str, float]:
        return {"b": self.b}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.b = state["b"]


def fitness(model: torch.nn.Module, pop: flipes.Population) -> torch.Tensor:
    return -(model(torch.ones(pop.size, 3)) - 1).pow(2).sum(1)


def make_es(shaping: object) -> flipes.FlipES:
    torch.manual_seed(0)
    model = flipes.flipout(torch.nn.Linear(3, 2))
    return flipes.FlipES(model, popsize=6, sigma=0.1, lr=0.05, seed=1, mirrored=False, shaping=shaping)


def test_a_shaping_with_state_resumes_as_an_unstopped_run() -> None:
    """A shaping with ``state_dict``/``load_state_dict`` is saved in ``es.state_dict()`` and loaded back: two
    generations, a fresh FlipES and shaping loading that state, two more, end on the parameters of four unstopped
    generations (bit for bit), where the shaping's fresh state alone would end elsewhere."""
    whole = make_es(Baseline())
    for _ in range(4):
        whole.step(fitness)
    first = make_es(Baseline())
    for _ in range(2):
        first.step(fitness)
    saved = first.state_dict()
    assert saved["shaping"] == {"b": first.shaping.b}
    for load in (True, False):
        rest = make_es(Baseline())
        rest.load_state_dict(saved if load else {k: v for k, v in saved.items() if k != "shaping"})
        for _ in range(2):
            rest.step(fitness)
        same = tensors_sha256(rest.params) == tensors_sha256(whole.params)
        assert same == load


def test_a_shaping_state_no_shaping_can_take_back_is_refused_before_loading() -> None:
    """A state holding a shaping's state, loaded into a FlipES whose shaping is a plain function, is refused naming
    it, and nothing is loaded (the generation and parameters stay)."""
    es = make_es(Baseline())
    es.step(fitness)
    plain = make_es(flipes.shaping.centered_ranks)
    before = tensors_sha256(plain.params)
    with pytest.raises(ValueError, match=r"shaping centered_ranks has no load_state_dict.*nothing was loaded"):
        plain.load_state_dict(es.state_dict())
    assert (plain.generation, tensors_sha256(plain.params)) == (0, before)


def test_train_resumes_a_shaping_with_state_and_an_optimizer_of_ones_own(tmp_path: Path) -> None:
    """``flipes.train(shaping=obj, optimizer=fn)`` stopped after 2 generations and resumed with the objects again to 4
    ends on the parameters of 4 unstopped generations: the shaping's state is in the checkpoint."""
    kw = dict(env="none", popsize=6, mirrored=False, tensorboard=False, plot=False, progress=False, eval_every=100)
    own = dict(model=_model, fitness=fitness, optimizer=_sgd)
    whole = flipes.train(shaping=Baseline(), generations=4, out=str(tmp_path / "whole"), **own, **kw)
    flipes.train(shaping=Baseline(), generations=2, out=str(tmp_path / "part"), **own, **kw)
    rest = flipes.train(resume=str(tmp_path / "part"), shaping=Baseline(), generations=4, progress=False, **own)
    assert rest.metrics[-1]["params_sha256"] == whole.metrics[-1]["params_sha256"]


def _model(env: None) -> torch.nn.Module:
    torch.manual_seed(0)
    return flipes.flipout(torch.nn.Linear(3, 2))


def _sgd(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


class SavesOnly(Baseline):
    """A shaping with state that can save it but has no way to take it back."""

    load_state_dict = None  # type: ignore[assignment]


def test_a_shaping_with_half_of_the_state_methods_is_refused(tmp_path: Path) -> None:
    """``flipes.train`` refuses, before training, a shaping with ``state_dict`` but no ``load_state_dict`` (its resume
    could not restore it), in one line naming the missing method; so does FlipES, as it is built or the shaping assigned
    (its state_dict() would be saved, and the resume with the same shaping refused), and one with load_state_dict alone."""
    kw = dict(env="none", popsize=6, tensorboard=False, plot=False, progress=False, out=str(tmp_path / "r"))
    with pytest.raises(flipes.UsageError, match=r"--shaping: .*SavesOnly.* has state_dict but no load_state_dict"):
        flipes.train(model=_model, fitness=fitness, shaping=SavesOnly(), generations=1, **kw)
    assert not (tmp_path / "r").exists()
    refused = r"^shaping SavesOnly has state_dict but no load_state_dict\(state\): a resume could not restore its state; "
    with pytest.raises(TypeError, match=refused + "define both"):
        make_es(SavesOnly())
    es = make_es(flipes.shaping.centered_ranks)
    with pytest.raises(TypeError, match=refused):
        es.shaping = SavesOnly()
    assert es.shaping is flipes.shaping.centered_ranks

    class LoadsOnly(Baseline):
        state_dict = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match=r"^shaping .*LoadsOnly has load_state_dict but no state_dict\(\): "):
        make_es(LoadsOnly())


baseline = Baseline()  # a shaping object at module level, as --shaping test_plugin_state:baseline names it


def test_a_module_level_shaping_object_is_recorded_by_its_name(tmp_path: Path) -> None:
    """A shaping object bound to a name in its module is recorded as ``module:name``, the name ``--shaping`` gives it:
    a run started with the name resumes given the object, and one started with the object resumes without it."""
    kw = dict(env="none", popsize=6, tensorboard=False, plot=False, progress=False, model=_model, fitness=fitness)
    named = flipes.train(shaping=f"{__name__}:baseline", generations=1, out=str(tmp_path / "named"), **kw)
    given = flipes.train(shaping=baseline, generations=1, out=str(tmp_path / "given"), **kw)
    assert given.config.shaping == named.config.shaping == f"{__name__}:baseline"
    flipes.train(resume=str(tmp_path / "named"), shaping=baseline, generations=2, progress=False, model=_model, fitness=fitness)
    flipes.train(resume=str(tmp_path / "given"), generations=2, progress=False, model=_model, fitness=fitness)


def test_dropping_a_saved_shaping_state_loads_the_rest_into_a_plain_shaping() -> None:
    """Loading a stateful shaping's state into a FlipES whose shaping keeps none is refused naming the way out, dropping
    state['shaping']; that done, the rest loads: the same generation and parameters."""
    es = make_es(Baseline())
    es.step(fitness)
    state = es.state_dict()
    plain = make_es(flipes.shaping.centered_ranks)
    with pytest.raises(ValueError, match=r"\(or drop state\['shaping'\] to shape afresh\)$"):
        plain.load_state_dict(state)
    del state["shaping"]
    plain.load_state_dict(state)
    assert plain.generation == 1
    assert all(torch.equal(a, b) for a, b in zip(plain.params, es.params, strict=True))
