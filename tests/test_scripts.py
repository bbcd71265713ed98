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


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_metrics_and_resumes_bit_for_bit(tmp_path: Path) -> None:
    common = ["--env", "CartPole-v1", "--popsize", "16", "--eval-episodes", "5", "--target", "1e9", "--seed", "3"]
    run("scripts/train.py", *common, "--generations", "6", "--out", str(tmp_path / "full"))
    rows = metrics(tmp_path / "full")
    assert [r["generation"] for r in rows] == list(range(6))
    for key in ("fitness_mean", "fitness_max", "seconds", "timesteps", "params_sha256"):
        assert all(key in r for r in rows), key
    assert all("eval_return" in r for r in rows[::2])
    assert rows[-1]["timesteps"] > rows[0]["timesteps"] > 0
    assert (tmp_path / "full" / "checkpoint.pt").exists() and (tmp_path / "full" / "config.json").exists()

    part = str(tmp_path / "part")
    run("scripts/train.py", *common, "--generations", "4", "--out", part)
    run("scripts/train.py", *common, "--generations", "6", "--out", part, "--resume", part)
    assert [r["params_sha256"] for r in metrics(tmp_path / "part")] == [r["params_sha256"] for r in rows]

    png = tmp_path / "curves.png"
    run("scripts/plot.py", str(tmp_path / "full"), part, "--x", "timesteps", "--out", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_benchmark_quick_prints_the_table(tmp_path: Path) -> None:
    out = run("scripts/benchmark.py", "--quick", "--json", str(tmp_path / "b.json")).stdout
    assert "| 17-64-64-6 | 64 |" in out and "(b)/(a)" in out
    rows = json.loads((tmp_path / "b.json").read_text())
    assert rows["results"] and rows["machine"]  # raw numbers written


def test_digits_fitness_plugs_into_train(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "scripts")])}
    args = ["--env", "none", "--model", "digits:make_model", "--fitness", "digits:fitness", "--popsize", "64"]
    subprocess.run(
        [
            sys.executable,
            "scripts/train.py",
            *args,
            "--generations",
            "30",
            "--lr",
            "0.05",
            "--out",
            str(tmp_path),
            "--tensorboard",
            "false",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = metrics(tmp_path)
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
