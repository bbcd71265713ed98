"""Env steps per second of flipes/CartPole-v1 beside gymnasium's own CartPole vector envs.

Three ways to step N CartPoles with random actions (episodes end every ~20 steps, so autoresets
are part of the cost):

    flipes              gymnasium.make_vec("flipes/CartPole-v1", num_envs=N, device=...)  torch, one batched step
    vector_entry_point  gymnasium.make_vec("CartPole-v1", num_envs=N, vectorization_mode="vector_entry_point")  numpy
    sync                gymnasium.make_vec("CartPole-v1", num_envs=N, vectorization_mode="sync")  a Python loop of N envs

The variants take turns (--rounds blocks each, so machine noise hits all alike); the table gives
the median steps/s (env steps: N per batched step) and each variant's ratio to flipes. Usage:

    python scripts/bench_envs.py [--num-envs 4096] [--device cuda] [--threads 1]
    python scripts/bench_envs.py --quick        # a smoke test, a second or two
    python scripts/bench_envs.py --help         # every option
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import torch

import envs  # noqa: F401  registers the flipes/ ids
from flipes.cli import option_name, run
from flipes.config import check_device, check_threads
from flipes.errors import UsageError


@dataclass
class Args:
    num_envs: int = 4096
    """N, the envs stepped together."""
    steps: int = 500
    """Batched steps per timed block of flipes and vector_entry_point."""
    sync_steps: int = 20
    """Batched steps per timed block of sync (each is N Python env steps)."""
    rounds: int = 5
    """Timed blocks per variant, interleaved."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Torch device of the flipes env."""
    threads: int = 0
    """Torch CPU threads (0: torch's default)."""
    seed: int = 0
    """Seed of the resets and the random actions."""
    quick: bool = False
    """Smoke test: N = 64, a few steps."""


def check(args: Args) -> None:
    """Raise a UsageError for options that leave nothing to time or name a device this machine lacks."""
    for name in ("num_envs", "steps", "sync_steps", "rounds"):
        if getattr(args, name) < 1:
            raise UsageError(option_name(name), f"must be at least 1, got {getattr(args, name)}", "pass a positive count")
    check_threads("--threads", args.threads)
    if args.seed < 0:  # gymnasium's reset refuses it only after the envs are made, with its own traceback
        raise UsageError("--seed", f"must be 0 or positive, got {args.seed}", "any integer >= 0 is a seed")
    check_device(args.device)


def flipes_block(args: Args) -> Callable[[], float]:
    """A function that runs one timed block of the flipes env and returns its env steps per second."""
    env = gym.make_vec("flipes/CartPole-v1", num_envs=args.num_envs, device=args.device)
    env.reset(seed=args.seed)
    gen = torch.Generator(args.device).manual_seed(args.seed)
    actions = torch.randint(0, 2, (args.steps, args.num_envs), generator=gen, device=args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    def block() -> float:
        sync()
        start = time.perf_counter()
        for a in actions:
            env.step(a)
        sync()
        return args.steps * args.num_envs / (time.perf_counter() - start)

    return block


def gymnasium_block(args: Args, mode: str, steps: int) -> Callable[[], float]:
    """The same for gymnasium's CartPole-v1 vectorized by ``mode``, numpy actions."""
    env = gym.make_vec("CartPole-v1", num_envs=args.num_envs, vectorization_mode=mode)
    env.reset(seed=args.seed)
    actions = np.random.default_rng(args.seed).integers(0, 2, size=(steps, args.num_envs))

    def block() -> float:
        start = time.perf_counter()
        for a in actions:
            env.step(a)
        return steps * args.num_envs / (time.perf_counter() - start)

    return block


def main(args: Args) -> None:
    check(args)
    if args.quick:
        args = dataclasses.replace(args, num_envs=64, steps=20, sync_steps=2, rounds=2)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = {
        "flipes": flipes_block(args),
        "vector_entry_point": gymnasium_block(args, "vector_entry_point", args.steps),
        "sync": gymnasium_block(args, "sync", args.sync_steps),
    }
    for block in variants.values():  # warm-up: first-call costs, caches, lazy inits
        block()

    rates: dict[str, list[float]] = {name: [] for name in variants}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, block in variants.items():
            rates[name].append(block())
    load_after = os.getloadavg()[0]

    median = {name: statistics.median(r) for name, r in rates.items()}
    print(
        f"CartPole-v1, N={args.num_envs}, random actions (autoresets included), flipes on {args.device}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), gymnasium {gym.__version__}; median of {args.rounds} interleaved blocks; "
        f"load average {load_before:.2f} -> {load_after:.2f}\n"
    )
    print("| env | steps/s | flipes / this | min..max steps/s |")
    print("|---|---|---|---|")
    for name, rate in median.items():
        lo, hi = min(rates[name]), max(rates[name])
        print(f"| {name} | {rate:,.0f} | {median['flipes'] / rate:.2f}x | {lo:,.0f}..{hi:,.0f} |")


if __name__ == "__main__":
    run(main, Args, description=__doc__)
