"""A progress line for training loops: live on a terminal, plain lines when piped."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Prints one status line per generation.

    On a terminal the line is rewritten in place (with an ETA); when the output is a pipe or a
    file, every ``every``-th generation gets a line of its own, so logs stay readable, and
    :meth:`message` first writes the latest generation's line if it had none (a run stopped between
    two such lines by Ctrl-C, ``--max-seconds`` or a callback ends its log at the generation it stopped at).

    Args:
        total: generations planned.
        stream: where to write (``sys.stdout`` by default).
        every: with plain lines, print every ``every`` generations (and the last one).
    """

    def __init__(self, total: int, stream: TextIO | None = None, every: int = 1) -> None:
        self.total, self.every = total, every
        self.stream = stream if stream is not None else sys.stdout
        self.live = self.stream.isatty()
        self.start = time.perf_counter()
        self.first_gen: int | None = None
        self.unwritten: str | None = None  # piped: the latest generation's line, when it was skipped

    def update(self, row: dict) -> None:
        gen = row["generation"]
        if self.first_gen is None:
            self.first_gen = gen
        done = gen + 1 - self.first_gen
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        eta = (self.total - gen - 1) / rate if rate > 0 else float("inf")
        parts = [f"gen {gen:5d}/{self.total}", f"fitness {row['fitness_mean']:10.3f} (max {row['fitness_max']:.3f})"]
        if "eval_return" in row:
            parts.append(f"eval {row['eval_return']:10.3f}")
        if row.get("timesteps"):
            parts.append(f"{row['timesteps']:>10d} steps ({row.get('steps_per_second', 0):,.0f}/s)")
        parts.append(f"{row['seconds']:7.1f}s  eta {_clock(eta)}")
        line = "  ".join(parts)
        if self.live:
            self.stream.write("\r\033[K" + line)
        elif gen % self.every == 0 or gen + 1 >= self.total:
            self.stream.write(line + "\n")
            self.unwritten = None
        else:
            self.unwritten = line
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (ends a live line first; piped, writes the latest generation's line first if it had none)."""
        if self.unwritten is not None:
            self.stream.write(self.unwritten + "\n")
            self.unwritten = None
        self.stream.write(("\n" if self.live else "") + text + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}"
