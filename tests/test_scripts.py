"""Subprocess smoke tests of the command-line jobs, with tiny budgets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=True)


def test_train_writes_metrics_and_learns(tmp_path: Path) -> None:
    run("scripts/train.py", "--generations", "60", "--popsize", "64", "--out", str(tmp_path), "--seed", "3")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == list(range(60))
    for key in ("fitness_mean", "fitness_max", "seconds", "timesteps", "params_sha256"):
        assert all(key in r for r in rows), key
    assert rows[-1]["test_mse"] < 0.5 * rows[0]["test_mse"]
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "config.json").exists()
    again = tmp_path / "again"
    run("scripts/train.py", "--generations", "60", "--popsize", "64", "--out", str(again), "--seed", "3")
    rows2 = [json.loads(line) for line in (again / "metrics.jsonl").read_text().splitlines()]
    assert [r["params_sha256"] for r in rows2] == [r["params_sha256"] for r in rows]  # same seed, same run


def test_benchmark_quick_prints_the_table(tmp_path: Path) -> None:
    out = run("scripts/benchmark.py", "--quick", "--json", str(tmp_path / "b.json")).stdout
    assert "| 17-64-64-6 | 64 |" in out and "(b)/(a)" in out
    rows = json.loads((tmp_path / "b.json").read_text())
    assert rows["results"] and rows["machine"]  # raw numbers written
