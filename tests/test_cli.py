"""The ``flipes`` command line: help for every option, strict types, and user mistakes reported as
one line (``flipes: error: <option>: <what>; <what to do>``, exit status 2, no traceback)."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST_KW, NEEDS_TOMLLIB, ROOT, run_script

import flipes
from flipes.cli import build_parser, check_options, field_docs, parse_config
from flipes.commands import EvaluateConfig, PlotConfig, main
from flipes.config import TrainConfig
from flipes.progress import Progress

USER_MODULE = """
import torch

def make_model(env):
    return torch.nn.Sequential(torch.nn.Linear(3, 2))

def make_string(env):
    return "a model"

def none(model, pop):
    return None

def text(model, pop):
    return "high"

def complex_values(model, pop):
    return torch.zeros(pop.size, dtype=torch.complex64)

def wrong_shape(model, pop):
    return torch.zeros(pop.size + 1)

def nan(model, pop):
    f = torch.zeros(pop.size)
    f[1] = float("nan")
    return f

def ok(model, pop):
    return model(torch.ones(pop.size, 3))[:, 0]

def no_layers(env):
    return torch.nn.Sequential(torch.nn.ReLU())

NOT_CALLABLE = 3
"""
EVAL_MODULE = """
import torch
from user_mod import make_model, ok

def evaluate(model):
    return {value}
"""


@pytest.mark.parametrize("cls", [TrainConfig, EvaluateConfig, PlotConfig])
def test_every_option_of_every_command_has_help_text(cls: type) -> None:
    """Each field of flipes train/evaluate/plot has a docstring, and --help shows it for every option."""
    docs = field_docs(cls)
    assert {f.name for f in dataclasses.fields(cls)} == set(docs) and all(len(d) > 10 for d in docs.values()), docs
    parser = build_parser(cls)
    shown = [a for a in parser._actions if a.help != "==SUPPRESS=="]
    assert all(a.help and not a.help.startswith("(default") for a in shown), [a.dest for a in shown if not a.help]
    text = parser.format_help()
    for f in dataclasses.fields(cls):
        assert docs[f.name].split()[0] in text, f.name


def test_help_shows_percent_signs_of_docstrings_and_given_values_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    """A field docstring and a given value holding "%" (which argparse reads as a format) appear verbatim in --help."""
    from flipes.commands import parse_train_config

    @dataclasses.dataclass
    class Options:
        level: str = "low"
        """Band of 95% of the runs."""

    with pytest.raises(SystemExit) as e:
        parse_config(Options, ["--help"])
    assert e.value.code == 0 and "Band of 95% of the runs. (default: low)" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit) as e:
        parse_train_config(["--out", "runs/50%", "--help"])
    assert e.value.code == 0 and "(given: runs/50%)" in " ".join(capsys.readouterr().out.split())


def test_flags_are_typed_strictly_and_bools_read_three_ways() -> None:
    """Ints refuse 3.7 and take 1e6 as 1,000,000, bools take --x, --x false and --no-x, lists take several values, and
    Literal or None options take only their words."""
    parse = lambda *argv: parse_config(TrainConfig, list(argv))  # noqa: E731
    assert parse("--mirrored").mirrored is True and parse("--mirrored", "false").mirrored is False
    assert parse("--no-mirrored").mirrored is False and parse("--tensorboard", "0").tensorboard is False
    assert parse("--hidden", "8", "16").hidden == [8, 16] and parse("--hidden").hidden == []
    assert parse("--target", "none").target is None and parse("--target", "auto").target == "auto"
    assert parse("--target", "-100").target == -100.0 and parse("--comm", "seeds").comm == "seeds"
    with pytest.raises(flipes.UsageError, match=r"^--generations: expected an integer, got '3.7'"):
        parse("--generations", "3.7")
    # whole numbers in scientific notation read exactly; a fraction of a step or an inf is still refused
    assert parse("--max-timesteps", "1e6").max_timesteps == 1_000_000 and parse("--popsize", "2.56e2").popsize == 256
    assert parse("--max-timesteps", "12345678901234567e3").max_timesteps == 12345678901234567000
    for text in ("2.5e-1", "1.5e0", "inf", "nan", "1" + "0" * 5000, "1e50000000"):  # beyond the digits int() reads too
        with pytest.raises(flipes.UsageError, match=rf"^--generations: expected an integer, got '{text}'"):
            parse("--generations", text)
    with pytest.raises(flipes.UsageError, match=r"^--target: expected a number or 'auto' or none, got 'never'"):
        parse("--target", "never")


def _user_module(tmp_path: Path) -> None:
    (tmp_path / "user_mod.py").write_text(USER_MODULE)
    (tmp_path / "eval_vector.py").write_text(EVAL_MODULE.format(value="torch.zeros(3)"))
    (tmp_path / "eval_nan.py").write_text(EVAL_MODULE.format(value='float("nan")'))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny run directories to evaluate and plot: CartPole, Pendulum (another model), a custom
    fitness (no env), and a CartPole copy whose metrics.jsonl ends in a torn line."""
    import shutil

    root = tmp_path_factory.mktemp("runs")
    _user_module(root)
    sys.path.insert(0, str(root))
    try:
        quiet = {"popsize": 8, "generations": 2, "eval_episodes": 3, "tensorboard": False, "plot": False, "progress": False}
        flipes.train(env="CartPole-v1", out=str(root / "cartpole"), **quiet)
        flipes.train(env="Pendulum-v1", out=str(root / "pendulum"), **quiet)
        flipes.train(env="none", model="user_mod:make_model", fitness="user_mod:ok", out=str(root / "custom"), **quiet)
    finally:
        sys.path.remove(str(root))
    shutil.copytree(root / "cartpole", root / "torn")
    with open(root / "torn" / "metrics.jsonl", "a") as f:
        f.write('{"generation": 2, "fitness_me')
    return {"cartpole": root / "cartpole", "pendulum": root / "pendulum", "custom": root / "custom", "torn": root / "torn"}


BAD_TOML = 'popsize = 8\nenv = "CartPole-v1\n'  # an unclosed string

