"""Training on an env leaves the caller's matplotlib as it was: EnvPool's import sets a non-interactive backend and a
config directory of its own where the environment names none, and imports matplotlib under them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

CHECK = """
import json, os, sys
from flipes.rl.envpool_vec import envpool_ids
ids = envpool_ids()
import matplotlib
print(json.dumps({"ids": len(ids), "environ": {k: os.environ.get(k) for k in ("MPLBACKEND", "MPLCONFIGDIR")},
                  "configdir": matplotlib.get_configdir()}))
"""


@pytest.mark.skipif(
    importlib.util.find_spec("envpool") is None or importlib.util.find_spec("matplotlib") is None,
    reason="needs EnvPool and matplotlib",
)
def test_looking_up_envpool_ids_leaves_the_matplotlib_environment_and_config_dir_as_they_were(tmp_path: Path) -> None:
    """In a fresh process (EnvPool's import is what is checked) whose environment sets neither MPLBACKEND nor
    MPLCONFIGDIR, listing EnvPool's ids (as every ``flipes.train`` on an env does) leaves both unset, and matplotlib
    reads the user's config directory (``$XDG_CONFIG_HOME/matplotlib``: their matplotlibrc), not EnvPool's in /tmp
    (where a later ``plt.show()`` would draw nothing under ``Agg``)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "MPLCONFIGDIR")}
    (tmp_path / "matplotlib").mkdir()
    environ |= {"PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", CHECK], env=environ, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    said = json.loads(done.stdout.splitlines()[-1])
    assert said["ids"] > 0  # EnvPool was imported
    assert said["environ"] == {"MPLBACKEND": None, "MPLCONFIGDIR": None}
    assert said["configdir"] == str(tmp_path / "matplotlib")
