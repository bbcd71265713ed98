"""MuJoCo training on one machine: flipes' per-env defaults, beside EvoTorch's PGPE, in one run.

    make bench-mujoco                       # .venv-bench (EvoTorch beside flipes), everything: ~90 min
    python scripts/bench_mujoco.py --parts threshold --seeds 0      # one part, one seed
    python scripts/bench_mujoco.py --quick                          # smoke test, about a minute
    python scripts/bench_mujoco.py --reuse ...     # after a crash: read the finished runs under --out

Parts (run one after another, never side by side: each takes every core):

- ``threshold``: ``python scripts/train.py --env HalfCheetah-v5 --seed S --max-seconds T --target none
  --out DIR``, nothing else (``--max-seconds`` ends the run; ``--target none`` keeps the default
  target, gymnasium's reward_threshold of 4,800 for HalfCheetah and 3,800 for Hopper, from ending it
  before 5,000 or the last mark), for each seed: the wall seconds (train.py's ``seconds``,
  evaluations included) at which the center policy's mean return over the preset's 5 evaluation
  episodes first reaches each of ``--thresholds``.
- ``curves``: the same command on each of ``--curve-envs`` for its ``--curve-seconds``: the center
  return (latest evaluation, and best so far) at each of ``--marks`` seconds.
- ``evotorch``: EvoTorch 0.6.1's PGPE + ClipUp with ``VecGymNE`` on gymnasium's HalfCheetah-v5 for
  ``--evotorch-seconds`` per seed, with the settings of EvoTorch's own MuJoCo example
  (``examples/scripts/rl_clipup.py``, config ``walker``; it has no HalfCheetah config): a linear
  policy, observation normalization, popsize 100 growing to at most 800 until 75,000 interactions a
  generation, ClipUp with max speed 0.015, step 0.75 × max speed, momentum 0.9, initial radius
  15 × max speed, σ learning rate 0.1 with at most 20% change; ``decrease_rewards_by`` is left out
  (it removes Walker's alive bonus; HalfCheetah has none), ``num_actors`` = the cores. Every
  ``--evotorch-eval-every`` generations its center is evaluated on 5 episodes of gymnasium's env by
  flipes' rollout code, with EvoTorch's clock stopped meanwhile (in its favour: flipes' times
  include its evaluations). Reported: its best center return by each mark, and the first time
  flipes' center reached EvoTorch's 10-minute return (median over seeds).
"""

from __future__ import annotations

import dataclasses
import json
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

from flipes.cli import run
from flipes.errors import UsageError
from flipes.rl import episode_seed, make_vector_env, run_episodes

ROOT = Path(__file__).resolve().parents[1]


Part = Literal["threshold", "curves", "evotorch"]


@dataclass
class Args:
    parts: list[Part] = field(default_factory=lambda: ["threshold", "curves", "evotorch"])
    """Which parts to run, in this order."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds of the threshold runs."""
    threshold_env: str = "HalfCheetah-v5"
    """Env of the threshold runs."""
    threshold_seconds: float = 300.0
    """Wall budget of each threshold run."""
    thresholds: list[float] = field(default_factory=lambda: [1500.0, 5000.0])
    """Center returns whose first time is reported."""
    curve_envs: list[str] = field(default_factory=lambda: ["Hopper-v5", "Walker2d-v5", "Ant-v5", "Humanoid-v5"])
    """Envs of the curves part, one run each."""
    curve_seconds: list[float] = field(default_factory=lambda: [600.0, 600.0, 600.0, 1200.0])
    """Wall budget of each curve run, one per curve env."""
    curve_seed: int = 0
    """Seed of the curve runs."""
    marks: list[float] = field(default_factory=lambda: [120.0, 300.0, 600.0, 1200.0])
    """Report the center returns at these seconds."""
    evotorch_seeds: list[int] = field(default_factory=lambda: [0, 1])
    """Seeds of the EvoTorch runs."""
    evotorch_seconds: float = 600.0
    """EvoTorch's budget per seed (its own clock, evaluations excluded)."""
    evotorch_eval_every: int = 5
    """Generations between evaluations of EvoTorch's center."""
    quick: bool = False
    """Smoke test: tiny budgets, 16 members and 100-step episodes in the threshold run, no EvoTorch."""
    out: str = "runs/bench_mujoco"
    """Directory the run directories go under."""
    reuse: bool = False
    """Read a run directory that already has metrics.jsonl instead of training again."""
    json: str = ""
    """Write the results here too."""
    markdown: str = ""
    """Write the tables here too."""


