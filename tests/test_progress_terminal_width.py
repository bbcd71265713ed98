"""The live progress line on terminals: never wider than the terminal, and plain lines where the terminal has no
cursor control."""

from __future__ import annotations

import fcntl
import io
import os
import select
import struct
import termios

import pytest

from flipes.progress import Progress

ROWS = [
    {"generation": g, "fitness_mean": 12.5 * g, "fitness_max": 30.0 * g, "seconds": 0.5 * g, "timesteps": 1000 * g + 1}
    | {"steps_per_second": 2000.0}
    | ({"eval_return": 20.0 * g} if g % 2 == 0 else {})
    for g in range(5)
]


def _drain(master: int) -> str:
    """All the bytes written to a pseudo-terminal so far (a read returns one chunk of them)."""
    data = b""
    while select.select([master], [], [], 0.05)[0]:
        data += os.read(master, 1 << 16)
    return data.decode()


def _live_lines(columns: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The lines a run's live progress draws on a pseudo-terminal ``columns`` wide (as the terminal receives them)."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    stream = open(slave, "w", encoding="utf-8", closefd=True)
    try:
        assert stream.isatty()
        progress = Progress(1000, stream, every=2)
        for row in ROWS:
            progress.update(row)
        stream.flush()
        data = _drain(master)
    finally:
        stream.close()
        os.close(master)
    return [line for line in data.replace("\n", "\r").split("\r\x1b[K") if line]


@pytest.mark.parametrize("columns", [40, 80, 100])
def test_a_live_line_never_wraps_on_a_narrow_terminal(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal ``columns`` wide, every redraw of the live line is shorter than the terminal (a wrapped line
    leaves a row behind at each redraw), keeps the generation and the fitness, and on 80 columns still shows the
    evaluation and the ETA (the steps and their rate go first)."""
    lines = _live_lines(columns, monkeypatch)
    assert len(lines) == len(ROWS), lines
    assert all(len(line) < columns and line.startswith("gen ") for line in lines), lines
    assert all("fitness" in line for line in lines), lines  # the last column to go, after the ETA
    if columns >= 80:
        assert all("eta" in line for line in lines), lines
        assert "eval" in lines[-1], lines


def test_a_live_line_that_fits_is_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal wider than the line, every column is shown."""
    lines = _live_lines(200, monkeypatch)
    assert all(label in lines[-1] for label in ("fitness", "max", "eval", "steps", "/s", "eta")), lines


def test_columns_sets_the_width_of_the_live_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """``COLUMNS`` (as shutil reads it) sets the width of the live line on a terminal."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))
    monkeypatch.setenv("COLUMNS", "50")
    monkeypatch.setenv("TERM", "xterm")
    with open(slave, "w", encoding="utf-8") as stream:
        progress = Progress(1000, stream)
        for row in ROWS:
            progress.update(row)
        stream.flush()
        data = _drain(master)
    os.close(master)
    lines = [line for line in data.split("\r\x1b[K") if line]
    assert len(lines) == len(ROWS) and all(len(line) < 50 for line in lines), lines


def test_a_dumb_terminal_gets_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``TERM=dumb`` (Emacs' shell, which shows escape sequences as text) a terminal gets plain lines, as a pipe
    does: no carriage return or escape sequence, a line every ``every`` generations and the last one."""
    monkeypatch.setenv("TERM", "dumb")
    master, slave = os.openpty()
    with open(slave, "w", encoding="utf-8") as stream:
        progress = Progress(5, stream, every=2)
        for row in ROWS:
            progress.update(row)
        progress.message("done")
        stream.flush()
        text = _drain(master).replace("\r\n", "\n")
    os.close(master)
    assert "\r" not in text and "\x1b" not in text, text
    assert [line.split("  fitness")[0] for line in text.splitlines()] == ["gen   0/5", "gen   2/5", "gen   4/5", "done"]


def test_a_stream_without_a_terminal_of_its_own_ignores_term(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream that says it is a terminal but has no file descriptor (a notebook's, a test's) has no TERM to read:
    its line is live whatever TERM says."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("TERM", "dumb")
    assert Progress(5, Terminal()).live
