"""A Bayesian MLP on digits with Flipout (Bayes by Backprop), beside the same network without noise.

    python scripts/bayes_digits.py                       # 5 seeds, a markdown table of the results
    python scripts/bayes_digits.py --kl-weights 1.0 --seeds 0

Blundell, Cornebise, Kavukcuoglu & Wierstra, "Weight Uncertainty in Neural Networks" (ICML 2015,
arXiv:1505.05424), with Flipout's per-example weight samples (Wen et al., ICLR 2018).

scikit-learn's digits (80/20 split of ``scripts/digits.py``), a 64-100-10 ReLU MLP of
``flipes.nn`` layers. The Bayesian network has a mean-field Gaussian posterior on every weight and
bias (``flipes.nn.GaussianPosterior``) and minimizes, per minibatch,

    mean cross-entropy + β · KL(q ‖ N(0, prior_sigma²)) / M         (M = training examples)

which for β = 1 is the negative ELBO per example; β < 1 is a tempered ("cold") posterior. At
test time it predicts with the mean of ``--samples`` sampled networks' probabilities. The
deterministic network is the same MLP trained the same way (Adam, epochs, batch) without noise.
Reported: test accuracy, expected calibration error (ECE, 15 equal-width confidence bins;
``expected_calibration_error`` below) and test negative log-likelihood.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from digits import data
from torch import Tensor, nn

import flipes
from flipes.cli import parse_config
from flipes.nn import GaussianPosterior, attach_noise, sample_weights


@dataclass
class Args:
    hidden: int = 100
    epochs: int = 100
    batch: int = 64
    lr: float = 1e-2
    prior_sigma: float = 1.0
    init_sigma: float = 1e-3
    kl_weights: list[float] = field(default_factory=lambda: [1.0, 0.03])  # β: 1 is the ELBO
    samples: int = 20  # sampled networks averaged at test time
    bins: int = 15
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    threads: int = 1


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = 15) -> float:
    """Σ_b |B_b|/n · |accuracy(B_b) − mean confidence(B_b)| over equal-width confidence bins
    ``(k/bins, (k+1)/bins]`` (Guo et al., ICML 2017); confidence = the top class probability."""
    conf, pred = probs.max(1)
    correct = (pred == labels).double()
    which = (conf.double() * bins).ceil().clamp(1, bins).long() - 1  # bin k holds (k/bins, (k+1)/bins]
    total = 0.0
    for k in which.unique().tolist():
        mask = which == k
        total += mask.double().mean().item() * abs(correct[mask].mean().item() - conf[mask].double().mean().item())
    return total


def train(args: Args, seed: int, kl_weight: float | None) -> tuple[float, float, float, float]:
    """(test accuracy %, ECE, test NLL, seconds); ``kl_weight=None``: the deterministic network."""
    torch.manual_seed(seed)
    x, y, x_test, y_test = data()
    model = flipes.flipout(nn.Sequential(nn.Linear(64, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 10)))
    if kl_weight is not None:
        attach_noise(model, functools.partial(GaussianPosterior, prior_sigma=args.prior_sigma, init_sigma=args.init_sigma))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)  # after attach_noise: includes ρ
    start = time.perf_counter()
    for _ in range(args.epochs):
        for idx in torch.randperm(len(x)).split(args.batch):
            loss = F.cross_entropy(model(x[idx]), y[idx])  # every example its own weights (Flipout)
            if kl_weight is not None:
                loss = loss + kl_weight * flipes.kl_divergence(model) / len(x)
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start

    model.eval()
    with torch.no_grad():
        if kl_weight is None:
            probs = model(x_test).softmax(1)
        else:
            with sample_weights(model):  # the predictive mean over sampled networks
                probs = torch.stack([model(x_test).softmax(1) for _ in range(args.samples)]).mean(0)
    accuracy = (probs.argmax(1) == y_test).double().mean().item() * 100
    nll = F.nll_loss(probs.clamp_min(1e-12).log(), y_test).item()
    return accuracy, expected_calibration_error(probs, y_test, args.bins), nll, seconds


def main(args: Args) -> dict[str, list[tuple[float, float, float, float]]]:
    torch.set_num_threads(args.threads)
    methods: dict[str, float | None] = {"deterministic": None}
    for beta in args.kl_weights:
        methods[f"Bayes by Backprop (Flipout), β={beta:g}"] = beta
    results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in methods}
    print("| seed | method | test accuracy | ECE (15 bins) | test NLL | train s |\n|---|---|---|---|---|---|")
    for seed in args.seeds:
        for name, beta in methods.items():
            acc, ece, nll, seconds = train(args, seed, beta)
            results[name].append((acc, ece, nll, seconds))
            print(f"| {seed} | {name} | {acc:.2f}% | {ece:.4f} | {nll:.4f} | {seconds:.1f} |", flush=True)
    print(
        "\n| method | mean test accuracy | mean ECE | mean NLL | seeds with lower ECE than deterministic |\n|---|---|---|---|---|"
    )
    base = results["deterministic"]
    for name, rows in results.items():
        n = len(rows)
        mean = [sum(r[i] for r in rows) / n for i in range(3)]
        wins = "" if name == "deterministic" else f"{sum(r[1] < b[1] for r, b in zip(rows, base, strict=True))} / {n}"
        print(f"| {name} | {mean[0]:.2f}% | {mean[1]:.4f} | {mean[2]:.4f} | {wins} |")
    return results


if __name__ == "__main__":
    main(parse_config(Args, description=__doc__))
