"""Runs of one setting across seeds: which runs are one setting's seeds (:func:`group_runs`, by their config.json or
their directory), and their curves as a mean with its spread on a common grid (:func:`aggregate`), for a figure
(:func:`flipes.plotting.plot_groups`), a CSV (:func:`write_csv`) and a line a paper can quote (:func:`summary`)."""

from __future__ import annotations

import bisect
import csv
import io
import itertools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from flipes.checkpoint import discard
from flipes.errors import UsageError
from flipes.runs import read_metrics, run_labels, series

GROUPINGS = ("none", "config", "parent")
# what a group's curves show: the population's mean fitness (left axes) and the center policy's return (right)
METRICS = ("fitness_mean", "eval_return")


@dataclass(frozen=True)
class Group:
    """Runs of one setting, its seeds, drawn as one mean curve; ``label`` is what tells it from the other groups."""

    label: str
    runs: tuple[Path, ...]


@dataclass(frozen=True)
class Aggregate:
    """One metric of a group's runs on a common x grid (:func:`aggregate`): ``n`` runs at every x; ``se``, ``ci95_low`` and
    ``ci95_high`` are NaN for a group of one run. ``ends`` holds each run's last x, the longest of which may lie past the
    grid's."""

    x: list[float]
    n: int
    mean: list[float]
    se: list[float]
    ci95_low: list[float]
    ci95_high: list[float]
    min: list[float]
    max: list[float]
    ends: tuple[float, ...]


def group_runs(runs: Sequence[str | Path], by: str) -> list[Group]:
    """The settings among ``runs``, in the order their first runs are given:

    - ``config``: runs whose ``config.json`` agree on every option a resume must keep
      (:data:`flipes.resume.RESUME_KEYS`) but ``seed``; options a resume may change (``--generations``, ``--eval-every``,
      ``--target``, ``--device``, ...) and ``--out`` do not split a setting. Each group is labelled by the options that
      tell the groups apart (``popsize=256``), a lone group by the last common part of its runs' paths.
    - ``parent``: runs in one directory (``runs/p64/seed0``, ``runs/p64/seed1``), labelled by the end of that
      directory's path that tells it from the others (:func:`flipes.runs.run_labels`); for runs without a ``config.json``.
    - ``none``: each run alone, labelled as :func:`flipes.plotting.plot_runs` labels it.

    Raises:
        UsageError: a run given twice; with ``config``, a run without ``config.json``; runs that cannot be one
            setting's seeds: the same seed twice, or (``parent``) options that differ in one directory.
    """
    if by not in GROUPINGS:
        raise ValueError(f"by={by!r}: one of {GROUPINGS}")
    paths = [Path(run) for run in runs]
    first: dict[Path, Path] = {}
    for path in paths:
        if first.setdefault(path.resolve(), path) is not path:
            raise UsageError(str(path), f"given twice (also as {first[path.resolve()]})", "pass each run once")
    if by == "none":
        return [Group(label, (path,)) for path, label in zip(paths, run_labels(paths), strict=True)]
    settings = {path: _setting(path, required=by == "config") for path in paths}
    members: dict[str, list[Path]] = {}
    for path in paths:
        key = str(path.absolute().parent) if by == "parent" else _key(settings[path])
        members.setdefault(key, []).append(path)
    for group in members.values():
        _check_seeds(group, settings)
    if by == "parent":
        labels = run_labels([Path(key) for key in members])
    else:
        labels = _config_labels([settings[group[0]] or {} for group in members.values()])
    if len(members) == 1:
        (group,) = members.values()
        common = Path(os.path.commonpath([path.absolute() for path in group]))
        labels = [common.name or str(common)]
    return [Group(label, tuple(group)) for label, group in zip(labels, members.values(), strict=True)]


def seeds_hint(runs: Sequence[str | Path]) -> str:
    """For a plot of one line per run: a line suggesting ``--group config`` where some runs are seeds of one setting by
    their config.json; empty where none are, or some run has no readable config.json."""
    try:
        groups = group_runs(runs, "config")
    except UsageError:  # runs without config.json, a seed twice: nothing to suggest
        return ""
    merged = [group for group in groups if len(group.runs) > 1]
    if not merged:
        return ""
    seeds = sum(len(group.runs) for group in merged)
    settings = f"{len(merged)} setting{'s' * (len(merged) > 1)}"
    return f"flipes plot: {seeds} runs are seeds of {settings}: --group config draws each setting's mean with a band"


