"""Learning curves of run directories (needs matplotlib: ``pip install flipes[plot]``): one line per run
(:func:`plot_runs`), or the seeds of each setting as one mean curve with a band (:func:`plot_groups`, of
:mod:`flipes.seeds`' aggregates)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

from flipes.checkpoint import discard
from flipes.runs import read_metrics, run_labels, series
from flipes.seeds import METRICS, Aggregate, Group

# --band: what the shaded area around a group's mean is, as the figure's titles name it
BANDS = MappingProxyType(
    {"ci95": "95% t-interval of the mean", "se": "± standard error", "minmax": "min to max of the seeds", "none": ""}
)


def plot_runs(runs: list[str | Path], out: str | Path, x: str = "generation") -> Path:
    """Population fitness (mean, max, and the best member's with ``--track-best``) and center-policy
    ``eval_return`` against ``x``
    (``generation``, ``timesteps`` or ``seconds``), one color per run, to a PNG at ``out`` (or SVG, PDF by
    its suffix), replaced all at once: a failed write (a full disk) leaves the file that was there. Each run is
    labelled by the end of its path that tells it from the others (:func:`flipes.runs.run_labels`).

    Raises:
        OSError: ``out`` cannot be written.
    """
    fig, axes = _figure()
    runs = [Path(run) for run in runs]
    for run, name in zip(runs, run_labels(runs), strict=True):
        rows = read_metrics(run)
        mean, top = series(rows, x, "fitness_mean"), series(rows, x, "fitness_max")
        (line,) = axes[0].plot(*mean, label=f"{name} mean")
        axes[0].plot(*top, ls=":", color=line.get_color(), label=f"{name} max")
        kept = series(rows, x, "best_member_fitness")  # --track-best
        if kept[0]:
            axes[0].plot(*kept, ls="--", color=line.get_color(), label=f"{name} best member")
        evals = series(rows, x, "eval_return")
        if evals[0]:
            axes[1].plot(*evals, marker=".", color=line.get_color(), label=name)
    axes[0].set(title="population fitness", xlabel=x, ylabel="fitness")
    axes[1].set(title="center policy (eval_return)", xlabel=x, ylabel="mean return")
    _finish(axes, x)
    return _save(fig, out)


def _figure() -> tuple:
    """A figure of two axes side by side: population fitness, center policy.

    A bare ``Figure`` rather than pyplot's: it needs no display and leaves the caller's process as it was, the backend
    (a notebook's inline one, which ``matplotlib.use("Agg")`` would replace) and pyplot's figures alike."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), constrained_layout=True)
    return fig, fig.subplots(1, 2)


def _finish(axes: Sequence, x: str) -> None:
    import matplotlib.ticker

    for ax in axes:
        if x == "timesteps":  # 100k, 1.5M: six-digit counts written out run into each other on a half-width axes
            ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)


def _save(fig: object, out: str | Path) -> Path:
    """Writes ``fig`` to ``out`` all at once (a temporary file renamed)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, dpi=100, format=out.suffix.lstrip(".").lower() or "png")
        os.replace(tmp, out)
    except BaseException:
        discard(tmp)
        raise
    return out


def plot_groups(groups: Sequence[Group], aggregates: Sequence[dict[str, Aggregate]], out: str | Path, x: str, band: str) -> Path:
    """Each group's mean fitness_mean (left) and eval_return (right) against ``x``, one color per group, drawn step-wise as
    :func:`flipes.seeds.aggregate` computes them, with ``band`` (:data:`BANDS`) shaded around the mean; the legend gives
    each group's number of runs, the titles the band. Written as :func:`plot_runs` writes.

    Raises:
        OSError: ``out`` cannot be written.
    """
    import matplotlib

    fig, axes = _figure()
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (group, metrics) in enumerate(zip(groups, aggregates, strict=True)):
        color = colors[i % len(colors)]
        for ax, metric in zip(axes, METRICS, strict=True):
            agg = metrics[metric]
            if not agg.x:
                continue
            label = f"{group.label} ({agg.n} seed{'s' * (agg.n != 1)})"
            ax.plot(agg.x, agg.mean, drawstyle="steps-post", color=color, label=label)
            low, high = _band(agg, band)
            if low is not None and agg.n > 1:
                ax.fill_between(agg.x, low, high, step="post", color=color, alpha=0.2, lw=0)
    shaded = f", band: {BANDS[band]}" if band != "none" else ""
    fig.suptitle(f"mean over seeds{shaded}", fontsize=10)
    axes[0].set(title="population fitness (fitness_mean)", xlabel=x, ylabel="fitness")
    axes[1].set(title="center policy (eval_return)", xlabel=x, ylabel="mean return")
    _finish(axes, x)
    return _save(fig, out)


def _band(agg: Aggregate, band: str) -> tuple[list[float] | None, list[float] | None]:
    if band == "ci95":
        return agg.ci95_low, agg.ci95_high
    if band == "se":
        return [m - s for m, s in zip(agg.mean, agg.se, strict=True)], [m + s for m, s in zip(agg.mean, agg.se, strict=True)]
    if band == "minmax":
        return agg.min, agg.max
    return None, None
