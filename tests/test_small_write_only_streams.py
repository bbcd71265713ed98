"""A stream with ``write`` alone (a logging adapter, a notebook's stand-in for stdout) takes flipes' lines: the
progress lines and the line saying how training ended, as ``print`` needs no more, with no AttributeError for a
missing ``flush`` once training is done."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import FAST_KW, WriteOnly

import flipes
from flipes.callbacks import OutcomePrinter, ProgressPrinter


def _train(tmp_path: Path, **kw: object) -> None:
    flipes.train(**{**FAST_KW, "env": "flipes/CartPole-v1", **kw}, generations=1, out=str(tmp_path / "run"))


@pytest.mark.parametrize("printer", [OutcomePrinter, ProgressPrinter])
def test_a_printer_given_a_write_only_stream_writes_the_last_line(tmp_path: Path, printer: type) -> None:
    """OutcomePrinter (which raised AttributeError after training) and ProgressPrinter given a write-only stream end
    training normally, its last line written to the stream."""
    stream = WriteOnly()
    _train(tmp_path, callbacks=[printer(stream=stream)])
    assert stream.text.endswith(f"the 1 generation trained; 1 generation in all, run directory {tmp_path / 'run'}\n")


def test_train_with_a_write_only_stdout_and_no_progress_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """flipes.train(progress=False) with sys.stdout replaced by a write-only stand-in writes its one line there."""
    stream = WriteOnly()
    monkeypatch.setattr(sys, "stdout", stream)
    _train(tmp_path)  # FAST_KW: progress=False
    assert stream.text == f"the 1 generation trained; 1 generation in all, run directory {tmp_path / 'run'}\n"


def test_train_notes_on_a_write_only_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """flipes.train(overwrite=True) over a finished run, with sys.stderr a write-only stand-in, writes its note of the
    deleted files there and trains (its print(flush=True) raised AttributeError before anything trained)."""
    _train(tmp_path)
    stream = WriteOnly()
    monkeypatch.setattr(sys, "stderr", stream)
    _train(tmp_path, overwrite=True, progress=True)
    assert stream.text.startswith("flipes: --overwrite: deleted the old run's checkpoint.pt") and stream.text.count("\n") == 1
    assert stream.text.endswith(f" in {tmp_path / 'run'}\n")
