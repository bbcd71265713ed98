"""An env defined in a notebook's cell, asked to step in worker processes, is refused at once naming the ways that
work: the workers cannot import a cell, and their own traceback goes to the kernel's stderr, not the notebook."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import gymnasium as gym
import pytest
from helpers import Cell

from flipes.rl.envs import EnvError, make_vector_env
from flipes.rl.workers import WorkerVectorEnv


@pytest.fixture
def notebook(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An interactive ``__main__`` (no file, no spec: IPython's user module) defining ``Cell``, registered as an id."""
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    monkeypatch.setattr(Cell, "__module__", "__main__")
    gym.register("NotebookCell-v0", entry_point=Cell)
    yield "NotebookCell-v0"
    del gym.registry["NotebookCell-v0"]


def test_an_env_of_a_notebook_cell_in_worker_processes_is_refused_naming_the_ways_that_work(notebook: str) -> None:
    """``gymnasium-async:`` of an id whose entry point is a class of an interactive ``__main__`` raises an EnvError
    naming the class, the in-process engine and a module of one's own, before any worker starts; the same id steps
    in this process with ``gymnasium-sync:``."""
    expected = (
        r"^'NotebookCell-v0' is made by __main__\.Cell, defined in this interactive session \(a notebook's cell, the "
        r"REPL\), which the 2 env worker processes cannot import: step it in this process, "
        r"env='gymnasium-sync:NotebookCell-v0', or register it in a module of yours and pass "
        r"env='mymodule:NotebookCell-v0' \(each worker imports it\)$"
    )
    with pytest.raises(EnvError, match=expected):
        WorkerVectorEnv(notebook, 4, 2)
    with pytest.raises(EnvError, match=expected):
        make_vector_env(f"gymnasium-async:{notebook}", 4, threads=2, note=None)
    env = make_vector_env(f"gymnasium-sync:{notebook}", 4, note=None)
    try:
        obs, _ = env.reset(seed=0)
        assert tuple(obs.shape) == (4, 3)
    finally:
        env.close()
