"""Supervised ES on real handwritten digits: the documented example of the fitness API.

    python scripts/digits.py                                   # FlipES vs backprop, same network
    PYTHONPATH=scripts python scripts/train.py --env none --model digits:make_model \\
        --fitness digits:fitness --popsize 1024 --sigma 0.05 --lr 0.03 --generations 200

scikit-learn's digits (1,797 8×8 images, shipped with the package) split 80/20 with a fixed seed.
A fitness function is any ``fitness(model, pop) -> Tensor[pop.size]``: here every member is
scored by minus its cross-entropy on one minibatch shared by the whole population. The minibatch
is a pure function of the generation, so the function keeps no state and runs unchanged under MPI.
The script prints the comparison as a markdown table and writes no file.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import flipes
from flipes.cli import option_name, run


@dataclass
class Args:
    popsize: int = 1024
    """Members per generation of FlipES."""
    sigma: float = 0.05
    """Perturbation scale σ of FlipES."""
    lr: float = 0.03
    """Adam learning rate of FlipES."""
    generations: int = 200
    """Generations of FlipES."""
    batch: int = 256
    """Training examples per generation (FlipES, shared by all members) and per backprop step."""
    hidden: int = 64
    """Hidden units of the 64-hidden-10 tanh MLP."""
    seed: int = 0
    """Seed of the initial weights and of FlipES's noise."""
    backprop_epochs: int = 100
    """Epochs of the backprop baseline (Adam, lr 0.01)."""


@functools.cache  # the data set is read once and never changed
def data(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)``; pixels scaled to [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError as e:  # the extra the README names; another missing module is scikit-learn's own
        if (e.name or "").partition(".")[0] != "sklearn":
            raise
        missing = "the data set needs scikit-learn, which is not installed"
        raise flipes.UsageError("digits", missing, "pip install 'flipes[examples]'") from None

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * len(x))
    return x[order[:split]], y[order[:split]], x[order[split:]], y[order[split:]]


def make_model(env: object = None, hidden: int = 64) -> nn.Module:
    """A 64-hidden-10 tanh MLP of Flipout layers (``env`` is unused: this task has none)."""
    return flipes.flipout(nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10)))


def fitness(model: nn.Module, pop: flipes.Population, batch: int = 256) -> Tensor:
    """Minus each member's cross-entropy on this generation's minibatch (shared by all members)."""
    x, y, _, _ = data()
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(pop.generation))[:batch]
    logits = model(x[idx].expand(pop.size, batch, 64))  # members first: (N, batch, 10)
    return -F.cross_entropy(logits.flatten(0, 1), y[idx].repeat(pop.size), reduction="none").view(pop.size, batch).mean(1)


@torch.no_grad()
def evaluate(model: nn.Module) -> float:
    """Test accuracy of the mean network, in percent."""
    _, _, x, y = data()
    return (model(x).argmax(1) == y).float().mean().item() * 100


def train_es(args: Args) -> tuple[float, float, int]:
    torch.manual_seed(args.seed)
    model = make_model(hidden=args.hidden)
    es = flipes.FlipES(model, popsize=args.popsize, sigma=args.sigma, lr=args.lr, seed=args.seed)
    start = time.perf_counter()
    for gen in range(args.generations):
        stats = es.step(functools.partial(fitness, batch=args.batch))
        if gen % 100 == 0 or gen == args.generations - 1:
            print(f"  ES gen {gen:4d}  train loss {-stats['fitness_mean']:.4f}  test accuracy {evaluate(model):.2f}%", flush=True)
    return evaluate(model), time.perf_counter() - start, args.generations * args.batch


def train_backprop(args: Args) -> tuple[float, float, int]:
    torch.manual_seed(args.seed)
    model = make_model(hidden=args.hidden)  # the same network; Flipout layers are plain layers here
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y, _, _ = data()
    start = time.perf_counter()
    seen = 0
    for _ in range(args.backprop_epochs):
        for idx in torch.randperm(len(x)).split(args.batch):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            seen += len(idx)
    return evaluate(model), time.perf_counter() - start, seen


def check(args: Args) -> None:
    """A UsageError (one line) for a size that leaves nothing to train, or an option FlipES or the minibatch would
    refuse with a traceback; the sizes before the data set is read."""
    for name, low in {"popsize": 2, "generations": 0, "batch": 1, "hidden": 1, "backprop_epochs": 0}.items():
        if getattr(args, name) < low:
            raise flipes.UsageError(option_name(name), f"must be at least {low}, got {getattr(args, name)}")
    if args.popsize % 2:  # FlipES's default mirrored sampling pairs the members
        raise flipes.UsageError("--popsize", f"mirrored pairs need an even population, got {args.popsize}", "e.g. 1024")
    if not (math.isfinite(args.sigma) and args.sigma > 0):  # a NaN passes `<= 0`
        raise flipes.UsageError("--sigma", f"must be a finite number > 0, got {args.sigma}", "e.g. 0.05")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise flipes.UsageError("--lr", f"must be a finite number > 0, got {args.lr}", "e.g. 0.03")
    examples = len(data()[0])  # the training split: a minibatch is drawn from it without replacement
    if args.batch > examples:
        raise flipes.UsageError("--batch", f"{args.batch} exceeds the {examples} training images", f"use at most {examples}")


def main(args: Args) -> dict[str, tuple[float, float, int]]:
    check(args)
    results = {"FlipES": train_es(args), "backprop (Adam)": train_backprop(args)}
    print("\n| method | test accuracy | wall s | examples seen |\n|---|---|---|---|")
    for name, (acc, seconds, seen) in results.items():
        print(f"| {name} | {acc:.2f}% | {seconds:.1f} | {seen:,} |")
    return results


if __name__ == "__main__":
    run(main, Args, description=__doc__)
