"""scripts/gpu_check.py, the one command for a lent GPU, run on the CPU at tiny sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, load_script, script_in_this_process, script_state_kept


def test_gpu_check_runs_every_step_on_the_cpu_and_writes_its_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every step's code path runs (device cpu, --quick): the correctness steps pass, the others
    measure or say why they were skipped, the report names the device and versions, and OUT.log
    holds every command's whole output. gpu_check's main and the scripts it starts (benchmark.py,
    repro_timing.py, train.py) run in this process with the command lines it gives them (a start of
    Python costs seconds of imports each); its pytest run and its mpiexec runs are their own
    processes, as on the GPU, through the same function (execute): a real ``mpiexec -n 1`` job (the
    launch of a world of one, which no other test starts) and an ``mpiexec -n 2`` one, whose
    parameters agree hash for hash."""
    module = load_script(ROOT / "scripts" / "gpu_check.py")
    real = module.execute
    launched: list[str] = []  # the rank count of each mpiexec job

    def execute(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        if cmd[0] == sys.executable and cmd[1].startswith("scripts/"):
            return script_in_this_process(cmd, env, timeout)
        if Path(cmd[0]).name == "mpiexec":
            launched.append(cmd[2])
        # one thread in each command it runs, as in this worker (conftest.py): the code paths are the same, and torch's
        # default of a thread per core only contends with the other worker (it doubled the run's CPU time)
        return real(cmd, {**env, "OMP_NUM_THREADS": "1"}, timeout)

    monkeypatch.setattr(module, "execute", execute)
    out = tmp_path / "gpu_check"
    with script_state_kept():  # the cartpole step seeds torch's generator
        assert module.main(module.Args(device="cpu", quick=True, out=str(out))) == 0, capsys.readouterr().out[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["tests", "mpi", "benchmark", "repro_timing", "cartpole", "mujoco_warp"]
    assert steps["tests"]["ok"] is True and steps["tests"]["data"]["counts"]["passed"] > 0
    assert steps["tests"]["data"]["unmatched"] == []  # every -k term selected a test
    assert steps["mpi"]["ok"] is True or steps["mpi"]["data"].get("skipped")
    assert launched == ([] if steps["mpi"]["data"].get("skipped") else ["1", "2"])
    assert all(s["ok"] is not False for s in steps.values())
    assert steps["cartpole"]["data"]["steps_per_second"]
    assert report["info"]["torch"] and report["failed"] == []
    assert "| tests | pass |" in out.with_suffix(".md").read_text()
    log = out.with_suffix(".log").read_text()
    assert log.count("(exit 0)") >= 5 and f"{steps['tests']['data']['counts']['passed']} passed" in log


def test_a_selection_term_that_no_test_matches_fails_the_tests_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests step's ``-k`` terms are each checked against the names of the tests that ran (pytest's JUnit XML): a
    run that passed but where a term ran no test fails the step naming it: ``run_alone``, whose one test was skipped,
    and ``linear_members and 0-True-2``, whose words each name tests but no one test (every word must match); the same
    run with a test of every term passes (a term that runs nothing would check nothing, silently)."""
    module = load_script(ROOT / "scripts" / "gpu_check.py")
    args = module.Args(device="cpu", quick=True, out=str(tmp_path / "report"))
    ran = ["test_linear_members_equal_explicit_weights[1-False-1-None]", "test_tell_gradient_equals_materialized_estimator[1]",
           "test_every_transition_matches_gymnasium[CartPole-v1]", "test_ab_[0-True-2]",
           "test_each_envs_actions_are_the_mean_plus_the_noise[x]"]  # fmt: skip
    skipped = ["test_probe_gathers_each_envs_episode_as_that_env_run_alone[None]"]

    def run(args: object, cmd: list[str], timeout: float, env: object = None) -> subprocess.CompletedProcess:
        cases = "".join(f'<testcase classname="tests.t" name="{name}"/>' for name in ran)
        cases += "".join(f'<testcase classname="tests.t" name="{name}"><skipped message="x"/></testcase>' for name in skipped)
        Path(cmd[cmd.index("--junitxml") + 1]).write_text(f"<testsuites><testsuite>{cases}</testsuite></testsuites>")
        return subprocess.CompletedProcess(cmd, 0, f"{len(ran)} passed, {len(skipped)} skipped in 1.0s\n", "")

    monkeypatch.setattr(module, "run", run)
    ok, said, data = module.step_tests(args, tmp_path)
    assert ok is False and data["unmatched"] == ["linear_members and 0-True-2", "run_alone"], said
    assert "ran no test: ['linear_members and 0-True-2', 'run_alone']" in said
    ran += ["test_linear_members_equal_explicit_weights[0-True-2-None]", *skipped]
    skipped.clear()
    ok, said, data = module.step_tests(args, tmp_path)
    assert ok is True and data["unmatched"] == [], said


def test_gpu_check_reports_a_failing_step_as_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the commands it runs stood in for (no subprocess): a test run that exits 1 with tests passed, and 2 ranks
    whose parameters differ from 1 rank's, fail their steps; a step that raises fails too while the others run, and
    the report lists the failed steps and the script exits 1 (a check that always passed would say nothing)."""
    module = load_script(ROOT / "scripts" / "gpu_check.py")
    args = module.Args(device="cpu", quick=True, out=str(tmp_path / "report"))

    def run(args: object, cmd: list[str], timeout: float, env: object = None) -> subprocess.CompletedProcess:
        if "--out" in cmd:  # an mpiexec -n k run: its rows' hashes depend on k
            out = Path(cmd[cmd.index("--out") + 1])
            out.mkdir(parents=True)
            (out / "metrics.jsonl").write_text(json.dumps({"params_sha256": cmd[cmd.index("-n") + 1]}) + "\n")
        return subprocess.CompletedProcess(cmd, 1 if "pytest" in cmd else 0, "5 passed, 1 failed in 2.0s\n", "")

    monkeypatch.setattr(module, "run", run)
    ok, _, data = module.step_tests(args, tmp_path)
    assert ok is False and data == {"counts": {"passed": 5, "failed": 1}, "returncode": 1, "unmatched": list(module.QUICK_TERMS)}
    (tmp_path / "mpi").mkdir()
    ok, summary, data = module.step_mpi(args, tmp_path / "mpi")
    assert ok is False and "DIFFER" in summary and data["hashes"] == {1: ["1"], 2: ["2"]}

    def crash(args: object, tmp: Path) -> tuple[bool | None, str, dict]:
        raise RuntimeError("no device")

    def measured(args: object, tmp: Path) -> tuple[bool | None, str, dict]:
        return None, "measured", {}

    monkeypatch.setattr(module, "STEPS", {"tests": crash, "cartpole": measured})
    assert module.main(args) == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["failed"] == ["tests"] and [s["ok"] for s in report["steps"]] == [False, None]
    assert report["steps"][0]["summary"] == "RuntimeError: no device"
