"""``flipes plot --group``: the seeds of a setting as one mean curve with a band, their numbers as CSV and a line each."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest

import flipes.plotting
from flipes.commands import main
from flipes.seeds import t_quantile

# Student's t 97.5% quantiles (scipy.stats.t.ppf(0.975, df)): the 95% interval's half-width is t·s/√n
T975 = {1: 12.706204736174694, 2: 4.302652729749462}


def _run(path: Path, fitness: list[float], evals: dict[int, float], config: dict | None) -> Path:
    """A run directory: one metrics row per generation with ``fitness`` as fitness_mean (timesteps 10 per generation),
    eval_return on the generations ``evals`` names, and ``config`` as config.json (none where None)."""
    path.mkdir(parents=True)
    rows = [{"generation": g, "timesteps": 10 * (g + 1), "fitness_mean": f, "fitness_max": f + 1} for g, f in enumerate(fitness)]
    for g, value in evals.items():
        rows[g]["eval_return"] = value
    (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if config is not None:
        (path / "config.json").write_text(json.dumps({"env": "flipes/CartPole-v1", **config}))
    return path


def _settings(root: Path, configs: bool = True) -> list[Path]:
    """Three seeds of popsize 64 and two of popsize 256 (generations, evaluations and lengths differing), in ONE directory
    (with config.json) or in p64/ and p256/ (without): the runs' config, not their place, tells the settings apart."""
    specs = [  # (popsize, seed, fitness_mean per generation, eval_return by generation)
        (64, 0, [1, 2, 3, 4, 5, 6], {0: 10, 2: 20, 4: 30, 5: 35}),
        (256, 0, [5, 6, 7], {0: 50, 2: 60}),
        (64, 1, [2, 2, 5, 7], {0: 12, 3: 40}),
        (64, 2, [0, 3, 3, 3, 9], {1: 15, 4: 25}),
        (256, 1, [4, 8, 9], {0: 45, 1: 55}),
    ]
    return [
        _run(
            root / (f"r{i}" if configs else f"p{popsize}/seed{seed}"),
            fitness,
            evals,
            {"popsize": popsize, "seed": seed} if configs else None,
        )
        for i, (popsize, seed, fitness, evals) in enumerate(specs)
    ]


# the values each seed holds at each x of the grid, by hand: a seed's latest value at or before x, on the x of any seed
# from the largest first x to the smallest last x
EXPECTED = {
    ("popsize=64", "fitness_mean"): {0: [1, 2, 0], 1: [2, 2, 3], 2: [3, 5, 3], 3: [4, 7, 3]},  # the shortest seed ends at 3
    ("popsize=64", "eval_return"): {1: [10, 12, 15], 2: [20, 12, 15], 3: [20, 40, 15]},  # the first seed at 1, the last at 3
    ("popsize=256", "fitness_mean"): {0: [5, 4], 1: [6, 8], 2: [7, 9]},
    ("popsize=256", "eval_return"): {0: [50, 45], 1: [50, 55]},  # seed 1 evaluated last at generation 1
}


def _reference(values: list[float]) -> dict[str, float]:
    mean, se = statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))
    t = T975[len(values) - 1]
    return {"mean": mean, "se": se, "ci95_low": mean - t * se, "ci95_high": mean + t * se, "min": min(values), "max": max(values)}


