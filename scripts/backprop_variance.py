"""Fig. 1 of the Flipout paper for backprop gradients: gradient variance against batch size.

    python scripts/backprop_variance.py                  # PNG in scripts/results/, markdown table
    python scripts/backprop_variance.py --quick true     # a tiny run (the smoke test)

Wen, Vicol, Ba, Grosse & Tran, "Flipout", ICLR 2018 (arXiv:1803.04386), Fig. 1; the local
reparameterization trick (LRT) is Kingma, Salimans & Welling, NeurIPS 2015 (arXiv:1506.02557).

A mean-field Gaussian posterior (Bayes by Backprop, Blundell et al., 2015) on three networks on
scikit-learn's digits: an MLP, a small ConvNet and an LSTM reading the image row by row. The mean
weights are those of a briefly trained deterministic network, every posterior σ is ``--sigma``.
For each batch size N, ``--repeats`` draws of a minibatch (with replacement) and of the weight
noise give gradients of the mean cross-entropy w.r.t. the mean weights and biases; the plotted
variance is the total over those parameters. "shared": one weight sample per minibatch (the
usual estimator); "Flipout": ``flipes.nn`` layers with per-example signs; "LRT" (MLP only):
Gaussian pre-activations with the exact per-example mean and variance. The variance from the
data falls like 1/N; the part from a shared weight sample does not, so "shared" levels off.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from digits import data
from repro_common import check_at_least, require_matplotlib
from torch import Tensor, nn

import flipes
from flipes.cli import run
from flipes.config import check_threads
from flipes.nn import FlipoutLinear, FlipoutLSTM, GaussianPosterior, attach_noise
from flipes.nn.variational import layer_noise


@dataclass
class Args:
    sizes: list[int] = field(default_factory=lambda: [1, 4, 16, 64, 256, 1024])
    """Batch sizes N at which the gradient variance is measured (two different ones or more; measured in order)."""
    repeats: int = 200
    """Gradient draws at N >= 64 (up to 16× more at small N; ConvNet and LSTM half)."""
    sigma: float = 0.05
    """Posterior standard deviation of every weight and bias."""
    pretrain_epochs: int = 10
    """Deterministic Adam epochs that set the mean weights."""
    hidden: int = 128
    """Hidden units of the MLP's two layers and of the LSTM."""
    seed: int = 0
    """Seed of the initial weights, the minibatches and the weight noise."""
    threads: int = 1
    """Torch CPU threads."""
    quick: bool = False
    """Tiny sizes and repeats, for the smoke test."""
    out: str = "scripts/results"
    """Directory of backprop_variance.png (backprop_variance_quick.png with --quick)."""


class RowLSTM(nn.Module):
    """An 8×8 image as a sequence of 8 rows of 8 pixels; the last hidden state classifies."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.lstm = FlipoutLSTM(8, hidden, batch_first=True)
        self.head = FlipoutLinear(hidden, 10)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x.view(-1, 8, 8))
        return self.head(out[:, -1])


def make_net(kind: str, hidden: int) -> nn.Module:
    if kind == "FC":
        return flipes.flipout(
            nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        )
    if kind == "ConvNet":
        return flipes.flipout(
            nn.Sequential(
                nn.Unflatten(1, (1, 8, 8)),
                nn.Conv2d(1, 16, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Flatten(),
                nn.Linear(32 * 4 * 4, 10),
            )
        )
    return RowLSTM(hidden)


def mean_params(model: nn.Module) -> list[nn.Parameter]:
    """The posterior means: every Flipout layer's weights and biases (not the σ parameters)."""
    return [
        p
        for layer in flipes.nn.flipout_layers(model)
        for pw in layer.perturbed_weights()
        for p in (pw.weight, pw.bias)
        if p is not None
    ]


def lrt_forward(model: nn.Sequential, x: Tensor) -> Tensor:
    """The local reparameterization trick for an MLP of FlipoutLinear layers with Gaussian
    posteriors: each pre-activation ~ N(x W̄ᵀ + b̄, x² σ_Wᵀ² + σ_b²), independent per example."""
    for module in model:
        if isinstance(module, FlipoutLinear):
            post = layer_noise(module).slots[0]
            mean = F.linear(x, module.weight, module.bias)
            var = F.linear(x.square(), post.weight_sigma().square(), post.bias_sigma().square())
            x = mean + var.sqrt() * torch.randn_like(mean)
        else:
            x = module(x)
    return x


