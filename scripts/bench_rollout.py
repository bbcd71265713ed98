"""End-to-end rollout steps/s with the flipes policy in the loop, per env engine, side by side.

    python scripts/bench_rollout.py                       # HalfCheetah-v5 and Humanoid-v5, N = 64, 128, 256, 1024
    python scripts/bench_rollout.py --quick               # smoke test, a few seconds

Every engine runs the same thing a training generation runs: ``reset_episodes`` then
``run_episodes`` of a Flipout MLP population (the env's preset hidden sizes) inside
``es.population()``, ``--steps`` steps per env, timed from the reset to the last step, as env
steps counted in returns per second. Engines: gymnasium's ``SyncVectorEnv`` (``sync``), its
``AsyncVectorEnv`` with one block of envs per worker process (``async``, as many workers as
``--threads``), EnvPool with 1 and 2 threads, and EnvPool with 2 threads and the pipelined rollout
(one half of the envs steps while the policy computes the other half's actions). The baseline
``sync random`` steps ``SyncVectorEnv`` with random actions and no policy (every env, every step),
the rate a user sees from gymnasium alone; ratios are against it; it is timed from its reset too, so that
both sides of a ratio do the same env work. Repeats are interleaved (engine by engine, then again) after
--warmup untimed rounds (first-call costs: EnvPool's threads, worker processes, allocations) and the median is
reported, which keeps a noisy machine's drift out of the ratios. Humanoid runs with ``terminate_when_unhealthy=False``
on every engine, so that all envs step all ``--steps`` steps (a fresh policy falls within ~25 steps) and the rates are
steady-state.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from repro_common import cpu_name

import flipes
from flipes.cli import option_name, run
from flipes.config import check_threads
from flipes.errors import UsageError
from flipes.rl import MLPPolicy, make_vector_env, reset_episodes, run_episodes
from flipes.rl.envs import EnvError
from flipes.rl.presets import preset_for

ENGINES = ("sync random", "sync", "async", "envpool 1 thread", "envpool 2 threads", "envpool 2 threads pipelined")


@dataclass
class Args:
    envs: list[str] = field(default_factory=lambda: ["HalfCheetah-v5", "Humanoid-v5"])
    """Gymnasium ids."""
    sizes: list[int] = field(default_factory=lambda: [64, 128, 256, 1024])
    """Envs per vector env (the popsize)."""
    steps: int = 200
    """Steps per env in one timed rollout."""
    repeats: int = 3
    """Interleaved repeats; the median is reported."""
    warmup: int = 1
    """Untimed interleaved rounds before the repeats (first-call costs stay out of the median)."""
    threads: int = 2
    """EnvPool threads / worker processes of the multi-core engines."""
    quick: bool = False
    """Smoke test: one env, N = 16, 20 steps, one repeat."""
    json: str = ""
    """Write the results here too."""
    markdown: str = ""
    """Write the table here too."""


def kwargs_for(env_id: str) -> dict[str, Any]:
    return {"terminate_when_unhealthy": False} if env_id.startswith("Humanoid") else {}


def make_engine(engine: str, env_id: str, n: int, threads: int) -> tuple[Any, bool]:
    """(vector env, pipelined?) of one engine."""
    kw = kwargs_for(env_id)
    if engine in ("sync random", "sync"):
        return make_vector_env(f"gymnasium-sync:{env_id}", n, **kw), False
    if engine == "async":
        return make_vector_env(f"gymnasium-async:{env_id}", n, threads=threads, **kw), False
    t = 1 if "1 thread" in engine else threads
    return make_vector_env(f"envpool:{env_id}", n, threads=t, **kw), engine.endswith("pipelined")


def time_random(env: Any, n: int, steps: int, seed: int) -> float:
    """Steps/s of the env alone with random actions (every env, every step, autoresets included)."""
    space = env.single_action_space
    actions = np.random.default_rng(seed).uniform(space.low, space.high, (steps, n, *space.shape)).astype(space.dtype)
    t0 = time.perf_counter()  # from the reset, as time_policy: the same env work on both sides of a ratio
    env.reset(seed=seed)
    for a in actions:
        env.step(a)
    return n * steps / (time.perf_counter() - t0)


def time_policy(env: Any, act: Callable, policy: MLPPolicy, pipeline: bool, steps: int, generation: int) -> float:
    """Steps/s of one generation's rollout of the population (reset included)."""
    t0 = time.perf_counter()
    obs = reset_episodes(env, 0, "population", generation)
    ep = run_episodes(env, act, obs=obs, max_steps=steps, record=policy.obs_norm, members=env.num_envs, pipeline=pipeline)
    rate = ep.steps / (time.perf_counter() - t0)
    policy.obs_norm.pending = None
    return rate


