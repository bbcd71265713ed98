"""Every command and script that takes a thread count refuses one beyond this machine's cores in one line with exit
status 2, through the one shared check (flipes.config.check_threads), before it sets torch's threads: a count of
100,000 otherwise crashed the process (a segfault at its first parallel op, or scipy's import failing)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
from helpers import ROOT, load_script, script_state_kept

from flipes.commands import main as flipes_main
from flipes.config import check_threads
from flipes.errors import UsageError

HUGE = 100_000  # far past 4 threads per core of any machine the tests run on


def thread_options(path: Path) -> list[str]:
    """The fields of the script's ``Args`` named threads or env_threads (read without importing it)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == "Args":
            fields = [s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
            return [f for f in fields if f in ("threads", "env_threads")]
    return []


SCRIPTS = sorted((p.stem, f) for p in (ROOT / "scripts").glob("*.py") for f in thread_options(p))


def test_the_scan_finds_the_scripts_with_thread_counts() -> None:
    """The scan finds scripts that take --threads and --env-threads (a broken scan would make the test below vacuous)."""
    assert {("bayes_digits", "threads"), ("repro_timing", "threads"), ("bench_mpi", "env_threads")} <= set(SCRIPTS)


@pytest.mark.parametrize(("script", "field"), SCRIPTS, ids=[f"{s}-{f}" for s, f in SCRIPTS])
def test_a_script_refuses_more_threads_than_cores_in_one_line(
    script: str, field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """scripts/SCRIPT.py --threads 100000 (--env-threads for bench_mpi) exits with status 2 and one line naming the
    option and this machine's core count."""
    option, module = "--" + field.replace("_", "-"), load_script(ROOT / "scripts" / f"{script}.py")
    with script_state_kept(), pytest.raises(SystemExit) as exited:  # as its __main__ block runs it, its presets aside
        module.run(module.main, module.Args, description=module.__doc__, argv=[option, str(HUGE)])
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert err.startswith(f"flipes: error: {option}: {HUGE} threads on a machine of {os.cpu_count()} cores"), err
    assert len(err.splitlines()) == 1, err


@pytest.mark.parametrize("option", ["--threads", "--env-threads"])
def test_flipes_train_refuses_more_threads_than_cores_in_one_line(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    """flipes train refuses both counts with the same one line, exit status 2."""
    with pytest.raises(SystemExit) as exited:
        flipes_main(["train", option, str(HUGE)])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith(f"flipes: error: {option}: {HUGE} threads on a machine of"), err


def test_the_shared_check_bounds() -> None:
    """Up to per_core threads per core pass, one more or a negative count is refused, naming the option."""
    cores = os.cpu_count() or 1
    check_threads("--threads", 0)
    check_threads("--threads", cores)
    check_threads("--env-threads", 4 * cores, per_core=4)
    for option, count, per_core in (("--threads", cores + 1, 1), ("--env-threads", 4 * cores + 1, 4), ("--threads", -1, 1)):
        with pytest.raises(UsageError) as refused:
            check_threads(option, count, per_core=per_core)
        assert refused.value.option == option


def test_an_uncounted_machine_bounds_by_affinity_not_one_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where os.cpu_count() is None, the cores this process may use bound the count: a count within them passes (it
    was refused as "a machine of 1 cores"), one past them is refused naming their number."""
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    check_threads("--threads", 3)
    with pytest.raises(UsageError, match="4 threads on a machine of 3 cores"):
        check_threads("--threads", 4)
    monkeypatch.delattr(os, "sched_getaffinity")
    check_threads("--threads", 64)  # nothing counts the cores: only a negative count is refused
    with pytest.raises(UsageError):
        check_threads("--threads", -1)
