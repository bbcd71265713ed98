"""What ``import flipes`` and ``import envs`` do to the process that imports them: a lab's shared environment imports
flipes beside other code, which must find torch, NumPy, Python and the interpreter as they were."""

from __future__ import annotations

import json

from helpers import run_script

# torch, NumPy and gymnasium first: their own import-time settings (gymnasium's warnings filter and
# PYGAME_HIDE_SUPPORT_PROMPT) are theirs; what changes after is flipes'
_PROBE = r"""
import json, logging, os, random, signal, sys, warnings
import numpy as np, torch, gymnasium

def state():
    return {
        "threads": torch.get_num_threads(), "dtype": str(torch.get_default_dtype()),
        "deterministic": torch.are_deterministic_algorithms_enabled(), "grad": torch.is_grad_enabled(),
        "matmul": torch.get_float32_matmul_precision(), "cudnn": str(torch.backends.cudnn.benchmark),
        "torch_rng": torch.get_rng_state().tolist(), "numpy_rng": repr(np.random.get_state()), "random": repr(random.getstate()),
        "warnings": repr(warnings.filters), "showwarning": repr(warnings.showwarning),
        "logging": repr([(name, getattr(lg, "level", None), getattr(lg, "handlers", None))
                         for name, lg in [("", logging.getLogger()), *logging.Logger.manager.loggerDict.items()]]),
        "signals": repr({s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}),
        "excepthook": repr((sys.excepthook, sys.displayhook)), "environ": dict(os.environ), "cwd": os.getcwd(),
        "path": list(sys.path), "recursion": sys.getrecursionlimit(),
    }

torch.manual_seed(5); np.random.seed(5); random.seed(5)
before = state()
import flipes, envs
after = state()
optional = ["matplotlib", "tensorboard", "torch.utils.tensorboard", "wandb", "mpi4py", "envpool", "mujoco", "warp",
            "mujoco_warp", "transformers", "PIL", "sklearn", "envs.warp"]
print(json.dumps({"changed": sorted(k for k in before if before[k] != after[k]),
                  "loaded": [m for m in optional if m in sys.modules]}))
"""


def test_importing_flipes_and_envs_changes_no_process_state_and_loads_no_optional_package() -> None:
    """In a fresh process, ``import flipes, envs`` leaves torch's thread count, default dtype, determinism and matmul
    settings, the torch, NumPy and Python global generators, warnings filters, logging, signal handlers,
    ``sys.excepthook``, ``os.environ``, the working directory and ``sys.path`` as they were, and imports none of the
    optional packages (matplotlib, TensorBoard, W&B, mpi4py, EnvPool, MuJoCo, Warp, transformers, Pillow,
    scikit-learn): each loads where a run uses it."""
    out = json.loads(run_script("-c", _PROBE).stdout.strip().splitlines()[-1])
    assert out == {"changed": [], "loaded": []}