def test_seeds_of_a_setting_aggregate_to_the_mean_and_t_interval_of_their_stepwise_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--group config merges runs whose config.json differ only by seed and keeps popsizes apart, labelled by popsize;
    the CSV holds, at every generation where all seeds of a setting have data, the mean, standard error, Student-t 95%
    interval, min and max of each seed's latest value at or before it, equal to a reference computed here; the figure
    draws those means; a line per setting gives its final eval_return as mean ± standard error."""
    pytest.importorskip("matplotlib")

    runs = _settings(tmp_path / "runs")
    figures = []
    save = flipes.plotting._save
    monkeypatch.setattr(flipes.plotting, "_save", lambda fig, out: (figures.append(fig), save(fig, out))[1])
    out, table = tmp_path / "curves.png", tmp_path / "curves.csv"
    assert main(["plot", *map(str, runs), "--group", "config", "--csv", str(table), "--out", str(out)]) == 0
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["group", "metric", "generation", "seeds", "mean", "se", "ci95_low", "ci95_high", "min", "max"]
    got = {}
    for row in rows:
        got.setdefault((row["group"], row["metric"]), {})[int(row["generation"])] = row
    assert list(got) == list(EXPECTED)  # settings in the order of their first run
    for key, points in EXPECTED.items():
        assert list(got[key]) == list(points), key
        for x, values in points.items():
            row, want = got[key][x], _reference(values)
            assert int(row["seeds"]) == len(values)
            assert {k: float(row[k]) for k in want} == pytest.approx(want, rel=1e-12, abs=1e-12), (key, x)
    (fig,) = figures
    for ax, metric in zip(fig.axes, ("fitness_mean", "eval_return"), strict=True):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert list(lines) == ["popsize=64 (3 seeds)", "popsize=256 (2 seeds)"]
        for label, line in lines.items():
            points = EXPECTED[(label.split(" ")[0], metric)]
            assert list(line.get_xdata()) == list(points)
            assert list(line.get_ydata()) == pytest.approx([statistics.fmean(v) for v in points.values()], rel=1e-15)
    assert "95% t-interval" in fig.texts[0].get_text()  # the suptitle names the band
    for ax, metric in zip(fig.axes, ("fitness_mean", "eval_return"), strict=True):  # and the shading is that band
        bands = ax.collections  # fill_between: one polygon per setting, in the order drawn
        assert len(bands) == 2
        for band, group in zip(bands, ("popsize=64", "popsize=256"), strict=True):
            ys = {round(float(y), 9) for path in band.get_paths() for y in path.vertices[:, 1]}
            ends = [_reference(values) for values in EXPECTED[(group, metric)].values()]
            assert ys == {round(r[k], 9) for r in ends for k in ("ci95_low", "ci95_high")}, (group, metric)
    p64, p256 = EXPECTED[("popsize=64", "eval_return")][3], EXPECTED[("popsize=256", "eval_return")][1]
    assert capsys.readouterr().out.splitlines() == [
        f"popsize=64: final eval_return {statistics.fmean(p64):.6g} ± {_reference(p64)['se']:.3g} (mean ± standard error"
        " over 3 seeds) at generation 3; the curve ends with its shortest run (its longest reached generation 5)",
        f"popsize=256: final eval_return {statistics.fmean(p256):.6g} ± {_reference(p256)['se']:.3g} (mean ± standard error"
        " over 2 seeds) at generation 1; the curve ends with its shortest run (its longest reached generation 2)",
        str(out),
    ]


def test_group_parent_merges_the_runs_of_each_directory_without_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--group parent takes the runs in one directory as one setting's seeds, labelled by that directory (p64, p256),
    with the same numbers as grouping by config; --band minmax and se shade min to max and mean ± standard error."""
    pytest.importorskip("matplotlib")

    _settings(tmp_path / "runs", configs=False)
    table = tmp_path / "curves.csv"
    runs = [str(p) for p in sorted((tmp_path / "runs").glob("p*/seed*"), key=lambda p: (len(p.parent.name), p.name))]
    edges = {"minmax": lambda r: (r["min"], r["max"]), "se": lambda r: (r["mean"] - r["se"], r["mean"] + r["se"])}
    figures = []
    save = flipes.plotting._save
    monkeypatch.setattr(flipes.plotting, "_save", lambda fig, out: (figures.append(fig), save(fig, out))[1])
    for band, edge in edges.items():
        assert (
            main(["plot", *runs, "--group", "parent", "--band", band, "--csv", str(table), "--out", str(tmp_path / "c.png")]) == 0
        )
        (fig,) = figures
        figures.clear()
        for ax, metric in zip(fig.axes, ("fitness_mean", "eval_return"), strict=True):  # one polygon per setting
            for shade, group in zip(ax.collections, ("popsize=64", "popsize=256"), strict=True):
                ys = {round(float(y), 9) for path in shade.get_paths() for y in path.vertices[:, 1]}
                want = {round(v, 9) for values in EXPECTED[(group, metric)].values() for v in edge(_reference(values))}
                assert ys == want, (band, group, metric)
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    got = {(r["group"], r["metric"], int(r["generation"])): float(r["mean"]) for r in rows}
    want = {(f"p{k[0].split('=')[1]}", k[1], x): statistics.fmean(v) for k, points in EXPECTED.items() for x, v in points.items()}
    assert got == want


