"""Pixels from a user's side: EnvPool's Atari options that its C++ takes unchecked are refused before any pool is made,
the image test env resets unseeded, and the CNN population's logits equal plain torch with weights built from the raw
noise."""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import flipes
from flipes.nn import FlipoutConv2d, FlipoutLinear
from flipes.rl import CNNPolicy, make_vector_env
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
    is made (before any reset, which would crash), as flipes' own line."""
    envpool = pytest.importorskip("envpool")
    if "Pong-v5" not in envpool.list_all_envs():
        pytest.skip("EnvPool has no Atari ids here")
    named = "".join(f"(?=.*{re.escape(str(part))})" for part in (option, value, fix))  # all three, in any order
    with pytest.raises(EnvOptionError, match=named) as refused:
        make_vector_env("Pong-v5", 2, threads=1, **{option: value})
    assert "env's own error" not in str(refused.value)  # flipes' line, not presented as EnvPool's


def test_atari_options_at_their_least_valid_values_make_an_env_that_steps() -> None:
    """The least values the check lets through (1 no-op, 1 frame, probability 1) make a Pong pool that resets and
    steps."""
    envpool = pytest.importorskip("envpool")
    if "Pong-v5" not in envpool.list_all_envs():
        pytest.skip("EnvPool has no Atari ids here")
    env = make_vector_env("Pong-v5", 2, threads=1, noop_max=1, stack_num=1, frame_skip=1, repeat_action_probability=1.0)
    obs, _ = env.reset(seed=0)
    obs, reward, *_ = env.step(torch.zeros(2, dtype=torch.int64))
    assert obs.shape == (2, 1, 84, 84) and reward.shape == (2,)
    env.close()


def test_the_bright_spot_env_resets_unseeded_as_gymnasium_envs_do() -> None:
    """``cnntest/BrightSpot-v0`` made by ``gymnasium.make_vec`` resets without a seed (gymnasium's plain ``reset()``),
    giving one 36x36 image per env holding one 8x8 white spot, and seeded resets stay a function of the seed."""
    import image_env  # noqa: F401  registers cnntest/BrightSpot-v0

    env = gym.make_vec("cnntest/BrightSpot-v0", num_envs=3)
    obs, _ = env.reset()
    assert obs.shape == (3, 1, 36, 36) and obs.dtype == torch.uint8
    assert ((obs == 255).flatten(1).sum(1) == 64).all()
    assert torch.equal(env.reset(seed=4)[0], env.reset(seed=4)[0])


