"""The same command under mpiexec: results independent of the process count, fail-fast ranks,
resume at another rank count. Runs the real mpiexec of the dev setup (pip's mpich) as subprocesses."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ENDLESS_FITNESS, GLOBAL_DRAWS_FITNESS, metrics, once_per_session, script_state_kept, sigterm_twice

import flipes
from flipes.checkpoint import load_checkpoint
from flipes.commands import main, parse_train_config

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = Path(sys.executable).parent / "mpiexec"
COMMON = [
    "--popsize",
    "24",
    "--groups",
    "6",
    "--eval-episodes",
    "5",
    "--target",
    "1e9",
    "--tensorboard",
    "false",
    "--plot",
    "false",
    "--seed",
    "4",
]


def mpi_env(*paths: str | Path) -> dict[str, str]:
    """This process's environment for an mpiexec job, with PYTHONPATH ``paths``: MPICH's defaults, as users run it (not
    MPIR_CVAR_ENABLE_HEAVY_YIELD, which halves a waiting rank's CPU but did not shorten these tests)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in paths if p)}


def mpirun(k: int, *args: str, extra_path: str = "", check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    assert MPIEXEC.exists(), f"no mpiexec beside {sys.executable}: install the dev extras (pip install -e '.[dev]' brings mpich)"
    env = mpi_env(ROOT, extra_path)
    cmd = [str(MPIEXEC), "-n", str(k), sys.executable, "scripts/train.py", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=check)


def train_on(k: int, *args: str) -> None:
    """``train.py ARGS`` on k processes: under ``mpiexec -n k`` for k > 1; for k = 1 in this process, which is the
    training ``mpiexec -n 1`` runs (flipes.dist.world() is serial for a world of one rank) without a launch."""
    if k == 1:
        assert main(["train", *args, "--progress", "false"]) == 0
    else:
        mpirun(k, *args)


def run_alone(script: Path, *argv: str) -> str:
    """``python SCRIPT ARGV...`` run in this process, which is what ``mpiexec -n 1`` runs (flipes.dist.world() is serial
    for a world of one rank) without a launch: what it printed. The process's torch threads and generators are put back
    after it (script_state_kept)."""
    argv_before, printed = sys.argv, io.StringIO()
    sys.argv = [str(script), *argv]
    try:
        with script_state_kept(), contextlib.redirect_stdout(printed):
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv_before
    return printed.getvalue()


def last(run: Path) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


def params(run: Path) -> torch.Tensor:
    model = load_checkpoint(run)["es"]["model"]
    return torch.cat([v.double().flatten() for v in model.values() if v.is_floating_point()])


# --episodes 2: each process plays its members' episodes, numbered from its first member's first episode; cut at 100 steps
# (CartPole's own limit is 500), they still end at other lengths (some fall, some are cut) in a third of the steps: how
# the ranks split the members and count their steps does not depend on how long an episode may run
CARTPOLE = ["--env", "flipes/CartPole-v1", *COMMON, "--episodes", "2", "--max-episode-steps", "100"]


@pytest.fixture
def one_process_seeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of ``CARTPOLE --generations 5 --comm seeds`` on one process (a test's): the one-process
    reference of several tests below, run once per session (read it, never write to it)."""

    def make(out: Path) -> None:
        train_on(1, *CARTPOLE, "--generations", "5", "--comm", "seeds", "--out", str(out / "n1"))

    return once_per_session(tmp_path_factory, "one_process_seeds", make) / "n1"


# train.py commands of several tests below, each of which compares a run of one process with the 2-process run
PENDULUM_BEST = ["--env", "flipes/Pendulum-v1", "--popsize", "64", "--groups", "2", "--generations", "5", "--comm",
                 "seeds", "--eval-every", "1", "--eval-episodes", "5", "--target", "none", "--tensorboard", "false",
                 "--plot", "false", "--track-best"]  # fmt: skip
CNN = ["--env", "image_env:cnntest/BrightSpot-v0", "--policy", "cnn", "--hidden", "16", "--popsize", "16", "--groups", "2",
       "--episodes", "2", "--generations", "2", "--comm", "seeds", "--eval-every", "1", "--eval-episodes", "8", "--target",
       "none", "--tensorboard", "false", "--plot", "false"]  # fmt: skip
SIGMA_SCHEDULE = ["--env", "flipes/CartPole-v1", *COMMON, "--generations", "3", "--comm", "seeds", "--sigma-decay", "0.6",
                  "--sigma-min", "0.04", "--lr-decay", "0.5", "--lr-min", "0.02", "--max-episode-steps", "100"]  # fmt: skip
ACTION_NOISE = ["--env", "flipes/Pendulum-v1", *COMMON, "--generations", "3", "--comm", "seeds", "--episodes", "2",
                "--max-episode-steps", "40", "--progress", "false"]  # fmt: skip


GLOBAL_DRAWS = ["--env", "none", "--model", "global_draws:make_model", "--fitness", "global_draws:fitness", "--popsize", "8",
                "--groups", "2", "--comm", "seeds", "--generations", "4", "--eval-every", "100", "--tensorboard",
                "false"]  # fmt: skip
NO_GROUPS = ["--env", "flipes/CartPole-v1", "--popsize", "16", "--eval-episodes", "5", "--target", "none", "--seed", "4",
             "--max-episode-steps", "100"]  # fmt: skip
# 1 and 2 of 3 ε groups on 2 ranks; Sutton and Barto's CartPole reward
BUDGET = [*CARTPOLE, "--groups", "3", "--comm", "seeds", "--env-kwargs", '{"sutton_barto_reward": true}']

PER_PART = ["--members-per-pass", "2", "--hold-noise", "false"]  # each part's noise sampled in turn


def cartpole_3(mode: str) -> list[str]:
    """CARTPOLE for 3 generations; allreduce's runs shift the reward (the seeds runs match the 5-generation reference)."""
    return [*CARTPOLE, "--generations", "3", "--comm", mode, *(["--reward-shift", "0.5"] if mode == "allreduce" else [])]


def pgpe(mode: str) -> list[str]:
    return ["--env", "flipes/CartPole-v1", *COMMON, "--algo", "pgpe", "--generations", "4", "--comm", mode, "--max-episode-steps",
            "100"]  # fmt: skip


TWO_RANK_RUNS = {
    "cartpole-seeds": cartpole_3("seeds"),
    "cartpole-allreduce": cartpole_3("allreduce"),
    "parts": [*cartpole_3("seeds"), "--members-per-pass", "2"],
    "two-per-part": [*cartpole_3("seeds"), *PER_PART],
    "pendulum-best": PENDULUM_BEST,
    "cnn": CNN,
    "pgpe-seeds": pgpe("seeds"),
    "pgpe-allreduce": pgpe("allreduce"),
    "sigma-schedule": [*SIGMA_SCHEDULE, "--progress", "false"],
    "action-noise": [*ACTION_NOISE, "--action-noise", "0.3"],
    "common-episodes": [*ACTION_NOISE, "--action-noise", "0.3", "--common-episodes"],
    "global-draws": GLOBAL_DRAWS,
    "no-groups": [*NO_GROUPS, "--generations", "2", "--comm", "seeds", "--tensorboard", "false", "--plot", "false"],
}

# `flipes train ARGV` (what train.py runs) for each run of the JSON lists argv[1] (on ranks 0 and 1 alone, with a
# communicator of those two as flipes.dist.world(), while rank 2 sleeps) and argv[3] (on all 3 ranks), one after the
# other in this process, and between them argv[2] copied to argv[3]'s "resumed" run (by rank 0); each run's stderr to
# RUN.stderr.RANK (mpiexec would merge the runs' and ranks' lines)
RUNS_IN_TURN = """
import contextlib, json, shutil, sys, time
from mpi4py import MPI
from flipes import dist
from flipes.commands import main

pair_runs, copied, all_runs = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
world, whole = MPI.COMM_WORLD, dist.world


def meet():  # every rank here; the ones waiting sleep rather than spin in MPI's progress loop
    request = world.Ibarrier()
    while not request.Test():
        time.sleep(0.05)


def run(runs):
    for name, argv in runs.items():
        with open(f"{argv[argv.index('--out') + 1]}.stderr.{world.rank}", "w") as err, contextlib.redirect_stderr(err):
            code = main(["train", *argv])
        if code != 0:
            raise SystemExit(f"{name}: flipes train exited {code}")


pair = world.Split(0 if world.rank < 2 else MPI.UNDEFINED, world.rank)
if world.rank < 2:
    dist.world = lambda timeout=300.0: dist.MPIComm(pair, timeout)  # what mpiexec -n 2 would give
    run(pair_runs)
    dist.world = whole
    pair.Free()
meet()
if world.rank == 0:
    shutil.copytree(copied, all_runs["resumed"][all_runs["resumed"].index("--out") + 1], ignore=shutil.ignore_patterns(".lock"))
meet()
run(all_runs)
"""


@pytest.fixture
def mpi_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``mpiexec -n 3`` job, once per session (one start of 3 ranks for every test that compares with them; tests/ on
    the path for the CNN run's image_env, the directory on it for global_draws.py): under 2 processes (ranks 0 and 1,
    whose communicator of two is the flipes.dist.world() of their runs) TWO_RANK_RUNS's train commands, then BUDGET's
    run up to a --max-timesteps one step above generation 1's timesteps of BUDGET's 3 generations on one process (run
    here first, as budget-one), into two/; then under 3 processes CARTPOLE for 3 generations in seeds and in allreduce
    mode (cartpole-seeds, cartpole-allreduce), and two/cartpole-seeds copied and resumed for 2 more generations
    (resumed), into three/. Each run's stderr on rank R is beside it as RUN.stderr.R. Read it, never write to it."""

    def make(out: Path) -> None:
        two, three = out / "two", out / "three"
        two.mkdir()
        three.mkdir()
        (out / "global_draws.py").write_text(GLOBAL_DRAWS_FITNESS)
        train_on(1, *BUDGET, "--generations", "3", "--out", str(two / "budget-one"))
        budget = metrics(two / "budget-one")[1]["timesteps"] + 1
        argvs = {**TWO_RANK_RUNS, "budget": [*BUDGET, "--generations", "5", "--max-timesteps", str(budget)]}
        pair = {name: [*argv, "--out", str(two / name)] for name, argv in argvs.items()}
        whole = {
            f"cartpole-{mode}": [*cartpole_3(mode), "--out", str(three / f"cartpole-{mode}")] for mode in ("seeds", "allreduce")
        }
        whole["resumed"] = [*CARTPOLE, "--generations", "5", "--comm", "seeds", "--out", str(three / "resumed"), "--resume",
                            str(three / "resumed")]  # fmt: skip
        (out / "in_turn.py").write_text(RUNS_IN_TURN)
        cmd = [str(MPIEXEC), "-n", "3", sys.executable, str(out / "in_turn.py"), json.dumps(pair), str(two / "cartpole-seeds"),
               json.dumps(whole)]  # fmt: skip
        r = subprocess.run(cmd, cwd=ROOT, env=mpi_env(ROOT, ROOT / "tests", out), capture_output=True, text=True, timeout=300)
        # the runs' own lines (their traceback, "flipes: error: ...") are in their stderr files: the last ones written
        said = sorted(out.glob("*/*.stderr.*"), key=lambda p: p.stat().st_mtime)[-3:]
        assert r.returncode == 0, (
            r.stdout[-2000:] + r.stderr[-3000:] + "".join(f"\n--- {p}:\n{p.read_text()[-2000:]}" for p in said)
        )

    return once_per_session(tmp_path_factory, "mpi_runs", make)


@pytest.fixture
def two_rank_runs(mpi_runs: Path) -> Path:
    """mpi_runs' runs of 2 processes: the directory holding each run's directory under its name (TWO_RANK_RUNS's, budget,
    budget-one), and each run's stderr on rank R as NAME.stderr.R. Read it, never write to it."""
    return mpi_runs / "two"


@pytest.fixture
def three_rank_runs(mpi_runs: Path) -> Path:
    """mpi_runs' runs of 3 processes: cartpole-seeds, cartpole-allreduce and resumed (two_rank_runs' cartpole-seeds
    resumed for 2 more generations). Read it, never write to it."""
    return mpi_runs / "three"


@pytest.mark.parametrize("mode", ["seeds", "allreduce"])
def test_process_count_does_not_change_the_result(tmp_path: Path, mode: str, request: pytest.FixtureRequest) -> None:
    """3 generations of CartPole training, 2 episodes per member, under 1, 2 and 3 processes count the same timesteps;
    with ``--comm seeds`` the parameters are bit-identical (params_sha256), with ``--comm allreduce`` equal to a
    relative norm of 1e-6 (per-rank partial sums change the summation order); the 2-process run sent bytes, with
    ``--comm allreduce`` each generation those of ``--comm seeds`` and the float32 gradient (4 bytes a parameter). The
    allreduce runs shift the reward: each row's return_mean is the whole population's mean return, which on CartPole
    (reward 1 per step) is the generation's env steps over popsize × episodes, whatever the process count."""
    shift = mode == "allreduce"
    runs = {k: request.getfixturevalue(f"{n}_rank_runs") / f"cartpole-{mode}" for k, n in ((2, "two"), (3, "three"))}
    if mode == "seeds":  # 5 generations, whose first 3 rows are this command's (a row does not depend on the
        runs[1] = request.getfixturevalue("one_process_seeds")  # generations still to come)
    else:
        train_on(1, *cartpole_3(mode), "--out", str(tmp_path / "n1"))
        runs[1] = tmp_path / "n1"
    runs = dict(sorted(runs.items()))
    one = metrics(runs[1])[2]
    assert one["generation"] == 2 and one["timesteps"] > 0
    for k in (2, 3):
        other = last(runs[k])
        assert other["timesteps"] == one["timesteps"]  # the same episodes, split differently
        if mode == "seeds":  # every rank computes the whole gradient as one process does: bitwise equal
            assert other["params_sha256"] == one["params_sha256"], k
        else:  # per-rank partial sums change the float summation order: equal to rounding
            diff = (params(runs[k]) - params(runs[1])).norm() / params(runs[1]).norm()
            assert diff < 1e-6, (k, diff.item())
    assert last(runs[2])["bytes_sent"] > 0
    if shift:
        for k, run in runs.items():
            rows = metrics(run)
            before = [0] + [r["timesteps"] for r in rows[:-1]]
            steps = [r["timesteps"] - b for b, r in zip(before, rows, strict=True)]
            assert [r["return_mean"] for r in rows] == [s / (24 * 2) for s in steps], k
        # computing every group on each rank, as seeds does, gives the same parameters: the bytes sent tell them apart
        model = load_checkpoint(runs[2])["es"]["model"]
        trained = sum(v.numel() for name, v in model.items() if not name.startswith("obs_norm."))  # float32; not the buffers
        seeds = metrics(request.getfixturevalue("two_rank_runs") / "cartpole-seeds")
        assert [r["bytes_sent"] for r in metrics(runs[2])] == [r["bytes_sent"] + 4 * trained for r in seeds]


def test_processes_evaluating_in_parts_get_the_bits_of_one_process_in_one_pass(
    tmp_path: Path, one_process_seeds: Path, two_rank_runs: Path
) -> None:
    """Seeds mode, CartPole, 2 episodes per member, 3 generations: 2 processes each rolling their 12 members out in
    parts of 2 (--members-per-pass) log every row's fitness, timesteps and parameters of one process
    evaluating its 24 members at once (the first 3 rows of its 5-generation run: a row does not depend on the
    generations still to come, and --eval-every 2 evaluates generations 0 and 2 in both); with the noise sampled
    part by part (--hold-noise false), 2 processes log the rows of 1 process doing the same, bit for bit (the same
    blocks of groups)."""
    train_on(1, *cartpole_3("seeds"), *PER_PART, "--out", str(tmp_path / "one-per-part"))
    runs = {
        "parts": two_rank_runs / "parts",
        "one-per-part": tmp_path / "one-per-part",
        "two-per-part": two_rank_runs / "two-per-part",
    }
    keys = ("fitness_mean", "fitness_max", "timesteps", "params_sha256")
    rows = {name: [[r[k] for k in keys] for r in metrics(run)] for name, run in runs.items()}
    rows["one"] = [[r[k] for k in keys] for r in metrics(one_process_seeds)][:3]  # args with --generations 5
    assert len(rows["one"]) == 3 and rows["one"][-1][2] > 0
    assert rows["parts"] == rows["one"]
    assert rows["two-per-part"] == rows["one-per-part"] and rows["one-per-part"][0][:3] == rows["one"][0][:3]


def test_a_continuous_policy_gets_the_same_bits_from_one_group_per_rank_as_from_one_process(
    tmp_path: Path, two_rank_runs: Path
) -> None:
    """Seeds mode on Pendulum (continuous actions feed every rounding back into the episode, and the
    observation normalizer spreads it): 2 processes holding one ε group each log the fitness,
    evaluation and parameters of one process holding both, bit for bit, every generation, and keep
    the same best member (--track-best), whichever process evaluated it."""
    rows, best = {}, {}
    train_on(1, *PENDULUM_BEST, "--out", str(tmp_path / "n1"))
    for k, run in ((1, tmp_path / "n1"), (2, two_rank_runs / "pendulum-best")):
        rows[k] = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        best[k] = load_checkpoint(run)["es"]["best"]
    keys = ("fitness_mean", "fitness_max", "eval_return", "params_sha256")
    assert len(rows[1]) == 5
    assert [[r[key] for key in keys] for r in rows[2]] == [[r[key] for key in keys] for r in rows[1]]
    assert best[1]["fitness"] == best[2]["fitness"] == max(r["fitness_max"] for r in rows[1])
    assert (best[1]["generation"], best[1]["index"]) == (best[2]["generation"], best[2]["index"])
    assert all(torch.equal(v, best[2]["state_dict"][key]) for key, v in best[1]["state_dict"].items())


def test_the_cnn_policy_gets_the_same_bits_on_two_processes_as_on_one(tmp_path: Path, two_rank_runs: Path) -> None:
    """Seeds mode, the CNN policy on an image env of the tests (tests/image_env.py, imported by every rank): 2
    processes log the fitness, evaluation and parameters of one process, bit for bit, every generation."""
    assert main(["train", *CNN, "--progress", "false", "--out", str(tmp_path / "n1")]) == 0
    runs = {1: tmp_path / "n1", 2: two_rank_runs / "cnn"}
    keys = ("fitness_mean", "fitness_max", "eval_return", "params_sha256")
    rows = {k: [[r[key] for key in keys] for r in metrics(run)] for k, run in runs.items()}
    assert len(rows[1]) == 2 and rows[2] == rows[1]
    assert json.loads((runs[2] / "config.json").read_text())["policy"] == "cnn"


def test_a_fitness_drawing_from_the_global_generators_gets_the_bits_of_one_process_on_two(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_rank_runs: Path
) -> None:
    """A --fitness that draws its minibatch from torch's, NumPy's and Python's global generators (each process's own,
    seeded by the OS) logs the same rows on 2 processes (--comm seeds) as on 1: flipes.train seeds them by (seed,
    generation) around the fitness, so both ranks evaluate their members on the minibatch one process draws."""
    (tmp_path / "global_draws.py").write_text(GLOBAL_DRAWS_FITNESS)
    monkeypatch.syspath_prepend(str(tmp_path))
    train_on(1, *GLOBAL_DRAWS, "--out", str(tmp_path / "n1"))
    runs = (tmp_path / "n1", two_rank_runs / "global-draws")  # one process, and the 2-process job's run
    rows = [[(r["fitness_mean"], r["params_sha256"]) for r in metrics(run)] for run in runs]
    assert len(rows[0]) == 4 and rows[1] == rows[0]


def test_a_failing_rank_ends_the_job_promptly(tmp_path: Path) -> None:
    """A fitness that raises on rank 1 at generation 2 ends the whole 2-process job with a nonzero exit status within
    30 s (of a 100,000-generation budget), stderr holding the exception's message and '[rank 1] failed'."""
    (tmp_path / "crash_fitness.py").write_text(
        "import os, torch\n"
        "def make_model(env):\n    return torch.nn.Sequential(torch.nn.Linear(3, 2))\n"
        "def fitness(model, pop):\n"
        "    if pop.members.start > 0 and pop.generation == 2:\n        raise RuntimeError('boom on a rank')\n"
        "    return torch.arange(pop.size, dtype=torch.float32)\n"
    )
    args = ["--env", "none", "--model", "crash_fitness:make_model", "--fitness", "crash_fitness:fitness"]
    start = time.monotonic()
    r = mpirun(
        2,
        *args,
        "--popsize",
        "8",
        "--groups",
        "2",
        "--generations",
        "100000",
        "--out",
        str(tmp_path / "run"),
        extra_path=str(tmp_path),
        check=False,
        timeout=60,
    )
    assert r.returncode != 0 and time.monotonic() - start < 30
    assert "boom on a rank" in r.stderr and "[rank 1] failed" in r.stderr


def test_a_fitness_of_a_wrong_shape_on_one_rank_is_one_line_naming_it(tmp_path: Path) -> None:
    """A --fitness that returns one value too many on rank 1 only, at generation 2, ends the 2-process job within 30 s
    with status 2 and flipes' one line, which names the rank (rank 0's members were fine, so the cause is in rank 1's
    data or env); rank 0's checkpoint before it stays."""
    (tmp_path / "shape_fitness.py").write_text(
        "import torch\n"
        "def make_model(env):\n    return torch.nn.Linear(3, 2)\n"
        "def fitness(model, pop):\n"
        "    values = model(torch.ones(pop.size, 3)).sum(1)\n"
        "    return torch.cat([values, values[:1]]) if pop.members.start > 0 and pop.generation == 2 else values\n"
    )
    args = ["--env", "none", "--model", "shape_fitness:make_model", "--fitness", "shape_fitness:fitness", "--popsize", "8",
            "--groups", "2", "--generations", "100000", "--progress", "false", "--out", str(tmp_path / "run")]  # fmt: skip
    start = time.monotonic()
    r = mpirun(2, *args, extra_path=str(tmp_path), check=False, timeout=60)
    assert r.returncode == 2 and time.monotonic() - start < 30, r.stderr[-2000:]
    ours = [line for line in r.stderr.splitlines() if line.startswith("flipes:")]
    share = r"returned shape \(5,\) for 4 members \(this process's share of --popsize 8\)"
    line = rf"flipes: error: --fitness: .*{share}.* \(on rank 1 of 2\)"
    assert len(ours) == 1 and re.fullmatch(line, ours[0]), ours
    assert "Traceback" not in r.stderr and load_checkpoint(tmp_path / "run")["es"]["generation"] == 0


# An env whose batch of --eval-episodes envs (more than any rank's share of the population) takes a minute to reset:
# rank 0's evaluation outlasts the watchdog asleep, not stepping a million CartPoles on a core the waiting rank needs
SLOW_EVAL_ENV = """
import time
import gymnasium as gym, numpy as np, torch

class SlowEval(gym.vector.VectorEnv):
    def __init__(self, num_envs):
        self.num_envs = num_envs
        self.single_observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
        self.single_action_space = gym.spaces.Discrete(2)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)

    def reset(self, *, seed=None, options=None):
        if self.num_envs > 100:
            time.sleep(60)
        return torch.zeros(self.num_envs, 3), {}

    def step(self, actions):
        done = torch.ones(self.num_envs, dtype=torch.bool)
        return torch.zeros(self.num_envs, 3), actions.double(), done, torch.zeros_like(done), {}

gym.register("slowtest/SlowEval-v0", vector_entry_point=SlowEval)
"""


def test_a_timeout_while_rank_0_evaluates_names_the_evaluation(tmp_path: Path) -> None:
    """Rank 0 evaluates the center policy alone while the other ranks wait for its row: an evaluation longer than
    --mpi-timeout (+10 s on the others; here an env whose evaluation batch takes a minute to reset) ends the job with
    the watchdog's line, which names that wait (the end of the generation, rank 0's evaluation over --eval-episodes)
    rather than only "bcast #N: rank 0 did not answer"."""
    (tmp_path / "slow_eval.py").write_text(SLOW_EVAL_ENV)
    start = time.monotonic()
    args = ["--env", "slow_eval:slowtest/SlowEval-v0", "--popsize", "16", "--groups", "2", "--generations", "3",
            "--eval-episodes", "1000000", "--mpi-timeout", "1", "--target", "none", "--progress", "false",
            "--out", str(tmp_path / "run")]  # fmt: skip
    r = mpirun(2, *args, extra_path=str(tmp_path), check=False, timeout=90)
    assert r.returncode == 3 and time.monotonic() - start < 60, r.stderr[-2000:]
    assert re.search(
        r"rank 1 waited 11 s in bcast #\d+ \(the end of generation 0: rank 0 evaluates the center policy "
        r"over --eval-episodes 1000000, logs and checkpoints before it\): rank 0 did not answer",
        r.stderr,
    ), r.stderr


RAISING_SCRIPT = """
import sys, torch, flipes

def fitness(model, pop):
    if pop.members.start > 0 and pop.generation == 2:
        raise RuntimeError("boom in a script")
    return torch.arange(pop.size, dtype=torch.float32)

try:
    flipes.train(env="none", model=lambda env: torch.nn.Linear(3, 2), fitness="nothere:fitness", out=sys.argv[1])
except flipes.UsageError:
    pass  # caught on every rank: the job goes on
flipes.train(env="none", model=lambda env: torch.nn.Linear(3, 2), fitness=fitness, popsize=8, groups=2,
             generations=100000, out=sys.argv[1], progress=False, tensorboard=False, plot=False)
"""


def test_a_script_whose_fitness_raises_on_one_rank_ends_the_job_promptly(tmp_path: Path) -> None:
    """``mpiexec -n 2 python script.py`` calling flipes.train, with a fitness that raises on rank 1 at generation 2,
    ends within 30 s with a nonzero status, '[rank 1] failed' and the traceback, instead of leaving rank 0 in
    a collective until --mpi-timeout (300 s); an exception the script catches is left alone."""
    (tmp_path / "script.py").write_text(RAISING_SCRIPT)
    env = mpi_env(ROOT)
    cmd = [str(MPIEXEC), "-n", "2", sys.executable, str(tmp_path / "script.py"), str(tmp_path / "run")]
    start = time.monotonic()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert r.returncode != 0 and time.monotonic() - start < 30, r.stderr[-2000:]
    assert "[rank 1] failed" in r.stderr and "RuntimeError: boom in a script" in r.stderr
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["generation"] == 0


BUFFER_SCRIPT = """
import sys, torch, flipes

class RunningMean(torch.nn.Module):  # a normalizer of one's own: a buffer the forward updates from its inputs
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(3))

    def forward(self, x):
        with torch.no_grad():
            self.mean += 0.1 * (x.reshape(-1, 3).mean(0) - self.mean)
        return x - self.mean

def fitness(model, pop):  # each member's inputs of its own: each rank's buffer sees its own members
    x = torch.arange(pop.members.start, pop.members.stop, dtype=torch.float32)[:, None].expand(pop.size, 3)
    return -model(x).square().sum(1)

flipes.train(env="none", model=lambda env: torch.nn.Sequential(RunningMean(), torch.nn.Linear(3, 1)), fitness=fitness,
             popsize=8, groups=2, generations=4, check_every=2, out=sys.argv[1], progress=False, tensorboard=False, plot=False)
"""


def test_ranks_whose_buffers_the_forward_changed_apart_are_named_with_the_cause(tmp_path: Path) -> None:
    """A model with a buffer its forward updates from its inputs (a running mean of one's own), trained on 2 ranks whose
    members' inputs differ: the ranks' check after 2 generations (check_every=2) ends the job naming the buffer
    (0.mean), that it is a buffer changed by each rank's own members, and the fixes, not a callback of rank 0."""
    (tmp_path / "script.py").write_text(BUFFER_SCRIPT)
    env = mpi_env(ROOT)
    cmd = [str(MPIEXEC), "-n", "2", sys.executable, str(tmp_path / "script.py"), str(tmp_path / "run")]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert r.returncode != 0, r.stderr[-2000:]
    assert "ranks hold different parameters or buffers (rank 0: " in r.stderr and ") in 0.mean; " in r.stderr, r.stderr
    assert "0.mean is a buffer that the forward changed by each rank's own members' inputs" in r.stderr
    assert "flipes.rl.RunningNorm" in r.stderr and "callbacks run on rank 0" not in r.stderr


OWN_LOOP_BUFFER_SCRIPT = """
import warnings, torch, flipes

class RunningMean(torch.nn.Module):  # a buffer the forward updates from its inputs
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(3))

    def forward(self, x):
        with torch.no_grad():
            self.mean += 0.1 * (x.reshape(-1, 3).mean(0) - self.mean)
        return x - self.mean

warnings.simplefilter("always")
comm = flipes.dist.world()
for updating in (True, False):
    torch.manual_seed(0)
    model = flipes.flipout(torch.nn.Sequential(RunningMean(), torch.nn.Linear(3, 1)))
    es = flipes.FlipES(model, popsize=8, groups=2, seed=0, comm=comm, comm_mode="seeds")
    for _ in range(2):
        with es.population() as pop:
            x = torch.arange(pop.members.start, pop.members.stop, dtype=torch.float32)[:, None].expand(pop.size, 3)
            if not updating:
                x = torch.ones(pop.size, 3)  # every rank's members alike: the buffers stay equal
            fitness = -model(x).square().sum(1)
        es.tell(fitness)
    print(f"rank {comm.rank} done {updating}", flush=True)
"""


def test_an_own_loop_whose_ranks_buffers_drift_apart_is_warned_at_the_first_tell(two_rank_scripts: Path) -> None:
    """A loop of one's own on 2 ranks whose model has a buffer its forward updates from each rank's own members gets one
    warning (rank 0) at the first tell naming the buffer and the fixes, and goes on; buffers that stay alike warn
    nothing."""
    stdout, stderr = ("".join((two_rank_scripts / "buffer" / f"{out}.{rank}").read_text() for rank in (0, 1))
                      for out in ("stdout", "stderr"))  # fmt: skip
    assert stderr.count("FlipES: the processes hold different buffers (0.mean) at generation 0's tell") == 1, stderr
    assert "obs_norm.update(comm=es.comm)" in stderr
    done = sorted(re.findall(r"rank \d done (?:True|False)", stdout))
    assert done == ["rank 0 done False", "rank 0 done True", "rank 1 done False", "rank 1 done True"]


HELD_RUN_SCRIPT = """
import sys, time, torch, flipes

comm = flipes.dist.world()
kw = dict(env="none", model=lambda env: torch.nn.Linear(3, 2), fitness=lambda model, pop: torch.ones(pop.size), popsize=8,
          groups=2, generations=1, out=sys.argv[1], progress=False, tensorboard=False, plot=False, mpi_timeout=60)
if comm.rank == 0:
    flipes.train(comm=flipes.dist.SerialComm(), **kw)  # a run in the directory
comm.bcast(None)
start = time.monotonic()
try:
    flipes.train(comm=comm, **kw)
except flipes.UsageError as e:
    with open(f"{sys.argv[1]}.rank{comm.rank}", "w") as out:  # a file each: mpiexec may interleave their lines
        print(f"after {time.monotonic() - start:.0f} s: {e.problem}", file=out)
"""


def test_a_run_directory_that_holds_a_run_is_every_ranks_error_in_a_script(two_rank_scripts: Path) -> None:
    """``mpiexec -n 2 python script.py`` training into a directory that holds a run, which rank 0 alone checks, raises the
    UsageError on both ranks within seconds, so a script that catches it goes on alike on both (before, rank 1 waited for
    rank 0 until --mpi-timeout)."""
    held = two_rank_scripts / "held"  # the job went on after it, to LOAD_ON_ONE_RANK_SCRIPT
    said = [(held / f"run.rank{k}").read_text() for k in (0, 1)]
    assert all(int(line.split()[1]) < 30 and f"{held / 'run'}' holds a run" in line for line in said), said


LOAD_ON_ONE_RANK_SCRIPT = """
import sys, torch, flipes

comm = flipes.dist.world()
out = open(f"{sys.argv[1]}/rank{comm.rank}.txt", "w")
torch.manual_seed(0)
model = flipes.flipout(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)))
es = flipes.FlipES(model, popsize=8, groups=2, seed=0, comm=comm)
fitness = lambda model, pop: model(torch.ones(pop.size, 3)).squeeze(-1)
es.step(fitness)
if comm.rank == 0:
    es.load_state_dict(es.state_dict())  # the state it holds: the ranks still agree
stats = es.step(fitness)
print(stats["generation"], repr(stats["fitness_mean"]), file=out, flush=True)
if comm.rank == 1:
    state = es.state_dict()
    state["model"] = {k: v + 1 for k, v in state["model"].items()}
    es.load_state_dict(state)
with es.population() as pop:
    f = fitness(model, pop)
try:
    es.tell(f)
except RuntimeError as e:
    print(str(e).split(" (")[0], file=out, flush=True)
"""


def test_a_second_sigterm_to_mpiexec_ends_a_generation_that_never_ends_in_one_line(tmp_path: Path) -> None:
    """Under mpiexec -n 2, a generation that never ends, then SIGTERM to mpiexec (which forwards it to every rank) twice,
    REPEAT_SECONDS apart: the job ends with status 130 and one flipes line naming the second SIGTERM and the last
    checkpoint (no traceback per rank), which loads (before, the job sat forever)."""
    (tmp_path / "endless.py").write_text(ENDLESS_FITNESS)
    run = tmp_path / "run"
    args = ["--env", "none", "--model", "endless:make_model", "--fitness", "endless:fitness", "--popsize", "8", "--groups",
            "2", "--tensorboard", "false", "--plot", "false", "--progress", "false", "--checkpoint-every", "1", "--generations",
            "1000"]  # fmt: skip
    env = mpi_env(ROOT, tmp_path)
    cmd = [str(MPIEXEC), "-n", "2", sys.executable, "scripts/train.py", *args, "--out", str(run)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = sigterm_twice(proc, run / "metrics.jsonl", 2)  # generation 2 never ends
    ours = [line for line in err.splitlines() if line.startswith("flipes: interrupted")]
    said = f"flipes: interrupted: train stopped at once by a second SIGTERM; the last checkpoint (after generation 1) stays: " \
           f"--resume {run} continues from it"  # fmt: skip
    assert proc.returncode == 130 and ours == [said] and "Traceback" not in err, (proc.returncode, err[-3000:])
    assert load_checkpoint(run)["es"]["generation"] == 2


def test_a_state_loaded_on_one_rank_is_compared_at_the_next_tell_on_every_rank(two_rank_scripts: Path) -> None:
    """Under ``mpiexec -n 2``, a FlipES whose state is loaded on one rank alone compares parameters on both
    ranks at the next tell: the same state trains on (equal stats on both), another is refused on both with
    the ranks' parameters named (the loading rank alone comparing met the other's fitness exchange: a
    TypeError from garbled counts, or a hang)."""
    lines = [(two_rank_scripts / "load" / f"rank{k}.txt").read_text().splitlines() for k in (0, 1)]
    assert lines[0] == lines[1] and len(lines[0]) == 2, lines  # both trained on alike, then both refused
    assert lines[0][0].startswith("1 ") and lines[0][1] == "FlipES: the processes hold different parameters"


def test_resume_at_another_process_count_continues(one_process_seeds: Path, three_rank_runs: Path) -> None:
    """3 generations on 2 processes resumed for 2 more on 3 processes log, generation by generation, the same
    params_sha256 and timesteps as 5 generations on 1 process (CartPole, 2 episodes per member)."""
    full, part = one_process_seeds, three_rank_runs / "resumed"  # the shared 2-process run, copied and resumed
    hashes = [json.loads(line)["params_sha256"] for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert hashes == [json.loads(line)["params_sha256"] for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["timesteps"] for r in metrics(part)] == [r["timesteps"] for r in metrics(full)]  # counted once over the resume


def test_a_user_mistake_under_mpi_is_one_line_and_ends_the_job(tmp_path: Path) -> None:
    """Under mpiexec, options that cannot work (fewer groups than processes) end every rank at once
    with flipes' one-line error and exit status 2, before anything is written."""
    start = time.monotonic()
    r = mpirun(2, "--groups", "1", "--out", str(tmp_path / "run"), check=False, timeout=60)
    assert r.returncode == 2 and time.monotonic() - start < 30, r.stderr
    ours = [line for line in r.stderr.splitlines() if line.startswith("flipes:")]
    assert ours == [
        "flipes: error: --groups: 1 group(s) cannot be shared by 2 processes; use one of --groups [2, 4, 8, 16, 32]"
    ], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()


def test_without_groups_two_processes_take_two_and_the_run_keeps_them_on_one(tmp_path: Path, two_rank_runs: Path) -> None:
    """Under mpiexec without --groups, training takes one ε group per process, says so in one note and records
    it: a resume on one process continues with those groups, on the parameters of a one-process run given them."""
    run, ref = tmp_path / "run", tmp_path / "ref"
    shutil.copytree(two_rank_runs / "no-groups", run, ignore=shutil.ignore_patterns(".lock"))  # the resume writes to it
    args = NO_GROUPS
    stderr = "".join((two_rank_runs / f"no-groups.stderr.{rank}").read_text() for rank in (0, 1))
    notes = [line for line in stderr.splitlines() if line.startswith("flipes: --groups")]
    assert notes == [
        "flipes: --groups 2: each of the 2 processes evaluates whole ε groups (--groups 0, the default, takes the "
        "fewest that work); pass --groups for a run whose members do not depend on the process count or the parts"
    ], stderr
    assert json.loads((run / "config.json").read_text())["groups"] == 2
    train_on(1, "--resume", str(run), "--generations", "3")
    train_on(
        1,
        *args,
        "--generations",
        "3",
        "--comm",
        "seeds",
        "--groups",
        "2",
        "--tensorboard",
        "false",
        "--plot",
        "false",
        "--out",
        str(ref),
    )
    assert last(run)["generation"] == 2 and torch.equal(params(run), params(ref))


@pytest.mark.parametrize("mode", ["seeds", "allreduce"])
def test_adaptive_sigma_does_not_depend_on_the_process_count(tmp_path: Path, mode: str, two_rank_runs: Path) -> None:
    """--algo pgpe (σ per layer adapted, ClipUp): 2 processes end with the σ's and parameters of one,
    bitwise in seeds mode, to rounding with allreduce's per-rank partial sums."""
    runs = {1: tmp_path / "n1", 2: two_rank_runs / f"pgpe-{mode}"}
    train_on(1, *pgpe(mode), "--out", str(runs[1]))
    sigmas = {k: load_checkpoint(run)["es"]["log_sigma"] for k, run in runs.items()}
    assert not torch.equal(sigmas[1], torch.full_like(sigmas[1], sigmas[1][0].item()))  # σ moved, per layer
    if mode == "seeds":
        assert torch.equal(sigmas[2], sigmas[1]) and last(runs[2])["params_sha256"] == last(runs[1])["params_sha256"]
    else:
        torch.testing.assert_close(sigmas[2], sigmas[1], rtol=1e-9, atol=1e-12)
        assert (params(runs[2]) - params(runs[1])).norm() / params(runs[1]).norm() < 1e-6


def test_a_sigma_schedule_gives_two_processes_the_bits_of_one(tmp_path: Path, two_rank_runs: Path) -> None:
    """--sigma-decay 0.6 --sigma-min 0.04 --lr-decay 0.5 --lr-min 0.02 --comm seeds: 2 processes under mpiexec log the
    σ and lr (decayed, then floored) and the parameters of one process (in this one) in every row, bit for bit: both
    are functions of the generation, which every rank shares."""
    one = flipes.train(config=parse_train_config([*SIGMA_SCHEDULE, "--progress", "false", "--out", str(tmp_path / "one")]))
    runs = {"one": tmp_path / "one", "two": two_rank_runs / "sigma-schedule"}
    rows = {k: [(r["sigma"], r["lr"], r["params_sha256"]) for r in metrics(run)] for k, run in runs.items()}
    assert rows["two"] == rows["one"] and len(one.metrics) == 3
    assert [(s, lr) for s, lr, _ in rows["one"]] == [(0.1, 0.05), (0.06, 0.025), (0.04, 0.02)]


def test_action_noise_gives_two_processes_the_bits_of_one(tmp_path: Path, two_rank_runs: Path) -> None:
    """--action-noise 0.3 --comm seeds on Pendulum, 2 episodes per member: 2 processes under mpiexec log the fitness and
    parameters of one process (in this one) in every row, bit for bit (a member's noise is its global rows' of a draw
    for the whole population); the noise changed the fitness (the one-process run without it logs another)."""
    flipes.train(config=parse_train_config([*ACTION_NOISE, "--action-noise", "0.3", "--out", str(tmp_path / "one")]))
    flipes.train(config=parse_train_config([*ACTION_NOISE, "--out", str(tmp_path / "quiet")]))
    runs = {"one": tmp_path / "one", "two": two_rank_runs / "action-noise", "quiet": tmp_path / "quiet"}
    keys = ("fitness_mean", "fitness_max", "timesteps", "params_sha256")
    rows = {k: [[r[key] for key in keys] for r in metrics(run)] for k, run in runs.items()}
    assert rows["two"] == rows["one"] and len(rows["one"]) == 3
    assert rows["quiet"][0][0] != rows["one"][0][0]


def test_common_episodes_give_two_processes_the_bits_of_one(tmp_path: Path, two_rank_runs: Path) -> None:
    """--common-episodes --action-noise 0.3 --comm seeds on Pendulum, 2 episodes per member: 2 processes under mpiexec
    log the fitness and parameters of one process (in this one) in every row, bit for bit (each rank's members play
    global envs 0 and 1's episodes, with their noise); the rows differ from those of the same run without common
    episodes."""
    flipes.train(config=parse_train_config([*ACTION_NOISE, "--action-noise", "0.3", "--common-episodes", "--out",
                                            str(tmp_path / "one")]))  # fmt: skip
    runs = {"one": tmp_path / "one", "two": two_rank_runs / "common-episodes", "own": two_rank_runs / "action-noise"}
    keys = ("fitness_mean", "fitness_max", "timesteps", "params_sha256")
    rows = {k: [[r[key] for key in keys] for r in metrics(run)] for k, run in runs.items()}
    assert rows["two"] == rows["one"] and len(rows["one"]) == 3
    assert rows["own"][0][0] != rows["one"][0][0]


MANY_COMMS = """
import json, sys, time
import flipes

unread = 0
for i in range(2100):  # a sweep calling flipes.train 2100 times: one communicator kept a round would pass MPICH's 2048
    comm = flipes.dist.world()
    comm.start_watchdog(60.0)
    seen = comm.allgather_object(i)  # a collective watched: rank 1 sends rank 0 an arrival note
    dog = comm._watchdog
    end = time.monotonic() + (5 if unread == 0 else 0)  # waits once for a note that never counts, not every round
    while comm.rank == 0 and dog.arrived[1] < 1 and time.monotonic() < end:  # the note of this watchdog's token counts
        dog._drain()
    unread += comm.rank == 0 and dog.arrived[1] < 1
    comm.start_watchdog(0)
    assert seen == [i, i], (i, seen)
json.dump({"rounds": i + 1, "unread": unread}, open(f"{sys.argv[1]}/rank{comm.rank}.json", "w"))
"""


# what bytes_sent counts of each tensor collective on this rank, into argv[1]/rankR.json
BYTES_SENT = """
import json, sys, torch, flipes

comm = flipes.dist.world()
sent = []
for call, x in ((comm.allgather_tensor, torch.zeros(3 + comm.rank, 2, dtype=torch.float64)),  # each rank its own rows
                (comm.allreduce_sum_, torch.zeros(4, dtype=torch.float32)),
                (comm.allreduce_sum_, torch.zeros(5, dtype=torch.bfloat16))):  # summed in float32
    before = comm.bytes_sent
    call(x)
    sent.append(comm.bytes_sent - before)
json.dump(sent, open(f"{sys.argv[1]}/rank{comm.rank}.json", "w"))
"""


def test_bytes_sent_counts_each_ranks_own_payload_of_a_tensor_collective(two_rank_scripts: Path) -> None:
    """Under mpiexec -n 2, ``bytes_sent`` grows by the bytes this rank put into each tensor collective: its own rows of
    an allgather (rank r: 3 + r rows of 2 float64), a float32 allreduce's buffer (4 × 4), and a bfloat16 one's float32
    buffer (5 × 4), the column ``bytes_sent`` of a run's rows."""
    sent = [json.loads((two_rank_scripts / "bytes" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sent == [[(3 + r) * 2 * 8, 16, 20] for r in (0, 1)]


def test_a_process_may_start_communicators_and_watchdogs_again_and_again(two_rank_scripts: Path) -> None:
    """Under mpiexec -n 2, 2100 rounds of ``flipes.dist.world()``, ``start_watchdog``, a collective and
    ``start_watchdog(0)`` (what each flipes.train call does) all end: MPICH has 2048 communicators a process, and
    each round kept two (the node split and the watchdog's duplicate; either one alone also runs out in 2100 rounds)
    until MPI_Comm_split_type failed with 'Too many communicators'. Rank 0's watchdog of each round reads rank 1's
    arrival note, which carries that watchdog's token (rank 0's, shared at its start)."""
    many = [json.loads((two_rank_scripts / "many" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert many == [{"rounds": 2100, "unread": 0}] * 2


# Runs each [script, directory, *args] of the JSON list argv[1] in turn in this process, as `python script *args` runs it,
# its output to DIRECTORY/stdout.RANK and stderr.RANK (mpiexec would merge the scripts' and ranks' lines) and the warning
# filters it sets put back after it
SCRIPTS_IN_TURN = """
import contextlib, json, runpy, sys, warnings
from flipes.dist import launched_world

for script, directory, *args in json.loads(sys.argv[1]):
    sys.argv = [script, *args]
    rank = launched_world()[0]
    with open(f"{directory}/stdout.{rank}", "w") as out, open(f"{directory}/stderr.{rank}", "w") as err:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            runpy.run_path(script, run_name="__main__")
"""


def shared_two_rank_scripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RANK_ROWS, LR_SCHEDULE, READ_BACK and HELD_RUN_SCRIPT, scripts that each train with flipes.train under ``mpiexec
    -n 2``, then MANY_COMMS, LOAD_ON_ONE_RANK_SCRIPT (an own loop whose last tell is refused), OWN_LOOP_OBS_NORM (its
    loops "comm" and "plain"), OWN_LOOP_BUFFER_SCRIPT, BYTES_SENT, CURRICULUM (4 generations into once/, 2 then 4 into resumed/),
    FITNESS_ERROR_SWEEP, PROBE_LOOP and NS_RUN (test_probe.py's and test_novelty_archive.py's loops: tests/ on the path)
    and OWN_LOOP_STOP's shared stop, run one after the other in one job (one start of 2 ranks for the tests, here and
    in those files, that read them), once per session: the directory holding each one's directory (rows, lr,
    read_back, held, many, load, obs_norm, buffer, bytes, curriculum, sweep, probe, novelty, stop), which holds its stdout.R
    and stderr.R of rank R (HELD_RUN_SCRIPT's run directory is held/run, made by the script). Read it, never write to
    it."""

    def make(out: Path) -> None:
        curriculum = [(str(out / "curriculum" / name), generations) for name, generations in (("once", 4), ("resumed", 2),
                                                                                               ("resumed", 4))]  # fmt: skip
        jobs = []
        for name, script, args in (
            ("rows", RANK_ROWS, [out / "rows"]), ("lr", LR_SCHEDULE, [out / "lr"]),
            ("read_back", READ_BACK, [out / "read_back"]), ("held", HELD_RUN_SCRIPT, [out / "held" / "run"]),
            ("many", MANY_COMMS, [out / "many"]), ("load", LOAD_ON_ONE_RANK_SCRIPT, [out / "load"]),
            ("obs_norm", OWN_LOOP_OBS_NORM, [out / "obs_norm", "comm", "plain"]), ("buffer", OWN_LOOP_BUFFER_SCRIPT, []),
            ("bytes", BYTES_SENT, [out / "bytes"]),
            ("curriculum", CURRICULUM, [json.dumps(curriculum)]), ("sweep", FITNESS_ERROR_SWEEP, [out / "sweep"]),
            ("probe", PROBE_LOOP, [out / "probe", "2"]), ("novelty", NS_RUN, [out / "novelty"]),
            ("stop", OWN_LOOP_STOP, ["shared"]),  # last: its watchdog of 4 s stays
        ):  # fmt: skip
            (out / f"{name}.py").write_text(script)
            (out / name).mkdir()
            jobs.append([str(out / f"{name}.py"), str(out / name), *map(str, args)])
        for directory, _ in curriculum:
            Path(directory).mkdir(exist_ok=True)
        (out / "in_turn.py").write_text(SCRIPTS_IN_TURN)
        cmd = [str(MPIEXEC), "-n", "2", sys.executable, str(out / "in_turn.py"), json.dumps(jobs)]
        env = mpi_env(ROOT, ROOT / "tests")
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]

    return once_per_session(tmp_path_factory, "two_rank_scripts", make)


@pytest.fixture
def two_rank_scripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """shared_two_rank_scripts' directory (a plain function: test_probe.py and test_novelty_archive.py read it too)."""
    return shared_two_rank_scripts(tmp_path_factory)


# test_probe.py's NSR-ES-like loop on this rank, rolled out argv[2] members at a time: what it gathered, to argv[1]/rankR.pt
PROBE_LOOP = """
import sys, torch, flipes
from test_probe import nsr_loop

comm = flipes.dist.world()
torch.save(nsr_loop(comm, int(sys.argv[2])), f"{sys.argv[1]}/rank{comm.rank}.pt")
"""

# test_novelty_archive.py's NS-ES run for 3 generations into argv[1]/run: each rank's hashes and archive, to argv[1]/rankR.pt
NS_RUN = """
import sys, torch, flipes
from test_novelty_archive import ns_run

comm = flipes.dist.world()
torch.save(ns_run(sys.argv[1] + "/run", 3, comm=comm), f"{sys.argv[1]}/rank{comm.rank}.pt")
"""


FITNESS_ERROR_SWEEP = """
import json, sys
import torch, flipes

def fitness(model, pop):
    if pop.members.start > 0 and pop.generation == 1:
        raise ValueError("bad trial")
    return model(torch.ones(pop.size, 3))[:, 0]

kw = dict(env="none", model=lambda env: torch.nn.Linear(3, 2), popsize=8, groups=2, generations=3, progress=False,
          tensorboard=False, plot=False, mpi_timeout=30)  # without a shared error rank 0 waits, then the job ends
said = {}
try:
    flipes.train(fitness=fitness, out=sys.argv[1] + "/failing", **kw)
except Exception as e:  # a sweep: the trial failed, the next one goes on
    said["error"] = f"{type(e).__name__}: {e}"
result = flipes.train(fitness=lambda model, pop: model(torch.ones(pop.size, 3))[:, 0], out=sys.argv[1] + "/next", **kw)
said["next"] = result.metrics[-1]["params_sha256"]
json.dump(said, open(f"{sys.argv[1]}/rank{result.es.comm.rank}.json", "w"))
"""


def test_a_fitness_error_on_one_rank_is_every_ranks_error_and_a_sweep_goes_on(two_rank_scripts: Path) -> None:
    """``mpiexec -n 2 python script.py`` whose fitness raises on rank 1 at generation 1, in a sweep that catches the error
    and trains its next trial: rank 1 raises its ValueError, rank 0 a RuntimeError naming rank 1, the generation and the
    error, both from the fitness exchange (rank 0 waited in it until --mpi-timeout, ending the job), and both ranks then
    train the next trial to the same parameters."""
    said = [json.loads((two_rank_scripts / "sweep" / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert said[1]["error"] == "ValueError: bad trial", said
    assert said[0]["error"].startswith("RuntimeError: rank 1 failed in generation 1's fitness (ValueError: bad trial)")
    assert said[0]["next"] == said[1]["next"]


RANK_ROWS = """
import json, sys
import flipes

class AddKey(flipes.Callback):
    def on_generation(self, state, row):
        row["twice"] = 2 * row["generation"]

out = sys.argv[1]
result = flipes.train(env="flipes/CartPole-v1", popsize=8, groups=2, generations=3, eval_episodes=3, target=None,
                      tensorboard=False, plot=False, progress=False, out=out + "/run", callbacks=[AddKey()])
rank = result.es.comm.rank
rows = [{k: v for k, v in r.items() if k not in ("steps_per_second", "bytes_sent")} for r in result.metrics]
json.dump({"rows": rows, "best": result.best, "eval_return": result.eval_return}, open(f"{out}/rank{rank}.json", "w"))
"""


def test_every_rank_returns_rank_0s_rows_and_best(two_rank_scripts: Path) -> None:
    """Under mpiexec every rank's TrainResult holds rank 0's rows (its evaluation and what its
    callbacks added, which only rank 0 runs) and its best; only the per-rank timings differ."""
    ranks = [json.loads((two_rank_scripts / "rows" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [row["twice"] for row in ranks[0]["rows"]] == [0, 2, 4] and ranks[0]["best"] is not None
    assert ranks[1] == ranks[0]


LR_SCHEDULE = """
import json, sys
import torch, flipes

class HalveLR(flipes.Callback):  # a schedule held by a callback, which rank 0 alone runs
    def on_train_start(self, state):
        state.es.optimizer.param_groups[0]["lr"] = 0.2

    def on_generation(self, state, row):
        for group in state.es.optimizer.param_groups:
            group["lr"] *= 0.5

result = flipes.train(env="none", model=lambda env: torch.nn.Linear(3, 2), popsize=8, groups=2, generations=4, lr=0.1,
                      fitness=lambda model, pop: model(torch.ones(pop.size, 3))[:, 0], out=sys.argv[1] + "/run",
                      comm="seeds", check_every=2, progress=False, tensorboard=False, plot=False, callbacks=[HalveLR()])
json.dump({"params": result.metrics[-1]["params_sha256"], "lr": result.es.optimizer.param_groups[0]["lr"]},
          open(f"{sys.argv[1]}/rank{result.es.comm.rank}.json", "w"))
"""


def test_a_callbacks_lr_schedule_reaches_every_rank(tmp_path: Path, two_rank_scripts: Path) -> None:
    """A callback that changes the optimizer's lr (rank 0 alone runs callbacks) changes it on every rank: 2
    processes end with the lr of one process, 0.2 (set by its on_train_start) / 2⁴, and its parameters bit for bit
    (--comm seeds), where rank 1 would otherwise step at the first lr and the ranks' parameter check would end the job."""
    (tmp_path / "lr.py").write_text(LR_SCHEDULE)
    out = tmp_path / "n1"
    out.mkdir()
    run_alone(tmp_path / "lr.py", str(out))  # one process
    one = json.loads((tmp_path / "n1" / "rank0.json").read_text())
    assert one["lr"] == 0.2 / 2**4
    two = [json.loads((two_rank_scripts / "lr" / f"rank{rank}.json").read_text()) for rank in (0, 1)]  # the 2-process job
    assert two == [one, one]


OWN_LOOP_STOP = """
import sys, time, torch, flipes

comm = flipes.dist.world()
comm.start_watchdog(60.0)  # a watchdog before (a flipes.train's): rank 0 never reads rank 1's note of its last collective
for i in range(50):
    if comm.rank == 1 and i == 49:
        time.sleep(0.5)  # rank 0 enters (and reads the notes) first
    comm.bcast(i)
comm.start_watchdog(4.0)  # above any wait of the shared stop on a loaded machine
torch.manual_seed(0)
model = flipes.flipout(torch.nn.Linear(3, 2))
es = flipes.FlipES(model, popsize=8, groups=2, comm=comm, comm_mode="seeds")
while True:
    with es.population() as pop:
        fitness = model(torch.ones(pop.size, 3))[:, 0]
    es.tell(fitness)
    mine = es.generation >= (3 if comm.rank == 1 else 5)  # a stop each rank decides for itself
    if (es.comm.bcast(mine) if sys.argv[1] == "shared" else mine):
        break
print(f"rank {comm.rank} stopped at {es.generation}", flush=True)
"""


def test_an_own_loop_whose_ranks_stop_apart_ends_by_the_watchdog_and_a_shared_stop_ends_alike(
    tmp_path: Path, two_rank_scripts: Path
) -> None:
    """An own loop under mpiexec -n 2 whose rank 1 stops at generation 3 and rank 0 at 5 leaves rank 0 waiting in
    tell: with ``comm.start_watchdog(4)`` the job ends within seconds, naming rank 1 (status 3), although an earlier
    watchdog's last arrival note (collective #50, unread: its freed communicator's context may come back) said rank 1
    had arrived further. Rank 0's decision shared by ``comm.bcast`` stops both ranks at its generation, 5; the same
    script runs in one process (python alone, where the watchdog is nothing)."""
    (tmp_path / "stop.py").write_text(OWN_LOOP_STOP)
    env = mpi_env(ROOT)
    cmd = [str(MPIEXEC), "-n", "2", sys.executable, str(tmp_path / "stop.py")]
    r = subprocess.run([*cmd, "own"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "rank 0 waited 4 s in allgather #" in r.stderr and "rank(s) 1 did not arrive" in r.stderr
    stopped = [(two_rank_scripts / "stop" / f"stdout.{rank}").read_text() for rank in (0, 1)]  # the shared stop's job
    assert stopped == ["rank 0 stopped at 5\n", "rank 1 stopped at 5\n"], stopped
    assert run_alone(tmp_path / "stop.py", "shared") == "rank 0 stopped at 5\n"  # the same script, one process


READ_BACK = """
import json, sys, time
import torch, flipes

class SlowEnd(flipes.Callback):  # rank 0 alone runs callbacks: its last writes take their time
    def on_train_end(self, state, reason):
        time.sleep(1.0)

result = flipes.train(env="none", model=lambda env: torch.nn.Linear(3, 2), popsize=8, groups=2, generations=3,
                      fitness=lambda model, pop: model(torch.ones(pop.size, 3))[:, 0], out=sys.argv[1] + "/run",
                      progress=False, tensorboard=False, plot=False, callbacks=[SlowEnd()])
saved = flipes.load_checkpoint(sys.argv[1] + "/run")["es"]
json.dump({"generation": saved["generation"]}, open(f"{sys.argv[1]}/rank{result.es.comm.rank}.json", "w"))
"""


def test_every_rank_returns_once_the_run_directory_is_written(two_rank_scripts: Path) -> None:
    """Under mpiexec, flipes.train returns on no rank before rank 0 has written the final checkpoint (and run its
    callbacks' on_train_end): a script that reads the run right after, on every rank, reads its last generation
    (rank 1 once read generation 0's checkpoint, while rank 0 was still writing)."""
    said = [json.loads((two_rank_scripts / "read_back" / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [r["generation"] for r in said] == [3, 3]


OWN_LOOP_OBS_NORM = """
import hashlib, json, sys, warnings
import torch, flipes
from flipes.rl import MLPPolicy, RolloutFitness, make_vector_env

comm = flipes.dist.world()
for how in sys.argv[2:]:  # each a loop of its own, from the same seeds
    torch.manual_seed(0)
    env = make_vector_env("flipes/CartPole-v1", 8 // comm.size)
    policy = flipes.flipout(MLPPolicy(env.single_observation_space, env.single_action_space, hidden=(8,)))
    es = flipes.FlipES(policy, popsize=8, groups=2, sigma=0.1, seed=0, comm=comm, comm_mode="seeds")
    fitness = RolloutFitness(env, seed=0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(3):
            es.step(fitness)
            policy.obs_norm.update(comm=es.comm) if how == "comm" else policy.obs_norm.update()
    norm = policy.obs_norm
    state = b"".join(t.detach().numpy().tobytes() for t in (*policy.parameters(), norm.mean, norm.var, norm.count))
    json.dump({"state": hashlib.sha256(state).hexdigest(), "count": norm.count.item(),
               "warned": sum("obs_norm.update(comm=es.comm)" in str(w.message) for w in seen)},
              open(f"{sys.argv[1]}/{how}{comm.size}.{comm.rank}.json", "w"))
"""


def test_an_own_loop_merges_obs_norm_across_ranks_as_one_process(tmp_path: Path, two_rank_scripts: Path) -> None:
    """A loop of one's own split across 2 ranks (FlipES comm=, comm_mode="seeds") whose policy holds a RunningNorm
    ends with the parameters and observation statistics of one process, bit for bit, when it merges them with
    ``obs_norm.update(comm=es.comm)``; a plain ``update()`` there merges each rank's share alone, so the ranks would
    normalize differently (they end on other statistics): it warns on every rank, every generation (and a one-process
    loop is not warned)."""
    (tmp_path / "loop.py").write_text(OWN_LOOP_OBS_NORM)
    run_alone(tmp_path / "loop.py", str(tmp_path), "plain")  # one process
    one = json.loads((tmp_path / "plain1.0.json").read_text())
    two = two_rank_scripts / "obs_norm"  # the 2-rank job's loops "comm" and "plain"
    merged = [json.loads((two / f"comm2.{rank}.json").read_text()) for rank in (0, 1)]
    alone = [json.loads((two / f"plain2.{rank}.json").read_text()) for rank in (0, 1)]
    assert one["warned"] == 0 and one["count"] > 0
    assert merged == [one, one]
    assert [a["warned"] for a in alone] == [3, 3] and alone[0]["state"] != alone[1]["state"]  # what it warns of


EXIT_LOOP = """import sys, torch, flipes
def fitness(model, pop):
    if pop.members.start > 0 and pop.generation == 2:
        {call}
    return model(torch.ones(pop.size, 3)).sum(1)
torch.manual_seed(0)
model = flipes.flipout(torch.nn.Linear(3, 2))
es = flipes.FlipES(model, popsize=8, groups=2, comm=flipes.dist.world(), comm_mode="seeds")
while True:
    with es.population() as pop:
        f = fitness(model, pop)
    es.tell(f)
"""


@pytest.mark.parametrize(("loop", "call"), [("train", "sys.exit(0)"), ("own", "sys.exit()"), ("train", "sys.exit(130)")])
def test_sys_exit_in_the_fitness_on_one_rank_ends_the_job_promptly(tmp_path: Path, loop: str, call: str) -> None:
    """A fitness that calls sys.exit on rank 1 at generation 2, with a status that also means "done" or "interrupted"
    (0, None, 130), ends the 2-process job within 30 s (not after --mpi-timeout's 300 s, naming a rank that "did not
    arrive", nor never: a loop of one's own has no timeout) with a nonzero status and one line naming rank 1, the call
    and the function that made it; in flipes train and in a loop of one's own (FlipES with comm=) alike."""
    (tmp_path / "exit_fitness.py").write_text(
        "import sys, torch\n"
        "def make_model(env):\n    return torch.nn.Sequential(torch.nn.Linear(3, 2))\n"
        "def fitness(model, pop):\n"
        f"    if pop.members.start > 0 and pop.generation == 2:\n        {call}\n"
        "    return torch.arange(pop.size, dtype=torch.float32)\n"
    )
    (tmp_path / "exit_loop.py").write_text(EXIT_LOOP.format(call=call))
    args = ["--env", "none", "--model", "exit_fitness:make_model", "--fitness", "exit_fitness:fitness", "--popsize", "8"]
    start = time.monotonic()
    if loop == "train":
        r = mpirun(2, *args, "--groups", "2", "--generations", "100000", "--out", str(tmp_path / "run"),
                   extra_path=str(tmp_path), check=False, timeout=90)  # fmt: skip
    else:
        cmd = [str(MPIEXEC), "-n", "2", sys.executable, str(tmp_path / "exit_loop.py")]
        env = mpi_env(ROOT)
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert r.returncode != 0 and time.monotonic() - start < 30, r.stderr[-2000:]
    where = "exit_fitness.py:6" if loop == "train" else "exit_loop.py:4"
    assert f"flipes: error: rank 1: {call} was called in fitness() at {where} during training" in r.stderr, r.stderr
    assert "did not arrive" not in r.stderr


def mpmd(rank0: list[str], rank1: list[str], timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    """``mpiexec -n 1 RANK0 : -n 1 RANK1``: the job and its seconds."""
    env = mpi_env(ROOT)
    start = time.monotonic()
    cmd = [str(MPIEXEC), "-n", "1", *rank0, ":", "-n", "1", *rank1]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return r, time.monotonic() - start


TRAIN_RANK = [sys.executable, "scripts/train.py", "--env", "flipes/CartPole-v1", "--popsize", "8", "--groups", "2"]


def test_a_rank_that_exits_right_after_mpi_init_ends_the_job_after_mpi_timeout(tmp_path: Path) -> None:
    """A peer that starts MPI and exits (status 1, MPI finalized: the launcher waits on) while rank 0 meets the ranks
    in its first collective (MPI_Comm_split_type, before the watchdog runs) ends the job after --mpi-timeout 2 s, not
    never: a nonzero status, rank 0's line saying it waited for the other ranks to start, nothing written."""
    peer = [sys.executable, "-c", "import sys, mpi4py.MPI; sys.exit(1)"]
    r, seconds = mpmd([*TRAIN_RANK, "--mpi-timeout", "2", "--out", str(tmp_path / "run")], peer)
    assert r.returncode != 0 and seconds < 25, r.stderr[-2000:]
    assert "flipes: error: --mpi-timeout: rank 0 waited 2 s for the other ranks to start (MPI_Comm_split_type)" in r.stderr
    assert not (tmp_path / "run").exists()


def test_a_rank_that_never_starts_mpi_ends_the_job_after_mpi_timeout(tmp_path: Path) -> None:
    """A peer that never calls MPI leaves rank 0 in MPI_Init (which holds the GIL: no thread of rank 0 runs): a helper
    process ends rank 0 after --mpi-timeout 2 s, and the launcher the job, with a nonzero status and rank 0's line
    saying it waited in MPI_Init, instead of a hang."""
    peer = [sys.executable, "-c", "import time; time.sleep(120)"]
    r, seconds = mpmd([*TRAIN_RANK, "--mpi-timeout", "2", "--out", str(tmp_path / "run")], peer)
    assert r.returncode != 0 and seconds < 25, r.stderr[-2000:]
    assert "flipes: error: --mpi-timeout: rank 0 waited 2 s for the other ranks to start (MPI_Init)" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()


INTERRUPTED_START = """
from mpi4py import MPI
from flipes import dist

class Interrupted:  # COMM_WORLD, whose first collective a Ctrl-C interrupts on this rank
    def __getattr__(self, name):
        return getattr(MPI.COMM_WORLD, name)

    def Split_type(self, *args, **kwargs):
        raise KeyboardInterrupt

dist.MPIComm(Interrupted())
"""


def test_an_exception_while_the_ranks_start_ends_the_job_at_once(tmp_path: Path) -> None:
    """A rank interrupted in MPIComm's first collective ends the job at once with its traceback and '[rank 1] failed'
    (the abort-on-exception hook is installed before any collective), well before --mpi-timeout 60 s."""
    r, seconds = mpmd([*TRAIN_RANK, "--mpi-timeout", "60", "--out", str(tmp_path / "run")],
                      [sys.executable, "-c", INTERRUPTED_START])  # fmt: skip
    assert r.returncode != 0 and seconds < 25, r.stderr[-2000:]
    assert "[rank 1] failed" in r.stderr and "KeyboardInterrupt" in r.stderr


@pytest.mark.parametrize("broken", ["no mpi4py", "no MPI library"])
def test_mpiexec_without_mpi4py_is_one_line_per_rank_and_status_2(tmp_path: Path, broken: str) -> None:
    """Under mpiexec -n 2 with mpi4py not importable, or with an mpi4py that finds no MPI library (its RuntimeError
    'cannot load MPI library', here by MPI4PY_LIBMPI naming no file), flipes train ends with status 2 and the one line
    'flipes: error: mpiexec: running under MPI needs mpi4py ...' (rank 0's first; MPICH's launcher lets the other rank
    say it too, Open MPI's ends the job at rank 0's exit), without a traceback."""
    env = mpi_env(tmp_path, ROOT)
    if broken == "no mpi4py":
        (tmp_path / "mpi4py").mkdir()
        (tmp_path / "mpi4py" / "__init__.py").write_text("raise ImportError('No module named mpi4py')\n")
    else:
        env["MPI4PY_LIBMPI"] = str(tmp_path / "libmpi.so")
    cmd = [str(MPIEXEC), "-n", "2", *TRAIN_RANK, "--out", str(tmp_path / "run")]
    start = time.monotonic()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and time.monotonic() - start < 25, r.stderr[-2000:]
    lines = r.stderr.splitlines()
    assert 1 <= len(lines) <= 2, r.stderr
    assert all(line.startswith("flipes: error: mpiexec: running under MPI needs mpi4py") for line in lines), r.stderr
    assert "pip install 'flipes[mpi]' mpich" in lines[0] and not (tmp_path / "run").exists()


def test_a_launcher_of_another_mpi_is_named_instead_of_training_alone(tmp_path: Path) -> None:
    """A process that Open MPI's launcher counts as one of 2 (OMPI_COMM_WORLD_SIZE=2) while mpi4py's MPI (MPICH) sees
    a job of one ends with status 2 and one line naming the cause (mpi4py built against another MPI) and the fix,
    before anything is written (each such process trained alone; a second one then failed as 'in use')."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "HYDI_", "MPI_"))}
    env.update(PYTHONPATH=str(ROOT), OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK="0")
    r = subprocess.run([*TRAIN_RANK, "--out", str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    # mpi4py's own warning of the same clash may come first, as flipes shows a command's warnings: one line
    ours = [line for line in r.stderr.splitlines() if line.startswith("flipes:") and not line.startswith("flipes: warning:")]
    assert len(ours) == 1 and ours[0].startswith("flipes: error: mpiexec: OMPI_COMM_WORLD_SIZE=2: Open MPI's"), r.stderr
    assert all(line.startswith("flipes:") for line in r.stderr.splitlines()), r.stderr  # no file:line warning form
    assert "mpi4py was built against another MPI than this launcher's" in ours[0] and "rebuild mpi4py" in ours[0]
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()


def test_help_under_mpiexec_is_printed_and_exits_0() -> None:
    """--help under mpiexec -n 2 still prints the options on every rank and exits 0 (it is read before MPI starts)."""
    r = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "scripts/train.py", "--help"], cwd=ROOT,
                       env=mpi_env(ROOT), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0 and r.stdout.count("--mpi-timeout") >= 2, r.stderr[-2000:]


def test_two_processes_count_the_budget_and_build_the_env_with_its_options_as_one(two_rank_runs: Path) -> None:
    """Under 2 processes holding 1 and 2 of 3 ε groups (8 and 16 members: ranks gathering rows of other counts),
    --max-timesteps counts every rank's env steps: a budget one step above generation 1's timesteps of the one-process
    run ends the 2-process run after generation 2 with that run's timesteps and parameters (a count of rank 0's members
    alone would end it later); --env-kwargs reaches every rank's env (Sutton and Barto's CartPole reward, 0 a step and
    -1 at a fall: the whole population's fitness is at most 0, where CartPole's own reward gives at least 1)."""
    one = metrics(two_rank_runs / "budget-one")  # BUDGET on one process: the rows the budget keeps
    two = metrics(two_rank_runs / "budget")  # BUDGET on 2, its budget one step above one[1]'s timesteps
    assert json.loads((two_rank_runs / "budget" / "config.json").read_text())["max_timesteps"] == one[1]["timesteps"] + 1
    assert len(one) == 3
    assert [(r["timesteps"], r["params_sha256"]) for r in two] == [(r["timesteps"], r["params_sha256"]) for r in one]
    assert all(r["fitness_max"] <= 0 for r in one + two), [r["fitness_max"] for r in one + two]


CURRICULUM = """
import json, sys
import torch, flipes
from flipes.rl import MLPPolicy, RolloutFitness, make_vector_env

comm = flipes.dist.world()


def model(_):
    torch.manual_seed(0)
    return flipes.flipout(MLPPolicy(env.single_observation_space, env.single_action_space, hidden=[4]))


class Widen(flipes.Callback):  # a curriculum held by a callback, which rank 0 alone runs
    def __init__(self):
        self.best = -float("inf")

    def on_generation(self, state, row):
        if row["fitness_mean"] > self.best:  # wider gravities each time the population does better
            self.best, (low, high) = row["fitness_mean"], env.unwrapped.g_range
            env.unwrapped.g_range = [low - 1.0, high + 1.0]

    def state_dict(self):
        return {"best": self.best, "g_range": list(env.unwrapped.g_range)}

    def load_state_dict(self, state):
        self.best, env.unwrapped.g_range = state["best"], state["g_range"]


# each (out, generations) in turn, as a new command would: a new env (the first range) and a new callback, so that
# a resumed run's range can only come from its checkpoint (one job: 2 ranks start once for the 3 runs)
for out, generations in json.loads(sys.argv[1]):
    env = make_vector_env("flipes/Pendulum-v1", 8 // comm.size, g_range=[9.5, 10.5], note=None)  # this rank's members
    result = flipes.train(env="none", model=model, fitness=RolloutFitness(env), popsize=8, groups=2, generations=generations,
                          out=out + "/run", resume="auto", comm="seeds", progress=False, tensorboard=False, plot=False,
                          callbacks=[Widen()], target=None)
    fitness = [json.loads(line)["fitness_mean"] for line in open(out + "/run/metrics.jsonl")]  # every generation's
    json.dump({"params": result.metrics[-1]["params_sha256"], "g_range": list(env.unwrapped.g_range), "fitness": fitness},
              open(f"{out}/rank{comm.rank}.json", "w"))
"""


def test_a_callbacks_curriculum_reaches_every_ranks_envs_and_a_resume(tmp_path: Path, two_rank_scripts: Path) -> None:
    """A curriculum that a callback keeps in its ``state_dict`` (Pendulum's ``g_range`` widened when the mean fitness
    improves; rank 0 alone runs callbacks) reaches every rank's envs, also from the checkpoint of a resume: 2 processes
    (``comm="seeds"``), trained 4 generations at once or 2 then resumed to 4, end with the range and the parameters of
    one process, bit for bit, on both ranks, and every generation's mean fitness is one process's (the first resumed
    generation's too, whose ranking alone could hide rank 1's members drawing other gravities from the first range)."""
    (tmp_path / "curriculum.py").write_text(CURRICULUM)
    (tmp_path / "one").mkdir()
    run_alone(tmp_path / "curriculum.py", json.dumps([(str(tmp_path / "one"), 4)]))  # one process
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    assert one["g_range"] != [9.5, 10.5]  # the curriculum moved
    two = two_rank_scripts / "curriculum"  # 2 processes: 4 generations at once, and 2 then resumed to 4
    ends = [json.loads((two / name / f"rank{rank}.json").read_text()) for name in ("once", "resumed") for rank in (0, 1)]
    assert ends == [one] * 4


def test_a_callback_with_state_given_to_rank_0_alone_ends_the_job_naming_it(tmp_path: Path) -> None:
    """The curriculum's callback passed on rank 0 only (``callbacks=[Widen()] if comm.rank == 0 else []``), whose state
    rank 1 would have no copy to take, so its envs would keep the first ``g_range`` unnoticed: the job fails with the
    error naming the callback and the fix, and no rank writes its end."""
    script = CURRICULUM.replace("callbacks=[Widen()]", "callbacks=[Widen()] if comm.rank == 0 else []")
    assert script != CURRICULUM
    (tmp_path / "curriculum.py").write_text(script)
    env = mpi_env(ROOT)
    cmd = [str(MPIEXEC), "-n", "2", sys.executable, str(tmp_path / "curriculum.py"), json.dumps([(str(tmp_path), 2)])]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    said = "callbacks: rank 0's callback(s) 0:Widen (position:class) hold state that rank 1 has no copy of to take"
    assert r.returncode != 0 and said in r.stderr and "pass the same callbacks in the same order on every rank" in r.stderr, (
        r.stderr[-2000:]
    )
    assert not list(tmp_path.glob("rank*.json"))
