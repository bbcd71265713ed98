"""Checkpoint files that survive crashes, full disks and flipped bits.

A checkpoint is written to a temporary file, fsynced and renamed into place; the file it replaces
becomes ``previous.pt`` by a hard link first, so ``checkpoint.pt`` exists at every instant (a kill
between any two steps leaves a complete one under the name ``--resume DIR`` reads). Its content
carries a SHA-256 that is checked on load: ``torch.load`` does not check the zip CRC, and a flipped
byte in tensor data would otherwise load as a different weight.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import re
import shlex
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.parameter import is_lazy

from flipes.errors import StorageError, os_reason

FORMAT = "flipes-checkpoint/2"  # {"format", "sha256", "payload": uint8 tensor of torch.save(state), "flipes", "torch"}
# raised where an older flipes would misread a newer file (an entry it would drop or read otherwise): it refuses the file
# whole, naming the flipes that wrote it (the header's "flipes"), rather than load part of it
_FORMAT_STEM, _FORMAT_NUMBER = FORMAT.rsplit("/", 1)[0] + "/", int(FORMAT.rsplit("/", 1)[1])


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, with what to do about it.

    ``problem`` says what is wrong with the file; ``previous`` is the ``previous.pt`` beside it where
    there is one, ``previous_loads`` whether it loads. ``str(e)`` offers it to ``option`` (``--resume`` for a
    run's checkpoint, ``""`` for one read by :func:`read_checkpoint`); :meth:`message` words the offer for
    another option (``--checkpoint`` of evaluate and export). ``older`` names what ``previous`` is to the reader
    (a run's ``best.pt`` where both its checkpoints are damaged: "the best checkpoint").
    """

    def __init__(
        self,
        problem: str,
        previous: Path | None = None,
        previous_loads: bool = False,
        option: str = "--resume",
        older: str = "the previous checkpoint",
    ) -> None:
        self.problem, self.previous, self.previous_loads, self.option = problem, previous, previous_loads, option
        self.older = older
        super().__init__(self.message())

    def message(self, option: str | None = None) -> str:
        """The error, its way on given as a value of ``option`` (default: the one it was raised for)."""
        option = self.option if option is None else option
        if self.previous is None:
            return self.problem
        if not self.previous_loads:
            again = "start the run again with --overwrite" if option else "start again"
            return f"{self.problem}; the previous checkpoint {self.previous} is damaged too: {again}"
        if option == "--resume":
            return f"{self.problem}; {self.older} {self.previous} can be resumed instead: continue from it with " \
                   f"--resume {shlex.quote(str(self.previous))}"  # fmt: skip
        if not option:
            return f"{self.problem}; {self.older} {self.previous} reads: flipes.read_checkpoint({str(self.previous)!r})"
        quoted = shlex.quote(str(self.previous))  # pasted into a shell: a path with a space stays one argument
        return f"{self.problem}; {self.older} {self.previous} can be used instead: pass {option} {quoted}"


class NewerCheckpointError(CheckpointError):
    """A checkpoint written in a newer format than this flipes reads: refused whole (an older reader would drop or
    misread what the newer flipes added), its message naming the flipes that wrote it and the upgrade."""


