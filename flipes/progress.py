"""A progress line for training loops: live on a terminal, plain lines when piped."""

from __future__ import annotations

import io
import math
import os
import sys
import time
from typing import Any, TextIO

# each column of the line: its template, and the width its value is padded to at the least (widths only grow in a run)
COLUMNS: dict[str, tuple[str, int]] = {
    "gen": ("gen {}", 5),
    "fitness": ("fitness {}", 10),
    "max": ("max {}", 10),
    "eval": ("eval {}", 10),
    "steps": ("{} steps", 11),
    "rate": ("{}/s", 7),
    "seconds": ("{}s", 7),
    "eta": ("eta {}", 7),
}
# a live line wider than its terminal wraps, and each redraw (carriage return, clear) then rewrites its last row
# alone, leaving a row more each generation: where it does not fit, these columns go first, in this order
DROP_ORDER = ("rate", "steps", "max", "seconds", "eval", "eta", "fitness")


class Progress:
    """Prints one status line per generation, its columns at the same place on every line of a run.

    On a terminal the line is rewritten in place (with an ETA), cut to the terminal's width (``COLUMNS`` where set)
    by leaving out the columns of :data:`DROP_ORDER` first; on a terminal without cursor control (``TERM=dumb``:
    Emacs' shell and compilation buffers) and when the output is a pipe or a file, every ``every``-th generation gets a
    line of its own, so logs stay readable, and
    :meth:`message` first writes the latest generation's line if it had none (a run stopped between
    two such lines by Ctrl-C, ``--max-seconds`` or a callback ends its log at the generation it stopped at).
    A column a row lacks (``eval`` between evaluations) is left blank once a line has shown it, and each value is
    padded to the widest one yet, so a column moves at most once, for a value wider than any before it.

    Args:
        total: generations planned.
        stream: where to write (``sys.stdout`` by default; nowhere where the process has none).
        every: with plain lines, print every ``every`` generations (and the last one).
        evaluates: whether rows have an eval_return every ``every`` generations (its column is kept from the start);
            None: from the first row that has one.
        max_timesteps: the run's budget of env steps (0: none); the ETA is the sooner of the two budgets, the steps
            left at this call's steps per generation.
    """

    def __init__(
        self, total: int, stream: TextIO | None = None, every: int = 1, evaluates: bool | None = None, max_timesteps: int = 0
    ) -> None:
        self.total, self.every, self.max_timesteps = total, every, max_timesteps
        self.first_steps = 0  # the timesteps of this call's first row
        self.stream = stream if stream is not None else sys.stdout or _Nowhere()  # None: stdout closed (>&-)
        isatty = getattr(self.stream, "isatty", None)  # print needs write alone: a notebook's or a logger's stand-in
        self.live = callable(isatty) and bool(isatty()) and not dumb_terminal(self.stream)
        self.start = time.perf_counter()
        self.first_gen: int | None = None
        self.unwritten: str | None = None  # piped: the latest generation's line, when it was skipped
        self.widths = {key: width for key, (_, width) in COLUMNS.items()}
        self.shown = {"gen", "fitness", "max", "seconds", "eta"} | ({"eval"} if evaluates else set())

    def update(self, row: dict[str, Any]) -> None:
        """Show a metrics row (``generation`` required; ``timesteps``, ``eval_return`` and the others where present):
        the live line redrawn on a terminal, else a plain line every ``every`` generations."""
        gen = row["generation"]
        if self.first_gen is None:
            self.first_gen, self.first_steps = gen, row.get("timesteps", 0)
        done = gen + 1 - self.first_gen
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        left = self.total - gen - 1
        steps = row.get("timesteps", 0)
        if self.max_timesteps and gen > self.first_gen and steps > self.first_steps:  # steps per generation seen
            per_generation = (steps - self.first_steps) / (gen - self.first_gen)
            left = min(left, math.ceil(max(self.max_timesteps - steps, 0) / per_generation))
        eta = left / rate if rate > 0 else float("inf")
        values = {
            "gen": f"{gen}/{self.total}".rjust(len(str(self.total)) * 2 + 1),
            "fitness": f"{row['fitness_mean']:.3f}",
            "max": f"{row['fitness_max']:.3f}",
            "seconds": f"{row['seconds']:.1f}",
            "eta": _clock(eta),
        }
        if "eval_return" in row:
            values["eval"] = f"{row['eval_return']:.3f}"
        if row.get("timesteps"):
            values["steps"], values["rate"] = f"{row['timesteps']:,d}", f"{row.get('steps_per_second', 0):,.0f}"
        self.shown |= set(values)
        line = self._line(values, self.shown)
        if self.live:
            if width := self._terminal_width():  # the widest line that does not wrap (the last column is left free)
                keys = set(self.shown)
                for key in DROP_ORDER:
                    if len(line) < width:
                        break
                    keys.discard(key)
                    line = self._line(values, keys)
                line = line[: width - 1]
            self.stream.write("\r\033[K" + line)
        elif gen % self.every == 0 or gen + 1 >= self.total:
            self.stream.write(line + "\n")
            self.unwritten = None
        else:
            self.unwritten = line
        self._flush()

    def _flush(self) -> None:
        flush_if_it_can(self.stream)

    def _line(self, values: dict[str, str], keys: set[str]) -> str:
        """The line of the columns ``keys``, in their order."""
        return "  ".join(self._cell(key, values.get(key)) for key in COLUMNS if key in keys)

    def _terminal_width(self) -> int:
        """The columns of the terminal the stream writes to (``COLUMNS`` first, as :func:`shutil.get_terminal_size`
        reads it); 0 where unknown (a stream without a file descriptor, a pty that reports no size)."""
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
            return 0
        columns = os.environ.get("COLUMNS", "")
        if columns.isdigit() and int(columns) > 0:
            return int(columns)
        try:
            return os.get_terminal_size(fd).columns
        except (OSError, ValueError):
            return 0

    def _cell(self, key: str, value: str | None) -> str:
        """A column's text, its value right-aligned to the widest yet; blank, as wide, where the row has none."""
        template, _ = COLUMNS[key]
        if value is None:
            return " " * len(template.format(" " * self.widths[key]))
        self.widths[key] = max(self.widths[key], len(value))
        return template.format(value.rjust(self.widths[key]))

    def message(self, text: str) -> None:
        """A line of its own (ends a live line first; piped, writes the latest generation's line first if it had none)."""
        if self.unwritten is not None:
            self.stream.write(self.unwritten + "\n")
            self.unwritten = None
        self.stream.write(("\n" if self.live else "") + text + "\n")
        self._flush()


def dumb_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal without cursor control, ``TERM=dumb`` (Emacs' shell shows ``\\033[K`` as text).
    TERM describes the terminal of a file descriptor: a stream without one is taken as it says it is."""
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return os.environ.get("TERM") == "dumb"


def flush_if_it_can(stream: TextIO) -> None:
    """Flush ``stream`` where it can be: a stand-in for stdout (a notebook's, a logging adapter) may have write alone,
    which ``print`` needs, where ``print(..., flush=True)`` raises AttributeError."""
    flush = getattr(stream, "flush", None)
    if callable(flush):
        flush()


def to_stderr(line: str) -> None:
    """``line`` on ``sys.stderr``, flushed where it can be (a notebook's stand-in may have write alone)."""
    print(line, file=sys.stderr)
    flush_if_it_can(sys.stderr)


class _Nowhere(io.TextIOBase):
    """Where the lines go when the process has no stdout (``flipes train >&-``, where Python's ``sys.stdout`` is None):
    nowhere, as ``print`` does then."""

    def write(self, text: str) -> int:
        return len(text)


def _clock(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}"
