"""Own envs' first-step reward check, dynamics and bounds checks, and class plug-ins: the edges of what they refuse."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import NanRewardEnv

import flipes
from envs.base import TorchVectorEnv
from flipes.errors import UsageError
from flipes.rl import make_vector_env, run_episodes
from flipes.rl.envs import EnvError


class Walk(TorchVectorEnv):
    """A point moved by its action, rewarded ``-x²`` less a control cost; nan after its first ``nan_from`` steps (an env
    broken later in an episode, or at its reset states for 0). ``unbounded``: its action Box has no bounds."""

    state_dim = 2

    def __init__(self, num_envs=1, max_episode_steps=4, device="cpu", dtype=torch.float32, nan_from=None, unbounded=False):
        self.nan_from, self.t = nan_from, 0
        high = np.inf if unbounded else 1.0
        obs, action = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32), gym.spaces.Box(-high, high, (2,), np.float32)
        super().__init__(num_envs, max_episode_steps, device, dtype, obs, action)

    def dynamics(self, state, action):
        return state + 0.1 * action.clamp(-1, 1)

    def _reward_terminated(self, state, action, next_state):
        reward = -next_state[:, 0].square() - 0.01 * action.square().sum(1)  # a control cost: inf for a huge action
        self.t += 1
        if self.nan_from is not None and self.t > self.nan_from:
            reward = reward * float("nan")
        return reward.float(), torch.zeros(len(state), dtype=torch.bool)

    def _observe(self, state):
        return state.float().clone()

    def _initial_range(self, options):
        return [-1.0, -1.0], [1.0, 1.0]


def test_the_reward_check_reads_the_first_step_alone() -> None:
    """Rewards that turn nan only after the first step, for finite actions, are left to the returns (nan), unread:
    the check costs one host read per rollout, not one per step."""
    episodes = run_episodes(Walk(3, nan_from=1), lambda obs: torch.zeros(3, 2), seed=0)
    assert episodes.returns.isnan().all() and episodes.lengths.tolist() == [4, 4, 4]


def test_inf_actions_leave_non_finite_first_rewards_to_the_returns() -> None:
    """inf actions (a policy overflowed by its step size) with non-finite first rewards are the policy's: the returns
    are nan (said as --sigma's by training), not an error naming the env."""
    env = Walk(3, nan_from=0)
    episodes = run_episodes(env, lambda obs: torch.full((3, 2), float("inf")), seed=0)
    assert episodes.returns.isnan().all()


class OnMeta(Walk):
    def dynamics(self, state, action):
        return super().dynamics(state, action).to("meta")


def test_a_dynamics_returning_states_on_another_device_is_named_and_the_states_kept() -> None:
    """Next states of the right shape and dtype on another device than the state's (here "meta") are refused at that
    step naming the device, and the env keeps its states of before it."""
    env = OnMeta(3)
    env.reset(seed=0)
    before = env.state.clone()
    expected = "OnMeta.dynamics returned a tensor of shape (3, 2), dtype float32, on meta for 3 envs; return their next "
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}states, shape \\(3, 2\\), dtype float32, on cpu"):
        env.step(torch.zeros(3, 2))
    assert torch.equal(env.state, before)


class ShortHigh(Walk):
    def _initial_range(self, options):
        return [-1.0, -1.0], [1.0]


class ShortLow(Walk):
    def _initial_range(self, options):
        return [-1.0], [1.0, 1.0]


class NestedBounds(Walk):
    def _initial_range(self, options):
        return [[-1.0, -1.0]], [[1.0, 1.0]]


@pytest.mark.parametrize(
    ("env_class", "shapes"), [(ShortLow, "(1,) and (2,)"), (ShortHigh, "(2,) and (1,)"), (NestedBounds, "(1, 2) and (1, 2)")]
)
def test_initial_bounds_of_any_other_shape_than_state_dim_are_refused(env_class, shapes) -> None:
    """Bounds of which one alone is short, or that hold state_dim numbers in another shape, are refused where the
    env is made, naming both shapes."""
    with pytest.raises(
        ValueError, match=f"^{env_class.__name__}\\._initial_range returned bounds of shapes {re.escape(shapes)} "
    ):
        env_class(2)