def train(env_id: str, seed: int, seconds: float, out: Path, extra: list[str], reuse: bool = False) -> dict[str, Any]:
    """One ``train.py`` run as a user starts it; its metrics give the curve. With ``reuse``, a finished
    run in ``out`` (say, from a benchmark that crashed in a later part) is read instead of repeated."""
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--env", env_id, "--seed", str(seed)]
    cmd += ["--max-seconds", str(seconds), "--target", "none", "--out", str(out), "--overwrite", *extra]
    wall = None
    if reuse and (out / "metrics.jsonl").exists():
        print(f"reusing {out / 'metrics.jsonl'} (written {time.ctime((out / 'metrics.jsonl').stat().st_mtime)})")
    else:
        print("$", " ".join(cmd[1:]), flush=True)
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, timeout=seconds * 2 + 600, stdout=subprocess.DEVNULL)
        if r.returncode == 2:  # train.py refused an option (a seed, an env id) in the one line it printed: stop there
            raise SystemExit(2)
        r.check_returncode()
        wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    evals = [(r["seconds"], r["eval_return"], r["timesteps"]) for r in rows if "eval_return" in r]
    return {"env": env_id, "seed": seed, "process_wall_s": wall, "evals": evals, "steps": rows[-1]["timesteps"],
            "loop_s": rows[-1]["seconds"]}  # fmt: skip


def first_time(evals: list[tuple[float, float, int]], threshold: float) -> float | None:
    return next((s for s, ret, _ in evals if ret >= threshold), None)


def at_mark(evals: list[tuple[float, float, int]], mark: float) -> tuple[float | None, float | None]:
    """(latest, best) center return evaluated by ``mark`` seconds."""
    seen = [ret for s, ret, _ in evals if s <= mark]
    return (seen[-1], max(seen)) if seen else (None, None)


def fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def center_policy(problem: Any, searcher: Any) -> Any:
    """EvoTorch's center solution as a policy (with its observation normalization): float obs -> actions."""
    # its normalizer keeps float64 statistics, which its float32 linear layer does not accept
    policy = problem.to_policy(searcher.status["center"]).float()
    return lambda obs: policy(obs.float())


def run_evotorch(seed: int, args: Args) -> dict[str, Any]:
    """One EvoTorch run; its result is kept in ``--out`` (read back with ``--reuse``)."""
    saved = Path(args.out) / f"evotorch-s{seed}.json"
    if args.reuse and saved.exists():
        print(f"reusing {saved} (written {time.ctime(saved.stat().st_mtime)})")
        return json.loads(saved.read_text(encoding="utf-8"))
    result = _run_evotorch(seed, args)
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(result), encoding="utf-8")
    return result


def _run_evotorch(seed: int, args: Args) -> dict[str, Any]:
    import ray
    from evotorch.algorithms import PGPE
    from evotorch.neuroevolution import VecGymNE

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)  # outside EvoTorch's clock
    torch.manual_seed(seed)
    max_speed = 0.015  # rl_clipup.py's `walker` config
    problem = VecGymNE(
        "HalfCheetah-v5",
        "Linear(obs_length, act_length)",
        observation_normalization=True,
        num_actors=os.cpu_count() or 1,
    )
    searcher = PGPE(
        problem,
        popsize=100,
        popsize_max=800,
        num_interactions=int(0.75 * 1000 * 100),
        center_learning_rate=0.75 * max_speed,
        stdev_learning_rate=0.1,
        stdev_max_change=0.2,
        radius_init=15 * max_speed,
        optimizer="clipup",
        optimizer_config={"max_speed": max_speed, "momentum": 0.9},
        ranking_method="centered",
    )
    env = make_vector_env("gymnasium:HalfCheetah-v5", 5, note=None)
    evals: list[tuple[float, float, int]] = []
    clock, gen = 0.0, 0
    while clock < args.evotorch_seconds:
        t0 = time.perf_counter()
        searcher.step()
        clock += time.perf_counter() - t0
        gen += 1
        if gen % args.evotorch_eval_every == 0:  # clock stopped
            returns = run_episodes(env, center_policy(problem, searcher), episode_seed(seed, gen, "evotorch/eval")).returns
            evals.append((clock, returns.mean().item(), int(searcher.status["total_interaction_count"])))
            print(f"  evotorch seed {seed} gen {gen} {clock:.0f}s center {evals[-1][1]:.0f}", flush=True)
    problem.kill_actors()
    env.close()
    return {"env": "HalfCheetah-v5", "seed": seed, "evals": evals, "generations": gen, "steps": evals[-1][2] if evals else 0}


