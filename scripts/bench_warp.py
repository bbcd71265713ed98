"""Env steps per second of flipes' MuJoCo envs on MuJoCo Warp beside EnvPool and gymnasium, in one run.

    make bench-warp                                   # CPU: HalfCheetah, Hopper, Humanoid at N = 64, 256, 1,024
    python scripts/bench_warp.py --device cuda        # a GPU: flipes at N = 4,096 and 16,384
    python scripts/bench_warp.py --quick              # smoke test, a few seconds after compiling

Engines, each stepping N copies of a gymnasium v5 id with uniform random actions (autoresets
included, so short episodes cost their resets):

    flipes            gymnasium.make_vec("flipes/<id>", num_envs=N, device=...)   MuJoCo Warp: one thread on
                      the CPU (Warp's CPU backend runs a kernel's threads one after another), or the GPU
    envpool-K         envpool.make_gymnasium("<id>", num_envs=N, num_threads=K)   MuJoCo C in K C++ threads
    gymnasium-sync    gymnasium.make_vec("<id>", num_envs=N, vectorization_mode="sync")   a Python loop of N envs

(gymnasium's MuJoCo envs have no batched ``vector_entry_point``.) The engines take turns
(``--repeats`` timed blocks each, interleaved, so machine load hits them alike); the table gives
the median env steps per second and each engine's ratio to ``gymnasium-sync``. Warp compiles its
kernels on first use (cached on disk after); a warm-up block per engine keeps that out of the
timing. The machine, its load average before and after, and the versions go into the JSON.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch

import envs  # noqa: F401  registers the flipes/ ids
from flipes.cli import option_name, run
from flipes.config import check_device
from flipes.errors import UsageError

Engine = Literal["flipes", "envpool-1", "envpool-2", "gymnasium-sync"]


@dataclass
class Args:
    envs: list[str] = field(default_factory=lambda: ["HalfCheetah-v5", "Hopper-v5", "Humanoid-v5"])
    """gymnasium v5 ids (flipes has HalfCheetah, Hopper, Walker2d, Ant, Humanoid)."""
    sizes: list[int] = field(default_factory=list)
    """N, envs per vector env; default 64, 256, 1024 on the CPU, 4096, 16384 with --device cuda."""
    engines: list[Engine] = field(default_factory=list)
    """Engines to time; default all on the CPU, flipes alone with --device cuda."""
    steps: int = 50
    """Batched steps per timed block."""
    repeats: int = 3
    """Timed blocks per engine, interleaved; the median is reported."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where flipes' envs run (EnvPool and gymnasium always run on the CPU)."""
    seed: int = 0
    """Seed of the resets and the random actions."""
    quick: bool = False
    """Smoke test: HalfCheetah, N = 16, 5 steps, one block each."""
    json: str = ""
    """Write the results here too."""
    markdown: str = ""
    """Write the table here too."""


def check(args: Args) -> None:
    """Raise a UsageError for options that leave nothing to time or name a device this machine lacks."""
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            raise UsageError(option_name(name), f"must be at least 1, got {getattr(args, name)}", "pass a positive count")
    if any(n < 1 for n in args.sizes):
        raise UsageError("--sizes", f"must be positive, got {args.sizes}")
    if not args.envs:  # else an empty table, and exit status 0
        raise UsageError("--envs", "names no env", "give one or more of HalfCheetah-v5, Hopper-v5, Walker2d-v5, Ant-v5, ...")
    unknown = [e for e in args.envs if f"flipes/{e}" not in gym.registry]
    if unknown:
        raise UsageError("--envs", f"flipes has no MuJoCo env {', '.join(unknown)}", "use HalfCheetah-v5, Hopper-v5, ...")
    if args.seed < 0:  # gymnasium's reset refuses it only after the envs are made, with its own traceback
        raise UsageError("--seed", f"must be 0 or positive, got {args.seed}", "any integer >= 0 is a seed")
    check_device(args.device)


def flipes_block(env_id: str, n: int, args: Args) -> Callable[[], float]:
    """A function that runs one timed block of flipes' env and returns its env steps per second."""
    env = gym.make_vec(f"flipes/{env_id}", num_envs=n, device=args.device)
    env.reset(seed=args.seed)
    high = torch.as_tensor(env.single_action_space.high, device=args.device)
    gen = torch.Generator(args.device).manual_seed(args.seed)
    actions = high * (2 * torch.rand(args.steps, n, high.numel(), generator=gen, device=args.device) - 1)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    def block() -> float:
        sync()
        start = time.perf_counter()
        for a in actions:
            env.step(a)
        sync()
        return args.steps * n / (time.perf_counter() - start)

    return block


