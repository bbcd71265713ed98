"""What a notebook kernel's streams meet: stand-ins for ``sys.stderr`` that have ``write`` alone (no ``flush``,
``fileno`` or ``isatty``), or that takes bytes, where a Ctrl-C's note is said from the signal handler."""

from __future__ import annotations

import io
import signal

import pytest
from helpers import WriteOnly

from flipes.interrupts import Interrupted, StopRequest


def test_a_ctrl_c_note_on_a_write_only_stderr_asks_for_the_stop_and_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first Ctrl-C with ``sys.stderr`` a stand-in without ``flush`` asks the loop to stop and writes its one line
    there: the handler raises nothing (an AttributeError from ``print(flush=True)`` would be raised into the
    generation under way, the stop request lost); a second one raises Interrupted."""
    stream = WriteOnly()
    monkeypatch.setattr("sys.stderr", stream)
    with StopRequest(say=True) as stop:
        stop.running = True
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
        with pytest.raises(Interrupted, match=r"^a second Ctrl-C; the last checkpoint stays$"):
            signal.raise_signal(signal.SIGINT)
    assert stream.text == (
        "flipes: Ctrl-C: stopping after the generation under way, with a checkpoint; another Ctrl-C or SIGTERM stops "
        "at once, keeping the last checkpoint\n"
    )


def test_a_ctrl_c_note_whose_stderr_takes_bytes_goes_to_file_descriptor_2(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """Where ``sys.stderr`` is a binary stream (its ``write`` raises a TypeError for text), the first Ctrl-C still only
    asks for the stop: its line goes to file descriptor 2 instead, the TypeError not raised into the main thread."""
    monkeypatch.setattr("sys.stderr", io.BytesIO())
    with StopRequest(say=True) as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
    assert capfd.readouterr().err == (
        "flipes: Ctrl-C: stopping before the first generation; another Ctrl-C or SIGTERM stops at once, keeping the "
        "last checkpoint\n"
    )
