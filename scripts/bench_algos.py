"""Search rules side by side: flipes' four search rules beside EvoTorch's PGPE and SNES, in one run.

    python scripts/bench_algos.py --json scripts/results/bench_algos.json --markdown scripts/results/bench_algos.md
    python scripts/bench_algos.py --quick          # smoke test, < 1 min (EvoTorch on digits, if .venv-bench has it)
    python scripts/bench_algos.py --tasks pendulum --methods openai-es adaptive-sigma --seeds 0 1 2 3 4

Methods (the ``--methods`` names):

- flipes, one ``flipes.train`` each, in this process, with the task's row below the algorithm's row
  (``TrainConfig.for_env(env, algo=...)``, as ``flipes train --env ENV --algo ALGO`` with no other flag):
  ``openai-es`` (centered ranks, Adam, fixed σ); ``adaptive-sigma`` (the same with ``sigma_lr=0.2, groups=8``:
  σ per layer, Adam kept); ``pgpe`` (``algo="pgpe"``: adaptive σ as above plus ClipUp with max speed
  lr·√D/2 for D parameters, lr the task row's, step size half the max speed); ``ars`` (``algo="ars"``:
  linear policy, top-all mirrored pairs ÷ reward std, SGD at α·σ with α 0.02, σ 0.03; on digits the
  model stays the MLP, only σ, lr and the rule change); ``fixed-sigma-x10`` and ``adaptive-sigma-x10``:
  openai-es and adaptive-sigma started at 10× the row's σ, where adaptive σ should help (σ chosen
  wrong). Not run unless named: ``fixed-sigma-8-groups`` (openai-es with ``groups=8``), adaptive-sigma's
  noise with σ fixed, a control.
- ``evotorch-pgpe`` and ``evotorch-snes``: EvoTorch 0.6.1 in ``--evotorch-python`` (``.venv-bench``, built by
  ``make bench-solve``), one subprocess per run (its ``ray.init`` and actor start-up are outside the clock).
  Settings: EvoTorch's own examples, see ``evotorch_settings``. EvoTorch has no SNES example for RL: there
  SNES keeps its library defaults (center lr 1, σ lr 0.2·(3 + ln n)/√n, "nes" ranking) on the same problem,
  popsize and initial radius as the PGPE example.

Tasks and what is measured (``value`` is the center/mean solution's score):

- ``pendulum``: flipes on ``flipes/Pendulum-v1`` (its per-env row: popsize 64, σ 0.1, Adam lr 0.2, 32-32 tanh
  MLP); EvoTorch on gymnasium's ``Pendulum-v1``. value = mean return of the center over 100 episodes of
  ``flipes/Pendulum-v1`` (matched step for step with gymnasium's); threshold −200.
- ``halfcheetah``: flipes on ``--halfcheetah-env`` (``HalfCheetah-v5``: EnvPool's engine when installed, its
  per-env row: popsize 128, σ 0.03, Adam lr 0.04, 64-64 MLP); EvoTorch on gymnasium's ``HalfCheetah-v5`` with
  ``VecGymNE``. value = mean return over 5 episodes of the same engine as flipes'; threshold 1,500 (far
  from solved: the budget ends first, so the value at the budget is the number to read).
- ``digits``: ``scripts/digits.py``'s model and fitness through ``flipes.train(env="none", ...)`` (64-64-10
  tanh MLP, popsize 1,024, σ 0.05, Adam lr 0.03, one 256-example minibatch per generation shared by all
  members); EvoTorch's ``SupervisedNE`` on the same MLP, split and minibatch size (``common_minibatch``).
  value = test accuracy (%); threshold 95%.

The clock: every budget and every "time to threshold" is training time, that is wall time less the
center evaluations (flipes: a metrics row's ``seconds`` less the ``eval_seconds`` so far; EvoTorch: the
time inside ``searcher.step()``). flipes evaluates on its row's schedule (every 2 generations; digits every
generation); EvoTorch after the first generation past each ``eval-every`` seconds of its clock; both once
more at the end of the budget (the "final" value). One torch thread per flipes run; EvoTorch's RL runs
use ``--evotorch-actors`` ray actors (one per core, as its examples), its digits runs one thread in process
(as flipes). The 1-minute load average is recorded before and after every run: on a shared machine the
times move with it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from repro_common import cpu_name

import flipes
from flipes.cli import run
from flipes.errors import UsageError
from flipes.rl import episode_seed, make_vector_env, run_episodes
from flipes.rl.presets import algo_preset

ROOT = Path(__file__).resolve().parents[1]

Task = Literal["pendulum", "halfcheetah", "digits"]
Method = Literal[
    "openai-es", "adaptive-sigma", "pgpe", "ars", "fixed-sigma-x10", "adaptive-sigma-x10", "evotorch-pgpe", "evotorch-snes",
    "fixed-sigma-8-groups",
]  # fmt: skip
FLIPES: dict[str, tuple[str, dict[str, Any]]] = {  # method -> (algo, options on top of its row)
    "openai-es": ("openai-es", {}),
    "adaptive-sigma": ("openai-es", {"sigma_lr": 0.2, "groups": 8}),
    "pgpe": ("pgpe", {}),
    "ars": ("ars", {}),
    "fixed-sigma-x10": ("openai-es", {"sigma_scale": 10.0}),  # σ started wrong: 10x the row's
    "adaptive-sigma-x10": ("openai-es", {"sigma_lr": 0.2, "groups": 8, "sigma_scale": 10.0}),
    "fixed-sigma-8-groups": ("openai-es", {"groups": 8}),  # a control, not run by default: adaptive-sigma's noise, σ fixed
}
# digits.py's settings, the task's row (no env, so no preset): evaluated every generation (360 test images)
DIGITS = {"popsize": 1024, "sigma": 0.05, "lr": 0.03, "eval_every": 1, "generations": 10**6}
THRESHOLD = {"pendulum": -200.0, "halfcheetah": 1500.0, "digits": 95.0}
UNIT = {"pendulum": "return", "halfcheetah": "return", "digits": "test accuracy %"}


@dataclass
class Args:
    tasks: list[Task] = field(default_factory=lambda: ["pendulum", "halfcheetah", "digits"])
    """Tasks to run, in this order."""
    methods: list[Method] = field(
        default_factory=lambda: [
            *("openai-es", "adaptive-sigma", "pgpe", "ars", "fixed-sigma-x10", "adaptive-sigma-x10"),
            *("evotorch-pgpe", "evotorch-snes"),
        ]
    )
    """Methods to run on every task (flipes' four, σ started 10x too large fixed and adapted, then EvoTorch's two)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds of every (task, method)."""
    pendulum_seconds: float = 30.0
    """Training-time budget of one Pendulum run."""
    halfcheetah_seconds: float = 60.0
    """Training-time budget of one HalfCheetah run."""
    digits_seconds: float = 25.0
    """Training-time budget of one digits run."""
    halfcheetah_env: str = "HalfCheetah-v5"
    """flipes' HalfCheetah env id (EnvPool's engine when installed; envpool:/gymnasium: pick one)."""
    evotorch: bool = True
    """Run the EvoTorch methods (skipped with a note when --evotorch-python has no EvoTorch)."""
    evotorch_python: str = ".venv-bench/bin/python"
    """Python with EvoTorch 0.6.1 and flipes installed (make bench-solve builds it), relative to the repository."""
    evotorch_actors: int | Literal["max"] = "max"
    """Ray actors of EvoTorch's RL problems (max: one per core, as its examples)."""
    evotorch_eval_every: list[float] = field(default_factory=lambda: [2.0, 5.0, 0.0])
    """Seconds of EvoTorch's clock between center evaluations, per task: pendulum, halfcheetah, digits (0: every generation)."""
    quick: bool = False
    """Smoke test: one seed, budgets under a second, small populations, HalfCheetah's episodes cut at 100 steps, no
    curves.png per run; EvoTorch on digits only (no ray)."""
    out: str = "runs/bench_algos"
    """Directory the run directories, EvoTorch logs and partial results go under."""
    json: str = ""
    """Write the results here too."""
    markdown: str = ""
    """Write the tables here too."""


