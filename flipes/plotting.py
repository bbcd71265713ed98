"""Learning curves of run directories (needs matplotlib: ``pip install flipes[plot]``)."""

from __future__ import annotations

import os
from pathlib import Path

from flipes.checkpoint import discard
from flipes.runs import read_metrics


def plot_runs(runs: list[str | Path], out: str | Path, x: str = "generation") -> Path:
    """Population fitness (mean, max, and the best member's with ``--track-best``) and center-policy
    ``eval_return`` against ``x``
    (``generation``, ``timesteps`` or ``seconds``), one color per run, to a PNG at ``out`` (or SVG, PDF by
    its suffix), replaced all at once: a failed write (a full disk) leaves the file that was there. Each run is
    labelled by the end of its path that tells it from the others (:func:`run_labels`).

    Raises:
        OSError: ``out`` cannot be written.
    """
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    runs = [Path(run) for run in runs]
    for run, name in zip(runs, run_labels(runs), strict=True):
        rows = read_metrics(run)
        mean, top = _series(rows, x, "fitness_mean"), _series(rows, x, "fitness_max")
        (line,) = axes[0].plot(*mean, label=f"{name} mean")
        axes[0].plot(*top, ls=":", color=line.get_color(), label=f"{name} max")
        kept = _series(rows, x, "best_member_fitness")  # --track-best
        if kept[0]:
            axes[0].plot(*kept, ls="--", color=line.get_color(), label=f"{name} best member")
        evals = _series(rows, x, "eval_return")
        if evals[0]:
            axes[1].plot(*evals, marker=".", color=line.get_color(), label=name)
    axes[0].set(title="population fitness", xlabel=x, ylabel="fitness")
    axes[1].set(title="center policy (eval_return)", xlabel=x, ylabel="mean return")
    for ax in axes:
        if x == "timesteps":  # 100k, 1.5M: six-digit counts written out run into each other on a half-width axes
            ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, dpi=100, format=out.suffix.lstrip(".").lower() or "png")
        os.replace(tmp, out)
    except BaseException:
        discard(tmp)
        raise
    finally:
        plt.close(fig)
    return out


def run_labels(runs: list[Path]) -> list[str]:
    """Each run's legend label: the fewest trailing parts of its path, as many for every run, that tell the runs apart
    (``CartPole-v1``, or ``seed0/CartPole-v1`` beside ``seed1/CartPole-v1``: runs in the default ``runs/<env name>``
    of several directories share their name); the whole path where no suffix does."""
    parts = [run.absolute().parts for run in runs]
    for k in range(1, max(map(len, parts), default=0) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(run) for run in runs]


def _series(rows: list[dict], x: str, y: str) -> tuple[list, list]:
    """The (x, y) points of the rows that hold both as numbers (``null``, a non-finite value, as a gap);
    a row edited by hand or written by other code may lack either."""
    points = [(r[x], r[y]) for r in rows if _number(r.get(x)) and r.get(x) is not None and y in r and _number(r[y])]
    return [p[0] for p in points], [p[1] for p in points]


def _number(value: object) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))