def _setting(run: Path, required: bool) -> dict | None:
    """The options of ``run`` that decide its results (seed among them), from its config.json; None where it has none
    and ``required`` is false."""
    from flipes.config import TrainConfig, saved_options
    from flipes.resume import RESUME_KEYS

    if not (run / "config.json").is_file():
        if required:
            raise UsageError(
                str(run), "has no config.json to tell its setting", "use --group parent (each setting's seeds in one directory)"
            )
        return None
    saved, default = saved_options(str(run)), TrainConfig()
    # a run from before an option existed lacks it (flipes.resume.LATER_KEYS) and ran with its default
    return {key: saved.get(key, getattr(default, key)) for key in RESUME_KEYS}


def _key(setting: dict | None) -> str:
    return json.dumps({k: v for k, v in (setting or {}).items() if k != "seed"}, sort_keys=True)


def _check_seeds(group: list[Path], settings: dict[Path, dict | None]) -> None:
    """Runs grouped by directory are one setting, and no two runs of a group share a seed (a copy of a run would count
    twice and narrow the band), as far as their config.json tell."""
    known = [(path, settings[path]) for path in group if settings[path] is not None]
    for (a, first), (b, other) in itertools.combinations(known, 2):
        differ = [k for k in first if k != "seed" and first[k] != other[k]]
        if differ:
            k = differ[0]
            problem = f"shares a directory with {a} but differs in {k} ({_show(other[k])} vs {_show(first[k])})"
            raise UsageError(str(b), problem, "use --group config, or keep each setting's seeds in a directory of its own")
        if first["seed"] == other["seed"]:
            problem = f"has the setting and seed ({first['seed']}) of {a}, so it would count twice"
            raise UsageError(str(b), problem, "pass each seed's run once")


def _config_labels(settings: list[dict]) -> list[str]:
    """Each setting's options that differ among them, as ``popsize=256, sigma=0.05``."""
    differ = [k for k in settings[0] if k != "seed" and len({_key({k: s[k]}) for s in settings}) > 1]
    return [", ".join(f"{k}={_show(s[k])}" for k in differ) for s in settings]


def _show(value: object) -> str:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, list | dict) else str(value)