def test_finite_actions_of_an_unbounded_space_that_overflow_the_reward_are_left_to_the_returns() -> None:
    """Huge finite actions of an unbounded Box (a step size's doing: nothing squashes them) whose control cost overflows
    to inf at the first step are not named as the env's: the returns are -inf, said as --sigma's by training."""
    episodes = run_episodes(Walk(3, unbounded=True), lambda obs: torch.full((3, 2), 1e25), seed=0)
    assert (episodes.returns == -float("inf")).all()


class Point(flipes.nn.Vector):
    """A model factory written as a class: model(env) builds the module, as flipes calls it."""

    def __init__(self, env) -> None:
        super().__init__(torch.zeros(2))


def distance(model, pop):
    return -(model() - 1).square().sum(-1)


class Evaluate:
    def __init__(self, model) -> None:  # takes evaluate's argument, so its signature alone passes
        self.model = model


def test_a_model_class_is_built_while_an_evaluate_class_is_refused_naming_an_instance(tmp_path) -> None:
    """A class given as the model factory trains (a class called builds the module, as a factory does); one given as
    evaluate, called for a float, is refused as a class before training, naming an instance as the fix."""
    kwargs = {
        "env": "none",
        "fitness": distance,
        "model": Point,
        "popsize": 4,
        "generations": 1,
        "plot": False,
        "progress": False,
    }
    flipes.train(**kwargs, out=str(tmp_path / "a"))
    assert (tmp_path / "a" / "checkpoint.pt").exists()
    with pytest.raises(UsageError, match=r"^evaluate: test_review_extend:Evaluate is a class") as e:
        flipes.train(**kwargs, evaluate=Evaluate, out=str(tmp_path / "b"))
    assert "evaluate = Evaluate() in test_review_extend" in str(e.value), e.value


class ShapeForSpace(gym.vector.VectorEnv):
    """A hand-written vector env that sets one env's action space to its shape, not to a gymnasium Space."""

    def __init__(self, num_envs: int = 1) -> None:
        self.num_envs, self.metadata = num_envs, {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}
        self.single_observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
        self.single_action_space = (2,)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.spaces.Box(-1, 1, (num_envs, 2), np.float32)


gym.register("reviewtest/ShapeForSpace-v0", vector_entry_point=ShapeForSpace)


def test_an_own_vector_env_whose_single_space_is_no_gymnasium_space_is_named_where_it_is_made() -> None:
    """A single_action_space set to something other than a gymnasium Space (a shape) is refused where flipes makes the
    env, naming that attribute alone."""
    with pytest.raises(EnvError, match=r"ShapeForSpace-v0's vector env ShapeForSpace sets no single_action_space; set it "):
        make_vector_env("reviewtest/ShapeForSpace-v0", 2, note=None)


class NanSingle(NanRewardEnv):
    """A single gymnasium env of one's own whose every reward is nan, vectorized by gymnasium's SyncVectorEnv."""


gym.register("reviewtest/NanSingle-v0", entry_point=NanSingle, max_episode_steps=3)


@pytest.mark.filterwarnings("ignore:.*The reward is a NaN value")  # gymnasium's passive env checker
def test_nan_first_rewards_of_an_own_single_gymnasium_env_name_that_env() -> None:
    """An own gym.Env's nan first rewards, for finite actions, are refused naming its class, not gymnasium's
    SyncVectorEnv that holds its copies."""
    env = make_vector_env("gymnasium-sync:reviewtest/NanSingle-v0", 2, note=None)
    with pytest.raises(UsageError, match=r"^--env: NanSingle\.step\(\) returned 2 nan or inf reward\(s\) of 2 at the first"):
        run_episodes(env, lambda obs: torch.zeros(2, 1), seed=0)
