"""The command-line entry points set their streams up as the commands' texts say: ``flipes train`` starts a note
below its live progress line, a script's :func:`flipes.cli.run` writes σ in an encoding without it, and
``flipes train --help`` names which stream holds what."""

from __future__ import annotations

import dataclasses
import io
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import flipes.training
from flipes.cli import run
from flipes.commands import main


class _Terminal(io.StringIO):
    """stdout and stderr of one terminal (no file descriptor, so TERM is not read for it)."""

    def isatty(self) -> bool:
        return True


def test_flipes_train_starts_a_note_below_its_live_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A note written to stderr while flipes train's live line is open on the terminal starts a line of its own, and
    the command's streams are the process's own again afterwards."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)

    def train(config: Any, comm: Any = None, callbacks: Any = ()) -> Any:  # what training writes, without training
        sys.stdout.write("\r\033[Kgen 0/1")
        sys.stdout.flush()
        print("flipes: a note", file=sys.stderr, flush=True)
        return SimpleNamespace(reason="generations")

    monkeypatch.setattr(flipes.training, "train", train)
    assert main(["train", "--env", "flipes/CartPole-v1", "--generations", "1", "--out", str(tmp_path / "run")]) == 0
    assert "\r\033[Kgen 0/1\nflipes: a note\n" in terminal.getvalue(), terminal.getvalue()
    assert sys.stdout is terminal and sys.stderr is terminal


@dataclasses.dataclass
class _Options:
    scale: float = 1.0


def test_a_scripts_run_writes_sigma_in_an_ascii_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """flipes.cli.run on an ASCII stdout (PYTHONIOENCODING=ascii, a C locale's file) lets the script print σ, spelt
    ``sigma``, instead of ending in a UnicodeEncodeError."""
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    monkeypatch.setattr(sys, "stdout", out)
    assert run(lambda options: print(f"σ = {options.scale}") or 0, _Options, argv=["--scale", "2"]) == 0
    out.flush()
    assert raw.getvalue() == b"sigma = 2.0\n"


def test_train_help_names_the_streams(capsys: pytest.CaptureFixture[str]) -> None:
    """flipes train --help says that progress and the last line go to stdout, notes, warnings and errors to stderr."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "go to stdout; notes, warnings and errors" in text and "to stderr" in text, text
