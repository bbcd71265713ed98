"""Training under a batch system: the signal Slurm sends before a time limit (``sbatch --signal=USR1@120``) stops
training after the generation under way with a checkpoint, as SIGTERM does, where nothing else handles it."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import FAST_KW

import flipes
from flipes.callbacks import Callback

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 (Windows)")


class SignalAt(Callback):
    """Sends this process ``signum`` ``times`` times at the end of generation ``at``; refuses to send one whose
    handler is the default action (which would end the test's process instead of failing the test)."""

    def __init__(self, at: int, signum: int = signal.SIGUSR1, times: int = 1) -> None:
        self.at, self.signum, self.times = at, signum, times

    def on_generation(self, state: Any, row: dict[str, Any]) -> None:
        if row["generation"] == self.at:
            assert signal.getsignal(self.signum) not in (signal.SIG_DFL, None), "SIGUSR1 would end the process"
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


def test_sigusr1_before_a_time_limit_stops_after_the_generation_with_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGUSR1, twice at once (Slurm signals every process, a launcher forwards its copy), at the end of generation 1:
    one request, said in one line naming it; training stops after that generation (reason "interrupted", the command's
    status 130) with a checkpoint holding both generations, though --checkpoint-every is far off; and the process's
    default action for SIGUSR1 is back afterwards."""
    before = signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # as a fresh process has it
    try:
        result = flipes.train(**FAST_KW, generations=50, checkpoint_every=1000, out=str(tmp_path / "run"),
                              callbacks=[SignalAt(1, times=2)])  # fmt: skip
        after = signal.getsignal(signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, before)
    err = capsys.readouterr().err
    assert result.reason == "interrupted" and len(result.metrics) == 2, (result.reason, len(result.metrics))
    assert flipes.read_checkpoint(tmp_path / "run" / "checkpoint.pt")["es"]["generation"] == 2
    assert err.count("flipes: SIGUSR1: stopping after the generation under way, with a checkpoint") == 1, err
    assert "stopped at once" not in err, err
    assert after == signal.SIG_DFL


def test_a_sigusr1_handler_of_the_callers_own_is_left_to_handle_it(tmp_path: Path) -> None:
    """Where the caller handles SIGUSR1 itself (its own checkpoint-and-requeue, a traceback dump), training leaves it
    installed: the caller's handler gets the signal, the run trains all its generations, and the handler is still the
    caller's afterwards."""
    got: list[int] = []
    mine = lambda signum, frame: got.append(signum)  # noqa: E731
    before = signal.signal(signal.SIGUSR1, mine)
    try:
        result = flipes.train(**FAST_KW, generations=3, out=str(tmp_path / "run"), callbacks=[SignalAt(0)])
        assert got == [signal.SIGUSR1] and result.reason != "interrupted" and len(result.metrics) == 3
        assert signal.getsignal(signal.SIGUSR1) is mine
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_a_second_seed_resumed_into_one_run_directory_is_told_to_take_a_directory_of_its_own(tmp_path: Path) -> None:
    """A job array whose tasks share one --out with --resume auto: the second seed's task meets the first seed's run,
    and is refused in one line naming both seeds and both ways on, continuing the saved run or another --out for the
    new seed; the first run stays as it was."""
    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=1, seed=1, out=str(run), resume="auto")
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(flipes.UsageError) as e:
        flipes.train(**FAST_KW, generations=1, seed=2, out=str(run), resume="auto")
    assert str(e.value) == (
        "--resume: the run was trained with other options (--seed: saved 1, now 2); pass the saved ones to continue it, "
        "or give each seed a run directory of its own (--out runs/seed2)"
    )
    assert (run / "checkpoint.pt").read_bytes() == before


class RankZeroOfTwo:
    """Rank 0 of two: each exchange answers with this rank's object and the next of ``others`` for rank 1."""

    rank, size = 0, 2

    def __init__(self, *others: Any) -> None:
        self.others = list(others)

    def allgather_object(self, mine: Any) -> list[Any]:
        other = self.others.pop(0)
        return [mine, other(mine) if callable(other) else other]


def test_ranks_that_see_other_run_directories_are_told_to_share_one(tmp_path: Path) -> None:
    """--resume auto into node-local scratch on a multi-node job: rank 0 resumed generation 30 and rank 1 found no
    checkpoint in its --out and started anew. The refusal names the rank, its directory and the fix (a file system all
    nodes share), not "resume every rank from the same checkpoint", which every rank's command already says."""
    import torch

    from flipes.resume import agree

    config = flipes.TrainConfig(env="none", popsize=4)
    state = SimpleNamespace(es=SimpleNamespace(generation=30), model=torch.nn.Linear(2, 1), resumed=True, run_dir=tmp_path)
    comm = RankZeroOfTwo(lambda mine: (mine[0], 0, mine[2]), (False, "/scratch/run"))
    with pytest.raises(flipes.UsageError) as e:
        agree(comm, config, state)  # type: ignore[arg-type]
    assert str(e.value) == (
        "--resume: the ranks start at other generations (rank 0 at 30, rank 1 at 0): rank 1 found no checkpoint in "
        "/scratch/run and started the run anew; every rank reads the run directory: keep --out on a file system all the "
        "job's nodes share (not a node-local $TMPDIR)"
    )


