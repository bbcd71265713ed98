"""Learning curves of run directories (needs matplotlib: ``pip install flipes[plot]``)."""

from __future__ import annotations

from pathlib import Path

from flipes.runs import read_metrics


def plot_runs(runs: list[str | Path], out: str | Path, x: str = "generation") -> Path:
    """Population fitness (mean, max, and the best member's with ``--track-best``) and center-policy
    ``eval_return`` against ``x``
    (``generation``, ``timesteps`` or ``seconds``), one color per run, to a PNG at ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for run in map(Path, runs):
        rows = read_metrics(run)
        xs = [r[x] for r in rows]
        (line,) = axes[0].plot(xs, [r["fitness_mean"] for r in rows], label=f"{run.name} mean")
        axes[0].plot(xs, [r["fitness_max"] for r in rows], ls=":", color=line.get_color(), label=f"{run.name} max")
        kept = [(r[x], r["best_member_fitness"]) for r in rows if "best_member_fitness" in r]  # --track-best
        if kept:
            axes[0].plot(*zip(*kept, strict=True), ls="--", color=line.get_color(), label=f"{run.name} best member")
        evals = [(r[x], r["eval_return"]) for r in rows if "eval_return" in r]
        if evals:
            axes[1].plot(*zip(*evals, strict=True), marker=".", color=line.get_color(), label=run.name)
    axes[0].set(title="population fitness", xlabel=x, ylabel="fitness")
    axes[1].set(title="center policy (eval_return)", xlabel=x, ylabel="mean return")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