def numpy_block(env: Any, n: int, args: Args, seeded: bool = False) -> Callable[[], float]:
    """The same for an engine with numpy actions (``seeded``: at creation, as EnvPool is)."""
    space = env.single_action_space
    rng = np.random.default_rng(args.seed)
    actions = rng.uniform(space.low, space.high, (args.steps, n, *space.shape)).astype(space.dtype)
    env.reset(seed=None if seeded else args.seed)

    def block() -> float:
        start = time.perf_counter()
        for a in actions:
            env.step(a)
        return args.steps * n / (time.perf_counter() - start)

    return block


def make_block(engine: Engine, env_id: str, n: int, args: Args) -> Callable[[], float]:
    if engine == "flipes":
        return flipes_block(env_id, n, args)
    if engine.startswith("envpool"):
        import envpool

        threads = int(engine.split("-")[1])
        return numpy_block(envpool.make_gymnasium(env_id, num_envs=n, num_threads=threads, seed=args.seed), n, args, seeded=True)
    return numpy_block(gym.make_vec(env_id, num_envs=n, vectorization_mode="sync"), n, args)


def bench(env_id: str, n: int, engines: list[Engine], args: Args) -> dict[str, float]:
    blocks = {engine: make_block(engine, env_id, n, args) for engine in engines}
    for block in blocks.values():  # warm-up: compiling, first-call costs, caches
        block()
    rates: dict[str, list[float]] = {engine: [] for engine in engines}
    for _ in range(args.repeats):
        for engine, block in blocks.items():
            rates[engine].append(block())
    return {engine: statistics.median(r) for engine, r in rates.items()}


def table(results: list[dict[str, Any]], engines: list[Engine]) -> str:
    base = "gymnasium-sync" if "gymnasium-sync" in engines else engines[0]
    lines = ["| env | N | " + " | ".join(engines) + " |", "|---|---|" + "---|" * len(engines)]
    for r in results:
        cells = [f"{r['rates'][e]:,.0f} ({r['rates'][e] / r['rates'][base]:.2f}×)" for e in engines]
        lines.append(f"| {r['env']} | {r['n']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "gymnasium", "mujoco", "mujoco-warp", "warp-lang", "envpool"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def main(args: Args) -> list[dict[str, Any]]:
    check(args)
    cuda = args.device == "cuda"
    sizes = args.sizes or ([4096, 16384] if cuda else [64, 256, 1024])
    engines: list[Engine] = args.engines or (["flipes"] if cuda else ["flipes", "envpool-1", "envpool-2", "gymnasium-sync"])
    env_ids = args.envs
    if args.quick:
        env_ids, sizes, args = env_ids[:1], [16], dataclasses.replace(args, steps=5, repeats=1)
    torch.set_num_threads(1)  # flipes' envs step with one torch thread anyway; the other engines use their own
    meta: dict[str, Any] = {
        "args": dataclasses.asdict(args),
        "envs": env_ids,
        "sizes": sizes,
        "engines": engines,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device_name": torch.cuda.get_device_name() if cuda else None,
        "versions": versions(),
        "load_before": os.getloadavg(),
    }
    results = []
    for env_id in env_ids:
        for n in sizes:
            rates = bench(env_id, n, engines, args)
            print(f"{env_id} N={n:,}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in rates.items()), flush=True)
            results.append({"env": env_id, "n": n, "rates": rates})
    meta["load_after"] = os.getloadavg()
    text = table(results, engines)
    where = meta["device_name"] if cuda else f"{meta['machine']}, {meta['cpu_count']} CPUs"
    note = (
        f"Env steps/s, uniform random actions, autoresets included; flipes on {args.device} ({where}); "
        f"median of {args.repeats} interleaved blocks of {args.steps} steps; load average "
        f"{meta['load_before'][0]:.2f} before, {meta['load_after'][0]:.2f} after; "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
    )
    print(f"\n{note}\n\n{text}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n", encoding="utf-8")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(f"{note}\n\n{text}\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    run(main, Args, description=__doc__)
