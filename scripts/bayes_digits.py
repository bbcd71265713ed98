"""A Bayesian MLP on digits with Flipout (Bayes by Backprop), beside the same network without noise.

    python scripts/bayes_digits.py                       # select β on validation, then 5 test seeds
    python scripts/bayes_digits.py --betas 1 0.1 --select-seeds 0 --seeds 0

Blundell, Cornebise, Kavukcuoglu & Wierstra, "Weight Uncertainty in Neural Networks" (ICML 2015,
arXiv:1505.05424), with Flipout's per-example weight samples (Wen et al., ICLR 2018).

scikit-learn's digits (80/20 train/test split of ``scripts/digits.py``), a 64-100-10 ReLU MLP of
``flipes.nn`` layers. The Bayesian network has a mean-field Gaussian posterior on every weight and
bias (``flipes.nn.GaussianPosterior``) and minimizes, per minibatch,

    mean cross-entropy + β · KL(q ‖ N(0, prior_sigma²)) / M         (M = training examples)

which for β = 1 is the negative ELBO per example; β < 1 is a tempered ("cold") posterior. At
evaluation it predicts with the mean of ``--samples`` sampled networks' probabilities. The
deterministic network is the same MLP trained the same way (Adam, epochs, batch) without noise.

Two steps, and the test split takes part in neither choice:

1. Select β. A validation split (``--val-fraction`` of the training split, fixed ``--split-seed``,
   the same for every run) is held out; the network trains on the rest for each β of ``--betas``
   and each of ``--select-seeds``, and the β with the lowest mean validation negative
   log-likelihood wins (NLL is a proper scoring rule: it rewards both accuracy and calibration,
   so it does not favour ECE by construction). Validation accuracy and ECE are printed beside it.
2. Test. Deterministic, Bayesian at the selected β and Bayesian at β = 1 (the ELBO, for
   reference) train on the FULL training split for each of ``--seeds``; reported: test accuracy,
   expected calibration error (ECE, 15 equal-width confidence bins; ``expected_calibration_error``
   below) and test NLL, per seed and mean, to ``--out``/bayes_digits.{md,json}.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from digits import data
from repro_common import check_at_least
from torch import Tensor, nn

import flipes
from flipes.cli import option_name, run
from flipes.config import check_threads
from flipes.nn import GaussianPosterior, attach_noise, sample_weights


@dataclass
class Args:
    hidden: int = 100
    """Hidden units of the 64-hidden-10 ReLU MLP."""
    epochs: int = 100
    """Training epochs of every network."""
    batch: int = 64
    """Minibatch size."""
    lr: float = 1e-2
    """Adam learning rate."""
    prior_sigma: float = 1.0
    """Standard deviation of the Gaussian prior N(0, prior_sigma²) on every weight and bias."""
    init_sigma: float = 1e-3
    """Initial posterior standard deviation of every weight and bias."""
    betas: list[float] = field(default_factory=lambda: [1.0, 0.3, 0.1, 0.03, 0.01])
    """KL weights to select from."""
    val_fraction: float = 0.2
    """Fraction of the training split held out for selecting β."""
    split_seed: int = 0
    """Seed of the train/validation split: the same for every run."""
    select_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds of the β-selection runs on the validation split."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """Seeds of the test runs on the full training split."""
    samples: int = 20
    """Sampled networks averaged at evaluation."""
    bins: int = 15
    """Equal-width confidence bins of the expected calibration error."""
    threads: int = 1
    """Torch CPU threads."""
    out: str = "scripts/results"
    """Directory of bayes_digits.md and bayes_digits.json."""


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


def validation_split(x: Tensor, y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_fit, y_fit, x_val, y_val)``: a fixed random ``fraction`` of the training split held out."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = round(fraction * len(x))
    return x[order[n_val:]], y[order[n_val:]], x[order[:n_val]], y[order[:n_val]]


def train(args: Args, seed: int, kl_weight: float | None, x: Tensor, y: Tensor) -> tuple[nn.Module, float]:
    """The trained model and seconds; ``kl_weight=None``: the deterministic network."""
    torch.manual_seed(seed)
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
    return model, time.perf_counter() - start


def evaluate(args: Args, model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float, float]:
    """(accuracy %, ECE, NLL) of the predictive: the mean over ``samples`` sampled networks when
    the model has a posterior (the same for a deterministic model, whose samples are all equal)."""
    model.eval()
    with torch.no_grad(), sample_weights(model):
        probs = torch.stack([model(x).softmax(1) for _ in range(args.samples)]).mean(0)
    accuracy = (probs.argmax(1) == y).double().mean().item() * 100
    nll = F.nll_loss(probs.clamp_min(1e-12).log(), y).item()
    return accuracy, expected_calibration_error(probs, y, args.bins), nll


def mean(rows: list[dict[str, float]], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def check(args: Args) -> None:
    """A UsageError (one line) for a size or fraction that leaves nothing to train, validate or evaluate, or a posterior
    σ GaussianPosterior refuses (its ValueError came at the first training, as a traceback)."""
    check_at_least(args, {"hidden": 1, "epochs": 1, "batch": 1, "betas": 0, "select_seeds": 0, "seeds": 0})
    check_at_least(args, {"samples": 1, "bins": 1, "threads": 1, "prior_sigma": 1e-12, "init_sigma": 1e-12})
    check_threads("--threads", args.threads, None)
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise flipes.UsageError("--lr", f"must be a finite number > 0, got {args.lr}", "e.g. 0.01")
    for name in ("prior_sigma", "init_sigma", "betas"):  # a NaN passes check_at_least's `<`
        value = getattr(args, name)
        if not all(math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
            raise flipes.UsageError(option_name(name), f"must be finite, got {value}")
    if not 0 < args.val_fraction < 1:
        raise flipes.UsageError("--val-fraction", f"must be between 0 and 1, got {args.val_fraction}", "e.g. 0.2")
    try:  # GaussianPosterior's own test of the pair (σ or the KL term out of float32's range), before any training
        posterior = functools.partial(GaussianPosterior, prior_sigma=args.prior_sigma, init_sigma=args.init_sigma)
        attach_noise(flipes.flipout(nn.Linear(1, 1)), posterior)
    except ValueError:
        raise flipes.UsageError(
            "--init-sigma",
            f"{args.init_sigma:g} with --prior-sigma {args.prior_sigma:g} gives an infinite KL term in float32",
            "choose values nearer 1, e.g. --init-sigma 0.001 --prior-sigma 1",
        ) from None


def main(args: Args) -> dict:
    check(args)
    torch.set_num_threads(args.threads)
    x, y, x_test, y_test = data()
    x_fit, y_fit, x_val, y_val = validation_split(x, y, args.val_fraction, args.split_seed)
    if not (len(x_fit) and len(x_val)):  # an empty split gave NaN validation NLLs, and min() "selected" the first β
        raise flipes.UsageError(
            "--val-fraction",
            f"{args.val_fraction:g} of the {len(x)} training examples holds out {len(x_val)} for validation and leaves "
            f"{len(x_fit)} to train on",
            "give a fraction that leaves at least one example to each, e.g. 0.2",
        )
    start = time.perf_counter()

    # 1. Select β by mean validation NLL, training on the training split minus the validation split.
    print(f"Selecting β on validation: {len(x_fit)} train / {len(x_val)} validation examples (test unused)")
    print("| β | seed | val accuracy | val ECE | val NLL | train s |\n|---|---|---|---|---|---|")
    val: dict[float, list[dict[str, float]]] = {beta: [] for beta in args.betas}
    for beta in args.betas:
        for seed in args.select_seeds:
            model, seconds = train(args, seed, beta, x_fit, y_fit)
            acc, ece, nll = evaluate(args, model, x_val, y_val)
            val[beta].append({"seed": seed, "accuracy": acc, "ece": ece, "nll": nll, "seconds": seconds})
            print(f"| {beta:g} | {seed} | {acc:.2f}% | {ece:.4f} | {nll:.4f} | {seconds:.1f} |", flush=True)
    best = min(args.betas, key=lambda beta: mean(val[beta], "nll"))
    reference = []  # the deterministic network on validation: shown beside, not a candidate
    for seed in args.select_seeds:
        model, seconds = train(args, seed, None, x_fit, y_fit)
        acc, ece, nll = evaluate(args, model, x_val, y_val)
        reference.append({"seed": seed, "accuracy": acc, "ece": ece, "nll": nll, "seconds": seconds})
        print(f"| deterministic | {seed} | {acc:.2f}% | {ece:.4f} | {nll:.4f} | {seconds:.1f} |", flush=True)
    val_lines = ["| β | mean val NLL | mean val accuracy | mean val ECE |", "|---|---|---|---|"]
    for beta, rows in [*val.items(), ("deterministic (reference)", reference)]:
        name = beta if isinstance(beta, str) else f"{beta:g}{' **(selected)**' if beta == best else ''}"
        val_lines.append(f"| {name} | {mean(rows, 'nll'):.4f} | {mean(rows, 'accuracy'):.2f}% | {mean(rows, 'ece'):.4f} |")
    print("\n" + "\n".join(val_lines) + f"\n\nSelected β = {best:g} (lowest mean validation NLL)\n", flush=True)

    # 2. Test: train on the full training split, evaluate on the test split once per seed.
    methods: dict[str, float | None] = {"deterministic": None, f"Bayes by Backprop, β={best:g} (selected)": best}
    if best != 1.0:
        methods["Bayes by Backprop, β=1 (ELBO)"] = 1.0
    test: dict[str, list[dict[str, float]]] = {name: [] for name in methods}
    test_lines = ["| seed | method | test accuracy | test ECE | test NLL | train s |", "|---|---|---|---|---|---|"]
    print("\n".join(test_lines), flush=True)
    for seed in args.seeds:
        for name, beta in methods.items():
            model, seconds = train(args, seed, beta, x, y)
            acc, ece, nll = evaluate(args, model, x_test, y_test)
            test[name].append({"seed": seed, "accuracy": acc, "ece": ece, "nll": nll, "seconds": seconds})
            test_lines.append(f"| {seed} | {name} | {acc:.2f}% | {ece:.4f} | {nll:.4f} | {seconds:.1f} |")
            print(test_lines[-1], flush=True)

    base = test["deterministic"]
    mean_lines = [
        "| method | mean test accuracy | Δ accuracy vs deterministic | mean test ECE | mean test NLL "
        "| seeds within 1 point | seeds with lower ECE |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in test.items():
        acc = mean(rows, "accuracy")
        cells = [name, f"{acc:.2f}%", "", f"{mean(rows, 'ece'):.4f}", f"{mean(rows, 'nll'):.4f}", "", ""]
        if rows is not base:
            n = len(rows)
            within = sum(r["accuracy"] >= b["accuracy"] - 1 for r, b in zip(rows, base, strict=True))
            lower = sum(r["ece"] < b["ece"] for r, b in zip(rows, base, strict=True))
            cells[2], cells[5], cells[6] = f"{acc - mean(base, 'accuracy'):+.2f}", f"{within} / {n}", f"{lower} / {n}"
        mean_lines.append("| " + " | ".join(cells) + " |")
    chosen = test[f"Bayes by Backprop, β={best:g} (selected)"]
    gap = mean(chosen, "accuracy") - mean(base, "accuracy")
    holds = gap >= -1 and mean(chosen, "ece") < mean(base, "ece")
    pairs = list(zip(chosen, base, strict=True))
    within = sum(c["accuracy"] >= b["accuracy"] - 1 for c, b in pairs)
    lower = sum(c["ece"] < b["ece"] for c, b in pairs)
    verdict = (
        f"Target (selected β = {best:g}: mean test accuracy within 1 point of deterministic and lower mean "
        f"test ECE): {'HOLDS' if holds else 'DOES NOT HOLD'} on means (accuracy {gap:+.2f} points, within 1 point "
        f"on {within} / {len(pairs)} seeds; ECE {mean(chosen, 'ece'):.4f} vs {mean(base, 'ece'):.4f}, lower on "
        f"{lower} / {len(pairs)} seeds)"
    )
    total = time.perf_counter() - start
    print("\n" + "\n".join(mean_lines) + f"\n\n{verdict}\nTotal time {total:.0f} s", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = [
        "# Bayes by Backprop (Flipout) on digits: β selected on validation, then tested",
        "",
        f"Validation: {len(x_val)} of the {len(x)} training images (split seed {args.split_seed}), "
        f"training on the other {len(x_fit)}; seeds {', '.join(map(str, args.select_seeds))}; "
        "β chosen by the lowest mean validation NLL. The test split took no part in the choice.",
        "",
        *val_lines,
        "",
        f"Test: trained on all {len(x)} training images, evaluated on {len(x_test)} test images, "
        f"seeds {', '.join(map(str, args.seeds))}.",
        "",
        *mean_lines,
        "",
        *test_lines,
        "",
        verdict,
        "",
    ]
    (out / "bayes_digits.md").write_text("\n".join(md), encoding="utf-8")
    validation = {f"{b:g}": r for b, r in val.items()} | {"deterministic": reference}
    result = {"args": asdict(args), "selected_beta": best, "validation": validation}
    result |= {"test": test, "must_show_holds": holds, "seconds": total}
    (out / "bayes_digits.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    run(main, Args, description=__doc__)
