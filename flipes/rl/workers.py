"""Gymnasium envs stepped in K worker processes, a block of envs per worker, torch in and out.

gymnasium's ``AsyncVectorEnv`` runs one process per env: at a population's N = 256 that is 256
processes on a few cores (measured here at 0.25× ``SyncVectorEnv`` for HalfCheetah-v5 with N = 64).
Here each of its K sub-envs is a :class:`EnvBlock`, a ``SyncVectorEnv`` of N/K copies seen as one
env whose observation carries the block's observations, rewards and flags, so that gymnasium's
shared-memory transport moves whole blocks and every worker steps its block on its own core.
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.connection
import os
import pickle
import select
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from multiprocessing import forkserver
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.vector.async_vector_env import _async_worker
from torch import Tensor

from flipes.errors import EnvWorkerError, WorkerEndedError
from flipes.rl.mujoco_log import makes_mujoco, mujoco_warnings_once
from flipes.rl.spaces import flat_observation_space, flatten_observations

T = TypeVar("T")

# the info keys in which a block returns the error its envs raised: the summary line, and the worker's traceback
ERROR, TRACEBACK = "flipes_error", "flipes_traceback"


class EnvBlock(gym.Env):
    """``size`` copies of ``env_id`` (envs ``offset .. offset+size-1`` of the whole vector env)
    as one gymnasium env; it never ends itself (its copies autoreset on their next step, NEXT_STEP).
    An error its envs raise in ``reset`` or ``step`` is returned in the info (:data:`ERROR`, :data:`TRACEBACK`)
    for :class:`WorkerVectorEnv` to raise: gymnasium's own report of a worker's error formats the traceback
    with ``%``, and fails with a TypeError of its own, the env's error lost, where the traceback holds a ``%``."""

    def __init__(self, env_id: str, size: int, offset: int, kwargs: dict[str, Any]) -> None:
        self.env = gym.make_vec(env_id, num_envs=size, vectorization_mode="sync", **kwargs)
        self.size, self.offset = size, offset
        self.observation_space = gym.spaces.Dict(
            obs=self.env.observation_space,
            reward=gym.spaces.Box(-np.inf, np.inf, (size,), np.float64),
            terminated=gym.spaces.MultiBinary(size),
            truncated=gym.spaces.MultiBinary(size),
        )
        self.action_space = self.env.action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        seeds = (options or {}).get("seeds")
        block_seeds = None if seeds is None else list(seeds[self.offset : self.offset + self.size])
        try:
            obs, _ = self.env.reset(seed=block_seeds if block_seeds is not None else seed)
        except Exception as e:
            return self._failed(e)
        zero = np.zeros(self.size, dtype=np.int8)
        return {"obs": obs, "reward": np.zeros(self.size), "terminated": zero, "truncated": zero}, {}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        try:
            obs, reward, terminated, truncated, _ = self.env.step(action)
        except Exception as e:
            obs, info = self._failed(e)
            return obs, 0.0, False, False, info
        flags = {"terminated": terminated.astype(np.int8), "truncated": truncated.astype(np.int8)}
        return {"obs": obs, "reward": reward, **flags}, 0.0, False, False, {}

    def _failed(self, e: Exception) -> tuple[dict, dict]:
        """The observation (any of the right shape: the parent raises) and info of a call that raised ``e``."""
        obs = self.observation_space.sample()  # any of the right shape: the parent raises, reading none of it
        summary = "".join(traceback.format_exception_only(type(e), e)).strip()
        return obs, {ERROR: summary, TRACEBACK: "".join(traceback.format_exception(type(e), e, e.__traceback__))}

    def close(self) -> None:
        self.env.close()


def _worker_block(
    parent: int, env_id: str, size: int, offset: int, kwargs: dict[str, Any], mujoco: bool = False, spec: bytes | None = None
) -> EnvBlock:
    """An :class:`EnvBlock` made in its worker process, which leaves Ctrl-C and SIGUSR1 to the process that started it
    (``parent``): a terminal's Ctrl-C reaches every process of its group, as Slurm's time-limit warning does (``srun``
    ``--signal=USR1@120``, whose default action ends a process), and a worker ended by one would fail the
    step under way instead of letting training stop after its generation with a checkpoint. SIGTERM still ends a
    worker: multiprocessing stops the workers of an env left open at exit with it (ignored, the exit would hang).
    gymnasium also makes one block in the parent itself, for the spaces: signals are left as they are there.
    ``mujoco``: the env is one of gymnasium's MuJoCo envs (MuJoCo is imported first, to collect its warnings).
    ``spec``: the pickled ``EnvSpec`` the parent holds for ``env_id``, registered here where the worker lacks the id
    (registered by a function the worker never runs, e.g. a script's ``main()`` or a notebook cell)."""
    worker = os.getpid() != parent
    if spec is not None and env_id not in gym.registry:
        gym.registry[env_id] = pickle.loads(spec)
    if worker:
        for signum in (signal.SIGINT, *((signal.SIGUSR1,) if hasattr(signal, "SIGUSR1") else ())):  # Windows has no USR1
            signal.signal(signum, signal.SIG_IGN)
    # MuJoCo's compiler warnings: the parent reports them once (its own copy), a worker drops its block's; MuJoCo
    # is imported for its envs only (a Box2D worker need not import it, nor fail where MUJOCO_GL names no backend)
    with mujoco_warnings_once(report=not worker, load=mujoco):
        return EnvBlock(env_id, size, offset, kwargs)