def _refuse_numpy(value: Any, where: str) -> None:
    """Raise where ``value`` holds a numpy value: ``torch.load(weights_only=True)``, which reads checkpoints, refuses
    them, so the file would be written and never read back (a rule's ``np.float64`` σ saved beside the state)."""
    if isinstance(value, np.ndarray | np.generic):
        fix = "float(x) or int(x)" if isinstance(value, np.generic) else "torch.from_numpy(x)"
        raise TypeError(
            f"save_checkpoint: {where} is a numpy {type(value).__name__}, which a checkpoint cannot be read back with "
            f"(torch.load(weights_only=True) refuses it); save {fix} instead"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_numpy(key, f"the key {key!r} of {where}")  # a count by np.unique's values: refused on loading too
            _refuse_numpy(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _refuse_numpy(item, f"{where}[{i}]")


def save_checkpoint(state: dict[str, Any], path: str | Path, keep_previous: bool = True) -> Path:
    """Write ``state`` to ``path`` atomically; the file it replaces becomes its previous one beside it
    (:func:`previous_path`: ``previous.pt`` for ``checkpoint.pt``, ``NAME.previous.pt`` for ``NAME.pt``).

    ``state`` is anything ``torch.load(weights_only=True)`` reads back (tensors, numbers, strings, lists and
    dicts of them: ``es.state_dict()``); it is stored with a SHA-256 of its bytes, which :func:`read_checkpoint`
    checks. Missing directories of ``path`` are made. A kill at any instant leaves ``path`` whole, the old file or
    the new one.

    Args:
        state: what to save.
        path: the file to write.
        keep_previous: ``True`` (default): the file ``path`` replaces is kept as its previous one; ``False``: it is
            replaced and no previous one is written (one left from before stays as it was).

    Returns:
        ``path``, as a ``Path``.

    Examples::

        >>> flipes.save_checkpoint({"es": es.state_dict(), "best": best}, "ckpt/checkpoint.pt")
        >>> es.load_state_dict(flipes.read_checkpoint("ckpt/checkpoint.pt")["es"])

    Raises:
        StorageError: the file cannot be written (a full disk, no permission); the message names
            the checkpoint that is still good (the run's ``checkpoint.pt``, which ``--resume`` reads,
            where there is one). Nothing at ``path`` has changed then.
    """
    if str(path).endswith(("/", os.sep)):  # Path() would drop the slash and write a file of the directory's name
        raise ValueError(f"save_checkpoint: {str(path)!r} names a directory; give a file in it, e.g. {path!s}checkpoint.pt")
    path = Path(path)
    _refuse_numpy(state, "state")
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getbuffer()  # the serialized bytes in place: no copy of a checkpoint that may be GBs
    from flipes import __version__

    wrapped = {"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
               "payload": torch.frombuffer(payload, dtype=torch.uint8),
               "flipes": str(__version__), "torch": str(torch.__version__)}  # who wrote it  # fmt: skip
    tmp = path.with_name(path.name + ".tmp")
    previous = previous_path(path)
    file = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # "ckpt/checkpoint.pt" in a fresh directory (torch.save would fail)
        with open(tmp, "wb") as f:
            file = _Writes(f)
            torch.save(wrapped, file)  # streamed: no second copy in memory
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            link = previous.with_name(previous.name + ".tmp")
            link.unlink(missing_ok=True)
            try:
                os.link(path, link)  # previous.pt gets the same file; checkpoint.pt stays in place
            except OSError:  # a file system without hard links
                shutil.copyfile(path, link)
            os.replace(link, previous)
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half of one
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as e:
        discard(tmp)
        # torch turns a write's OSError into a RuntimeError ("unexpected pos 832 vs 726"): the OSError says why
        error = file.error if file is not None and file.error is not None else e
        why = os_reason(error) if isinstance(error, OSError) else clip(" ".join(str(error).split()))
        if isinstance(error, FileExistsError | NotADirectoryError):  # mkdir met a file on the way ("File exists")
            blocking = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)
            why = f"{blocking} is a file, not a directory" if blocking is not None else why
        if isinstance(error, FileNotFoundError) and path.parent.is_dir():  # a temporary file was renamed under us
            why += (
                f"; a file of this save was moved away while it was written: another process saving {path.name} at the "
                "same time? Under mpiexec, save on rank 0 alone (`if es.comm.rank == 0:`)"
            )
        raise StorageError(f"cannot write {path} ({why}); {still_good(path)}") from None
    except BaseException:  # a second Ctrl-C or SIGTERM stops at once: no temporary file is left behind
        discard(tmp)
        discard(previous.with_name(previous.name + ".tmp"))
        raise
    return path


def previous_path(path: Path) -> Path:
    """Where :func:`save_checkpoint` keeps the file that ``path`` replaced: a run's ``checkpoint.pt`` keeps
    ``previous.pt`` (what ``--resume`` offers), any other file one of its own (``best.pt``: ``best.previous.pt``), so
    that two files saved in one directory do not replace each other's previous one."""
    if path.name == "checkpoint.pt":
        return path.with_name("previous.pt")
    return path.with_name(f"{path.stem}.previous{path.suffix}")


class _Writes:
    """A file for ``torch.save`` that keeps the OSError of a failed write, which torch reports as a
    RuntimeError of its own (a full disk would read "[enforce fail at inline_container.cc] unexpected pos")."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.error: OSError | None = None  # the write or flush that failed

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as e:
            self.error = e
            raise


def discard(path: Path) -> None:
    """Remove ``path`` where it can be: a temporary file left by a failed write. On a read-only file system
    even a missing file's unlink fails (EROFS), which must not replace the error that says why the write failed."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def still_good(path: Path) -> str:
    """What a failed write of ``path`` leaves to continue from: for a run's ``checkpoint.pt`` or ``best.pt``, its
    ``checkpoint.pt`` (what ``--resume DIR`` reads) where it exists, else ``previous.pt``; else (and for a file of
    one's own loop, which is not the run's) ``path`` as it was; a new run's first ``checkpoint.pt``: the same command."""
    run = (path.with_name("checkpoint.pt"), path.with_name("previous.pt")) if path.name in ("checkpoint.pt", "best.pt") else ()
    for good in (*run, path):
        if good.is_file():
            return f"the last good checkpoint is {good}{resume_hint(good) if good in run else ''}"
    if path.name == "checkpoint.pt" and (path.parent / "config.json").is_file():  # a new run's start: set up again
        return "no checkpoint was written yet: the same command starts the run once the file can be written"
    return "no checkpoint was written yet"


def resume_hint(good: Path) -> str:
    """How a run directory's ``good`` checkpoint is continued, where ``good`` is one (flipes train wrote a config.json
    beside it): ``--resume DIR`` reads its checkpoint.pt, a previous.pt is named itself; else nothing (a file of
    one's own loop)."""
    if not (good.parent / "config.json").is_file():
        return ""
    resumed = shlex.quote(str(good.parent if good.name == "checkpoint.pt" else good))
    return f": --resume {resumed} continues from it once the file can be written"


def clip(text: str, limit: int = 100) -> str:
    """``text`` cut to at most about ``limit`` characters at a word boundary, with "..." where it was cut."""
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
    return cut.rstrip(" ,;:(") + " ..."


_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[(.*?)\]\) from checkpoint, "
    r"the shape in current model is torch\.Size\(\[(.*?)\]\)\.?"
)


