"""Communication between ES workers: MPI through mpi4py, or a serial stand-in.

This is the only module of flipes that imports mpi4py, and only when an ``MPIComm`` is made. The
noise of every member is a pure function of (seed, generation, group, slot), so workers exchange
fitness scores (N floats) and either the gradient (``allreduce``) or nothing more (``seeds``, the
shared-seed scheme of Salimans et al., 2017, arXiv:1703.03864).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import numpy as np
import torch
from torch import Tensor

from flipes.checkpoint import tensors_sha256
from flipes.errors import UsageError, caller_stacklevel


class Comm(Protocol):
    """What flipes needs from a communicator (``SerialComm``, ``MPIComm``, or your own)."""

    rank: int
    size: int
    local_rank: int  # rank among the processes of this node
    local_size: int  # processes of this job on this node
    bytes_sent: int  # payload bytes this process has sent in collectives

    def allgather_tensor(self, x: Tensor) -> Tensor:
        """Concatenate every rank's ``x`` along dim 0, in rank order."""
        ...

    def allreduce_sum_(self, x: Tensor) -> Tensor:
        """Sum ``x`` over ranks, in place."""
        ...

    def bcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        ...

    def allgather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        ...

    def abort(self, code: int = 1) -> None:
        """End every process of the job."""
        ...


COMM_MEMBERS = ("rank", "size", "local_rank", "local_size", "bytes_sent", "allgather_tensor", "allreduce_sum_", "bcast",
                "allgather_object", "abort")  # fmt: skip


def check_comm(comm: Any, where: str, needs: Sequence[str] = COMM_MEMBERS) -> None:
    """Raise a TypeError naming what ``comm`` lacks of :class:`Comm` (an mpi4py communicator, a number), and the fix,
    where it would otherwise be an AttributeError at its first use; ``needs``: the members ``where`` reads (a loop of
    one's own may give FlipES a communicator of fewer)."""
    # mpi4py's MPI.COMM_WORLD (read on its class: a stand-in's __getattr__ may refuse any name) has a rank and a size
    # and none of Comm's collectives: not taken wherever fewer members are needed
    mpi = hasattr(type(comm), "Get_rank") and hasattr(type(comm), "Allreduce")
    missing = [name for name in (COMM_MEMBERS if mpi else needs) if not hasattr(comm, name)]
    if not missing:
        return
    fix = (
        "wrap it: flipes.dist.MPIComm(comm)"
        if mpi
        else "pass flipes.dist.world() (MPI under mpiexec, else this process alone), or None for that default"
    )
    name = type(comm).__name__
    got = "an mpi4py communicator" if mpi else f"a{'n' * (name[:1] in tuple('AEIOUaeiou'))} {name}"
    raise TypeError(f"{where} takes a flipes.dist communicator, got {got} (no {', '.join(missing[:3])}); {fix}")


class SerialComm:
    """A communicator of one process: every collective is the identity."""

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    bytes_sent = 0

    def allgather_tensor(self, x: Tensor) -> Tensor:
        """``x`` itself: the one rank holds every row."""
        return x

    def allreduce_sum_(self, x: Tensor) -> Tensor:
        """``x`` itself, unchanged: the sum over one rank."""
        return x

    def bcast(self, obj: Any) -> Any:
        """``obj`` itself: this process is rank 0."""
        return obj

    def allgather_object(self, obj: Any) -> list[Any]:
        """``[obj]``: the one rank's object."""
        return [obj]

    def start_watchdog(self, timeout: float) -> None:
        """Nothing: one process waits for no other (``MPIComm.start_watchdog``, so one script runs under both)."""

    def abort(self, code: int = 1) -> None:
        """End the process with exit status ``code`` (``SystemExit``)."""
        sys.exit(code)