def _worker(*args: Any) -> None:
    """gymnasium's worker loop (its arguments as they are, whatever gymnasium's version), ending quietly where the
    process it serves is gone (killed: the out-of-memory killer's SIGKILL, a rank ended by mpiexec): its pipe fails,
    and each worker printed a traceback of a ConnectionResetError and a BrokenPipeError over the process's own end."""
    try:
        _async_worker(*args)
    except (EOFError, ConnectionResetError, BrokenPipeError):
        pass


def _only_here(env_id: str) -> str:
    """The name of ``env_id``'s creator where it is defined in an interactive session's ``__main__`` (a notebook's,
    whose cells no other process can import: a worker fails to find it, its traceback on the kernel's stderr, not the
    notebook's); empty where a worker can make it (a script's ``__main__`` is imported by each worker)."""
    main = sys.modules.get("__main__")
    file = getattr(main, "__file__", None)  # "<stdin>" for `python - < script`: no file a worker can import either
    if (file is not None and not file.startswith("<")) or getattr(main, "__spec__", None) is not None:
        return ""
    try:
        spec = gym.spec(env_id)
    except gym.error.Error:  # the workers' own error says it
        return ""
    for creator in (spec.entry_point, spec.vector_entry_point):
        module = creator.partition(":")[0] if isinstance(creator, str) else getattr(creator, "__module__", "")
        if module == "__main__":
            return creator if isinstance(creator, str) else f"__main__.{getattr(creator, '__qualname__', creator)}"
    return ""


def _registration(env_id: str) -> bytes | None:
    """``env_id``'s ``EnvSpec`` pickled for the workers, or None where this process has no such id (a module-prefixed
    id the workers import themselves) or its creator cannot be pickled (a lambda: a script's workers re-run the
    script's top level, which registers it again)."""
    try:
        return pickle.dumps(gym.spec(env_id))
    except (gym.error.Error, pickle.PicklingError, AttributeError, TypeError):
        return None