def bench(env_id: str, n: int, args: Args) -> dict[str, float]:
    try:
        engines = {name: make_engine(name, env_id, n, args.threads) for name in ENGINES}
    except EnvError as e:  # an unknown id, or an engine not installed: the message says what to use
        raise UsageError("--envs", str(e)) from None
    probe = engines["sync"][0]
    hidden = preset_for(env_id).get("hidden", [64, 64])
    torch.manual_seed(0)
    policy = flipes.flipout(MLPPolicy(probe.single_observation_space, probe.single_action_space, hidden=hidden))
    es = flipes.FlipES(policy, popsize=n, sigma=0.02, seed=0)
    rates: dict[str, list[float]] = {name: [] for name in ENGINES}
    with es.population():
        act = policy  # one episode per member: (n, obs) -> (n, act)
        for rep in range(args.warmup + args.repeats):  # the first --warmup rounds are untimed
            for name, (env, pipeline) in engines.items():
                if name == "sync random":
                    rate = time_random(env, n, args.steps, seed=rep)
                else:
                    rate = time_policy(env, act, policy, pipeline, args.steps, generation=rep)
                if rep >= args.warmup:
                    rates[name].append(rate)
    for env, _ in engines.values():
        env.close()
    return {name: statistics.median(r) for name, r in rates.items()}


def table(results: list[dict[str, Any]]) -> str:
    head = "| env | N | " + " | ".join(ENGINES) + " |"
    lines = [head, "|---|---|" + "---|" * len(ENGINES)]
    for r in results:
        base = r["rates"]["sync random"]
        cells = [f"{r['rates'][e] / 1e3:.1f} k ({r['rates'][e] / base:.2f}×)" for e in ENGINES]
        lines.append(f"| {r['env']} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(args: Args) -> list[dict[str, Any]]:
    for name in ("sizes", "steps", "repeats", "threads", "warmup"):
        value, low = getattr(args, name), 0 if name == "warmup" else 1
        if min(value if isinstance(value, list) else [value], default=0) < low:
            example = {"sizes": "64 256", "steps": 200, "repeats": 3, "threads": 2, "warmup": 1}[name]  # the fix names it
            raise UsageError(option_name(name), f"must be at least {low}, got {value}", f"e.g. {option_name(name)} {example}")
    check_threads("--threads", args.threads, None, per_core=4)  # EnvPool threads / worker processes, as --env-threads
    if not args.envs:
        raise UsageError("--envs", "names no env: nothing to time", "e.g. --envs flipes/CartPole-v1")
    torch.set_num_threads(1)  # as train.py: the policy runs on this thread, the engines on the others
    envs, sizes = args.envs, args.sizes
    if args.quick:
        envs, sizes, args = envs[:1], [16], dataclasses.replace(args, steps=20, repeats=1)
    results = []
    load_before = os.getloadavg()
    for env_id in envs:
        for n in sizes:
            print(f"=== {env_id} N={n}", flush=True)
            rates = bench(env_id, n, args)
            print("  " + ", ".join(f"{k} {v:,.0f}/s" for k, v in rates.items()), flush=True)
            results.append({"env": env_id, "n": n, "rates": rates})
    text = table(results)
    print(text)
    meta = {
        "args": dataclasses.asdict(args),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "machine": cpu_name(),  # the CPU model, not x86_64
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    print(f"load average before {meta['load_before']}, after {meta['load_after']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2), encoding="utf-8")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    run(main, Args, description=__doc__)