class MPIComm:
    """ES collectives over the mpi4py communicator ``comm`` (``None``: ``MPI.COMM_WORLD``); ``timeout``: the
    seconds a rank waits for the others to start (``--mpi-timeout``, 0: forever), as :func:`world`'s.

    Tensors travel as numpy buffers through host memory (GPU tensors are copied); the sizes are
    N fitness values and, in ``allreduce`` mode, one gradient vector per generation.

    Attributes:
        local_rank: rank among the processes of this node (for ``cuda:<local_rank>``).
        local_size: processes of this job on this node (they share its cores).
        bytes_sent: payload bytes this process has contributed to collectives so far.
    """

    def __init__(self, comm: Any = None, timeout: float = 300.0) -> None:
        MPI = _import_mpi(timeout if _launched_by_mpi() else 0)
        self._mpi = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local_rank, self.local_size = 0, 1
        self.bytes_sent = 0
        self._watchdog: Watchdog | None = None
        if self.size > 1:  # before the first collective: a rank failing while the others start ends the job
            abort_on_uncaught_exception(self)
        with self.startup(timeout, "MPI_Comm_split_type"):
            node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()  # MPI has ~2,000 communicators a process: a script calling flipes.train again and again must not run out

    @contextlib.contextmanager
    def startup(self, timeout: float, what: str) -> Iterator[None]:
        """End the job with one line when the block (a collective before the watchdog runs: the ranks
        meeting for the first time) outlasts ``timeout`` seconds (rank 0; the others 10 s later, so that
        rank 0 speaks first): a rank that failed, stopped or exited before it joined leaves the others
        there. 0 (or inf) waits forever."""
        if self.size == 1 or not 0 < timeout < math.inf:
            yield
            return
        limit = timeout if self.rank == 0 else timeout + 10
        done = threading.Event()

        def watch() -> None:
            if not done.wait(limit):
                print(f"flipes: error: --mpi-timeout: rank {self.rank} waited {limit:.0f} s for the other ranks to start "
                      f"({what}): a rank failed, stopped or exited before it joined (its own lines above say why), or "
                      "runs other code; start every rank alike, or raise --mpi-timeout", file=sys.stderr, flush=True)  # fmt: skip
                self.abort(3)

        threading.Thread(target=watch, name="flipes-mpi-startup", daemon=True).start()
        try:
            yield
        finally:
            done.set()

    def start_watchdog(self, timeout: float) -> None:
        """End the job, naming the rank(s) that did not arrive, when this rank waits more than
        ``timeout`` seconds in one collective (a stopped, dead or diverged rank); 0 turns it off."""
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if timeout > 0 and self.size > 1:
            self._watchdog = Watchdog(self, timeout)

    def _watch(self, name: str) -> contextlib.AbstractContextManager:
        return self._watchdog.collective(name) if self._watchdog is not None else contextlib.nullcontext()

    def allgather_tensor(self, x: Tensor) -> Tensor:
        """Every rank's ``x`` concatenated along dim 0 in rank order, on ``x``'s device; the ranks may
        hold different numbers of rows but the same trailing shape and dtype. Travels through host
        memory (numpy, ``Allgatherv``); adds ``x``'s bytes to ``bytes_sent``."""
        local = np.ascontiguousarray(x.detach().cpu().numpy())
        with self._watch("allgather"):
            counts = self.comm.allgather(local.shape[0])
            out = np.empty((sum(counts), *local.shape[1:]), dtype=local.dtype)
            row = int(np.prod(local.shape[1:], dtype=np.int64))
            self.comm.Allgatherv(local, [out, [c * row for c in counts]])
        self.bytes_sent += local.nbytes
        return torch.from_numpy(out).to(x.device)

    def allreduce_sum_(self, x: Tensor) -> Tensor:
        """Sum ``x`` over ranks in place and return it. float32 and float64 are summed in their own
        dtype, other dtypes (bfloat16, which numpy and MPI lack) in float32 and rounded back once.
        Travels through host memory; adds the buffer's bytes to ``bytes_sent``."""
        wide = x.dtype in (torch.float32, torch.float64)  # numpy/MPI have no bfloat16: sum those in float32
        buf = np.ascontiguousarray((x if wide else x.float()).detach().cpu().numpy())
        with self._watch("allreduce"):
            self.comm.Allreduce(self._mpi.IN_PLACE, buf, op=self._mpi.SUM)
        self.bytes_sent += buf.nbytes
        return x.copy_(torch.from_numpy(buf))

    def bcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (pickled) on every rank; the other ranks' ``obj`` is ignored."""
        with self._watch("bcast"):
            return self.comm.bcast(obj, root=0)

    def allgather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        with self._watch("allgather"):
            return self.comm.allgather(obj)

    def abort(self, code: int = 1) -> None:
        """End every process of the job (a failing rank must not leave the others waiting)."""
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(0.5)  # the launcher forwards this rank's last lines before MPI_Abort ends everything
        self.comm.Abort(code)
        os._exit(code)  # MPI_Abort may return before the launcher ends this process: never run on