def load_mismatch(error: Exception, limit: int = 160) -> str:
    """The first reason torch gives for a state dict that does not load into a model (a size mismatch as
    ``size mismatch for 0.weight: (16, 4) saved, (32, 4) in the model``, missing or unexpected keys), clipped, with
    how many more there are; its header (``Error(s) in loading state_dict for ...``) left out."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading"):
        lines = lines[1:]
    first = _SIZE_MISMATCH.sub(lambda m: f"size mismatch for {m[1]}: ({m[2]}) saved, ({m[3]}) in the model", lines[0])
    return clip(first, limit) + (f"; and {len(lines) - 1} more" if len(lines) > 1 else "")


def state_mismatches(saved: Mapping[str, Any], model: Mapping[str, Any]) -> list[str]:
    """Each reason the state dict ``saved`` would not load into a model whose state dict is ``model`` (missing and
    unexpected keys as torch words them, then each size mismatch as :func:`load_mismatch` does); empty where it loads.
    Checked before loading: torch's ``load_state_dict`` copies every tensor that fits and raises only then, leaving the
    model half loaded."""
    quoted = lambda keys: ", ".join(f'"{k}"' for k in keys)  # noqa: E731  as torch quotes them
    reasons = []
    if missing := [k for k in model if k not in saved]:
        reasons.append(f"Missing key(s) in state_dict: {quoted(missing)}.")
    if unexpected := [k for k in saved if k not in model]:
        reasons.append(f"Unexpected key(s) in state_dict: {quoted(unexpected)}.")
    for key, value in model.items():
        other = saved.get(key)
        if is_lazy(value) or is_lazy(other):  # a lazy module takes the saved shape, as torch's load_state_dict does
            continue
        if isinstance(value, Tensor) and isinstance(other, Tensor) and other.shape != value.shape:
            shapes = (", ".join(map(str, v.shape)) for v in (other, value))
            reasons.append("size mismatch for {}: ({}) saved, ({}) in the model".format(key, *shapes))
    return reasons


def state_mismatch(saved: Mapping[str, Any], model: Mapping[str, Any], limit: int = 160) -> str:
    """:func:`state_mismatches` in one line, as :func:`load_mismatch` words torch's error (``size mismatch for
    0.weight: (8, 4) saved, (16, 4) in the model; and 2 more``); ``""`` where it loads."""
    reasons = state_mismatches(saved, model)
    if not reasons:
        return ""
    return clip(reasons[0], limit) + (f"; and {len(reasons) - 1} more" if len(reasons) > 1 else "")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)  # the renames themselves survive a power cut
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF):  # directories that cannot be fsynced
            raise
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = None) -> dict[str, Any]:
    """Read a run's checkpoint, written by ``flipes train`` (a file, or a run directory's ``checkpoint.pt``).

    Args:
        path: the checkpoint file, or the run directory.
        map_location: where its tensors are loaded, as for ``torch.load`` (``None``: where they were saved).

    Returns:
        The run's state: ``"es"`` (``FlipES.state_dict()``) and the loop's other entries.

    Raises:
        CheckpointError: the file is missing, truncated, corrupted (content hash), not a flipes
            checkpoint or lacks part of one (each entry the run needs is checked); the message names
            the previous checkpoint to resume from instead, where there is one.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    state = _read(path, map_location, "--resume")
    if isinstance(state, dict) and not (set(_ENTRIES) - {"es"}) & set(state):  # an own loop's file, not a damaged run's
        raise CheckpointError(
            f"{path} is not a flipes training checkpoint: it holds no run's entries (only "
            f"{', '.join(map(repr, list(state)[:4]))}{', ...' if len(state) > 4 else ''}); flipes.load_checkpoint reads "
            f"those of flipes.train, flipes.read_checkpoint({str(path)!r}) a file of flipes.save_checkpoint, torch.load one "
            "of torch.save"
        )
    if not isinstance(state, dict) or "es" not in state:
        raise _error(f"{path} is not a flipes training checkpoint (no 'es' state)", path)
    missing = structure_problem(state)
    if missing:
        raise _error(f"{path} is not a whole flipes checkpoint: {missing}", path)
    return state


