"""``flipes evaluate`` of a run trained on a fitness of one's own (``--env none``, a black-box Vector) refuses in one line
that names how to read the run's centre: its ``flipes.load_policy`` call, and train's ``evaluate`` for eval_return rows."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import flipes
from flipes.commands import main


def test_evaluate_of_a_run_with_no_env_names_how_to_read_its_centre(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``flipes evaluate`` of an ``--env none`` run exits 2 with one line that names the run's ``load_policy`` call and
    train's ``evaluate``; that call, given the model again, returns the checkpoint's centre."""
    run = tmp_path / "run"
    model = lambda env: flipes.nn.Vector(torch.full((3,), 2.0))  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a lambda's name is not recorded: said once, not this test's matter
        flipes.train(
            env="none",
            model=model,
            fitness=lambda m, pop: -m().square().sum(1),
            popsize=4,
            generations=1,
            progress=False,
            tensorboard=False,
            plot=False,
            out=run,
        )
    capsys.readouterr()
    with pytest.raises(SystemExit) as ended:
        main(["evaluate", str(run)])
    assert ended.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "there is no env to evaluate it on" in err and "\n" not in err
    assert f"flipes.load_policy({str(run)!r})" in err and "evaluate(model)" in err
    centre = flipes.load_policy(run, model=model)()
    assert torch.equal(centre.detach(), flipes.load_checkpoint(run)["es"]["model"]["value"])
    assert not torch.equal(centre.detach(), torch.full((3,), 2.0))
