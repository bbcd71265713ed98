"""The first-step checks of a rollout are the same whether its envs are stepped all at once or in pipelined halves."""

import pytest
import torch

from flipes.rl.envs import NonFiniteRewards
from flipes.rl.rollout import run_episodes


@pytest.mark.parametrize("pipeline", [False, True])
def test_nan_first_rewards_of_envpool_are_named_as_the_envs_plain_and_pipelined(pipeline: bool) -> None:
    """EnvPool's Hopper made with a nan ctrl_cost_weight returns nan rewards at its first step for zero actions: the
    rollout refuses them as the env's (NonFiniteRewards naming EnvPoolVectorEnv.step()), pipelined as well as plain,
    instead of returning nan returns that a run would blame on --sigma."""
    pytest.importorskip("envpool")
    from flipes.rl.envpool_vec import EnvPoolVectorEnv

    env = EnvPoolVectorEnv("Hopper-v4", 4, threads=1, ctrl_cost_weight=float("nan"))
    try:
        with pytest.raises(
            NonFiniteRewards, match=r"EnvPoolVectorEnv\.step\(\) returned \d nan or inf reward\(s\) of \d at the first"
        ):
            run_episodes(env, lambda obs: torch.zeros(obs.shape[0], 3), seed=0, max_steps=3, pipeline=pipeline)
    finally:
        env.close()
