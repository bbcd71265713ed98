"""The commands' own warnings reach a terminal or a log as one ``flipes: warning:`` line each, as training's do, not
Python's two-line form pointing at ``<frozen runpy>``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import flipes
from flipes.commands import main


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_a_policy_loaders_warning_is_one_flipes_warning_line(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``flipes evaluate`` and ``flipes export`` of a checkpoint recording an option this flipes lacks say so in one
    ``flipes: warning:`` line on stderr, without the category, file name or source line."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [__file__])  # flipes warns at its caller's line: here, as the command's entry point
    run = tmp_path / "run"
    flipes.train(env="flipes/CartPole-v1", popsize=4, hidden=[2], generations=1, out=str(run), progress=False, plot=False,
                 tensorboard=False)  # fmt: skip
    state = flipes.load_checkpoint(run)
    state["config"]["activation"] = "gelu"
    flipes.save_checkpoint(state, run / "checkpoint.pt")
    capsys.readouterr()
    extra = ["--episodes", "1"] if command == "evaluate" else ["--out", str(tmp_path / "policy.pt2")]
    assert main([command, str(run), *extra]) == 0
    err = capsys.readouterr().err.splitlines()
    warned = [line for line in err if "does not know (activation)" in line]
    assert len(warned) == 1 and warned[0].startswith("flipes: warning: "), err
    assert not any("UserWarning" in line or "warnings.warn" in line for line in err), err