# (argv after `flipes`, the option the one-line error must name)
MISTAKES: list[tuple[list[str], str]] = [
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--lr", "-0.1"], "--lr"),
    (["train", "--sigma", "0"], "--sigma"),
    (["train", "--sigma", "nan"], "--sigma"),
    (["train", "--target", "nan"], "--target"),
    (["train", "--max-seconds", "nan"], "--max-seconds"),
    (["train", "--threads", "-3"], "--threads"),
    (["train", "--env-threads", "-1"], "--env-threads"),
    (["train", "--hidden", "0"], "--hidden"),
    (["train", "--groups", "3"], "--groups"),
    (["train", "--popsize", "9", "--groups", "3"], "--popsize"),
    (["train", "--popsize", "0"], "--popsize"),
    (["train", "--eval-every", "0"], "--eval-every"),
    (["train", "--generations", "3.7"], "--generations"),
    (["train", "--noise-rank", "33"], "--noise-rank"),
    (["train", "--noise-rank", "-1"], "--noise-rank"),
    (["train", "--algo", "cma-es"], "--algo"),
    (["train", "--sigma-lr", "-0.1"], "--sigma-lr"),
    (["train", "--sigma-lr", "0.1", "--noise-rank", "2"], "--sigma-lr"),
    (["train", "--algo", "ars", "--sigma-lr", "0.2"], "--sigma-lr"),
    (["train", "--sigma-decay", "0"], "--sigma-decay"),
    (["train", "--sigma-decay", "1.01"], "--sigma-decay"),
    (["train", "--sigma-decay", "nan"], "--sigma-decay"),
    (["train", "--sigma-decay", "0.9", "--sigma-lr", "0.1"], "--sigma-decay"),
    (["train", "--algo", "ars", "--sigma-decay", "0.9"], "--sigma-decay"),
    (["train", "--sigma-decay", "1e-12"], "--sigma-decay"),  # σ 1e-13 at the last generation (1)
    (["train", "--sigma-decay", "0.9", "--sigma-min", "-0.01"], "--sigma-min"),
    (["train", "--sigma-decay", "0.9", "--sigma-min", "nan"], "--sigma-min"),
    (["train", "--sigma-decay", "0.9", "--sigma-min", "0.2"], "--sigma-min"),
    (["train", "--sigma-min", "0.01"], "--sigma-min"),
    (["train", "--lr-decay", "0"], "--lr-decay"),
    (["train", "--lr-decay", "1.01"], "--lr-decay"),
    (["train", "--lr-decay", "inf"], "--lr-decay"),
    (["train", "--lr-decay", "0.9", "--lr-min", "-0.01"], "--lr-min"),
    (["train", "--lr-decay", "0.9", "--lr-min", "0.06"], "--lr-min"),  # above --lr 0.05
    (["train", "--lr-min", "0.01"], "--lr-min"),
    (["train", "--algo", "pgpe", "--max-speed", "-0.5"], "--max-speed"),
    (["train", "--action-noise", "0.01"], "--action-noise"),  # CartPole's Discrete(2)
    (["train", "--env", "flipes/Pendulum-v1", "--action-noise", "-0.01"], "--action-noise"),
    (["train", "--env", "flipes/Pendulum-v1", "--action-noise", "nan"], "--action-noise"),
    (["train", "--ars-top", "33"], "--ars-top"),
    (["train", "--algo", "ars", "--mirrored", "false"], "--mirrored"),
    (["train", "--popsize", "1", "--mirrored", "false"], "--popsize"),  # one member's centered rank is always 0
    (["train", "--popsize", "1", "--mirrored", "false", "--shaping", "flipes.shaping:z_score"], "--popsize"),  # spelt so too
    (["train", "--algo", "pgpe", "--shaping", "flipes.shaping:ars"], "--sigma-lr"),  # pgpe's 0.2: ±w pairs never move σ
    (["train", "--shaping", "flipes.shaping:ars", "--mirrored", "false"], "--mirrored"),  # its pairs are mirrored members
    (["train", "--device", "cuda"], "--device"),
    (["train", "--device", "tpu"], "--device"),
    (["train", "--comm", "gossip"], "--comm"),
    (["train", "--mirrored", "maybe"], "--mirrored"),
    (["train", "--lr"], "--lr"),
    (["train", "--popsiz", "8"], "--popsiz"),
    (["train", "--env", "flipes/CartPol-v1"], "--env"),
    (["train", "--env", "CartPol-v1"], "--env"),
    (["train", "--env", "gymnasium:BipedalWalker-v3"], "--env"),
    (["train", "--env", "gymnasium-sync:Blackjack-v1"], "--env"),
    (["train", "--env", "none"], "--env"),
    (["train", "--env", "none", "--model", "user_mod:make_model", "--fitness", "user_mod:none"], "--fitness"),
    (["train", "--env", "none", "--model", "user_mod:make_model", "--fitness", "user_mod:text"], "--fitness"),
    (["train", "--env", "none", "--model", "user_mod:make_model", "--fitness", "user_mod:complex_values"], "--fitness"),
    (["train", "--env", "none", "--model", "user_mod:make_model", "--fitness", "user_mod:wrong_shape"], "--fitness"),
    (["train", "--env", "none", "--model", "user_mod:make_model", "--fitness", "user_mod:nan"], "--fitness"),
    (["train", "--env", "none", "--model", "user_mod:make_model", "--fitness", "no_such_module:f"], "--fitness"),
    (["train", "--env", "none", "--model", "user_mod:make_model", "--fitness", "user_mod"], "--fitness"),
    (["train", "--env", "none", "--model", "user_mod:make_string", "--fitness", "user_mod:none"], "--model"),
    (["train", "--env", "none", "--model", "user_mod:no_layers", "--fitness", "user_mod:ok"], "--model"),
    (["train", "--env", "none", "--model", "user_mod:NOT_CALLABLE", "--fitness", "user_mod:ok"], "--model"),
    (["train", "--env", "none", "--model", "user_mod:make_model", "--fitness", "./user_mod.py:ok"], "--fitness"),
    (["train", "--env", "none", "--model", "eval_vector:make_model", "--fitness", "eval_vector:ok"], "--fitness"),
    (["train", "--env", "none", "--model", "eval_nan:make_model", "--fitness", "eval_nan:ok"], "--fitness"),
    (["train", "--lr", "1e300", "--progress", "false"], "--lr"),  # found once training runs: after its progress lines
    (["train", "--seed", "100000000000000000000000"], "--seed"),
    (["train", "--popsize", "4000000000000"], "--popsize"),
    (["train", "--hidden", "1000000", "1000000"], "--hidden"),
    (["train", "--threads", "100000"], "--threads"),
    (["train", "--target", "-inf"], "--target"),
    (["train", "--resume", "auto", "--overwrite"], "--overwrite"),
    (["train", "--env", "ALE/Pong-v5"], "--env"),
    (["train", "--env", "envpool:CartPol-v1"], "--env"),
    (["train", "--env", "Pendulum-v1", "--noise-rank", "1000"], "--noise-rank"),
    (["train", "--config", "{tmp}/missing.toml"], "--config {tmp}/missing.toml"),
    (["train", "--config", "{tmp}/broken.toml"], "--config {tmp}/broken.toml"),
    (["train", "--out", "{tmp}/a_file/run"], "--out"),
    (["train", "--resume", "{tmp}/no_run"], "--resume"),
    (["train", "--resume", ""], "--resume"),  # an unset $RUN: not a fresh start
    (["train", "--optimizer", "torch.optim:LBFGS"], "--optimizer"),  # its step needs a closure: no loss to recompute
    (["train", "--optimizer", "torch.optim:SparseAdam"], "--optimizer"),  # sparse gradients only
    (["train", "--out", ""], "--out"),  # not runs/CartPole-v1
    (["train", "--env", "none", "--model", "user_mod:make_model", "--fitness", ""], "--fitness"),
    (["evaluate", "{tmp}/no_run"], "{tmp}/no_run"),
    (["evaluate", "{cartpole}", "--episodes", "0"], "--episodes"),
    (["evaluate", "{cartpole}", "--checkpoint", "last"], "--checkpoint"),
    (["evaluate", "{cartpole}", "--checkpoint", "{pendulum}/checkpoint.pt"], "--checkpoint"),
    (["evaluate", "{torn}", "--checkpoint", "best", "--device", "cuda:7"], "--device"),
    (["evaluate", "{custom}"], "{custom}"),
    (["evaluate", "{cartpole}", "--render", "{tmp}/no_dir/x.gif"], "--render"),
    (["evaluate", "{cartpole}", "--render", "{tmp}/x.avi"], "--render"),
    (["evaluate", "{cartpole}", "--render", ""], "--render"),  # not "no recording"
    (["plot", "{cartpole}", "--group", "config", "--csv", ""], "--csv"),
    (["plot", "{cartpole}", "--x", "steps"], "--x"),
    (["plot", "{custom}", "--x", "timesteps"], "--x"),
    (["plot", "{tmp}"], "{tmp}"),
    (["plot", "{cartpole}", "--out", "{tmp}/curves.txt"], "--out"),
    (["plot", "{cartpole}", "--out", "{tmp}/a_file/curves.png"], "--out"),
    (["frobnicate"], "frobnicate"),
]


@pytest.mark.parametrize(("argv", "option"), MISTAKES, ids=[" ".join(a[:4]) for a, _ in MISTAKES])
def test_user_mistakes_are_one_line_errors_naming_the_option(
    argv: list[str],
    option: str,
    runs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """Each mistake exits with status 2 and prints exactly one line on stderr, ``flipes: error:
    <option>: ...`` with a reason and what to do, and no traceback (with the default options, so
    notes and warnings may not come first either); nothing is written where training never started."""
    if "BipedalWalker" in " ".join(argv) and importlib.util.find_spec("Box2D") is not None:
        pytest.skip("Box2D is installed here: the env can be made")
    if "--device" in argv and argv[-1] == "cuda" and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    _user_module(tmp_path)
    (tmp_path / "broken.toml").write_text(BAD_TOML)
    (tmp_path / "a_file").write_text("not a directory")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    names = {"tmp": tmp_path, **runs}
    quiet = ["--tensorboard", "false", "--plot", "false", "--generations", "2"] if argv[0] == "train" else []
    if argv[0] == "train" and "--fitness" not in argv:  # beside a --fitness it is unused, which a note would say
        quiet += ["--eval-episodes", "3"]
    argv = [a.format(**names) for a in argv] + quiet
    if argv[0] == "train" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"flipes: error: {option.format(**names)}: "), lines[0]
    assert ";" in lines[0] or "did you mean" in lines[0], f"no advice in: {lines[0]}"
    if option not in ("--lr", "--fitness"):  # what a fitness returns, and divergence, show only once training runs
        assert not (tmp_path / "out").exists()