def test_a_group_of_one_run_has_no_spread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A setting with a single seed is its own curve: its mean is its values, its spread columns are NaN, its line says
    it has one seed; and a grouping where no two runs are seeds of one setting says so."""
    a = _run(tmp_path / "a", [1, 2], {0: 3, 1: 4}, {"popsize": 64, "seed": 0})
    b = _run(tmp_path / "b", [1, 5], {1: 7}, {"popsize": 64, "seed": 0, "sigma": 0.05})
    table = tmp_path / "c.csv"
    assert main(["plot", str(a), str(b), "--group", "config", "--csv", str(table), "--out", str(tmp_path / "c.png")]) == 0
    with open(table, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "eval_return"]
    got = [(r["group"], r["generation"], r["seeds"], r["mean"]) for r in rows]
    assert got == [("sigma=0.1", "0", "1", "3.0"), ("sigma=0.1", "1", "1", "4.0"), ("sigma=0.05", "1", "1", "7.0")]
    assert all(math.isnan(float(r[k])) for r in rows for k in ("se", "ci95_low", "ci95_high"))
    captured = capsys.readouterr()
    assert captured.out.splitlines()[:2] == ["sigma=0.1: final eval_return 4 (1 seed: no spread) at generation 1",
                                             "sigma=0.05: final eval_return 7 (1 seed: no spread) at generation 1"]  # fmt: skip
    assert captured.err == "flipes plot: --group config: no two runs are seeds of one setting\n"


def test_a_missing_value_of_one_seed_is_a_gap_in_every_column_of_its_setting(tmp_path: Path) -> None:
    """A seed whose row holds a null fitness_mean (how a non-finite value is written) makes that generation's mean,
    standard error, interval, min and max of its setting NaN, whichever seed holds it (min and max of values with a NaN
    among them would depend on its place); the generations around it aggregate both seeds as usual."""
    table = tmp_path / "c.csv"
    for first in (False, True):  # the null in the first seed's run, then in the second's
        runs = tmp_path / f"runs-{first}"
        a = _run(runs / "a", [1.0, 2.0, 5.0], {0: 1.0}, {"popsize": 64, "seed": 0})
        b = _run(runs / "b", [3.0, 4.0, 9.0], {0: 2.0}, {"popsize": 64, "seed": 1})
        edited = (a if first else b) / "metrics.jsonl"
        rows = [json.loads(line) for line in edited.read_text().splitlines()]
        rows[1]["fitness_mean"] = None
        edited.write_text("".join(json.dumps(row) + "\n" for row in rows))
        assert main(["plot", str(a), str(b), "--group", "config", "--csv", str(table), "--out", str(tmp_path / "c.png")]) == 0
        with open(table, newline="") as f:
            got = {int(r["generation"]): r for r in csv.DictReader(f) if r["metric"] == "fitness_mean"}
        assert list(got) == [0, 1, 2]
        columns = ("mean", "se", "ci95_low", "ci95_high", "min", "max")
        assert all(math.isnan(float(got[1][k])) for k in columns), got[1]
        for x, values in ((0, [1.0, 3.0]), (2, [5.0, 9.0])):
            want = _reference(values)
            assert {k: float(got[x][k]) for k in want} == pytest.approx(want, rel=1e-12, abs=1e-12), x


def test_a_setting_never_evaluated_is_summarized_by_its_fitness_mean_at_the_last_x_in_full(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seeds without any eval_return (a custom fitness without evaluate) get their line from fitness_mean instead: the
    mean ± standard error of the last values, at the last timesteps written in full (2507780, not 2.50778e+06)."""
    runs = []
    for seed, fitness in ((0, [1.0, 2.0]), (1, [3.0, 5.0])):
        run = _run(tmp_path / "runs" / f"s{seed}", fitness, {}, {"popsize": 64, "seed": seed})
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for row in rows:
            row["timesteps"] = 1_253_890 * (row["generation"] + 1)
        (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        runs.append(str(run))
    capsys.readouterr()
    assert main(["plot", *runs, "--group", "config", "--x", "timesteps", "--out", str(tmp_path / "c.png")]) == 0
    se = _reference([2.0, 5.0])["se"]  # 1.5
    assert capsys.readouterr().out.splitlines()[0] == (
        f"runs: final fitness_mean 3.5 ± {se:.3g} (mean ± standard error over 2 seeds) at timesteps 2507780"
    )


def test_the_csv_and_the_figure_go_into_directories_made_for_them(tmp_path: Path) -> None:
    """``--csv`` and ``--out`` into directories that do not exist yet make them, alike; a path under a file is refused
    before anything is written."""
    runs = [str(p) for p in _settings(tmp_path / "runs")]
    table, figure = tmp_path / "new" / "deeper" / "c.csv", tmp_path / "other" / "c.png"
    assert main(["plot", *runs, "--group", "config", "--csv", str(table), "--out", str(figure)]) == 0
    assert table.read_text().startswith("group,metric,generation,") and figure.is_file()
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        main(["plot", *runs, "--group", "config", "--csv", str(tmp_path / "file" / "c.csv"), "--out", str(tmp_path / "d.png")])
    assert not (tmp_path / "d.png").exists()


def test_one_line_per_run_suggests_grouping_where_runs_are_seeds_of_a_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --group, a plot of runs that their config.json show to be seeds of settings says how many and suggests
    --group config on stderr; runs of distinct settings, or without config.json, plot without a word."""
    runs = _settings(tmp_path / "runs")
    out = str(tmp_path / "c.png")
    assert main(["plot", *map(str, runs), "--out", out]) == 0
    expected = "flipes plot: 5 runs are seeds of 2 settings: --group config draws each setting's mean with a band\n"
    assert capsys.readouterr().err == expected
    assert main(["plot", str(runs[0]), str(runs[2]), "--out", out]) == 0
    assert (
        capsys.readouterr().err
        == "flipes plot: 2 runs are seeds of 1 setting: --group config draws each setting's mean with a band\n"
    )
    for quiet in ([runs[0], runs[1]], _settings(tmp_path / "bare", configs=False)):
        assert main(["plot", *map(str, quiet), "--out", out]) == 0
        assert capsys.readouterr().err == ""


# each case's error, after "flipes: error: "
REFUSALS = {
    "no_metrics": "{empty}: is not a run directory (no metrics.jsonl); pass directories written by flipes train",
    "folder_of_runs": "{runs}: is not a run directory (no metrics.jsonl) but holds 5 runs; pass them: {r0} {r1} {runs}/r2 ...",
    "folder_of_one": "{holder}: is not a run directory (no metrics.jsonl) but holds 1 run; pass it: {holder}/only",
    "no_config": "{bare}: has no config.json to tell its setting; use --group parent (each setting's seeds in one directory)",
    "same_seed": "{copy}: has the setting and seed (0) of {r0}, so it would count twice; pass each seed's run once",
    "mixed_dir": "{r1}: shares a directory with {r0} but differs in popsize (256 vs 64); "
    "use --group config, or keep each setting's seeds in a directory of its own",
    "twice": "{r0}/../r0: given twice (also as {r0}); pass each run once",
    "csv_alone": "--csv: writes the curves of groups of seeds; add --group config (or --group parent)",
    "band_alone": "--band: shades the band around the mean of groups of seeds; add --group config (or --group parent)",
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_runs_that_cannot_be_grouped_are_one_line_errors(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory without metrics (one holding runs names them), a run without config.json grouped by config, the same
    seed twice in a setting, a directory holding two settings grouped by directory, a run given twice, and --csv or a
    --band without --group are refused with one line naming the run or option and what to do, exit status 2."""
    runs = _settings(tmp_path / "runs")
    empty, bare, copy = tmp_path / "empty", tmp_path / "bare", tmp_path / "copy"
    empty.mkdir()
    _run(bare, [1.0], {0: 1.0}, None)
    _run(copy, [1.0], {0: 1.0}, {"popsize": 64, "seed": 0})
    holder = tmp_path / "holder"
    _run(holder / "only", [1.0], {0: 1.0}, None)
    r0, r1 = runs[0], runs[1]
    argv = {
        "no_metrics": [r0, empty, "--group", "config"],
        "folder_of_runs": [tmp_path / "runs", "--group", "config"],
        "folder_of_one": [holder],
        "no_config": [r0, bare, "--group", "config"],
        "same_seed": [r0, copy, "--group", "config"],
        "mixed_dir": [r0, r1, "--group", "parent"],
        "twice": [r0, r0 / ".." / r0.name, "--group", "config"],
        "csv_alone": [r0, "--csv", tmp_path / "c.csv"],
        "band_alone": [r0, "--band", "minmax"],
    }[case]
    with pytest.raises(SystemExit) as e:
        main(["plot", *map(str, argv), "--out", str(tmp_path / "c.png")])
    assert e.value.code == 2
    assert (
        capsys.readouterr().err
        == "flipes: error: "
        + REFUSALS[case].format(empty=empty, bare=bare, copy=copy, r0=r0, r1=r1, runs=tmp_path / "runs", holder=holder)
        + "\n"
    )
    assert not (tmp_path / "c.png").exists() and not (tmp_path / "c.csv").exists()


def test_t_quantile_matches_scipy() -> None:
    """t_quantile(p, df) is scipy's Student-t quantile to 12 digits for 1 to 60 degrees of freedom (odd and even, whose
    closed forms differ) at p = 0.9, 0.975, 0.995, and the printed tables' 12.706 and 4.303 at 97.5%."""
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 61):
        for p in (0.9, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-12), (p, df)
    assert (round(t_quantile(0.975, 1), 3), round(t_quantile(0.975, 2), 3)) == (12.706, 4.303)
    assert {df: t_quantile(0.975, df) for df in T975} == pytest.approx(T975, rel=1e-12)