def read_checkpoint(path: str | Path, map_location: str | torch.device | None = None) -> dict[str, Any]:
    """What :func:`save_checkpoint` wrote to ``path`` (a loop of one's own), its SHA-256 checked.

    ``map_location``: where its tensors are loaded, as for ``torch.load`` (``None``: where they were saved).

    Raises:
        CheckpointError: the file is missing, truncated, corrupted (content hash) or not written by
            :func:`save_checkpoint`; the message offers the file's previous one beside it (:func:`previous_path`)
            where that one reads.
    """
    path = Path(path)
    if path.is_dir():  # torch.load would say only "Is a directory", read as a damaged file
        files = sorted(p.name for p in path.glob("*.pt"))[:5]
        hint = f"pass one of its files ({', '.join(files)})" if files else "it holds no .pt file: pass one save_checkpoint wrote"
        raise CheckpointError(f"{path} is a directory, not a checkpoint file: {hint}", option="")
    state = _read(path, map_location, "")
    if not isinstance(state, dict):
        raise _error(f"{path} holds a {type(state).__name__}, not the dict save_checkpoint writes", path, "")
    return state


def _read(path: Path, map_location: str | torch.device | None, option: str) -> Any:
    """The state in a checkpoint file, its hash checked (files written before checkpoints carried one load as
    they are); errors offer ``previous.pt`` to ``option``."""
    if isinstance(map_location, str | torch.device) and str(map_location).startswith("cpu:"):
        map_location = "cpu"  # torch.load cannot restore to "cpu:0", a device --device and torch take elsewhere
    if not path.exists():  # one's own loop's name mistyped: a previous file beside it is another file's
        missing = f"no checkpoint at {path}"
        raise _error(missing, path, option) if option else CheckpointError(missing, option="")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        first = clip((str(e).strip().splitlines() or [""])[0])  # torch's messages run to many lines
        why = f"{type(e).__name__}: {first}" if first else ("empty file" if path.stat().st_size == 0 else type(e).__name__)
        raise _error(f"{path} is truncated or not a checkpoint ({why})", path, option) from e
    if isinstance(state, dict) and (newer := _newer_format(state)):
        raise NewerCheckpointError(f"{path} {newer}", option=option)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        payload, digest = state.get("payload"), state.get("sha256")
        if not isinstance(digest, str):
            raise _error(f"{path} is damaged: its {FORMAT} header has no SHA-256 (sha256)", path, option)
        if not isinstance(payload, Tensor) or payload.dtype != torch.uint8 or payload.dim() != 1:
            raise _error(f"{path} is damaged: its payload is of type {_kind(payload)}, not the checkpoint's bytes", path, option)
        data = payload.numpy().tobytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise _error(f"{path} is corrupted: its content does not match its SHA-256", path, option)
        try:
            state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except Exception as e:
            first = clip((str(e).strip().splitlines() or [""])[0])
            if map_location != "cpu" and _loads_on_the_cpu(data):  # intact (its hash matched): the device is the problem
                where = f"map_location={map_location!r}" if map_location is not None else "the device it was saved on"
                raise CheckpointError(
                    f"{path} cannot be loaded to {where} on this machine ({type(e).__name__}: {first}); it is intact: "
                    "load it to the CPU with map_location='cpu' (a GPU run's checkpoint on a machine without one)",
                    option="",
                ) from e
            if isinstance(e, pickle.UnpicklingError):  # intact (its hash matched): an object weights_only loading refuses
                raise CheckpointError(
                    f"{path} is intact but holds an object torch.load(weights_only=True) does not read ({first}); save "
                    "numbers, strings, tensors and lists or dicts of them (read this one with "
                    "torch.load(io.BytesIO(torch.load(path)['payload'].numpy().tobytes()), weights_only=False) if you trust it)",
                    option="",
                ) from e
            raise _error(f"{path} is damaged: its payload does not load ({type(e).__name__}: {first})", path, option) from e
    elif not option:  # a file of torch.save: no hash to check, so not one of save_checkpoint's
        raise CheckpointError(
            f"{path} was not written by flipes.save_checkpoint (no {FORMAT} header); a file of torch.save reads with "
            f"torch.load({str(path)!r})",
            option="",
        )
    elif map_location is not None:  # written before checkpoints carried a hash
        state = torch.load(path, map_location=map_location, weights_only=True)
    return state


