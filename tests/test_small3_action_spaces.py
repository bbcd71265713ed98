"""Action spaces flipes cannot step one tensor of actions through (Text, Sequence, OneOf, Graph, as Dict and Tuple) are
refused before a run with one line naming the space and the fix; the spaces it steps are not."""

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from flipes.errors import UsageError
from flipes.rl import RolloutFitness, run_episodes
from flipes.rl.rollout import check_action_space

UNSTEPPED = {
    "Text": spaces.Text(5),
    "Sequence": spaces.Sequence(spaces.Discrete(3)),
    "OneOf": spaces.OneOf((spaces.Discrete(2), spaces.Box(-1, 1, (2,), np.float32))),
    "Graph": spaces.Graph(spaces.Box(-1, 1, (2,), np.float32), spaces.Discrete(2)),
}


def env_acting_in(space: gym.Space) -> type[gym.Env]:
    class Env(gym.Env):
        observation_space = spaces.Box(-1, 1, (3,), np.float32)
        action_space = space

        def reset(self, *, seed: int | None = None, options: dict | None = None) -> Any:
            super().reset(seed=seed)
            return np.zeros(3, np.float32), {}

        def step(self, action: Any) -> Any:
            return np.zeros(3, np.float32), 0.0, True, False, {}

    return Env


@pytest.mark.parametrize("kind", list(UNSTEPPED))
def test_rollouts_refuse_an_action_space_they_cannot_step_in_one_line(kind: str) -> None:
    """run_episodes with a model of one's own, and RolloutFitness, raise a one-line UsageError naming the space's kind
    and gymnasium.ActionWrapper, before any step (the model is never called)."""
    env = gym.vector.SyncVectorEnv([env_acting_in(UNSTEPPED[kind])] * 2)
    expected = rf"^--env: (run_episodes|RolloutFitness): the env's actions are a {kind} .*gymnasium\.ActionWrapper .* {kind} "

    def never(obs: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model was called")

    with pytest.raises(UsageError, match=expected) as raised:
        run_episodes(env, never, seed=0)
    assert "\n" not in str(raised.value)
    with pytest.raises(UsageError, match=expected):
        RolloutFitness(env)


@pytest.mark.parametrize(
    "space",
    [
        spaces.Box(-1, 1, (2,), np.float32),
        spaces.Box(0, 4, (2,), np.int64),
        spaces.Box(-np.inf, np.inf, (3,), np.float64),
        spaces.Discrete(3, start=-1),
        spaces.MultiDiscrete([2, 3]),
        spaces.MultiDiscrete([[2, 3], [4, 5]]),
        spaces.MultiBinary(4),
    ],
    ids=str,
)
def test_the_spaces_flipes_steps_are_not_refused(space: gym.Space) -> None:
    """Box (float, integer, unbounded), Discrete with a start, MultiDiscrete of 1 and 2 dimensions and MultiBinary pass
    check_action_space, and RolloutFitness is made on a vector env of them."""
    check_action_space(space, "test")
    RolloutFitness(gym.vector.SyncVectorEnv([env_acting_in(space)] * 2))
