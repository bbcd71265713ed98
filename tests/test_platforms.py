"""Run directories on machines unlike Linux with a UTF-8 locale: a locale whose default text encoding is not UTF-8
(Windows' cp1252; here LC_CTYPE=C, whose default is ASCII, stands in for it), and Windows' fsync, which needs a
handle open for writing."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import errno
import json
import locale
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import FAST_KW

import flipes
from flipes.callbacks import read_jsonl, write_atomic
from flipes.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from flipes.cli import read_config_file
from flipes.commands import main
from flipes.config import TrainConfig, saved_options, validate
from flipes.errors import UsageError
from flipes.rundir import RunDirLock, carry_history, check_not_in_use
from flipes.runs import run_config
from flipes.seeds import Group, aggregate, write_csv


@pytest.fixture
def ascii_locale() -> Iterator[None]:
    """open()'s default encoding made ASCII for the test (a default other than UTF-8, as on Windows)."""
    with _ascii_locale():
        yield


@contextlib.contextmanager
def _ascii_locale() -> Iterator[None]:
    """open()'s default encoding made ASCII inside the block (skipping the test where it cannot be)."""
    if sys.flags.utf8_mode:
        pytest.skip("Python's UTF-8 mode is on: open()'s default encoding does not follow the locale")
    previous = locale.setlocale(locale.LC_CTYPE)
    try:
        locale.setlocale(locale.LC_CTYPE, "C")
    except locale.Error:
        pytest.skip("no C locale")
    if locale.getpreferredencoding(False).lower().replace("-", "") in ("utf8", "utf_8"):
        locale.setlocale(locale.LC_CTYPE, previous)
        pytest.skip("the C locale's encoding is UTF-8 here")
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, previous)


def test_lock_names_a_holder_whose_host_name_is_not_ascii(
    tmp_path: Path, ascii_locale: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run directory locked by a process on a host whose name is not ASCII is refused naming that host exactly,
    whatever the locale's encoding (the lock file is UTF-8)."""
    pytest.importorskip("fcntl")
    monkeypatch.setattr(socket, "gethostname", lambda: "labor-müller-研究室")
    lock = RunDirLock(tmp_path)
    try:
        with pytest.raises(UsageError, match=r"in use by flipes pid \d+ on labor-müller-研究室"):
            check_not_in_use(tmp_path, "--out")
    finally:
        lock.release()


def test_run_config_reads_utf8_whatever_the_locale(tmp_path: Path, ascii_locale: None) -> None:
    """A config.json holding UTF-8 text (edited by hand, or written by another tool) reads back exactly under a
    locale whose default encoding is not UTF-8."""
    options = {"env": "CartPole-v1", "fitness": "", "out": "runs/σ-sweep/é"}
    (tmp_path / "config.json").write_bytes(json.dumps(options, ensure_ascii=False).encode("utf-8"))
    assert run_config(tmp_path) == options


def test_run_files_read_and_written_by_flipes_are_utf8_whatever_the_locale(tmp_path: Path, ascii_locale: None) -> None:
    """Under a locale whose default encoding is not UTF-8: a resumed run's options come from a config.json holding
    UTF-8 text exactly (not from its checkpoint, nor none), a metrics.jsonl row holding UTF-8 text reads back exactly
    (not with replacement characters), and ``write_atomic`` writes UTF-8 text as UTF-8 bytes."""
    options = dataclasses.asdict(TrainConfig(wandb_project="σ-sweep é"))
    (tmp_path / "config.json").write_bytes(json.dumps(options, ensure_ascii=False).encode("utf-8"))
    assert saved_options(str(tmp_path))["wandb_project"] == "σ-sweep é"
    row = json.dumps({"generation": 0, "note": "σ é"}, ensure_ascii=False)
    (tmp_path / "metrics.jsonl").write_bytes((row + "\n").encode("utf-8"))
    assert read_jsonl(tmp_path / "metrics.jsonl") == ([row], 0)
    write_atomic(tmp_path / "kept.jsonl", row + "\n")
    assert (tmp_path / "kept.jsonl").read_bytes() == (row + "\n").encode("utf-8")


def test_a_dropped_in_checkpoints_other_options_are_named_beside_a_utf8_config(tmp_path: Path) -> None:
    """A checkpoint of another run dropped into a run directory whose config.json holds UTF-8 text (edited by hand)
    is named as trained with other options (``--hidden: [8] in the file, [4] in the run``) under a locale whose
    default encoding is not UTF-8, as under a UTF-8 one."""
    from flipes.rundir import _other_runs_options

    here = flipes.train(**FAST_KW, hidden=[4], generations=1, out=str(tmp_path / "here")).run_dir
    other = flipes.train(**FAST_KW, hidden=[8], generations=1, out=str(tmp_path / "other")).run_dir
    (here / "dropped.pt").write_bytes((other / "checkpoint.pt").read_bytes())
    options = {**json.loads((here / "config.json").read_text(encoding="utf-8")), "wandb_project": "σ-sweep é"}
    (here / "config.json").write_bytes(json.dumps(options, ensure_ascii=False).encode("utf-8"))
    expected = "trained with other options, --hidden: [8] in the file, [4] in the run"
    assert _other_runs_options(here, here / "dropped.pt") == expected
    with _ascii_locale():
        assert _other_runs_options(here, here / "dropped.pt") == expected


@pytest.fixture
def windows_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """``os.fsync`` as on Windows, where it is FlushFileBuffers, which needs a handle open for writing: a read-only
    one fails with EBADF ("Bad file descriptor")."""
    fcntl = pytest.importorskip("fcntl")  # reads a descriptor's access mode
    fsync = os.fsync

    def windows(fd: int) -> None:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", windows)


def test_a_branch_takes_its_history_along_where_fsync_needs_a_writable_handle(tmp_path: Path, windows_fsync: None) -> None:
    """``--resume A --out B`` copies A's metrics.jsonl into B byte for byte, fsynced, where fsync refuses a read-only
    handle (Windows): the copy is synced through a writable one."""
    source, branch = tmp_path / "a", tmp_path / "b"
    source.mkdir()
    branch.mkdir()
    rows = b'{"generation": 0, "fitness_mean": 1.5}\n{"generation": 1, "fitness_mean": 2.5}\n'
    (source / "metrics.jsonl").write_bytes(rows)
    assert carry_history(source, branch, {"best": None}) == ""
    assert (branch / "metrics.jsonl").read_bytes() == rows
    assert sorted(p.name for p in branch.iterdir()) == ["metrics.jsonl"]  # no temporary file left


def test_a_run_writes_its_checkpoints_and_metrics_where_fsync_needs_a_writable_handle(
    tmp_path: Path, windows_fsync: None
) -> None:
    """A ``flipes.train`` run checkpoints every generation and ends with all its metrics rows where fsync refuses a
    read-only handle (Windows): metrics.jsonl is synced through a writable one before each checkpoint."""
    run = tmp_path / "run"
    flipes.train(env="CartPole-v1", popsize=4, hidden=[4], episodes=1, max_episode_steps=5, generations=2, out=str(run))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["generation"] for row in rows] == [0, 1] and (run / "checkpoint.pt").exists()


