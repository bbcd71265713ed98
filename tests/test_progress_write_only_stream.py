"""Progress lines to a stream that has only ``write`` (what ``print`` and ``contextlib.redirect_stdout`` require of
one: a notebook's or a logger's stand-in for stdout), which has no ``isatty`` or ``flush`` to call."""

from __future__ import annotations

import contextlib

from flipes.progress import Progress


class _Writer:
    """A stand-in for stdout with ``write`` alone."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)


def test_progress_writes_plain_lines_to_a_stream_with_write_alone() -> None:
    """sys.stdout redirected to an object with write alone gets the plain lines a pipe gets (no live redraws), every
    generation's and the last line, instead of an AttributeError after the run directory was set up."""
    writer = _Writer()
    with contextlib.redirect_stdout(writer):  # type: ignore[type-var]
        progress = Progress(2)
        for gen in range(2):
            progress.update({"generation": gen, "fitness_mean": 1.0, "fitness_max": 2.0, "seconds": 0.1})
        progress.message("all 2 generations trained")
    lines = "".join(writer.parts).splitlines()
    assert [line.split()[1] for line in lines[:2]] == ["0/2", "1/2"] and lines[2:] == ["all 2 generations trained"], lines
    assert "\r" not in "".join(writer.parts)
