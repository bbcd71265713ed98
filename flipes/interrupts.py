"""Ctrl-C, SIGTERM and SIGUSR1 during :func:`flipes.train`: the first asks the loop to stop after the generation under
way (:class:`StopRequest`), a second stops at once (:class:`Interrupted`)."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any


class Interrupted(KeyboardInterrupt):
    """Training stopped at once by a second Ctrl-C or SIGTERM; ``why`` names it, ``kept`` says what the run keeps
    (the command line prints both in one line and exits 130)."""

    def __init__(self, why: str, kept: str) -> None:
        self.why, self.kept = why, kept
        super().__init__(f"{why}; {kept}")


# a SIGTERM (or SIGUSR1) again within this many seconds of the first is the same request: a batch system signals every
# process of a job, and a launcher (mpiexec, srun) forwards its own copy to the ranks as well
REPEAT_SECONDS = 2.0

# Slurm's customary warning before a time limit (sbatch --signal=USR1@120): its default action ends the process at
# once, losing the generations since the last checkpoint, so it asks for a stop as SIGTERM does. Taken only where
# nothing else handles it (a handler of the caller's, or one ignoring it, stays as it is)
WARNINGS = (signal.SIGUSR1,) if hasattr(signal, "SIGUSR1") else ()  # Windows has none


class StopRequest:
    """Inside ``with StopRequest() as stop``, Ctrl-C / SIGTERM (and SIGUSR1, where its default would end the process) ask
    the loop to stop after the current generation (and checkpoint), said at once in one line where ``say``; a second
    one stops at once: it raises :class:`Interrupted` (a KeyboardInterrupt) naming it and ``kept()``, what the run
    keeps, so that a generation that never ends (a hung env, a fitness stuck in a loop) cannot make a process ignore
    every later SIGTERM. A SIGTERM (or SIGUSR1) within ``REPEAT_SECONDS`` of a first one of its kind is a copy of it,
    not a second one. The handlers that were installed before are restored on exit. Off the main thread (where Python
    allows no signal handlers) it does nothing.

    While ``setting_up`` says what a stop keeps (envs and the model being built, before the run directory is
    written), the first signal stops at once too: there is nothing of the run to keep yet, and a model may take
    minutes to load. Once it is cleared (as the MPI ranks meet, before rank 0 writes the run directory), a signal waits
    for the directory to be whole, and the loop stops before its first generation (:func:`flipes.training.run_loop`)."""

    def __init__(
        self, say: bool = True, last: Callable[[], str] = lambda: "the last checkpoint", resume: str = "", setting_up: str = ""
    ) -> None:
        self.requested = False
        self.say, self.last, self.resume, self.setting_up = say, last, resume, setting_up
        self.running = False  # a generation may be under way (the loop has started)
        self._holding, self._held = False, ""  # a note kept back (holding_note) until it is known to hold
        self._first: tuple[int, float] | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            taken = (signal.SIGTERM, signal.SIGINT, *(s for s in WARNINGS if signal.getsignal(s) == signal.SIG_DFL))
            # a handler installed outside Python (getsignal's None: an embedding program's) could not be put back: kept
            self._previous = {s: signal.signal(s, self._handle) for s in taken if signal.getsignal(s) is not None}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        now = time.monotonic()
        if self._first is not None:
            if self._first[0] == signum != signal.SIGINT and now - self._first[1] < REPEAT_SECONDS:
                return
            raise Interrupted(f"a second {name}", self.kept())
        self._first, self.requested = (signum, now), True
        if self.setting_up:
            raise Interrupted(f"{name} while the run was set up", self.setting_up)
        if self.say:
            when = "after the generation under way, with a checkpoint" if self.running else "before the first generation"
            text = f"flipes: {name}: stopping {when}; another Ctrl-C or SIGTERM stops at once, keeping {self.last()}"
            if self._holding:
                self._held = text
                return
            self._say(text)

    @contextlib.contextmanager
    def holding_note(self) -> Iterator[None]:
        """Inside, a first signal's note is kept back, and said on leaving normally: the ranks are agreeing, and another
        rank still setting up may end the job at once, with its own line, instead."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._held:
            self._say(self._held)
            self._held = ""

    @staticmethod
    def _say(text: str) -> None:
        """``text`` on ``sys.stderr`` (a notebook's too), else on file descriptor 2: said from the signal handler, an
        error of the stream's would be raised wherever the main thread was, the stop request lost to it."""
        try:
            print(text, file=sys.stderr)
            flush = getattr(sys.stderr, "flush", None)  # a stand-in for stderr may have write alone
            if callable(flush):
                flush()
        except Exception:  # this handler cut into the main thread's own write to it; a stand-in's write failed
            with contextlib.suppress(OSError):
                os.write(2, (text + "\n").encode(errors="replace"))

    def kept(self) -> str:
        """What a run stopped at once keeps: its last checkpoint, and the way on from it."""
        return f"{self.last()} stays" + (f": --resume {shlex.quote(self.resume)} continues from it" if self.resume else "")
