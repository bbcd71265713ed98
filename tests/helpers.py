"""What several test files share: running flipes' commands and scripts, reading run directories, test models."""

from __future__ import annotations

import ast
import contextlib
import copy
import functools
import importlib.util
import io
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import gymnasium
import numpy as np
import pytest
import torch
from filelock import FileLock  # a dependency of torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from flipes.rl.workers import WorkerVectorEnv

ROOT = Path(__file__).resolve().parents[1]

# a fitness the test makes up (to check the update's arithmetic) rather than reads from the model's forward,
# which flipes.OutsidePopulationWarning is there to catch in users' code
MADE_UP_FITNESS = pytest.mark.filterwarnings("ignore::flipes.OutsidePopulationWarning")
# a tiny CartPole training: 8 members, 3-episode evaluations, never solved, no TensorBoard, no progress line
# and no curves.png (about 0.2 s of CPU a run; the tests of curves.png ask for it)
FAST = ["--env", "CartPole-v1", "--popsize", "8", "--eval-episodes", "3", "--target", "none", "--tensorboard", "false",
        "--plot", "false", "--progress", "false"]  # fmt: skip
FAST_KW = {
    "env": "CartPole-v1",
    "popsize": 8,
    "eval_episodes": 3,
    "target": None,
    "tensorboard": False,
    "plot": False,
    "progress": False,
}


class NanRewardEnv(gymnasium.Env):
    """A single gymnasium env of one's own whose every reward is nan: subclass it for the class name a refusal shows."""

    observation_space = gymnasium.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gymnasium.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.zeros(2, np.float32), float("nan"), False, False, {}


def reference_env(env_id: str, **kwargs: object) -> gymnasium.Env:
    """``gymnasium.make(env_id, **kwargs)``, a reference to compare with, with MuJoCo's compile notes dropped: MuJoCo
    would append each (``half_cheetah.xml``'s deprecated ``settotalmass``) to ``MUJOCO_LOG.TXT`` in the working
    directory, the repository, as flipes' own env making does not (tested in test_env_engines)."""
    from flipes.rl.mujoco_log import makes_mujoco, mujoco_warnings_once

    with mujoco_warnings_once(report=False, load=makes_mujoco(env_id)):
        return gymnasium.make(env_id, **kwargs)


def assert_each_env_steps_as_its_own(env: gymnasium.vector.VectorEnv, singles: Sequence, states: Tensor, actions: Tensor) -> None:
    """Step ``env`` from ``states`` with ``actions``, and each one-env ``singles[i]`` from row i of them: env i's next
    state, observation, reward and termination must equal its single's bit for bit (an env of per-env physics against
    one env made with env i's values)."""
    env.state = states
    obs, reward, terminated = env.step(actions)[:3]
    for i, single in enumerate(singles):
        single.state = states[i : i + 1]
        single_obs, single_reward, single_terminated = single.step(actions[i : i + 1])[:3]
        assert torch.equal(single.state[0], env.state[i]) and torch.equal(single_obs[0], obs[i]), i
        assert torch.equal(single_reward[0], reward[i]) and torch.equal(single_terminated[0], terminated[i]), i


def assert_draws_are_seed_functions(make: Callable[..., object], ranges: dict[str, list[float]], device: torch.device) -> object:
    """For a RandomizedPhysics env class ``make`` randomized by ``ranges``: envs 4..7 of 8 (on ``device``) reset with
    seed s draw the constants and initial states of an env of 4 on the CPU reset with s + 4, the initial states are
    those without ranges, and constant k's draw is ``low + (high - low) u``, u the uniform of SplitMix64 output
    ``state_dim + k + 1`` of each env's seed. Returns the env of 8, reset with s = 21."""
    from envs import seeding

    s = 21
    eight, four, plain = make(8, device=device, **ranges), make(4, **ranges), make(8, device=device)
    eight.reset(seed=s)
    four.reset(seed=s + 4)
    plain.reset(seed=s)
    assert torch.equal(eight.state, plain.state) and torch.equal(eight.state[4:].cpu(), four.state)
    u = seeding.uniform(s + torch.arange(8), eight.state_dim + len(eight.constants))
    for k, constant in enumerate(eight.constants):
        low, high = ranges[f"{constant.name}_range"]
        assert torch.equal(getattr(eight, constant.name)[4:].cpu(), getattr(four, constant.name)), constant.name
        assert torch.equal(getattr(eight, constant.name).cpu(), low + (high - low) * u[:, eight.state_dim + k]), constant.name
    return eight