# --------------------------------------------------------------------------------------------- flipes


class TrainClock(flipes.Callback):
    """Stops a run once its training time (wall time less the center evaluations) reaches ``budget``,
    and keeps every evaluation as ``[train s, value, env steps, generation]``."""

    def __init__(self, budget: float) -> None:
        self.budget, self.eval_s, self.train_s = budget, 0.0, 0.0
        self.evals: list[list[float]] = []

    def on_generation(self, state: Any, row: dict[str, Any]) -> bool:
        self.eval_s += row.get("eval_seconds", 0.0)
        self.train_s = row["seconds"] - self.eval_s
        if "eval_return" in row:
            self.evals.append([self.train_s, row["eval_return"], row["timesteps"], row["generation"] + 1])
        return self.train_s >= self.budget


def flipes_config(task: str, method: str, seed: int, out: Path, quick: bool, args: Args) -> flipes.TrainConfig:
    """The task's row < the algorithm's row < the method's options, as ``flipes train`` builds it."""
    algo, extra = FLIPES[method]
    extra = dict(extra)
    scale = extra.pop("sigma_scale", 1.0)
    config = _flipes_config(task, algo, extra, seed, out, quick, args)
    return config.replace(sigma=config.sigma * scale) if scale != 1.0 else config


def _flipes_config(
    task: str, algo: str, extra: dict[str, Any], seed: int, out: Path, quick: bool, args: Args
) -> flipes.TrainConfig:
    common = {"seed": seed, "out": str(out), "target": None, "tensorboard": False, "progress": False, "overwrite": True}
    if quick:  # curves.png of a run of a generation or two: ~0.4 s of CPU each, half the smoke test's 18 runs
        common["plot"] = False
    if task == "digits":  # no env row: digits.py's settings, then the algorithm's row over them
        base = {"env": "none", "model": "digits:make_model", "fitness": "digits:fitness", **DIGITS}
        options = {**base, **algo_preset(algo), **extra, **common}
        if quick:
            options["popsize"] = 64
        return flipes.TrainConfig.for_env(algo=algo, **options)
    env = "flipes/Pendulum-v1" if task == "pendulum" else args.halfcheetah_env
    small = {"popsize": 16, "eval_episodes": 2} if quick else {}
    if quick and task == "halfcheetah":  # 16 uncut 1,000-step episodes: a second a generation, and as long to evaluate
        small["max_episode_steps"] = 100
    return flipes.TrainConfig.for_env(env, algo=algo, **extra, **common, **small)