def test_specific_messages_say_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Env typos list the flipes ids, a missing extra names what to install, a bad option suggests the right one,
    a --groups that cannot work lists only the values that do (dividing --popsize into even groups), and an option
    refused for a value --algo set names that preset and the fix of either option."""
    for argv, expected in [
        (["train", "--env", "flipes/CartPol-v1"], "flipes/CartPole-v1"),
        (["train", "--popsiz", "8"], "did you mean --popsize"),
        (["train", "--noise-rank", "33"], "--noise-rank 1 ... 32"),
        (["train", "--groups", "3"], "3 does not divide --popsize 64; use one of --groups [1, 2, 4, 8, 16, 32]"),  # 64: odd
        (
            ["train", "--algo", "pgpe", "--popsize", "20"],
            "8 (--algo pgpe's preset unless given) does not divide --popsize 20; use one of --groups [1, 2, 5, 10]",
        ),
        (
            ["train", "--algo", "pgpe", "--noise-rank", "2"],
            "--sigma-lr: adaptive σ (0.2, --algo pgpe's preset unless given) needs full-rank noise (its score is the "
            "Gaussian one), not --noise-rank 2; use --noise-rank 0, or --sigma-lr 0 to keep σ fixed",
        ),
        (
            ["train", "--algo", "pgpe", "--sigma-decay", "0.99"],
            "--sigma-decay: 0.99 schedules σ, and --sigma-lr (0.2, --algo pgpe's preset unless given) adapts it: one rule "
            "sets σ; add --sigma-lr 0 to schedule σ (--algo pgpe keeps ClipUp), or drop --sigma-decay to adapt it",
        ),
        (["train", "--sigma-decay", "0.9", "--sigma-min", "0.2"], "--sigma-min: 0.2 is above --sigma 0.1, where σ starts"),
        (  # a floor needs a decay, and a decay needs σ not adapted: the fix names both
            ["train", "--algo", "pgpe", "--sigma-min", "0.01"],
            "adapted by --sigma-lr 0.2); add --sigma-lr 0 --sigma-decay d < 1, e.g. --sigma-lr 0 --sigma-decay 0.999",
        ),
        (["train", "--sigma-min", "0.01"], "(σ fixed); add --sigma-decay d < 1, e.g. --sigma-decay 0.999, or drop --sigma-min"),
        # a --sigma-lr given beside --algo pgpe is not called its preset
        (["train", "--algo", "pgpe", "--sigma-lr", "0.5", "--noise-rank", "2"], "--sigma-lr: adaptive σ (0.5) needs full-rank"),
        (["train", "--algo", "pgpe", "--sigma-lr", "0.5", "--shaping", "flipes.shaping:ars"], "--sigma-lr: 0.5 with ARS shaping"),
        (["train", "--sigma-min", "0.2"], "--sigma-min: 0.2 floors --sigma-decay's schedule, and --sigma-decay is 1"),
        (["train", "--algo", "ars", "--sigma-min", "0.01"], "(σ fixed); drop --sigma-min (ARS steps at a fixed σ), or use"),
        (["train", "--sigma-decay", "0.5", "--generations", "100"], "set a floor, e.g. --sigma-min 0.001"),
        (["train", "--sigma-decay", "0.5", "--sigma-min", "1e-14", "--generations", "100"], "raise the floor, e.g."),
        (["train", "--popsize", "20", "--groups", "4"], "has 5 (odd); use one of --groups [1, 2, 5, 10], or --mirrored false"),
        (["train", "--popsize", "9"], "no --groups fits --popsize 9: use a --popsize that is a multiple of 2"),
        (  # the env row's --ars-top, not a flag: named as its preset, as --algo pgpe's --groups is
            ["train", "--env", "flipes/Hopper-v5", "--popsize", "4"],
            "--ars-top: 4 (flipes/Hopper-v5's preset unless given) of 2 mirrored pairs; use 1 ... 2, or 0 for all",
        ),
    ] + ([(["train", "--env", "gymnasium:BipedalWalker-v3"], "box2d")] if importlib.util.find_spec("Box2D") is None else []):
        with pytest.raises(SystemExit):
            main([*argv, "--out", str(tmp_path / "out"), "--progress", "false"])
        assert expected in capsys.readouterr().err, argv


def test_the_default_group_count_gives_every_process_whole_groups_and_a_given_one_is_kept() -> None:
    """--groups 0 (the default) is one group on one process; on P processes the fewest groups that give every
    process as many, else the fewest that give each one, each group an even number of members when mirrored;
    more where --members-per-pass parts sample their own groups' noise; a count given is kept (and refused where it
    cannot work), and where no count fits the error names a --popsize."""
    from flipes.config import resolve_groups, validate

    cases = [  # (popsize, mirrored, processes) -> groups
        ((64, True, 1), 1),
        ((64, True, 2), 2),
        ((48, True, 3), 3),
        ((64, True, 3), 4),  # 3 and 6 do not divide 64; no multiple of 3 does with even groups
        ((64, True, 5), 8),
        ((24, True, 4), 4),
        ((10, False, 3), 5),
    ]
    for (popsize, mirrored, processes), groups in cases:
        config = TrainConfig(popsize=popsize, mirrored=mirrored)
        resolved, note = resolve_groups(config, processes)
        assert resolved == dataclasses.replace(config, groups=groups), (popsize, mirrored, processes)
        assert (note == "") == (processes == 1) and (processes == 1 or note.startswith(f"--groups {groups}: each of")), note
        validate(config, processes)  # the default passes where the count it takes does
    parts = TrainConfig(popsize=64, members_per_pass=16, hold_noise=False)  # parts that sample their own groups' noise
    resolved, note = resolve_groups(parts, 1)
    assert resolved.groups == 4 and note.startswith("--groups 4: --members-per-pass 16 with --hold-noise false needs")
    validate(parts)
    with pytest.raises(flipes.UsageError, match="--hold-noise: false with --groups 1"):
        validate(dataclasses.replace(parts, groups=1))
    given = TrainConfig(popsize=64, groups=1)
    assert resolve_groups(given, 2) == (given, "")
    with pytest.raises(flipes.UsageError, match="1 group\\(s\\) cannot be shared by 2 processes"):
        validate(given, 2)
    none_fits = r"0 \(the default\) finds no count for 4 processes; no --groups fits --popsize 6"
    with pytest.raises(flipes.UsageError, match=none_fits):
        validate(TrainConfig(popsize=6), 4)
    with pytest.raises(flipes.UsageError, match="--groups: must be at least 0, got -1"):
        validate(TrainConfig(groups=-1))


@pytest.mark.parametrize(("popsize", "size", "processes"), [(64, 16, 1), (64, 16, 2), (16, 2, 1), (64, 8, 3), (48, 12, 3)])
def test_the_default_group_count_gives_parts_that_sample_their_own_noise_whole_groups(
    popsize: int, size: int, processes: int
) -> None:
    """With --members-per-pass and --hold-noise false, --groups 0 takes the fewest groups that make every part whole
    groups (at least --popsize / --members-per-pass of them, as --hold-noise asks), so a part samples its own groups'
    noise alone rather than the whole of a larger group it lies in; the count passes validation and the note names the
    parts as the reason."""
    from flipes.config import _group_counts, resolve_groups, validate

    config = TrainConfig(popsize=popsize, members_per_pass=size, hold_noise=False)
    resolved, note = resolve_groups(config, processes)
    groups = resolved.groups
    assert popsize // groups <= size and size % (popsize // groups) == 0, groups
    assert groups >= popsize // size
    validate(resolved, processes)
    smaller = [g for g in _group_counts(popsize, processes, True) if g < groups and popsize // g <= size]
    for g in smaller:  # any fewer whole-group counts do not split the processes' members into equal parts
        with pytest.raises(flipes.UsageError):
            validate(dataclasses.replace(config, groups=g), processes)
    assert f"--members-per-pass {size} with --hold-noise false needs parts of whole groups" in note, note


@pytest.mark.parametrize("command", ["train", "evaluate", "plot"])
def test_a_config_that_is_empty_a_directory_or_no_regular_file_is_named_as_such(
    command: str, runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--config "" (an unset shell variable) is refused as empty by every command (evaluate, export and plot ignored it,
    train said '--config .: no such file'), and a directory or /dev/null is named as what it is, not 'no such file'."""
    argv = ["train", "--out", str(tmp_path / "out")] if command == "train" else [command, str(runs["cartpole"])]
    for given, said in (
        ("", "--config: got an empty value (an unset shell variable?); pass a TOML or JSON file, or leave --config out"),
        (str(tmp_path), f"--config {tmp_path}: is a directory, not a file of options; pass a TOML or JSON file"),
        ("/dev/null", "--config /dev/null: is not a regular file; pass a TOML or JSON file"),
    ):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--config", given])
        assert e.value.code == 2 and capsys.readouterr().err == f"flipes: error: {said}\n"
    assert not (tmp_path / "out").exists()


def test_an_empty_value_clears_what_a_config_file_set_and_is_refused_where_nothing_did(tmp_path: Path) -> None:
    """An empty word for a text option whose default means "not given" is refused where that default stands (an unset
    shell variable), and clears the value a --config file set, as leaving the option out of the file would."""
    from flipes.commands import parse_train_config

    cfg = tmp_path / "o.toml"
    cfg.write_text('optimizer = "torch.optim:SGD"\nresume = "auto"\n')
    assert parse_train_config(["--config", str(cfg)]).optimizer == "torch.optim:SGD"
    cleared = parse_train_config(["--config", str(cfg), "--optimizer", "", "--resume", ""])
    assert (cleared.optimizer, cleared.resume) == ("", "")
    with pytest.raises(flipes.UsageError, match=r"^--optimizer: got an empty value"):
        parse_train_config(["--optimizer", ""])


