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
import os
import signal
import warnings
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torch import Tensor

from flipes.rl.mujoco_log import makes_mujoco, mujoco_warnings_once
from flipes.rl.spaces import flat_observation_space, flatten_observations


class EnvBlock(gym.Env):
    """``size`` copies of ``env_id`` (envs ``offset .. offset+size-1`` of the whole vector env)
    as one gymnasium env; it never ends itself (its copies autoreset on their next step, NEXT_STEP)."""

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
        obs, _ = self.env.reset(seed=block_seeds if block_seeds is not None else seed)
        zero = np.zeros(self.size, dtype=np.int8)
        return {"obs": obs, "reward": np.zeros(self.size), "terminated": zero, "truncated": zero}, {}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        obs, reward, terminated, truncated, _ = self.env.step(action)
        out = {"obs": obs, "reward": reward, "terminated": terminated.astype(np.int8), "truncated": truncated.astype(np.int8)}
        return out, 0.0, False, False, {}

    def close(self) -> None:
        self.env.close()


def _worker_block(parent: int, env_id: str, size: int, offset: int, kwargs: dict[str, Any], mujoco: bool = False) -> EnvBlock:
    """An :class:`EnvBlock` made in its worker process, which leaves Ctrl-C to the process that started it
    (``parent``): a terminal's Ctrl-C reaches every process of its group, and a worker ended by it would fail the
    step under way instead of letting training stop after its generation with a checkpoint. SIGTERM still ends a
    worker: multiprocessing stops the workers of an env left open at exit with it (ignored, the exit would hang).
    gymnasium also makes one block in the parent itself, for the spaces: signals are left as they are there.
    ``mujoco``: the env is one of gymnasium's MuJoCo envs (MuJoCo is imported first, to collect its warnings)."""
    worker = os.getpid() != parent
    if worker:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # MuJoCo's compiler warnings: the parent reports them once (its own copy), a worker drops its block's; MuJoCo
    # is imported for its envs only (a Box2D worker need not import it, nor fail where MUJOCO_GL names no backend)
    with mujoco_warnings_once(report=not worker, load=mujoco):
        return EnvBlock(env_id, size, offset, kwargs)


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
    """

    def __init__(self, env_id: str, num_envs: int, workers: int, device: str | torch.device = "cpu", **kwargs: Any) -> None:
        if workers < 1 or num_envs % workers:
            raise ValueError(f"{workers} workers cannot share {num_envs} envs equally; pick a divisor of {num_envs}")
        self.num_envs, self.workers, self.device = num_envs, workers, torch.device(device)
        size = num_envs // workers
        mujoco = makes_mujoco(env_id)
        fns = [functools.partial(_worker_block, os.getpid(), env_id, size, k * size, kwargs, mujoco) for k in range(workers)]
        # forkserver: forking this process itself fails with ENOMEM once it holds large envs (seen at
        # N = 1024 MuJoCo envs), and spawn re-imports everything per worker
        context = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        single = gym.make_vec(env_id, num_envs=1, vectorization_mode="sync", **kwargs)
        self.source_observation_space, self.single_action_space = single.single_observation_space, single.single_action_space
        single.close()
        # before the workers start: a space that cannot be flattened must not leave them behind
        self.single_observation_space = flat_observation_space(self.source_observation_space) or self.source_observation_space
        self.env = gym.vector.AsyncVectorEnv(fns, shared_memory=True, context=context)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}
        self.spec = None

    def _flat(self, x: Any) -> Tensor:
        """``(workers, envs per worker, ...)`` -> ``(num_envs, ...)``; Dict and Tuple observations flattened."""
        if isinstance(x, dict | tuple):
            x = flatten_observations(self.source_observation_space, x, batch_dims=2)
        return torch.from_numpy(np.ascontiguousarray(x).reshape(self.num_envs, *x.shape[2:])).to(self.device)

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None) -> tuple[Tensor, dict]:
        if seed is not None:
            seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int | np.integer) else [int(s) for s in seed]
            options = {**(options or {}), "seeds": seeds}
        obs, _ = self.env.reset(options=options)
        return self._flat(obs["obs"]), {}

    def step(self, actions: Tensor | np.ndarray) -> tuple[Tensor, Tensor, Tensor, Tensor, dict]:
        a = actions.detach().cpu().numpy() if isinstance(actions, Tensor) else np.asarray(actions)
        obs, _, _, _, _ = self.env.step(a.reshape(self.workers, self.num_envs // self.workers, *a.shape[1:]))
        return (
            self._flat(obs["obs"]),
            self._flat(obs["reward"]),
            self._flat(obs["terminated"]).bool(),
            self._flat(obs["truncated"]).bool(),
            {},
        )

    def close(self, **kwargs: Any) -> None:
        """Close the workers. Where they have ended already (a SIGTERM to the whole process group, as Slurm sends,
        ends them too), gymnasium's close fails on a pipe: any still alive are then ended and every one joined. Not
        handled: one worker that died alone while the others live and had answered the step under way (gymnasium's
        close then waits on their pipes for an answer already read)."""
        try:
            with warnings.catch_warnings():  # a step cut short by an error or signal: said where it happened
                warnings.filterwarnings("ignore", message=".*while waiting for a pending call")
                self.env.close(**kwargs)
        except (EOFError, OSError):
            env = self.env
            for process in env.processes:
                if process.is_alive():
                    process.terminate()
            for pipe in env.parent_pipes:
                if pipe is not None:
                    pipe.close()
            for process in env.processes:
                process.join()
            env.closed = True  # else its __del__ would try again

    def __repr__(self) -> str:
        return f"WorkerVectorEnv(num_envs={self.num_envs}, workers={self.workers})"
