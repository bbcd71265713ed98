"""The command lines of scripts/*.py: every option documented, mistakes reported in one line."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
from helpers import load_script, run_script, run_script_in_process

from flipes.cli import build_parser, field_docs, option_name
from flipes.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def defines_args(path: Path) -> bool:
    """Whether the file defines a class ``Args`` at module level (read without importing it)."""
    return any(isinstance(node, ast.ClassDef) and node.name == "Args" for node in ast.parse(path.read_text()).body)


WITH_ARGS = sorted(p for p in SCRIPTS.glob("*.py") if defines_args(p))


def run_as_main(script: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[object, str]:
    """scripts/SCRIPT.py's command line ``argv`` run in this process as its ``__main__`` block runs it
    (test_a_wrong_option_value_is_one_line_and_exit_status_2 runs that block from a real command line): the status it
    exits with and its stderr. A script that does not exit fails the test."""
    with pytest.raises(SystemExit) as e:
        run_script_in_process(script, *argv)
    return e.value.code, capsys.readouterr().err


def test_scripts_with_options_are_found() -> None:
    """The scan finds the scripts that take options (a broken glob would make the tests below vacuous)."""
    names = {p.stem for p in WITH_ARGS}
    assert {"bench_envs", "bench_solve", "benchmark", "gpu_check", "repro_timing"} <= names


@pytest.mark.parametrize("path", WITH_ARGS, ids=lambda p: p.stem)
def test_every_option_has_help_text_and_the_parser_builds(path: Path) -> None:
    """Each script's Args is a dataclass whose every field has a non-empty help text (its docstring),
    and flipes.cli builds its command line (every annotation is one it can parse)."""
    args = load_script(path).Args
    assert dataclasses.is_dataclass(args)
    docs = field_docs(args)
    undocumented = [f.name for f in dataclasses.fields(args) if not docs.get(f.name, "").strip()]
    assert not undocumented, f"{path.name}: fields without help text: {undocumented}"
    shown = build_parser(args, description=path.stem).format_help()
    missing = [f.name for f in dataclasses.fields(args) if option_name(f.name) not in shown]
    assert not missing, f"{path.name}: fields without an option in --help: {missing}"


def test_a_wrong_option_value_is_one_line_and_exit_status_2() -> None:
    """A non-integer value of an integer option exits with status 2 and prints exactly one line,
    naming the option, with no traceback (and before any benchmarking starts)."""
    r = run_script("scripts/bench_envs.py", "--num-envs", "3.5", check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("flipes: error: --num-envs:"), lines[0]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("script", "argv", "option"),
    [
        ("repro_variance", ["--max-n", "0", "--out", "/nonexistent"], "--max-n"),
        ("repro_learning", ["--popsizes", "64", "7", "--out", "/nonexistent"], "--popsizes"),
        ("repro_timing", ["--hidden", "8", "-1", "--out", "/nonexistent"], "--hidden"),
        ("digits", ["--batch", "0"], "--batch"),
        ("bayes_digits", ["--val-fraction", "1.5", "--out", "/nonexistent"], "--val-fraction"),
        ("backprop_variance", ["--sizes", "4", "0", "--out", "/nonexistent"], "--sizes"),
    ],
)
def test_paper_scripts_refuse_a_size_that_leaves_nothing_to_run(
    script: str, argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The digits scripts (digits.py, bayes_digits.py, backprop_variance.py, repro_*.py) refuse a zero, negative or odd
    (mirrored) size, or a fraction outside (0, 1), with exit status 2 and one line naming the option, before any
    training or measuring (no traceback: any other exception fails the test)."""
    status, err = run_as_main(script, argv, capsys)
    assert status == 2 and err.startswith(f"flipes: error: {option}:") and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    ("script", "argv", "option"),
    [
        ("bench_rollout", ["--envs", "NoSuchEnv-v0", "--quick"], "--envs"),
        ("bench_rollout", ["--sizes", "64", "0"], "--sizes"),
        ("bench_rollout", ["--steps", "0"], "--steps"),
        ("bench_rollout", ["--envs", "--quick"], "--envs"),
        ("count_rollout_ops", ["--envs", "NoSuchEnv-v0"], "--envs"),
        ("count_rollout_ops", ["--generations", "0"], "--generations"),
        ("profile_rollout", ["--n", "0"], "--n"),
    ],
)
def test_rollout_scripts_refuse_an_unknown_env_or_empty_size_in_one_line(
    script: str, argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench_rollout.py, count_rollout_ops.py and profile_rollout.py report an env id no engine can make (or none), or a
    size below 1, as one line naming the option (bench_rollout's with an example of that option), with exit status 2 (no
    EnvError or ValueError traceback: any other exception fails the test)."""
    status, err = run_as_main(script, argv, capsys)
    assert status == 2 and f"flipes: error: {option}:" in err and "Traceback" not in err, err
    if script == "bench_rollout" and option != "--envs":  # its example of a size names the option refused
        assert err.rstrip().endswith(f"; e.g. {option} {'64 256' if option == '--sizes' else 200}"), err


def test_gpu_check_quick_run_keeps_the_gpu_report() -> None:
    """scripts/gpu_check.py --quick (the CPU smoke run) writes scripts/results/gpu_check_quick.* by default, never the
    committed GPU report scripts/results/gpu_check.*; a chosen --out is kept as given."""
    args = load_script(SCRIPTS / "gpu_check.py").Args
    assert args().out == "scripts/results/gpu_check"
    assert args(quick=True).out == "scripts/results/gpu_check_quick"
    assert args(quick=True, out="/tmp/x/gpu_check").out == "/tmp/x/gpu_check"


class Measured(Exception):
    """Raised by a stand-in for a script's setup: its option checks passed and it went on to measure."""


@pytest.mark.parametrize(
    ("option", "ranks", "passes"),
    [("ranks", [], True), ("ranks", [2], True), ("ranks", [0], False), ("update_ranks", [], True), ("update_ranks", [0], False)],
)
def test_repro_timing_times_full_rank_alone_with_no_ranks(
    option: str, ranks: list[int], passes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """repro_timing.py's --ranks may be empty (full rank is always timed, as before its option checks), and so may
    --update-ranks (its section is skipped); a rank below 1 in either is refused with a UsageError naming that option
    before anything is measured."""
    import flipes

    module = load_script(SCRIPTS / "repro_timing.py")

    def setup(*args: object) -> None:
        raise Measured

    monkeypatch.setattr(module, "setup", setup)
    with pytest.raises(Measured if passes else flipes.UsageError) as e:
        module.main(module.Args(**{option: ranks}))
    assert passes or str(e.value).startswith(f"--{option.replace('_', '-')}:"), e.value


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--rounds", "0"], "--rounds"),
        (["--generations", "0"], "--generations"),
        (["--loops", "vector", "--loop-generations", "0"], "--loop-generations"),
        (["--popsize", "-3"], "--popsize"),
        (["--eval-every", "-1"], "--eval-every"),
        (["--envs"], "--envs"),
    ],
)
def test_bench_ab_refuses_options_that_leave_nothing_to_time_in_one_line(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench_ab.py refuses a count below 1 (a median of no rounds, a loop of no generations), a negative size and an
    empty --envs with exit status 2 and one line naming the option, before it exports the base tree or starts a run
    (no StatisticsError or child's traceback: any other exception fails the test)."""
    status, err = run_as_main("bench_ab", ["--base", "no-such-rev", *argv], capsys)
    assert status == 2 and err.startswith(f"flipes: error: {option}:") and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    ("script", "argv", "option"),
    [
        ("bench_backprop_step", ["--steps", "0"], "--steps"),
        ("bench_backprop_step", ["--threads", "0"], "--threads"),
        ("bench_backprop_step", ["--batches", "8", "0"], "--batches"),
        ("bench_atari", ["--threads", "-1", "--quick", "true"], "--threads"),
        ("bench_envs", ["--seed", "-1", "--quick", "true"], "--seed"),
        ("bench_warp", ["--seed", "-1", "--quick", "true"], "--seed"),
        ("bench_memory", ["--threads", "-1", "--quick", "true"], "--threads"),
        ("bench_common_episodes", ["--threads", "-1", "--quick", "true"], "--threads"),
    ],
)
def test_benchmarks_refuse_what_they_cannot_run_in_one_line(
    script: str, argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench_backprop_step.py (no steps to take a median of, an empty batch, no thread), bench_atari.py (a negative
    thread count, torch's RuntimeError; bench_memory.py and bench_common_episodes.py took it for torch's default),
    bench_envs.py and bench_warp.py (a negative seed, gymnasium's error once the envs are made) refuse the option with
    exit status 2 and one line naming it, before timing anything (any other exception fails the test)."""
    status, err = run_as_main(script, argv, capsys)
    assert status == 2 and err.startswith(f"flipes: error: {option}:") and len(err.splitlines()) == 1, err


def test_bench_mpi_reports_an_option_train_refused_as_its_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench_mpi.py ends with the one line a train.py run printed when it refused an option (not a RuntimeError
    traceback around it), and refuses an empty --env-threads (no timing run, nothing to compare) before any run."""
    module = load_script(SCRIPTS / "bench_mpi.py")
    line = "flipes: error: --popsize: must be at least 1, got -1; e.g. --popsize 64"

    def refused(cmd: list[str], **kw: object) -> object:
        import subprocess

        return subprocess.CompletedProcess(cmd, 2, stdout="", stderr=f"some output\n{line}\n")

    monkeypatch.setattr(module.subprocess, "run", refused)
    with pytest.raises(SystemExit) as e:
        module.main(module.Args(env="flipes/CartPole-v1", ranks=[1], env_threads=[1], popsize=-1))
    assert e.value.code == line
    with pytest.raises(UsageError, match="--env-threads: names no thread count"):
        module.main(module.Args(env_threads=[]))


def test_bench_mujoco_stops_at_the_line_of_a_run_that_refused_its_options(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A train.py run that refuses an option (here a negative seed) prints its one line and bench_mujoco.py exits with
    its status 2, not a CalledProcessError traceback."""
    with pytest.raises(SystemExit) as e:
        run_script_in_process("bench_mujoco", "--seeds", "-1", "--quick", "true", "--parts", "threshold", "--out", tmp_path)
    err = capfd.readouterr().err
    assert e.value.code == 2 and "flipes: error: --seed: must be 0 or positive, got -1" in err and "Traceback" not in err, err


def test_the_scripts_lower_bounds_refuse_nan_as_below_them() -> None:
    """``repro_common.check_at_least``, which the repro and Bayes-by-Backprop scripts check their numbers with, refuses
    NaN (which compares below nothing) as it refuses a value below the bound, alone or in a list, in one line; the
    bound itself passes."""
    import types

    common = load_script(Path(__file__).resolve().parents[1] / "scripts" / "repro_common.py")
    for value in (float("nan"), [0.5, float("nan")], -1.0):
        with pytest.raises(UsageError, match=r"^--prior-sigma: must be at least 0, got"):
            common.check_at_least(types.SimpleNamespace(prior_sigma=value), {"prior_sigma": 0})
    common.check_at_least(types.SimpleNamespace(prior_sigma=[0.0, 2.0]), {"prior_sigma": 0})