CONFIG_TYPE_ERRORS = [
    ("generations = 3.7\n", "generations = 3.7 is not an integer; write e.g. generations = 4"),
    ('popsize = "64"\n', "popsize = '64' is not an integer; write e.g. popsize = 64"),
    ('lr = "fast"\n', "lr = 'fast' is not a number; write e.g. lr = 0.1"),
    ("hidden = 32\n", "hidden = 32 is not a list of integers; write e.g. hidden = [32]"),
    ("hidden = [32.5]\n", "hidden[0] = 32.5 is not an integer; write e.g. hidden = [32]"),
    ('hidden = "64 64"\n', "hidden = '64 64' is not a list of integers; write e.g. hidden = [64, 64]"),
    ('hidden = "64,64"\n', "hidden = '64,64' is not a list of integers; write e.g. hidden = [64, 64]"),
    ('hidden = "[64, 64]"\n', "hidden = '[64, 64]' is not a list of integers; write e.g. hidden = [64, 64]"),
    ("tensorboard = 1\n", "tensorboard = 1 is not true or false; write e.g. tensorboard = true"),
    ('comm = "gossip"\n', "comm = 'gossip' is not 'allreduce' or 'seeds'; write e.g. comm = \"allreduce\""),
    ('target = "never"\n', "target = 'never' is not a number or 'auto' or none; write e.g. target = \"auto\""),
    ("seed = true\n", "seed = True is not an integer; write e.g. seed = 1"),
    ("seed = 1e300\n", "seed = 1e+300 is not an integer; write e.g. seed = 1\n"),
    ("seed = 1e17\n", "seed = 1e+17 is not an integer; write e.g. seed = 100000000000000000\n"),
    ("popsiz = 8\n", "unknown option 'popsiz'; did you mean popsize?"),
    (
        "[train]\npopsize = 8\n",
        "unknown option 'train'; options go at the top level of the file, not in a table: move them out of 'train'",
    ),
    ("[es.search]\nsigma = 0.1\n", "unknown option 'es'; valid options: env, "),
    # a misspelt table option holding the env's own device: the spelling is the fix, not the top level
    ('[env_kwarg]\ndevice = "cpu"\n', "unknown option 'env_kwarg'; did you mean env_kwargs?"),
]


@NEEDS_TOMLLIB
def test_a_whole_float_is_the_integer_in_config_files_and_the_library(tmp_path: Path) -> None:
    """``max_timesteps = 1e7`` in a TOML or JSON config file (a float there) and ``flipes.train(max_timesteps=1e7)``
    read as the integer 10,000,000, exactly, as ``--max-timesteps 1e7`` does; a list's whole floats too. A float
    with a fraction stays refused (the type errors above), and so does one past 2^53, where floats skip integers."""
    toml, json_file = tmp_path / "run.toml", tmp_path / "run.json"
    toml.write_text("max_timesteps = 1e7\nhidden = [32.0, 64.0]\n")
    json_file.write_text('{"max_timesteps": 1e7, "hidden": [32.0, 64.0]}')
    for path in (toml, json_file):
        config = parse_config(TrainConfig, ["--config", str(path)])
        assert (config.max_timesteps, config.hidden) == (10_000_000, [32, 64])
        assert type(config.max_timesteps) is int and all(type(h) is int for h in config.hidden)
    assert check_options(TrainConfig, {"max_timesteps": 1e7}, "flipes.train") == {"max_timesteps": 10_000_000}
    assert check_options(TrainConfig, {"popsize": np.float32(64.0)}, "flipes.train") == {"popsize": 64}  # numpy's too
    # 2^53 itself is the last float below which every integer is one
    assert check_options(TrainConfig, {"max_timesteps": 2.0**53}, "flipes.train") == {"max_timesteps": 2**53}
    with pytest.raises(flipes.UsageError, match=r"max_timesteps = 9007199254740994.0 is not an integer"):
        check_options(TrainConfig, {"max_timesteps": 2.0**53 + 2}, "flipes.train")
    toml.write_text("seed = 1e17\n")
    with pytest.raises(flipes.UsageError, match=r"seed = 1e\+17 is not an integer"):
        parse_config(TrainConfig, ["--config", str(toml)])


