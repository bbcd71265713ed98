"""Training's signal handling leaves alone a handler it could not put back afterwards: one installed outside Python,
which ``signal.getsignal`` reports as None."""

from __future__ import annotations

import signal

import pytest

from flipes.interrupts import StopRequest


def test_a_handler_installed_outside_python_is_neither_taken_nor_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where SIGTERM's handler was installed from C (getsignal says None), StopRequest takes SIGINT alone and exits
    without a TypeError from ``signal.signal(SIGTERM, None)``; SIGINT's handler is put back."""
    real = signal.getsignal
    monkeypatch.setattr(signal, "getsignal", lambda s: None if s == signal.SIGTERM else real(s))
    before = real(signal.SIGINT)
    with StopRequest(say=False) as stop:
        assert real(signal.SIGINT) == stop._handle and signal.SIGTERM not in stop._previous
    assert real(signal.SIGINT) is before