def _called_with(message: str, call: str) -> str | None:
    """The file named by the Python call ``call(<string literal>)`` that ``message`` suggests, or None where the
    message holds no such call with a valid literal."""
    found = re.search(re.escape(call) + r"""\(('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\)""", message)
    return None if found is None else ast.literal_eval(found.group(1))


# backslashes, as every Windows path has (pasted between quotes, its \r and \n read as escapes), and an apostrophe;
# on Windows three folders, elsewhere one
ODD = "o'brien\\runs\\new"


def test_the_python_a_checkpoint_error_suggests_names_the_file_whatever_its_path(tmp_path: Path) -> None:
    """Each ``flipes.read_checkpoint(...)`` / ``torch.load(...)`` a checkpoint error suggests is valid Python naming the
    file itself, for a path holding backslashes (every Windows path) and an apostrophe."""
    folder = tmp_path / ODD
    folder.mkdir(parents=True)
    own = folder / "mine.pt"
    save_checkpoint({"w": torch.ones(2)}, own)
    save_checkpoint({"w": torch.zeros(2)}, own)  # the first one becomes mine.previous.pt
    own.write_bytes(own.read_bytes()[:100])  # truncated: its previous one is offered
    with pytest.raises(CheckpointError) as damaged:
        read_checkpoint(own)
    assert _called_with(str(damaged.value), "flipes.read_checkpoint") == str(folder / "mine.previous.pt")

    loop = folder / "loop.pt"
    save_checkpoint({"w": torch.ones(2)}, loop)
    with pytest.raises(CheckpointError) as not_a_run:
        load_checkpoint(loop)
    assert _called_with(str(not_a_run.value), "flipes.read_checkpoint") == str(loop)

    plain = folder / "plain.pt"
    torch.save({"w": torch.ones(2)}, plain)
    with pytest.raises(CheckpointError) as foreign:
        read_checkpoint(plain)
    assert _called_with(str(foreign.value), "torch.load") == str(plain)


