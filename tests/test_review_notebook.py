"""What a notebook user's fixes must keep: a Ctrl-C's note said once on a stand-in stderr, EnvPool imported only
through the guard that keeps the caller's matplotlib, and the refusal of a notebook cell's env for worker processes
telling a cell from a script, and a vector entry point or ``module:Name`` string from elsewhere."""

from __future__ import annotations

import ast
import contextlib
import signal
import sys
import threading
import time
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from helpers import ROOT, Cell, WriteOnly

from flipes.interrupts import StopRequest
from flipes.rl.envs import EnvError
from flipes.rl.workers import WorkerVectorEnv, _only_here


def test_a_ctrl_c_note_on_a_write_only_stderr_is_said_there_once_not_also_on_file_descriptor_2(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """A first Ctrl-C with ``sys.stderr`` a stand-in without ``flush`` writes its line to the stand-in and nothing to
    file descriptor 2 (a flush attempted and failed would repeat the line there, on the kernel's terminal)."""
    stream = WriteOnly()
    monkeypatch.setattr("sys.stderr", stream)
    with StopRequest(say=True) as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
    assert stream.text.count("\n") == 1 and stream.text.startswith("flipes: Ctrl-C: stopping")
    assert capfd.readouterr().err == ""


def _envpool_imports_unguarded(tree: ast.Module) -> list[int]:
    """Lines of ``import envpool``/``from envpool... import`` not inside a function that calls import_envpool() before
    them (import_envpool itself aside): at a module's top level too."""
    functions = [f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)]
    lines = []
    for node in ast.walk(tree):
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        modules += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if not any(m.split(".")[0] == "envpool" for m in modules):
            continue
        inside = [f for f in functions if f.lineno <= node.lineno <= (f.end_lineno or f.lineno)]
        function = max(inside, key=lambda f: f.lineno, default=None)  # the innermost
        calls = [] if function is None else [n.lineno for n in ast.walk(function) if isinstance(n, ast.Call)
                                               and getattr(n.func, "id", "") == "import_envpool"]  # fmt: skip
        if function is None or (function.name != "import_envpool" and not any(c < node.lineno for c in calls)):
            lines.append(node.lineno)
    return lines


def test_every_import_of_envpool_in_flipes_goes_through_import_envpool() -> None:
    """EnvPool's import sets MPLBACKEND/MPLCONFIGDIR (a fresh process shows it, test_notebook_matplotlib): whichever of
    flipes' functions imports it first (envpool_ids, envpool_atari for an Atari id, an option check), it is after
    import_envpool(), which puts them back. No module imports it at its top level."""
    found = {}
    for path in sorted((ROOT / "flipes").rglob("*.py")):
        if unguarded := _envpool_imports_unguarded(ast.parse(path.read_text(), str(path))):
            found[str(path.relative_to(ROOT))] = unguarded
    assert found == {}


def make_vector(num_envs: int, **kwargs: object) -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv([Cell] * num_envs)


