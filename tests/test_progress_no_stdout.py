"""A process without stdout (``flipes train >&-``: Python's ``sys.stdout`` is None) trains and ends as one whose
stdout is read, its lines going nowhere, as ``print``'s do then."""

from __future__ import annotations

import sys

import pytest

from flipes.commands import main
from flipes.progress import Progress


def test_progress_without_stdout_writes_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``sys.stdout`` None, a progress line per generation and the closing message raise nothing."""
    monkeypatch.setattr(sys, "stdout", None)
    progress = Progress(3, every=1)
    for g in range(3):
        progress.update({"generation": g, "fitness_mean": 1.0, "fitness_max": 2.0, "seconds": 0.1 * g})
    progress.message("all 3 generations trained")
    assert not progress.live


def test_a_command_without_stdout_ends_with_status_0(monkeypatch: pytest.MonkeyPatch) -> None:
    """``flipes --version >&-`` ends with status 0, as its ``print`` writes nowhere."""
    monkeypatch.setattr(sys, "stdout", None)
    assert main(["--version"]) == 0