def final_value(task: str, config: flipes.TrainConfig, model: torch.nn.Module, generation: int) -> float:
    """The center's value after the last generation, measured as the run's own evaluations measure it."""
    if task == "digits":
        import digits

        return digits.evaluate(model)
    env = make_vector_env(config.env, config.eval_episodes, note=None, **config.env_kwargs)
    try:
        with torch.no_grad():
            return run_episodes(env, model, episode_seed(config.seed, generation, "bench_algos/final")).returns.mean().item()
    finally:
        env.close()


def run_flipes(task: str, method: str, seed: int, budget: float, args: Args) -> dict[str, Any]:
    out = Path(args.out) / f"{task}-{method}-s{seed}"
    config = flipes_config(task, method, seed, out, args.quick, args)
    config = config.replace(max_seconds=3 * budget + 60)  # a safety net: the callback stops the run
    clock = TrainClock(budget)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    result = flipes.train(config, callbacks=[clock])
    wall = time.perf_counter() - t0
    if result.reason == "interrupted":
        raise KeyboardInterrupt
    rows = result.metrics
    evals = clock.evals
    if not evals or evals[-1][3] != rows[-1]["generation"] + 1:  # the last generation had no evaluation
        value = final_value(task, config, result.model, rows[-1]["generation"])
        evals.append([clock.train_s, value, rows[-1]["timesteps"], rows[-1]["generation"] + 1])
    return {
        "task": task,
        "method": method,
        "seed": seed,
        "budget_s": budget,
        "train_s": clock.train_s,
        "eval_s": clock.eval_s,
        "wall_s": wall,
        "generations": rows[-1]["generation"] + 1,
        "env_steps": rows[-1]["timesteps"],
        "sigma_start": rows[0]["sigma"],
        "sigma_end": rows[-1]["sigma"],
        "sigma_layers_end": result.es.sigmas(),  # per Flipout layer (then dense parameter)
        "evals": evals,
        "settings": {k: v for k, v in dataclasses.asdict(result.config).items() if k in SHOWN},
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


SHOWN = ("env", "algo", "popsize", "sigma", "lr", "groups", "sigma_lr", "ars_top", "hidden", "episodes",
         "eval_every", "eval_episodes", "mirrored", "threads")  # fmt: skip


# ------------------------------------------------------------------------------------------- EvoTorch


def evotorch_settings(task: str, algo: str, quick: bool) -> dict[str, Any]:
    """EvoTorch's problem and searcher settings for a task, from its own examples (the sources are named).

    - pendulum, PGPE: its CartPole example (examples/notebooks/Functional_API/problem.ipynb, as in
      bench_solve.py): policy Linear(obs, 16) >> Tanh() >> Linear(16, act), observation normalization,
      popsize 100, ClipUp max speed 0.15, center lr 0.75 × max speed, momentum 0.9, radius 15 × max
      speed, σ lr 0.1 with at most 20% change, centered ranks, symmetric sampling.
    - halfcheetah, PGPE: examples/scripts/rl.py's ``walker`` config (as in bench_mujoco.py): linear policy,
      observation normalization, popsize 100 (grown until 75,000 interactions, at most 800), ClipUp max
      speed 0.015, the same ratios as above.
    - digits, PGPE: examples/scripts/rl.py's default config (popsize 1,000, ClipUp max speed 0.15, the same
      ratios), EvoTorch having no supervised PGPE example; minibatches as the SNES example below.
    - digits, SNES: examples/notebooks/Training_MNIST30K.ipynb: SupervisedNE with CrossEntropyLoss, minibatch
      256 shared by the population (common_minibatch), SNES with stdev_init 1, popsize 1,000.
    - pendulum and halfcheetah, SNES: no example; the PGPE example's problem, popsize and initial radius,
      SNES's own defaults for everything else.
    """
    if task == "digits":
        problem = {"minibatch_size": 256}
        if algo == "snes":
            searcher = {"stdev_init": 1.0, "popsize": 1000}
        else:
            searcher = pgpe_settings(0.15, popsize=1000)
        if quick:
            searcher["popsize"] = 64
        return {"problem": problem, "searcher": searcher}
    if task == "pendulum":
        net = "Linear(obs_length, 16) >> Tanh() >> Linear(16, act_length)"
        pgpe = pgpe_settings(0.15, popsize=100, symmetric=True)
    else:
        net = "Linear(obs_length, act_length)"
        pgpe = pgpe_settings(0.015, popsize=100, popsize_max=800, num_interactions=75_000)
    if quick:
        pgpe.update(popsize=16, popsize_max=None, num_interactions=None)
    problem = {
        "env": "Pendulum-v1" if task == "pendulum" else "HalfCheetah-v5",
        "network": net,
        "observation_normalization": True,
    }
    if algo == "snes":
        keep = ("popsize", "popsize_max", "num_interactions", "radius_init")
        return {"problem": problem, "searcher": {k: v for k, v in pgpe.items() if k in keep}}
    return {"problem": problem, "searcher": pgpe}


def pgpe_settings(max_speed: float, **extra: Any) -> dict[str, Any]:
    """PGPE + ClipUp as EvoTorch's examples set it from one number, the maximum speed."""
    return {
        "center_learning_rate": 0.75 * max_speed,
        "stdev_learning_rate": 0.1,
        "stdev_max_change": 0.2,
        "radius_init": 15 * max_speed,
        "optimizer": "clipup",
        "optimizer_config": {"max_speed": max_speed, "momentum": 0.9},
        "ranking_method": "centered",
        **extra,
    }


def evotorch_worker(spec_file: str, result_file: str) -> None:
    """One EvoTorch run, in ``--evotorch-python`` (started by :func:`run_evotorch`): reads its spec,
    writes its result."""
    spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    Path(result_file).write_text(json.dumps(_evotorch_run(**spec)), encoding="utf-8")


def _evotorch_run(
    task: str, algo: str, seed: int, budget: float, eval_every: float, eval_env: str, eval_episodes: int,
    actors: int, data: str, settings: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    import evotorch
    from evotorch.algorithms import PGPE, SNES
    from torch import nn

    torch.manual_seed(seed)
    torch.set_num_threads(1)  # the main process: sampling and the update; rollouts run in the actors
    if task == "digits":
        from evotorch.neuroevolution import SupervisedNE
        from torch.utils.data import TensorDataset

        x, y, x_test, y_test = torch.load(data)
        problem = SupervisedNE(
            TensorDataset(x, y),
            lambda: nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)),  # digits.py's MLP, plain
            nn.CrossEntropyLoss(),
            common_minibatch=True,
            **settings["problem"],
        )

        def evaluate(center: torch.Tensor, generation: int) -> float:
            with torch.no_grad():
                return (problem.parameterize_net(center)(x_test).argmax(1) == y_test).float().mean().item() * 100

        def steps(searcher: Any, generation: int) -> int:
            return 0
    else:
        import ray
        from evotorch.neuroevolution import VecGymNE

        ray.init(include_dashboard=False, log_to_driver=False)
        problem = VecGymNE(num_actors=actors, **settings["problem"])
        problem.all_remote_problems().get_observation_stats()  # starts the actors before the clock
        env = make_vector_env(eval_env, eval_episodes, note=None)

        def evaluate(center: torch.Tensor, generation: int) -> float:
            policy = problem.to_policy(center).float()  # its normalizer keeps float64 statistics
            with torch.no_grad():
                act = lambda obs: policy(obs.float())  # noqa: E731
                return run_episodes(env, act, episode_seed(seed, generation, "evotorch/eval")).returns.mean().item()

        def steps(searcher: Any, generation: int) -> int:
            return int(searcher.status["total_interaction_count"])

    searcher = (SNES if algo == "snes" else PGPE)(problem, **settings["searcher"])
    evals: list[list[float]] = []
    clock, since, generation = 0.0, 0.0, 0
    while clock < budget:
        t0 = time.perf_counter()
        searcher.step()
        step_s = time.perf_counter() - t0
        clock, since, generation = clock + step_s, since + step_s, generation + 1
        if since >= eval_every or clock >= budget:
            evals.append([clock, evaluate(searcher.status["center"], generation), steps(searcher, generation), generation])
            since = 0.0
            print(f"  evotorch {algo} {task} seed {seed} gen {generation} {clock:.1f}s center {evals[-1][1]:.1f}", flush=True)
    if task != "digits":
        problem.kill_actors()
        env.close()
    return {"evals": evals, "generations": generation, "train_s": clock, "evotorch": evotorch.__version__}


