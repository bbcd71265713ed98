"""What ``import flipes`` and ``import envs`` do to the process that imports them: a lab's shared environment imports
flipes beside other code, which must find torch, NumPy, Python and the interpreter as they were."""

from __future__ import annotations

import pytest
from helpers import fresh_import_probe


def test_importing_flipes_and_envs_changes_no_process_state_and_loads_no_optional_package(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """In a fresh process, ``import flipes, envs`` leaves torch's thread count, default dtype, determinism and matmul
    settings, the torch, NumPy and Python global generators, warnings filters, logging, signal handlers,
    ``sys.excepthook``, ``os.environ``, the working directory and ``sys.path`` as they were, and imports none of the
    optional packages (matplotlib, TensorBoard, W&B, mpi4py, EnvPool, MuJoCo, Warp, transformers, Pillow,
    scikit-learn): each loads where a run uses it."""
    out = fresh_import_probe(tmp_path_factory)
    assert (out["changed"], out["loaded"]) == ([], [])
