"""WorkerVectorEnv's failures name the right worker of how many, its pid and how it failed, and close() then ends
every worker: an env raising in reset or step, a worker ended while idle, one ended mid-step by a signal or an exit
of its own, a call cut short in the parent. Run in this process (the workers are processes of their own); a call or
close that hangs fails its test after 60 s."""

from __future__ import annotations

import multiprocessing.connection
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from helpers import HANG_S, bounded, closed_with_none_alive, workers

from flipes.errors import EnvWorkerError, WorkerEndedError
from flipes.rl.workers import RemoteTraceback, WorkerVectorEnv

STALL = 2  # the action on which StallOrExit's copy sleeps (until ended), mid-step
EXIT = 3  # the action on which StallOrExit's copy ends its worker process with exit status 3, mid-step


class StallOrExit(CartPoleEnv):
    """CartPole whose copy given action STALL never answers (sleeps), and given EXIT ends its process (status 3)."""

    def step(self, action: Any) -> Any:
        if int(action) == EXIT:
            os._exit(3)
        if int(action) == STALL:
            time.sleep(3600)
        return super().step(action)


class SecondWorkerRefuses(CartPoleEnv):
    """CartPole that cannot be made in the second worker process (as a simulator whose licence or port is taken)."""

    def __init__(self, **kwargs: Any) -> None:
        if multiprocessing.current_process().name.endswith("-1"):  # gymnasium's name for its worker 2
            raise RuntimeError("no licence left for a second copy of the simulator")
        super().__init__(**kwargs)


@pytest.fixture
def stall_or_exit() -> Iterator[str]:
    """The id of StallOrExit, registered in this process only (the workers take its spec from here)."""
    env_id = "flipes_test/StallOrExit-v0"
    gym.register(env_id, entry_point=StallOrExit, max_episode_steps=500)
    try:
        yield env_id
    finally:
        del gym.registry[env_id]


def test_an_env_raising_in_reset_or_step_names_the_first_raising_worker_of_three_its_pid_and_the_error() -> None:
    """A negative seed makes gymnasium's reset raise, an action outside Discrete(2) makes CartPole's step raise: the
    EnvWorkerError names the first worker whose env raised (of 3, others raising too), that worker's own pid, the call,
    and the env's error, with the worker's traceback as its cause; the env then resets and steps again, and closes."""
    with workers("CartPole-v1", 6, 3) as env:
        pids = [process.pid for process in env.env.processes]
        bounded(lambda: env.reset(seed=0))  # first: gymnasium's env checker fails every step after a first reset that raised
        with pytest.raises(EnvWorkerError) as raised:
            bounded(lambda: env.reset(seed=[0, 1, 2, -1, 4, -5]))
        assert not isinstance(raised.value, WorkerEndedError)
        assert str(raised.value) == (
            f"an env of worker 2 of 3 (pid {pids[1]}) raised in reset: "
            "gymnasium.error.Error: Seed must be greater or equal to zero, actual value: -1"
        )
        assert isinstance(raised.value.__cause__, RemoteTraceback) and "Traceback" in str(raised.value.__cause__)
        bounded(lambda: env.reset(seed=0))
        with pytest.raises(EnvWorkerError) as raised:
            bounded(lambda: env.step(np.array([0, 1, 0, 1, 7, 9])))
        with pytest.raises(AssertionError) as here:  # the same error, raised in this process
            CartPoleEnv().step(np.int64(7))
        assert str(raised.value) == f"an env of worker 3 of 3 (pid {pids[2]}) raised in step: AssertionError: {here.value}"
        assert "cartpole.py" in str(raised.value.__cause__)
        obs, *_ = bounded(lambda: env.step(np.zeros(6, dtype=np.int64)))
        assert obs.shape == (6, 4)
        assert closed_with_none_alive(env)
        assert [process.exitcode for process in env.env.processes] == [0, 0, 0]  # gymnasium's own close: ended cleanly


def test_a_worker_ended_while_idle_is_named_with_its_signal_at_the_next_step_and_close_returns() -> None:
    """Worker 1 of 2 ended by SIGTERM between two calls: the next step fails to send to it, and raises WorkerEndedError
    naming worker 1 of 2, its pid and the signal (no out-of-memory note: that is SIGKILL's), not a bare
    BrokenPipeError; close() then returns with no worker left."""
    with workers("CartPole-v1", 4, 2) as env:
        bounded(lambda: env.reset(seed=0))
        victim = env.env.processes[0]
        os.kill(victim.pid, signal.SIGTERM)
        assert multiprocessing.connection.wait([victim.sentinel], timeout=HANG_S), "worker 1 still runs"
        with pytest.raises(WorkerEndedError) as raised:
            bounded(lambda: env.step(np.zeros(4, dtype=np.int64)))
        assert str(raised.value) == f"env worker 1 of 2 (pid {victim.pid}) was killed by SIGTERM during a step of its envs"
        assert closed_with_none_alive(env)