_PACKAGE = os.path.dirname(os.path.realpath(__file__)) + os.sep
_TORCH = os.path.dirname(os.path.realpath(torch.__file__)) + os.sep
_ARRIVAL = 7301  # message tag of the watchdog's arrival notes


class Watchdog:
    """Notices a collective that waits too long, and names who is missing.

    On entering collective ``k``, every rank but 0 sends ``k`` to rank 0 (a few bytes, on a duplicate
    communicator, so ES traffic never mixes with it); rank 0 reads them as they come. The duplicate is freed on
    :meth:`stop`, and each note carries this watchdog's token (rank 0's): the notes of a stopped one that rank 0 never
    read, which a later duplicate may receive where MPI reuses the freed one's context, are dropped. A thread wakes
    every half second: when this rank has waited ``timeout`` seconds (rank 0) or ``timeout`` + 10
    (the others, so that rank 0, which knows who arrived, speaks first), it prints one line and
    aborts the job. Needs MPI_THREAD_MULTIPLE (mpi4py's default; MPICH and Open MPI provide it).
    """

    def __init__(self, comm: MPIComm, timeout: float) -> None:
        self.mpi, self.rank, self.size, self.timeout = comm, comm.rank, comm.size, timeout
        with comm.startup(timeout, "MPI_Comm_dup, the start of training"):
            self.notes = comm.comm.Dup()
            self.token = self.notes.bcast(os.urandom(8) if self.rank == 0 else None, root=0)
        self.step = 0
        self.arrived = dict.fromkeys(range(1, self.size), 0)
        self.lock = threading.Lock()
        self.pending: list[Any] = []
        self.entered: tuple[float, str, int, str] | None = None
        self.waits_for = ""  # what the next collectives wait for, where the caller said (waiting_for): named on a timeout
        self.running = True
        self.thread = threading.Thread(target=self._run, name="flipes-mpi-watchdog", daemon=True)
        self.thread.start()

    @contextlib.contextmanager
    def collective(self, name: str) -> Iterator[None]:
        """Time the block as collective ``name`` (the next in this rank's count): the arrival note goes
        to rank 0 (rank 0 reads the notes waiting for it), and the thread aborts the job if the block
        outlasts the timeout."""
        self.step += 1
        if self.rank == 0:
            self._drain()
        else:
            self.pending = [r for r in self.pending if not r.Test()]
            self.pending.append(self.notes.isend((self.token, self.step), dest=0, tag=_ARRIVAL))
        self.entered = (time.monotonic(), name, self.step, self.waits_for)
        try:
            yield
        finally:
            self.entered = None

    def _drain(self) -> bool:
        """Read the arrival notes that came; False (nothing read) where the watchdog stopped: its notes are freed."""
        with self.lock:
            if not self.running:
                return False
            status = self.mpi._mpi.Status()
            while self.notes.iprobe(source=self.mpi._mpi.ANY_SOURCE, tag=_ARRIVAL, status=status):
                source = status.Get_source()
                token, step = self.notes.recv(source=source, tag=_ARRIVAL)
                if token == self.token:  # else a stopped watchdog's, on a context MPI gave this one again
                    self.arrived[source] = max(self.arrived[source], step)
            return True

    def _run(self) -> None:
        limit = self.timeout if self.rank == 0 else self.timeout + 10
        while self.running:
            time.sleep(0.5)
            entered = self.entered if self.running else None  # stopped: the notes are freed
            if entered is None or time.monotonic() - entered[0] < limit:
                continue
            _, name, step, waits_for = entered
            if self.rank == 0:
                if not self._drain():  # stopped meanwhile: the collective ended with the training
                    break
                missing = [r for r, k in self.arrived.items() if k < step]
                # all arrived: one stopped or died inside the collective, which rank 0 cannot tell apart
                who = f"rank(s) {', '.join(map(str, missing))} did not arrive" if missing else "every rank entered it"
            else:
                who = "rank 0 did not answer"
            name += f" #{step}" + (f" ({waits_for})" if waits_for else "")
            print(f"flipes: error: --mpi-timeout: rank {self.rank} waited {limit:.0f} s in {name}: {who} "
                  "(stopped, dead, or running other code); start every rank alike, or raise --mpi-timeout for slow "
                  "generations", file=sys.stderr, flush=True)  # fmt: skip
            self.mpi.abort(3)

    def stop(self) -> None:
        """End the watching: the thread exits at its next wake-up (within half a second) and aborts nothing after. The
        duplicate communicator is freed (a local call in MPICH and Open MPI, so a rank stopping alone on an error is not
        held): each flipes.train under mpiexec starts a watchdog, and MPI runs out of communicators after ~2,000."""
        with self.lock:  # not while rank 0's thread reads the notes
            if self.running:  # a second stop frees nothing again
                self.running = False
                self.notes.Free()