def written_by(path: str | Path) -> dict[str, str]:
    """The versions a checkpoint file's header names as having written it, ``{"flipes": "0.1.0", "torch": "2.13.0"}``;
    ``{}`` for a file written before headers named them, or one that does not read. Cheap: its payload is mapped, not
    read (``mmap=True``)."""
    try:
        header = torch.load(os.fspath(path), map_location="cpu", weights_only=True, mmap=True)  # torch 2.2 maps a str alone
    except Exception:  # a damaged file: its load says why
        return {}
    if not isinstance(header, dict):
        return {}
    return {key: value for key in ("flipes", "torch") if isinstance(value := header.get(key), str)}


def _newer_format(header: dict[Any, Any]) -> str:
    """What is wrong with a file whose header names a flipes checkpoint format other than :data:`FORMAT` (a newer
    flipes's: ``flipes-checkpoint/3``), as ``was written by flipes 0.3.0 in the format ...; upgrade ...``; ``""`` for
    one in this format, or no flipes header at all (the callers say what that is)."""
    from flipes import __version__

    fmt = header.get("format")
    if not isinstance(fmt, str) or not fmt.startswith(_FORMAT_STEM) or fmt == FORMAT:
        return ""
    number = fmt.removeprefix(_FORMAT_STEM)
    newer = not number.isdigit() or int(number) > _FORMAT_NUMBER  # an unknown suffix is no older one either
    writer = header.get("flipes")
    who = f"flipes {writer}" if isinstance(writer, str) and writer else f"{'a newer' if newer else 'another'} flipes"
    return (
        f"was written by {who} in the checkpoint format {fmt}, which this flipes {__version__} (format {FORMAT}) cannot "
        "read whole; nothing was loaded: read it with the flipes that wrote it"
        + (", or a later one (pip install -U flipes)" if newer else "")
    )


