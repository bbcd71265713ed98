"""Policies with memory: do they pay off where the observation hides the state? MLP vs GRU by FlipES.

    python scripts/bench_memory.py                  # the whole benchmark, 7 min on 2 cores: scripts/results/bench_memory.*
    python scripts/bench_memory.py --quick true     # smoke test, a few seconds (bench_memory_quick.*)
    python scripts/bench_memory.py --envs pendulum --observations hidden --seeds 0 1 2 3 4

Tasks: flipes' batched torch envs, fully observed (the reference) and partially observed, made with
the envs' option ``hide_velocities=True`` (``flipes train --env-kwargs '{"hide_velocities": true}'``):

- ``cartpole``, ``flipes/CartPole-v1``: hidden = cart position and pole angle only (columns 0 and 2;
  no velocities), so a policy must infer ẋ and θ̇ from successive observations.
- ``pendulum``, ``flipes/Pendulum-v1``: hidden = cos θ, sin θ only (columns 0 and 1; no θ̇).

Policies: ``flipes.rl.MLPPolicy`` (memoryless) and ``flipes.rl.GRUPolicy`` (a Flipout MLP encoder,
a Flipout GRU cell of the last hidden width, a linear head), both with the preset's ``hidden``
widths (32 32: the GRU policy is Linear(obs, 32) -> tanh -> GRUCell(32, 32) -> Linear(32, actions)),
both normalizing observations.

Training: ``flipes.FlipES`` + ``flipes.rl.RolloutFitness`` in this process (not ``flipes.train``,
which builds its env from an id), as ``flipes train`` does it: OpenAI-ES (centered ranks, Adam,
mirrored sampling, one ε group), observation statistics frozen during a generation and merged after
``tell``. popsize, σ, lr, episodes per member and hidden are each env's row of
``flipes.rl.presets`` (both envs: popsize 64, σ 0.1, episodes 1, hidden 32 32; lr 0.05 on
CartPole, 0.2 on Pendulum). Deviations from the preset, for the ~10 minute budget of the whole
benchmark on 2 cores:

- a fixed budget of ``--cartpole-generations`` / ``--pendulum-generations`` (defaults below) instead
  of the preset's 300 / 2,000, and no stop at the solved return (every run trains its whole budget);
- the center is evaluated every ``--eval-every`` generations (the preset: 2) and after the last one,
  on ``--cartpole-eval-episodes`` 100 / ``--pendulum-eval-episodes`` 20 (the preset: 100) fresh
  episodes each time (seeded by seed, generation and stream, none seen in training). ``final`` is
  the evaluation after the last generation, ``best`` the highest evaluation of the run (the final
  one included).

``wall s`` is the whole run: building env and policy, training, every evaluation. One torch thread
(``--threads``), as ``flipes train``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import torch
from repro_common import cpu_name

import flipes
from flipes.cli import run
from flipes.config import check_threads
from flipes.errors import UsageError
from flipes.rl import POLICIES, RolloutFitness, make_vector_env, reset_episodes, run_episodes
from flipes.rl.presets import preset_for

ROOT = Path(__file__).resolve().parents[1]

Env = Literal["cartpole", "pendulum"]
Observation = Literal["full", "hidden"]
Policy = Literal["mlp", "gru"]

# name -> (flipes env id, what the partial observation holds)
ENVS: dict[str, tuple[str, str]] = {
    "cartpole": ("flipes/CartPole-v1", "x, θ (no ẋ, θ̇)"),
    "pendulum": ("flipes/Pendulum-v1", "cos θ, sin θ (no θ̇)"),
}
FULL = {"cartpole": "x, ẋ, θ, θ̇", "pendulum": "cos θ, sin θ, θ̇"}


@dataclass
class Args:
    envs: list[Env] = field(default_factory=lambda: ["cartpole", "pendulum"])
    """Envs to run, in this order."""
    observations: list[Observation] = field(default_factory=lambda: ["full", "hidden"])
    """Observations: full (the env's own) and hidden (the velocities left out)."""
    policies: list[Policy] = field(default_factory=lambda: ["mlp", "gru"])
    """Policies: mlp (memoryless) and gru (with memory)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds of every (env, observation, policy)."""
    cartpole_generations: int = 50
    """Generations of one CartPole run (the budget; no stop at the solved return)."""
    pendulum_generations: int = 130
    """Generations of one Pendulum run."""
    eval_every: int = 10
    """Evaluate the center policy every this many generations (and after the last)."""
    cartpole_eval_episodes: int = 100
    """Episodes of one CartPole evaluation."""
    pendulum_eval_episodes: int = 20
    """Episodes of one Pendulum evaluation."""
    popsize: int = 0
    """Members per generation (0: the env's preset, 64)."""
    threads: int = 1
    """Torch threads (0: torch's default)."""
    quick: bool = False
    """Smoke test: one seed, popsize 8, 2 generations, 4-episode evaluations; writes bench_memory_quick.*."""
    out: str = "scripts/results"
    """Directory of bench_memory.{json,md}."""


def make_env(name: str, observation: str, num_envs: int) -> gym.vector.VectorEnv:
    return make_vector_env(ENVS[name][0], num_envs, note=None, hide_velocities=observation == "hidden")


def settings_for(name: str, args: Args) -> dict[str, Any]:
    """The env's preset row (popsize, σ, lr, episodes, hidden), this benchmark's budget and evaluations."""
    row = preset_for(ENVS[name][0])
    s = {k: row[k] for k in ("popsize", "sigma", "lr", "episodes", "hidden")}
    s["generations"] = args.cartpole_generations if name == "cartpole" else args.pendulum_generations
    s["eval_episodes"] = args.cartpole_eval_episodes if name == "cartpole" else args.pendulum_eval_episodes
    s["eval_every"] = args.eval_every
    if args.popsize:
        s["popsize"] = args.popsize
    if args.quick:
        s.update(popsize=8, generations=2, eval_every=1, eval_episodes=4)
    return s


def evaluate(env: gym.vector.VectorEnv, policy: torch.nn.Module, seed: int, generation: int) -> float:
    """The center policy's mean return over ``env.num_envs`` fresh episodes (a recurrent policy's state carried)."""
    obs = reset_episodes(env, seed, "bench_memory/eval", generation)
    return run_episodes(env, policy, obs=obs).returns.mean().item()


def run_one(name: str, observation: str, policy_name: str, seed: int, args: Args) -> dict[str, Any]:
    """One training run: FlipES + RolloutFitness for the budget, the center evaluated on the way and at the end."""
    s = settings_for(name, args)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    torch.manual_seed(seed)  # the policy's initial weights, as flipes train seeds them
    env = make_env(name, observation, s["popsize"] * s["episodes"])
    eval_env = make_env(name, observation, s["eval_episodes"])
    policy = flipes.flipout(POLICIES[policy_name](env.single_observation_space, env.single_action_space, hidden=s["hidden"]))
    es = flipes.FlipES(policy, popsize=s["popsize"], sigma=s["sigma"], lr=s["lr"], seed=seed)
    fitness = RolloutFitness(env, s["episodes"], seed, policy.obs_norm)
    evals: list[list[float]] = []  # [generation done, mean return]
    eval_s = 0.0
    for gen in range(s["generations"]):
        with es.population() as pop:
            values = fitness(policy, pop)
        stats = es.tell(values)
        if not math.isfinite(stats["grad_norm"]):
            raise RuntimeError(f"{name} {observation} {policy_name} seed {seed}: non-finite update at generation {gen}")
        policy.obs_norm.update()  # frozen during the generation, merged after it
        if (gen + 1) % s["eval_every"] == 0 or gen == s["generations"] - 1:
            t1 = time.perf_counter()
            evals.append([gen + 1, evaluate(eval_env, policy, seed, gen)])
            eval_s += time.perf_counter() - t1
    wall = time.perf_counter() - t0
    env.close()
    eval_env.close()
    return {
        "env": ENVS[name][0],
        "name": name,
        "observation": observation,
        "observed": ENVS[name][1] if observation == "hidden" else FULL[name],
        "policy": policy_name,
        "seed": seed,
        "params": es.num_params,
        "generations": s["generations"],
        "env_steps": fitness.timesteps,
        "final": evals[-1][1],
        "best": max(v for _, v in evals),
        "evals": evals,
        "wall_s": wall,
        "eval_s": eval_s,
        "settings": s,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def per_seed(rs: list[dict[str, Any]], key: str) -> str:
    return " / ".join(f"{r[key]:.0f}" for r in rs)


def table(results: list[dict[str, Any]]) -> str:
    """One row per (env, observation, policy): per-seed final and best, their medians, wall s."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["name"], r["observation"], r["policy"]), []).append(r)
    lines = [
        "| env | observation | policy | final, per seed | best, per seed | median final | median best | wall s, per seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (name, observation, policy), rs in groups.items():
        lines.append(
            f"| {ENVS[name][0]} | {observation}: {rs[0]['observed']} | {policy} | {per_seed(rs, 'final')} "
            f"| {per_seed(rs, 'best')} | {statistics.median(r['final'] for r in rs):.0f} "
            f"| {statistics.median(r['best'] for r in rs):.0f} | {per_seed(rs, 'wall_s')} |"
        )
    return "\n".join(lines)


def main(args: Args) -> list[dict[str, Any]]:
    for option, value in (("--envs", args.envs), ("--observations", args.observations), ("--policies", args.policies),
                          ("--seeds", args.seeds)):  # fmt: skip
        if not value:
            raise UsageError(option, "is empty", "give at least one")
    for option, value in (("--cartpole-generations", args.cartpole_generations), ("--pendulum-generations",
                          args.pendulum_generations), ("--eval-every", args.eval_every), ("--cartpole-eval-episodes",
                          args.cartpole_eval_episodes), ("--pendulum-eval-episodes", args.pendulum_eval_episodes)):  # fmt: skip
        if value < 1:
            raise UsageError(option, f"must be at least 1, got {value}")
    if args.popsize < 0 or args.popsize % 2:
        raise UsageError("--popsize", f"got {args.popsize}", "give an even number (mirrored pairs), or 0 for the preset")
    if args.quick:
        args = dataclasses.replace(args, seeds=args.seeds[:1])
    check_threads("--threads", args.threads)  # a negative count torch.set_num_threads below would skip silently
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    command = "python " + shlex.join(["scripts/bench_memory.py", *sys.argv[1:]])
    print(f"command: {command}", flush=True)

    results: list[dict[str, Any]] = []
    load_start, t_start = os.getloadavg(), time.perf_counter()
    for name in args.envs:
        for observation in args.observations:
            for seed in args.seeds:  # seeds outside policies: a change in the machine's load hits both alike
                for policy in args.policies:
                    r = run_one(name, observation, policy, seed, args)
                    print(
                        f"{name:8s} {observation:6s} {policy} seed {seed}: final {r['final']:8.1f}, best {r['best']:8.1f}, "
                        f"{r['generations']} generations, {r['wall_s']:.1f} s (evaluations {r['eval_s']:.1f} s)",
                        flush=True,
                    )
                    results.append(r)
    load_end, total = os.getloadavg(), time.perf_counter() - t_start

    meta = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "args": dataclasses.asdict(args),
        "load_before": load_start,
        "load_after": load_end,
        "wall_s": total,
    }
    text = table(results)
    budgets = ", ".join(
        f"{ENVS[n][0]} {settings_for(n, args)['generations']} generations, evaluated every {settings_for(n, args)['eval_every']} "
        f"on {settings_for(n, args)['eval_episodes']} episodes"
        for n in args.envs
    )
    footer = (
        f"{meta['date']}, {meta['machine']}, {meta['cores']} cores, torch {meta['torch']} "
        f"({meta['torch_threads']} thread); load average (1, 5, 15 min) before {load_start}, after {load_end}; "
        f"whole run {total / 60:.1f} min. Budgets: {budgets}. Returns are the center policy's mean over the "
        "evaluation's episodes; final: after the last generation, best: the highest evaluation of the run."
    )
    markdown = f"# Policies with memory (`scripts/bench_memory.py`)\n\n`{command}`\n\n{text}\n\n{footer}\n"
    print()
    print(text)
    print()
    print(footer)
    name = "bench_memory_quick" if args.quick else "bench_memory"
    out = Path(args.out)
    out = out if out.is_absolute() else ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n", encoding="utf-8")
    (out / f"{name}.md").write_text(markdown, encoding="utf-8")
    print(f"wrote {out / name}.json and .md")
    return results


if __name__ == "__main__":
    run(main, Args, description=__doc__)
