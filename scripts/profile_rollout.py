"""Where a training rollout's time goes per step: the env, the policy forward, observation statistics, the rest.

    python scripts/profile_rollout.py                                      # HalfCheetah-v5 (EnvPool), N = 128
    python scripts/profile_rollout.py --env flipes/CartPole-v1 --n 256     # a torch env
    PYTHONPATH=../other-tree python scripts/profile_rollout.py             # the same on another checkout, to compare

Runs ``RolloutFitness`` as training does (one torch thread, a Flipout MLP population of the preset's
hidden sizes, one episode per member, 2 EnvPool threads) for ``--generations`` generations after one
untimed generation whose statistics are merged, so that the observation normalization is on. Each
section is timed by wrapping it, the library untouched: ``env`` is EnvPool's own ``send`` and ``recv``
(C++, mostly waiting for its threads) or, for other engines, the whole ``env.step``; ``policy`` is the
policy's forward (flattening, normalization, the Flipout MLP, the action squashing), ``of it Flipout
MLP`` its layers alone; ``record`` adds observations to the pending statistics; ``rest`` is the rest
of the generation: the rollout's own bookkeeping, the env adapter's numpy/torch conversions, the
reset. Times are ms per N env steps (one step of every env while all run), summed over the timed
generations. EnvPool ids are profiled serial and pipelined (``RolloutFitness(pipeline=...)``).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

import flipes
from flipes.cli import option_name, run
from flipes.config import check_threads
from flipes.errors import UsageError
from flipes.rl import MLPPolicy, RunningNorm, make_vector_env
from flipes.rl.envs import EnvError
from flipes.rl.presets import preset_for
from flipes.rl.rollout import RolloutFitness

SECTIONS = ("env", "policy", "of it Flipout MLP", "record", "rest", "total")


@dataclass
class Args:
    env: str = "HalfCheetah-v5"
    """Env id (engine prefixes as for ``flipes train --env``)."""
    n: int = 128
    """Population size, one env per member."""
    generations: int = 3
    """Timed generations (after one untimed)."""
    threads: int = 2
    """EnvPool threads / gymnasium worker processes."""
    quick: bool = False
    """Smoke test: flipes/CartPole-v1, N = 16, one timed generation."""
    json: str = ""
    """Write the results here too."""


def timed(obj: Any, name: str, key: str, times: dict[str, float]) -> None:
    """Replace ``obj.name`` by a wrapper adding its wall time to ``times[key]``."""
    inner: Callable[..., Any] = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            times[key] += time.perf_counter() - start

    setattr(obj, name, wrapper)


def timed_recorder(norm: Any, times: dict[str, float]) -> None:
    """Time the functions ``norm.recorder`` makes (a rollout of one episode per member records through one) as
    ``record``."""
    make: Callable[..., Any] = norm.recorder

    def recorder(*args: Any, **kwargs: Any) -> Any:
        made = make(*args, **kwargs)
        if made is None:
            return None
        holder = SimpleNamespace(record=made)
        timed(holder, "record", "record", times)
        return holder.record

    norm.recorder = recorder


def profile(args: Args, pipeline: bool) -> tuple[dict[str, float], bool]:
    """ms per N env steps of each section, over ``args.generations`` generations; and whether the env can pipeline."""
    env = make_vector_env(args.env, args.n, threads=args.threads)
    torch.manual_seed(0)
    hidden = preset_for(args.env).get("hidden", [64, 64])
    policy = flipes.flipout(MLPPolicy(env.single_observation_space, env.single_action_space, hidden=hidden)).eval()
    es = flipes.FlipES(policy, popsize=args.n, sigma=0.02, seed=0)
    fitness = RolloutFitness(env, pipeline=pipeline)
    times: dict[str, float] = defaultdict(float)
    timed(policy, "forward", "policy", times)
    timed(policy.net, "forward", "of it Flipout MLP", times)
    record = RunningNorm.record  # timed at the class: a record set on the norm itself turns its recorder off
    timed(RunningNorm, "record", "record", times)
    timed_recorder(policy.obs_norm, times)
    pool = None  # EnvPool's pool, made at the first reset (and kept while the seeds stay)
    steps = 0
    for generation in range(1 + args.generations):
        if generation == 1:
            times.clear()
        if getattr(env, "_pool", None) is not None and env._pool is not pool:
            pool = env._pool
            timed(pool, "send", "env", times)
            timed(pool, "recv", "env", times)
        elif pool is None and generation == 0 and not hasattr(env, "_pool"):
            timed(env, "step", "env", times)
        with es.population() as pop:
            before, start = fitness.timesteps, time.perf_counter()
            f = fitness(policy, pop)
            times["total"] += time.perf_counter() - start
            es.tell(f)
        policy.obs_norm.update()
        steps += (fitness.timesteps - before) if generation else 0
    can_pipeline = hasattr(env, "send")
    env.close()
    RunningNorm.record = record  # type: ignore[method-assign]
    times["rest"] = times["total"] - times["env"] - times["policy"] - times["record"]
    return {k: times[k] * 1e3 / (steps / args.n) for k in SECTIONS}, can_pipeline


def main(args: Args) -> dict[str, Any]:
    torch.set_num_threads(1)  # as training: the policy runs on this thread, EnvPool's threads on the others
    if args.quick:
        args = Args(env="flipes/CartPole-v1", n=16, generations=1, threads=args.threads, json=args.json)
    for name in ("n", "generations", "threads"):
        if getattr(args, name) < 1:
            raise UsageError(option_name(name), f"must be at least 1, got {getattr(args, name)}")
    check_threads("--threads", args.threads, None, per_core=4)  # EnvPool threads / worker processes, as --env-threads
    load_before = os.getloadavg()
    results = {}
    try:
        results["serial"], can_pipeline = profile(args, pipeline=False)
    except EnvError as e:  # an unknown id, or its engine not installed: the message says what to use
        raise UsageError("--env", str(e)) from None
    if can_pipeline:  # EnvPool
        results["pipelined"], _ = profile(args, pipeline=True)
    meta = {
        "args": asdict(args),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    print(f"{args.env}, N = {args.n}: ms per N env steps, {args.generations} generations")
    print(f"| section | {' | '.join(results)} |\n|---|{'---|' * len(results)}")
    for section in SECTIONS:
        print(f"| {section} | {' | '.join(f'{r[section]:.3f}' for r in results.values())} |")
    print(f"load average before {load_before[0]:.2f}, after {meta['load_after'][0]:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2), encoding="utf-8")
    return results


if __name__ == "__main__":
    run(main, Args, description=__doc__)