def test_a_worker_exiting_mid_step_is_named_with_its_exit_status(stall_or_exit: str) -> None:
    """An env whose step ends its worker process with exit status 3 (as C code calling exit() does): the step raises
    WorkerEndedError naming worker 2 of 3, its pid and the exit status; close() then returns with no worker left."""
    with workers(stall_or_exit, 6, 3) as env:
        bounded(lambda: env.reset(seed=0))
        victim = env.env.processes[1]
        with pytest.raises(WorkerEndedError) as raised:
            bounded(lambda: env.step(np.array([0, 1, EXIT, 0, 1, 0])))
        assert str(raised.value) == f"env worker 2 of 3 (pid {victim.pid}) exited with status 3 during a step of its envs"
        assert closed_with_none_alive(env)


@pytest.mark.parametrize("wait", ["poll", "multiprocessing"])
def test_a_worker_found_ended_before_its_pipe_is_read_is_named_with_its_signal(wait: str) -> None:
    """Worker 2 of 3, stopped so that it cannot answer, is killed (SIGKILL) once the step is sent and has ended before
    the wait for the answers begins, so the wait finds its end (not only its closed pipe, as where it dies while
    waited on): the step raises WorkerEndedError naming worker 2 of 3, its pid, and SIGKILL with the out-of-memory
    note, with poll(2)'s wait and with multiprocessing's (``wait``, the one where there is no poll(2))."""
    with workers("CartPole-v1", 6, 3) as env:
        if wait == "multiprocessing":
            env.poll = None
        bounded(lambda: env.reset(seed=0))
        victim = env.env.processes[1]
        os.kill(victim.pid, signal.SIGSTOP)
        send = env.env.step_async

        def send_then_kill(actions: np.ndarray) -> None:
            send(actions)
            os.kill(victim.pid, signal.SIGKILL)
            assert multiprocessing.connection.wait([victim.sentinel], timeout=HANG_S), "worker 2 still runs"

        env.env.step_async = send_then_kill
        with pytest.raises(WorkerEndedError) as raised:
            bounded(lambda: env.step(np.zeros(6, dtype=np.int64)))
        assert str(raised.value) == (
            f"env worker 2 of 3 (pid {victim.pid}) was killed by SIGKILL (the kernel's out-of-memory killer sends it: "
            "see dmesg) during a step of its envs"
        )
        assert closed_with_none_alive(env)


def test_close_after_a_step_cut_short_here_ends_a_worker_still_in_that_step(stall_or_exit: str) -> None:
    """A step cut short in this process once sent (a Ctrl-C's KeyboardInterrupt) while worker 2's env is stuck in it:
    close() ends the workers rather than wait for that step's answers (gymnasium's close waited forever), and returns
    with no worker left, worker 2 ended by SIGTERM (which lets an env's own handler clean up; SIGKILL is the fallback
    for one that does not end)."""
    with workers(stall_or_exit, 4, 2) as env:
        bounded(lambda: env.reset(seed=0))
        send = env.env.step_async

        def send_then_interrupt(actions: np.ndarray) -> None:
            send(actions)
            raise KeyboardInterrupt

        env.env.step_async = send_then_interrupt
        with pytest.raises(KeyboardInterrupt):
            env.step(np.array([0, 1, STALL, 0]))
        assert closed_with_none_alive(env)
        assert env.env.processes[1].exitcode == -signal.SIGTERM


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 (Windows)")
def test_workers_leave_ctrl_c_and_sigusr1_to_the_process_that_started_them() -> None:
    """SIGINT (a terminal's Ctrl-C reaches the whole process group) and SIGUSR1 (Slurm's time-limit warning) sent to
    each worker end none: the step sent after them (each worker takes a pending signal before it reads the step)
    returns every env's observation, and close() ends the workers cleanly (exit status 0)."""
    with workers("CartPole-v1", 4, 2) as env:
        bounded(lambda: env.reset(seed=0))
        for process in env.env.processes:
            os.kill(process.pid, signal.SIGINT)
            os.kill(process.pid, signal.SIGUSR1)
        obs, *_ = bounded(lambda: env.step(np.zeros(4, dtype=np.int64)))
        assert obs.shape == (4, 4)
        assert closed_with_none_alive(env)
        assert [process.exitcode for process in env.env.processes] == [0, 0]


def test_workers_that_started_are_ended_when_another_fails_to_make_its_env() -> None:
    """Worker 2 of 2 fails to make its env (its traceback is on stderr): the WorkerEndedError raised leaves no worker
    process alive while it is held (a notebook keeps the last error; its traceback held the half-made env, whose
    worker 1 ran on until it was collected)."""
    env_id = "flipes_test/SecondWorkerRefuses-v0"
    gym.register(env_id, entry_point=SecondWorkerRefuses)
    before = set(multiprocessing.active_children())
    try:
        with pytest.raises(WorkerEndedError) as raised:
            bounded(lambda: WorkerVectorEnv(env_id, 4, 2))
        left = [process for process in multiprocessing.active_children() if process not in before]
        for process in left:
            process.kill()
        assert not left, raised.value
    finally:
        del gym.registry[env_id]