def _end(processes: Sequence[multiprocessing.process.BaseProcess]) -> None:
    """End the live ones of ``processes`` (SIGTERM) and reap them all, killing any still alive 10 s on (an env's code
    that handles SIGTERM itself)."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()


class RemoteTraceback(Exception):
    """The traceback of an error raised in a worker process, shown as the cause of the error raised here."""

    def __str__(self) -> str:
        return f'\n"""\n{self.args[0]}"""'


class WorkerVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` copies of a gymnasium id in ``workers`` processes (gymnasium's ``AsyncVectorEnv``
    with shared memory), equal blocks of ``num_envs / workers`` envs each.

    Args:
        env_id: a registered gymnasium id.
        num_envs: copies; ``workers`` must divide it.
        workers: processes.
        device: where the returned tensors live.
        **kwargs: passed to ``gymnasium.make_vec`` in each worker.

    Seeding follows gymnasium: ``reset(seed=s)`` seeds env ``i`` with ``s + i`` (or ``s[i]``), so
    its episodes are those of ``SyncVectorEnv`` with the same seeds. Dict and Tuple observations come
    back flattened into one Box (:mod:`flipes.rl.spaces`; ``source_observation_space`` keeps the env's).

    Failures: an env that raises in ``reset`` or ``step`` raises :class:`~flipes.errors.EnvWorkerError` here,
    naming the worker and the env's error, with the worker's traceback as its cause; a worker process that
    ends during a call (killed, crashed) raises :class:`~flipes.errors.WorkerEndedError` naming it and how it
    ended, at once; ``close`` then returns promptly.
    """

    def __init__(self, env_id: str, num_envs: int, workers: int, device: str | torch.device = "cpu", **kwargs: Any) -> None:
        if workers < 1 or num_envs % workers:
            raise ValueError(f"{workers} workers cannot share {num_envs} envs equally; pick a divisor of {num_envs}")
        self.num_envs, self.workers, self.device = num_envs, workers, torch.device(device)
        if where := _only_here(env_id):
            from flipes.rl.envs import EnvError

            raise EnvError(
                f"{env_id!r} is made by {where}, defined in this interactive session (a notebook's cell, the REPL), which "
                f"the {workers} env worker processes cannot import: step it in this process, env='gymnasium-sync:"
                f"{env_id}', or register it in a module of yours and pass env='mymodule:{env_id}' (each worker imports it)"
            )
        size = num_envs // workers
        mujoco = makes_mujoco(env_id)
        spec = _registration(env_id)
        fns = [
            functools.partial(_worker_block, os.getpid(), env_id, size, k * size, kwargs, mujoco, spec) for k in range(workers)
        ]
        # forkserver: forking this process itself fails with ENOMEM once it holds large envs (seen at
        # N = 1024 MuJoCo envs), and spawn re-imports everything per worker
        context = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        if context == "forkserver":
            # the server imports torch and this module once, and forks each worker with them: each worker would import
            # them itself (measured: 2.8 s to start 2 CartPole workers, 1.4 s with the server's first start, 0.07 s
            # after). Added to the list set so far (multiprocessing's default ["__main__"], or the user's own; read
            # where this Python keeps it); a server already running keeps what it has.
            preload = list(getattr(getattr(forkserver, "_forkserver", None), "_preload_modules", ["__main__"]))
            if __name__ not in preload:
                multiprocessing.set_forkserver_preload([*preload, __name__])
        single = gym.make_vec(env_id, num_envs=1, vectorization_mode="sync", **kwargs)
        self.source_observation_space, self.single_action_space = single.single_observation_space, single.single_action_space
        single.close()
        # before the workers start: a space that cannot be flattened must not leave them behind
        self.single_observation_space = flat_observation_space(self.source_observation_space) or self.source_observation_space
        started = set(multiprocessing.active_children())
        try:
            self.env = gym.vector.AsyncVectorEnv(fns, shared_memory=True, context=context, worker=_worker)
        except BaseException as e:
            # the workers that did start would live on while this error is held (a notebook keeps the last one): its
            # traceback holds the half-made env, which ends them only once collected
            _end([process for process in multiprocessing.active_children() if process not in started])
            if not isinstance(e, EOFError | ConnectionResetError | BrokenPipeError):
                raise
            # a worker gone before it answered the spaces
            raise WorkerEndedError(
                f"the env workers of {env_id} ended as they started ({type(e).__name__}); a script that makes them at its "
                'top level needs that code under `if __name__ == "__main__":` (each worker process imports the script '
                f"first, with Python's {context} start); else the workers' own traceback above says why"
            ) from None
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}
        self.spec = None
        self.pending = False  # a call sent to the workers whose answers were not read (cut short)
        self.poll = select.poll() if hasattr(select, "poll") else None  # the workers' pipes and ends (see _await)
        fds = [pipe.fileno() for pipe in self.env.parent_pipes] + [process.sentinel for process in self.env.processes]
        for fd in fds if self.poll is not None else []:
            self.poll.register(fd, select.POLLIN)

    def _flat(self, x: Any) -> Tensor:
        """``(workers, envs per worker, ...)`` -> ``(num_envs, ...)``; Dict and Tuple observations flattened."""
        if isinstance(x, dict | tuple):
            x = flatten_observations(self.source_observation_space, x, batch_dims=2)
        return torch.from_numpy(np.ascontiguousarray(x).reshape(self.num_envs, *x.shape[2:])).to(self.device)

    def reset(
        self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        if seed is not None:
            seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int | np.integer) else [int(s) for s in seed]
            options = {**(options or {}), "seeds": seeds}
        obs, infos = self._answers("reset", functools.partial(self.env.reset_async, options=options), self.env.reset_wait)
        self._raise_env_error(infos, "reset")
        return self._flat(obs["obs"]), {}

    def step(self, actions: Tensor | np.ndarray) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        a = actions.detach().cpu().numpy() if isinstance(actions, Tensor) else np.asarray(actions)
        blocks = a.reshape(self.workers, self.num_envs // self.workers, *a.shape[1:])
        obs, _, _, _, infos = self._answers("step", functools.partial(self.env.step_async, blocks), self.env.step_wait)
        self._raise_env_error(infos, "step")
        return (
            self._flat(obs["obs"]),
            self._flat(obs["reward"]),
            self._flat(obs["terminated"]).bool(),
            self._flat(obs["truncated"]).bool(),
            {},
        )

    def _answers(self, call: str, send: Callable[[], None], wait: Callable[[], T]) -> T:
        """``send`` the call (gymnasium's ``*_async``), then its ``wait`` once every worker has answered; a worker that
        ended instead raises WorkerEndedError naming it: gymnasium would fail on its pipe with a bare BrokenPipeError
        or EOFError, or, where a live worker's answer had been read first, wait on that pipe forever (closing, too)."""
        env = self.env
        ends = {process.sentinel: k for k, process in enumerate(env.processes)}
        self.pending = True  # until the answers are read: close() then ends the workers rather than wait for them
        try:
            send()
        except OSError:  # a worker that ended while idle: its pipe is closed
            self._raise_ended(ends, call)
            raise
        self._await(ends, call)
        try:
            answers = wait()
        except (EOFError, OSError):  # the pipe of a worker ending is ready (closed) before its end is known
            self._raise_ended(ends, call)
            raise
        self.pending = False
        return answers

    def _await(self, ends: dict[int, int], call: str) -> None:
        """Return once every worker's pipe is readable (its answer, or its end: gymnasium's wait then fails on it), or
        raise WorkerEndedError for a worker found ended. poll(2) on the pipes and ends registered once (a step of a
        fast env costs about 1% more than gymnasium's plain wait, where multiprocessing's wait cost 3%)."""
        if self.poll is None:  # no poll(2) (Windows)
            waiting = list(self.env.parent_pipes)
            while waiting:
                ready = multiprocessing.connection.wait([*waiting, *ends])
                ended = [ends[r] for r in ready if isinstance(r, int) and r in ends]
                if ended:
                    raise self._ended(ended[0], call)
                waiting = [pipe for pipe in waiting if pipe not in ready]
            return
        pipes = [pipe.fileno() for pipe in self.env.parent_pipes]
        waiting = len(pipes)
        try:
            while waiting:
                for fd, _ in self.poll.poll():
                    if fd in ends:
                        raise self._ended(ends[fd], call)
                    self.poll.unregister(fd)  # answered: it stays readable
                    waiting -= 1
        finally:
            for fd in pipes:
                self.poll.register(fd, select.POLLIN)

    def _raise_ended(self, ends: dict[int, int], call: str) -> None:
        """After a pipe failed during ``call``: raise the error of the first worker found ended within 10 s (its end
        follows its pipe's closing), or return (the caller raises the pipe's own error)."""
        ended = multiprocessing.connection.wait(list(ends), timeout=10)
        if ended:
            raise self._ended(ends[ended[0]], call) from None  # type: ignore[index]

    def _ended(self, k: int, call: str) -> WorkerEndedError:
        """The error of worker ``k``, which ended during ``call``."""
        process = self.env.processes[k]
        process.join(timeout=5)  # its exit status
        code = process.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
            oom = " (the kernel's out-of-memory killer sends it: see dmesg)" if -code == signal.SIGKILL else ""
            how = f"was killed by {name}{oom}"
        else:
            how = "ended" if code is None else f"exited with status {code}"
        return WorkerEndedError(f"env worker {k + 1} of {self.workers} (pid {process.pid}) {how} during a {call} of its envs")

    def _raise_env_error(self, infos: dict[str, Any], call: str) -> None:
        """Raise EnvWorkerError for the first block whose envs raised in ``call``, with the worker's traceback as its cause."""
        if ERROR not in infos:
            return
        k = int(np.flatnonzero(infos[f"_{ERROR}"])[0])
        pid = self.env.processes[k].pid
        raise EnvWorkerError(
            f"an env of worker {k + 1} of {self.workers} (pid {pid}) raised in {call}: {infos[ERROR][k]}"
        ) from RemoteTraceback(infos[TRACEBACK][k])

    def close(self, **kwargs: Any) -> None:
        """Close the workers: gymnasium's close where every worker is idle and alive; else (a call cut short by an
        error, a signal, or a worker that ended: a SIGTERM to the whole process group, as Slurm sends, ends them
        too) the live ones are ended, and every one joined, without waiting on their pipes (gymnasium's close would
        wait for the answers to the call under way, some read already, forever)."""
        env = self.env
        if env.closed:
            return
        if not self.pending and all(process.is_alive() for process in env.processes):
            try:
                env.close(**kwargs)
                return
            except (EOFError, OSError):  # one ended since
                pass
        for pipe in env.parent_pipes:
            if pipe is not None:
                pipe.close()
        _end(env.processes)
        env.closed = True  # else its __del__ would try again

    def __repr__(self) -> str:
        return f"WorkerVectorEnv(num_envs={self.num_envs}, workers={self.workers})"