@pytest.fixture
def main(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """A ``__main__`` without file or spec (IPython's user module, ``python -c``) defining ``Cell`` and ``make_vector``;
    the ids registered by a test are removed after it."""
    module = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", module)
    monkeypatch.setattr(Cell, "__module__", "__main__")
    monkeypatch.setattr(make_vector, "__module__", "__main__")
    module.Cell, module.make_vector = Cell, make_vector
    before = set(gym.registry)
    yield module
    for name in set(gym.registry) - before:
        del gym.registry[name]


@pytest.mark.parametrize(
    ("how", "named"),
    [
        ({"vector_entry_point": make_vector}, "__main__.make_vector"),
        ({"entry_point": "__main__:Cell"}, "__main__:Cell"),
    ],
)
def test_a_cells_vector_entry_point_or_main_string_is_refused_for_workers(main: object, how: dict, named: str) -> None:
    """An id made by a vector entry point of an interactive ``__main__``, or whose entry point is the string
    ``__main__:Cell``, is refused for worker processes naming that creator, as a class given as entry point is."""
    gym.register("ReviewCell-v0", **how)
    with pytest.raises(EnvError, match=rf"^'ReviewCell-v0' is made by {named}, defined in this interactive session"):
        WorkerVectorEnv("ReviewCell-v0", 4, 2)


def test_a_scripts_env_is_not_refused_for_workers(main: types.ModuleType) -> None:
    """A script's ``__main__`` (``python script.py``: a file, no spec), which each worker imports, is not taken for a
    notebook's: its env class is not refused (_only_here says nothing), nor one of ``python -m`` (a spec)."""
    gym.register("ReviewCell-v0", entry_point=Cell)
    assert _only_here("ReviewCell-v0") == "__main__.Cell"  # the interactive one, for contrast
    main.__file__ = str(Path("script.py").resolve())
    assert _only_here("ReviewCell-v0") == ""
    del main.__file__
    main.__spec__ = types.SimpleNamespace(name="mine.train")
    assert _only_here("ReviewCell-v0") == ""


def linear(env: object) -> torch.nn.Module:
    return torch.nn.Linear(3, 2)


def output_sum(model: torch.nn.Module, pop: object) -> torch.Tensor:
    return model(torch.ones(pop.size, 3)).sum(1)


class RunWarning(UserWarning):
    """What a run's own code filters while the run is under way."""


def test_a_second_threads_call_leaves_the_process_warning_state_as_before_both_runs(tmp_path: Path) -> None:
    """Thread 1's run sets a filter and ``showwarning`` (as a run's code may); thread 2 calls flipes.train while it runs
    (its callbacks still being read when thread 1's run ends). Once both calls are over, the process's filters and
    ``showwarning`` are those from before them: neither call leaves the other's run-time state behind (a second call
    that saved thread 1's state on entering and put it back after thread 1 had ended would leave RunWarning ignored and
    every warning shown nowhere)."""
    import flipes
    from flipes.callbacks import Callback

    options = dict(env="none", model=linear, fitness=output_sum,
                   popsize=4, generations=1, tensorboard=False, plot=False, progress=False)  # fmt: skip
    inside, go_on, entered, release = (threading.Event() for _ in range(4))

    class SetsWarnings(Callback):
        def on_train_start(self, *args: object, **kwargs: object) -> None:
            warnings.simplefilter("ignore", RunWarning)
            warnings.showwarning = lambda *args, **kwargs: None
            inside.set()
            go_on.wait(30)

    def read_slowly() -> Iterator[Callback]:
        entered.set()
        release.wait(30)
        yield from ()

    def second() -> None:
        with contextlib.suppress(flipes.UsageError):  # refused while thread 1 runs, or popsize=-1
            flipes.train(**options | {"popsize": -1, "out": tmp_path / "2", "callbacks": read_slowly()})

    with warnings.catch_warnings():  # the test's own process as it was, whatever happens
        filters, show = list(warnings.filters), warnings.showwarning
        results = []
        first = threading.Thread(
            target=lambda: results.append(flipes.train(**options | {"out": tmp_path / "1", "callbacks": [SetsWarnings()]}))
        )
        first.start()
        assert inside.wait(30)
        other = threading.Thread(target=second)
        other.start()
        while not entered.is_set() and other.is_alive():
            time.sleep(0.005)
        go_on.set()
        first.join(30)
        release.set()
        other.join(30)
        assert (warnings.filters, warnings.showwarning) == (filters, show)
    assert [r.reason for r in results] == ["generations"]


def test_an_env_of_a_script_read_from_stdin_is_refused_for_workers(main: types.ModuleType) -> None:
    """``python - < script.py`` runs the script as a ``__main__`` whose ``__file__`` is ``"<stdin>"``, a file no worker
    can import (each one fails with FileNotFoundError for '<stdin>'): its env class is refused as a notebook cell's."""
    gym.register("ReviewCell-v0", entry_point=Cell)
    main.__file__ = "<stdin>"
    with pytest.raises(EnvError, match=r"^'ReviewCell-v0' is made by __main__\.Cell, defined in this interactive session"):
        WorkerVectorEnv("ReviewCell-v0", 4, 2)


def test_a_filter_a_callback_sets_lasts_for_its_call_and_one_set_before_applies_inside(tmp_path: Path) -> None:
    """As README says: a filter set by a callback inside flipes.train is gone once the call returns (train puts the
    process's warnings state back), and a filter the caller set before the call (here ``error`` for RunWarning, as
    ``python -W error`` would) applies inside it: the callback's RunWarning is raised from train."""
    import flipes
    from flipes.callbacks import Callback

    class Quiet(Callback):
        def on_train_start(self, *args: object, **kwargs: object) -> None:
            warnings.simplefilter("ignore", DeprecationWarning)

    class Warns(Callback):
        def on_train_start(self, *args: object, **kwargs: object) -> None:
            warnings.warn("from a callback", RunWarning, stacklevel=1)

    options = dict(env="none", model=linear, fitness=output_sum, popsize=4, generations=1, tensorboard=False, plot=False,
                   progress=False)  # fmt: skip
    with warnings.catch_warnings():
        filters = list(warnings.filters)
        flipes.train(**options, out=tmp_path / "1", callbacks=[Quiet()])
        assert warnings.filters == filters
        warnings.simplefilter("error", RunWarning)
        with pytest.raises(RunWarning, match=r"^from a callback\n"):
            flipes.train(**options, out=tmp_path / "2", callbacks=[Warns()])
