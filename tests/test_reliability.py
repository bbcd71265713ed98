"""Nothing lost, nothing hangs: run directories are never overwritten implicitly and are locked in
use, crashes at any write leave a loadable checkpoint, corrupted files are refused, a full disk is
one line, and MPI ranks that disagree or stop end the job within seconds."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import FAST, FAST_KW, ROOT, bounded, closed_with_none_alive, metrics, workers

import flipes
from flipes.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from flipes.commands import main
from flipes.errors import StorageError

MPIEXEC = Path(sys.executable).parent / "mpiexec"


def files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file() and p.name != ".lock"}


def test_a_run_directory_is_never_overwritten_implicitly(tmp_path: Path) -> None:
    """Training into a directory that holds a run is refused, offering --resume, another --out or
    --overwrite, and leaves every file as it was (curves.png among them); --overwrite replaces the run, the old run's
    curves.png too (the new one draws none)."""
    run = tmp_path / "run"
    flipes.train(**{**FAST_KW, "plot": True}, generations=3, out=str(run))
    before = files(run)
    with pytest.raises(flipes.UsageError, match=r"holds a run .*--resume .*another --out.*--overwrite"):
        flipes.train(**FAST_KW, generations=5, seed=1, out=str(run))
    assert files(run) == before
    again = flipes.train(**FAST_KW, generations=2, seed=1, out=str(run), overwrite=True)
    assert [r["generation"] for r in metrics(run)] == [0, 1] and again.metrics == metrics(run)
    assert not (run / "curves.png").exists()
    assert (not (run / "previous.pt").exists() and not (run / "best.pt").exists()) or load_checkpoint(run / "best.pt")


def test_a_run_that_failed_before_its_first_generation_is_taken_over_by_the_next_command(tmp_path: Path) -> None:
    """A run that fails at once (a plug-in being debugged) leaves only its starting state; the next
    command into that directory trains there as into a new one (nothing of the failed run is resumed)."""

    class Broken(flipes.Callback):
        def on_train_start(self, state: object) -> None:
            raise RuntimeError("not yet")

    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="not yet"):
        flipes.train(**FAST_KW, generations=2, out=str(run), callbacks=[Broken()])
    assert (run / "checkpoint.pt").exists() and metrics(run) == []
    again = flipes.train(**FAST_KW, generations=2, seed=1, out=str(run))
    fresh = flipes.train(**FAST_KW, generations=2, seed=1, out=str(tmp_path / "fresh"))
    assert [r["params_sha256"] for r in again.metrics] == [r["params_sha256"] for r in fresh.metrics]
    assert load_checkpoint(run)["config"]["seed"] == 1
    copied = tmp_path / "copied"  # trained parameters without their metrics (a moved run) are still a run
    copied.mkdir()
    for name in ("checkpoint.pt", "config.json"):
        (copied / name).write_bytes((tmp_path / "fresh" / name).read_bytes())
    with pytest.raises(flipes.UsageError, match="holds a run"):
        flipes.train(**FAST_KW, generations=2, out=str(copied))


def test_a_run_directory_in_use_is_locked(tmp_path: Path, forked: ForkedTrain) -> None:
    """While one process trains into a directory, a second one (here: a resume, and a branch into
    another --out) is refused at once, naming --resume, the option that points at the live run, and the process holding
    it by pid and host."""
    run = tmp_path / "run"
    pid, _ = forked.start(None, *FAST, "--generations", "100000", "--out", run)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (run / "checkpoint.pt").exists():
            time.sleep(0.1)
        t0 = time.monotonic()
        holder = f"flipes pid {pid} on {socket.gethostname()}"  # a pid alone names no process on another node
        in_use = rf"^--resume: '{run}' is in use by {re.escape(holder)}; wait for it to end, then resume it$"
        with pytest.raises(flipes.UsageError, match=in_use):
            flipes.train(resume=str(run), generations=100001, max_timesteps=1)  # let through, it ends at once
        with pytest.raises(flipes.UsageError, match=in_use):
            flipes.train(resume=str(run), out=str(tmp_path / "branch"), generations=100001, max_timesteps=1)
        assert time.monotonic() - t0 < 20 and not (tmp_path / "branch").exists()
    finally:
        os.kill(pid, signal.SIGTERM)
        forked.status(timeout=60)


def test_a_directory_in_place_of_the_lock_file_is_named(tmp_path: Path) -> None:
    """A directory where the run keeps its lock file is one error naming it and the command that removes
    it, not a claim that the run directory cannot be written; nothing else is written."""
    (tmp_path / "run" / ".lock").mkdir(parents=True)
    with pytest.raises(flipes.UsageError, match=r"^--out: '.*\.lock' is a directory, where flipes keeps its lock file; rmdir "):
        flipes.train(**FAST_KW, generations=1, out=str(tmp_path / "run"))
    assert [p.name for p in (tmp_path / "run").iterdir()] == [".lock"]


def test_nothing_is_written_before_the_options_are_checked(tmp_path: Path) -> None:
    """A refused resume (other options) leaves config.json as it was, and a mistyped --resume path
    creates nothing (a run's every file, curves.png too, stays as it was)."""
    run = tmp_path / "run"
    flipes.train(**{**FAST_KW, "plot": True}, generations=2, out=str(run))
    before = files(run)
    with pytest.raises(flipes.UsageError, match=r"--sigma: saved 0\.1, now 0\.3"):
        flipes.train(**FAST_KW, generations=4, sigma=0.3, resume=str(run))
    with pytest.raises(flipes.UsageError, match="--resume: no checkpoint"):
        flipes.train(**FAST_KW, generations=4, resume=str(tmp_path / "rnu"), out=str(tmp_path / "new"))
    assert files(run) == before and not (tmp_path / "rnu").exists() and not (tmp_path / "new").exists()


_UNINTERRUPTED: dict[int, list[str]] = {}
# Episodes of the runs compared with uninterrupted() end at 50 steps: the writes, kills and resumes these tests check are
# those of 500-step episodes (what CartPole reaches by generation 2), at a fraction of the CPU.
CUT, CUT_KW = ["--max-episode-steps", "50"], {"max_episode_steps": 50}


def uninterrupted(tmp_path: Path, generations: int) -> list[str]:
    """params_sha256 per generation of a FAST run (episodes cut at 50 steps: CUT) never stopped; trained once per process
    and generation count (the training is deterministic: the resumed runs compared with it check exactly that)."""
    if generations not in _UNINTERRUPTED:
        run = flipes.train(**FAST_KW, **CUT_KW, generations=generations, out=str(tmp_path / "reference"))
        _UNINTERRUPTED[generations] = [r["params_sha256"] for r in run.metrics]
    return list(_UNINTERRUPTED[generations])


@pytest.fixture(scope="module")
def three_generations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FAST run of 3 generations (episodes cut: CUT) with a checkpoint each, trained once per module; copy it before use."""
    run = tmp_path_factory.mktemp("three") / "run"
    flipes.train(**FAST_KW, **CUT_KW, generations=3, checkpoint_every=1, out=str(run))
    return run


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns(".lock"))
    return to


def train_command(capsys: pytest.CaptureFixture, *argv: str | Path) -> tuple[int, str]:
    """``flipes train ARGV`` in this process (the command scripts/train.py runs): its exit status and stderr."""
    capsys.readouterr()
    try:
        status = main(["train", *map(str, argv)])
    except SystemExit as e:  # a usage error: one line, status 2
        status = e.code
    return status, capsys.readouterr().err


class ForkedTrain:
    """``flipes train`` commands run in turn by ``tests/killpoints.py --serve``, each in a process of its own forked from
    that server, which imported flipes once (a fresh python spends ~2 s of CPU importing it before the command starts)."""

    def __init__(self, scratch: Path) -> None:
        self.scratch, self.count, self.pending = scratch, 0, 0
        self.server = subprocess.Popen([sys.executable, "tests/killpoints.py", "--serve"], cwd=ROOT, text=True,
                                       env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE)  # fmt: skip

    def start(
        self, point: str | None, *argv: str | Path, session: bool = False, env: dict[str, str] | None = None,
        path: Sequence[Path] = (),
    ) -> tuple[int, Path]:  # fmt: skip
        """The pid of the process running ``flipes train ARGV`` with the kill point ``point`` (None: none), in a process
        group of its own where ``session`` (as ``start_new_session``), with ``env`` added to its environment and ``path``
        before its sys.path (as run_script's ``env`` and ``extra_path``), and the stem of its output files (``.out``,
        ``.err``)."""
        assert self.server.stdin is not None and self.server.stdout is not None
        if self.pending:  # a test that failed before it ended its process: its status line comes first
            os.kill(self.pending, signal.SIGKILL)
            self.status()
        self.count += 1
        stem = self.scratch / str(self.count)
        request = {"point": point, "argv": list(map(str, argv)), "stdout": f"{stem}.out", "stderr": f"{stem}.err",
                   "session": session, "env": env or {}, "path": list(map(str, path))}  # fmt: skip
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        self.pending = int(self.server.stdout.readline())
        return self.pending, stem

    def status(self, timeout: float = 120) -> int:
        """The exit status of the process started last, once it has ended (-9: killed by SIGKILL); one still running
        after ``timeout`` seconds is killed, and fails the test (run_script's timeout)."""
        assert self.server.stdout is not None
        hung = threading.Event()
        timer = threading.Timer(timeout, lambda: (hung.set(), os.kill(self.pending, signal.SIGKILL)))
        timer.start()
        try:
            status = int(self.server.stdout.readline())
        finally:
            timer.cancel()
        self.pending = 0
        assert not hung.is_set(), f"flipes train still running after {timeout} s"
        return status

    def run(self, point: str | None, *argv: str | Path, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess:
        """``python tests/killpoints.py POINT ARGV`` as run_script returns it: exit status, stdout and stderr (``kw``:
        start's ``env`` and ``path``)."""
        _, stem = self.start(point, *argv, **kw)
        status = self.status(timeout)
        return subprocess.CompletedProcess(argv, status, Path(f"{stem}.out").read_text(), Path(f"{stem}.err").read_text())

    def close(self) -> None:
        if self.pending:
            os.kill(self.pending, signal.SIGKILL)
        if self.server.stdin is not None:
            self.server.stdin.close()
        try:
            self.server.wait(timeout=60)
        finally:
            if self.server.poll() is None:
                self.server.kill()
                self.server.wait()


@pytest.fixture(scope="module")
def forked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkedTrain]:
    """One killpoints server per module (and pytest-xdist worker)."""
    server = ForkedTrain(tmp_path_factory.mktemp("forked"))
    yield server
    server.close()


@pytest.mark.parametrize("point", ["metrics-rewrite", "between-renames"])
def test_a_kill_at_any_write_leaves_a_run_that_resumes_bit_for_bit(
    point: str, tmp_path: Path, three_generations: Path, forked: ForkedTrain
) -> None:
    """SIGKILL while metrics.jsonl is rewritten, or between the renames of a checkpoint save, leaves
    complete files under their names; the same --resume command then finishes the run with the
    parameters of an uninterrupted one."""
    run = copy_run(three_generations, tmp_path / "run")
    r = forked.run(point, "--resume", run, "--generations", "6", "--checkpoint-every", "1")
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert load_checkpoint(run)["es"]["generation"] >= 3  # complete, under the name --resume reads
    assert [r["generation"] for r in metrics(run)][:3] == [0, 1, 2]  # whole lines, nothing lost
    flipes.train(resume=str(run), generations=6)
    assert [r["params_sha256"] for r in metrics(run)] == uninterrupted(tmp_path, 6)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_kill_while_a_run_directory_is_set_up_leaves_one_the_same_command_completes(
    k: int, tmp_path: Path, three_generations: Path, capsys: pytest.CaptureFixture, forked: ForkedTrain
) -> None:
    """SIGKILL before the k-th file a new run or a branch (--resume A --out B) renames into place while
    its directory is set up (config.json, the carried metrics.jsonl and best.pt, the first checkpoint):
    running the same command again completes the run, with the parameters of an uninterrupted one and,
    for the branch, A's rows before its own. A run directory whose config.json was lost resumes with the
    options its checkpoint records. (The killed commands run in a subprocess; the commands run again run
    in this one, as ``flipes train``'s main.)"""
    source = copy_run(three_generations, tmp_path / "a")
    expect = uninterrupted(tmp_path, 6)
    cli = [*FAST, *CUT, "--generations", "6", "--checkpoint-every", "1"]
    fresh, branch = tmp_path / "new", tmp_path / "branch"
    r = forked.run(f"replace-{k}", *cli, "--out", fresh)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert train_command(capsys, *cli, "--out", fresh)[0] == 0
    assert [r["params_sha256"] for r in metrics(fresh)] == expect
    r = forked.run(f"replace-{k}", *cli, "--resume", source, "--out", branch)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert train_command(capsys, *cli, "--resume", source, "--out", branch)[0] == 0
    assert [r["params_sha256"] for r in metrics(branch)] == expect
    if k == 1:
        (fresh / "config.json").unlink()
        assert train_command(capsys, "--resume", fresh, "--generations", "7")[0] == 0
        assert [r["generation"] for r in metrics(fresh)] == list(range(7))


def test_a_branch_cut_short_then_set_up_from_another_source_holds_that_sources_rows(
    tmp_path: Path, three_generations: Path, capsys: pytest.CaptureFixture, forked: ForkedTrain
) -> None:
    """A branch killed while its directory is set up, then set up again from another source, holds that
    source's rows alone, none of the first one's; a whole run that lost both checkpoints is refused as a
    run (without --overwrite), not taken over as a setup cut short. (The killed command runs in a
    subprocess, the others in this one, as ``flipes train``'s main.)"""
    source, other, branch = copy_run(three_generations, tmp_path / "a"), tmp_path / "other", tmp_path / "switched"
    flipes.train(**FAST_KW, **CUT_KW, seed=1, generations=3, checkpoint_every=1, out=str(other))
    cli = [*FAST, *CUT, "--generations", "6", "--checkpoint-every", "1"]
    r = forked.run("replace-3", *cli, "--resume", source, "--out", branch)
    assert r.returncode == -signal.SIGKILL and (branch / "metrics.jsonl").exists(), r.stderr[-2000:]
    assert train_command(capsys, *cli, "--resume", other, "--out", branch)[0] == 0
    rows = [r["params_sha256"] for r in metrics(branch)]
    assert len(rows) == 6 and rows[:3] == [r["params_sha256"] for r in metrics(other)]
    for name in ("checkpoint.pt", "previous.pt"):
        (branch / name).unlink()
    status, err = train_command(capsys, *cli, "--out", branch)
    assert status == 2 and "holds a run" in err, err[-2000:]


def test_a_signal_during_the_final_save_waits_for_it(tmp_path: Path, forked: ForkedTrain) -> None:
    """SIGTERM arriving while the final checkpoint is renamed into place lets the write finish: the
    checkpoint is the final generation's and nothing is left half-done."""
    run = tmp_path / "run"
    r = forked.run("final-save", *FAST, "--generations", "4", "--out", run)
    assert r.returncode in (0, 130), r.stderr[-2000:]
    assert load_checkpoint(run)["es"]["generation"] == 4 and not list(run.glob("*.tmp"))
    assert [r["generation"] for r in metrics(run)] == [0, 1, 2, 3]


SIGNALLING_FITNESS = """
import os, signal, torch

def make_model(env):
    return torch.nn.Linear(3, 1)

def fitness(model, pop):
    if pop.generation == 1:  # a first SIGTERM: the run stops after this generation, with a checkpoint
        os.kill(os.getpid(), signal.SIGTERM)
    return -model(torch.ones(pop.size, 3)).square().sum(1)
"""


def test_a_second_signal_while_the_last_files_are_written_is_the_one_last_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A first SIGTERM ends the run after its generation; a Ctrl-C while curves.png is drawn (a second or so after the
    final checkpoint) stops at once: its line, naming the final checkpoint, is the only line saying how the run ended,
    not a second one after "interrupted; 2 generations in all ..." (status 130; the checkpoint holds both
    generations)."""
    from flipes.callbacks import CurvePlotter

    (tmp_path / "signalling.py").write_text(SIGNALLING_FITNESS)
    monkeypatch.syspath_prepend(str(tmp_path))
    drawn = CurvePlotter.on_train_end

    def signalled(self: CurvePlotter, state: object, reason: str) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        drawn(self, state, reason)

    monkeypatch.setattr(CurvePlotter, "on_train_end", signalled)
    run = tmp_path / "run"
    capsys.readouterr()
    status = main(["train", "--env", "none", "--model", "signalling:make_model", "--fitness", "signalling:fitness",
                   "--popsize", "8", "--generations", "100", "--tensorboard", "false", "--progress", "false",
                   "--out", str(run)])  # fmt: skip
    out, err = capsys.readouterr()
    assert status == 130 and "generations in all" not in out + err, out + err
    assert "stopped at once by a second Ctrl-C; the last checkpoint (after generation 1) stays" in err, err
    assert load_checkpoint(run)["es"]["generation"] == 2


SLOW_MODEL = """
import os, pathlib, time, torch

def make_model(env):
    if os.environ.get("SLOW_MODEL_MARK"):  # says it is building, then takes its time
        pathlib.Path(os.environ["SLOW_MODEL_MARK"]).touch()
        time.sleep(60)
    return torch.nn.Linear(3, 1)

def fitness(model, pop):
    return -model(torch.ones(pop.size, 3)).square().sum(1)
"""


def test_a_signal_while_the_run_is_set_up_stops_at_once_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forked: ForkedTrain
) -> None:
    """SIGTERM while the model is built (a --model that loads for a minute) ends the command at once with status 130
    and one line saying nothing was written and that the same command starts the run, and no run directory exists;
    Ctrl-C while a resume builds it leaves the run as it was (its files byte for byte) and names the --resume. (Each
    signalled command runs in a process of its own: ForkedTrain.)"""
    (tmp_path / "slowmodel.py").write_text(SLOW_MODEL)
    mark = tmp_path / "building"
    args = ["--env", "none", "--model", "slowmodel:make_model", "--fitness", "slowmodel:fitness", "--popsize", "8",
            "--tensorboard", "false", "--plot", "false", "--progress", "false"]  # fmt: skip
    run = tmp_path / "run"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SLOW_MODEL_MARK", raising=False)  # built at once here
    # the run's every file stays as it was, curves.png too
    flipes.train(env="none", model="slowmodel:make_model", fitness="slowmodel:fitness", popsize=8, generations=1,
                 tensorboard=False, progress=False, out=str(run))  # fmt: skip
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    fresh = tmp_path / "fresh"
    for argv, sig, line in (
        ([*args, "--out", str(fresh)], signal.SIGTERM,
         f"SIGTERM while the run was set up; nothing was written to {fresh}: the same command starts the run"),
        (["--resume", str(run), "--generations", "2"], signal.SIGINT,
         f"Ctrl-C while the run was set up; {run} is as it was: --resume {run} continues it"),
    ):  # fmt: skip
        mark.unlink(missing_ok=True)
        pid, stem = forked.start(None, *argv, env={"SLOW_MODEL_MARK": str(mark)}, path=[tmp_path])
        deadline = time.monotonic() + 60
        while not mark.exists() and time.monotonic() < deadline and running(pid):
            time.sleep(0.02)
        os.kill(pid, sig)
        status, err = forked.status(timeout=60), Path(f"{stem}.err").read_text()
        assert status == 130 and err == f"flipes: interrupted: train stopped at once by {line}\n", err
    assert not fresh.exists()
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_signal_while_the_run_directory_is_written_leaves_it_whole_and_trains_nothing(
    tmp_path: Path, forked: ForkedTrain
) -> None:
    """SIGTERM as a new run's config.json is written lets the setup finish: the directory holds the starting
    checkpoint (generation 0) and no row, the command exits 130 naming the --resume that continues it, and that
    resume trains the run."""
    run = tmp_path / "run"
    r = forked.run("setup-sigterm", *FAST, "--generations", "2", "--out", run)
    assert r.returncode == 130 and "stopping before the first generation" in r.stderr, r.stderr[-2000:]
    assert r.stdout.strip() == f"interrupted; 0 generations in all, run directory {run}; --resume {run} continues it"
    assert load_checkpoint(run)["es"]["generation"] == 0 and metrics(run) == [] and not list(run.glob("*.tmp"))
    flipes.train(resume=str(run))
    assert [row["generation"] for row in metrics(run)] == [0, 1]


class RankOfTwo(flipes.dist.SerialComm):
    """Rank ``rank`` of a job of 2 whose other rank does what this one does; ``bcast`` records what it was given and
    returns rank 0's object: on rank 1 the next of ``from_rank_0``, once they are used up its own."""

    size = 2

    def __init__(self, rank: int, from_rank_0: Sequence[object] = ()) -> None:
        self.rank, self.from_rank_0, self.sent = rank, list(from_rank_0), []

    def bcast(self, obj: object) -> object:
        self.sent.append(obj)
        return self.from_rank_0.pop(0) if self.rank == 1 and self.from_rank_0 else obj


LINEAR_KW = {"env": "none", "model": lambda env: torch.nn.Linear(3, 1), "popsize": 8, "groups": 2, "generations": 2,
             "fitness": lambda model, pop: -model(torch.ones(pop.size, 3)).square().sum(1), "progress": False,
             "tensorboard": False, "plot": False}  # fmt: skip


@pytest.mark.parametrize("rank", [0, 1])
def test_a_signal_to_every_rank_as_they_agree_lets_rank_0_write_the_run_directory_whole(
    rank: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A SIGTERM reaching a rank inside agree() (mpiexec forwards it to every rank; rank 0 writes the run directory once
    every rank is in agree()) no longer stops that rank at once: rank 1 stopping at once ended the job while rank 0 wrote
    the directory, with a line saying nothing was written. Each rank returns 'interrupted' before the first generation,
    rank 0 with its directory whole (generation 0); rank 0's note is said after agree(), not inside it, as a rank still
    setting up may end the job at once with its own line instead."""

    def agree(comm: object, config: object, state: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs here
        assert "stopping" not in capsys.readouterr().err

    monkeypatch.setattr(flipes.training, "agree", agree)
    run = tmp_path / "run"
    try:
        result = flipes.train(**LINEAR_KW, comm=RankOfTwo(rank), out=str(run))
    except flipes.training.Interrupted as e:  # a KeyboardInterrupt: it would end the test session
        pytest.fail(f"stopped at once: {e}")
    assert result.reason == "interrupted"
    err = capsys.readouterr().err
    if rank == 0:
        assert load_checkpoint(run)["es"]["generation"] == 0 and metrics(run) == []
        assert err.count("flipes: SIGTERM: stopping before the first generation") == 1, err
    else:
        assert not (run / "checkpoint.pt").exists() and "stopping" not in err


def test_a_mistake_rank_0_alone_checks_is_raised_on_every_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run directory holding a run (or --wandb without its package), which rank 0 alone checks before the ranks agree,
    is sent to the others and raised there too, the same UsageError: before, rank 1 waited for rank 0 in agree() until
    --mpi-timeout (300 s) when a script caught rank 0's error. Rank 0 raises its own error and sends its parts."""
    run = tmp_path / "run"
    flipes.train(**{**LINEAR_KW, "generations": 1}, out=str(run))
    comm = RankOfTwo(0)
    with pytest.raises(flipes.UsageError, match="holds a run") as raised:
        flipes.train(**LINEAR_KW, comm=comm, out=str(run))
    error = raised.value
    assert comm.sent == [None, None, (error.option, error.problem, error.fix)]  # in use?, --wandb?, the run directory
    with pytest.raises(flipes.UsageError) as on_rank_1:
        flipes.train(**LINEAR_KW, comm=RankOfTwo(1, from_rank_0=comm.sent), out=str(run))
    assert str(on_rank_1.value) == str(error)
    monkeypatch.setattr(flipes.training.importlib.util, "find_spec", lambda name: None)
    comm = RankOfTwo(0)
    with pytest.raises(flipes.UsageError, match="--wandb: needs the wandb package"):
        flipes.train(**LINEAR_KW, comm=comm, wandb=True, out=str(tmp_path / "other"))
    assert comm.sent[1][0] == "--wandb" and not (tmp_path / "other").exists()


def checkpoint_renamed_with(
    at: int, before_rename: Callable[[Path], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, bytes]:
    """A checkpoint.pt saved once (its path and bytes), and the renames of later saves patched to call
    ``before_rename(source)`` first at the ``at``-th of them (1: previous.pt's, 2: checkpoint.pt's)."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"generation": 1}, path)
    real_replace, calls = os.replace, [0]

    def replace(src: Path, dst: Path) -> None:
        calls[0] += 1
        if calls[0] == at:
            before_rename(src)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return path, path.read_bytes()


@pytest.mark.parametrize("at", [1, 2], ids=["previous-pt", "checkpoint-pt"])
def test_a_checkpoint_write_stopped_at_once_leaves_the_old_checkpoint_and_no_temporary_file(
    at: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt (a second Ctrl-C or SIGTERM stops training at once) at either rename of a checkpoint write
    (previous.pt's, checkpoint.pt's) leaves checkpoint.pt as it was and no temporary file."""

    def stop(src: Path) -> None:
        raise KeyboardInterrupt

    path, before = checkpoint_renamed_with(at, stop, tmp_path, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"generation": 2}, path)
    assert path.read_bytes() == before and not list(tmp_path.glob("*.tmp")), sorted(p.name for p in tmp_path.iterdir())


@pytest.mark.parametrize("at", [1, 2], ids=["previous-pt", "checkpoint-pt"])
def test_a_checkpoint_whose_temporary_file_another_writer_took_names_that_writer_and_keeps_the_old_one(
    at: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes saving one path at once (every MPI rank of an own loop) rename each other's temporary file away: the
    one that finds its file gone raises a StorageError saying another process saved the same file and to save on rank 0
    alone (not a bare 'No such file or directory' in an existing directory), and checkpoint.pt stays the old one."""
    taken = tmp_path / "taken"  # the other writer's rename got there first
    path, before = checkpoint_renamed_with(at, lambda src: os.rename(src, taken), tmp_path, monkeypatch)
    with pytest.raises(StorageError, match=r"No such file .*another process saving checkpoint\.pt .*es\.comm\.rank == 0"):
        save_checkpoint({"generation": 2}, path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_whole_process_group_stops_a_run_with_env_workers_and_keeps_its_generations(
    tmp_path: Path, signum: int, forked: ForkedTrain
) -> None:
    """A terminal's Ctrl-C, or Slurm's SIGTERM, reaches every process of the group, the env's worker processes
    too: the run stops with status 130, its outcome line, no traceback, and a checkpoint of every generation in
    metrics.jsonl. Ctrl-C is left to the training process, which finishes its generation; SIGTERM ends the
    workers (multiprocessing ends them with it), so the generation under way is cut short, said in a note. The
    run then resumes to the parameters of one never stopped. (Episodes cut at 50 steps: CUT.)"""
    run = tmp_path / "run"
    argv = [*FAST, *CUT, "--env", "gymnasium-async:CartPole-v1", "--env-threads", "2", "--generations", "10000",
            "--checkpoint-every", "1000", "--out", str(run)]  # fmt: skip
    pid, stem = forked.start(None, *argv, session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and running(pid):
            if (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 2:
                break
            time.sleep(0.1)
        assert running(pid), Path(f"{stem}.err").read_text()[-2000:]
        os.killpg(pid, signum)  # the whole process group, as a terminal or a batch system signals it
        status = forked.status(timeout=60)
    finally:
        if forked.pending:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            forked.status()
    out, err = Path(f"{stem}.out").read_text(), Path(f"{stem}.err").read_text()
    assert status == 130 and "Traceback" not in err and "interrupted;" in out, (status, out[-1000:], err[-3000:])
    rows = metrics(run)
    assert load_checkpoint(run)["es"]["generation"] == len(rows) >= 2
    # SIGTERM ends the workers: the generation or evaluation under way is cut short (unless the signal came
    # between the two, in the update, the rare case where nothing was cut); Ctrl-C never cuts one
    assert signum == signal.SIGTERM or "was cut short" not in err, err[-2000:]
    # what was kept resumes bit for bit: one more generation, as a run never stopped has it
    more = len(rows) + 1
    flipes.train(resume=str(run), generations=more, progress=False)
    whole = flipes.train(
        **{**FAST_KW, **CUT_KW, "env": "gymnasium-async:CartPole-v1"},
        env_threads=2,
        generations=more,
        out=str(tmp_path / "whole"),
    )
    assert [r["params_sha256"] for r in metrics(run)] == [r["params_sha256"] for r in whole.metrics]


DOOMED_ENV = """
import multiprocessing, os, signal
import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

class Doomed(CartPoleEnv):
    # CartPole whose copies in the second env worker process end it at their DOOMED_AT-th step, mid-step: SIGKILL (the
    # kernel's out-of-memory killer's signal), or an error (DOOMED=raise) whose source line holds a '%'
    steps = 0

    def step(self, action):
        Doomed.steps += 1
        if Doomed.steps == int(os.environ["DOOMED_AT"]) and multiprocessing.current_process().name.endswith("-1"):
            if os.environ.get("DOOMED") == "raise":
                raise RuntimeError("the simulator diverged at step %d" % Doomed.steps)
            os.kill(os.getpid(), signal.SIGKILL)
        return super().step(action)

gym.register("doomed/Doomed-v0", entry_point=Doomed, max_episode_steps=500)
"""


def train_doomed(tmp_path: Path, doomed: str, at: int, forked: ForkedTrain) -> subprocess.CompletedProcess:
    """``flipes train`` on Doomed-v0 in 2 env worker processes (the second one failing at its ``at``-th env step), in a
    process of its own (forked: ForkedTrain), whose env workers start from a forkserver of its own."""
    (tmp_path / "doomed.py").write_text(DOOMED_ENV)
    argv = [*FAST, "--env", "gymnasium-async:doomed:doomed/Doomed-v0", "--env-threads", "2", "--generations", "10000",
            "--checkpoint-every", "1", "--out", str(tmp_path / "run")]  # fmt: skip
    return forked.run(None, *argv, timeout=60, env={"DOOMED": doomed, "DOOMED_AT": str(at)}, path=[tmp_path])


def test_an_env_worker_killed_mid_step_ends_training_at_once_in_one_line_naming_it_and_the_checkpoint_kept(
    tmp_path: Path, forked: ForkedTrain
) -> None:
    """An env worker process killed in the middle of a step (SIGKILL, as the out-of-memory killer sends) while the other
    one answers ends `flipes train` at once (closing the env does not wait on the answered pipe forever) with status 1
    and one line naming the worker, its pid, the signal, and the last checkpoint with its last generation, which loads and
    is the one --resume continues from."""
    r = train_doomed(tmp_path, "kill", 300, forked)  # a few generations in (every env copy-step counts)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(err) == 1 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-3000:])
    run = re.escape(str(tmp_path / "run"))
    match = re.fullmatch(r"flipes: error: generation (\d+): env worker 2 of 2 \(pid \d+\) was killed by SIGKILL \(the kernel's "
                         r"out-of-memory killer sends it: see dmesg\) during a (step|reset) of its envs; the last checkpoint "
                         rf"\(after generation (\d+)\) stays: --resume {run} continues from it", err[0])  # fmt: skip
    assert match, err[0]
    assert load_checkpoint(tmp_path / "run")["es"]["generation"] == int(match[3]) + 1 == int(match[1]) >= 1


def test_an_env_that_raises_in_a_worker_process_reaches_the_user_with_its_message_and_traceback(
    tmp_path: Path, forked: ForkedTrain
) -> None:
    """An env raising in step inside an env worker process (its source line holding a '%', which gymnasium's own report
    of a worker's error formats, failing with a TypeError of its own) ends `flipes train` with the env's error: the
    worker's traceback down to the env's line, then an EnvWorkerError naming the worker and the env's message, then
    the note naming the generation and the checkpoint kept."""
    r = train_doomed(tmp_path, "raise", 20, forked)
    assert r.returncode == 1 and "TypeError" not in r.stderr, r.stderr[-3000:]
    assert 'raise RuntimeError("the simulator diverged at step %d" % Doomed.steps)' in r.stderr, r.stderr[-3000:]
    lines, noted = r.stderr.strip().splitlines(), sys.version_info >= (3, 11)  # exception notes
    error, note = lines[-1 - noted], lines[-1]
    assert re.fullmatch(r"flipes\.errors\.EnvWorkerError: an env of worker 2 of 2 \(pid \d+\) raised in step: "
                        r"RuntimeError: the simulator diverged at step 20", error), error  # fmt: skip
    if noted:
        assert note == (
            "flipes: raised in generation 0's fitness (the population's episodes of gymnasium-async:doomed:doomed/Doomed-v0); "
            f"the last checkpoint (before any generation) stays: --resume {tmp_path / 'run'} continues from it"
        )


def test_a_worker_that_dies_while_the_other_has_answered_is_named_and_close_returns() -> None:
    """WorkerVectorEnv: worker 2 of 2 dying in the middle of a step that worker 1 has answered (stopped, so that the step
    reaches it and worker 1 answers, then killed 0.5 s later without answering) raises WorkerEndedError naming it, its
    pid and SIGKILL, and close() returns with no worker left (gymnasium's close waited on worker 1's pipe for an answer
    already read, forever), with poll(2)'s wait and with multiprocessing's (the wait where there is no poll(2), as on
    Windows). Run in this process (the workers are processes of their own); a step or close that hangs fails the test
    after 60 s."""
    import numpy as np

    from flipes.errors import WorkerEndedError

    for wait in ("poll", "multiprocessing"):
        with workers("CartPole-v1", 4, 2) as env:
            if wait == "multiprocessing":
                env.poll = None
            bounded(lambda env=env: env.reset(seed=0))
            victim = env.env.processes[1]
            os.kill(victim.pid, signal.SIGSTOP)
            threading.Timer(0.5, os.kill, (victim.pid, signal.SIGKILL)).start()
            with pytest.raises(WorkerEndedError) as raised:
                bounded(lambda env=env: env.step(np.zeros(4, dtype=np.int64)))
            assert closed_with_none_alive(env), wait
        said = str(raised.value)
        assert re.fullmatch(r"env worker 2 of 2 \(pid \d+\) was killed by SIGKILL \(the kernel's out-of-memory killer sends "
                            r"it: see dmesg\) during a step of its envs", said), said  # fmt: skip


def in_group(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` still running (zombies left out: they hold no file open)."""
    found = []
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            state, _, group = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[:3]
        except (OSError, ValueError):
            continue  # ended while read
        if int(group) == pgid and state != "Z":
            found.append(pid)
    return found


def test_env_workers_of_a_killed_training_process_end_quietly(tmp_path: Path, forked: ForkedTrain) -> None:
    """The training process killed (SIGKILL: the out-of-memory killer picks the largest process) leaves no env worker
    process behind (no process of its process group runs on: its forkserver and workers have ended too) and no worker
    traceback on the stderr they share with it (each printed a ConnectionResetError and a BrokenPipeError over its pipe to
    the dead process)."""
    run = tmp_path / "run"
    argv = [*FAST, "--env", "gymnasium-async:CartPole-v1", "--env-threads", "2", "--generations", "10000", "--out", str(run)]
    pid, stem = forked.start(None, *argv, session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and running(pid) and not (run / "metrics.jsonl").exists():
            time.sleep(0.05)
        time.sleep(0.3)  # in a generation's steps
        assert len(in_group(pid)) > 1, Path(f"{stem}.err").read_text()[-3000:]  # its workers run beside it
        os.kill(pid, signal.SIGKILL)
        assert forked.status(timeout=30) == -signal.SIGKILL
        deadline = time.monotonic() + 30
        while in_group(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = in_group(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        if forked.pending:
            forked.status()
    err = Path(f"{stem}.err").read_text()
    assert not left and "Traceback" not in err, (left, err[-3000:])


def test_torn_and_blank_metrics_lines_are_dropped_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A resume drops a blank line and a torn last line of metrics.jsonl, says so, and continues."""
    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=2, out=str(run))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('\n{"generation": 2, "fitness_mea')
    capsys.readouterr()
    flipes.train(resume=str(run), generations=3)
    assert "dropped 2 torn, blank or malformed line(s)" in capsys.readouterr().err
    assert [r["generation"] for r in metrics(run)] == [0, 1, 2]


def test_corrupted_checkpoints_are_refused_and_non_finite_runs_stop(tmp_path: Path) -> None:
    """A flipped byte in a checkpoint's tensor data fails its SHA-256 (naming previous.pt); a
    checkpoint with NaN weights is refused for resuming; an update that makes parameters non-finite
    stops the run with the last finite checkpoint kept and no NaN token in metrics.jsonl."""
    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=3, checkpoint_every=1, out=str(run))
    good = load_checkpoint(run)
    data = bytearray((run / "checkpoint.pt").read_bytes())
    weights = good["es"]["model"]["net.0.weight"].numpy().tobytes()
    at = bytes(data).find(weights[:16])  # the payload stores the weights' bytes as they are
    assert at > 0
    data[at + 3] ^= 0x40
    (run / "checkpoint.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupted: its content does not match its SHA-256.*previous.pt"):
        load_checkpoint(run)

    good["es"]["model"]["net.0.weight"][0, 0] = float("nan")
    save_checkpoint(good, run / "checkpoint.pt")
    with pytest.raises(flipes.UsageError, match=r"--resume: .* holds non-finite parameters .*--resume .*previous.pt"):
        flipes.train(resume=str(run), generations=5)

    diverge = tmp_path / "diverge"
    with pytest.raises(flipes.UsageError, match=r"^--lr: generation 2: the update made the parameters non-finite"):
        flipes.train(**FAST_KW, generations=5, checkpoint_every=1, out=str(diverge), callbacks=[BlowUpAt(2)])
    assert all(torch.isfinite(v).all() for v in load_checkpoint(diverge)["es"]["model"].values() if v.is_floating_point())
    assert "NaN" not in (diverge / "metrics.jsonl").read_text() and len(metrics(diverge)) == 2


def _as_saved_on_cuda(path: Path) -> None:
    """Rewrite save_checkpoint's file at ``path`` as a CUDA run would have written it: its tensors' storages tagged
    cuda:0 (what a GPU machine's torch.save records), the payload's SHA-256 recomputed, as the file of an intact run."""
    import hashlib
    import io
    import zipfile

    wrapped = torch.load(path, weights_only=True)
    src, out = zipfile.ZipFile(io.BytesIO(wrapped["payload"].numpy().tobytes())), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = src.read(info.filename)
            if info.filename.endswith("data.pkl"):  # pickle's BINUNICODE location strings, length-prefixed
                body = body.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            dst.writestr(info.filename, body)
    payload = out.getvalue()
    payload_tensor = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    torch.save({"format": wrapped["format"], "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload_tensor}, path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA checkpoint loads where there is CUDA")
def test_a_gpu_runs_checkpoint_on_a_machine_without_one_is_called_intact_and_loaded_to_the_cpu(tmp_path: Path) -> None:
    """A checkpoint whose tensors were saved on CUDA, read on a machine without CUDA with the default map_location
    (flipes.read_checkpoint(path), flipes.load_checkpoint(run)), was reported 'damaged: its payload does not load',
    offering previous.pt; it is intact (its hash matched), so the error says so and names map_location='cpu', which
    loads it."""
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"w": torch.arange(3.0)}, path)
    _as_saved_on_cuda(path)
    with pytest.raises(CheckpointError, match=r"cannot be loaded to the device it was saved on on this machine \(RuntimeError: "
                       r"Attempting to deserialize object on a CUDA device.*\); it is intact: load it to the CPU with "
                       r"map_location='cpu'"):  # fmt: skip
        flipes.read_checkpoint(path)
    assert torch.equal(flipes.read_checkpoint(path, map_location="cpu")["w"], torch.arange(3.0))


def test_a_run_that_overflows_names_every_option_that_sizes_its_steps(tmp_path: Path) -> None:
    """The one line that stops a run whose update or returns overflowed names the options that can have caused it:
    --sigma-lr with adaptive σ (a rate of 1e3 overflows log σ in the first generations; the line named only --lr and
    --sigma), and --reward-shift where one is subtracted from every step's reward (1e308: every return is -inf); without
    them, the lines name --lr and --sigma as before."""
    kw = {**FAST_KW, "generations": 3, "popsize": 4, "hidden": [4], "eval_every": 100, "eval_episodes": 1}
    with pytest.raises(flipes.UsageError, match=r"^--lr: generation \d: .* non-finite .*; lower --lr, --sigma or --sigma-lr; "):
        flipes.train(**kw, sigma_lr=1e3, groups=2, out=str(tmp_path / "sigma_lr"))
    with pytest.raises(flipes.UsageError, match=r"^--sigma: generation 0: .* not finite .*; lower --sigma or --lr, or "
                       r"--reward-shift's size \(1e\+308\), or check the env$"):  # fmt: skip
        flipes.train(**kw, reward_shift=1e308, out=str(tmp_path / "shift"))


class BlowUpAt(flipes.Callback):
    """Sets the learning rate to 1e30 after generation ``g - 1``: the next update overflows."""

    def __init__(self, g: int) -> None:
        self.g = g

    def on_generation(self, state, row) -> None:
        if row["generation"] == self.g - 1:
            for group in state.es.optimizer.param_groups:
                group["lr"] = 1e38


def test_a_full_disk_is_one_line_naming_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """When the disk fills up during a checkpoint, the command prints one line naming the file and
    the last good checkpoint and exits 1; that checkpoint still loads."""
    import flipes.checkpoint as checkpoint

    real_save, calls = checkpoint.torch.save, {"files": 0}

    def save(obj, f, *args, **kwargs):  # the 5th checkpoint file written hits a full disk
        if not isinstance(f, checkpoint.io.BytesIO):
            calls["files"] += 1
            if calls["files"] == 5:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    run = tmp_path / "run"
    status = main(["train", *FAST, "--generations", "10", "--checkpoint-every", "1", "--out", str(run), "--eval-every", "100"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1, err
    assert err[0].startswith(f"flipes: error: cannot write {run}/") and "No space left on device" in err[0]
    assert "the last good checkpoint is" in err[0] and not list(run.glob("*.tmp"))
    monkeypatch.undo()
    good, resume = err[0].split("the last good checkpoint is ")[1].split(": ")
    assert good == str(run / "checkpoint.pt") and load_checkpoint(good)["es"]["generation"] >= 1
    assert resume == f"--resume {run} continues from it once the file can be written"


def test_a_full_disk_while_curves_png_is_drawn_is_one_line_and_keeps_the_old_curves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The disk filling up while curves.png is drawn at the end of training is one line (status 1) naming it,
    the last good checkpoint (of the final generation) and flipes plot, and leaves the curves.png that was
    there whole and no temporary file."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    run = tmp_path / "run"
    flipes.train(**{**FAST_KW, "plot": True}, generations=2, out=str(run))
    before = (run / "curves.png").read_bytes()

    def savefig(self: Figure, fname: object, **kwargs: object) -> None:  # half a file, then a full disk
        Path(str(fname)).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", savefig)
    status = main(["train", "--resume", str(run), "--generations", "3", "--plot", "true", "--progress", "false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"flipes: error: cannot write {run / 'curves.png'} (disk full: ") and f"flipes plot {run}" in err[0]
    assert f"the last good one is {run / 'checkpoint.pt'}" in err[0] and load_checkpoint(run)["es"]["generation"] == 3
    assert (run / "curves.png").read_bytes() == before and not list(run.glob("*.tmp"))


@pytest.mark.parametrize("fails", ["start", "row", "close"])
def test_a_full_disk_under_tensorboards_logs_is_one_line_naming_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, fails: str
) -> None:
    """TensorBoard's logs that cannot be written (a full disk: the writer raises in SummaryWriter() itself, at an
    add_scalar after its thread failed, or at the close that flushes it) end training with one line and status 1,
    naming the log directory, the reason and the last good checkpoint, as for the run's own files; it resumes. (Episodes
    cut at 50 steps: CUT.)"""
    from torch.utils import tensorboard

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class FullDisk(tensorboard.SummaryWriter):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if fails == "start":
                raise full
            super().__init__(*args, **kwargs)

        def add_scalar(self, tag: str, value: Any, step: Any = None, *args: Any, **kwargs: Any) -> None:
            if step == 3 and fails == "row":  # the writer thread's error, raised again at each call from then on
                raise full
            super().add_scalar(tag, value, step, *args, **kwargs)

        def close(self) -> None:
            super().close()
            if fails == "close":
                raise full

    monkeypatch.setattr(tensorboard, "SummaryWriter", FullDisk)
    run = tmp_path / "run"
    argv = [*FAST, *CUT, "--tensorboard", "true", "--generations", "6", "--checkpoint-every", "2", "--out", str(run)]
    status = main(["train", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and "Traceback" not in err[0], err
    good = run / "checkpoint.pt"
    assert err[0] == (f"flipes: error: cannot write TensorBoard's logs in {run / 'tensorboard'} (disk full: No space left "
                      f"on device); the last good checkpoint is {good}: --resume {run} continues from it once the file "
                      "can be written")  # fmt: skip
    assert load_checkpoint(good)["es"]["generation"] == {"start": 0, "row": 4, "close": 6}[fails]  # 4: before TensorBoard
    monkeypatch.undo()
    assert flipes.train(**FAST_KW, **CUT_KW, generations=7, resume=str(run)).metrics[-1]["generation"] == 6


def test_a_resume_names_the_rows_its_metrics_lack_and_a_checkpoint_syncs_the_rows_it_covers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A resumed run whose metrics.jsonl lacks rows before the resumed generation (lost in a crash of the machine,
    or removed) says which in one note and keeps the others; and every checkpoint.pt is written after an fsync of
    metrics.jsonl, whose rows it covers (so such a crash cannot keep the checkpoint and lose them). Episodes are cut at
    50 steps: the same writes (best.pt after generations 0 and 2) at a fifteenth of the CPU of 500-step ones."""
    import flipes.callbacks as callbacks

    synced: list[tuple[str, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if name.endswith("metrics.jsonl"):
            synced.append((name, len(Path(name).read_text().splitlines())))
        real_fsync(fd)

    monkeypatch.setattr(callbacks.os, "fsync", fsync)
    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=10, checkpoint_every=4, max_episode_steps=50, out=str(run))
    assert synced == [(str(run / "metrics.jsonl"), rows) for rows in (1, 3, 4, 8, 10)]  # best.pt: 0, 2; checkpoints: 3, 7, 9
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("".join(line + "\n" for i, line in enumerate(lines) if i not in (1, 2, 3, 6)))
    capsys.readouterr()
    flipes.train(**FAST_KW, generations=12, resume=str(run))
    note = f"flipes: {run / 'metrics.jsonl'}: no row of generation(s) 1-3, 6 before the resumed generation 10"
    assert note in capsys.readouterr().err
    assert [json.loads(line)["generation"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [
        0,
        4,
        5,
        7,
        8,
        9,
        10,
        11,
    ]


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (exists and is no zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_many_random_kills_resume_to_the_uninterrupted_parameters(
    tmp_path: Path, capsys: pytest.CaptureFixture, forked: ForkedTrain
) -> None:
    """Killed with SIGKILL at random moments of its training (after a new generation was logged, at a
    random delay of up to 0.15 s, about three generations) and started again by the identical command (--resume
    auto) each time, a run ends with the parameters (hash per generation) of an uninterrupted run.
    FLIPES_CHAOS_KILLS sets the number of kills (5 here; 60 is the long run). Each killed command runs
    in a process of its own (forked from one that imported flipes: ForkedTrain), which ends by the kill;
    the last one, left to finish, runs in this process (``flipes train``'s main). Episodes are cut at 100 steps:
    a generation of 8 members is then ~50 ms of CPU, not up to 300 ms once CartPole balances for 500 steps (what is
    killed and resumed is the same at any episode length)."""
    kills_wanted, rng = int(os.environ.get("FLIPES_CHAOS_KILLS", "5")), random.Random(0)
    gens = 6 * kills_wanted + 6  # every kill comes after at least one new generation (then 0-3 more at ~50 ms each)
    run = tmp_path / "run"
    argv = [*FAST, "--generations", str(gens), "--checkpoint-every", "3", "--out", str(run), "--eval-every", "7",
            "--max-episode-steps", "100", "--resume", "auto"]  # fmt: skip
    rows = run / "metrics.jsonl"
    for _ in range(kills_wanted):
        pid, _ = forked.start(None, *argv)
        logged = len(rows.read_text().splitlines()) if rows.exists() else 0
        while running(pid) and (len(rows.read_text().splitlines()) if rows.exists() else 0) <= logged:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.15))
        assert running(pid), "the run ended before it was killed: give it more generations"
        os.kill(pid, signal.SIGKILL)
        assert forked.status() == -signal.SIGKILL  # ended by this kill, not on its own
    status, err = train_command(capsys, *argv)
    assert status == 0, err[-2000:]
    assert load_checkpoint(run)["es"]["generation"] == gens
    whole = flipes.train(**FAST_KW, generations=gens, max_episode_steps=100, out=str(tmp_path / "uninterrupted"))
    assert [r["params_sha256"] for r in metrics(run)] == [r["params_sha256"] for r in whole.metrics]


def mpmd(*ranks: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """mpiexec with one argument list per rank (MPMD: ``-n 1 python train.py A : -n 1 python train.py B``)."""
    assert MPIEXEC.exists(), "no mpiexec: install the dev extras"
    cmd: list[str] = [str(MPIEXEC)]
    for i, args in enumerate(ranks):
        cmd += ([":"] if i else []) + ["-n", "1", sys.executable, "scripts/train.py", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_mpi_ranks_started_with_other_options_stop_at_once(tmp_path: Path) -> None:
    """Ranks whose options differ end within seconds, with one line naming each option that differs (here
    --generations, --eval-every and --seed: the line lists every one, so one launch checks that each is compared) and
    its values per rank, and no other option, before anything is written."""
    base = [*FAST, "--popsize", "8", "--groups", "2", "--generations", "5", "--out", str(tmp_path / "run")]
    t0 = time.monotonic()
    r = mpmd(base, [*base, "--generations", "7", "--eval-every", "3", "--seed", "9"])
    assert r.returncode == 2 and time.monotonic() - t0 < 30, r.stderr[-2000:]
    ours = [line for line in r.stderr.splitlines() if line.startswith("flipes:")]
    named = "(--eval-every: rank 0 2, rank 1 3; --generations: rank 0 5, rank 1 7; --seed: rank 0 0, rank 1 9)"
    assert len(ours) == 1 and named in ours[0] and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_mpi_rank_resuming_a_stale_checkpoint_stops_at_once(tmp_path: Path) -> None:
    """One rank resuming an older checkpoint than the other stops the job before anything is written."""
    base = [*FAST, "--popsize", "8", "--groups", "2", "--plot", "true"]  # a run's every file, curves.png too, stays
    flipes.train(
        **{**FAST_KW, "popsize": 8, "plot": True}, groups=2, generations=4, checkpoint_every=2, out=str(tmp_path / "run")
    )
    before = files(tmp_path / "run")
    stale = str(tmp_path / "run" / "previous.pt")
    r = mpmd([*base, "--generations", "6", "--resume", str(tmp_path / "run")],
             [*base, "--generations", "6", "--resume", stale, "--out", str(tmp_path / "run")])  # fmt: skip
    assert r.returncode == 2 and "the ranks start at other generations (rank 0 at 4, rank 1 at 2)" in r.stderr, r.stderr[-2000:]
    assert files(tmp_path / "run") == before


def test_mpi_ranks_resuming_other_parameters_stop_at_once(tmp_path: Path) -> None:
    """Ranks resuming checkpoints of the same options and generation whose parameters differ (one's changed by a
    script) stop the job with one line naming each rank's parameters, before anything is written."""
    base = [*FAST, "--popsize", "8", "--groups", "2", "--generations", "6", "--plot", "true"]  # curves.png stays too
    flipes.train(**{**FAST_KW, "popsize": 8, "plot": True}, groups=2, generations=4, out=str(tmp_path / "run"))
    before = files(tmp_path / "run")
    state = load_checkpoint(tmp_path / "run")
    state["es"]["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["es"]["model"].items()}
    other = save_checkpoint(state, tmp_path / "other.pt")
    r = mpmd([*base, "--resume", str(tmp_path / "run")], [*base, "--resume", str(other), "--out", str(tmp_path / "run")])
    ours = [line for line in r.stderr.splitlines() if line.startswith("flipes:")]
    said = r"flipes: error: --resume: the ranks start from other parameters \(rank 0 [0-9a-f]{12}, rank 1 [0-9a-f]{12}\); .*"
    assert r.returncode == 2 and len(ours) == 1 and re.fullmatch(said, ours[0]), r.stderr[-2000:]
    assert files(tmp_path / "run") == before


def test_a_stopped_mpi_rank_ends_the_job_naming_it(tmp_path: Path) -> None:
    """A rank stopped with SIGSTOP makes the others wait; after --mpi-timeout the job ends with one
    line naming the rank that did not arrive, or, where the stop caught it inside the collective
    (after it announced its arrival), saying that every rank entered it."""
    run = tmp_path / "run"
    cmd = [str(MPIEXEC), "-n", "2", sys.executable, "scripts/train.py", *FAST, "--popsize", "8", "--groups", "2",
           "--generations", "100000", "--mpi-timeout", "5", "--out", str(run)]  # fmt: skip
    # 5 s, not less: on loaded cores a rank merely starved that long ends the job before the test stops one
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (run / "metrics.jsonl").exists():
            time.sleep(0.2)
        time.sleep(1.0)
        rank1 = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if _rank_of(pid, str(run)) == "1"]
        assert len(rank1) == 1, (rank1, proc.poll() is None or proc.communicate()[1][-2000:])
        os.kill(rank1[0], signal.SIGSTOP)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0 and time.monotonic() - t0 < 30
        ours = [line for line in err.splitlines() if line.startswith("flipes:")]
        named = ("rank(s) 1 did not arrive", "every rank entered it (stopped, dead")
        assert any("rank 0 waited 5 s" in line and any(n in line for n in named) for line in ours), err[-2000:]
    finally:
        for pid in [p for p in map(int, filter(str.isdigit, os.listdir("/proc"))) if _rank_of(p, str(run)) is not None]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()


def _rank_of(pid: int, marker: str) -> str | None:
    """PMI_RANK of a process whose command line holds ``marker`` (None otherwise)."""
    try:
        if marker not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return None
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"PMI_RANK=")]
    return ranks[0] if ranks else None


def test_metrics_lines_are_json_even_for_non_finite_values(tmp_path: Path) -> None:
    """Every metrics line is strict JSON: a non-finite number is written as null."""
    from flipes.callbacks import json_safe

    assert json.loads(json.dumps(json_safe({"a": float("nan"), "b": float("inf"), "c": 1.5}), allow_nan=False)) == {
        "a": None, "b": None, "c": 1.5}  # fmt: skip
    with pytest.raises(StorageError, match=r"cannot write .*metrics.jsonl.*is unchanged"):
        from flipes.callbacks import write_atomic

        write_atomic(tmp_path / "no_dir" / "metrics.jsonl", "x")


def test_resume_auto_starts_a_run_and_continues_it(tmp_path: Path) -> None:
    """--resume auto starts a run in --out when it holds none and continues it when it does."""
    run = tmp_path / "run"
    first = flipes.train(**FAST_KW, **CUT_KW, generations=2, out=str(run), resume="auto")
    assert [r["generation"] for r in first.metrics] == [0, 1]
    again = flipes.train(**FAST_KW, **CUT_KW, generations=4, out=str(run), resume="auto")
    assert [r["generation"] for r in again.metrics] == [2, 3] and len(metrics(run)) == 4
    assert [r["params_sha256"] for r in metrics(run)] == uninterrupted(tmp_path, 4)


def error_line(capsys: pytest.CaptureFixture, *argv: str | Path) -> str:
    """The one stderr line of a flipes command that must end with exit status 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    return err[0]


def test_a_checkpoint_damaged_inside_is_one_line_naming_it_and_the_resume_command(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A checkpoint in flipes' format whose inside is damaged (no SHA-256, a payload that is not bytes,
    a state without its config, an ES state that is not a dict, a bool for a count, a negative generation) is
    refused by --resume with one line naming the file, what it lacks and the command that continues from
    previous.pt; that command works."""
    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=3, checkpoint_every=1, out=str(run))
    ck, previous = run / "checkpoint.pt", run / "previous.pt"
    good = load_checkpoint(ck)
    damaged = {
        "header has no SHA-256": (lambda: torch.save({"format": "flipes-checkpoint/2", "payload": torch.zeros(3).byte()}, ck),
                                  "is damaged: its flipes-checkpoint/2 header has no SHA-256 (sha256)"),
        "payload a string": (lambda: torch.save({"format": "flipes-checkpoint/2", "sha256": "x", "payload": "abc"}, ck),
                             "is damaged: its payload is of type str, not the checkpoint's bytes"),
        "no config": (lambda: save_checkpoint({k: v for k, v in good.items() if k != "config"}, ck, keep_previous=False),
                      "is not a whole flipes checkpoint: it has no config entry"),
        "es not a dict": (lambda: save_checkpoint({**good, "es": 5}, ck, keep_previous=False),
                          "is not a whole flipes checkpoint: its es entry is of type int, not dict"),
        "timesteps a bool": (lambda: save_checkpoint({**good, "timesteps": True}, ck, keep_previous=False),
                             "is not a whole flipes checkpoint: its timesteps entry is of type bool, not int"),
        "negative generation": (lambda: save_checkpoint({**good, "es": {**good["es"], "generation": -1}}, ck,
                                                        keep_previous=False),
                                "is not a whole flipes checkpoint: its es.generation entry is negative (-1)"),
    }  # fmt: skip
    for damage, problem in damaged.values():
        damage()
        line = error_line(capsys, "train", "--resume", run, "--generations", "4")
        assert line == (f"flipes: error: --resume: {ck} {problem}; the previous checkpoint {previous} can be resumed "
                        f"instead: continue from it with --resume {previous}")  # fmt: skip
        with pytest.raises(CheckpointError, match=f"^{ck} {problem}".replace("(", r"\(").replace(")", r"\)")):
            load_checkpoint(run)
    assert main(["train", "--resume", str(previous), "--generations", "4"]) == 0  # the command the line gives
    assert [r["generation"] for r in metrics(run)] == [0, 1, 2, 3] and load_checkpoint(run)["es"]["generation"] == 4


def test_evaluate_and_export_name_previous_pt_as_their_checkpoint_option(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A damaged checkpoint.pt makes evaluate and export say, in one line, to pass --checkpoint
    previous.pt (the option they take), with torch's reason cut at a word boundary; evaluating
    previous.pt then works."""
    from flipes.checkpoint import clip

    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=2, checkpoint_every=1, out=str(run))
    ck, previous = run / "checkpoint.pt", run / "previous.pt"
    ck.write_bytes(ck.read_bytes()[:5000])
    for command in (["evaluate", run, "--episodes", "1"], ["export", run, "--out", tmp_path / "p.pt2"]):
        line = error_line(capsys, *command)
        assert line.startswith(f"flipes: error: --checkpoint: {ck} is truncated or not a checkpoint (")
        assert line.endswith(f"); the previous checkpoint {previous} can be used instead: pass --checkpoint {previous}")
    assert main(["evaluate", str(run), "--episodes", "1", "--checkpoint", str(previous)]) == 0
    message = "PytorchStreamReader failed locating file data/0: file not found. This is an internal error, please report it"
    assert clip(message) == message[: message.index(" report")] + " ..."  # "..., please ...": whole words
    assert clip("short") == "short" and len(clip("x" * 300)) <= 104


def test_a_resume_whose_model_code_changed_since_is_one_line_naming_the_mismatch(tmp_path: Path) -> None:
    """A run resumed with its model code changed since (a layer's width) is refused as a mistake in one line
    naming the checkpoint, the first mismatch with both shapes, how many more, and what to do, instead of torch's
    multi-line RuntimeError; so is load_policy given a model of another width, naming the model given as the cause."""
    width = {"hidden": 8}

    def make_model(env: None) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(4, width["hidden"]), torch.nn.Tanh(), torch.nn.Linear(width["hidden"], 1))

    def fitness(model: torch.nn.Module, pop: object) -> torch.Tensor:
        return -((model(torch.ones(pop.size, 4)).squeeze(-1) - 1) ** 2)

    run = tmp_path / "run"
    flipes.train(env="none", model=make_model, fitness=fitness, popsize=8, generations=2, out=str(run), tensorboard=False,
                 plot=False, progress=False)  # fmt: skip
    width["hidden"] = 9
    with pytest.raises(flipes.UsageError) as e:
        flipes.train(resume=str(run), model=make_model, fitness=fitness, generations=3, progress=False)
    message = str(e.value)
    mismatch = "size mismatch for 0.weight: (8, 4) saved, (9, 4) in the model; and 2 more"
    assert message.startswith(f"--resume: {run} does not fit the model and optimizer built now ({mismatch}); ")
    assert "--model" in message.split("; ")[-1] and "\n" not in message
    assert load_checkpoint(run)["es"]["generation"] == 2
    wider = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    with pytest.raises(flipes.UsageError) as e:  # a model given to load the run by: named, with the shapes whole
        flipes.load_policy(run, model=wider)
    assert str(e.value) == (
        f"--checkpoint: latest of {run} holds parameters of another model than the one given (size mismatch for 0.weight: "
        "(8, 4) saved, (16, 4) in the model; and 2 more); give model= the model the run was trained with"
    )


def test_a_run_on_device_cpu_0_resumes_evaluates_and_exports_bit_for_bit(tmp_path: Path) -> None:
    """--device cpu:0 (a CPU device torch takes) trains a run that resumes, evaluates and exports like one on cpu,
    with the same parameters, instead of its checkpoints being called damaged (torch.load cannot map to cpu:0)."""
    run, plain = tmp_path / "run", tmp_path / "plain"
    flipes.train(**FAST_KW, generations=2, device="cpu:0", out=str(run))
    flipes.train(resume=str(run), generations=3, device="cpu:0")
    flipes.train(**FAST_KW, generations=3, out=str(plain))
    assert metrics(run)[-1]["params_sha256"] == metrics(plain)[-1]["params_sha256"]
    ours, theirs = flipes.load_policy(run, device="cpu:0").state_dict(), flipes.load_policy(plain).state_dict()
    assert all(torch.equal(a, b) for a, b in zip(ours.values(), theirs.values(), strict=True))
    assert main(["export", str(run)]) == 0 and (run / "policy.pt2").exists()


def test_resuming_a_run_file_that_is_no_checkpoint_points_at_the_run_not_at_previous_pt(tmp_path: Path) -> None:
    """--resume RUN/config.json (or metrics.jsonl: not checkpoints by their names) is refused saying to pass a run
    directory or checkpoint file, not offering previous.pt, which holds an older state than the run's checkpoint."""
    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=2, checkpoint_every=1, out=str(run))
    for name in ("config.json", "metrics.jsonl"):
        with pytest.raises(flipes.UsageError) as e:
            flipes.train(resume=str(run / name), generations=3, progress=False)
        assert str(e.value).startswith(f"--resume: {run / name} is truncated or not a checkpoint (")
        assert str(e.value).endswith("; pass a run directory or checkpoint file written by flipes train")
    assert load_checkpoint(run)["es"]["generation"] == 2


def test_resuming_a_damaged_checkpoint_with_no_previous_says_to_copy_it_again_or_start_over(tmp_path: Path) -> None:
    """A run directory whose checkpoint.pt is truncated (a copy cut short) and has no previous.pt (nor best.pt) beside it
    is refused saying so and what is left to do, copy it again or start over, not to pass a checkpoint flipes wrote (it
    is one); a directory without any checkpoint keeps that advice."""
    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=2, checkpoint_every=1, out=str(run))
    (run / "previous.pt").unlink()
    (run / "best.pt").unlink(missing_ok=True)  # one that loads is offered instead (test_run_management)
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    fix = "; no previous.pt beside it to continue from: copy it again whole if it came from elsewhere, else start the run "
    for given in (run, run / "checkpoint.pt"):
        with pytest.raises(flipes.UsageError) as e:
            flipes.train(resume=str(given), generations=3, progress=False)
        assert str(e.value).startswith(f"--resume: {run / 'checkpoint.pt'} is truncated or not a checkpoint (")
        assert str(e.value).endswith(fix + "again with --overwrite")
    with pytest.raises(flipes.UsageError) as e:
        flipes.train(resume=str(tmp_path), generations=3, progress=False)
    assert str(e.value).endswith("; pass a run directory or checkpoint file written by flipes train")


def test_an_own_loops_checkpoint_continues_bit_for_bit_and_a_damaged_one_offers_the_previous(tmp_path: Path) -> None:
    """flipes.save_checkpoint of an own loop's es.state_dict() each generation, read back by flipes.read_checkpoint
    into a new FlipES, continues on the parameters of an uninterrupted loop; a damaged file is refused naming the
    previous.pt that reads (one generation older), a file torch.save wrote and a missing one are refused naming
    no other file, a directory naming the files in it (or that it holds none), and a run's checkpoint reads too."""

    def loop(es: flipes.FlipES, generations: int, save: Path | None = None) -> None:
        while es.generation < generations:
            with es.population() as pop:
                fitness = -((es.model(torch.ones(pop.size, 3)) - 1) ** 2).sum(1)
            es.tell(fitness)
            if save is not None:
                flipes.save_checkpoint({"es": es.state_dict(), "note": "mine"}, save)

    def make() -> flipes.FlipES:
        torch.manual_seed(0)
        return flipes.FlipES(flipes.flipout(torch.nn.Linear(3, 2)), popsize=8, sigma=0.1, lr=0.1, seed=3)

    whole, part, path = make(), make(), tmp_path / "ckpt" / "checkpoint.pt"
    path.parent.mkdir()
    loop(whole, 5)
    loop(part, 3, save=path)
    resumed = make()
    resumed.load_state_dict(flipes.read_checkpoint(path)["es"])
    loop(resumed, 5)
    reference = whole.model.state_dict()
    assert all(torch.equal(value, reference[name]) for name, value in resumed.model.state_dict().items())
    assert flipes.read_checkpoint(path.with_name("previous.pt"))["es"]["generation"] == 2

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte inside the payload
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as e:
        flipes.read_checkpoint(path)
    previous = path.with_name("previous.pt")
    assert str(e.value).endswith(f"; the previous checkpoint {previous} reads: flipes.read_checkpoint('{previous}')")
    torch.save({"es": whole.state_dict()}, tmp_path / "ckpt" / "plain.pt")
    plain = r"plain.pt was not written by flipes.save_checkpoint \(no .* header\); a file of torch.save reads with torch.load"
    with pytest.raises(CheckpointError, match=plain + r"\('.*plain.pt'\)$"):
        flipes.read_checkpoint(tmp_path / "ckpt" / "plain.pt")
    with pytest.raises(CheckpointError, match=r"^no checkpoint at .*typo.pt$"):
        flipes.read_checkpoint(tmp_path / "ckpt" / "typo.pt")
    with pytest.raises(
        CheckpointError,
        match=r"ckpt is a directory, not a checkpoint file: pass one of its files \(checkpoint.pt, plain.pt, previous.pt\)$",
    ):
        flipes.read_checkpoint(tmp_path / "ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError) as error:
        flipes.read_checkpoint(tmp_path / "empty")
    assert str(error.value) == f"{tmp_path / 'empty'} is a directory, not a checkpoint file: it holds no .pt file: pass one " + (
        "save_checkpoint wrote"
    )
    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=1, out=str(run))
    assert flipes.read_checkpoint(run / "checkpoint.pt")["es"]["generation"] == 1


def test_export_and_render_that_cannot_be_written_are_one_line_and_leave_the_file_that_was_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """flipes export's program and flipes evaluate's --render video on a full disk, or on a read-only file
    system (where removing the temporary file fails too), are one line each (status 2) naming the file, the
    reason and what to do; the file that was there stays whole, and a full disk leaves no temporary file."""
    pytest.importorskip("pygame")  # CartPole's rendering
    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=1, out=str(run))
    program, video = run / "policy.pt2", tmp_path / "policy.gif"
    assert main(["export", str(run)]) == 0
    video.write_bytes(b"the old video")
    before = {program: program.read_bytes(), video: video.read_bytes()}
    render = ["evaluate", run, "--episodes", "1", "--render", video, "--max-frames", "3"]
    real_replace = os.replace

    def replace(src: object, dst: object) -> None:  # the new file is written, then its rename finds no space
        if Path(str(dst)) in before:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    for argv, option, path in ((["export", run], "--out", program), (render, "--render", video)):
        line = error_line(capsys, *argv)
        reason = "disk full: No space left on device"
        assert line == f"flipes: error: {option}: cannot write {path} ({reason}); choose a path you can write"
        assert path.read_bytes() == before[path] and not list(path.parent.glob("*.tmp*"))

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "replace", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)
    for argv, option, path in ((["export", run], "--out", program), (render, "--render", video)):
        line = error_line(capsys, *argv)
        assert line == f"flipes: error: {option}: cannot write {path} (Read-only file system); choose a path you can write"
        assert path.read_bytes() == before[path]


def test_a_full_disk_while_best_pt_is_written_names_checkpoint_pt_and_says_disk_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A disk that fills up while best.pt is written (mid-file, which torch itself reports as
    "unexpected pos") is one line saying "disk full" and naming the run's checkpoint.pt, which --resume
    reads; the resumed run ends with the parameters of an uninterrupted one."""
    import flipes.checkpoint as checkpoint

    class FullDisk:  # a file that takes its first bytes, then finds no space left
        def __init__(self, file) -> None:
            self.file, self.written = file, 0

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc) -> None:
            self.file.close()

        def write(self, data) -> int:
            self.written += len(data)
            if self.written > 200:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.file.write(data)

        def flush(self) -> None:
            self.file.flush()

        def fileno(self) -> int:
            return self.file.fileno()

    def full_open(file, mode="r", *args, **kwargs):
        opened = open(file, mode, *args, **kwargs)
        return FullDisk(opened) if Path(file).name == "best.pt.tmp" else opened

    monkeypatch.setattr(checkpoint, "open", full_open, raising=False)
    run = tmp_path / "run"
    status = main(["train", *FAST, *CUT, "--generations", "6", "--checkpoint-every", "1", "--out", str(run), "--eval-every", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1, err
    assert err[0] == (f"flipes: error: cannot write {run / 'best.pt'} (disk full: No space left on device); "
                      f"the last good checkpoint is {run / 'checkpoint.pt'}: --resume {run} continues from it once the "
                      "file can be written")  # fmt: skip
    assert not (run / "best.pt").exists() and not list(run.glob("*.tmp"))
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--generations", "6"]) == 0
    assert [r["params_sha256"] for r in metrics(run)] == uninterrupted(tmp_path, 6)


def test_a_config_json_that_is_not_an_object_resumes_from_the_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """config.json holding valid JSON that is not an object ([1, 2]) does not block a resume, which takes
    the options the checkpoint records (not the env's defaults); evaluate says in one line what is wrong and the
    command that writes config.json again, which trains nothing (the metrics stay) and makes evaluate work."""
    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=2, out=str(run))
    (run / "config.json").write_text("[1, 2]")
    line = error_line(capsys, "evaluate", run, "--episodes", "1")
    assert line == (f"flipes: error: {run}/config.json: holds a JSON list, not the object of options flipes train writes; "
                    f"flipes train --resume {run} --generations 2 writes it again from the options its checkpoint "
                    "records, training nothing")  # fmt: skip
    rows = metrics(run)
    assert main(line.split("; ")[-1].split(" writes it")[0].split()[1:]) == 0  # the command as printed
    assert metrics(run) == rows and json.loads((run / "config.json").read_text())["popsize"] == 8
    assert main(["evaluate", str(run), "--episodes", "1"]) == 0
    assert main(["train", "--resume", str(run), "--generations", "3"]) == 0
    assert load_checkpoint(run)["config"]["popsize"] == 8 and [r["generation"] for r in metrics(run)] == [0, 1, 2]
    assert json.loads((run / "config.json").read_text())["popsize"] == 8  # written again, whole


def test_a_config_json_that_lost_options_resumes_with_the_checkpoints(tmp_path: Path) -> None:
    """A resume whose config.json lacks options (edited by hand: here env and hidden) takes them from the checkpoint, as
    evaluate and export do, instead of refusing the defaults that filled them as options "now" other than saved; the
    resumed run ends on the parameters of one never stopped, and config.json is written again, whole."""
    run, whole = tmp_path / "run", tmp_path / "whole"
    flipes.train(**FAST_KW, generations=2, hidden=[5], out=str(run))
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in ("env", "hidden")}))
    assert main(["train", "--resume", str(run), "--generations", "3"]) == 0
    flipes.train(**FAST_KW, generations=3, hidden=[5], out=str(whole))
    assert [r["params_sha256"] for r in metrics(run)] == [r["params_sha256"] for r in metrics(whole)]
    assert json.loads((run / "config.json").read_text())["hidden"] == [5]


NAN_OBS_ENV = """
import gymnasium as gym
import numpy as np

class NanOnce(gym.Env):  # an env of one's own whose 5th observation of an episode holds a nan
    def __init__(self, continuous=False):
        self.observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32) if continuous else gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        obs = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        if self.t == 5:
            obs[1] = np.nan
        return obs, -float(np.square(action).sum()), False, self.t >= 20, {}

gym.register("nanobs/NanOnce-v0", entry_point=NanOnce)
gym.register("nanobs/NanOnceContinuous-v0", entry_point=NanOnce, kwargs={"continuous": True})
"""


@pytest.mark.parametrize("env", ["NanOnce-v0", "NanOnceContinuous-v0"])
def test_an_env_returning_a_nan_observation_is_one_line_not_a_run_of_nan_actions(
    env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """An env whose observations hold a nan once: the policy's observation normalization would merge it into its
    statistics and every later action would be nan. Discrete, the run went on silently at a constant fitness (fitness 0
    and grad_norm 0 from generation 1 on); continuous, the nan actions' returns were said as --sigma's ("lower --sigma
    or --lr"). Either is one line naming the env and the feature, status 2, and the starting checkpoint stays."""
    (tmp_path / "nanobs.py").write_text(NAN_OBS_ENV)
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    status, err = train_command(capsys, "--env", f"nanobs:nanobs/{env}", "--popsize", "8", "--generations", "4",
                                "--target", "none", "--tensorboard", "false", "--plot", "false", "--progress", "false",
                                "--out", run)  # fmt: skip
    line = err.strip().splitlines()[-1]
    assert status == 2 and line.startswith("flipes: error: --env: the env returned observations holding nan or inf "
                                           "(feature(s) 1 of 3)"), err  # fmt: skip
    assert load_checkpoint(run)["es"]["generation"] == 0


def test_read_metrics_given_a_file_of_the_run_names_its_directory(tmp_path: Path) -> None:
    """read_metrics takes a run directory: given its metrics.jsonl (or another file of the run) the error names the
    directory to pass, where it would otherwise say that there is no metrics.jsonl; a directory without one says so."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"generation": 0}\n')
    assert flipes.read_metrics(run) == [{"generation": 0}]
    with pytest.raises(FileNotFoundError) as e:
        flipes.read_metrics(run / "metrics.jsonl")
    assert str(e.value) == f"{run}/metrics.jsonl: is a file, not a run directory; pass the run's directory, {run}"
    with pytest.raises(FileNotFoundError) as e:
        flipes.read_metrics(tmp_path)
    assert str(e.value) == f"{tmp_path}: no metrics.jsonl; pass a run directory written by flipes train"


def test_a_checkpoint_file_given_as_the_run_names_the_directory_and_checkpoint_option(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """load_policy and flipes evaluate / export take a run directory: given a file (a checkpoint of the run) the
    error says it is a file and names the directory to pass and the option that takes a checkpoint file."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"")
    fix = f"pass the run's directory, {run}, and a checkpoint file as checkpoint= (--checkpoint FILE)"
    with pytest.raises(flipes.UsageError) as e:
        flipes.load_policy(run / "checkpoint.pt")
    assert str(e.value) == f"{run}/checkpoint.pt: is a file, not a run directory; {fix}"
    for command in ("evaluate", "export"):
        line = error_line(capsys, command, run / "checkpoint.pt")
        assert line == f"flipes: error: {run}/checkpoint.pt: is a file, not a run directory; {fix}"


def test_a_missing_run_or_a_folder_of_runs_given_as_the_run_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """flipes evaluate / export given a path that does not exist say it does not exist (not that it lacks config.json);
    given a folder of runs they name the runs it holds (up to three levels down; three shown whole, more cut with ...);
    an empty directory is no run directory."""
    for run in ("a", "b"):
        (tmp_path / "runs" / run).mkdir(parents=True)
        (tmp_path / "runs" / run / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    for seed in range(3):
        (tmp_path / "deep" / "Hopper-v5" / "ars" / f"seed{seed}").mkdir(parents=True)
        (tmp_path / "deep" / "Hopper-v5" / "ars" / f"seed{seed}" / "config.json").write_text("{}")
    for command in ("evaluate", "export"):
        line = error_line(capsys, command, tmp_path / "nope")
        assert line == f"flipes: error: {tmp_path}/nope: does not exist; pass a directory written by flipes train"
        line = error_line(capsys, command, tmp_path / "runs")
        assert line == (
            f"flipes: error: {tmp_path}/runs: is not a run directory (no config.json) but holds 2 runs; "
            f"pass one: {tmp_path}/runs/a {tmp_path}/runs/b"
        )
        line = error_line(capsys, command, tmp_path / "empty")
        fix = "pass a directory written by flipes train"
        assert line == f"flipes: error: {tmp_path}/empty: is not a run directory (no config.json); {fix}"
        line = error_line(capsys, command, tmp_path / "deep")  # three runs, three levels down: all shown
        seeds = " ".join(f"{tmp_path}/deep/Hopper-v5/ars/seed{s}" for s in range(3))
        assert (
            line == f"flipes: error: {tmp_path}/deep: is not a run directory (no config.json) but holds 3 runs; pass one: {seeds}"
        )


def test_metrics_lines_that_are_not_rows_are_dropped_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Lines of metrics.jsonl that are JSON but not rows (no generation, a generation that is not an
    integer, not an object) are dropped by a resume with the note torn lines get, and skipped by
    read_metrics; a row lacking fitness_max still plots."""
    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=2, out=str(run))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"foo": 1}\n{"generation": "x"}\n{"generation": true}\n[1]\n')
    assert [r["generation"] for r in flipes.read_metrics(run)] == [0, 1]
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--generations", "3"]) == 0
    err = capsys.readouterr().err
    assert f"flipes: {run}/metrics.jsonl: dropped 4 torn, blank or malformed line(s)" in err and "Traceback" not in err
    assert [r["generation"] for r in metrics(run)] == [0, 1, 2]
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"generation": 3, "fitness_mean": "high"}\n')  # edited by hand: no fitness_max, a mean that is no number
    assert main(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_a_directory_in_place_of_metrics_jsonl_is_one_line_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A directory where metrics.jsonl belongs stops a resume before anything is written, in one line
    naming it and how to move it aside; read_metrics says the same. Once moved, the run resumes."""
    run = tmp_path / "run"
    flipes.train(**{**FAST_KW, "plot": True}, generations=2, out=str(run))  # every file stays, curves.png too
    rows = run / "metrics.jsonl"
    rows.rename(run / "rows")
    rows.mkdir()
    before = files(run)
    line = error_line(capsys, "train", "--resume", run, "--generations", "3")
    assert line == f"flipes: error: --resume: {rows} is a directory, not the run's metrics.jsonl; move it out of the way " \
                   f"(mv {rows} {rows}.bak)"  # fmt: skip
    assert files(run) == before
    with pytest.raises(flipes.UsageError, match=f"^{rows}: is a directory, not a metrics file; move it out of the way"):
        flipes.read_metrics(run)
    rows.rmdir()
    (run / "rows").rename(rows)
    assert main(["train", "--resume", str(run), "--generations", "3"]) == 0 and len(metrics(run)) == 3


def test_a_config_json_that_lost_options_is_filled_from_the_checkpoint_and_a_foreign_checkpoint_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """evaluate, export and load_policy read config.json first and fill what it lacks (hand-edited, or written by
    an older flipes: here env and hidden) from the checkpoint's options, giving the same weights and evaluation as
    the intact file; an unknown policy name in it is a one-line error naming the file; a checkpoint of another run
    of the same env with other layer sizes is still refused as another model's, and one of another env as such."""
    run, other = tmp_path / "run", tmp_path / "other"
    flipes.train(**FAST_KW, generations=2, hidden=[5], out=str(run))
    flipes.train(**FAST_KW, generations=1, hidden=[6], out=str(other))
    intact = flipes.load_policy(run).state_dict()
    capsys.readouterr()
    assert main(["evaluate", str(run), "--episodes", "3"]) == 0
    line = capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in ("env", "hidden")}))
    edited = flipes.load_policy(run).state_dict()
    assert edited.keys() == intact.keys() and all(torch.equal(edited[k], intact[k]) for k in intact)
    assert main(["evaluate", str(run), "--episodes", "3"]) == 0 and capsys.readouterr().out == line
    assert main(["export", str(run)]) == 0
    (run / "config.json").write_text(json.dumps({**config, "policy": "no-such-policy"}))
    with pytest.raises(flipes.UsageError, match=rf"^{re.escape(str(run / 'config.json'))}: names policy 'no-such-policy', "
                                                r"none of mlp, gru, cnn; restore the run's value"):  # fmt: skip
        flipes.load_policy(run)
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(flipes.UsageError, match=r"^--checkpoint: .* holds parameters of another model than"):
        flipes.load_policy(run, checkpoint=str(other / "checkpoint.pt"))
    foreign = load_checkpoint(other)
    foreign["config"]["env"] = "flipes/Pendulum-v1"
    save_checkpoint(foreign, tmp_path / "foreign.pt", keep_previous=False)
    trained_on = rf"^--checkpoint: .*foreign.pt was trained on flipes/Pendulum-v1, {re.escape(str(run))} on CartPole-v1; "
    with pytest.raises(flipes.UsageError, match=trained_on + "pass a checkpoint written by this run$"):
        flipes.load_policy(run, checkpoint=str(tmp_path / "foreign.pt"))


def test_a_hand_edited_config_json_value_is_named_in_that_file_not_as_a_flag(tmp_path: Path) -> None:
    """A resume whose config.json holds a value of the wrong type (edited by hand) is refused naming that file and
    the option as written there, not a --flag the user never passed, and saying where the trained value is kept;
    the run is unchanged and resumes once the value is restored."""
    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=1, out=str(run))
    good = (run / "config.json").read_text()
    (run / "config.json").write_text(json.dumps({**json.loads(good), "popsize": "abc"}))
    with pytest.raises(flipes.UsageError) as e:
        flipes.train(resume=str(run), generations=2, progress=False)
    assert str(e.value) == (
        f"{run / 'config.json'}: the resumed run's option popsize = 'abc' is not an integer; restore the value the run "
        "was trained with (its checkpoint.pt holds it)"
    )
    (run / "config.json").write_text(good)
    assert flipes.train(resume=str(run), generations=2, progress=False).metrics[-1]["generation"] == 1


def test_two_files_saved_in_one_directory_keep_their_own_previous_ones(tmp_path: Path) -> None:
    """flipes.save_checkpoint of two files in one directory (a loop's last.pt and best.pt) keeps each file's replaced
    version beside it as its own previous one, so neither save removes the other's; a damaged last.pt is refused
    naming last.pt's previous version, which reads back as that file's older state, not the other file's."""
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    for generation in (1, 2):
        flipes.save_checkpoint({"file": "last", "generation": generation}, last)
        flipes.save_checkpoint({"file": "best", "generation": generation}, best)
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte inside the payload
    last.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as e:
        flipes.read_checkpoint(last)
    assert e.value.previous is not None and e.value.previous_loads
    assert flipes.read_checkpoint(e.value.previous) == {"file": "last", "generation": 1}
    assert str(e.value).endswith(f"reads: flipes.read_checkpoint('{e.value.previous}')")
    assert flipes.read_checkpoint(best) == {"file": "best", "generation": 2}
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("last.pt", "best.pt"))
    assert len(kept) == 2 and all(flipes.read_checkpoint(tmp_path / name)["generation"] == 1 for name in kept)


def test_a_save_into_a_directory_not_made_yet_makes_it_and_a_file_in_its_place_is_one_line(tmp_path: Path) -> None:
    """``flipes.save_checkpoint(state, "ckpt/checkpoint.pt")`` in a directory without ``ckpt/`` (the README's own loop)
    makes the missing directories and writes a checkpoint that reads back equal; a file where a directory should be is
    a StorageError naming the path and the reason, with nothing written."""
    path = tmp_path / "ckpt" / "run1" / "checkpoint.pt"
    flipes.save_checkpoint({"generation": 3, "w": torch.arange(4.0)}, path)
    back = flipes.read_checkpoint(path)
    assert back["generation"] == 3 and torch.equal(back["w"], torch.arange(4.0))
    (tmp_path / "taken").write_bytes(b"a file")
    blocked = r"cannot write .*taken/checkpoint\.pt \(.*taken is a file, not a directory\); no checkpoint was written"
    with pytest.raises(flipes.StorageError, match=blocked):
        flipes.save_checkpoint({"generation": 1}, tmp_path / "taken" / "checkpoint.pt")
    assert (tmp_path / "taken").read_bytes() == b"a file"


def disk_full_at_pt_replace(monkeypatch: pytest.MonkeyPatch) -> Callable[[object, object], None]:
    """Makes os.replace onto a .pt file fail as a full disk does (the last step of a checkpoint's save); returns that
    os.replace, to put back after the real one is restored."""
    real_replace = os.replace

    def full(src: object, dst: object) -> None:
        if str(dst).endswith(".pt"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    return full


def test_a_failed_save_of_an_own_file_names_that_file_not_a_runs_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save of one's own last.pt that finds the disk full names last.pt, unchanged, as the good file (not a
    checkpoint.pt beside it, another file), or says none was written yet; a run's best.pt names the run's
    checkpoint.pt, which --resume reads."""
    (tmp_path / "checkpoint.pt").write_bytes(b"another file")
    last, real_replace = tmp_path / "last.pt", os.replace
    full = disk_full_at_pt_replace(monkeypatch)
    reason = "disk full: No space left on device"
    for path, good in (
        (last, "no checkpoint was written yet"),
        (tmp_path / "best.pt", f"the last good checkpoint is {tmp_path / 'checkpoint.pt'}"),
    ):
        with pytest.raises(flipes.StorageError) as e:
            flipes.save_checkpoint({"generation": 1}, path)
        assert str(e.value) == f"cannot write {path} ({reason}); {good}"
    monkeypatch.setattr(os, "replace", real_replace)
    flipes.save_checkpoint({"generation": 1}, last)
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(flipes.StorageError) as e:
        flipes.save_checkpoint({"generation": 2}, last)
    assert str(e.value) == f"cannot write {last} ({reason}); the last good checkpoint is {last}"
    assert flipes.read_checkpoint(last) == {"generation": 1}


def test_a_failed_save_in_a_run_directory_names_the_resume_that_continues_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a directory flipes train made (its config.json beside the checkpoints), a failed save names the good file and
    the --resume that reads it: the directory for its checkpoint.pt, previous.pt itself where checkpoint.pt is gone."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    flipes.save_checkpoint({"generation": 1}, run / "checkpoint.pt")
    flipes.save_checkpoint({"generation": 2}, run / "checkpoint.pt")  # the first is previous.pt now
    disk_full_at_pt_replace(monkeypatch)
    then = "continues from it once the file can be written"
    with pytest.raises(flipes.StorageError) as e:
        flipes.save_checkpoint({"generation": 3}, run / "best.pt")
    assert str(e.value).endswith(f"; the last good checkpoint is {run / 'checkpoint.pt'}: --resume {run} {then}")
    (run / "checkpoint.pt").unlink()
    with pytest.raises(flipes.StorageError) as e:
        flipes.save_checkpoint({"generation": 3}, run / "checkpoint.pt")
    assert str(e.value).endswith(f"; the last good checkpoint is {run / 'previous.pt'}: --resume {run / 'previous.pt'} {then}")


def test_a_save_without_keep_previous_replaces_the_file_and_leaves_the_previous_one_as_it_was(tmp_path: Path) -> None:
    """flipes.save_checkpoint(..., keep_previous=False) replaces the file and writes no previous one: a first such save
    over a file leaves no NAME.previous.pt, and one over a file with a previous one from before leaves that previous
    one's content as it was (not the replaced file's)."""
    path = tmp_path / "best.pt"
    save_checkpoint({"generation": 1}, path)
    save_checkpoint({"generation": 2}, path, keep_previous=False)
    assert flipes.read_checkpoint(path) == {"generation": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]
    save_checkpoint({"generation": 3}, path)  # best.previous.pt: generation 2
    save_checkpoint({"generation": 4}, path, keep_previous=False)
    assert flipes.read_checkpoint(path) == {"generation": 4}
    assert flipes.read_checkpoint(tmp_path / "best.previous.pt") == {"generation": 2}


def test_train_restores_the_signal_handlers_it_found(tmp_path: Path) -> None:
    """flipes.train installs its own SIGINT and SIGTERM handlers for the run and puts back the very handlers that
    were installed before it, so a notebook's or an application's own handling of Ctrl-C and SIGTERM holds after it."""

    def own(signum: int, frame: object) -> None:
        raise AssertionError("not called")

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGTERM, own)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        flipes.train(**FAST_KW, generations=1, out=str(tmp_path / "run"))
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == (own, signal.SIG_IGN)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_a_resumed_runs_seconds_count_on_from_its_checkpoints(tmp_path: Path) -> None:
    """A run's wall time counts over resumes: a checkpoint whose run had trained 10^6 s (set in the file) resumes to
    rows whose seconds are at least 10^6, and the checkpoint it ends with carries them on."""
    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=1, out=str(run))
    state = load_checkpoint(run)
    state["seconds"] = 1e6
    save_checkpoint(state, run / "checkpoint.pt", keep_previous=False)
    flipes.train(resume=str(run), generations=2, progress=False)
    rows = metrics(run)
    assert [r["generation"] for r in rows] == [0, 1] and rows[1]["seconds"] >= 1e6
    assert load_checkpoint(run)["seconds"] == rows[1]["seconds"]


def test_a_text_file_whose_write_fails_midway_is_left_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write_atomic (config.json, a rewritten metrics.jsonl) writes beside the file and renames: a write that fails
    before the rename (here its fsync, as a full disk fails it) leaves the file's old content, no temporary file,
    and is one StorageError naming the file as unchanged."""
    from flipes.callbacks import write_atomic

    path = tmp_path / "config.json"
    path.write_text('{"old": 1}')

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match=r"^cannot write .*config\.json \(.*\); it is unchanged$"):
        write_atomic(path, '{"new": 2}')
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"] and path.read_text() == '{"old": 1}'


def test_a_checkpoint_save_refuses_what_it_could_not_read_back_and_a_read_names_an_intact_file_so(tmp_path: Path) -> None:
    """save_checkpoint refuses, before writing anything, a numpy value anywhere in the state (a rule's np.float64 σ
    beside ``es.state_dict()``: torch.load(weights_only=True), which reads checkpoints, refuses it), naming where it
    is and the conversion, and a path ending in a slash (a directory, which Path would turn into a file of its name).
    A file holding another object weights_only loading refuses reads as intact, not damaged: its hash matches."""
    import fractions
    import io

    import numpy as np

    with pytest.raises(TypeError, match=r"state\['rule'\]\['sigma'\] is a numpy float64, .*save float\(x\) or int\(x\)"):
        save_checkpoint({"es": {"generation": 3}, "rule": {"sigma": np.float64(0.1)}}, tmp_path / "a.pt")
    with pytest.raises(TypeError, match=r"state\['hist'\]\[1\] is a numpy ndarray, .*torch.from_numpy\(x\)"):
        save_checkpoint({"hist": [1.0, np.zeros(3)]}, tmp_path / "a.pt")
    with pytest.raises(TypeError, match=r"the key np.int64\(3\) of state\[.counts.\] is a numpy int64, .*int\(x\)"):
        save_checkpoint({"counts": {np.int64(3): 1.0}}, tmp_path / "a.pt")
    with pytest.raises(ValueError, match=r"names a directory; give a file in it, e.g. .*ck/checkpoint.pt"):
        save_checkpoint({"x": 1}, f"{tmp_path / 'ck'}/")
    assert list(tmp_path.iterdir()) == []
    save_checkpoint({"x": fractions.Fraction(1, 2)}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match=r"b.pt is intact but holds an object torch.load\(weights_only=True\)") as e:
        flipes.read_checkpoint(tmp_path / "b.pt")
    recipe = re.search(r"read this one with (.*) if you trust it\)$", str(e.value))
    assert recipe is not None  # the recipe the message gives reads the state back, not the payload's bytes
    assert eval(recipe[1], {"torch": torch, "io": io, "path": tmp_path / "b.pt"}) == {"x": fractions.Fraction(1, 2)}
