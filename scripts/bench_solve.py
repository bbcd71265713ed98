"""Time to solve: wall seconds and env steps until the center policy is "solved", flipes vs EvoTorch and evosax.

    python scripts/bench_solve.py --json scripts/results/bench_solve.json          # the whole benchmark
    python scripts/bench_solve.py --quick                                 # smoke test, a few seconds (~15 more with evosax)
    python scripts/bench_solve.py --envs flipes/Pendulum-v1 --seeds 0 1 2 3 4 --no-evotorch
    python scripts/bench_solve.py --envs flipes/CartPole-v1 --evosax-python .venv-jax/bin/python

flipes: ``flipes.train(TrainConfig.for_env(env, ...))`` runs in this process with the per-env
defaults of ``flipes.rl.presets``; it stops once the center (mean) policy's mean return over
``eval_episodes`` = 100 episodes, evaluated every ``eval_every`` generations, reaches the env's
"solved" return (``flipes.config.default_target``: gymnasium's registered reward_threshold, or the
preset's target). Its time therefore includes those evaluations (it must, to detect solving); the
column ``eval s`` says how much of it they took.

EvoTorch (only if it is installed: ``make bench-solve`` builds ``.venv-bench`` with it): PGPE +
ClipUp on ``VecGymNE("CartPole-v1")`` with the settings of EvoTorch's own CartPole example (see
``run_evotorch``). After every generation its center solution is evaluated on 10 episodes
(EvoTorch's usual check); whenever that passes, also on 100 episodes (flipes' criterion). Both
times include all evaluations done until then.

evosax (only if a Python with JAX, evosax and gymnax is found: this one, else ``.venv-jax``, which ``make
bench-solve`` builds): evosax's OpenAI-ES with an MLP on gymnax's jitted, vmapped CartPole-v1, with the settings of
evosax's own OpenAI-ES CartPole example (see scripts/bench_solve_evosax.py). It runs in a subprocess of that
Python, one per seed, so that flipes never imports JAX. Its center is tested as EvoTorch's (10 episodes every
generation, 100 when they pass). Its ``wall s`` starts just before the first generation and excludes JIT
compilation, which is compiled ahead of time before it and shown as ``JIT s``; ``wall+JIT s`` is the total with it
(for flipes and EvoTorch, which compile nothing, the same as ``wall s``). JAX's import and start-up are not counted.

Columns: ``wall s`` is the wall time of the training loop until solving was detected (flipes: the
``seconds`` of the solving generation's metrics row, which include that generation's evaluation;
EvoTorch: from just before the first ``searcher.step()``, its ray actors started before it, as flipes builds its
envs before its clock; ``ray.init`` is counted in neither); ``setup s`` is the rest of the call (building envs,
policy and problem, EvoTorch's actors; flipes' final checkpoint and curves.png). ``env steps`` are training
interactions; the evaluation episodes' steps are counted apart (``eval_steps`` in the JSON). Threads: flipes
``--threads`` (1) torch thread; EvoTorch ``--evotorch-actors`` ray actors (max: one per CPU); JAX its default (XLA's
CPU client, every core).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
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
from flipes.config import check_threads, default_target
from flipes.errors import UsageError
from flipes.rl import episode_seed, make_vector_env, run_episodes
from flipes.train_state import TrainState

# Per-env settings of flipes: its per-env defaults (flipes.rl.presets), found on this project's
# 2-core dev box with seeds 0-4; `generations` (with --max-seconds) is the budget, not a tuned value.
# CartPole (5-19 generations), Acrobot (3-9) and MountainCarContinuous (1-5) solve with them. Pendulum
# sits on a plateau near -800 (the pendulum is never swung up) until a swing-up is found; a larger lr
# leaves it sooner: generations to solve with lr 0.05: 93-1315 (median 549), 0.1: 39-1149 (51), 0.2:
# 69-611 (143); popsize 128, sigma 0.2, 4 episodes per member or hidden 64 64 were no better.
CLASSIC = ("CartPole-v1", "Acrobot-v1", "Pendulum-v1", "MountainCarContinuous-v0")


def solved_return(env_id: str) -> float:
    """The return at which a run on ``env_id`` counts as solved (what ``--target auto`` stops at)."""
    target = default_target(env_id)
    if target is None:
        raise UsageError(
            "--envs",
            f"{env_id} has no return that counts as solved (no preset target, no registered reward_threshold)",
            "pick an env that has one (is the id right?)",
        )
    return target


@dataclass
class Args:
    envs: list[str] = field(default_factory=lambda: [f"flipes/{name}" for name in CLASSIC])
    """Env ids to solve, each with flipes' per-env defaults."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds of every env; EvoTorch runs beside flipes on CartPole."""
    max_seconds: float = 600.0
    """Wall budget of one run."""
    evotorch: bool = True
    """Run EvoTorch's PGPE on gymnasium's CartPole-v1 beside flipes (if installed)."""
    evotorch_generations: int = 300
    """Most generations of one EvoTorch run."""
    evotorch_actors: int | Literal["max"] = "max"
    """num_actors of VecGymNE, as in EvoTorch's example (max: one per CPU)."""
    evosax: bool = True
    """Run evosax's OpenAI-ES on gymnax's CartPole-v1 beside flipes (if a Python with it is found)."""
    evosax_python: str = ""
    """Python with jax, evosax and gymnax (empty: this one if it has them, else .venv-jax/bin/python)."""
    evosax_generations: int = 300
    """Most generations of one evosax run."""
    evosax_episode_length: int = 500
    """Most steps of evosax's training episodes (CartPole-v1's 500; its example's 200 can stall below 475)."""
    threads: int = 1
    """Torch threads of flipes (its --threads; 0: torch's default) and of the evaluations here."""
    gym_check: bool = True
    """Also evaluate flipes' final center policy on gymnasium's own env (not timed)."""
    quick: bool = False
    """Smoke test: flipes on the first env and seed, a tiny budget, no EvoTorch; evosax too if found."""
    out: str = "runs/bench_solve"
    """Directory the flipes run directories go under."""
    json: str = ""
    """Write the results here too."""