def run_script(
    *args: str | Path, extra_path: Sequence[Path] = (), check: bool = True, timeout: float = 120, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``python ARGS...`` from the repository root (``args[0]`` a script path or ``-m``), output captured."""
    path = os.pathsep.join(str(p) for p in (ROOT, *extra_path))
    r = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and r.returncode != 0:  # with its output: CalledProcessError would show only the command
        raise AssertionError(f"{' '.join(map(str, args))} exited {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return r


def load_script(path: Path) -> ModuleType:
    """scripts/NAME.py as a module (scripts/ is not a package; its files import each other), its ``__main__`` block
    not run."""
    name = f"flipes_script_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    scripts = str(path.parent)
    added = scripts not in sys.path
    if added:
        sys.path.insert(0, scripts)  # as when the script runs: `from repro_common import ...`
    try:
        spec.loader.exec_module(module)
    finally:
        if added:
            sys.path.remove(scripts)
    return module


def main_block(path: Path) -> str:
    """The statement the file's ``if __name__ == "__main__":`` block runs, as source (read without importing it)."""
    body = ast.parse(path.read_text()).body
    blocks = [node for node in body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
    assert len(blocks) == 1 and len(blocks[0].body) == 1, f"{path.name}: not one __main__ block of one statement"
    return ast.unparse(blocks[0].body[0])


def run_script_in_process(script: str, *argv: str | Path) -> object:
    """``python scripts/SCRIPT.py ARGV...`` run in this process as the script's ``__main__`` block runs it (checked to be
    flipes.cli's ``run(main, Args, description=__doc__)``): what ``main`` returns, or the SystemExit of a UsageError.
    For tests of what a script computes or refuses, not of a fresh interpreter (which costs ~2 s of imports each).
    What scripts set for the whole process is put back (script_state_kept)."""
    from flipes import cli

    path = ROOT / "scripts" / f"{script}.py"
    assert main_block(path) == "run(main, Args, description=__doc__)", path.name
    module = load_script(path)
    assert module.run is cli.run, f"{path.name}: its run is not flipes.cli.run"
    with script_state_kept():
        return module.run(module.main, module.Args, description=module.__doc__, argv=list(map(str, argv)))


def script_in_this_process(
    cmd: list[str], env: dict[str, str] | None = None, timeout: float = 0.0
) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd)`` for ``cmd`` = ``python scripts/NAME.py ARGS...`` (the path relative to the repository
    root or absolute) run as the script's ``__main__`` in this process, as in its own (the repository root as the
    working directory, the scripts' folder on the path, ``env`` set; ``timeout`` unused): its exit status, stdout and
    stderr, a traceback on stderr and status 1 where it raises. For tests of scripts that start other scripts (a
    fresh process per run costs seconds of imports); what a script sets for the whole process is put back."""
    code: int | str | None = 0
    out, err = io.StringIO(), io.StringIO()
    with (
        pytest.MonkeyPatch.context() as mp,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        script_state_kept(),
    ):
        mp.chdir(ROOT)
        mp.syspath_prepend(str(ROOT / "scripts"))
        mp.setattr(sys, "argv", cmd[1:])
        for name, value in (env or {}).items():
            mp.setenv(name, value)
        try:
            runpy.run_path(str(ROOT / cmd[1]), run_name="__main__")
        except SystemExit as e:
            code = e.code
        except Exception:
            traceback.print_exc()
            code = 1
    if isinstance(code, str):  # sys.exit("message"): the message on stderr, status 1
        err.write(code + "\n")
    return subprocess.CompletedProcess(cmd, 1 if isinstance(code, str) else code or 0, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def script_state_kept() -> Iterator[None]:
    """Puts back what a script run in this process sets for the whole process, for the tests after it in this worker:
    torch's thread count (most scripts set 1), its global CPU generator (scripts seed it), matplotlib's backend (where
    matplotlib was imported before)."""
    threads = torch.get_num_threads()
    backend = sys.modules["matplotlib"].get_backend() if "matplotlib" in sys.modules else None
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(threads)
        if backend is not None:
            import matplotlib.pyplot as plt

            plt.switch_backend(backend)


def once_per_session(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """The directory ``make(directory)`` fills once per test session, shared by every pytest-xdist worker: the first
    worker that asks makes it while the others wait for it (pytest-xdist's documented pattern; a module-scoped fixture
    runs once per worker, and worksteal may hand a module's tests to both). Read it, never write to it. Where
    ``make`` raises, nothing is kept and the next test that asks runs it again (and fails alike)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's directory, above each worker's own
    out, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            make(out)
            done.touch()
    return out


# `import flipes, envs` in a fresh process, seen from inside it: what the import changed of the process's state and
# which optional packages it loaded (torch, NumPy and gymnasium first: their own import-time settings, such as
# gymnasium's warnings filter and PYGAME_HIDE_SUPPORT_PROMPT, are theirs; what changes after is flipes'); then which of
# MuJoCo's packages a classic-control id's make_vec loaded, and which a MuJoCo id's entry point then loaded (null where
# MuJoCo Warp is not installed)
_IMPORT_PROBE = r"""
import importlib.util, json, logging, os, random, signal, sys, warnings
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

def mujoco_loaded():
    return sorted(m for m in ("warp", "mujoco_warp", "mujoco") if m in sys.modules)

torch.manual_seed(5); np.random.seed(5); random.seed(5)
before = state()
import flipes, envs
after = state()
optional = ["matplotlib", "tensorboard", "torch.utils.tensorboard", "wandb", "mpi4py", "envpool", "mujoco", "warp",
            "mujoco_warp", "transformers", "PIL", "sklearn", "envs.warp"]
out = {"changed": sorted(k for k in before if before[k] != after[k]), "loaded": [m for m in optional if m in sys.modules]}
gymnasium.make_vec("flipes/CartPole-v1", num_envs=2)
out["classic_id_loaded"] = mujoco_loaded()
out["mujoco_id_loaded"] = None
if importlib.util.find_spec("mujoco_warp") is not None:  # found, not imported
    from gymnasium.envs.registration import load_env_creator
    load_env_creator(gymnasium.spec("flipes/Hopper-v5").vector_entry_point)  # as make_vec loads it
    out["mujoco_id_loaded"] = mujoco_loaded()
print(json.dumps(out))
"""


def fresh_import_probe(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """_IMPORT_PROBE's findings: one fresh interpreter (a start costs seconds of imports) for the tests of what importing
    flipes and envs does, once per session."""

    def make(out: Path) -> None:
        (out / "probe.json").write_text(run_script("-c", _IMPORT_PROBE, timeout=300).stdout.strip().splitlines()[-1])

    return json.loads((once_per_session(tmp_path_factory, "fresh_import_probe", make) / "probe.json").read_text())


def sigterm_twice(proc: subprocess.Popen, rows: Path, generations: int) -> str:
    """Once ``rows`` holds ``generations`` lines (and the checkpoint after the last is written), SIGTERM ``proc``, check
    that it still runs past the window in which a repeat counts as the same signal, SIGTERM it again; its stderr."""
    from flipes.interrupts import REPEAT_SECONDS

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not rows.exists() or len(rows.read_text().splitlines()) < generations):
            time.sleep(0.05)
        time.sleep(0.5)  # the generation's checkpoint is written after its row
        proc.send_signal(signal.SIGTERM)
        time.sleep(REPEAT_SECONDS + 0.5)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGTERM)
        return proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


class TiedLinears(nn.Module):
    """Two square Linear layers sharing one weight, each with a bias of its own (16 features)."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(16, 16), nn.Linear(16, 16)
        self.second.weight = self.first.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.second(torch.tanh(self.first(x)))


# TOML config files are read with tomllib (Python >= 3.11); on 3.10 flipes says to use JSON instead
NEEDS_TOMLLIB = pytest.mark.skipif(sys.version_info < (3, 11), reason="TOML config files need Python >= 3.11 (tomllib)")

# a fitness module whose minibatch is drawn from torch's, NumPy's and Python's global generators
GLOBAL_DRAWS_FITNESS = """
import random
import numpy as np
import torch

X, Y = torch.linspace(-1, 1, 64)[:, None].repeat(1, 3), torch.linspace(-1, 1, 64)[:, None]
DRAWS = []  # (generation, first member, torch's, numpy's and Python's draws) of every call

def make_model(env):
    return torch.nn.Linear(3, 1)

def fitness(model, pop):  # a minibatch as a researcher's script draws it: from the global generators
    idx = torch.randint(0, 64, (8,))
    DRAWS.append((pop.generation, pop.members[0], idx.tolist(), int(np.random.randint(1 << 30)), random.random()))
    return -(model(X[idx].expand(pop.size, 8, 3)) - Y[idx]).square().mean((1, 2))

def evaluate(model):  # a random validation batch, drawn as the fitness draws its minibatch
    idx = torch.randint(0, 64, (8,))
    return -(model(X[idx]) - Y[idx]).square().mean().item()
"""

# a --fitness module whose generations 0 and 1 take 0.3 s and whose generation 2 never ends (a hung simulator)
ENDLESS_FITNESS = """
import time, torch

def make_model(env):
    return torch.nn.Linear(3, 1)

calls = [0]

def fitness(model, pop):
    calls[0] += 1
    while calls[0] > 2:
        time.sleep(0.05)
    time.sleep(0.3)
    return -model(torch.ones(pop.size, 3)).square().sum(1)
"""


class Mpi4pyLike:
    """What flipes reads of mpi4py's Intracomm (a rank, a size, its own method names), without initializing MPI in the
    test's process."""

    rank, size = 0, 1

    def Get_rank(self) -> int:
        return 0

    def Allreduce(self, *args: object) -> None:
        pass


def assert_members_are_their_plain_copies(
    plain: nn.Module, model: nn.Module, es: object, x: Tensor, one_row: bool = False
) -> None:
    """Inside a population of ``es`` over ``model`` (``flipes.flipout`` of a copy of ``plain``), member n's output of ``x``
    (members first) equals a plain copy of ``plain`` loaded with ``es.member_state_dict(n)``, run on ``x[n]`` (on
    ``x[n : n + 1]``, its first row taken, where ``one_row``: a module that wants a batch dimension), to 1e-12."""
    import copy

    with es.population():  # type: ignore[attr-defined]
        out = model(x)
        for n in range(x.shape[0]):
            member = copy.deepcopy(plain)
            member.load_state_dict(es.member_state_dict(n))  # type: ignore[attr-defined]
            alone = member(x[n : n + 1])[0] if one_row else member(x[n])
            torch.testing.assert_close(out[n], alone, rtol=0, atol=1e-12)


def flip_a_byte(*paths: Path) -> None:
    """Damage each file as a bad disk or copy does: one byte in its middle flipped (a checkpoint's hash then fails)."""
    for path in paths:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


class ThreadComm:
    """Process ``rank`` of ``len(boxes)`` processes played by threads of this one: every collective puts this rank's
    part in its box and reads all boxes between two waits at a shared barrier (the ``flipes.dist.Comm`` protocol);
    ``summed`` holds the size of each tensor summed over the ranks."""

    local_rank, local_size, bytes_sent = 0, 1, 0

    def __init__(self, rank: int, boxes: list, barrier: threading.Barrier) -> None:
        self.rank, self.size, self.boxes, self.barrier = rank, len(boxes), boxes, barrier
        self.summed: list[int] = []

    def _exchange(self, part: object) -> list:
        self.boxes[self.rank] = part
        self.barrier.wait()
        parts = list(self.boxes)
        self.barrier.wait()
        return parts

    def allgather_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._exchange(x.clone()))

    def allreduce_sum_(self, x: torch.Tensor) -> torch.Tensor:
        self.summed.append(x.numel())
        return x.copy_(functools.reduce(torch.add, self._exchange(x.clone())))

    def bcast(self, obj: object) -> object:
        return self._exchange(obj)[0]

    def allgather_object(self, obj: object) -> list:
        return self._exchange(obj)

    def abort(self, code: int = 1) -> None:
        self.barrier.abort()
        raise SystemExit(code)


