"""scripts/gpu_check.py, the one command for a lent GPU, run on the CPU at tiny sizes."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import run_script


def test_gpu_check_runs_every_step_on_the_cpu_and_writes_its_report(tmp_path: Path) -> None:
    """Every step's code path runs (device cpu, --quick): the correctness steps pass, the others
    measure or say why they were skipped, the report names the device and versions, and OUT.log
    holds every command's whole output."""
    out = tmp_path / "gpu_check"
    r = run_script("scripts/gpu_check.py", "--device", "cpu", "--quick", "true", "--out", out, check=False, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["tests", "mpi", "benchmark", "repro_timing", "cartpole", "mujoco_warp"]
    assert steps["tests"]["ok"] is True and steps["tests"]["data"]["counts"]["passed"] > 0
    assert steps["mpi"]["ok"] is True or steps["mpi"]["data"].get("skipped")
    assert all(s["ok"] is not False for s in steps.values())
    assert steps["cartpole"]["data"]["steps_per_second"]
    assert report["info"]["torch"] and report["failed"] == []
    assert "| tests | pass |" in out.with_suffix(".md").read_text()
    log = out.with_suffix(".log").read_text()
    assert log.count("(exit 0)") >= 5 and f"{steps['tests']['data']['counts']['passed']} passed" in log