def total_variance(
    forward: Callable[[Tensor], Tensor], params: list[nn.Parameter], x: Tensor, y: Tensor, n: int, repeats: int, seed: int
) -> float:
    """Σ over parameters of the variance of ∇ mean-cross-entropy over draws of data and noise.

    The minibatches come from their own generator keyed by ``seed``: every method sees the same
    sequence of minibatches (common random numbers), so their difference is the weight noise.
    Small batches get more draws (they are cheap, and one example's gradient is heavy-tailed).
    """
    gen = torch.Generator().manual_seed(seed)
    grads = []
    for _ in range(repeats * min(16, max(1, 64 // n))):
        idx = torch.randint(len(x), (n,), generator=gen)
        g = torch.autograd.grad(F.cross_entropy(forward(x[idx]), y[idx]), params)
        grads.append(torch.cat([t.flatten() for t in g]))
    return torch.stack(grads).double().var(0).sum().item()


def slope(sizes: list[int], values: list[float]) -> float:
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def check(args: Args) -> None:
    """A UsageError (one line) for an option that leaves nothing to measure, before any training: a posterior σ that
    is not a finite number > 0 (GaussianPosterior's ValueError came after the FC's pretraining, as a traceback)."""
    check_at_least(args, {"sizes": 1, "repeats": 2, "hidden": 1, "pretrain_epochs": 0, "threads": 1})
    check_threads("--threads", args.threads, None)
    if not (math.isfinite(args.sigma) and args.sigma > 0):
        raise flipes.UsageError("--sigma", f"must be a finite number > 0, got {args.sigma}", "e.g. 0.05")
    if len(set(args.sizes)) < 2:  # a slope through one point was numpy's RankWarning and a number that meant nothing
        raise flipes.UsageError(
            "--sizes", f"needs two different batch sizes or more to fit a slope, got {args.sizes}", "e.g. 1 4 16"
        )


def large_sizes(sizes: list[int]) -> list[int]:
    """The batch sizes of the second slope (``sizes`` sorted, distinct): those >= 64 where two or more are, else the
    largest two, so that it is always a fit through two points or more."""
    big = [n for n in sizes if n >= 64]
    return big if len(big) >= 2 else sizes[-2:]


def main(args: Args) -> dict[str, dict[str, list[float]]]:
    require_matplotlib()  # the figure is drawn once the run ends: said before it starts
    if args.quick:
        args.sizes, args.repeats, args.hidden, args.pretrain_epochs = [1, 4, 16], 6, 16, 1
    check(args)
    args.sizes = sorted(set(args.sizes))  # the table's first and last are the smallest and largest
    torch.set_num_threads(args.threads)
    x, y, _, _ = data()
    results: dict[str, dict[str, list[float]]] = {}
    start = time.perf_counter()
    for kind in ("FC", "ConvNet", "LSTM"):
        torch.manual_seed(args.seed)
        model = make_net(kind, args.hidden)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(args.pretrain_epochs):  # deterministic training sets the means
            for idx in torch.randperm(len(x)).split(64):
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
        params = mean_params(model)
        repeats = args.repeats if kind == "FC" else max(2, args.repeats // 2)
        methods = {"shared": False, "Flipout": True}
        results[kind] = {}
        for name, flip in methods.items():
            attach_noise(model, functools.partial(GaussianPosterior, init_sigma=args.sigma, flipout=flip))
            results[kind][name] = [total_variance(model, params, x, y, n, repeats, args.seed + n) for n in args.sizes]
        if kind == "FC":
            lrt = functools.partial(lrt_forward, model)
            results[kind]["LRT"] = [total_variance(lrt, params, x, y, n, repeats, args.seed + n) for n in args.sizes]
        print(f"  {kind}: {time.perf_counter() - start:.0f} s", flush=True)

    big = large_sizes(args.sizes)
    tail = [args.sizes.index(n) for n in big]
    first, last = args.sizes[0], args.sizes[-1]
    print(f"\n| net | method | slope, N = {first}..{last} | slope, N = {big[0]}..{last} | variance at N={first} | at N={last} |")
    print("|---|---|---|---|---|---|")
    for kind, rows in results.items():
        for name, v in rows.items():
            steep, flat = slope(args.sizes, v), slope(big, [v[i] for i in tail])
            print(f"| {kind} | {name} | {steep:.2f} | {flat:.2f} | {v[0]:.3g} | {v[-1]:.3g} |")
    ratio = [f / lrt for f, lrt in zip(results["FC"]["Flipout"], results["FC"]["LRT"], strict=True)]
    print(
        "\nFC, Flipout / LRT variance per batch size: "
        + ", ".join(f"N={n}: {r:.2f}" for n, r in zip(args.sizes, ratio, strict=True))
    )
    plot(results, args.sizes, Path(args.out) / ("backprop_variance_quick.png" if args.quick else "backprop_variance.png"))
    return results


def plot(results: dict[str, dict[str, list[float]]], sizes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"shared": ("tab:red", "s"), "Flipout": ("tab:blue", "o"), "LRT": ("tab:green", "^")}
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6))
    for ax, (kind, rows) in zip(np.atleast_1d(axes), results.items(), strict=True):
        for name, v in rows.items():
            color, marker = styles[name]
            ax.loglog(sizes, v, marker=marker, color=color, label=f"{name} (slope {slope(sizes, v):.2f})")
        ref = rows["Flipout"][0]
        ax.loglog(sizes, [ref / n for n in sizes], "k:", lw=1, label="1/N")
        ax.set(title=kind, xlabel="batch size N")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    np.atleast_1d(axes)[0].set_ylabel("gradient variance (total over mean weights)")
    fig.suptitle("Backprop gradient variance, Bayes by Backprop on digits: shared vs Flipout vs LRT", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    run(main, Args, description=__doc__)
