"""Refusals of a step of one's own gym.Env run in gymnasium's AsyncVectorEnv name that env's class, not AsyncVectorEnv
(as for SyncVectorEnv), wherever the class can be known without calling a maker."""

import functools
from collections.abc import Callable

import gymnasium as gym
import pytest
import torch
from helpers import NanRewardEnv

from flipes.errors import UsageError
from flipes.rl import run_episodes
from flipes.rl.envs import step_name


class NanAsync(NanRewardEnv):
    """A single gymnasium env of one's own whose every reward is nan."""


if "small3/NanAsync-v0" not in gym.registry:
    gym.register("small3/NanAsync-v0", entry_point=NanAsync, max_episode_steps=3)

MAKERS: dict[str, Callable[[], gym.vector.VectorEnv]] = {
    "class": lambda: gym.vector.AsyncVectorEnv([NanAsync] * 2, context="fork"),
    "partial": lambda: gym.vector.AsyncVectorEnv([functools.partial(NanAsync)] * 2, context="fork"),
    "make_vec": lambda: gym.make_vec("small3/NanAsync-v0", 2, vectorization_mode="async", vector_kwargs={"context": "fork"}),
}


@pytest.mark.filterwarnings("ignore:.*The reward is a NaN value")  # gymnasium's passive env checker
@pytest.mark.parametrize("how", list(MAKERS))
def test_nan_first_rewards_of_an_own_env_in_async_vector_env_name_its_class(how: str) -> None:
    """AsyncVectorEnv of the class, of a functools.partial of it, and gymnasium.make_vec(id, "async"): the nan first
    rewards are refused naming NanAsync.step()."""
    env = MAKERS[how]()
    try:
        with pytest.raises(UsageError, match=r"^--env: NanAsync\.step\(\) returned 2 nan or inf reward\(s\) of 2 at the first"):
            run_episodes(env, lambda obs: torch.zeros(2, 1), seed=0)
    finally:
        env.close()


def test_an_async_vector_env_is_named_by_a_string_entry_point_and_as_itself_where_unknown() -> None:
    """make_vec of an id whose entry point is a string names the class it resolves to (CartPoleEnv.step()); env_fns that
    are lambdas, whose env is unknown without calling them, leave AsyncVectorEnv.step()."""
    env = gym.make_vec("CartPole-v1", 2, vectorization_mode="async", vector_kwargs={"context": "fork"})
    lam = gym.vector.AsyncVectorEnv([lambda: NanAsync()] * 2, context="fork")
    try:
        assert step_name(env) == "CartPoleEnv.step()" and step_name(lam) == "AsyncVectorEnv.step()"
    finally:
        env.close()
        lam.close()
