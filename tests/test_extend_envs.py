"""Batched torch envs of one's own (``envs.base.TorchVectorEnv`` subclasses): mistakes in them are named as theirs."""

from __future__ import annotations

import re
import types

import gymnasium as gym
import numpy as np
import pytest
import torch

import flipes
from envs.base import TorchVectorEnv
from flipes.errors import UsageError
from flipes.rl import make_vector_env, run_episodes
from flipes.rl.envs import EnvError, check_step


class NanReach(TorchVectorEnv):
    """Move a point to a goal; its reward ``-log(distance - radius)`` is nan wherever the point starts inside the
    radius (4 > every start's distance: every reward of the first step is nan)."""

    state_dim = 4

    def __init__(self, num_envs=1, max_episode_steps=5, device="cpu", dtype=torch.float32, radius=4.0):
        self.radius = radius
        obs, action = gym.spaces.Box(-2, 2, (4,), np.float32), gym.spaces.Box(-1, 1, (2,), np.float32)
        super().__init__(num_envs, max_episode_steps, device, dtype, obs, action)

    def dynamics(self, state, action):
        return torch.cat([(state[:, :2] + 0.1 * action).clamp(-2, 2), state[:, 2:]], 1)

    def _reward_terminated(self, state, action, next_state):
        distance = (next_state[:, :2] - next_state[:, 2:]).norm(dim=1)
        return -torch.log(distance - self.radius).float(), torch.zeros_like(distance, dtype=torch.bool)

    def _observe(self, state):
        return state.float().clone()

    def _initial_range(self, options):
        return [-1.0] * 4, [1.0] * 4


ENV_ID = "extendtest/NanReach-v0"
gym.register(ENV_ID, vector_entry_point=NanReach)


def test_nan_rewards_of_an_own_envs_first_step_for_finite_actions_are_named_as_the_envs() -> None:
    """nan rewards at a rollout's first step, for finite actions, are refused naming the env's class, how many, and
    the fix in the env; nan actions (the policy's, which a step size can cause) leave the returns nan, as before."""
    env = NanReach(4)
    with pytest.raises(
        UsageError, match=r"^--env: NanReach\.step\(\) returned 4 nan or inf reward\(s\) of 4 at the first step"
    ) as e:
        run_episodes(env, lambda obs: torch.zeros(4, 2), seed=0)
    assert "return finite rewards from every state its reset draws" in str(e.value)
    episodes = run_episodes(env, lambda obs: torch.full((4, 2), float("nan")), seed=0)
    assert episodes.returns.isnan().all()


def test_a_run_whose_own_env_gives_nan_first_rewards_names_the_env_and_its_options(tmp_path) -> None:
    """flipes.train on such an env says it is the env's (not --sigma's), naming the options it was made with."""
    with pytest.raises(UsageError) as e:
        flipes.train(
            env=ENV_ID, env_kwargs={"radius": 3.5}, popsize=4, generations=1, episodes=1, out=str(tmp_path / "r"),
            target=None, plot=False, progress=False, tensorboard=False,
        )  # fmt: skip
    message = str(e.value)
    assert message.startswith("--env: NanReach.step() returned 4 nan or inf reward(s) of 4 at the first step"), message
    assert message.endswith('or check the env and its --env-kwargs {"radius": 3.5}'), message


class Reach(NanReach):
    """NanReach with a finite reward: the base of the broken envs below."""

    def _reward_terminated(self, state, action, next_state):
        distance = (next_state[:, :2] - next_state[:, 2:]).norm(dim=1)
        return -distance.float(), distance < 0.2


class DropsAColumn(Reach):
    def dynamics(self, state, action):
        return super().dynamics(state, action)[:, :3]


class InFloat64(Reach):
    def dynamics(self, state, action):
        return super().dynamics(state, action).double()


class ShortRange(Reach):
    def _initial_range(self, options):
        return [-1.0] * 3, [1.0] * 3


@pytest.mark.parametrize(
    ("env_class", "returned"),
    [(DropsAColumn, "shape (3, 3), dtype float32"), (InFloat64, "shape (3, 4), dtype float64")],
)
def test_a_dynamics_returning_another_shape_or_dtype_than_the_state_is_named_at_that_step(env_class, returned) -> None:
    """An own env's dynamics whose next states are not (N, state_dim) in the env's dtype is refused at the step that
    returned them, naming the class, what it returned and what to return (torch failed only at a later autoreset, as
    index_copy_'s error), and the env keeps its states of before that step."""
    env = env_class(3)
    env.reset(seed=0)
    before = env.state.clone()
    expected = f"{env_class.__name__}.dynamics returned a tensor of {returned}, on cpu for 3 envs; return their next "
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}states, shape \\(3, 4\\), dtype float32, on cpu"):
        env.step(torch.zeros(3, 2))
    assert torch.equal(env.state, before)


def test_initial_bounds_of_another_length_than_state_dim_are_refused_where_the_env_is_made() -> None:
    """An own env's _initial_range giving bounds of another length than state_dim is refused at construction, naming
    both lengths (it was a broadcasting error in reset, naming neither)."""
    with pytest.raises(ValueError, match=r"^ShortRange\._initial_range returned bounds of shapes \(3,\) and \(3,\) for "
                       r"state_dim 4; return two lists of 4 numbers"):  # fmt: skip
        ShortRange(2)


class NoSpaces(gym.vector.VectorEnv):
    """A hand-written vector env that sets its batched spaces but not one env's (single_observation_space etc.)."""

    def __init__(self, num_envs: int = 1) -> None:
        self.num_envs, self.metadata = num_envs, {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}
        self.observation_space = gym.spaces.Box(-1, 1, (num_envs, 3), np.float32)
        self.action_space = gym.spaces.MultiBinary(num_envs)


gym.register("extendtest/NoSpaces-v0", vector_entry_point=NoSpaces)


def test_an_own_vector_env_without_one_envs_spaces_is_named_where_it_is_made() -> None:
    """An id whose vector env sets no single_observation_space nor single_action_space is refused where flipes makes
    it, naming the class, both attributes and what to set (it was an AttributeError of flipes' NumpyToTorch)."""
    with pytest.raises(EnvError, match=r"NoSpaces-v0's vector env NoSpaces sets no single_observation_space nor "
                       r"single_action_space; set them in its __init__ to one env's spaces"):  # fmt: skip
        make_vector_env("extendtest/NoSpaces-v0", 2, note=None)


def test_the_first_step_check_reads_no_actions_where_the_rewards_are_finite() -> None:
    """check_step's first-step reward check converts the actions only where a reward is nan or inf, and then leaves
    actions it cannot read as numbers (a Dict space's dict) alone: it neither fails on them nor blames the env."""
    env = types.SimpleNamespace(num_envs=2, single_observation_space=gym.spaces.Box(-1, 1, (3,), np.float32))
    flags, actions = torch.zeros(2, dtype=torch.bool), {"move": np.ones((2, 2))}
    for reward in (torch.ones(2), torch.full((2,), float("nan"))):
        check_step((torch.zeros(2, 3), reward, flags, flags, {}), env, actions=actions)
    with pytest.raises(UsageError, match=r"^--env: SimpleNamespace\.step\(\) returned 2 nan or inf reward"):
        check_step((torch.zeros(2, 3), torch.full((2,), float("nan")), flags, flags, {}), env, actions=np.ones((2, 2)))
