"""What a notebook's Stop button pressed twice raises from ``flipes.train``: a KeyboardInterrupt that the package
names, so a loop of runs can tell it from another."""

from __future__ import annotations

import signal

import pytest

import flipes
from flipes.interrupts import StopRequest


def test_a_second_ctrl_c_raises_flipes_interrupted_a_keyboard_interrupt() -> None:
    """``flipes.Interrupted`` (in ``flipes.__all__``) is the exception a second Ctrl-C raises, caught by
    ``except flipes.Interrupted`` and, being a KeyboardInterrupt, by ``except KeyboardInterrupt``; one line names what
    the run keeps."""
    assert "Interrupted" in flipes.__all__ and issubclass(flipes.Interrupted, KeyboardInterrupt)
    with StopRequest(say=False, resume="runs/mine") as stop, pytest.raises(flipes.Interrupted) as stopped:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
        signal.raise_signal(signal.SIGINT)
    assert str(stopped.value) == "a second Ctrl-C; the last checkpoint stays: --resume runs/mine continues from it"