def _loads_on_the_cpu(data: bytes) -> bool:
    """Whether a checkpoint's payload loads with its tensors on the CPU (read only on the way to an error)."""
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:
        return False
    return True


# what flipes reads of a checkpoint: the entries a resume and load_policy take, and their types
_ENTRIES = MappingProxyType({"es": dict, "config": dict, "timesteps": int, "seconds": (int, float), "best": (int, float)})
_ES_ENTRIES = MappingProxyType({"generation": int, "config": dict, "model": dict, "optimizer": dict})


def structure_problem(state: dict[str, Any]) -> str:
    """What a loaded checkpoint lacks of the entries flipes reads, or has of another type (``""``: nothing)."""
    for prefix, entries, holder in (("", _ENTRIES, state), ("es.", _ES_ENTRIES, state.get("es"))):
        if not isinstance(holder, dict):  # the first pass has said so for "es"
            break
        for key, kind in entries.items():
            if key not in holder:
                return f"it has no {prefix}{key} entry"
            value = holder[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                expected = kind.__name__ if isinstance(kind, type) else "number"
                return f"its {prefix}{key} entry is of type {_kind(value)}, not {expected}"
    if state["es"]["generation"] < 0:
        return f"its es.generation entry is negative ({state['es']['generation']})"
    return ""  # es.model's values are the model's to judge: a module's extra state need not be a tensor


def _kind(value: Any) -> str:
    return f"Tensor ({str(value.dtype).removeprefix('torch.')})" if isinstance(value, Tensor) else type(value).__name__


def _error(problem: str, path: Path, option: str = "--resume") -> CheckpointError:
    """A CheckpointError for ``path`` that points at ``previous.pt`` beside it: offered only where it
    loads (read in full, but only on the way to an error), else said to be damaged too. Where a run's checkpoint.pt
    has no previous.pt that loads, its best.pt is offered where that loads (not a start over). A file that is no
    checkpoint by its name (config.json, metrics.jsonl given by mistake) points at none: the way on is the
    run's own checkpoint, not the older one. A run's ``best.pt`` points at none either: ``previous.pt`` is an older
    ``checkpoint.pt``, not an older best (and is no reason to start the run again where it is damaged too). A file of
    :func:`read_checkpoint` (``option`` ``""``) points at its own previous one (:func:`previous_path`), not at another
    file's."""
    previous = path.with_name("previous.pt") if option else previous_path(path)
    if previous == path or (option and (path.suffix != ".pt" or path.name == "best.pt")):
        return CheckpointError(problem, option=option)
    damaged = previous.exists() and not _loads(previous, option)
    if previous.exists() and not damaged:
        return CheckpointError(problem, previous, previous_loads=True, option=option)
    best = path.with_name("best.pt")  # a whole training state too: better to continue from than to start over
    if option and path.name == "checkpoint.pt" and best.exists() and _loads(best, option):
        told = f"{problem}; the previous checkpoint {previous} is damaged too" if damaged else problem
        return CheckpointError(told, best, previous_loads=True, option=option, older="the best checkpoint")
    return CheckpointError(problem, previous if damaged else None, previous_loads=False, option=option)


def _loads(path: Path, option: str) -> bool:
    """Whether the checkpoint at ``path`` loads (read in full, on the way to an error only); on the CPU: a GPU run's
    tensors, not onto the GPU, nor an error without one."""
    try:
        (load_checkpoint if option else read_checkpoint)(path, map_location="cpu")
    except CheckpointError:
        return False
    return True


def tensors_sha256(tensors: Iterable[Tensor]) -> str:
    """SHA-256 of the tensors' bytes, in order: equal exactly when every value is bitwise equal."""
    h = hashlib.sha256()
    flat = [t.detach().contiguous().reshape(-1).view(torch.uint8) for t in tensors]  # any dtype, bf16 too
    if flat and flat[0].device.type != "cpu" and all(t.device == flat[0].device for t in flat):
        flat = [torch.cat(flat).cpu()]  # one copy to the host, not one per tensor (each a sync on a GPU)
    for t in flat:
        h.update(t.cpu().numpy())  # the buffer itself: tobytes() would copy every byte first
    return h.hexdigest()