def run_thread_ranks(run: Callable[[ThreadComm], object], size: int, timeout: float = 60.0, release: float = 5.0) -> list:
    """``run(comm)`` on ``size`` ranks played by threads (:class:`ThreadComm`); each rank's return value or exception.
    A rank that raises ends the others' wait ``release`` seconds later (a rank left waiting then fails with
    BrokenBarrierError): an abort at once could meet another rank between the barrier's release and its wake-up,
    turning that rank's own error, often the one under test, into BrokenBarrierError."""
    boxes: list = [None] * size
    barrier = threading.Barrier(size, timeout=timeout)
    results: list = [None] * size

    def rank(r: int) -> None:
        try:
            results[r] = run(ThreadComm(r, boxes, barrier))
        except BaseException as error:
            results[r] = error
            timer = threading.Timer(release, barrier.abort)
            timer.daemon = True  # the test process does not wait for it at exit
            timer.start()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def autocast_member_errors(
    plain: nn.Module, model: nn.Module, es: object, x: Tensor, members: int, dtype: torch.dtype
) -> tuple[float, float, bool]:
    """Under ``torch.autocast("cpu", dtype)`` in a population of ``es`` (each member's ``len(x) // members`` rows of
    ``x``): the largest error of the population's output against each member's plain copy run in float64, the plain
    copy's own error under the same autocast, and whether both came out in one dtype."""
    rows_each = len(x) // members
    with es.population(), torch.autocast("cpu", dtype=dtype):  # type: ignore[attr-defined]
        out = model(x)
        ours = theirs = 0.0
        same_dtype = True
        for n in range(members):
            member = copy.deepcopy(plain)
            member.load_state_dict(es.member_state_dict(n))  # type: ignore[attr-defined]
            rows = x[n * rows_each : (n + 1) * rows_each]
            alone = member(rows)
            with torch.autocast("cpu", enabled=False):
                exact = copy.deepcopy(member).double()(rows.double())
            same_dtype = same_dtype and out.dtype == alone.dtype
            ours = max(ours, (out[n * rows_each : (n + 1) * rows_each].double() - exact).abs().max().item())
            theirs = max(theirs, (alone.double() - exact).abs().max().item())
    return ours, theirs, same_dtype


