"""Learning curves of one or more run directories to a PNG.

    python scripts/plot.py runs/cartpole runs/cartpole-seed1 --x timesteps --out curves.png

Each run's ``metrics.jsonl`` gives fitness mean and max (population) and, where evaluated, the
center policy's ``eval_return``, against ``generation``, ``timesteps`` or ``seconds``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from flipes.plotting import plot_runs


@dataclass
class Args:
    runs: list[str] = field(default_factory=list)  # run directories holding metrics.jsonl
    x: str = "generation"  # generation | timesteps | seconds
    out: str = ""  # default: RUN/curves.png for one run, curves.png for several


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories holding metrics.jsonl")
    parser.add_argument("--x", choices=["generation", "timesteps", "seconds"], default="generation")
    parser.add_argument("--out", default="")
    return Args(**vars(parser.parse_args(argv)))


def main(args: Args) -> Path:
    out = Path(args.out) if args.out else (Path(args.runs[0]) / "curves.png" if len(args.runs) == 1 else Path("curves.png"))
    try:
        return plot_runs(args.runs, out, args.x)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    print(main(parse_args()))
