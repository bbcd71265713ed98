"""Where separate fixes meet: option words in any case and a resumed run's recorded options, the hint for other
libraries' PGPE and FlipES's own check of its groups, a damaged config.json's message and the command it names."""

from __future__ import annotations

import functools
import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch

import flipes
from flipes.errors import UsageError
from flipes.runs import run_config

DATA = torch.linspace(-1, 1, 12).reshape(3, 4)
QUIET: dict[str, Any] = {"progress": False, "plot": False, "tensorboard": False}


def bowl(model: torch.nn.Module, pop: Any) -> torch.Tensor:
    return -(model(DATA.expand(pop.size, *DATA.shape)) - 1).pow(2).mean((1, 2))


def linear(env: Any) -> torch.nn.Module:
    return torch.nn.Linear(4, 1)


def test_a_run_started_with_an_option_word_in_capitals_resumes_with_it_in_any_case(tmp_path: Path) -> None:
    """A run started with algo="PGPE" records "pgpe" with the pgpe row's groups and sigma_lr, and resumes with
    algo="pgpe" and "Pgpe" (the same search), while another search is still refused on that resume."""
    run = tmp_path / "run"
    flipes.train(env="none", model=linear, fitness=bowl, algo="PGPE", popsize=16, generations=1, out=str(run), **QUIET)
    saved = json.loads((run / "config.json").read_text())
    assert (saved["algo"], saved["groups"], saved["sigma_lr"]) == ("pgpe", 8, 0.2)
    for gens, word in ((2, "pgpe"), (3, "Pgpe")):
        flipes.train(resume=str(run), model=linear, fitness=bowl, algo=word, generations=gens, **QUIET)
        assert flipes.load_checkpoint(run)["es"]["generation"] == gens
    with pytest.raises(UsageError):
        flipes.train(resume=str(run), model=linear, fitness=bowl, algo="openai-es", generations=4, **QUIET)


def test_the_hint_for_pgpe_names_a_popsize_that_its_eight_groups_take() -> None:
    """flipes.PGPE's hint names popsize=16 or more beside groups=8: FlipES builds those settings at popsize 16 and
    refuses them at popsize 8 (one mirrored member per group)."""
    with pytest.raises(AttributeError, match=r"FlipES\(model, popsize=16 or more, groups=8, sigma_lr=0.2"):
        flipes.PGPE  # noqa: B018
    model = flipes.flipout(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)))
    settings = {"groups": 8, "sigma_lr": 0.2, "optimizer": functools.partial(flipes.search.clipup, max_speed=0, lr=0.05)}
    assert flipes.FlipES(model, popsize=16, **settings).popsize == 16
    with pytest.raises(ValueError, match="mirrored sampling pairs members"):
        flipes.FlipES(model, popsize=8, **settings)


@pytest.mark.parametrize("name", ["run", "my run"])
def test_a_config_json_that_is_not_json_names_the_resume_that_writes_it_again(tmp_path: Path, name: str) -> None:
    """A config.json cut short (not JSON) is refused in one line naming the resume to the checkpoint's generation,
    which writes config.json again (the run's path quoted for the shell where it holds a space); with no checkpoint to
    read, the line says to retrain."""
    run = tmp_path / name
    flipes.train(env="none", model=linear, fitness=bowl, popsize=8, generations=2, out=str(run), **QUIET)
    (run / "config.json").write_text('{"env": "no')
    with pytest.raises(UsageError) as e:
        run_config(run)
    assert "\n" not in str(e.value)
    tail = " writes it again from the options its checkpoint records, training nothing"
    assert str(e.value).endswith(tail)
    printed = str(e.value)[str(e.value).index("flipes train --resume") : -len(tail)]
    assert shlex.split(printed) == ["flipes", "train", "--resume", str(run), "--generations", "2"]
    flipes.train(resume=str(run), model=linear, fitness=bowl, generations=2, **QUIET)
    assert run_config(run)["popsize"] == 8
    (run / "config.json").write_text('{"env": "no')
    (run / "checkpoint.pt").unlink()
    with pytest.raises(UsageError, match=r"no readable checkpoint\.pt records the run.s options: retrain$"):
        run_config(run)