def resolve_env(env_id: str) -> str:
    """The id to run: a flipes/ id whose envs/ implementation is not there yet falls back to gymnasium's own."""
    if not env_id.startswith("flipes/"):
        return env_id
    try:
        make_vector_env(env_id, 1, note=None).close()
        return env_id
    except (ValueError, ImportError) as e:
        fallback = env_id.split("/", 1)[1]
        print(f"note: {env_id} is not available ({str(e).splitlines()[0][:120]}); using gymnasium's {fallback} (numpy adapter)")
        return fallback


class StartClock(flipes.Callback):
    """The wall time at which training starts: envs, model and evaluator built (a resumed run restored)."""

    def __init__(self) -> None:
        self.started: float | None = None

    def on_train_start(self, state: TrainState) -> None:
        self.started = time.perf_counter()


def run_flipes(env_id: str, seed: int, overrides: dict[str, Any], args: Args) -> dict[str, Any]:
    """One ``flipes.train`` run with the env's defaults; its metrics rows give the time, steps and
    evaluations at solving."""
    out = Path(args.out) / f"{env_id.replace('/', '_')}-seed{seed}"
    settings = {
        "seed": seed,
        "out": str(out),
        "max_seconds": args.max_seconds,
        "threads": args.threads,
        "tensorboard": False,
        "overwrite": True,
    }  # a benchmark reruns into its own directories
    config = flipes.TrainConfig.for_env(env_id, **{**settings, **overrides})
    clock = StartClock()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    result = flipes.train(config, callbacks=[clock])
    total = time.perf_counter() - t0
    if result.reason == "interrupted":  # Ctrl-C / SIGTERM: flipes.train checkpointed and returned; stop here too
        raise KeyboardInterrupt
    rows = result.metrics
    evals = [r for r in rows if "eval_return" in r]
    last = evals[-1] if evals else rows[-1]
    solved = bool(evals) and last["eval_return"] >= solved_return(env_id)
    wall = rows[-1]["seconds"]  # the last (solving) generation's, its evaluation included
    return {
        "env": env_id,
        "method": "flipes",
        "criterion": f"{config.eval_episodes} ep",
        "seed": seed,
        "out": str(out),
        "solved": solved,
        "reason": result.reason,
        "wall_s": wall,
        "setup_s": total - wall,
        "build_s": (clock.started or t0) - t0,
        "eval_s": sum(r.get("eval_seconds", 0.0) for r in rows),
        "eval_calls": sum("eval_seconds" in r for r in rows),
        "eval_steps": sum(r.get("eval_steps", 0) for r in rows),
        "env_steps": rows[-1]["timesteps"],
        "generations": rows[-1]["generation"] + 1,
        "eval_mean": last.get("eval_return", float("nan")),
        "eval_std": last.get("eval_std", float("nan")),
        "best_eval": max((r["eval_return"] for r in evals), default=float("nan")),
        "settings": dataclasses.asdict(result.config),
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def gym_check(run_dir: Path, env_id: str, seed: int, episodes: int = 100) -> tuple[float, float] | None:
    """Mean ± std return of a flipes run's final center policy on gymnasium's own implementation of
    the env (numpy, through the adapter): a check that solving the flipes/ copy is solving the original."""
    env = make_vector_env("gymnasium:" + env_id.removeprefix("flipes/"), episodes, note=None)
    try:
        policy = flipes.load_policy(run_dir, "latest", "cpu", env=env)
        returns = run_episodes(env, policy, episode_seed(seed, 0, "bench_solve/gym_check")).returns
    except Exception as e:  # an untimed extra: report it and keep the benchmark's results
        print(f"gym check of {run_dir} failed: {type(e).__name__}: {e}")
        return None
    finally:
        env.close()
    return returns.mean().item(), returns.std().item()


def evaluate_center(problem: Any, center: torch.Tensor, episodes: int, seed: int) -> Any:
    """Mean return of EvoTorch's center solution (with its observation normalization) on gymnasium's
    CartPole-v1, through the same rollout code that evaluates flipes' center policy."""
    policy = problem.to_policy(center)  # wraps the net with EvoTorch's ObsNormWrapperModule
    env = make_vector_env("gymnasium:CartPole-v1", episodes)

    def act(obs: torch.Tensor) -> torch.Tensor:
        return policy(obs.float()).argmax(-1)

    episodes_run = run_episodes(env, act, seed)
    env.close()
    return episodes_run


def run_evotorch(seed: int, args: Args) -> list[dict[str, Any]]:
    """EvoTorch's PGPE + ClipUp with VecGymNE on gymnasium's CartPole-v1; one row per criterion (10 and 100 episodes)."""
    from evotorch.algorithms import PGPE
    from evotorch.neuroevolution import VecGymNE

    torch.manual_seed(seed)
    load_before = os.getloadavg()
    t_setup = time.perf_counter()
    # Settings from EvoTorch's own CartPole-v1 example with PGPE + ClipUp:
    # nnaisense/evotorch examples/notebooks/Functional_API/problem.ipynb
    # (https://docs.evotorch.ai/latest/examples/notebooks/problem): network
    # "Linear(obs_length, 16) >> Tanh() >> Linear(16, act_length)", observation_normalization=True,
    # num_actors="max"; popsize 100, max_speed 0.15, center_learning_rate = 0.75 * max_speed,
    # radius_init = 15 * max_speed, stdev_learning_rate 0.1, stdev_max_change 0.2, centered ranking,
    # optimizer "clipup", symmetric sampling, center_init zeros. That notebook uses GymNE and the
    # functional pgpe; here the same settings go to the PGPE class with VecGymNE (one vector env per
    # actor), as in examples/scripts/rl.py.
    # EvoTorch 0.6.1's VecGymNE compares num_actors with 1 before resolving strings, so "max" raises a
    # TypeError there: pass the number it stands for (the CPUs ray sees) instead.
    actors = (os.cpu_count() or 1) if args.evotorch_actors == "max" else args.evotorch_actors
    problem = VecGymNE(
        "CartPole-v1",
        "Linear(obs_length, 16) >> Tanh() >> Linear(16, act_length)",
        observation_normalization=True,
        num_actors=actors,
    )
    max_speed = 0.15
    searcher = PGPE(
        problem,
        popsize=100,
        center_learning_rate=0.75 * max_speed,
        stdev_learning_rate=0.1,
        stdev_max_change=0.2,
        radius_init=15 * max_speed,
        ranking_method="centered",
        optimizer="clipup",
        optimizer_config={"max_speed": max_speed},
        symmetric=True,
        center_init=problem.make_zeros(num_solutions=1)[0],
    )
    # VecGymNE starts its ray actors (a process each, importing torch and EvoTorch: seconds) on first use; start them
    # here, as bench_algos does, so that the clock holds EvoTorch's training as flipes' holds its own, env building
    # left out of both
    problem.all_remote_problems().get_observation_stats()
    setup = time.perf_counter() - t_setup

    found: dict[int, dict[str, Any]] = {}  # episodes -> the row at which that criterion was first met
    eval_s, eval_steps = 0.0, 0
    last: tuple[float, float] = (float("nan"), float("nan"))  # the latest evaluation's mean and std
    gen = 0

    def snapshot(wall: float) -> dict[str, Any]:  # the row reported for a criterion, as of now
        return {
            "wall_s": wall,
            "eval_s": eval_s,
            "eval_steps": eval_steps,
            "env_steps": int(searcher.status["total_interaction_count"]),
            "generations": gen + 1,
            "eval_mean": last[0],
            "eval_std": last[1],
        }

    start = time.perf_counter()
    for gen in range(args.evotorch_generations):
        searcher.step()
        center = searcher.status["center"]
        # 10 episodes every generation; whenever they pass, 100 episodes too
        for episodes in (10, 100):
            t0 = time.perf_counter()
            ep = evaluate_center(problem, center, episodes, episode_seed(seed, gen, f"evotorch/eval{episodes}"))
            eval_s += time.perf_counter() - t0
            eval_steps += ep.steps
            last = (ep.returns.mean().item(), ep.returns.std().item())
            if last[0] < solved_return("CartPole-v1"):
                break
            found.setdefault(episodes, snapshot(time.perf_counter() - start))
        if 100 in found or time.perf_counter() - start > args.max_seconds:
            break
    wall = time.perf_counter() - start
    problem.kill_actors()

    rows = []
    for episodes in (10, 100):
        row = found.get(episodes)
        if row is None:  # not solved by this criterion within the budget
            row = snapshot(wall)
        rows.append(
            {
                "env": "CartPole-v1",
                "method": "evotorch PGPE",
                "criterion": f"{episodes} ep",
                "seed": seed,
                "solved": episodes in found,
                "setup_s": setup,
                **row,
                "load_before": load_before,
                "load_after": os.getloadavg(),
            }
        )
    return rows


EVOSAX_SCRIPT = Path(__file__).with_name("bench_solve_evosax.py")
EVOSAX_VENV_PYTHON = Path(__file__).resolve().parents[1] / ".venv-jax" / "bin" / "python"
JAX_MODULES = ("jax", "evosax", "gymnax")


def find_evosax_python(args: Args) -> str | None:
    """The Python that runs the evosax part: --evosax-python, else this one if it has JAX, evosax and gymnax,
    else .venv-jax's (None: none has them)."""
    if not args.evosax_python and all(importlib.util.find_spec(m) is not None for m in JAX_MODULES):
        return sys.executable
    python = args.evosax_python or str(EVOSAX_VENV_PYTHON)
    check = f"import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in {JAX_MODULES!r}))"
    found = Path(python).exists() and subprocess.run([python, "-c", check], capture_output=True).returncode == 0
    if args.evosax_python and not found:
        modules = ", ".join(JAX_MODULES)
        raise UsageError("--evosax-python", f"{python} cannot import {modules}", "`make bench-solve` builds .venv-jax")
    return python if found else None


def run_evosax(seed: int, python: str, args: Args) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """evosax's OpenAI-ES on gymnax's CartPole-v1 in a subprocess of ``python`` (scripts/bench_solve_evosax.py):
    one row per criterion (10 and 100 episodes), and the versions and settings it ran with."""
    settings: dict[str, Any] = {
        "seed": seed,
        "generations": args.evosax_generations,
        "episode_length": args.evosax_episode_length,
        "max_seconds": args.max_seconds,
    }
    if args.quick:  # a tiny population, two generations: the path runs, nothing is solved
        settings.update(population=16, rollouts=2, generations=2, max_seconds=20.0)
    t0 = time.perf_counter()
    # stderr (its progress, or its error) goes straight to ours; the last stdout line is its JSON
    done = subprocess.run([python, str(EVOSAX_SCRIPT), json.dumps(settings)], stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the evosax run of seed {seed} failed (exit status {done.returncode}): see its error above")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    process_s = time.perf_counter() - t0  # the whole subprocess: Python and JAX start-up, setup, JIT, training
    return [{**row, "process_s": process_s} for row in out["rows"]], out["meta"]


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| env | method | criterion | seed | solved | wall s | JIT s | wall+JIT s | eval s | setup s | env steps "
        "| generations | final eval mean±std | gymnasium check |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        check = r.get("gym_check")
        jit = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
        lines.append(
            f"| {r['env']} | {r['method']} | {r['criterion']} | {r['seed']} | {'yes' if r['solved'] else 'no'} "
            f"| {r['wall_s']:.1f} | {jit} | {r.get('wall_jit_s', r['wall_s']):.1f} | {r['eval_s']:.1f} | {r['setup_s']:.1f} "
            f"| {r['env_steps']:,} | {r['generations']} "
            f"| {r['eval_mean']:.1f} ± {r['eval_std']:.1f} | {f'{check[0]:.1f} ± {check[1]:.1f}' if check else '-'} |"
        )
    return "\n".join(lines)


def summary(results: list[dict[str, Any]]) -> list[str]:
    """Median time to solve per (env, method, criterion); the flipes/EvoTorch and flipes/evosax ratios on CartPole."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["env"], r["method"], r["criterion"]), []).append(r)
    # (env name, method, criterion) -> median wall s without and with JIT (inf unless every seed solved)
    lines, medians = [], {}
    for (env, method, criterion), rs in groups.items():
        solved = [r for r in rs if r["solved"]]
        line = f"{env} {method} ({criterion}): solved {len(solved)}/{len(rs)}"
        if solved:
            wall = statistics.median(r["wall_s"] for r in solved)
            wall_jit = statistics.median(r.get("wall_jit_s", r["wall_s"]) for r in solved)
            every = len(solved) == len(rs)
            medians[(env.split("/")[-1], method, criterion)] = (wall, wall_jit) if every else (float("inf"), float("inf"))
            line += (
                f", median {wall:.1f} s (of which evaluation {statistics.median(r['eval_s'] for r in solved):.1f} s"
                + (f"; {wall_jit:.1f} s with JIT compilation" if any("wall_jit_s" in r for r in solved) else "")
                + f"), {statistics.median(r['env_steps'] for r in solved):,.0f} env steps"
            )
        lines.append(line)
    flipes_s = medians.get(("CartPole-v1", "flipes", "100 ep"), (0.0, 0.0))[0]
    for criterion in ("10 ep", "100 ep"):
        evo_s = medians.get(("CartPole-v1", "evotorch PGPE", criterion), (0.0, 0.0))[0]
        if flipes_s and evo_s:
            ratio = flipes_s / evo_s
            verdict = f"; target <= 0.33x {'met' if ratio <= 1 / 3 else 'NOT met'}" if criterion == "10 ep" else ""
            lines.append(
                f"CartPole: flipes (100-episode test) median {flipes_s:.1f} s = {ratio:.2f}x EvoTorch's "
                f"({criterion} test) {evo_s:.1f} s{verdict}"
            )
    for criterion in ("10 ep", "100 ep"):
        evosax_s, evosax_jit_s = medians.get(("CartPole-v1", "evosax OpenAI-ES", criterion), (0.0, 0.0))
        if flipes_s and evosax_s:
            lines.append(
                f"CartPole: flipes (100-episode test) median {flipes_s:.1f} s = {flipes_s / evosax_s:.2f}x evosax's "
                f"({criterion} test) {evosax_s:.1f} s without JIT compilation, {flipes_s / evosax_jit_s:.2f}x its "
                f"{evosax_jit_s:.1f} s with it"
            )
    return lines


def main(args: Args) -> list[dict[str, Any]]:
    envs, seeds, overrides = args.envs, args.seeds, {}
    if not envs or not seeds:
        raise UsageError("--envs" if not envs else "--seeds", "is empty", "give at least one")
    if isinstance(args.evotorch_actors, int) and args.evotorch_actors < 1:
        raise UsageError("--evotorch-actors", f"must be at least 1, got {args.evotorch_actors}", "or max: one per CPU")
    if args.quick:  # one env, one seed, a tiny budget, no EvoTorch
        envs, seeds = envs[:1], seeds[:1]
        overrides = dict(popsize=16, generations=4, eval_every=2, eval_episodes=10, max_seconds=20.0)
    for env_id in envs:
        solved_return(env_id)  # before any run: every env needs a return that counts as solved
    check_threads("--threads", args.threads)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    use_evotorch = args.evotorch and not args.quick
    if use_evotorch and importlib.util.find_spec("evotorch") is None:
        print("EvoTorch is not installed: skipping its rows (`make bench-solve` builds .venv-bench with it)")
        use_evotorch = False
    evosax_python = find_evosax_python(args) if args.evosax else None
    if args.evosax and evosax_python is None:
        print(f"evosax is not found (no {', '.join(JAX_MODULES)} here or in .venv-jax): skipping its rows "
              "(`make bench-solve` builds .venv-jax with it)")  # fmt: skip
    evosax_meta: dict[str, Any] | None = None
    ray_init_s = None
    if use_evotorch:
        import ray

        t0 = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False)  # once per benchmark, outside the timed runs
        ray_init_s = time.perf_counter() - t0

    results: list[dict[str, Any]] = []
    load_start = os.getloadavg()
    for requested in envs:
        env_id = resolve_env(requested)
        name = env_id.split("/")[-1]
        for seed in seeds:
            print(f"=== flipes {env_id} seed {seed}", flush=True)
            row = run_flipes(env_id, seed, overrides, args)
            if args.gym_check and env_id.startswith("flipes/"):
                row["gym_check"] = gym_check(Path(row["out"]), env_id, seed)
            results.append(row)
            if use_evotorch and name == "CartPole-v1":
                print(f"=== EvoTorch PGPE CartPole-v1 seed {seed}", flush=True)
                results.extend(run_evotorch(seed, args))
            if evosax_python and name == "CartPole-v1":
                print(f"=== evosax OpenAI-ES gymnax/CartPole-v1 seed {seed} ({evosax_python})", flush=True)
                rows, evosax_meta = run_evosax(seed, evosax_python, args)
                results.extend(rows)
    load_end = os.getloadavg()

    print()
    print(table(results))
    print()
    for line in summary(results):
        print(line)
    print(f"load average (1, 5, 15 min): before {load_start}, after {load_end}")
    if args.json:
        meta = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "args": dataclasses.asdict(args),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "machine": cpu_name(),  # the CPU model, not x86_64
            "ray_init_s": ray_init_s,
            "evosax_python": evosax_python,
            "evosax": evosax_meta,
            "load_before": load_start,
            "load_after": load_end,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    run(main, Args, description=__doc__)
