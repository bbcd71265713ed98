"""A numpy integer seed resets a TorchVectorEnv exactly as the same Python int does."""

import numpy as np
import pytest

from envs.cartpole import CartPoleVectorEnv


@pytest.mark.parametrize("seed", [np.int64(3), np.int32(3), np.uint8(3)])
def test_numpy_integer_seed_seeds_np_random_like_int(seed: np.integer) -> None:
    """np_random, its seed and the initial states after reset(seed=np.intXX(3)) equal those after reset(seed=3)."""
    ref, env = CartPoleVectorEnv(num_envs=2), CartPoleVectorEnv(num_envs=2)
    obs_ref, _ = ref.reset(seed=3)
    obs, _ = env.reset(seed=seed)
    assert env.np_random_seed == ref.np_random_seed == 3
    assert env.np_random.random() == ref.np_random.random()
    assert obs.tolist() == obs_ref.tolist()