@contextlib.contextmanager
def waiting_for(comm: Comm, what: str) -> Iterator[None]:
    """Inside, a collective of ``comm`` that outlasts ``--mpi-timeout`` names ``what`` it waits for in the watchdog's
    line (rank 0's evaluation, say), beside the ranks that did not arrive; a comm without a watchdog is left alone."""
    dog = getattr(comm, "_watchdog", None)
    if dog is None:
        yield
        return
    before, dog.waits_for = dog.waits_for, what
    try:
        yield
    finally:
        dog.waits_for = before


def world(timeout: float = 300.0) -> SerialComm | MPIComm:
    """An ``MPIComm`` when this process was started by mpiexec with more than one rank, else serial;
    ``timeout``: the seconds a rank waits for the others to start (``--mpi-timeout``, 0: forever).

    Raises:
        UsageError: under mpiexec without mpi4py (or with one that loads no MPI library), or with a launcher
            of another MPI than mpi4py's (every process would train alone). Rank 0 raises it at once; the others
            3 s later, as a rank alone with it (rank 0's exit ends the job first where it has it too)."""
    if "mpi4py" not in sys.modules and not _launched_by_mpi():
        warn_unseen_launch()
        return SerialComm()
    try:
        comm = MPIComm(timeout=timeout)
        launched_size = launched_world()[1]
        if comm.size == 1 and launched_size > 1:
            raise _mismatched_launcher(comm, launched_size)
    except UsageError:
        if launched_world()[0] > 0:
            time.sleep(3.0)
        raise
    if comm.size > 1:
        return comm
    warn_unseen_launch()
    return SerialComm()


# Watches MPI_Init from another process: it holds the GIL, so no thread of this one runs until it returns.
# Ends this process (SIGTERM, then SIGKILL) unless told, by its stdin closing, that MPI_Init returned.
_INIT_WATCH = """
import os, select, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the rank's to take
pid, limit, rank = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if not select.select([sys.stdin], [], [], limit)[0]:
    sys.stderr.write(f"flipes: error: --mpi-timeout: rank {rank} waited {limit:.0f} s for the other ranks to start (MPI_Init): "
                     "a rank failed or exited before it started MPI, or runs other code; start every rank alike, or "
                     "raise --mpi-timeout\\n")
    sys.stderr.flush()
    os.kill(pid, signal.SIGTERM)
    if not select.select([sys.stdin], [], [], 5)[0]:  # its end of the pipe closes as it ends
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
"""


def _import_mpi(timeout: float = 0) -> Any:
    """mpi4py's ``MPI`` module; its import (MPI_Init, where every rank meets) is bounded by ``timeout``
    seconds (rank 0; the others 10 s more) where this import starts MPI."""
    watch = None
    if "mpi4py.MPI" not in sys.modules and os.name == "posix" and 0 < timeout < math.inf:
        import subprocess

        rank = launched_world()[0]
        limit = timeout if rank == 0 else timeout + 10
        cmd = [sys.executable, "-I", "-S", "-c", _INIT_WATCH, str(os.getpid()), str(limit), str(rank)]
        with contextlib.suppress(OSError):  # no python to start (a frozen app): MPI_Init goes unwatched
            watch = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as e:  # RuntimeError: mpi4py 4 found no MPI library ("cannot load MPI library")
        raise UsageError(
            "mpiexec",
            f"running under MPI needs mpi4py and an MPI runtime ({type(e).__name__}: {e})",
            "pip install 'flipes[mpi]' mpich (or build mpi4py against your cluster's MPI); without mpiexec, run as one process",
        ) from None
    finally:
        if watch is not None:
            watch.stdin.close()  # type: ignore[union-attr]
            watch.wait()
    return MPI