def main(args: Args) -> dict[str, Any]:
    if args.quick:
        args = dataclasses.replace(
            args, seeds=args.seeds[:1], threshold_seconds=0.5, curve_envs=args.curve_envs[:1], curve_seconds=[0.5],
            marks=[0.25, 0.5], parts=[p for p in args.parts if p != "evotorch"],
        )  # fmt: skip
    if len(args.curve_seconds) != len(args.curve_envs):
        raise UsageError(
            "--curve-seconds",
            f"gives {len(args.curve_seconds)} budget(s) for {len(args.curve_envs)} --curve-envs",
            "give one budget per curve env, in the same order",
        )
    if args.evotorch_eval_every < 1:
        raise UsageError("--evotorch-eval-every", f"must be at least 1, got {args.evotorch_eval_every}")
    out = Path(args.out)
    results: dict[str, Any] = {"threshold": [], "curves": [], "evotorch": []}
    tables: list[str] = []
    load_before = os.getloadavg()
    if "threshold" in args.parts:
        for seed in args.seeds:
            # the preset's 128 members take ~10 s a generation on 2 cores, 16 of 1,000-step episodes still 1.5 s
            extra = ["--popsize", "16", "--max-episode-steps", "100"] if args.quick else []
            run = train(args.threshold_env, seed, args.threshold_seconds, out / f"threshold-s{seed}", extra, args.reuse)
            results["threshold"].append(run)
        lines = [
            f"| {args.threshold_env} seed | " + " | ".join(f"s to {t:,.0f}" for t in args.thresholds) + " | best | env steps |",
            "|---|" + "---|" * (len(args.thresholds) + 2),
        ]
        for r in results["threshold"]:
            times = [fmt(first_time(r["evals"], t), 1) for t in args.thresholds]
            best = max(ret for _, ret, _ in r["evals"])
            lines.append(f"| {r['seed']} | " + " | ".join(times) + f" | {best:,.0f} | {r['steps']:,} |")
        tables.append("\n".join(lines))
    if "curves" in args.parts:
        for env_id, seconds in zip(args.curve_envs, args.curve_seconds, strict=True):
            results["curves"].append(train(env_id, args.curve_seed, seconds, out / f"curve-{env_id}", [], args.reuse))
        marks = [m for m in args.marks if m <= max(args.curve_seconds)]
        head = f"| env (seed {args.curve_seed}) | " + " | ".join(f"{m / 60:g} min" for m in marks) + " | env steps |"
        lines = [head, "|---|" + "---|" * (len(marks) + 1)]
        for r in results["curves"]:
            cells = []
            for m in marks:
                latest, best = at_mark(r["evals"], m) if m <= r["loop_s"] + 1 else (None, None)
                cells.append("-" if latest is None else f"{latest:,.0f} (best {best:,.0f})")
            lines.append(f"| {r['env']} | " + " | ".join(cells) + f" | {r['steps']:,} |")
        tables.append("\n".join(lines))
    if "evotorch" in args.parts:
        for seed in args.evotorch_seeds:
            results["evotorch"].append(run_evotorch(seed, args))
        marks = [m for m in args.marks if m <= args.evotorch_seconds]
        head = "| method | seed | " + " | ".join(f"best by {m / 60:g} min" for m in marks) + " |"
        lines = [head, "|---|---|" + "---|" * len(marks)]
        for method, runs in (("EvoTorch PGPE+ClipUp", results["evotorch"]), ("flipes (defaults)", results["threshold"])):
            for r in runs:
                ran = r["evals"][-1][0] if r["evals"] else 0.0  # a mark after the run's end shows "-"
                cells = [fmt(at_mark(r["evals"], m)[1]) if m <= ran + 30 else "-" for m in marks]
                lines.append(f"| {method} | {r['seed']} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
        if results["threshold"] and results["evotorch"]:
            evo = statistics.median(max(ret for _, ret, _ in r["evals"]) for r in results["evotorch"])
            reached = [first_time(r["evals"], evo) for r in results["threshold"]]
            done = [t for t in reached if t is not None]
            verdict = (
                f"flipes reached EvoTorch's {args.evotorch_seconds / 60:g}-min return ({evo:,.0f}, median of its seeds' best) "
                f"after {', '.join(fmt(t, 1) + ' s' for t in reached)} (seeds {args.seeds})"
            )
            if len(done) == len(reached):
                ratio = statistics.median(done) / args.evotorch_seconds
                verdict += f": median {ratio:.2f} of EvoTorch's time (target <= 0.33: {'met' if ratio <= 1 / 3 else 'NOT met'})"
            tables.append(verdict)
    text = "\n\n".join(tables)
    print(text)
    meta = {"args": dataclasses.asdict(args), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "load_before": load_before, "load_after": os.getloadavg()}  # fmt: skip
    print(f"load average before {meta['load_before']}, after {meta['load_after']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, **results}, indent=2), encoding="utf-8")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    run(main, Args, description=__doc__)