def test_a_device_without_float64_is_refused_before_anything_is_made_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--device mps`` where MPS is available (as on Apple silicon) is refused by load_policy, evaluate_policy and
    ``flipes evaluate`` in one line naming float64 and the CPU, before an env, a policy or a checkpoint is put there
    (MPS has no float64, which flipes' envs, policies and rollouts keep on the device)."""
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    refused = r"^--device: mps: MPS has no float64, .*; use --device cpu$"
    with pytest.raises(UsageError, match=refused):
        flipes.evaluate_policy(torch.nn.Linear(4, 2), "CartPole-v1", episodes=2, device="mps")
    with pytest.raises(UsageError, match=refused):
        flipes.load_policy(tmp_path / "no run", device="mps")  # the device first, as for one this machine lacks
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"env": "CartPole-v1"}), encoding="utf-8")
    with pytest.raises(SystemExit) as status:
        main(["evaluate", str(tmp_path / "run"), "--device", "mps"])
    assert status.value.code == 2
    assert re.fullmatch(r"flipes: error: --device: mps: MPS has no float64, .*; use --device cpu\n", capsys.readouterr().err)


def test_training_on_mps_is_refused_before_anything_is_built(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``--device mps`` where MPS is available is refused by ``flipes.train`` in one line naming the missing float64 and
    the CPU, before a run directory is made, for an env run and for ``--sigma-lr``; a float32 fitness of one's own
    with ``--env none`` is not refused by that check."""
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    refused = r"^--device: mps: MPS has no float64, .*; use --device cpu$"
    with pytest.raises(flipes.UsageError, match=refused):
        flipes.train(env="CartPole-v1", device="mps", generations=1, out=str(tmp_path / "env"))
    assert not (tmp_path / "env").exists()
    with pytest.raises(flipes.UsageError, match=refused):
        validate(flipes.TrainConfig(env="none", fitness="m:f", model="m:g", device="mps", sigma_lr=0.1))
    validate(flipes.TrainConfig(env="none", fitness="m:f", model="m:g", device="mps"))


def test_files_of_options_and_curves_are_utf8_whatever_the_locale(tmp_path: Path, ascii_locale: None) -> None:
    """Under a locale whose default encoding is not UTF-8 (as on Windows): a ``--config`` TOML or JSON file holding
    non-ASCII text reads exactly (a JSON one with a UTF-8 BOM, as Notepad writes, too), and ``flipes plot --csv``
    writes a group label holding non-ASCII text as UTF-8."""
    toml = tmp_path / "run.toml"
    toml.write_bytes('out = "runs/σ-sweep/é"\n'.encode())
    assert read_config_file(toml) == {"out": "runs/σ-sweep/é"}
    bom = tmp_path / "run.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"out": "runs/ü"}, ensure_ascii=False).encode())
    assert read_config_file(bom) == {"out": "runs/ü"}
    curves = {"fitness_mean": aggregate([([0, 1], [1.0, 2.0])])}
    table = write_csv([Group("σ=0.1 é", ())], [curves], tmp_path / "c.csv", "generation")
    rows = table.read_bytes().decode("utf-8").splitlines()
    assert rows[1].startswith("σ=0.1 é,fitness_mean,0") and len(rows) == 3


def _text_calls_without_encoding(source: str) -> list[int]:
    """Lines of ``source`` that open, read or write a text file without naming its encoding: ``open(...)`` or
    ``.open(...)`` in a text mode, ``.read_text()``, ``.write_text(...)`` (``/proc`` reads aside: ASCII, Linux-only)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name in ("read_text", "write_text"):
            if "/proc" not in ast.unparse(func) and not ast.unparse(func).startswith(("status.", "meminfo.")):
                lines.append(node.lineno)
        elif name == "open" and not (isinstance(func, ast.Attribute) and ast.unparse(func.value) in ("os", "tarfile")):
            modes = [a for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            modes += [k.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)]
            if not any("b" in m.value for m in modes):
                lines.append(node.lineno)
    return lines


def test_every_text_file_flipes_and_its_scripts_read_or_write_names_its_encoding() -> None:
    """Every text file the library, the envs and the scripts open, read or write names its encoding: open()'s default
    follows the locale (cp1252 on Windows), under which non-ASCII config, metrics or Markdown would read as mojibake
    or fail to write."""
    root = Path(__file__).resolve().parent.parent
    found = {
        str(path.relative_to(root)): lines
        for folder in ("flipes", "envs", "scripts")
        for path in sorted((root / folder).rglob("*.py"))
        if (lines := _text_calls_without_encoding(path.read_text(encoding="utf-8")))
    }
    assert found == {}
