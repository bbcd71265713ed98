"""EnvPool's Atari options that its C++ takes unchecked are refused before any pool is made, naming the value to use."""

from __future__ import annotations

import pytest

from flipes.rl import make_vector_env
from flipes.rl.envs import EnvOptionError


@pytest.mark.parametrize(
    ("option", "value", "fix"),
    [
        ("noop_max", 0, "noop_max=1"),  # EnvPool segfaults at the first reset
        ("stack_num", 0, "stack_num=1"),  # a segfault too
        ("img_height", 0, "img_height=84"),  # OpenCV aborts the process
        ("frame_skip", 0, "frame_skip=1"),  # no frame ever advances: no episode ends
        ("repeat_action_probability", 1.5, "[0, 1]"),  # taken silently: every action sticks
        ("repeat_action_probability", -0.1, "[0, 1]"),
    ],
)
def test_atari_options_that_crash_or_freeze_envpool_are_refused_naming_the_fix(option: str, value: float, fix: str) -> None:
    """An EnvPool Atari option whose value would crash the process at its first reset, freeze the game or be a
    probability outside [0, 1] raises an EnvOptionError naming the option, its value and the fix, when the vector env
    is made (before any reset, which would crash)."""
    envpool = pytest.importorskip("envpool")
    if "Pong-v5" not in envpool.list_all_envs():
        pytest.skip("EnvPool has no Atari ids here")
    with pytest.raises(EnvOptionError, match=rf"{option}.*{value}.*{__import__('re').escape(fix)}"):
        make_vector_env("Pong-v5", 2, threads=1, **{option: value})


def test_atari_options_at_their_least_valid_values_make_an_env_that_steps() -> None:
    """The least values the check lets through (1 no-op, 1 frame, probability 1) make a Pong pool that resets and
    steps."""
    envpool = pytest.importorskip("envpool")
    if "Pong-v5" not in envpool.list_all_envs():
        pytest.skip("EnvPool has no Atari ids here")
    import torch

    env = make_vector_env("Pong-v5", 2, threads=1, noop_max=1, stack_num=1, frame_skip=1, repeat_action_probability=1.0)
    obs, _ = env.reset(seed=0)
    obs, reward, *_ = env.step(torch.zeros(2, dtype=torch.int64))
    assert obs.shape == (2, 1, 84, 84) and reward.shape == (2,)
    env.close()


def test_the_bright_spot_env_resets_unseeded_as_gymnasium_envs_do() -> None:
    """``cnntest/BrightSpot-v0`` made by ``gymnasium.make_vec`` resets without a seed (gymnasium's plain ``reset()``),
    giving one 36x36 image per env holding one 8x8 white spot, and seeded resets stay a function of the seed."""
    import gymnasium as gym
    import image_env  # noqa: F401  registers cnntest/BrightSpot-v0
    import torch

    env = gym.make_vec("cnntest/BrightSpot-v0", num_envs=3)
    obs, _ = env.reset()
    assert obs.shape == (3, 1, 36, 36) and obs.dtype == torch.uint8
    assert ((obs == 255).flatten(1).sum(1) == 64).all()
    assert torch.equal(env.reset(seed=4)[0], env.reset(seed=4)[0])
