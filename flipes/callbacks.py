"""Training callbacks: where the rows of a run go (JSONL, a progress line, TensorBoard, Weights &
Biases), its checkpoints and its curves. ``flipes.train`` builds the standard ones from its config
and runs them, with any of the user's, on rank 0 only (the rank that does all I/O).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shlex
import sys
import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from flipes.checkpoint import discard, resume_hint, save_checkpoint
from flipes.errors import StorageError, UsageError, os_reason
from flipes.progress import Progress, flush_if_it_can, to_stderr


class Callback:
    """Hooks into :func:`flipes.train`; override any of them.

    ``on_generation`` gets each metrics row after the update (and after the evaluation, where there
    was one); return ``True`` to stop training after this generation (on every rank), nothing (or
    ``False``) to go on; an integer flag counts as ``bool`` reads it, any other value (such as the row)
    is an error. A callback
    with state of its own (a hall of fame, a schedule) returns it from ``state_dict``: it is saved in
    every checkpoint and given back to ``load_state_dict`` when the run is resumed with the same
    callbacks (matched by position and class). Under MPI, where rank 0 alone runs the hooks, the other
    ranks' copies of the callbacks take rank 0's states the same way after ``on_train_start`` and after
    every generation: what ``load_state_dict`` sets from them (a curriculum's env settings) is set on
    every rank. So every rank is given the same callbacks in the same order: one with state that a rank
    lacks is an error.

    ``state`` is the loop's ``flipes.train_state.TrainState``: ``state.es`` (the FlipES: ``generation``, ``optimizer``,
    ``best``), ``state.model`` (the mean network outside a population), ``state.config`` (the run's
    :class:`flipes.TrainConfig`, read only: a hook that changes it is an error, as every rank reads its own),
    ``state.run_dir``, ``state.best`` (the best ``eval_return`` so far),
    ``state.metrics`` (this call's rows), ``state.timesteps``, ``state.seconds`` and ``state.comm``.
    ``on_train_end``'s ``reason`` is :class:`flipes.TrainResult`'s: ``generations``, ``solved: ...``, ``stopped by a
    callback``, ``interrupted``, ...
    """

    def state_dict(self) -> dict[str, Any] | None:
        """What to save in each checkpoint: tensors, numbers, strings, None, and lists, tuples and
        dicts of them (checkpoints load without unpickling code); None (the default) saves nothing."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what ``state_dict`` returned when the checkpoint being resumed was written."""

    def on_train_start(self, state: TrainState) -> None:
        """Called once, after the model is built and a resumed run is restored."""

    def on_generation(self, state: TrainState, row: dict[str, Any]) -> bool | None:
        """Called after each generation with its metrics row."""
        return None

    def on_train_end(self, state: TrainState, reason: str) -> None:
        """Called once at the end (also after an interruption); ``reason`` says why it ended."""


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` all at once: readers see the old file or the new one.

    Raises:
        StorageError: it cannot be written (``path`` is unchanged then).
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        discard(tmp)
        raise StorageError(f"cannot write {path} ({os_reason(e)}); it is unchanged") from None


class JSONLLogger(Callback):
    """One JSON object per generation in ``<run>/metrics.jsonl``. A resumed run drops the rows past
    its checkpoint (written after it, before a crash) and appends; non-finite numbers are written as
    ``null`` so that every line stays JSON. ``path``: the file (``flipes.train``'s is ``<run>/metrics.jsonl``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.file: TextIO | None = None

    def on_train_start(self, state: TrainState) -> None:
        if state.resumed and self.path.exists():
            self._keep_before(state.es.generation)
        else:
            write_atomic(self.path, "")
        self.file = open(self.path, "a", encoding="utf-8")

    def _keep_before(self, generation: int) -> None:
        """Replace the file by its rows before ``generation`` (atomically), saying on stderr what was torn or is missing.
        Line by line, each parsed once: a run of a million generations has a file of ~400 MB, which read whole and
        parsed thrice took a minute and 2 GB at every resume; and the rows' generations, not every number below
        ``generation``, are held to find the gaps (a state at generation 2**31 asked for 2**31 numbers)."""
        kept = array("q")  # 8 bytes a row
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as out:
                dropped = 0
                for line, row in jsonl_rows(self.path):
                    if row is None:
                        dropped += 1
                    elif row["generation"] < generation:
                        if row["generation"] >= 0:  # gaps skips the others, and array("q") holds none below -2**63
                            kept.append(row["generation"])
                        out.write(line + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            discard(tmp)
            raise StorageError(f"cannot write {self.path} ({os_reason(e)}); it is unchanged") from None
        except BaseException:
            discard(tmp)
            raise
        if dropped:
            print(f"flipes: {self.path}: {dropped_note(dropped)}", file=sys.stderr)
        if missing := gaps(kept, generation):  # rows lost in a crash of the machine (written, not yet on its disk) or removed
            print(f"flipes: {self.path}: no row of generation(s) {missing} before the resumed generation "
                  f"{generation} (lost in a crash, or removed): its curves skip them", file=sys.stderr)  # fmt: skip

    def on_generation(self, state: TrainState, row: dict[str, Any]) -> None:
        assert self.file is not None
        try:
            self._follow_path()
            self.file.write(json.dumps(json_safe(row), allow_nan=False) + "\n")
            self.file.flush()
        except OSError as e:
            raise self._failed(e) from None

    def on_train_end(self, state: TrainState, reason: str) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (again: a no-op); also where training ended by an exception, before ``on_train_end``."""
        file, self.file = self.file, None
        if file is None:
            return
        try:
            file.close()  # flushes a row a full disk kept in the buffer (on_generation said so): it fails again
        except OSError as e:
            raise self._failed(e) from None

    def _follow_path(self) -> None:
        """Open ``self.path`` again where it no longer names the file written (removed, or replaced by an editor's save
        mid-run): rows written on into that file would be lost with it, the run saying nothing."""
        assert self.file is not None
        try:
            same = os.path.samestat(os.fstat(self.file.fileno()), os.stat(self.path))
        except FileNotFoundError:
            same = False
        if not same:
            print(f"flipes: {self.path} was removed or replaced while the run wrote it: its rows go on in the file now at "
                  "that path", file=sys.stderr)  # fmt: skip
            self.file.close()
            self.file = open(self.path, "a", encoding="utf-8")

    def _failed(self, e: OSError) -> StorageError:
        good = self.path.parent / "checkpoint.pt"
        return StorageError(f"cannot write {self.path} ({os_reason(e)}); the last good checkpoint is {good}{resume_hint(good)}")


class PlainRow(Callback):
    """Between the user's callbacks and the sinks: what they added to a row becomes plain values
    (numpy scalars and one-element tensors as numbers), or one error naming the entry."""

    def on_generation(self, state: TrainState, row: dict[str, Any]) -> None:
        for key, value in row.items():
            row[key] = plain(value, key)


def plain(value: Any, key: str) -> Any:
    """``value`` as JSON's types: numbers, strings, None, lists and dicts of them."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic) or (isinstance(value, torch.Tensor) and value.numel() == 1):
        return value.item()
    if isinstance(value, list | tuple):
        return [plain(v, key) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: plain(v, key) for k, v in value.items()}
    raise UsageError(
        "callbacks",
        f"row[{key!r}] is a {type(value).__name__}, which metrics.jsonl cannot hold",
        "add numbers, strings, or lists and dicts of them (a tensor of one value: .item())",
    )


def json_safe(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with every non-finite float (NaN, ±inf) replaced by ``None``, which JSON can hold (as ``null``), also
    inside the lists and dicts a callback adds (a per-layer statistic that overflowed); a copy, other values as they are."""
    return {k: _finite_or_none(v) for k, v in row.items()}


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    return value


def read_jsonl(path: Path) -> tuple[list[str], int]:
    """The rows of a metrics file, and how many lines were skipped: torn or blank ones (a crash
    mid-write), and any that is not a row (a JSON object with an integer ``generation``).

    Raises:
        UsageError: the file cannot be read (a directory in its place, no permission).
    """
    out, dropped = [], 0
    for line, row in jsonl_rows(path):
        if row is None:
            dropped += 1
        else:
            out.append(line)
    return out, dropped


def jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """Each line of a metrics file (its newline stripped) and its row, read one at a time; the row is None where the
    line is torn, blank or not a row (see :func:`read_jsonl`).

    Raises:
        UsageError: the file cannot be read (a directory in its place, no permission).
    """
    try:
        file = open(path, encoding="utf-8", errors="replace")
    except OSError as e:
        what = "is a directory, not a metrics file" if path.is_dir() else f"cannot be read ({e.strerror or e})"
        raise UsageError(str(path), what, f"move it out of the way (mv {path} {path}.bak)") from None
    with file:
        for line in file:
            line = line.rstrip("\n")
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            generation = row.get("generation") if isinstance(row, dict) else None
            yield line, row if isinstance(generation, int) and not isinstance(generation, bool) else None


def gaps(generations: Sequence[int], end: int) -> str:
    """The numbers in ``range(end)`` missing from ``generations`` as spans (``0-2, 7``, the first 5 of them; ``""``:
    none), found from the gaps between them: the missing numbers themselves may be billions."""
    if any(b <= a for a, b in itertools.pairwise(generations)):  # rows out of order or repeated (edited by hand)
        generations = sorted(set(generations))
    runs, count, last = [], 0, -1
    for g in itertools.chain((g for g in generations if g >= 0), [end]):
        if g > last + 1:
            runs.append((last + 1, g - 1))
            count += g - 1 - last
        last = g
    shown = ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs[:5])
    return shown + (f", ... ({count} in all)" if len(runs) > 5 else "")


def sync_file(path: Path) -> None:
    """Put ``path``'s written bytes on the disk (``fsync``; where it exists): a checkpoint written after them must not
    outlive them in a crash of the machine."""
    try:  # writable: Windows' fsync (FlushFileBuffers) refuses a read-only handle; a read-only file takes one
        fd = os.open(path, os.O_RDWR if os.access(path, os.W_OK) else os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dropped_note(dropped: int) -> str:
    """What a reader of ``metrics.jsonl`` says of the lines :func:`read_jsonl` skipped."""
    return f"dropped {dropped} torn, blank or malformed line(s) (a crash mid-write, or not a metrics row)"


def read_jsonl_lines(path: Path) -> list[str]:
    """The complete lines of a metrics file (see :func:`read_jsonl`)."""
    return read_jsonl(path)[0]


class ProgressPrinter(Callback):
    """A status line per generation (live on a terminal; piped, every ``eval_every``-th and the one training
    ended at), and the reason training ended, to ``stream`` (``None``: ``sys.stdout``). A stream that can no longer be
    written (a pipe whose reader ended, ``| head``; a full disk) ends the lines, not the run (:func:`lost_stream`)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.progress: Progress | None = None

    def on_train_start(self, state: TrainState) -> None:
        evaluates = True if not state.config.fitness else None  # an env's run: its center every --eval-every generations
        config = state.config
        stream = self.stream or sys.stdout
        self.progress = Progress(config.generations, stream, config.eval_every, evaluates, config.max_timesteps)

    def on_generation(self, state: TrainState, row: dict[str, Any]) -> None:
        if self.progress is None:  # its stream failed: the rows go on in metrics.jsonl
            return
        try:
            self.progress.update(row)
        except OSError as e:
            lost_stream(self.progress.stream, e, state)
            self.progress = None

    def on_train_end(self, state: TrainState, reason: str) -> None:
        if self.progress is not None:
            try:
                self.progress.message(outcome(state, reason))
            except OSError as e:
                lost_stream(self.progress.stream, e, state)


class OutcomePrinter(Callback):
    """Only the line that says how training ended (``--progress false``: a batch log's last line), to ``stream``
    (``None``: ``sys.stdout``)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def on_train_end(self, state: TrainState, reason: str) -> None:
        stream = self.stream or sys.stdout
        try:
            print(outcome(state, reason), file=stream)
            flush_if_it_can(stream)  # a stream of write alone, as Progress takes
        except OSError as e:
            lost_stream(stream, e, state)


def lost_stream(stream: TextIO, error: OSError, state: TrainState) -> None:
    """Training goes on where its progress lines cannot be written (``flipes train | head``, a ``tee`` that ended, a
    full disk under a log file): a run of days is not lost to its console. Said once on stderr where that can be
    written; the process's stdout is pointed at /dev/null, else Python's flush of it at exit fails again (a traceback
    and exit status 120)."""
    try:
        to_stderr(f"flipes: cannot write the progress lines ({os_reason(error)}); training goes on without them, every "
                  f"row in {state.run_dir / 'metrics.jsonl'}")  # fmt: skip
    except (OSError, ValueError):  # stderr is gone too (2>&1 into the same pipe): its later notes must not fail either
        _to_null([sys.stderr, sys.__stderr__])
    _to_null([sys.stdout, sys.__stdout__] if stream in (sys.stdout, sys.__stdout__) else [])


def _to_null(streams: list[TextIO | None]) -> None:
    """Point each standard stream's file descriptor at /dev/null (where it has one)."""
    for standard in streams:
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, standard.fileno())  # type: ignore[union-attr]
            os.close(null)
        except (OSError, ValueError, AttributeError):  # no file descriptor (a notebook's stream)
            pass


def outcome(state: TrainState, reason: str) -> str:
    """Why training ended, how many generations the run has, and where it is (and, for a run cut short by a
    signal or ``--max-seconds``, the ``--resume`` that continues it)."""
    total = state.config.generations
    why = reason
    if reason == "generations":
        why = f"all {total} generations trained" if total != 1 else "the 1 generation trained"
    done = state.es.generation
    line = f"{why}; {done} generation{'s' if done != 1 else ''} in all, run directory {state.run_dir}"
    if reason == "interrupted" or reason.startswith("stopped after"):  # cut short with a checkpoint: say how to go on
        line += f"; --resume {shlex.quote(str(state.run_dir))} continues it"  # one shell argument
    budget = state.config.max_timesteps
    if reason == "generations" and budget > state.timesteps:  # the other budget ended it first
        line += f"; {state.timesteps:,} of --max-timesteps {budget:,} timesteps (--generations ended it: raise it to go on)"
    return line


def wait_past_event_files(log_dir: Path, longest: float = 2.0) -> None:
    """Wait, where the newest event file in ``log_dir`` was made in this very second, for the next second.

    TensorBoard reads a run's event files in name order, and a name holds the second it was made, then the host, the
    pid and an unpadded counter: a file made in the same second as an older one can sort before it (counter 10 before
    9, pid 10000 before 9999). A resume's file, whose first event purges the steps from its checkpoint on, would then
    be read first and the older file's later steps kept. Waiting at most a second (and never for a clock that ran
    back more than ``longest``) keeps the names in the order they were made."""
    seconds = [int(part) for p in log_dir.glob("events.out.tfevents.*") if (part := p.name.split(".")[3]).isdigit()]
    wait = max(seconds) + 1 - time.time() if seconds else 0.0
    if 0 < wait <= longest:
        time.sleep(wait)


class TensorBoardLogger(Callback):
    """Every number of a row as a TensorBoard scalar under ``log_dir`` (needs the tensorboard package)."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # ImportError without tensorboard

        self.log_dir, self._writer_class = Path(log_dir), SummaryWriter
        self.writer: SummaryWriter | None = None

    def on_train_start(self, state: TrainState) -> None:
        # a resume hides the scalars logged after its checkpoint (before a crash), as metrics.jsonl drops those rows:
        # else TensorBoard shows those generations twice
        purge = state.es.generation if state.resumed else None
        # a queue for many rows of scalars: torch's 10 is less than a row (~12), so add_scalar waited for the writer
        # thread to take the GIL at every row; that thread writes the events as before, flushing the file every
        # flush_secs, and at most 1,000 small events (~100 KB) wait for it in memory
        self.run_dir = state.run_dir
        # a resume into a log directory without events (a branch --resume A --out B, or --tensorboard turned on at a
        # resume): the rows metrics.jsonl carries from before are logged first, so that both hold the same generations
        carried = state.resumed and not any(self.log_dir.glob("events.out.tfevents.*"))
        if state.resumed:
            wait_past_event_files(self.log_dir)
        try:
            self.writer = self._writer_class(str(self.log_dir), purge_step=purge, max_queue=1000)
        except OSError as e:
            raise self._failed(e) from None
        metrics = state.run_dir / "metrics.jsonl"
        if carried and metrics.is_file():
            for line in read_jsonl_lines(metrics):  # JSONLLogger, before this callback, kept those before the checkpoint
                row = json.loads(line)
                if row["generation"] < state.es.generation:
                    self.on_generation(state, row)

    def on_generation(self, state: TrainState, row: dict[str, Any]) -> None:
        assert self.writer is not None
        try:  # the writer thread's error (a full disk) comes out at the next add_scalar
            for key, value in row.items():
                if isinstance(value, int | float) and key != "generation":
                    self.writer.add_scalar(key, value, row["generation"])
        except OSError as e:
            raise self._failed(e) from None

    def on_train_end(self, state: TrainState, reason: str) -> None:
        self.close()

    def close(self) -> None:
        """Close the writer (again: a no-op); also where training ended by an exception, before ``on_train_end``."""
        writer, self.writer = self.writer, None
        if writer is None:
            return
        try:
            writer.close()
        except OSError as e:
            raise self._failed(e) from None

    run_dir: Path | None = None

    def _failed(self, e: OSError) -> StorageError:
        """One line for a TensorBoard file that cannot be written (a full disk), naming what is still good: metrics.jsonl
        holds every row, ``flipes plot`` draws them; TensorBoard's writer thread may print its own traceback first."""
        good = (self.run_dir or self.log_dir.parent) / "checkpoint.pt"
        still = f"the last good checkpoint is {good}{resume_hint(good)}" if good.is_file() else "no checkpoint was written yet"
        return StorageError(f"cannot write TensorBoard's logs in {self.log_dir} ({os_reason(e)}); {still}")


WANDB_ID = "wandb/flipes-run-id"  # in the run directory: the W&B run a resume of it continues
# beside it, the steps logged into that W&B run, one a line: offline, W&B knows no step of a run it resumes
WANDB_STEPS = "wandb/flipes-run-steps"


class WandbLogger(Callback):
    """Rows to Weights & Biases (``pip install 'flipes[wandb]'``), the run's config as its config, in the W&B
    ``project``; ``init_kwargs`` go to ``wandb.init``.

    Files go under ``<run>/wandb``; ``WANDB_MODE=offline`` (or ``mode="offline"``) needs no account
    and no network (``wandb sync`` uploads later). The W&B run's id is kept in ``<run>/wandb/flipes-run-id``:
    a resume of the run in its own directory logs into the same W&B run (``resume="allow"``), its steps going on
    from the generation resumed; a branch (``--resume A --out B``) starts a W&B run of its own. Steps the W&B run
    already has (logged before a crash, after the checkpoint resumed) are not logged again, said in a note: W&B's
    steps only increase. Online W&B says which it has; offline (where W&B knows none), ``<run>/wandb/flipes-run-steps``,
    appended a line per row, does.
    """

    def __init__(self, project: str = "flipes", mode: str | None = None, **init_kwargs: Any) -> None:
        import wandb  # ImportError without the extra

        self.wandb, self.project, self.mode, self.init_kwargs = wandb, project, mode, init_kwargs
        self.run: Any = None
        self.first_step = 0  # steps below the W&B run's own next step were logged before a crash: W&B drops them
        self.steps: TextIO | None = None  # WANDB_STEPS, appended to
        self.finished = False  # the W&B run was finished (by on_train_end, or by close after an exception)

    def on_train_start(self, state: TrainState) -> None:
        try:
            self.run = self._init(state)
        except self.wandb.errors.Error as e:
            raise UsageError(
                "--wandb",
                f"Weights & Biases did not start ({' '.join(str(e).split())[:160]})",
                "run `wandb login`, set WANDB_MODE=offline, or pass --no-wandb (a resumed run keeps its --wandb)",
            ) from None
        same = self.run.id == self._resumed_id(state)  # the W&B run this run directory logged into before
        self.first_step = max(self.run.step if self.run.resumed else 0, self._logged_next(state) if same else 0)
        if self.first_step > state.es.generation:
            from flipes.rl.envs import print_note

            print_note(
                f"W&B run {self.run.id} has steps up to {self.first_step - 1} already (logged before the run stopped, "
                f"after its checkpoint of generation {state.es.generation}): generations {state.es.generation} to "
                f"{self.first_step - 1} are not logged to it again (W&B's steps only increase); metrics.jsonl has them"
            )
        (state.run_dir / WANDB_ID).parent.mkdir(exist_ok=True)
        write_atomic(state.run_dir / WANDB_ID, self.run.id)
        try:  # a new W&B run starts its list afresh
            self.steps = open(state.run_dir / WANDB_STEPS, "a" if same else "w", encoding="utf-8")
        except OSError as e:
            raise StorageError(f"cannot write {state.run_dir / WANDB_STEPS} ({os_reason(e)})") from None

    @staticmethod
    def _logged_next(state: TrainState) -> int:
        """The step after the last one ``WANDB_STEPS`` lists (0 where none: a torn last line is not one)."""
        try:
            # the part after the last newline: torn
            lines = (state.run_dir / WANDB_STEPS).read_text(encoding="utf-8").split("\n")[:-1]
        except OSError:
            return 0
        return max((int(line) + 1 for line in lines if line.strip().isdigit()), default=0)

    def _init(self, state: TrainState) -> Any:
        same = self._resumed_id(state)
        own = {"id", "resume", "resume_from", "fork_from"} & set(self.init_kwargs)  # the caller's say over W&B's run
        kwargs = {"id": same, "resume": "allow"} if same and not own else {}
        return self.wandb.init(
            project=self.project,
            dir=str(state.run_dir),
            config=asdict(state.config),
            name=state.run_dir.name,
            mode=self.mode,
            **kwargs,
            **self.init_kwargs,
        )

    @staticmethod
    def _resumed_id(state: TrainState) -> str:
        """The id of the W&B run a run resumed in its own directory logged into ("" for a new run, or a branch)."""
        from flipes.config import resume_dir

        if not state.resumed or resume_dir(state.config.resume).resolve() != state.run_dir.resolve():
            return ""
        try:
            return (state.run_dir / WANDB_ID).read_text(encoding="utf-8").strip()
        except OSError:  # trained without --wandb until now, or the file was removed
            return ""

    def on_generation(self, state: TrainState, row: dict[str, Any]) -> None:
        if row["generation"] < self.first_step:  # a resume after a crash: the W&B run has these rows, bit for bit
            return
        self.run.log({k: v for k, v in row.items() if isinstance(v, int | float) and k != "generation"}, step=row["generation"])
        if self.steps is not None:
            try:
                self.steps.write(f"{row['generation']}\n")
                self.steps.flush()  # a crash of this process keeps it: a resume skips this row
            except OSError as e:
                raise StorageError(f"cannot write {state.run_dir / WANDB_STEPS} ({os_reason(e)})") from None

    def close(self) -> None:
        """Close the list of steps, and finish a W&B run that ``on_train_end`` did not (training calls it however it
        ends): after an exception (a callback's, the fitness') the W&B run is marked failed, and W&B would otherwise hand
        that still active run to the next ``wandb.init`` of the process, the next ``flipes.train`` of a sweep logging
        into it."""
        if self.steps is not None:
            self.steps.close()
            self.steps = None
        if self.run is not None and not self.finished:
            self.finished = True
            with contextlib.suppress(Exception):  # the exception that ended training is the one to see
                self.run.summary["reason"] = "an exception ended training"
                self.run.finish(exit_code=1)

    def on_train_end(self, state: TrainState, reason: str) -> None:
        finished, self.finished = self.finished, True
        self.close()
        if self.run is not None and not finished:
            self.run.summary["reason"] = reason
            self.run.finish(exit_code=130 if reason == "interrupted" else 0)


class Checkpointer(Callback):
    """``checkpoint.pt`` every ``every`` generations and at the end (the file it replaces becomes
    ``previous.pt``), ``best.pt`` whenever eval_return improves; all written atomically, in ``run_dir``."""

    def __init__(self, run_dir: Path, every: int = 10) -> None:
        self.run_dir, self.every = Path(run_dir), every
        self.saved_at = -1
        self.best = -math.inf

    def on_train_start(self, state: TrainState) -> None:
        self.saved_at, self.best = state.es.generation, state.best

    def on_generation(self, state: TrainState, row: dict[str, Any]) -> None:
        if row.get("eval_return", -math.inf) > self.best:
            self.best = row["eval_return"]
            self._sync_rows()  # best.pt is a whole training state too (offered to --resume where checkpoint.pt is damaged)
            save_checkpoint(state.checkpoint_state(), self.run_dir / "best.pt", keep_previous=False)
        if state.es.generation % self.every == 0:
            self._save(state)

    def on_train_end(self, state: TrainState, reason: str) -> None:
        if self.saved_at != state.es.generation or not (self.run_dir / "checkpoint.pt").exists():
            self._save(state)

    def _save(self, state: TrainState) -> None:
        self._sync_rows()
        save_checkpoint(state.checkpoint_state(), self.run_dir / "checkpoint.pt")
        self.saved_at = state.es.generation

    def _sync_rows(self) -> None:
        # the rows a checkpoint covers first (JSONLLogger wrote them before this callback): a crash of the machine would
        # otherwise keep the checkpoint, fsynced, and lose rows still in the page cache, a gap its resume cannot fill
        try:
            sync_file(self.run_dir / "metrics.jsonl")
        except OSError as e:
            good = self.run_dir / "checkpoint.pt"
            problem = f"cannot write {self.run_dir / 'metrics.jsonl'} ({os_reason(e)})"
            raise StorageError(f"{problem}; the last good checkpoint is {good}{resume_hint(good)}") from None


class CurvePlotter(Callback):
    """The run's curves at the end, to ``path`` (``flipes.train``'s: ``<run>/curves.png``), against ``x``:
    ``generation``, ``timesteps`` or ``seconds`` (needs matplotlib: ``pip install 'flipes[plot]'``)."""

    def __init__(self, path: Path, x: str = "generation") -> None:
        self.path, self.x = Path(path), x

    def on_train_end(self, state: TrainState, reason: str) -> None:
        from flipes.plotting import plot_runs

        try:
            plot_runs([state.run_dir], self.path, self.x)
        except ImportError:
            print("flipes: no curves.png: matplotlib is not installed; pip install 'flipes[plot]'", file=sys.stderr)
        except OSError as e:  # the checkpoints are written: flipes plot draws the curves later
            raise StorageError(f"cannot write {self.path} ({os_reason(e)}); the run's checkpoints are whole (the last "
                               f"good one is {state.run_dir / 'checkpoint.pt'}): flipes plot {state.run_dir} draws the "
                               "curves once it can be written") from None  # fmt: skip


# bound at run time, not only for a type checker, so typing.get_type_hints resolves the hooks' annotations; imported last:
# flipes.train_state imports Callback from this module
from flipes.train_state import TrainState  # noqa: E402
