"""A command whose stdout's reader has ended (``flipes evaluate DIR | true``, ``| head -1``) ends quietly with status
141, as a process that SIGPIPE ended, instead of a BrokenPipeError's traceback (or status 120 at the interpreter's
exit)."""

from __future__ import annotations

import os
import sys

import pytest

from flipes.commands import READER_GONE, main


@pytest.mark.parametrize("argv", [["--version"], ["export", "--help"]])
def test_a_command_whose_reader_ended_exits_quietly_with_141(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """With stdout a pipe whose read end is closed, ``main`` returns 141 (also for ``--help``'s text, which argparse
    ends with SystemExit), and stdout is left writable, so that the interpreter's last flush cannot fail."""
    read, write = os.pipe()
    os.close(read)
    out = open(write, "w", encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", out)
    try:
        assert main(argv) == READER_GONE == 141
        out.write("more\n")
        out.flush()  # /dev/null now
    finally:
        out.close()


def test_a_command_whose_output_is_read_exits_0(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Where stdout is read, the same command writes its line and ends with status 0."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("flipes ")