def evotorch_python(args: Args) -> str | None:
    """The Python to run EvoTorch with, or None (with the reason printed) where there is none."""
    python = Path(args.evotorch_python)
    python = python if python.is_absolute() else ROOT / python
    if not python.exists():
        print(f"note: {args.evotorch_python} does not exist: no EvoTorch rows (`make bench-solve` builds .venv-bench)")
        return None
    probe = subprocess.run([str(python), "-c", "import evotorch, flipes"], capture_output=True, text=True)
    if probe.returncode:
        print(f"note: {args.evotorch_python} cannot import evotorch and flipes: no EvoTorch rows")
        return None
    return str(python)


def run_evotorch(python: str, task: str, method: str, seed: int, budget: float, args: Args) -> dict[str, Any]:
    algo = method.removeprefix("evotorch-")
    out = Path(args.out) / f"{task}-{method}-s{seed}"
    out.mkdir(parents=True, exist_ok=True)
    eval_every = dict(zip(("pendulum", "halfcheetah", "digits"), args.evotorch_eval_every, strict=True))[task]
    data = ""
    if task == "digits":  # the exact split flipes trains on (.venv-bench has no scikit-learn)
        import digits

        data = str((out / "digits.pt").resolve())
        torch.save(digits.data(), data)
    # RL centers are evaluated by flipes' rollout code on the env flipes evaluates on, as many episodes
    eval_env = {"pendulum": "flipes/Pendulum-v1", "halfcheetah": args.halfcheetah_env}.get(task, "")
    eval_episodes = {"pendulum": 100, "halfcheetah": 5}.get(task, 0)
    actors = (os.cpu_count() or 1) if args.evotorch_actors == "max" else args.evotorch_actors
    settings = evotorch_settings(task, algo, args.quick)
    spec = {"task": task, "algo": algo, "seed": seed, "budget": budget, "eval_every": eval_every, "eval_env": eval_env,
            "eval_episodes": 2 if args.quick and eval_episodes else eval_episodes, "actors": actors, "data": data,
            "settings": settings}  # fmt: skip
    (out / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    code = "import sys, bench_algos; bench_algos.evotorch_worker(sys.argv[1], sys.argv[2])"
    cmd = [python, "-c", code, str(out / "spec.json"), str(out / "result.json")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "scripts"), str(ROOT)])}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(out / "log.txt", "w", encoding="utf-8") as log:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=3 * budget + 300)
    wall = time.perf_counter() - t0
    if done.returncode:
        tail = (out / "log.txt").read_text(encoding="utf-8").splitlines()[-15:]
        raise RuntimeError(f"EvoTorch run {task} {method} seed {seed} failed ({done.returncode}):\n" + "\n".join(tail))
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    evals = result["evals"]
    return {
        "task": task,
        "method": method,
        "seed": seed,
        "budget_s": budget,
        "train_s": result["train_s"],
        "eval_s": None,
        "wall_s": wall,
        "generations": result["generations"],
        "env_steps": evals[-1][2] if evals else 0,
        "sigma_start": None,
        "sigma_end": None,
        "sigma_layers_end": None,
        "evals": evals,
        "settings": {**settings, "actors": actors if task != "digits" else 0, "evotorch": result["evotorch"]},
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


# ------------------------------------------------------------------------------------------- reporting


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    """A run's time to threshold (training s, None if never), final and best value."""
    threshold = THRESHOLD[r["task"]]
    hit = next((e for e in r["evals"] if e[1] >= threshold), None)
    return {
        "to_threshold_s": hit[0] if hit else None,
        "to_threshold_generation": int(hit[3]) if hit else None,  # the same for a seed on any machine
        "final": r["evals"][-1][1] if r["evals"] else math.nan,
        "best": max((e[1] for e in r["evals"]), default=math.nan),
    }


def fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def tables(results: list[dict[str, Any]], budgets: dict[str, float]) -> str:
    digits_of = {"pendulum": 0, "halfcheetah": 0, "digits": 1}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["task"], r["method"]), []).append(r)
    summary = [
        "| task (threshold, budget) | method | reached | median s to threshold | median final | median best "
        "| per seed: s to threshold | per seed: final | per seed: best |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (task, method), rs in groups.items():
        s = [summarize(r) for r in rs]
        d = digits_of[task]
        times = [x["to_threshold_s"] for x in s]
        reached = [t for t in times if t is not None]
        missed = len(times) - len(reached)
        median_t = fmt(statistics.median(reached), 1) if not missed else "not reached" if not reached else (
            f"{missed} of {len(times)} seeds not reached")  # fmt: skip
        head = f"{task} (≥ {THRESHOLD[task]:g}, {budgets[task]:g} s)"
        summary.append(
            f"| {head} | {method} | {len(reached)}/{len(rs)} | {median_t} "
            f"| {statistics.median(x['final'] for x in s):,.{d}f} | {statistics.median(x['best'] for x in s):,.{d}f} "
            f"| {' / '.join(fmt(t, 1) for t in times)} | {' / '.join(fmt(x['final'], d) for x in s)} "
            f"| {' / '.join(fmt(x['best'], d) for x in s)} |"
        )
    runs = [
        "| task | method | seed | train s | generations | env steps | σ start → end | s (generation) to threshold | final | best "
        "| wall s | load before/after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s, d = summarize(r), digits_of[r["task"]]
        sigma = "-" if r["sigma_start"] is None else f"{r['sigma_start']:.3g} → {r['sigma_end']:.3g}"
        hit = "-" if s["to_threshold_s"] is None else f"{s['to_threshold_s']:.1f} ({s['to_threshold_generation']})"
        runs.append(
            f"| {r['task']} | {r['method']} | {r['seed']} | {r['train_s']:.1f} | {r['generations']} | {r['env_steps']:,} "
            f"| {sigma} | {hit} | {s['final']:,.{d}f} | {s['best']:,.{d}f} | {r['wall_s']:.0f} "
            f"| {r['load_before']:.1f} / {r['load_after']:.1f} |"
        )
    return "\n".join(summary) + "\n\n" + "\n".join(runs)


def git_commit() -> str | None:
    """The checkout's commit (the tree may hold uncommitted changes too), or None outside git."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() or None


def main(args: Args) -> list[dict[str, Any]]:
    if not args.tasks or not args.methods or not args.seeds:
        raise UsageError(
            "--tasks" if not args.tasks else "--methods" if not args.methods else "--seeds", "is empty", "give at least one"
        )
    if len(args.evotorch_eval_every) != 3 or any(not math.isfinite(s) or s < 0 for s in args.evotorch_eval_every):
        raise UsageError(
            "--evotorch-eval-every", f"got {args.evotorch_eval_every}", "give 3 seconds >= 0: pendulum, halfcheetah, digits"
        )
    if isinstance(args.evotorch_actors, int) and args.evotorch_actors < 1:
        raise UsageError("--evotorch-actors", f"must be at least 1, got {args.evotorch_actors}", "or max: one per core")
    budgets = {"pendulum": args.pendulum_seconds, "halfcheetah": args.halfcheetah_seconds, "digits": args.digits_seconds}
    if args.quick:
        args = dataclasses.replace(args, seeds=args.seeds[:1])
        budgets = {"pendulum": 0.2, "halfcheetah": 0.1, "digits": 0.2}  # halfcheetah: a generation or two
    for name, seconds in budgets.items():
        if not (math.isfinite(seconds) and seconds > 0):
            raise UsageError(f"--{name}-seconds", f"must be a positive number, got {seconds}")
    methods = list(args.methods)
    python = None
    if any(m.startswith("evotorch-") for m in methods):
        python = evotorch_python(args) if args.evotorch else None
        if python is None:
            methods = [m for m in methods if not m.startswith("evotorch-")]
    torch.set_num_threads(1)
    if "digits" in args.tasks:
        import digits

        digits.data()  # scikit-learn's import and the read, once, before any clock (the fitness caches it)

    results: list[dict[str, Any]] = []
    load_start, t_start = os.getloadavg(), time.perf_counter()
    partial = Path(args.out) / "partial.json"
    for task in args.tasks:
        for seed in args.seeds:  # seeds outside methods: a change in the machine's load hits every method alike
            for method in methods:
                if args.quick and method.startswith("evotorch-") and task != "digits":
                    continue  # its RL runs start ray and actors: ~15 s each, too long for a smoke test
                print(f"=== {task} {method} seed {seed} ({budgets[task]:g} s)", flush=True)
                if method.startswith("evotorch-"):
                    assert python is not None
                    row = run_evotorch(python, task, method, seed, budgets[task], args)
                else:
                    row = run_flipes(task, method, seed, budgets[task], args)
                s = summarize(row)
                print(f"    {row['generations']} generations, final {s['final']:.2f}, best {s['best']:.2f}, "
                      f"threshold at {fmt(s['to_threshold_s'], 1)} s, load {row['load_before']:.1f}", flush=True)  # fmt: skip
                results.append(row)
                partial.parent.mkdir(parents=True, exist_ok=True)
                partial.write_text(json.dumps(results), encoding="utf-8")  # a crash late in a long run keeps the finished runs
    load_end, total = os.getloadavg(), time.perf_counter() - t_start

    text = tables(results, budgets)
    meta = {
        "command": " ".join(["python", *sys.argv]),
        "args": dataclasses.asdict(args),
        "budgets_s": budgets,
        "thresholds": THRESHOLD,
        "values": UNIT,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "evotorch": next((r["settings"]["evotorch"] for r in results if "evotorch" in r["settings"]), None),
        "cpu_count": os.cpu_count(),
        "machine": cpu_name(),  # the CPU model, not x86_64
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": git_commit(),
        "load_before": load_start,
        "load_after": load_end,
        "wall_s": total,
    }
    footer = (
        f"\n\n{time.strftime('%Y-%m-%d')}, {meta['machine']}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"EvoTorch {meta['evotorch'] or '-'}; load average (1, 5, 15 min) before {load_start}, after {load_end}; "
        f"whole run {total / 60:.1f} min. Budgets (training s per run): "
        + ", ".join(f"{k} {v:g}" for k, v in budgets.items() if k in args.tasks)
    )
    print()
    print(text + footer)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1), encoding="utf-8")
        print(f"wrote {args.json}")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(f"`{meta['command']}`\n\n" + text + footer + "\n", encoding="utf-8")
        print(f"wrote {args.markdown}")
    return results


if __name__ == "__main__":
    run(main, Args, description=__doc__)