class RoundingScale(nn.Module):
    """``weight * rms_normalize(x)`` computed in float32 and rounded to ``x``'s dtype before the product, as Hugging
    Face's RMSNorms do (named otherwise, so that it runs through vmap like any module of one's own)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, d))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.square().mean(-1, keepdim=True) + 1e-6)
        return self.weight * h.to(x.dtype)


class WriteOnly:
    """A stand-in stream with ``write`` alone (no ``flush``, ``fileno`` or ``isatty``), as a notebook's or a logger's
    adapter may be."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)


class Cell(gymnasium.Env):
    """A tiny env, as a notebook's cell (or a script) defines one."""

    observation_space = gymnasium.spaces.Box(-1, 1, (3,), np.float32)
    action_space = gymnasium.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.zeros(3, np.float32), float(action), True, False, {}


# far above any env-worker call on a loaded 2-core machine: only a hang reaches it
HANG_S = 60


def bounded(call: Callable[[], object]) -> Any:
    """``call()`` in a thread, its result or error; fails the test where it has not returned after HANG_S."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append((True, call()))
        except BaseException as e:  # pytest's failures are BaseExceptions: raised below
            out.append((False, e))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=HANG_S)
    assert out, f"still waiting after {HANG_S} s"
    ok, value = out[0]
    if not ok:
        raise value
    return value


@contextlib.contextmanager
def workers(env_id: str, num_envs: int, count: int) -> Iterator[WorkerVectorEnv]:
    """A WorkerVectorEnv whose workers not yet reaped are killed, and which is closed, whatever the test did (a reaped
    worker's pid may be another process's by now; gymnasium's own close of an env left open, at some later garbage
    collection, fails on the pipes of killed workers, inside whatever code then runs)."""
    from flipes.rl.workers import WorkerVectorEnv

    env = WorkerVectorEnv(env_id, num_envs, count)
    try:
        yield env
    finally:
        for process in env.env.processes:
            if process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            bounded(env.close)
        env.env.closed = True


def closed_with_none_alive(env: WorkerVectorEnv) -> bool:
    """close() returned (within HANG_S) and left no worker process alive."""
    bounded(env.close)
    return not any(process.is_alive() for process in env.env.processes)
