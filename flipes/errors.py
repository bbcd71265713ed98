"""What flipes tells its user about mistakes: options, config files, env ids, plug-ins, a fitness."""

from __future__ import annotations

import errno
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path

_FLIPES = str(Path(__file__).resolve().parent) + os.sep  # os.sep: a resolved path on Windows has backslashes
_TORCH_WRAPPERS = ("torch/utils/_contextlib.py", "torch\\utils\\_contextlib.py")  # no_grad & co. as decorators


def call_mismatch(method: Callable, args: tuple[str, ...]) -> str | None:
    """Why ``method`` cannot be called with the positional arguments named ``args`` (Python's TypeError text), or None
    where it can, or where it has no signature to read (a builtin: the call itself will say)."""
    try:
        inspect.signature(method).bind(*args)
    except TypeError as e:
        return str(e)
    except ValueError:
        return None
    return None


class UsageError(ValueError):
    """A mistake in how flipes was called, not a bug: the command line prints it as one line,
    ``flipes: error: <option>: <what is wrong>; <what to do>``, and exits with status 2.

    Args:
        option: the option at fault as a user writes it (``--lr``, ``--config run.toml``).
        problem: what is wrong, with the offending value.
        fix: what to do instead.
    """

    def __init__(self, option: str, problem: str, fix: str = "") -> None:
        self.option, self.problem, self.fix = option, problem, fix
        super().__init__(f"{option}: {problem}" + (f"; {fix}" if fix else ""))


class StorageError(RuntimeError):
    """A file of a run cannot be written (a full disk, no permission): the command line prints it as
    one line naming the file and what is still good, and exits with status 1."""


class EnvWorkerError(RuntimeError):
    """An env stepped in a worker process raised: the message names the worker and the env's error, and the
    exception's cause holds the worker's traceback (it is the user's env: the command line shows both)."""


class WorkerEndedError(EnvWorkerError):
    """An env worker process ended during a call (killed by the kernel's out-of-memory killer, a signal, a crash in
    the env's C code): the command line prints it as one line naming the worker and what is still good, and exits
    with status 1."""


class EqualFitnessWarning(UserWarning):
    """Every member of a generation had the same fitness, so its ES gradient held no signal (zero, but for raw shaping
    without mirrored pairs, which steps along the noise itself): the model was
    likely evaluated outside ``with es.population()`` (every member is then the mean network), or σ
    is too small for the fitness to tell members apart. Warned once per FlipES; a sparse reward may
    tie a population legitimately (``warnings.simplefilter("ignore", EqualFitnessWarning)``)."""


class OutsidePopulationWarning(UserWarning):
    """No layer of the model ran inside a generation's ``with es.population()`` (and no member was built
    with ``es.member_parameters``/``member_state_dict``), yet the members' fitness differed: it was computed
    outside the block, where every member is the mean network, so the ES gradient is noise (inputs that
    differ per row make the fitness differ). Warned once per FlipES."""


class ChangedParametersWarning(UserWarning):
    """The model's parameters changed between the end of a generation's ``with es.population()`` and its
    ``es.tell`` (a ``load_state_dict``, an in-place edit): ``tell`` steps from the changed values with the gradient
    of the members evaluated around the earlier ones. Warned once per FlipES."""


class RoundedStepWarning(UserWarning):
    """A ``tell`` left many of the bfloat16/float16 parameters' entries that it moves unchanged: the optimizer's step
    fell below half their spacing in that dtype and rounded away (Qiu et al.'s ``lr = α·σ`` does in bfloat16), so ES
    does not move them. Keep the parameters float32 and evaluate the population under ``torch.autocast``, or take
    larger steps. Warned once per FlipES."""


def caller_stacklevel() -> int:
    """``warnings.warn``'s stacklevel of the user's code that led to the caller: the first frame
    outside flipes and torch's decorator wrappers (a warning then points at the user's line, whether
    they called ``tell``, ``step`` or ``flipes.train``)."""
    frame, level = sys._getframe(1), 1  # level 1: the function calling warnings.warn
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith("<"):  # python -c, exec, a notebook cell: the user's
            return level
        name = str(Path(name).resolve())
        if not name.startswith(_FLIPES) and not name.endswith(_TORCH_WRAPPERS):
            return level
        frame, level = frame.f_back, level + 1
    return 1


def os_reason(e: OSError) -> str:
    """Why a file operation failed, in words: a full disk said plainly (``disk full: No space left on device``)."""
    text = e.strerror or str(e)
    if e.errno == errno.ENOSPC:
        return f"disk full: {text}"
    if e.errno == errno.EDQUOT:
        return f"disk quota exceeded: {text}"
    return text
