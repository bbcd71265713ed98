"""Subprocess smoke tests of the command-line jobs, with tiny budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import ROOT
from helpers import run_script as run


def test_benchmark_quick_prints_the_table(tmp_path: Path) -> None:
    out = run("scripts/benchmark.py", "--quick", "--json", str(tmp_path / "b.json")).stdout
    assert "| 17-64-64-6 | 64 |" in out and "(b)/(a)" in out
    rows = json.loads((tmp_path / "b.json").read_text())
    assert rows["results"] and rows["machine"]  # raw numbers written


def test_digits_fitness_plugs_into_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """scripts/digits.py's supervised fitness and model train through flipes.train: test accuracy climbs from chance."""
    import flipes

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    result = flipes.train(env="none", model="digits:make_model", fitness="digits:fitness", popsize=64, generations=30,
                          lr=0.05, out=str(tmp_path), tensorboard=False, progress=False)  # fmt: skip
    rows = result.metrics
    assert rows[0]["eval_return"] < 40 < rows[-1]["eval_return"]  # test accuracy (%) climbs from chance


def test_bench_solve_quick(tmp_path: Path) -> None:
    out = run("scripts/bench_solve.py", "--quick", "--no-gym-check", "--out", str(tmp_path)).stdout
    assert "| flipes" in out and "flipes/CartPole-v1" in out


def test_bench_rollout_quick_measures_every_engine(tmp_path: Path) -> None:
    """The engine benchmark runs every engine with the policy in the loop and writes its rates."""
    run("scripts/bench_rollout.py", "--quick", "true", "--json", str(tmp_path / "r.json"), timeout=300)
    (row,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert set(row["rates"]) == {"sync random", "sync", "async", "envpool 1 thread", "envpool 2 threads",
                                 "envpool 2 threads pipelined"}  # fmt: skip
    assert all(rate > 0 for rate in row["rates"].values())


def test_bench_mujoco_quick_reads_the_runs_it_starts(tmp_path: Path) -> None:
    """The MuJoCo benchmark starts train.py as a user does and tabulates its evaluations."""
    out = run("scripts/bench_mujoco.py", "--quick", "true", "--out", str(tmp_path), timeout=300).stdout
    assert "| HalfCheetah-v5 seed |" in out and "| Hopper-v5 |" in out
    assert (tmp_path / "threshold-s0" / "metrics.jsonl").exists()
