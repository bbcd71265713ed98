"""The run directory: never overwritten implicitly, locked while a process trains into it, and
complete (a starting checkpoint and config.json) before the first generation."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shlex
import shutil
import socket
import warnings
from pathlib import Path
from typing import IO, Any

from flipes.callbacks import write_atomic
from flipes.checkpoint import CheckpointError, discard, load_checkpoint, resume_hint, save_checkpoint, still_good
from flipes.config import TrainConfig, resume_dir
from flipes.dist import unseen_launch
from flipes.errors import StorageError, UsageError, caller_stacklevel, os_reason
from flipes.progress import to_stderr

SETUP = ".setup"  # present while prepare_run_dir sets a new run up (before its first checkpoint)
RUN_FILES = ("checkpoint.pt", "previous.pt", "best.pt", "metrics.jsonl", "config.json", "curves.png")
RUN_TEMPORARIES = tuple(f"{name}.tmp" for name in RUN_FILES)  # written beside each, renamed over it


def check_run_dir(run_dir: Path, config: TrainConfig, locked: bool = False) -> None:
    """Refuse to train into a directory that holds another run, unless resuming it or ``--overwrite``; one that a
    process trains into now is named as in use (not offered to ``--overwrite``), unless ``locked``: this process holds
    its lock (:func:`prepare_run_dir`).

    Raises:
        UsageError: naming what the directory holds and the three ways on, or the process that holds it.
    """
    held = [name for name in RUN_FILES if (run_dir / name).exists()]
    resuming_here = bool(config.resume) and resume_dir(config.resume).resolve() == run_dir.resolve()
    for name in held:  # a directory (or a device) under a run file's name: neither read nor replaced
        path = run_dir / name
        if not path.is_file() and not (resuming_here and name in ("checkpoint.pt", "previous.pt")):  # load_checkpoint says it
            what = "a directory" if path.is_dir() else "not a regular file"
            moved = f"mv {shlex.quote(str(path))} {shlex.quote(str(path) + '.bak')}"
            raise UsageError("--resume" if resuming_here else "--out", f"{path} is {what}, not the run's {name}",
                             f"move it out of the way ({moved})")  # fmt: skip
    if resuming_here and (other := _other_runs_options(run_dir, Path(config.resume))):
        file = Path(config.resume)
        raise UsageError(
            "--resume",
            f"{file} is not a checkpoint of the run in {str(run_dir)!r} ({other}): resumed there, it would replace that run",
            f"move it into a directory of its own first (mkdir runs/new && mv {shlex.quote(str(file))} runs/new/), then "
            f"--resume {shlex.quote('runs/new/' + file.name)}",
        )
    if held and not resuming_here and not locked:  # a run under way: in use, whatever the options (--overwrite too)
        check_not_in_use(run_dir, "--out")
    if held and not resuming_here and not config.overwrite and not unstarted(run_dir):
        resumed = shlex.quote(str(run_dir))
        fix = f"continue it with --resume {resumed}, train into another --out, or pass --overwrite to replace it"
        raise UsageError("--out", f"{str(run_dir)!r} holds a run ({', '.join(held)})", fix)


def _other_runs_options(run_dir: Path, file: Path) -> str:
    """Where ``file``, a checkpoint named as none of the run's own files (a copy of another run's dropped into
    ``run_dir``), was trained with other options than the run whose config.json is in ``run_dir``: those options, as
    ``--hidden: [8] in the file, [16] in the run``; ``""`` where they agree (a backup of this run's own), there is no
    run's config.json, or the file does not load (the resume says why)."""
    if file.suffix != ".pt" or file.name in RUN_FILES or not (run_dir / "config.json").is_file():
        return ""
    from flipes.resume import RESUME_KEYS, same_option

    try:
        run = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        saved = load_checkpoint(file, map_location="cpu")["config"]
    except (OSError, ValueError, CheckpointError):  # a damaged config.json or checkpoint: said where it is read
        return ""
    if not isinstance(run, dict):
        return ""
    differ = [k for k in RESUME_KEYS if k in run and k in saved and not same_option(k, run, saved)]
    shown = ", ".join(f"--{k.replace('_', '-')}: {saved[k]!r} in the file, {run[k]!r} in the run" for k in differ[:3])
    return f"trained with other options, {shown}{', ...' if len(differ) > 3 else ''}" if differ else ""


def unstarted(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds only what a run writes before its first generation ends (its starting
    checkpoint, config.json, an empty metrics.jsonl, or a setup cut short): a run that failed at once, e.g. on a
    fitness function being debugged. Such a directory is taken over without ``--overwrite``: it holds nothing
    that the seed does not give again. A config.json without a checkpoint or setup marker is not such a run's."""
    metrics, checkpoint = run_dir / "metrics.jsonl", run_dir / "checkpoint.pt"
    if not checkpoint.exists() and (run_dir / SETUP).exists():
        return True  # a setup cut short (prepare_run_dir): a branch's metrics and best.pt are copies of its source's
    if any((run_dir / name).exists() for name in ("previous.pt", "best.pt", "curves.png")):
        return False
    if metrics.exists() and metrics.stat().st_size > 0:
        return False
    if not checkpoint.exists():  # no setup marked (above): a config.json here is not one flipes left (one's own, another tool's)
        return not (run_dir / "config.json").exists()
    try:  # a copied or resumed run may have no rows here and still hold trained parameters
        return load_checkpoint(checkpoint, map_location="cpu")["es"]["generation"] == 0
    except (CheckpointError, KeyError, TypeError):
        return False


def _damaged_beside_resumed(run_dir: Path, config: TrainConfig) -> bool:
    """Whether ``config`` resumes another file of ``run_dir`` (``previous.pt`` or ``best.pt``, as a damaged checkpoint's
    error offers) and the run's ``checkpoint.pt`` beside it does not load (read in full: at such a resume only)."""
    file, checkpoint = Path(config.resume), run_dir / "checkpoint.pt"
    if not config.resume or file.suffix != ".pt" or file.name == checkpoint.name or not checkpoint.is_file():
        return False
    if file.parent.resolve() != run_dir.resolve():
        return False
    try:
        load_checkpoint(checkpoint, map_location="cpu")
    except CheckpointError:
        return True
    return False


def carry_history(source: Path, run_dir: Path, start: dict[str, Any], file: Path | None = None) -> str:
    """A run resumed into another directory takes its history along: ``metrics.jsonl`` (trimmed to the
    resumed generation when training starts, as a resume in place is) and ``best.pt`` where it is the
    best of the resumed state (not one evaluated after the checkpoint that was resumed). None of it where ``file``,
    the checkpoint resumed, is another run's than ``source``'s (a copy dropped there): the reason, else ``""``."""
    if source.resolve() == run_dir.resolve():
        return ""
    if file is not None and (other := _other_runs_options(source, file)):
        return f"{file} is not a checkpoint of the run in {str(source)!r} ({other}): its history stays there"
    metrics = source / "metrics.jsonl"
    if metrics.exists() and not (run_dir / "metrics.jsonl").exists():
        _copy_atomic(metrics, run_dir / "metrics.jsonl")
    best = source / "best.pt"
    if start.get("best") is None or not best.exists() or (run_dir / "best.pt").exists():
        return ""
    try:
        same = load_checkpoint(best, map_location="cpu").get("best") == start["best"]
    except CheckpointError:  # a damaged best.pt stays behind: the next improvement writes a new one
        return ""
    if same:
        _copy_atomic(best, run_dir / "best.pt")
    return ""


def _copy_atomic(source: Path, target: Path) -> None:
    tmp = target.with_name(target.name + ".tmp")
    try:
        shutil.copyfile(source, tmp)
        with open(tmp, "r+b") as f:  # writable: Windows' fsync (FlushFileBuffers) refuses a read-only handle (EBADF)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        discard(tmp)
        raise StorageError(f"cannot copy {source} to {target} ({os_reason(e)})") from None


def check_not_in_use(run_dir: Path, option: str = "--resume") -> None:
    """Refuse to resume a run directory another process holds locked, without taking the lock: a resume
    checks it before reading the run, which a process that started it an instant ago may not have
    finished writing. The option named is ``--resume`` (the run read; for a branch ``--out`` is another), or
    ``option`` (``--out``: a directory trained into).

    Raises:
        UsageError: naming the process that holds it.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no locking
        return
    try:
        file = open(run_dir / ".lock", encoding="utf-8", errors="replace")  # the holder's name, whatever the locale
    except OSError:  # no lock file: no process has trained into it yet
        return
    with file:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if _held(run_dir, e, warn=False):  # no lock to take: the lock of the run trained into says so, once
                raise _in_use(run_dir, file, option) from None


# what flock raises where another process holds the lock; anything else (ENOSYS, EOPNOTSUPP, ENOLCK) is a file system
# that takes no lock at all (Lustre mounted noflock, some FUSE and network file systems)
_HELD_ERRNOS = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


def _held(run_dir: Path, e: OSError, warn: bool = True) -> bool:
    """Whether ``flock``'s error ``e`` means another process holds ``run_dir``'s lock; else (a file system without locks)
    a warning (where ``warn``) says the directory goes unlocked, as on Windows, rather than blaming a process that does
    not exist."""
    if e.errno in _HELD_ERRNOS:
        return True
    if warn:
        warnings.warn(
            f"{run_dir}: its file system takes no lock ({e.strerror or e}), so the run directory is not locked: start one "
            "flipes train into it at a time",
            stacklevel=caller_stacklevel(),
        )
    return False


def _in_use(run_dir: Path, lock_file: IO[str], option: str = "--out") -> UsageError:
    """The error for a run directory whose lock another process holds, naming it (the lock file's text):
    as ``--out``, the directory trained into, or as ``--resume``, the run read."""
    lock_file.seek(0)
    holder = lock_file.read().strip() or "another process"
    fix = "wait for it to end, then resume it" if option == "--resume" else "wait for it to end, or train into another --out"
    launch = unseen_launch()
    if launch is not None:  # its sibling processes of one srun or torchrun, each a run of its own: they meet at the lock
        fix = (
            f"{launch.launcher} started {launch.size} processes of this command, and no MPI launcher's variables (PMI_*) "
            f"are set, so each trains alone: {launch.fix()}"
        )
    return UsageError(option, f"{str(run_dir)!r} is in use by {holder}", fix)


class RunDirLock:
    """An exclusive lock on a run directory (``fcntl.flock`` on ``<run>/.lock``), held while a process
    trains into it; the OS releases it when the process ends, however it ends."""

    def __init__(self, run_dir: Path) -> None:
        lock = run_dir / ".lock"
        if lock.is_dir():  # open() would say only "Is a directory", read as an unwritable run directory
            raise UsageError("--out", f"{str(lock)!r} is a directory, where flipes keeps its lock file", f"rmdir {lock}")
        # UTF-8, not the locale's encoding (cp1252 on Windows, ASCII under LC_ALL=C): a host name may be any text
        self.file = open(run_dir / ".lock", "a+", encoding="utf-8")
        try:
            import fcntl
        except ImportError:  # Windows: no locking
            return
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if _held(run_dir, e):
                error = _in_use(run_dir, self.file)
                self.file.close()
                raise error from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"flipes pid {os.getpid()} on {socket.gethostname()}")  # a shared file system: which node's pid
        self.file.flush()

    def release(self) -> None:
        self.file.close()


def prepare_run_dir(run_dir: Path, config: TrainConfig, start: dict[str, Any] | None = None) -> RunDirLock:
    """Create and lock the run directory, clear it for ``--overwrite`` (the old run's files and its TensorBoard and W&B
    logs, which would mix with the new run's: one line names what was deleted), write ``config.json``, then (where
    it has no checkpoint) a branch's history and the starting state ``start`` as its first checkpoint,
    last: a directory with a checkpoint holds a whole run, which ``--resume DIR`` continues; one cut
    short before it is taken over by the same command (:func:`unstarted`). All writes are atomic.

    Raises:
        UsageError: the directory cannot be created or written, is in use, or holds another run.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunDirLock(run_dir)
    except OSError as e:
        # a file in the way gives "File exists" or "Not a directory": name that file instead
        file = next((p for p in (run_dir, *run_dir.parents) if p.exists() and not p.is_dir()), None)
        why = f"{str(file)!r} is a file, not a directory" if file is not None else e.strerror or str(e)
        raise UsageError(
            "--out",
            f"cannot write the run directory {str(run_dir)!r} ({why})",
            "choose a directory you can write, e.g. --out runs/mine",
        ) from None
    try:
        check_run_dir(run_dir, config, locked=True)  # again under the lock: another process may have started meanwhile
        if left := [name for name in RUN_TEMPORARIES if (run_dir / name).is_file()]:  # no other process writes them now
            for name in left:
                discard(run_dir / name)
            to_stderr(f"flipes: removed the temporary files {', '.join(left)} in {run_dir} that a process killed while it "
                      "wrote them left")  # fmt: skip
        if not config.resume and (config.overwrite or unstarted(run_dir)):
            # what a run and flipes export wrote: its logs too, whose events would otherwise mix with the new run's
            removed = [name for name in (*RUN_FILES, "policy.pt2") if (run_dir / name).is_file()]
            removed += [f"{name}/" for name in ("tensorboard", "wandb") if (run_dir / name).is_dir()]
            for name in (*RUN_FILES, "policy.pt2"):
                (run_dir / name).unlink(missing_ok=True)
            for name in ("tensorboard", "wandb"):
                shutil.rmtree(run_dir / name, ignore_errors=True)
            if config.overwrite and config.progress and removed:  # deleted for good: said, with the logs by name
                said = f"flipes: --overwrite: deleted the old run's {', '.join(removed)} in {run_dir}"
                to_stderr(said)
        first = start is not None and not (run_dir / "checkpoint.pt").exists()
        if first:  # marked until its checkpoint is written: a setup cut short is taken over (unstarted)
            if (run_dir / SETUP).exists():  # such a one's copies may be of another source, or an older state of it
                for name in ("metrics.jsonl", "best.pt"):
                    (run_dir / name).unlink(missing_ok=True)
            (run_dir / SETUP).touch()
        try:
            write_atomic(run_dir / "config.json", json.dumps(dataclasses.asdict(config), indent=2))
        except StorageError as e:  # a resume's first write: a full disk names the checkpoint to go on from
            resumed = Path(config.resume or run_dir)
            if resumed.name in ("previous.pt", "best.pt") and resumed.parent.resolve() == run_dir.resolve():
                # the file resumed is the way on (a damaged checkpoint.pt beside it offered it), as it is
                raise StorageError(f"{e}; the last good checkpoint is {resumed}{resume_hint(resumed)}") from None
            if not (run_dir / "checkpoint.pt").is_file():
                raise
            raise StorageError(f"{e}; {still_good(run_dir / 'checkpoint.pt')}") from None
        if start is not None and _damaged_beside_resumed(run_dir, config):
            # replaced now: the first checkpoint would keep the damaged file as previous.pt, in place of the whole one
            try:
                save_checkpoint(start, run_dir / "checkpoint.pt", keep_previous=False)
            except StorageError as e:  # its line named the damaged file as the last good one: the file resumed is
                said, good = str(e).removesuffix(f"; {still_good(run_dir / 'checkpoint.pt')}"), Path(config.resume)
                raise StorageError(f"{said}; the last good checkpoint is {good}{resume_hint(good)}") from None
            to_stderr(f"flipes: {run_dir / 'checkpoint.pt'} is damaged: replaced by the state resumed from {config.resume}, "
                      "which stays as it is")  # fmt: skip
        if first:
            if config.resume:  # a branch: its history, then its first checkpoint
                kept = carry_history(resume_dir(config.resume), run_dir, start, Path(config.resume))
                if kept and config.progress:
                    to_stderr(f"flipes: {kept}; the branch's metrics start at its checkpoint")
            save_checkpoint(start, run_dir / "checkpoint.pt", keep_previous=False)  # last: the run is whole
            (run_dir / SETUP).unlink()
    except BaseException:
        lock.release()
        raise
    return lock