def _mismatched_launcher(comm: MPIComm, launched: int) -> UsageError:
    """The error of a process that its launcher counts among ``launched`` but whose MPI sees alone."""
    key = next(k for k in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE") if k in os.environ)
    launcher = "Open MPI's mpiexec/mpirun" if key.startswith("OMPI") else "an MPICH-style (Hydra/PMI) launcher, or srun"
    library = comm._mpi.Get_library_version().strip().splitlines()[0].strip()
    return UsageError(
        "mpiexec",
        f"{key}={launched}: {launcher} started {launched} processes, but mpi4py's MPI ({library}) sees each as a job "
        "of one: mpi4py was built against another MPI than this launcher's, and every process would train alone",
        "start the job with the mpiexec of mpi4py's MPI (pip's mpich puts it beside python), or rebuild mpi4py against "
        "this launcher's MPI (pip install --force-reinstall --no-cache-dir --no-binary mpi4py mpi4py)",
    )


def launched_world() -> tuple[int, int]:
    """``(rank, size)`` of this process among those mpiexec started, read from the environment MPICH,
    Intel MPI and Open MPI set (``(0, 1)`` where none is set): known without initializing MPI."""
    for rank_key, size_key in (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")):
        if size_key in os.environ:
            try:
                return int(os.environ.get(rank_key, "0")), int(os.environ[size_key])
            except ValueError:
                continue
    return 0, 1


@dataclass(frozen=True)
class UnseenLaunch:
    """Several processes of one command that a launcher other than MPI's started (``srun`` whose MPI plugin gives no
    PMI, ``torchrun``): MPI sees none of them, so each trains alone."""

    launcher: str  # "srun" or "torchrun"
    rank: int
    size: int

    def fix(self) -> str:
        """How to start one run over these processes instead, or several runs on purpose."""
        start = "srun --mpi=pmix (or pmi2, whichever your cluster's MPI takes) or " if self.launcher == "srun" else ""
        return (
            f"for one run over {self.size} processes start it with {start}mpiexec -n {self.size} (flipes splits a "
            f"population over MPI, not torch.distributed); for {self.size} runs on purpose give each its own --seed and --out"
        )


def unseen_launch() -> UnseenLaunch | None:
    """The processes of this command that ``srun`` (``SLURM_STEP_NUM_TASKS``) or ``torchrun`` (``WORLD_SIZE`` with
    ``TORCHELASTIC_RUN_ID`` or ``LOCAL_RANK``) started where no MPI launcher's variables are set; None otherwise."""
    if _launched_by_mpi():
        return None
    env = os.environ
    found = [("srun", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS")]
    if "TORCHELASTIC_RUN_ID" in env or "LOCAL_RANK" in env:
        found.append(("torchrun", "RANK", "WORLD_SIZE"))
    for launcher, rank_key, size_key in found:
        try:
            size, rank = int(env.get(size_key, "1")), int(env.get(rank_key, "0"))
        except ValueError:
            continue
        if size > 1:
            return UnseenLaunch(launcher, rank, size)
    return None


def warn_unseen_launch() -> None:
    """Warn once (the launcher's rank 0) where several processes of this command run without MPI: each trains alone."""
    launch = unseen_launch()
    if launch is not None and launch.rank == 0:
        warnings.warn(
            f"{launch.launcher} started {launch.size} processes of this command, and no MPI launcher's variables "
            f"(PMI_*) are set, so each trains alone, the same run {launch.size} times unless their options differ: "
            + launch.fix(),
            UserWarning,
            stacklevel=caller_stacklevel(),
        )


def _launched_by_mpi() -> bool:
    markers = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "HYDI_CONTROL_FD")
    return any(k in os.environ for k in markers)


def abort_on_uncaught_exception(comm: Comm) -> None:
    """Make an exception that nothing catches end the whole job, after its traceback, as ``python -m
    mpi4py`` does: a script calling ``flipes.train`` under mpiexec whose fitness raised on one rank
    otherwise left the others waiting in a collective until ``--mpi-timeout`` (300 s). Caught
    exceptions are untouched. Installed once per process."""
    previous = sys.excepthook
    if getattr(previous, "flipes_aborts", False):
        return

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        wait_for_rank_0(value)
        print(f"[rank {comm.rank}] failed:", file=sys.stderr)
        previous(kind, value, tb)
        comm.abort(1)

    hook.flipes_aborts = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def abort_on_exit(comm: Comm, e: SystemExit, when: str = "during training") -> NoReturn:
    """End the whole job when code on this rank called ``sys.exit`` (any status, 0 included) while the
    ranks train together: the others would wait for it in a collective until ``--mpi-timeout``. Prints
    one line naming the rank, the call and where it was made; the job's status is the call's, or 1."""
    code = e.code
    call = "sys.exit()" if code is None else f"sys.exit({code!r})"
    where = ""
    frames = list(traceback.walk_tb(e.__traceback__))  # with the line each frame raised at (f_lineno moves on in a finally)
    for frame, line in reversed(frames):  # the innermost frame outside flipes and torch: the user's code
        name = os.path.realpath(frame.f_code.co_filename)
        if not name.startswith((_PACKAGE, _TORCH)):
            where = f" in {frame.f_code.co_name}() at {os.path.basename(name)}:{line}"
            break
    print(f"flipes: error: rank {comm.rank}: {call} was called{where} {when}, while the other ranks "
          "train on: ending the job (raise an exception to stop on an error; a callback's on_generation returning "
          "True stops every rank alike)", file=sys.stderr, flush=True)  # fmt: skip
    comm.abort(code if isinstance(code, int) and 0 < code < 256 else 1)
    raise e  # a Comm whose abort returned: this rank exits as asked


# seconds a rank raising another's error (rank_zero.raise_shared_error) leaves that rank to end the job with its own lines
RANK_0_GRACE = 3.0


def wait_for_rank_0(error: BaseException) -> None:
    """Before a rank ends the job over ``error``, another rank's error that it raises too (marked ``flipes_from_rank_0``:
    rank 0's callbacks' and checks', or one rank's fitness'): wait a while, so that the rank that failed, which has the
    traceback, ends the job first with its own lines; a job that is still running then (that rank's script caught it,
    this one did not) ends with this rank's."""
    if getattr(error, "flipes_from_rank_0", False):
        time.sleep(RANK_0_GRACE)


def abort_on_exception(comm: Comm) -> None:
    """Print the current exception with this rank's number, then end the whole job."""
    wait_for_rank_0(sys.exc_info()[1])
    print(f"[rank {comm.rank}] failed:", file=sys.stderr)
    traceback.print_exc()
    sys.stderr.flush()
    comm.abort(1)


def check_identical(
    comm: Comm,
    tensors: list[Tensor] | Mapping[str, Tensor],
    what: str = "parameters",
    hint: str | Callable[[list[str]], str] = "",
) -> str:
    """Hash ``tensors`` on every rank; raise on all ranks if any differs (``hint``: a likely cause, appended; a
    function of the names that differ where ``tensors`` is a state dict, whose differing entries are named).
    Returns the hash."""
    named = tensors if isinstance(tensors, Mapping) else {}
    values = list(named.values()) if isinstance(tensors, Mapping) else tensors
    digest = tensors_sha256(values)
    if comm.size > 1:
        digests = comm.allgather_object(digest)
        if len(set(digests)) > 1:
            ranks = ", ".join(f"rank {r}: {d[:12]}" for r, d in enumerate(digests))
            differ: list[str] = []
            if named:  # a second exchange, on every rank alike: which entries differ
                views = comm.allgather_object([tensors_sha256([t]) for t in values])
                differ = [name for i, name in enumerate(named) if len({view[i] for view in views}) > 1]
            where = f" in {', '.join(differ[:5])}{', ...' if len(differ) > 5 else ''}" if differ else ""
            why = hint(differ) if callable(hint) else hint
            raise RuntimeError(
                f"ranks hold different {what} ({ranks}){where}; every rank must run the same code, seed and data{why}"
            )
    return digest


def split_groups(groups: int, rank: int, size: int) -> range:
    """Contiguous block of ε groups that ``rank`` evaluates (deterministic, balanced)."""
    if groups < size:
        raise ValueError(f"{groups} groups cannot be shared by {size} processes; use groups >= number of processes")
    lo = rank * groups // size
    return range(lo, (rank + 1) * groups // size)
