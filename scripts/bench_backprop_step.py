"""What a backprop training step with weight noise costs against a plain step (the README's "Cost").

    python scripts/bench_backprop_step.py                # batches 1,024 and 64, ~10 s on one CPU thread
    python scripts/bench_backprop_step.py --quick true   # a tiny run (the smoke test)

A 256-512-512-10 ReLU MLP of ``flipes.nn`` layers on random inputs and labels; one step is forward,
cross-entropy (plus the KL term over 60,000 examples), backward and ``torch.optim.Adam``. Three
variants: "plain" (no noise model attached: ``nn.Linear``'s forward), "Flipout" (``GaussianPosterior``,
per-example signs) and "shared" (``GaussianPosterior(flipout=False)``: one weight sample per minibatch,
one GEMM per layer on ``W̄ + ΔŴ``). The variants take turns step by step, so a change of machine load
hits all three; the median step of each is printed, with its ratio to plain.
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import flipes
from flipes.cli import option_name, run
from flipes.config import check_threads
from flipes.errors import UsageError
from flipes.nn import GaussianPosterior, attach_noise

VARIANTS = ("plain", "Flipout", "shared")


@dataclass
class Args:
    batches: list[int] = field(default_factory=lambda: [1024, 64])
    """Minibatch sizes."""
    steps: int = 60
    """Timed steps per variant and batch size (after 5 untimed ones)."""
    threads: int = 1
    """Torch CPU threads."""
    seed: int = 0
    """Seed of the weights, inputs and noise."""
    quick: bool = False
    """Batch 8 and 2 steps, for the smoke test."""


def make_model(variant: str) -> nn.Module:
    model = flipes.flipout(nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)))
    if variant != "plain":
        attach_noise(model, functools.partial(GaussianPosterior, flipout=variant == "Flipout"))
    return model.train()


def check(args: Args) -> None:
    """Raise a UsageError for sizes that leave nothing to time (a median of no steps) or no thread to time it on."""
    for name in ("steps", "threads"):
        if getattr(args, name) < 1:
            raise UsageError(option_name(name), f"must be at least 1, got {getattr(args, name)}", "pass a positive count")
    check_threads("--threads", args.threads, None)
    if not args.batches or min(args.batches) < 1:
        raise UsageError("--batches", f"must be at least 1 each, got {args.batches}", "e.g. --batches 1024 64")


def main(args: Args) -> dict[int, dict[str, float]]:
    check(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    batches, steps = ([8], 2) if args.quick else (args.batches, args.steps)
    result: dict[int, dict[str, float]] = {}
    print("| batch | variant | step ms | × plain |\n|---:|---|---:|---:|")
    for batch in batches:
        models = {v: make_model(v) for v in VARIANTS}
        optims = {v: torch.optim.Adam(m.parameters(), lr=1e-3) for v, m in models.items()}
        x, y = torch.randn(batch, 256), torch.randint(0, 10, (batch,))
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for i in range(5 + steps):
            for v in VARIANTS:  # in turns: a load change hits every variant alike
                start = time.perf_counter()
                loss = F.cross_entropy(models[v](x), y) + flipes.kl_divergence(models[v]) / 60_000
                optims[v].zero_grad(set_to_none=True)
                loss.backward()
                optims[v].step()
                if i >= 5:
                    times[v].append(time.perf_counter() - start)
        result[batch] = {v: statistics.median(t) * 1e3 for v, t in times.items()}
        for v in VARIANTS:
            print(f"| {batch:,} | {v} | {result[batch][v]:.2f} | {result[batch][v] / result[batch]['plain']:.1f} |")
    return result


if __name__ == "__main__":
    run(main, Args, description=__doc__)