def test_a_rank_that_cannot_see_the_checkpoint_rank_0_resumes_is_told_to_share_the_run_directory(tmp_path: Path) -> None:
    """--resume DIR on a rank other than 0 whose node lacks DIR (node-local scratch): one line naming the checkpoint
    missing and the fix, a run directory on a file system all nodes share; on rank 0 the line stays the plain one."""
    from flipes.resume import restore

    def refusal(rank: int) -> str:
        state = SimpleNamespace(comm=SimpleNamespace(rank=rank, size=2))
        with pytest.raises(flipes.UsageError) as e:
            restore(state, str(tmp_path / "run"), "cpu", None)  # type: ignore[arg-type]
        return str(e.value)

    assert refusal(1) == (
        f"--resume: no checkpoint at {tmp_path / 'run'}; every rank reads the checkpoint: keep the run directory on a "
        "file system all the job's nodes share (not a node-local $TMPDIR)"
    )
    assert "node-local" not in refusal(0)


def test_an_env_worker_process_leaves_ctrl_c_and_sigusr1_to_the_training_process() -> None:
    """An env worker process (``_worker_block`` in a process other than ``parent``) ignores SIGINT and SIGUSR1, which a
    terminal or ``srun --signal=USR1@...`` sends to every process of the group: the training process stops after its
    generation, where a worker ended by the signal's default action would cut that generation short. The parent's own
    block (made for the spaces) leaves the handlers as they are."""
    from flipes.rl.workers import _worker_block

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGUSR1)}
    try:
        for s in saved:
            signal.signal(s, signal.SIG_DFL)
        _worker_block(os.getpid(), "CartPole-v1", 1, 0, {}).close()  # the parent's block: nothing changed
        assert [signal.getsignal(s) for s in saved] == [signal.SIG_DFL, signal.SIG_DFL]
        _worker_block(os.getpid() + 1, "CartPole-v1", 1, 0, {}).close()  # as a worker process makes it
        assert [signal.getsignal(s) for s in saved] == [signal.SIG_IGN, signal.SIG_IGN]
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


@pytest.mark.parametrize("launcher", [{}, {"PMI_SIZE": "4", "PMI_RANK": "1"}], ids=["srun alone", "srun with PMI"])
def test_srun_tasks_that_mpi_cannot_see_are_told_at_the_lock_to_start_one_mpi_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, launcher: dict[str, str]
) -> None:
    """``srun -n 4 flipes train ...`` where srun's MPI plugin gives no PMI starts four runs of one process each, which
    meet first at the run directory's lock: the tasks refused there are told why and how to start one run over four
    processes (or four runs, each its own --out). Where a PMI is set (MPI sees the job), the lock's error is the usual."""
    from flipes.errors import UsageError
    from flipes.rundir import RunDirLock

    for key in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "HYDI_CONTROL_FD"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    for key, value in launcher.items():
        monkeypatch.setenv(key, value)
    held = RunDirLock(tmp_path)
    try:
        with pytest.raises(UsageError, match="is in use by flipes pid") as refused:
            RunDirLock(tmp_path)
    finally:
        held.release()
    told = "srun started 4 processes of this command" in str(refused.value)
    assert told == (not launcher), str(refused.value)
    if told:
        assert "srun --mpi=pmix" in str(refused.value) and "mpiexec -n 4" in str(refused.value)


LAUNCHERS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "HYDI_CONTROL_FD", "SLURM_PROCID",
             "SLURM_STEP_NUM_TASKS", "TORCHELASTIC_RUN_ID", "LOCAL_RANK", "RANK", "WORLD_SIZE")  # fmt: skip


@pytest.mark.parametrize(
    "env, warned",
    [
        ({"TORCHELASTIC_RUN_ID": "x", "LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "4"}, "torchrun started 4 processes"),
        ({"TORCHELASTIC_RUN_ID": "x", "LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "4"}, None),  # rank 0 says it
        ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2"}, "srun started 2 processes"),
        ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}, None),  # one task: nothing unseen
        ({"RANK": "0", "WORLD_SIZE": "4"}, None),  # RANK alone is no launcher's mark
    ],
    ids=["torchrun rank 0", "torchrun rank 1", "srun 2 tasks", "srun 1 task", "bare RANK"],
)
def test_processes_a_launcher_other_than_mpis_started_are_warned_that_each_trains_alone(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], warned: str | None
) -> None:
    """torchrun (or an srun without an MPI plugin) starting several processes of one command gives each a world of
    one: the launcher's rank 0 warns once that each trains alone and names ``mpiexec -n N``; anything else is quiet."""
    import warnings

    from flipes.dist import SerialComm, world

    for key in LAUNCHERS:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert isinstance(world(), SerialComm)
    said = [str(w.message) for w in caught if "processes of this command" in str(w.message)]
    if warned is None:
        assert said == []
    else:
        assert len(said) == 1 and said[0].startswith(warned) and f"mpiexec -n {env.get('WORLD_SIZE', '2')}" in said[0], said


def test_an_mpi_singleton_under_torchrun_is_warned_that_each_process_trains_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """With mpi4py imported (a user's script, or a launcher's site), torchrun's processes each get an MPI world of one:
    that path to the serial world warns as the one without mpi4py does, once, naming ``mpiexec -n N``."""
    import sys
    import types
    import warnings

    from flipes import dist

    for key in LAUNCHERS:
        monkeypatch.delenv(key, raising=False)
    for key, value in {"TORCHELASTIC_RUN_ID": "x", "LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "3"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(sys.modules, "mpi4py", sys.modules.get("mpi4py", types.ModuleType("mpi4py")))
    monkeypatch.setattr(dist, "MPIComm", lambda timeout: SimpleNamespace(size=1, rank=0))  # MPI's singleton world
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert isinstance(dist.world(), dist.SerialComm)
    said = [str(w.message) for w in caught if "processes of this command" in str(w.message)]
    assert len(said) == 1 and said[0].startswith("torchrun started 3 processes") and "mpiexec -n 3" in said[0], said
