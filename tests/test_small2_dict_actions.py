"""Dict and Tuple action spaces, which flipes' policies and rollouts cannot step (one tensor of actions a step), are
refused before a run with one line naming the space and the fix (a gymnasium ActionWrapper to a flat space), in
run_episodes, RolloutFitness and train, and the fix trains."""

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from helpers import FAST_KW

import flipes
from flipes.errors import UsageError
from flipes.rl import RolloutFitness, run_episodes


class DictActions(gym.Env):
    observation_space = spaces.Box(-1, 1, (3,), np.float32)
    action_space: gym.Space = spaces.Dict({"move": spaces.Box(-1, 1, (2,), np.float32), "jump": spaces.Discrete(2)})

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> Any:
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action: Any) -> Any:
        self.t += 1
        if isinstance(action, tuple):
            action = dict(zip(("move", "jump"), action, strict=True))
        reward = float(action["jump"] - np.square(action["move"]).sum())
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), reward, self.t >= 4, False, {}


class TupleActions(DictActions):
    action_space = spaces.Tuple((spaces.Box(-1, 1, (2,), np.float32), spaces.Discrete(2)))


class FlatToDict(gym.ActionWrapper):
    """The recipe the refusal names: a flat Box(3), its last entry > 0 the jump."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.action_space = spaces.Box(-1, 1, (3,), np.float32)

    def action(self, action: np.ndarray) -> dict:
        return {"move": action[:2], "jump": int(action[2] > 0)}


for name, entry in (("DictActions", DictActions), ("TupleActions", TupleActions)):
    if f"small2/{name}-v0" not in gym.registry:
        gym.register(f"small2/{name}-v0", entry_point=entry)


def dict_or_tuple(obs: torch.Tensor, kind: str) -> Any:
    move, jump = torch.zeros(obs.shape[0], 2), torch.ones(obs.shape[0], dtype=torch.int64)
    return {"move": move, "jump": jump} if kind == "Dict" else (move, jump)


@pytest.mark.parametrize("env_class", [DictActions, TupleActions])
def test_rollouts_refuse_dict_and_tuple_actions_naming_the_wrapper(env_class: type[gym.Env]) -> None:
    """run_episodes with a model that returns such actions, and RolloutFitness, raise a UsageError naming the space's
    kind and gymnasium.ActionWrapper (not torch's dtype error, nor the recurrent policy's)."""
    env = gym.vector.SyncVectorEnv([env_class] * 2)
    kind = type(env.single_action_space).__name__
    expected = rf"^--env: .*actions are a {kind} .*gymnasium\.ActionWrapper .* builds the {kind}"
    with pytest.raises(UsageError, match=expected):
        run_episodes(env, lambda obs: dict_or_tuple(obs, kind), seed=0)
    with pytest.raises(UsageError, match=expected):
        RolloutFitness(env)


def test_train_refuses_dict_actions_before_the_policy_does(tmp_path: Path) -> None:
    """flipes.train on the Dict env refuses it before the MLP policy's own refusal (whose --model advice would stop at
    the first step) and writes no run."""
    with pytest.raises(UsageError, match=r"^--env: small2/DictActions-v0: .*Dict .*ActionWrapper"):
        flipes.train(**{**FAST_KW, "env": "small2/DictActions-v0", "generations": 1}, out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_the_named_wrapper_makes_the_env_steppable() -> None:
    """The env wrapped as the refusal says, to a flat Box, runs its episodes: returns of the constant action
    (0, 0, 1), move 0 and jump, are 1 per step, 4 steps."""
    env = gym.vector.SyncVectorEnv([lambda: FlatToDict(DictActions())] * 2)
    episodes = run_episodes(env, lambda obs: torch.tensor([0.0, 0.0, 1.0]).expand(obs.shape[0], 3), seed=0)
    assert episodes.returns.tolist() == [4.0, 4.0]
