"""A note written to stderr while ``flipes train`` shows its live progress line on the same terminal starts a line of
its own, below the progress line, instead of being glued to its end."""

from __future__ import annotations

import io
import os
import select
import sys

import pytest

from flipes.commands import notes_below_the_live_line
from flipes.progress import Progress

ROW = {"generation": 0, "fitness_mean": 1.0, "fitness_max": 2.0, "seconds": 0.1}


def _drain(master: int) -> str:
    data = b""
    while select.select([master], [], [], 0.05)[0]:
        data += os.read(master, 1 << 16)
    return data.decode()


def test_a_note_during_a_live_line_starts_below_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a pseudo-terminal shared by stdout and stderr: the live line, then a newline, then the note; the next
    redraw on the row below the note; and both streams are the process's own again afterwards."""
    monkeypatch.setenv("TERM", "xterm")
    master, slave = os.openpty()
    out, err = open(slave, "w", encoding="utf-8"), open(slave, "w", encoding="utf-8", closefd=False)
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    try:
        with notes_below_the_live_line():
            progress = Progress(10, sys.stdout)
            progress.update(ROW)
            print("flipes: a note", file=sys.stderr, flush=True)
            progress.update(ROW | {"generation": 1})
            progress.message("done")
        assert sys.stdout is out and sys.stderr is err
        text = _drain(master).replace("\r\n", "\n")
    finally:
        err.close()
        out.close()
        os.close(master)
    parts = text.split("\r\x1b[K")
    assert len(parts) == 3 and parts[0] == "", text
    assert parts[1].startswith("gen  0/10") and parts[1].endswith("\nflipes: a note\n") and parts[1].count("\n") == 2, text
    assert parts[2].startswith("gen  1/10") and parts[2].endswith("\ndone\n"), text


def test_a_traceback_after_a_live_line_starts_a_line_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception out of training leaves the live line ended, so its traceback starts at a line's beginning."""
    monkeypatch.setenv("TERM", "xterm")
    master, slave = os.openpty()
    out = open(slave, "w", encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", out)
    try:
        with pytest.raises(RuntimeError), notes_below_the_live_line():
            Progress(10, sys.stdout).update(ROW)
            raise RuntimeError
        text = _drain(master)
    finally:
        out.close()
        os.close(master)
    assert text.startswith("\r\x1b[Kgen  0/10") and text.endswith("\r\n"), text


def test_piped_streams_are_left_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where stdout is no terminal (a pipe, a file), training writes to the process's own streams."""
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    with notes_below_the_live_line():
        assert sys.stdout is out and sys.stderr is err
