import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest-xdist worker per core: torch's own threads on top would only contend
    # (the suite took 353 s with them and 308 s without, on 2 cores). Subprocesses keep their own settings.
    torch.set_num_threads(1)


# far above any test's time on a busy 2-core machine (the slowest take ~2 min there), far below CI's 90 minutes
TEST_LIMIT_S = 600


def _too_long(signum: int, frame: FrameType | None) -> None:
    pytest.fail(f"still running after {TEST_LIMIT_S} s (tests/conftest.py TEST_LIMIT_S): a hang?")


@pytest.fixture(autouse=True)
def hang_guard() -> Iterator[None]:
    """A test still running after ``TEST_LIMIT_S`` fails with the traceback of where it was (SIGALRM, in Python code;
    not on Windows), instead of stalling the suite until CI's limit; one stuck in C code a minute later ends its
    process with every thread's traceback (under pytest-xdist the worker is replaced and the test reported as
    crashed)."""
    faulthandler.dump_traceback_later(TEST_LIMIT_S + 60, exit=True)
    # no signal handlers off the main thread; Windows has no SIGALRM (there only the faulthandler's limit holds)
    alarm = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGALRM, _too_long) if alarm else None
    if alarm:
        signal.alarm(TEST_LIMIT_S)
    try:
        yield
    finally:
        if alarm:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def device(monkeypatch: pytest.MonkeyPatch) -> torch.device:
    """Where the device-aware tests run: ``FLIPES_TEST_DEVICE`` (``cpu`` unless set; scripts/gpu_check.py
    sets ``cuda``). A CUDA device that is not there skips them. cuDNN's TF32 is off while they run: torch
    lets cuDNN's float32 convolutions and RNNs round their inputs to 10 bits by default, which put the
    plain ``nn.LSTM`` reference ~3e-4 (relative 1e-3) off its own float32 value on an H100."""
    name = os.environ.get("FLIPES_TEST_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("FLIPES_TEST_DEVICE asks for CUDA, and there is no CUDA device")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    return torch.device(name)
