import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest-xdist worker per core: torch's own threads on top would only contend
    # (the suite took 353 s with them and 308 s without, on 2 cores). Subprocesses keep their own settings.
    torch.set_num_threads(1)


@pytest.fixture
def device() -> torch.device:
    """Where the device-aware tests run: ``FLIPES_TEST_DEVICE`` (``cpu`` unless set; scripts/gpu_check.py
    sets ``cuda``). A CUDA device that is not there skips them."""
    name = os.environ.get("FLIPES_TEST_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("FLIPES_TEST_DEVICE asks for CUDA, and there is no CUDA device")
    return torch.device(name)