def _member_weight(layer: torch.nn.Module, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Member ``n``'s weight and bias built from the layer's raw noise as DESIGN.md defines them: ``W̄ + σε_g ∘ (r_n s_nᵀ)``
    (kernel dims broadcast, ``g`` the member's ε group) and ``b̄ + σε_b,n ∘ r_n``."""
    noise = layer.noise[0]
    group = n // (noise.size // noise.groups)
    eps = noise.dense_eps()[group]
    kernel = (1,) * (eps.dim() - 2)
    weight = layer.weight + eps * noise.r[n].view(-1, 1, *kernel) * noise.s[n].view(1, -1, *kernel)
    bias_noise = noise.bias_r[n] if noise.bias_r is not None else noise.bias_eps[group]
    return weight, layer.bias + bias_noise * noise.r[n]


@pytest.mark.parametrize(("shape", "noise_rank"), [((2, 36, 40), None), ((36, 40, 3), 2)])
def test_cnn_population_logits_equal_plain_conv2d_with_weights_built_from_the_raw_noise(shape: tuple, noise_rank: int) -> None:
    """In float64, every member's logits from one population pass over (members, episodes, *obs) uint8 frames (channels
    first, or last and guessed so) equal plain ``F.conv2d``/``F.linear`` with weights assembled from the layers' signs and
    ε (not from ``es.member_parameters``), within 1e-11, and its actions are their argmax."""
    torch.manual_seed(0)
    policy = CNNPolicy(gym.spaces.Box(0, 255, shape, np.uint8), gym.spaces.Discrete(5), hidden=(8,)).double()
    es = flipes.FlipES(policy, popsize=4, sigma=0.3, groups=2, noise_rank=noise_rank, seed=7)
    n, k = 4, 3
    frames = torch.randint(0, 256, (n, k, *shape), dtype=torch.uint8)
    images = frames.double() / 255
    images = images.movedim(-1, -3) if policy.channels_last else images
    layers = [m for m in policy.modules() if isinstance(m, FlipoutConv2d | FlipoutLinear)]
    logits = {}
    hook = layers[-1].register_forward_hook(lambda module, args, out: logits.__setitem__("z", out))
    with es.population():
        actions = policy(frames)
        for m in range(n):
            x = images[m]
            params = [_member_weight(layer, m) for layer in layers]
            for (weight, bias), stride in zip(params[:3], (4, 2, 1), strict=True):
                x = F.relu(F.conv2d(x, weight, bias, stride=stride))
            x = F.relu(F.linear(x.flatten(1), *params[3]))
            x = F.linear(x, *params[4])
            torch.testing.assert_close(logits["z"].reshape(n, k, -1)[m], x, rtol=0, atol=1e-11)
            assert torch.equal(actions[m], x.argmax(-1))
    hook.remove()


@pytest.mark.parametrize(
    ("option", "value", "kind"),
    [("repeat_action_probability", "0.25", "a number"), ("noop_max", 2.5, "an integer"), ("frame_skip", None, "an integer"),
     ("episodic_life", "yes", "true or false")],
)  # fmt: skip
def test_envpool_options_of_the_wrong_kind_name_the_option_and_its_kind(option: str, value: object, kind: str) -> None:
    """An EnvPool option given a value of another kind than its default's (a quoted number, a fraction for an integer,
    null) raises an EnvOptionError naming the option, the kind it takes and its default, not pybind's list of EnvPool's
    constructor argument types."""
    envpool = pytest.importorskip("envpool")
    if "Pong-v5" not in envpool.list_all_envs():
        pytest.skip("EnvPool has no Atari ids here")
    with pytest.raises(EnvOptionError, match=rf"takes {option} as {kind}, got {re.escape(repr(value))}.*its default"):
        make_vector_env("Pong-v5", 2, threads=1, **{option: value})


@pytest.mark.parametrize(
    "options",
    [{"episodic_life": 1, "reward_clip": np.int64(0)}, {"noop_max": torch.tensor(2)},
     {"repeat_action_probability": torch.tensor(0.25)}, {"repeat_action_probability": np.float32(0.25)}],
)  # fmt: skip
def test_envpool_options_of_a_kind_envpool_converts_are_taken(options: dict) -> None:
    """Values EnvPool itself takes for an option though their type is not its default's (1 for a true/false option,
    numpy's integers and floats, 0-d tensors) pass flipes' kind check: the pool is made and resets."""
    envpool = pytest.importorskip("envpool")
    if "Pong-v5" not in envpool.list_all_envs():
        pytest.skip("EnvPool has no Atari ids here")
    env = make_vector_env("Pong-v5", 2, threads=1, **options)
    try:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (2, 4, 84, 84)
    finally:
        env.close()


@pytest.mark.parametrize(("option", "value", "error"), [("frame_skip", 0, ValueError), ("img_height", 84.0, TypeError)])
def test_envpool_vector_env_made_directly_refuses_atari_options_naming_them(option: str, value: float, error: type) -> None:
    """``flipes.rl.EnvPoolVectorEnv`` made directly, not through ``make_vector_env``, refuses an Atari option that would
    stall EnvPool (``frame_skip=0``) or one of another kind than its default (``img_height=84.0``) with an error naming
    the option, before EnvPool is made."""
    envpool = pytest.importorskip("envpool")
    if "Pong-v5" not in envpool.list_all_envs():
        pytest.skip("EnvPool has no Atari ids here")
    from flipes.rl import EnvPoolVectorEnv

    with pytest.raises(error, match=rf"^EnvPool's Pong-v5 takes {option} .*got (?:{option}=)?{value!r}"):
        EnvPoolVectorEnv("Pong-v5", 2, threads=1, **{option: value})