@NEEDS_TOMLLIB
@pytest.mark.parametrize(("text", "message"), CONFIG_TYPE_ERRORS)
def test_config_file_type_errors_are_refused(text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A value of the wrong type in a config file is refused before anything runs, naming the key and
    a value of the right type to write instead (the given one converted where the intent is plain)."""
    cfg = tmp_path / "run.toml"
    cfg.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(cfg), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(f"flipes: error: --config {cfg}: {message}"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("run.toml", "max-timesteps = 10\nmax_timesteps = 20\n", "max_timesteps twice ('max-timesteps' and 'max_timesteps')"),
        ("run.json", '{"env-kwargs": {"g": 1}, "env_kwargs": {"g": 2}}', "env_kwargs twice ('env-kwargs' and 'env_kwargs')"),
        ("run.json", '{"popsize": 8, "popsize": 16}', "popsize twice ('popsize' twice)"),
    ],
)
def test_a_config_file_that_gives_an_option_twice_is_refused(
    name: str, text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An option given twice in one config file (spelt with ``-`` and with ``_``, or a JSON key repeated) is refused
    naming both, instead of one of them counting silently; one spelling alone, and a nested object, read as before."""
    if name.endswith(".toml"):
        pytest.importorskip("tomllib")
    cfg = tmp_path / name
    cfg.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(cfg), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(f"flipes: error: --config {cfg}: gives the option {message}"), err
    (tmp_path / "one.json").write_text('{"max-timesteps": 10, "env_kwargs": {"g": 9.5}}')
    config = parse_config(TrainConfig, ["--config", str(tmp_path / "one.json")])
    assert config.max_timesteps == 10 and config.env_kwargs == {"g": 9.5} and type(config.env_kwargs) is dict


def test_json_config_and_library_overrides_are_typed_too(tmp_path: Path) -> None:
    """JSON config files and ``flipes.train(**overrides)`` go through the same strict checks; a misspelt
    keyword of flipes.train is offered its closest names, ``evaluate`` among them."""
    cfg = tmp_path / "run.json"
    cfg.write_text('{"generations": 2.5}')
    with pytest.raises(flipes.UsageError, match=r"generations = 2.5 is not an integer"):
        parse_config(TrainConfig, ["--config", str(cfg)])
    fix = r"write e.g. generations = 4$"
    with pytest.raises(flipes.UsageError, match=rf"^flipes.train: generations = 3.7 is not an integer; {fix}"):
        flipes.train(generations=3.7)
    with pytest.raises(flipes.UsageError, match=r"^--lr: must be a finite number > 0, got inf"):
        flipes.train(lr=float("inf"), out=str(tmp_path / "x"))
    with pytest.raises(flipes.UsageError, match=r"^flipes.train: unknown option 'evaluation'; did you mean evaluate\?$"):
        flipes.train(evaluation=lambda model: 1.0)  # a keyword of flipes.train besides the options


def test_a_misspelt_callbacks_keyword_is_offered_callbacks() -> None:
    """``callback=`` (Keras' and Lightning's habit is a list named ``callbacks``; so is flipes.train's) is refused
    naming ``callbacks``, the keyword meant, rather than every option of a run, none of which it is."""
    with pytest.raises(flipes.UsageError, match=r"^flipes.train: unknown option 'callback'; did you mean callbacks\?$"):
        flipes.train(callback=[flipes.Callback()])


@pytest.mark.parametrize("key", ["callbacks", "evaluate"])
def test_a_keyword_of_train_given_to_the_config_says_where_it_goes(key: str) -> None:
    """``callbacks=`` or ``evaluate=`` given to TrainConfig.for_env (or replace), which takes options of a run alone, is
    refused saying it is a keyword of flipes.train, not offered itself as the closest spelling."""
    fix = f"{key} is no option of a run but a keyword of flipes.train itself: flipes.train(config, {key}=...)"
    for make in (lambda: TrainConfig.for_env("flipes/CartPole-v1", **{key: []}), lambda: TrainConfig().replace(**{key: []})):
        with pytest.raises(flipes.UsageError) as error:
            make()
        assert str(error.value) == f"flipes.train: unknown option {key!r}; {fix}"


def test_a_scripts_function_is_named_for_another_program_to_give_not_for_the_script_that_lost_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A function recorded from a script (``__main__[trainer]:make_model``) is refused in another program naming it as
    that program imports it, ``model=trainer.make_model``; in the script itself, which no longer defines it, the error
    names no ``trainer.make_model`` (there is none to give) and says to give the function again."""
    from flipes.cli import load_callable

    spec = "__main__[trainer]:make_model_gone"
    for running, value in (("other", "trainer.make_model_gone"), ("trainer", "...")):
        monkeypatch.setattr(flipes.cli, "main_module", lambda running=running: running)
        with pytest.raises(flipes.UsageError) as error:
            load_callable(spec, "--model")
        assert error.value.fix == (
            f"give it again from Python (model={value} of flipes.train, flipes.load_policy or flipes.export_policy), "
            "or define it in a module"
        )


def test_none_for_an_option_whose_unset_value_is_empty_is_that_value_and_elsewhere_an_error(tmp_path: Path) -> None:
    """``resume=None`` (``args.resume`` of an argparse script, or a script's own "no resume") is the unset ``""`` for
    the options whose default is ``""`` (out, resume, fitness, model, optimizer), and ``env_kwargs=None`` the unset
    ``{}``, through TrainConfig.for_env, replace and a JSON config's null; None for an option with a value of its own
    (device, popsize) stays an error; env=None, read as "no env", names env = "none"."""
    unset = {"out": None, "resume": None, "fitness": None, "model": None, "optimizer": None, "env_kwargs": None}
    config = TrainConfig.for_env("flipes/CartPole-v1", **unset)
    assert config == TrainConfig.for_env("flipes/CartPole-v1") and config.resume == "" and config.env_kwargs == {}
    assert config.replace(resume=None).resume == "" and config.replace(env_kwargs=None).env_kwargs == {}
    cfg = tmp_path / "run.json"
    cfg.write_text('{"out": null, "env_kwargs": null, "generations": 3}')
    from_file = parse_config(TrainConfig, ["--config", str(cfg)])
    assert from_file.out == "" and from_file.env_kwargs == {}
    with pytest.raises(flipes.UsageError, match=r"^flipes.train: device = none is not a string"):
        TrainConfig.for_env("flipes/CartPole-v1", device=None)
    with pytest.raises(flipes.UsageError, match=r"^flipes.train: popsize = none is not an integer"):
        flipes.train(popsize=None)
    with pytest.raises(flipes.UsageError, match=r'^flipes.train: env = none is not a string; .* is env = "none" \(with fitness='):
        flipes.train(env=None)


MINIMIZE_FIX = (
    "training maximizes the fitness: return minus the loss from the fitness function (FlipES(..., maximize=False) "
    "takes a loss in a loop of your own)"
)


@pytest.mark.parametrize("key", ["maximize", "objective_sense"])
def test_asking_training_to_minimize_says_how(key: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``maximize=False`` (FlipES's and EvoTorch's switch, ``objective_sense``) given to training, as a keyword of
    flipes.train or a flag, is refused with how to minimize there: return minus the loss; nothing is written."""
    assert_unknown_option(key, False, MINIMIZE_FIX, MINIMIZE_FIX, tmp_path, capsys)


@pytest.mark.parametrize("key", ["num_actors", "num_workers", "workers"])
def test_asking_training_for_worker_processes_names_mpiexec(key: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """EvoTorch's ``num_actors`` (and the usual ``num_workers``) given to training, as a keyword or a flag, is refused
    naming what starts flipes' processes, ``mpiexec -n N``, and the option for an env's own workers, spelt as the
    caller spells options; nothing is written."""
    fix = (
        "flipes' processes are MPI ranks: mpiexec -n N flipes train ... (or a script calling flipes.train) splits the "
        "population among N processes; an env's own worker processes or threads are "
    )
    assert_unknown_option(key, 4, fix + "env_threads", fix + "--env-threads", tmp_path, capsys)


@pytest.mark.parametrize(
    ("key", "flag", "ours", "note"),
    [
        ("noise_std", "--noise-std", "sigma", " (the scale of the parameter noise)"),
        ("std", "--std", "sigma", " (the scale of the parameter noise)"),
        ("output_dir", "--output-dir", "out", " (the run directory)"),
        ("run_dir", "--run-dir", "out", " (the run directory)"),
    ],
)
def test_common_names_of_no_one_library_name_the_option_they_mean(
    key: str, flag: str, ours: str, note: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Names many ES scripts use for σ and the output directory are refused naming that option, not the one closest in
    spelling (--noise-rank for --noise-std, --optimizer for --output-dir), as a keyword and as a flag; nothing is
    written."""
    keyword_fix, flag_fix = f"{key} is {ours} here{note}", f"{flag} is --{ours} here{note}"
    assert_unknown_option(key, 0.1, keyword_fix, flag_fix, tmp_path, capsys)


def assert_unknown_option(
    key: str, value: object, keyword_fix: str, flag_fix: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``key=value`` to flipes.train and TrainConfig and ``--key value`` to flipes train are refused with these fixes;
    nothing is written."""
    with pytest.raises(flipes.UsageError) as error:
        flipes.train(env="none", out=str(tmp_path / "out"), **{key: value})
    assert str(error.value) == f"flipes.train: unknown option {key!r}; {keyword_fix}"
    with pytest.raises(flipes.UsageError) as error:
        TrainConfig(env="none", out=str(tmp_path / "out"), **{key: value})
    assert str(error.value) == f"flipes.TrainConfig: unknown option {key!r}; {keyword_fix}"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", f"--{key.replace('_', '-')}", str(value).lower(), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"flipes: error: --{key.replace('_', '-')}: unknown option; {flag_fix}\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flag", "fix"),
    [
        ("--max-timestep", "did you mean --max-timesteps, --mpi-timeout, --max-episode-steps?"),
        ("--max_timestep", "did you mean --max-timesteps, --mpi-timeout, --max-episode-steps?"),
        ("--env-kwarg", "did you mean --env-kwargs, --env?"),
    ],
)
def test_an_unknown_flag_is_offered_close_flags_once(flag: str, fix: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An unknown flag, typed with - or _, is answered with the close flags each once, as --help writes them (not also
    their _ aliases: --max-timesteps, not --max-timesteps, --max_timesteps)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["train", flag, "1", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"flipes: error: {flag}: unknown option; {fix}\n"


def test_the_console_command_prints_one_line_and_no_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    """The installed ``flipes`` command (python -m flipes where it is not on PATH) reports a bad
    option as one line on stderr with exit status 2; ``flipes train --help`` (flipes.commands.main, which both
    run: ``python -m flipes`` itself runs from a command line in test_a_commands_own_warnings_are_one_line...) lists
    --noise-rank with its help."""
    exe = shutil.which("flipes", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "flipes"]
    r = subprocess.run([*cmd, "train", "--lr", "inf"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("flipes: error: --lr: must be a finite number > 0, got inf; ")
    with pytest.raises(SystemExit) as stop:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and "--noise-rank INT" in out and "Rank of each group" in out


def test_load_policy_on_a_device_this_machine_lacks_names_the_device_not_a_damaged_checkpoint(runs: dict[str, Path]) -> None:
    """flipes.load_policy(run, device=...) on a device this machine does not have (a run copied from a GPU machine loaded
    with device="cuda" on a laptop) or one flipes does not run on is a UsageError naming --device, as flipes evaluate's
    --device is; torch.load's failure to map the tensors there was reported as a damaged checkpoint, with the advice to
    load previous.pt instead."""
    devices = {"xla": "flipes runs on cpu, cuda or mps, not 'xla'", "gpu": "unknown device 'gpu'"}
    if not __import__("torch").cuda.is_available():
        devices["cuda"] = "cuda: this machine has no CUDA device"
    for device, said in devices.items():
        with pytest.raises(flipes.UsageError, match=rf"^--device: {re.escape(said)}"):
            flipes.load_policy(runs["cartpole"], device=device)
    assert not flipes.load_policy(runs["cartpole"], device="cpu").training


def test_plot_reads_a_run_whose_last_line_is_torn(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A metrics.jsonl cut mid-line (a crash during a write) still plots: the torn line is skipped, and said to be."""
    assert main(["plot", str(runs["torn"]), "--out", str(tmp_path / "c.png")]) == 0
    assert capsys.readouterr().err == f"flipes plot: {runs['torn']}: skipped 1 incomplete line(s) of metrics.jsonl\n"
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_the_preset_notes_name_what_the_env_and_algo_rows_set_and_no_flag_changed() -> None:
    """The start-of-run notes list the env row's values a flag did not change, then what ``--algo`` sets over it
    (ARS's σ, lr and linear policy are not shown as the env's); ``hidden`` is left out with ``--model``, where no
    built-in policy is made. A ``--fitness`` beside the default env is said first, with ``--env none`` as the fix."""
    from flipes.commands import parse_train_config, preset_lines

    env, algo = preset_lines(parse_train_config(["--env", "flipes/CartPole-v1", "--algo", "ars", "--popsize", "32"]))
    assert env == "per-env defaults of flipes/CartPole-v1 (flipes.rl.presets): episodes 1, eval_every 2, eval_episodes 100, " \
        "generations 300; flags and --config override them"  # fmt: skip
    assert algo.startswith("--algo ars sets (flipes.rl.presets): hidden [] (a linear policy), lr 0.02, sigma 0.03;")
    (env,) = preset_lines(parse_train_config(["--env", "flipes/CartPole-v1", "--model", "user_mod:make_model"]))
    assert "sigma 0.1, lr 0.05, episodes 1" in env and "hidden" not in env
    assert preset_lines(parse_train_config(["--env", "none", "--fitness", "user_mod:ok", "--model", "user_mod:make_model"])) == []
    first, env = preset_lines(parse_train_config(["--fitness", "user_mod:ok", "--model", "user_mod:make_model"]))
    assert first == "--fitness user_mod:ok runs beside the default --env flipes/CartPole-v1: its presets below apply, the run " \
        "goes to runs/CartPole-v1 unless --out says otherwise, and --model gets its spaces; --env none for a fitness " \
        "that needs no env"  # fmt: skip
    assert env.startswith("per-env defaults of flipes/CartPole-v1")


def test_an_env_version_without_a_row_names_the_row_of_another_version_and_the_flags_it_would_set() -> None:
    """``HalfCheetah-v4`` (an EnvPool id) has no preset row: the note names v5's row and, as flags, only the values of
    it this run does not already have; with all of them given, or for an env no version of which has a row (a row of
    a name that merely begins with it is another env's), none."""
    from flipes.commands import parse_train_config, preset_lines

    (note,) = preset_lines(parse_train_config(["--env", "envpool:HalfCheetah-v4", "--popsize", "128"]))
    assert note == "no per-env defaults for envpool:HalfCheetah-v4: TrainConfig's apply; flipes.rl.presets has " \
        "HalfCheetah-v5's, which would set --sigma 0.03 --lr 0.04 --hidden 64 64 --eval-episodes 5 --generations 2000 " \
        "(flags or a --config file)"  # fmt: skip
    (note,) = preset_lines(parse_train_config(["--env", "Hopper-v4"]))
    assert "has Hopper-v5's, which would set --popsize 16 " in note and " --hidden --eval-every 10 " in note
    assert " --algo ars --ars-top 4 " in note  # the row's own search, as --env Hopper-v5 alone trains
    given = ["--popsize", "128", "--sigma", "0.03", "--lr", "0.04", "--hidden", "64", "64", "--eval-episodes", "5"]
    assert preset_lines(parse_train_config(["--env", "HalfCheetah-v4", *given, "--generations", "2000"])) == []
    assert preset_lines(parse_train_config(["--env", "Blackjack-v1"])) == []
    # another env whose name a row's begins with (discrete MountainCar beside MountainCarContinuous's row), and a
    # "version" that is no number, are no other version of a row's env
    assert preset_lines(parse_train_config(["--env", "MountainCar-v0"])) == []
    assert preset_lines(parse_train_config(["--env", "gymnasium:CartPole-vfast"])) == []


def test_a_mistake_in_the_command_is_named_before_a_run_directory_that_holds_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training into a directory that holds a run, a command that is wrong anyway names that first: an env id typo
    (with the id meant), a --model or --fitness that does not import, a --config file that is not there; the
    run directory is named where the command is otherwise right."""
    _user_module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    held = tmp_path / "held"
    held.mkdir()
    (held / "config.json").write_text("{}")
    (held / "metrics.jsonl").write_text('{"generation": 0}\n')
    custom = ["--env", "none", "--popsize", "8", "--out", str(held)]
    for argv, start in (
        (
            ["--env", "flipes/CartPol-v1", "--out", str(held)],
            "--env: unknown env id 'flipes/CartPol-v1'; did you mean flipes/CartPole-v1?",
        ),
        ([*custom, "--model", "no_such_mod:make_model", "--fitness", "user_mod:ok"], "--model: cannot import 'no_such_mod'"),
        ([*custom, "--model", "user_mod:make_model", "--fitness", "user_mod:no_such_fn"], "--fitness: module 'user_mod' has no"),
        (["--config", str(tmp_path / "missing.toml"), "--out", str(held)], "--config"),
        ([*custom, "--model", "user_mod:make_model", "--fitness", "user_mod:ok"], f"--out: {str(held)!r} holds a run"),
    ):
        with pytest.raises(SystemExit) as stop:
            main(["train", *argv, "--tensorboard", "false", "--plot", "false"])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.startswith(f"flipes: error: {start}"), (argv, err)


NO_WIDTHS = "no widths: a linear policy, or the CNN's convolutions straight into the action layer"  # --hidden's empty list


def _help_entries(argv: list[str], capsys: pytest.CaptureFixture) -> list[str]:
    """``flipes train ARGV --help``'s entry of each option, on one line."""
    from flipes.commands import parse_train_config

    with pytest.raises(SystemExit) as stop:
        parse_train_config([*argv, "--help"])
    assert stop.value.code == 0
    entries: list[str] = []
    for line in capsys.readouterr().out.splitlines():
        if re.match(r"  (-\w, )?--", line):  # an option's first line; its help's lines are indented further
            entries.append("")
        if entries:
            entries[-1] += " " + line.strip()
    return entries


def _shown_defaults(argv: list[str], capsys: pytest.CaptureFixture) -> dict[str, str]:
    """``flipes train ARGV --help``'s ``(default: ...)`` of each long option."""
    shown = (re.search(r"(--[a-z-]+).*\(default: ([^;)]*)[;)].*$", entry) for entry in _help_entries(argv, capsys))
    return dict(m.groups() for m in shown if m)


def test_help_names_the_value_the_command_line_gives_beside_each_default(capsys: pytest.CaptureFixture) -> None:
    """An option given on the command line shows its value beside the default (--env Hopper-v5, whose preset row the
    other defaults are, on the --env line itself; --algo openai-es beside the row's own search, also where it is the
    dataclass default); one it does not give shows the default alone; an empty --hidden, given or a preset row's,
    reads as the linear policy it is."""
    hopper = {e.split()[0]: e for e in _help_entries(["--env", "Hopper-v5", "--popsize", "8", "--no-mirrored"], capsys)}
    assert hopper["--env"].endswith("(default: flipes/CartPole-v1; given: Hopper-v5)"), hopper["--env"]
    assert hopper["--algo"].endswith("(default: ars)")
    es = {e.split()[0]: e for e in _help_entries(["--env", "Hopper-v5", "--algo", "openai-es"], capsys)}
    assert es["--algo"].endswith("(default: ars; given: openai-es)") and es["--popsize"].endswith("(default: 128)")
    assert hopper["--popsize"].endswith("(default: 16; given: 8)") and hopper["--sigma"].endswith("(default: 0.025)")
    assert hopper["--mirrored"].endswith("(default: true; --no-mirrored for false; given: false)")
    assert hopper["--hidden"].endswith(f"(default: {NO_WIDTHS})")  # ARS's row
    linear = {e.split()[0]: e for e in _help_entries(["--hidden"], capsys)}
    assert linear["--hidden"].endswith(f"(default: 32 32; given: {NO_WIDTHS})")
    assert linear["--env"].endswith("(default: flipes/CartPole-v1)")


def test_help_shows_an_empty_string_given_as_itself(capsys: pytest.CaptureFixture) -> None:
    """A string option given empty on the command line (``--device ''``) shows ``given: ''`` beside its default, not
    ``given: no values``, the wording of an empty list; an empty list option keeps what its empty list means."""
    entries = {e.split()[0]: e for e in _help_entries(["--device", "", "--wandb-project", "", "--hidden"], capsys)}
    assert entries["--device"].endswith("(default: cpu; given: '')"), entries["--device"]
    assert entries["--wandb-project"].endswith("(default: flipes; given: '')"), entries["--wandb-project"]
    assert entries["--hidden"].endswith(f"(default: 32 32; given: {NO_WIDTHS})")


def test_help_shows_the_defaults_that_apply_to_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--help`` shows each option's value as this command line would set it: the env's preset row (with the search
    that row names, or ``--algo``'s), a ``--config`` file's values over it; the dataclass defaults where nothing else
    applies."""
    from flipes.commands import parse_train_config

    plain = _shown_defaults([], capsys)
    assert (plain["--popsize"], plain["--generations"], plain["--algo"]) == ("64", "300", "openai-es")
    hopper = _shown_defaults(["--env", "Hopper-v5"], capsys)
    assert (hopper["--popsize"], hopper["--algo"], hopper["--ars-top"], hopper["--sigma"]) == ("16", "ars", "4", "0.025")
    assert (plain["--hidden"], hopper["--hidden"]) == ("32 32", NO_WIDTHS)  # the row's
    es = _shown_defaults(["--env", "Hopper-v5", "--algo", "openai-es"], capsys)
    assert (es["--popsize"], es["--algo"], es["--sigma"], es["--hidden"]) == ("128", "ars", "0.02", "64 64")  # given: openai-es
    (tmp_path / "run.toml").write_text('env = "Hopper-v5"\npopsize = 48\n')
    file = _shown_defaults(["--config", str(tmp_path / "run.toml")], capsys)
    assert (file["--env"], file["--popsize"], file["--algo"]) == ("Hopper-v5", "48", "ars")
    for argv, shown in (([], plain), (["--env", "Hopper-v5"], hopper), (["--config", str(tmp_path / "run.toml")], file)):
        config = parse_train_config(argv)
        assert all(shown[f"--{k.replace('_', '-')}"] == str(getattr(config, k)) for k in ("popsize", "generations", "algo"))


CONSTANT_FITNESS = """
import warnings
import torch

def fitness(model, pop):
    model(torch.zeros(pop.size, 3))
    warnings.warn("a warning of the user's own")
    return torch.zeros(pop.size)

def make_model(env):
    return torch.nn.Linear(3, 1)
"""


@pytest.mark.parametrize("entry", [("-m", "flipes", "train"), ("scripts/train.py",)], ids=["python-m-flipes", "script"])
def test_a_commands_own_warnings_are_one_line_and_a_users_keep_their_place(tmp_path: Path, entry: tuple[str, ...]) -> None:
    """A warning flipes gives about the command's run (all members equal) is one ``flipes: warning:`` line, not a
    header pointing at flipes' entry point; a warning from the user's fitness module keeps its file and line."""
    (tmp_path / "constfit.py").write_text(CONSTANT_FITNESS)
    r = run_script(*entry, "--env", "none", "--model", "constfit:make_model", "--fitness", "constfit:fitness",
                   "--popsize", "8", "--generations", "1", "--out", tmp_path / "run", "--tensorboard", "false", "--plot", "false",
                   "--progress", "false", extra_path=[tmp_path])  # fmt: skip
    lines = r.stderr.splitlines()
    assert [x for x in lines if x.startswith("flipes: warning: generation 0: all 8 members have the same fitness")], r.stderr
    assert "EqualFitnessWarning" not in r.stderr and "sys.exit" not in r.stderr, r.stderr
    assert any(x.startswith(str(tmp_path / "constfit.py")) and "UserWarning: a warning of the user's own" in x for x in lines)


RENDER_HALFCHEETAH = """
import sys
from pathlib import Path
import gymnasium as gym
from flipes.commands import record
from flipes.errors import UsageError
from flipes.rl import MLPPolicy

env = gym.make("HalfCheetah-v5")
policy = MLPPolicy(env.observation_space, env.action_space, hidden=(4,))
try:
    print("frames", record(policy, "HalfCheetah-v5", Path(sys.argv[1]), 0, 3))
except UsageError as e:
    print("usage error:", e)
"""


@pytest.mark.parametrize("missing", ["pygame", "PIL"])
def test_render_without_the_render_extra_names_it_before_the_episodes(
    runs: dict[str, Path], tmp_path: Path, missing: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``flipes evaluate --render`` where the ``[render]`` extra is missing, CartPole's renderer (pygame, which
    gymnasium imports at the first frame) or the GIF writer (pillow), is one UsageError naming ``pip install
    'flipes[render]'``, as the README promises, before any episode is evaluated (no return printed, no file
    written): it was gymnasium's DependencyNotInstalled or PIL's ImportError, with a traceback, after the episodes."""
    from flipes.commands import evaluate_command

    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed: an import of it fails
    gif = tmp_path / "cp.gif"
    with pytest.raises(flipes.UsageError, match=r"^--render: .*; pip install 'flipes\[render\]'$"):
        evaluate_command([str(runs["cartpole"]), "--episodes", "2", "--render", str(gif), "--max-frames", "3"])
    assert capsys.readouterr().out == "" and not gif.exists()


@pytest.mark.parametrize("gl", ["", "glfw"], ids=["MUJOCO_GL-unset", "MUJOCO_GL-glfw"])
def test_rendering_mujoco_without_a_display_uses_egl_or_says_how(tmp_path: Path, gl: str) -> None:
    """On a machine with no display, ``--render`` of a MuJoCo env picks MuJoCo's EGL backend itself (unless
    MUJOCO_GL says otherwise) and writes the GIF; a backend that needs a display is one error naming
    MUJOCO_GL=egl and osmesa, not mujoco's FatalError."""
    pytest.importorskip("mujoco")
    pytest.importorskip("PIL")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MUJOCO_GL")}
    if gl:
        env["MUJOCO_GL"] = gl
    gif = tmp_path / "hc.gif"
    r = subprocess.run([sys.executable, "-c", RENDER_HALFCHEETAH, str(gif)], env={**env, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    if gl:
        assert "usage error: --render: rendering HalfCheetah-v5 found no OpenGL context" in r.stdout, r.stdout + r.stderr
        assert "MUJOCO_GL=egl" in r.stdout and "MUJOCO_GL=osmesa" in r.stdout
    elif "found no OpenGL context" in r.stdout:  # no EGL on this machine either: still the one-line error
        pytest.skip("no EGL here: " + r.stdout.strip())
    else:
        assert "frames 3" in r.stdout, r.stdout + r.stderr
        assert gif.read_bytes()[:6] == b"GIF89a"


def test_resume_auto_notes_a_first_start_and_a_resume_and_progress_false_keeps_the_outcome(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--resume auto`` starting a run says which per-env defaults it used (as a plain start does); resuming says
    where and at which generation; ``--progress false`` prints no generation lines but still how training ended."""
    run = ["train", "--env", "CartPole-v1", "--popsize", "8", "--eval-episodes", "3", "--tensorboard", "false", "--plot", "false",
           "--target", "none", "--out", str(tmp_path / "run"), "--resume", "auto"]  # fmt: skip
    assert main([*run, "--generations", "1"]) == 0
    first = capsys.readouterr()
    assert "per-env defaults of CartPole-v1" in first.err and "resumed" not in first.err
    assert first.out.splitlines()[-1] == f"the 1 generation trained; 1 generation in all, run directory {tmp_path / 'run'}"
    assert main([*run, "--generations", "2"]) == 0
    second = capsys.readouterr()
    assert f"resumed {tmp_path / 'run'} at generation 1" in second.err and "per-env defaults" not in second.err
    assert main([*run, "--generations", "3", "--progress", "false"]) == 0
    quiet = capsys.readouterr()
    assert quiet.out.splitlines() == [f"all 3 generations trained; 3 generations in all, run directory {tmp_path / 'run'}"]
    assert quiet.err == ""


def test_a_run_cut_short_by_max_seconds_names_the_resume_that_continues_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A run that ``--max-seconds`` ends (as Ctrl-C does, with a checkpoint) ends its output with the ``--resume DIR``
    that continues it, and that flag, given as printed, trains the next generation; a run that trained its whole budget
    names no resume."""
    out = tmp_path / "run"
    run = ["train", "--env", "CartPole-v1", "--popsize", "8", "--eval-episodes", "3", "--tensorboard", "false", "--plot", "false",
           "--target", "none", "--progress", "false"]  # fmt: skip
    assert main([*run, "--out", str(out), "--generations", "5", "--max-seconds", "1e-9"]) == 0  # stops after generation 0
    cut = capsys.readouterr().out.splitlines()
    assert len(cut) == 1 and cut[0].endswith(f" s of this call (--max-seconds 1e-09); 1 generation in all, run directory "
                                             f"{out}; --resume {out} continues it"), cut  # fmt: skip
    assert float(cut[0].removeprefix("stopped after ").split()[0]) > 0  # the seconds it ran, not 0 rounded down
    resume = cut[0].split("; ")[-1].removesuffix(" continues it").split()  # ["--resume", DIR]
    assert main([*run, *resume, "--generations", "2", "--max-seconds", "0"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"all 2 generations trained; 2 generations in all, run directory {out}"]


@pytest.mark.parametrize("below", ["", "run"])
def test_an_out_that_is_a_file_or_lies_under_one_names_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, below: str
) -> None:
    """``--out`` naming a file, or a directory under a file, is refused with exit status 2 in one line naming the file
    in the way (not the OS's bare "File exists" or "Not a directory"), and the file is left as it was."""
    monkeypatch.chdir(tmp_path)
    Path("a_file").write_text("notes")
    out = str(Path("a_file", below)) if below else "a_file"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--env", "CartPole-v1", "--popsize", "8", "--generations", "1", "--out", out])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"flipes: error: --out: cannot write the run directory {out!r} ('a_file' is a file, not a directory); "
        "choose a directory you can write, e.g. --out runs/mine\n"
    )
    assert Path("a_file").read_text() == "notes"


def test_evaluate_names_the_checkpoint_file_and_the_generation_it_holds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``flipes evaluate`` ends its line with the file it read and the generation of its weights, numbered as the rows
    of metrics.jsonl: latest is checkpoint.pt after the last generation, best is best.pt after the first generation of
    the highest eval_return, best-member names the generation its member was evaluated in; one episode is singular."""
    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=4, eval_every=1, track_best=True, out=str(run))
    rows = flipes.read_metrics(run)
    best = max(rows, key=lambda r: r["eval_return"])["generation"]  # max() keeps the first of equal ones, as best.pt
    member = rows[-1]["best_member_generation"]
    capsys.readouterr()
    said = {}
    for checkpoint in ("latest", "best", "best-member"):
        assert main(["evaluate", str(run), "--episodes", "1", "--checkpoint", checkpoint]) == 0
        said[checkpoint] = capsys.readouterr().out.strip().split(" over ", 1)[1]
    assert said == {
        "latest": f"1 episode ({run / 'checkpoint.pt'}, after generation 3)",
        "best": f"1 episode ({run / 'best.pt'}, after generation {best})",
        "best-member": f"1 episode ({run / 'checkpoint.pt'}, its best member, from generation {member})",
    }


def test_custom_fitness_runs_default_to_a_directory_named_after_the_fitness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Without ``--out``, an ``--env none`` run is written to ``runs/<fitness function name>`` (from ``mod:fn``
    or a function's ``__name__``; ``runs/none`` for a lambda), so runs of two objectives do not meet in one
    directory; ``--resume auto`` finds the same directory; env runs keep ``runs/<env name>``."""
    assert TrainConfig(env="none", fitness="pkg.objectives:sphere").run_dir() == Path("runs/sphere")
    assert TrainConfig(env="none", fitness="objectives.py:rastrigin").run_dir() == Path("runs/rastrigin")

    def ackley(model: object, pop: object) -> None:
        return None

    assert TrainConfig(env="none", fitness=ackley).run_dir() == Path("runs/ackley")
    assert TrainConfig(env="none", fitness=lambda model, pop: pop).run_dir() == Path("runs/none")
    assert TrainConfig(env="flipes/CartPole-v1", fitness="m:f").run_dir() == Path("runs/CartPole-v1")
    _user_module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--env", "none", "--model", "user_mod:make_model", "--fitness", "user_mod:ok", "--popsize", "8",
            "--tensorboard", "false", "--plot", "false", "--resume", "auto"]  # fmt: skip
    assert main([*argv, "--generations", "1"]) == 0
    assert main([*argv, "--generations", "2"]) == 0
    assert f"resumed {Path('runs/ok')} at generation 1" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ok"]


def test_the_progress_line_is_printed_every_kth_generation_when_piped_and_rewritten_in_place_on_a_terminal() -> None:
    """Piped, ``Progress`` writes a line for every ``every``-th generation and the last one, each holding the
    generation, fitness mean and max, the evaluation where the row has one, the steps where there are any and the
    seconds, then an ETA; on a terminal every generation rewrites one line in place (carriage return, clear), and
    ``message`` ends it before its own line."""
    rows = [{"generation": g, "fitness_mean": g + 0.5, "fitness_max": 2.0 * g, "seconds": 1.0 * g, "timesteps": 100 * g,
             "steps_per_second": 1000.0} | ({"eval_return": 10.0 * g} if g % 2 == 0 else {}) for g in range(6)]  # fmt: skip
    piped = io.StringIO()
    progress = Progress(6, piped, every=2)
    for row in rows:
        progress.update(row)
    progress.message("done")
    eta = r"  eta +(\d+:\d\d:\d\d|\?)"
    expect = [
        "gen   0/6  fitness      0.500  max      0.000  eval      0.000      0.0s",
        "gen   2/6  fitness      2.500  max      4.000  eval     20.000          200 steps    1,000/s      2.0s",
        "gen   4/6  fitness      4.500  max      8.000  eval     40.000          400 steps    1,000/s      4.0s",
        "gen   5/6  fitness      5.500  max     10.000                           500 steps    1,000/s      5.0s",
    ]
    lines = piped.getvalue().splitlines()
    assert len(lines) == 5 and lines[-1] == "done"
    for line, start in zip(lines, expect, strict=False):
        assert re.fullmatch(re.escape(start) + eta, line), (line, start)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    live = Terminal()
    progress = Progress(6, live, every=2)
    for row in rows:
        progress.update(row)
    progress.message("done")
    first, *shown = live.getvalue().split("\r\033[K")
    assert first == "" and len(shown) == 6 and all("\n" not in line for line in shown[:-1])
    assert shown[-1].endswith("\ndone\n") and re.fullmatch(re.escape(expect[-1]) + eta, shown[-1].removesuffix("\ndone\n"))


def test_the_progress_lines_of_a_run_keep_their_columns_in_place() -> None:
    """Every line of a run, piped or live, has each column at the same offset and the same length, whatever the
    values' magnitudes, with a blank evaluation between evaluations (where the run evaluates, also before its first
    one, as a resumed run's first line); a value wider than any before widens its column for the lines after it."""
    rows = [{"generation": g, "fitness_mean": (-7.5) ** g, "fitness_max": 3.0**g, "seconds": 1.5**g, "timesteps": 10**g,
             "steps_per_second": 7.0**g} | ({"eval_return": -(5.0**g)} if g % 2 == 0 else {}) for g in range(1, 8)]  # fmt: skip

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream in (io.StringIO(), Terminal()):
        progress = Progress(100, stream, every=1, evaluates=True)
        for row in rows:
            progress.update(row)
        lines = [line for line in re.split(r"\r\x1b\[K|\n", stream.getvalue()) if line]
        assert len(lines) == 7 and "eval" not in lines[0], lines  # generation 1: before the first evaluation
        labels = ("fitness ", "max ", "eval ", " steps", "/s ", "s  eta ")
        columns = [[line.find(label) for label in labels] for line in lines]
        evaluated = [c for c, row in zip(columns[:6], rows, strict=False) if "eval_return" in row]
        assert evaluated and all(c == evaluated[0] for c in evaluated), lines
        assert all(c[:2] + c[3:] == evaluated[0][:2] + evaluated[0][3:] for c in columns[:6]), lines
        assert len({len(line) for line in lines[:6]}) == 1 and columns[6] != columns[5], lines
    widened = io.StringIO()
    progress = Progress(10, widened)
    for mean in (1.0, 1.0e7, 2.0, -3.0):
        progress.update({"generation": 0, "fitness_mean": mean, "fitness_max": 0.0, "seconds": 0.0})
    first, *after = widened.getvalue().splitlines()
    assert len(first) < len(after[0]) and len({len(line) for line in after}) == 1, widened.getvalue()


def test_a_piped_log_shows_the_generation_a_run_stopped_at_between_two_kth_lines() -> None:
    """Piped with ``every=3``, a run stopped after generation 4 of 10 (Ctrl-C, ``--max-seconds``, a callback) writes
    generation 4's line before the line saying how it ended, so the log's last generation is the one the run holds;
    that line is written once, and not at all when the stop falls on a k-th generation."""
    rows = [{"generation": g, "fitness_mean": float(g), "fitness_max": float(g), "seconds": 1.0 * g} for g in range(7)]
    piped = io.StringIO()
    progress = Progress(10, piped, every=3)
    for row in rows[:5]:
        progress.update(row)
    progress.message("interrupted")
    progress.message("again")
    assert [line.split("  fitness")[0] for line in piped.getvalue().splitlines()] == [
        "gen  0/10", "gen  3/10", "gen  4/10", "interrupted", "again"]  # fmt: skip
    on_k = io.StringIO()
    progress = Progress(10, on_k, every=3)
    for row in rows:
        progress.update(row)
    progress.message("interrupted")
    assert [line.split("  fitness")[0] for line in on_k.getvalue().splitlines()] == [
        "gen  0/10", "gen  3/10", "gen  6/10", "interrupted"]  # fmt: skip


@pytest.mark.parametrize(
    ("key", "flag_fix", "keyword_fix"),
    [
        ("noise_stdev", "OpenAI's ES starter's noise_stdev is --sigma here", "OpenAI's ES starter's noise_stdev is sigma here"),
        (
            "l2coeff",
            "OpenAI's ES starter's l2coeff is --weight-decay here, at c/σ for its l2coeff c (with Adam at --lr = its stepsize)",
            "OpenAI's ES starter's l2coeff is weight_decay here, at c/σ for its l2coeff c (with Adam at lr = its stepsize)",
        ),
        (
            "ac_noise_std",
            "OpenAI's ES starter's ac_noise_std is --action-noise here (added in training rollouts only, as there)",
            "OpenAI's ES starter's ac_noise_std is action_noise here (added in training rollouts only, as there)",
        ),
        ("stdev_init", "EvoTorch's stdev_init is --sigma here", "EvoTorch's stdev_init is sigma here"),
        ("sigma_limit", "evosax's sigma_limit is --sigma-min here", "evosax's sigma_limit is sigma_min here"),
    ],
)
def test_another_libraries_name_for_an_option_is_refused_naming_flipes_own(
    key: str, flag_fix: str, keyword_fix: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An option spelt as OpenAI's ES starter, EvoTorch or evosax spell it (``--noise-stdev``, ``l2coeff=``) is refused
    naming the flipes option that means it, as a flag and as a keyword of flipes.train, not the option whose spelling is
    closest (``--noise-rank`` for ``--noise-stdev``); nothing is written."""
    assert_unknown_option(key, 0.01, keyword_fix, flag_fix, tmp_path, capsys)


def test_a_dataclass_subclass_of_trainconfig_with_a_local_type_builds_and_copies() -> None:
    """A dataclass subclass of TrainConfig whose extra field is annotated with a type local to a function (a string under
    ``from __future__ import annotations``, which typing cannot resolve) builds, takes dataclasses.replace and still
    refuses a misspelt option naming the one meant."""

    class Schedule:
        pass

    @dataclasses.dataclass
    class Extended(TrainConfig):
        schedule: Schedule | None = None

    config = Extended(popsize=16, schedule=Schedule())
    assert config.popsize == 16 and isinstance(config.schedule, Schedule)
    assert dataclasses.replace(config, popsize=32).popsize == 32
    with pytest.raises(flipes.UsageError, match=r"unknown option 'popsiz'; did you mean popsize"):
        TrainConfig(popsiz=16)


def test_too_few_groups_for_the_processes_names_a_fix_that_works_for_a_resume_and_for_a_preset(tmp_path: Path) -> None:
    """A resumed run keeps its group count (another one is refused as another run's), so a resume on more processes
    than the run has groups is told to use fewer processes, not another --groups; --algo pgpe's 8 groups on 16
    processes are named as the preset's, and a new run is told the counts that work."""
    from flipes.config import validate

    run = tmp_path / "run"
    flipes.train(**FAST_KW, groups=1, generations=1, out=str(run))
    resumed = TrainConfig.for_env(resume=str(run))
    with pytest.raises(flipes.UsageError) as error:
        validate(resumed, 2)
    assert str(error.value) == (
        "--groups: 1 group(s) cannot be shared by 2 processes; resume the run on at most 1 process(es) (a run keeps its "
        "--groups; use one of --groups [2, 4] for a new run)"
    )
    with pytest.raises(flipes.UsageError) as error:
        validate(TrainConfig.for_env("flipes/CartPole-v1", algo="pgpe", popsize=64), 16)
    assert str(error.value) == (
        "--groups: 8 group(s) (--algo pgpe's preset unless given) cannot be shared by 16 processes; use one of --groups [16, 32]"
    )
