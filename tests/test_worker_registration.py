"""Env worker processes make an id registered only in the process that starts them."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.classic_control import CartPoleEnv

from flipes.rl.workers import WorkerVectorEnv


def test_workers_make_an_id_registered_after_they_could_import_it_with_its_registered_settings() -> None:
    """An id registered inside a function (a script's ``main()``, a notebook cell) with an importable class is
    unknown to the worker processes, which import only modules: they failed with ``NameNotFound`` and a hint about
    the ``__main__`` guard. They now register the parent's ``EnvSpec``, its settings included: each copy is cut at
    the registered ``max_episode_steps=5`` (truncated at step 5, never terminated that early from these seeds) and
    steps exactly as gymnasium's ``SyncVectorEnv`` of the same id and seeds."""
    env_id = "WorkerRegistrationOnlyHere-v0"
    gym.register(env_id, entry_point=CartPoleEnv, max_episode_steps=5)
    try:
        workers = WorkerVectorEnv(env_id, 4, 2)
        sync = gym.make_vec(env_id, num_envs=4, vectorization_mode="sync")
        try:
            obs, _ = workers.reset(seed=3)
            expected, _ = sync.reset(seed=3)
            np.testing.assert_array_equal(obs.numpy(), expected.astype(np.float32))
            actions = np.array([0, 1, 1, 0])
            for step in range(1, 6):
                obs, _, terminated, truncated, _ = workers.step(torch.as_tensor(actions))
                expected, _, sync_terminated, sync_truncated, _ = sync.step(actions)
                np.testing.assert_array_equal(obs.numpy(), expected.astype(np.float32))
                assert terminated.tolist() == sync_terminated.tolist() == [False] * 4
                assert truncated.tolist() == sync_truncated.tolist() == [step == 5] * 4
        finally:
            workers.close()
            sync.close()
    finally:
        del gym.registry[env_id]