def aggregate(curves: Sequence[tuple[Sequence[float], Sequence[float | None]]]) -> Aggregate:
    """The mean of runs' curves ``(xs, ys)`` and its spread, on a common grid: every x of any run from the largest first x
    to the smallest last x, where every run has data (so each point averages the same runs, and the mean does not jump
    where a run ends). At each grid x a run's value is its y at the last of its own x at or before it, step-wise: what the
    run had reached by then, nothing interpolated (a ``None`` y, a non-finite value, gives NaN). The band is Student's t
    95% interval of the mean over the runs, ``mean ± t(0.975, n-1)·s/√n``, with ``s`` the sample standard deviation. Empty
    where a run has no points or the runs' x ranges do not overlap."""
    points = [sorted(zip(xs, ys, strict=True), key=lambda p: p[0]) for xs, ys in curves]
    n, ends = len(points), tuple(p[-1][0] for p in points if p)
    columns: dict[str, list[float]] = {f.name: [] for f in fields(Aggregate) if f.name not in ("n", "ends")}
    if n == 0 or len(ends) < n:
        return Aggregate(n=n, ends=ends, **columns)
    start, end = max(p[0][0] for p in points), min(ends)
    t = t_quantile(0.975, n - 1) if n > 1 else math.nan
    xs = [[x for x, _ in p] for p in points]
    for x in sorted({x for p in points for x, _ in p if start <= x <= end}):
        values = [_float(p[bisect.bisect_right(at, x) - 1][1]) for p, at in zip(points, xs, strict=True)]
        mean = math.fsum(values) / n
        se = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else math.nan
        gap = math.isnan(mean)  # a NaN among the values: min and max would depend on its place
        row = {"x": x, "mean": mean, "se": se, "ci95_low": mean - t * se, "ci95_high": mean + t * se,
               "min": math.nan if gap else min(values), "max": math.nan if gap else max(values)}  # fmt: skip
        for name, value in row.items():
            columns[name].append(value)
    return Aggregate(n=n, ends=ends, **columns)


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile: the ``t`` with P(T ≤ t) = ``p`` (``p`` ≥ 0.5) for ``df`` degrees of freedom, by bisection on
    the closed-form distribution function of an integer ``df`` (Abramowitz & Stegun 26.7.3-4); no scipy needed."""
    if not (0.5 <= p < 1 and df >= 1):
        raise ValueError(f"p={p}, df={df}: needs 0.5 <= p < 1 and df >= 1")
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        lo, hi = hi, 2 * hi
    for _ in range(200):  # halves [lo, hi] down to adjacent floats
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return hi


def _t_cdf(t: float, df: int) -> float:
    """P(T ≤ t) of Student's t with integer ``df`` for t ≥ 0: (1 + A)/2, A = P(|T| < t) (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    c2, total = math.cos(theta) ** 2, 0.0
    if df % 2:  # A = 2/π (θ + sin θ cos θ (1 + 2/3 cos²θ + 2·4/(3·5) cos⁴θ + ...)), the sum up to cos^(df-3)θ
        term = 1.0
        for j in range(1, (df - 1) // 2):
            total += term
            term *= 2 * j / (2 * j + 1) * c2
        total += term if df > 1 else 0.0
        a = 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    else:  # A = sin θ (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + ...), the sum up to cos^(df-2)θ
        term = 1.0
        for j in range(1, df // 2 + 1):
            total += term
            term *= (2 * j - 1) / (2 * j) * c2
        a = math.sin(theta) * total
    return (1 + a) / 2


def aggregate_groups(groups: Sequence[Group], x: str) -> list[dict[str, Aggregate]]:
    """Each group's :func:`aggregate` of every metric in :data:`METRICS` against ``x``, in the order of ``groups``."""
    rows = [[read_metrics(run) for run in group.runs] for group in groups]
    return [{metric: aggregate([series(r, x, metric) for r in runs]) for metric in METRICS} for runs in rows]


CSV_COLUMNS = ("group", "metric", "seeds", "mean", "se", "ci95_low", "ci95_high", "min", "max")


def write_csv(groups: Sequence[Group], aggregates: Sequence[dict[str, Aggregate]], out: str | Path, x: str) -> Path:
    """The aggregated curves as CSV, to redraw the figure elsewhere: one row per group, metric and grid x, with columns
    ``group, metric, <x>, seeds, mean, se, ci95_low, ci95_high, min, max`` (every band, whichever is drawn; ``nan`` where a
    group of one run has no spread), replaced all at once.

    Raises:
        OSError: ``out`` cannot be written.
    """
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS[:2], x, *CSV_COLUMNS[2:]])
    for group, metrics in zip(groups, aggregates, strict=True):
        for metric, agg in metrics.items():
            for i, at in enumerate(agg.x):
                values = (agg.mean[i], agg.se[i], agg.ci95_low[i], agg.ci95_high[i], agg.min[i], agg.max[i])
                writer.writerow([group.label, metric, at, agg.n, *(repr(float(v)) for v in values)])
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)  # as the figure's directory is made
        tmp.write_text(text.getvalue(), encoding="utf-8")
        os.replace(tmp, out)
    except BaseException:
        discard(tmp)
        raise
    return out


def summary(group: Group, metrics: dict[str, Aggregate], x: str) -> str:
    """One line for a paper: the group's final eval_return (fitness_mean where it was never evaluated) as the mean ± its
    standard error over seeds, at the last x of its curve, and where its longest run went further."""
    metric = "eval_return" if metrics["eval_return"].x else "fitness_mean"
    agg = metrics[metric]
    if not agg.x:
        return f"{group.label}: no {x} where all {agg.n} runs have {metric}"
    if agg.n > 1:
        value = f"{agg.mean[-1]:.6g} ± {agg.se[-1]:.3g} (mean ± standard error over {agg.n} seeds)"
    else:
        value = f"{agg.mean[-1]:.6g} (1 seed: no spread)"
    line = f"{group.label}: final {metric} {value} at {x} {_show_x(agg.x[-1])}"
    if max(agg.ends) > agg.x[-1]:
        line += f"; the curve ends with its shortest run (its longest reached {x} {_show_x(max(agg.ends))})"
    return line


def _show_x(x: float) -> str:
    """A generation or timestep count in full (1253890, not 1.25389e+06), seconds to 6 digits."""
    return str(int(x)) if float(x).is_integer() else f"{x:.6g}"
