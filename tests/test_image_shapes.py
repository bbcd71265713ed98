"""Image observations the CNN policy cannot take are refused naming the fix that fits their shape: a grayscale image
without a channel dim is told to get one, a stack of colour frames to be grayed before stacking, one of single-channel
frames to drop that dim, an EnvPool Atari id made
too small to set img_height/img_width of at least the torso's least side; a rank-3 image the torso takes read one way only is
read that way ((84, 84, 5) channels-last), and every shape it took before is read as before."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest

import flipes
from flipes.rl import CNNPolicy, MLPPolicy
from flipes.rl.envpool_vec import envpool_ids
from flipes.rl.policy import torso_min_size
from flipes.rl.rollout import PIPELINE_MIN_ENVS, can_pipeline

ACTION = gym.spaces.Discrete(4)


def image(shape: tuple[int, ...]) -> gym.spaces.Box:
    return gym.spaces.Box(0, 255, shape, np.uint8)


def test_a_grayscale_image_without_a_channel_dim_is_told_to_get_one_not_to_use_the_mlp() -> None:
    """(84, 84) is refused naming a channel dim and the gymnasium wrappers that add one, not --policy mlp."""
    with pytest.raises(ValueError, match=r"grayscale image without a channel dim.*keep_dim=True.*\(1, 84, 84\)") as e:
        CNNPolicy(image((84, 84)), ACTION)
    assert "--policy mlp" not in str(e.value)


def test_a_stack_of_colour_frames_is_told_to_gray_them_before_stacking() -> None:
    """(4, 84, 84, 3) is refused naming FrameStackObservation over GrayscaleObservation, giving (4, H, W)."""
    with pytest.raises(ValueError, match=r"FrameStackObservation\(GrayscaleObservation\(env\), 4\).*\(4, H, W\)") as e:
        CNNPolicy(image((4, 84, 84, 3)), ACTION)
    assert "--policy mlp" not in str(e.value)


def test_a_stack_of_single_channel_frames_is_told_to_drop_the_channel_dim_not_to_gray_them() -> None:
    """(4, 84, 84, 1) and (4, 1, 84, 84), grayscale frames stacked with their channel dim (AtariPreprocessing's
    grayscale_newaxis, GrayscaleObservation(keep_dim=True) under FrameStackObservation), are told to reshape to
    (4, 84, 84), not to make the frames grayscale."""
    for shape in ((4, 84, 84, 1), (4, 1, 84, 84)):
        with pytest.raises(
            ValueError,
            match=r"single-channel frames stacked with their channel dim of 1: drop it.*ReshapeObservation\(env, \(4, 84, 84\)\)",
        ) as e:
            CNNPolicy(image(shape), ACTION)
        assert "colour" not in str(e.value)


def test_frames_stacked_last_are_not_told_to_restack_their_first_dim() -> None:
    """(84, 84, 4, 1): the first dim is no frame count, so the fix reshapes to (84, 84, 4) and names no
    FrameStackObservation of 84 frames; (4, 84, 84, 1) names the 4-frame restack."""
    with pytest.raises(ValueError, match=r"ReshapeObservation\(env, \(84, 84, 4\)\) from gymnasium.wrappers$") as e:
        CNNPolicy(image((84, 84, 4, 1)), ACTION)
    assert "FrameStackObservation" not in str(e.value)
    with pytest.raises(ValueError, match=r"FrameStackObservation\(GrayscaleObservation\(env\), 4\)$"):
        CNNPolicy(image((4, 84, 84, 1)), ACTION)


def test_vectors_are_still_sent_to_the_mlp() -> None:
    """A rank-1 Box, and a rank-2 one too small to be an image the torso takes, are told to use --policy mlp."""
    for shape in ((8,), (3, 4)):
        with pytest.raises(ValueError, match=r"use --policy mlp"):
            CNNPolicy(gym.spaces.Box(-1, 1, shape, np.float32), ACTION)


def test_five_channels_last_are_guessed_last() -> None:
    """(84, 84, 5) is an 84x84 image of 5 channels: its first convolution takes 5 channels."""
    policy = CNNPolicy(image((84, 84, 5)), ACTION)
    assert policy.channels_last and policy.torso[0].weight.shape[1] == 5


def test_wherever_one_reading_of_a_shape_is_an_image_the_torso_takes_the_guess_is_one() -> None:
    """Over rank-3 shapes of sides 1 to 210, where channels-first or channels-last leaves both sides at least the
    torso's least, CNNPolicy builds with the guessed reading, which is the earlier guess (last where the last side is at
    most 4 and the first larger) wherever that one fitted; where neither reading fits, it refuses naming the least side."""
    least = torso_min_size()
    sides = (1, 3, 4, 5, 12, least - 1, least, 64, 84, 210)
    for shape in itertools.product(sides, repeat=3):
        fits = min(shape[1:]) >= least or min(shape[:2]) >= least
        if fits:
            policy = CNNPolicy(image(shape), ACTION, hidden=())
            c = shape[2] if policy.channels_last else shape[0]
            assert policy.torso[0].weight.shape[1] == c, shape
            before = shape[2] <= 4 < shape[0]  # the guess of earlier versions
            if min(shape[:2] if before else shape[1:]) >= least:  # built then: read as then, so its checkpoints load
                assert policy.channels_last == before, shape
        else:
            with pytest.raises(ValueError, match=rf"at least {least}x{least} pixels"):
                CNNPolicy(image(shape), ACTION, hidden=())


@pytest.mark.skipif("Pong-v5" not in envpool_ids(), reason="EnvPool's Atari ids are not installed")
def test_an_envpool_atari_id_made_too_small_is_told_its_img_height_and_width(tmp_path: Path) -> None:
    """Pong-v5 at 30x30 pixels is a --policy UsageError naming img_height and img_width of at least 36."""
    with pytest.raises(flipes.UsageError, match=r"^--policy: Pong-v5: .*img_height and img_width of at least 36"):
        flipes.train(
            env="Pong-v5", policy="cnn", env_kwargs={"img_height": 30, "img_width": 30}, generations=1, out=str(tmp_path),
            progress=False, tensorboard=False, plot=False,
        )  # fmt: skip


def test_the_cnn_is_never_pipelined_and_the_mlp_only_from_pipeline_min_envs() -> None:
    """What BENCHMARKS.md's Atari section says of its rollouts: on an engine that can step half its envs in the
    background (send/recv), the CNN is not pipelined at any number of envs, the MLP only from PIPELINE_MIN_ENVS (128)."""
    space, action = image((4, 84, 84)), gym.spaces.Discrete(6)
    cnn, mlp = CNNPolicy(space, action, hidden=()), MLPPolicy(space, action, hidden=(4,))
    assert PIPELINE_MIN_ENVS == 128
    for n in (64, 128, 1024):
        env = SimpleNamespace(num_envs=n, send=None, recv=None)
        assert not can_pipeline(env, cnn)
        assert can_pipeline(env, mlp) == (n >= PIPELINE_MIN_ENVS)
