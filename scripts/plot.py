"""Learning curves of one or more run directories to a PNG.

    python scripts/plot.py runs/cartpole runs/cartpole-seed1 --x timesteps --out curves.png

Each run's ``metrics.jsonl`` gives fitness mean and max (population) and, where evaluated, the
center policy's ``eval_return``, against ``generation``, ``timesteps`` or ``seconds``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt


@dataclass
class Args:
    runs: list[str] = field(default_factory=list)
    x: str = "generation"  # generation | timesteps | seconds
    out: str = ""  # default: RUN/curves.png for one run, curves.png for several


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories holding metrics.jsonl")
    parser.add_argument("--x", choices=["generation", "timesteps", "seconds"], default="generation")
    parser.add_argument("--out", default="")
    return Args(**vars(parser.parse_args(argv)))


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        raise SystemExit(f"{run}: no metrics.jsonl; pass a run directory written by scripts/train.py")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot(runs: list[Path], x: str, out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for run in runs:
        rows = read_metrics(run)
        xs = [r[x] for r in rows]
        (line,) = axes[0].plot(xs, [r["fitness_mean"] for r in rows], label=f"{run.name} mean")
        axes[0].plot(xs, [r["fitness_max"] for r in rows], ls=":", color=line.get_color(), label=f"{run.name} max")
        evals = [(r[x], r["eval_return"]) for r in rows if "eval_return" in r]
        if evals:
            axes[1].plot(*zip(*evals, strict=True), marker=".", color=line.get_color(), label=run.name)
    axes[0].set(title="population fitness", xlabel=x, ylabel="return")
    axes[1].set(title="center policy (eval_return)", xlabel=x, ylabel="mean return")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(args: Args) -> Path:
    runs = [Path(r) for r in args.runs]
    out = Path(args.out) if args.out else (runs[0] / "curves.png" if len(runs) == 1 else Path("curves.png"))
    return plot(runs, args.x, out)


if __name__ == "__main__":
    print(main(parse_args()))
