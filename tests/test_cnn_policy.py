"""The CNN policy for image observations: each member's actions are its explicit weights run through plain torch,
``flipes.train(policy="cnn")`` learns where a bright spot is, resumes bit for bit and splits the population into
parts, every tensor on the run's device; EnvPool's Atari ids train it by their preset row, evaluate, load and export;
wrong observations are refused naming the fix."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from image_env import BrightSpot
from reference import member_parameters
from torch import Tensor

import flipes
from flipes.checkpoint import load_checkpoint
from flipes.config import TrainConfig, validate
from flipes.errors import UsageError
from flipes.nn import FlipoutConv2d, FlipoutLinear
from flipes.rl import CNNPolicy, make_vector_env, reference_observations
from flipes.rl.envpool_vec import envpool_ids
from flipes.rl.policy import NATURE_TORSO, torso_min_size

SPOT_RUN = dict(env="image_env:cnntest/BrightSpot-v0", policy="cnn", hidden=[32], popsize=32, sigma=0.1, lr=0.05,
                episodes=8, seed=0, progress=False, tensorboard=False, plot=False)  # fmt: skip


def plain_cnn(params: dict[str, Tensor], images: Tensor) -> Tensor:
    """The Nature torso and the fully connected layers in plain torch, from explicit parameters:
    ``(B, C, H, W)`` float images in [0, 1] -> ``(B, outputs)``."""
    x = images
    for i, (_, _, stride) in enumerate(NATURE_TORSO):
        x = F.relu(F.conv2d(x, params[f"torso.{2 * i}.weight"], params[f"torso.{2 * i}.bias"], stride=stride))
    x = x.flatten(1)
    linear = sorted({int(k.split(".")[1]) for k in params if k.startswith("fc.")})
    for j in linear:
        x = F.linear(x, params[f"fc.{j}.weight"], params[f"fc.{j}.bias"])
        if j != linear[-1]:
            x = F.relu(x)
    return x


@pytest.mark.parametrize(("channels_last", "noise_rank"), [(False, 0), (True, 2)])
def test_each_members_actions_are_its_explicit_weights_through_plain_torch(channels_last: bool, noise_rank: int) -> None:
    """In float64, every member's Box actions from one population pass over (members, episodes, C, H, W) uint8
    images (40x44, channels first or last; full-rank or rank-2 noise, 2 ε groups) equal ``2·tanh`` of plain
    ``F.conv2d``/``F.linear`` run with that member's explicit parameters θ + σu_n (within 1e-12); outside the
    population, (episodes, C, H, W) images give the mean network's actions, and one numpy image a numpy action."""
    torch.manual_seed(0)
    shape = (40, 44, 3) if channels_last else (3, 40, 44)
    space = gym.spaces.Box(0, 255, shape, np.uint8)
    action = gym.spaces.Box(-2.0, 2.0, (3,), np.float32)
    policy = flipes.flipout(CNNPolicy(space, action, hidden=(16,)).double())
    assert policy.channels_last == channels_last and policy.obs_norm is None
    n, k = 8, 2
    es = flipes.FlipES(policy, popsize=n, sigma=0.3, groups=2, noise_rank=noise_rank or None, seed=5)
    images = torch.randint(0, 256, (n, k, *shape), dtype=torch.uint8)
    as_plain = (images.movedim(-1, -3) if channels_last else images).double() / 255  # (n, k, C, H, W)
    with es.population():
        actions = policy(images)
        members = member_parameters(es, policy)
    assert actions.shape == (n, k, 3)
    for m, params in enumerate(members):
        expect = 2 * torch.tanh(plain_cnn(params, as_plain[m]))
        torch.testing.assert_close(actions[m], expect, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(actions[0], actions[2])  # the members differ
    mean = dict(policy.named_parameters())
    torch.testing.assert_close(policy(images[0]), 2 * torch.tanh(plain_cnn(mean, as_plain[0])), rtol=1e-12, atol=1e-12)
    one = policy(images[0, 0].numpy())
    assert isinstance(one, np.ndarray) and one.dtype == np.float32 and one.shape == (3,)


def test_the_data_dependent_init_gives_every_layer_standard_pre_activations_on_its_reference_batch() -> None:
    """After ``init_from_data`` on the reference batch of BrightSpot (``reference_observations``: 8 envs' resets and
    4 steps, seed 0; float64), every output channel of every layer, the action layer included, has pre-activations
    of mean 0 (within 1e-9) and standard deviation 1 (within 1e-9) over that batch (and, for a convolution, its
    positions); the batch is the same when drawn again (every MPI process builds the same parameters)."""
    env = make_vector_env("image_env:cnntest/BrightSpot-v0", 8, note=None)
    frames = reference_observations(env, 0, 4)
    assert frames.shape == (40, 1, 36, 36) and torch.equal(frames, reference_observations(env, 0, 4))
    torch.manual_seed(0)
    policy = CNNPolicy(env.single_observation_space, env.single_action_space, hidden=(16,)).double()
    policy.init_from_data(frames)
    x = policy.pixels(frames)
    for module in (*policy.torso, torch.nn.Flatten(), *policy.fc):
        if isinstance(module, FlipoutConv2d | FlipoutLinear):
            y = module(x).detach()
            dims = (0, 2, 3) if y.dim() == 4 else (0,)
            torch.testing.assert_close(y.mean(dims), torch.zeros(y.shape[1], dtype=y.dtype), rtol=0, atol=1e-9)
            torch.testing.assert_close(y.std(dims), torch.ones(y.shape[1], dtype=y.dtype), rtol=0, atol=1e-9)
        x = module(x)


def test_on_pong_frames_the_initialized_cnn_takes_every_action_and_members_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CNN the Atari row builds (``flipes.builders.build_model``, seed 0) is fitted to 520 Pong frames of random
    play: there its argmax takes each of the 6 actions on at least 5% of the frames (at the orthogonal init alone
    it took one action on 83% of them and three never), and in a population of 8 (σ 0.02, the row's) each member's
    actions differ from the mean network's on at least 30% of every 4th frame (67-75% of all 520 measured). The frames
    are those build_model drew (kept as it draws them, not played again here)."""
    if "Pong-v5" not in envpool_ids():
        pytest.skip("EnvPool is not installed")
    from flipes import builders

    drawn: list[Tensor] = []
    monkeypatch.setattr(builders, "reference_observations", lambda *a: drawn.append(reference_observations(*a)) or drawn[-1])
    config = TrainConfig.for_env("Pong-v5")
    env = make_vector_env("Pong-v5", 1, threads=1, note=None)  # the spaces
    try:
        torch.manual_seed(0)
        policy = flipes.flipout(builders.build_model(config, env))
    finally:
        env.close()
    (frames,) = drawn
    assert frames.shape == (520, 4, 84, 84)
    with torch.no_grad():
        mean = policy(frames)
        share = torch.bincount(mean, minlength=6) / len(frames)
        assert share.min() >= 0.05, share
        es = flipes.FlipES(policy, popsize=8, sigma=config.sigma, seed=0)
        with es.population():
            members = policy(frames[::4].expand(8, 130, *frames.shape[1:]))  # every 4th frame: a quarter of the cost
    differ = (members != mean[::4]).double().mean(1)
    assert (differ >= 0.3).all(), differ


def test_training_the_cnn_learns_where_the_bright_spot_is_and_loads_it_back(tmp_path: Path) -> None:
    """``flipes.train(policy="cnn")`` on BrightSpot (the right action depends on the half the spot is in; chance
    is 1/2) reaches a center-policy return of 0.9 over 200 evaluation images within 60 generations (seed 0), the
    same for channels-last images; ``flipes.load_policy`` rebuilds the CNN, which scores that on fresh images."""
    for env_id in ("image_env:cnntest/BrightSpot-v0", "image_env:cnntest/BrightSpotLast-v0"):
        out = tmp_path / env_id.rsplit("/", 1)[1]
        kw = {**SPOT_RUN, "env": env_id}
        result = flipes.train(**kw, generations=60, eval_every=5, eval_episodes=200, target=0.9, out=str(out))
        assert result.reason.startswith("solved") and result.eval_return >= 0.9, (env_id, result.reason)
    policy = flipes.load_policy(out)
    assert isinstance(policy, CNNPolicy) and policy.channels_last
    returns = flipes.rl.run_episodes(BrightSpot(400, channels_last=True), policy, seed=987_654).returns
    assert returns.mean() >= 0.85, returns.mean()


def test_the_cnn_resumes_bit_for_bit_and_in_parts_trains_as_in_one_pass(tmp_path: Path) -> None:
    """4 generations of the CNN on BrightSpot end on the same parameters, bit for bit, when run as 2 and a resume of
    2 more, and when every generation is evaluated in parts of 8 members (--members-per-pass 8 of 32)."""
    kw = {**SPOT_RUN, "eval_every": 2, "eval_episodes": 20, "target": None}
    flipes.train(**kw, generations=4, out=str(tmp_path / "straight"))
    flipes.train(**kw, generations=2, out=str(tmp_path / "resumed"))
    flipes.train(**kw, generations=4, resume=str(tmp_path / "resumed"))
    flipes.train(**kw, generations=4, members_per_pass=8, out=str(tmp_path / "parts"))
    states = {run: load_checkpoint(tmp_path / run)["es"]["model"] for run in ("straight", "resumed", "parts")}
    assert load_checkpoint(tmp_path / "resumed")["es"]["generation"] == 4
    for run in ("resumed", "parts"):
        assert all(torch.equal(v, states[run][key]) for key, v in states["straight"].items()), run


def test_every_tensor_a_cnn_run_makes_is_on_its_device(tmp_path: Path) -> None:
    """Training, evaluating and resuming the CNN under the meta default device, with the device given as "cpu": a
    tensor the CNN policy (or its rollouts) made without ``device=`` would be a meta tensor and fail at once. The
    policy alone is built on the host, as flipes.train builds it before moving it (test_train's check does the same)."""

    def policy(env: gym.vector.VectorEnv) -> CNNPolicy:
        with torch.device("cpu"):
            return CNNPolicy(env.single_observation_space, env.single_action_space, hidden=[8])

    kw = {**SPOT_RUN, "popsize": 8, "episodes": 2, "eval_every": 1, "eval_episodes": 4, "target": None, "device": "cpu"}
    kw.pop("policy"), kw.pop("hidden")
    kw["model"] = policy
    torch.set_default_device("meta")
    try:
        assert torch.empty(1).is_meta  # the check is in force
        flipes.train(**kw, generations=1, out=str(tmp_path))
        flipes.train(**kw, generations=2, resume=str(tmp_path))
    finally:
        torch.set_default_device(None)
    assert load_checkpoint(tmp_path)["es"]["generation"] == 2


def test_the_nature_torso_needs_36_pixels_and_says_so() -> None:
    """The smallest image the Nature torso takes is 36x36 (8x8 stride 4, 4x4 stride 2, 3x3 stride 1): a 36x36 image
    leaves one pixel of 64 features; 35 pixels on either side is refused naming 36 and the fix (resize)."""
    assert torso_min_size() == 36
    action = gym.spaces.Discrete(4)
    policy = CNNPolicy(gym.spaces.Box(0, 255, (2, 36, 36), np.uint8), action)
    assert policy.fc[0].in_features == 64
    for shape in ((2, 35, 80), (80, 35, 3)):
        with pytest.raises(ValueError, match=r"at least 36x36 pixels, got .*ResizeObservation"):
            CNNPolicy(gym.spaces.Box(0, 255, shape, np.uint8), action)


def test_observations_of_the_wrong_rank_are_refused_naming_the_fix(tmp_path: Path) -> None:
    """A vector or Discrete observation space is refused by CNNPolicy naming --policy mlp; ``--policy cnn`` on
    flipes/CartPole-v1 is a UsageError of --policy; observations of another shape than the space's at a call are
    refused naming the shape it takes."""
    with pytest.raises(ValueError, match=r"needs image observations.*use --policy mlp"):
        CNNPolicy(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(2))
    with pytest.raises(ValueError, match=r"needs image observations.*Discrete\(5\)"):
        CNNPolicy(gym.spaces.Discrete(5), gym.spaces.Discrete(2))
    with pytest.raises(flipes.UsageError, match=r"^--policy: flipes/CartPole-v1: CNNPolicy needs image observations"):
        flipes.train(env="flipes/CartPole-v1", policy="cnn", generations=1, out=str(tmp_path), progress=False)
    policy = CNNPolicy(gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), gym.spaces.Discrete(6))
    for wrong in (torch.zeros(84, 84, dtype=torch.uint8), torch.zeros(2, 84, 84, 4, dtype=torch.uint8)):
        with pytest.raises(ValueError, match=r"takes observations of shape \(\.\.\., 4, 84, 84\)"):
            policy(wrong)


def test_atari_ids_get_the_cnn_row_and_cnn_widths_follow_the_policy() -> None:
    """EnvPool's Atari ids take the preset row with the CNN (512 wide, σ 0.02, 5 evaluation episodes every 10
    generations); --policy mlp on them gets the MLP's 32-32, --policy cnn elsewhere the CNN's 512; a run directory
    recorded with the MLP resumes with it (its options win over the row); --hidden sizes the CNN."""
    if "Pong-v5" not in envpool_ids():
        pytest.skip("EnvPool is not installed")
    from flipes.commands import parse_train_config

    pong = TrainConfig.for_env("Pong-v5")
    assert (pong.policy, pong.hidden, pong.sigma, pong.eval_every, pong.eval_episodes) == ("cnn", [512], 0.02, 10, 5)
    assert (parse_train_config(["--env", "envpool:Breakout-v5", "--policy", "mlp"]).hidden) == [32, 32]
    assert parse_train_config(["--env", "Pong-v5", "--hidden", "256"]).hidden == [256]
    assert TrainConfig.for_env("image_env:cnntest/BrightSpot-v0", policy="cnn").hidden == [512]
    assert TrainConfig.for_env("flipes/CartPole-v1").policy == "mlp"
    validate(TrainConfig.for_env("Pong-v5", model="mine:policy"))  # a model of one's own replaces the row's CNN


def test_policy_mlp_beside_a_model_on_an_atari_id_names_no_hidden_never_given() -> None:
    """--policy mlp beside --model on an Atari id (whose row's CNN the model replaces) is accepted, as --policy mlp
    beside --model is on every other env: the MLP's 32-32 that --policy mlp sets over the row's 512 is a preset's, not a
    --hidden given, so no UsageError names --hidden; a --hidden given there is still refused."""
    if "Pong-v5" not in envpool_ids():
        pytest.skip("EnvPool is not installed")
    from flipes.commands import parse_train_config

    validate(parse_train_config(["--env", "Pong-v5", "--model", "mine:policy", "--policy", "mlp"]))
    validate(TrainConfig.for_env("Pong-v5", model="mine:policy", policy="mlp"))
    with pytest.raises(UsageError, match=r"^--hidden: \[64\] sizes the policy"):
        validate(parse_train_config(["--env", "Pong-v5", "--model", "mine:policy", "--policy", "mlp", "--hidden", "64"]))


def test_a_run_saved_before_policy_existed_resumes_with_the_mlp_it_trained(tmp_path: Path) -> None:
    """A run directory whose config.json has no ``policy`` (written before --policy existed, when every run trained the
    MLP) resumes with the MLP, by the command and by TrainConfig.for_env, not with the CNN of the Atari row its env
    has now (whose weights its checkpoint does not hold)."""
    if "Pong-v5" not in envpool_ids():
        pytest.skip("EnvPool is not installed")
    from dataclasses import asdict

    from flipes.commands import parse_train_config

    run = tmp_path / "old-pong"
    run.mkdir()
    saved = {k: v for k, v in asdict(TrainConfig(env="Pong-v5", out=str(run))).items() if k != "policy"}
    (run / "config.json").write_text(json.dumps(saved))
    for config in (parse_train_config(["--resume", str(run)]), TrainConfig.for_env(resume=str(run))):
        assert (config.policy, config.hidden) == ("mlp", [32, 32])


def test_ars_on_an_atari_id_is_not_said_to_train_a_linear_policy() -> None:
    """--algo ars on an Atari id keeps the row's CNN and takes ARS's empty --hidden: the convolutions feed the action
    layer, which is no linear policy; the start-of-run note says so instead of ARS's "(a linear policy)" of the MLP,
    which it still says on a vector env."""
    if "Pong-v5" not in envpool_ids():
        pytest.skip("EnvPool is not installed")
    from flipes.commands import parse_train_config, preset_lines

    config = parse_train_config(["--env", "Pong-v5", "--algo", "ars"])
    assert (config.policy, config.hidden) == ("cnn", [])
    (algo,) = [line for line in preset_lines(config) if line.startswith("--algo ars")]
    assert "hidden [] (the CNN's convolutions straight into the action layer)" in algo and "linear" not in algo, algo
    (algo,) = [
        line for line in preset_lines(parse_train_config(["--env", "flipes/CartPole-v1", "--algo", "ars"])) if "ars" in line
    ]
    assert "hidden [] (a linear policy)" in algo


def test_pong_trains_a_generation_with_the_cnn_and_evaluates_loads_and_exports(tmp_path: Path, capsys) -> None:
    """Through EnvPool: ``flipes train --env Pong-v5`` (popsize 4, episodes cut at 30 steps) trains the CNN of the
    Atari row and records it in config.json; ``flipes evaluate`` runs it, ``flipes.load_policy`` gives a CNNPolicy
    acting on (4, 84, 84) frame stacks, ``flipes export`` writes a program that takes them; ``--policy mlp`` on Pong
    says that the MLP flattens 28,224 pixels and names --policy cnn, and that run resumes with its MLP (a run
    directory of the MLP, as every Pong run before the Atari row, keeps it)."""
    if "Pong-v5" not in envpool_ids():
        pytest.skip("EnvPool is not installed")
    from flipes.commands import main
    from flipes.export import export_policy, program_inputs

    run = tmp_path / "pong"
    common = [
        "--env",
        "Pong-v5",
        "--popsize",
        "4",
        "--max-episode-steps",
        "30",
        "--eval-episodes",
        "2",
        "--tensorboard",
        "false",
        "--plot",
        "false",
    ]
    assert main(["train", *common, "--generations", "1", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["policy"], config["hidden"]) == ("cnn", [512])
    assert main(["evaluate", str(run), "--episodes", "2"]) == 0
    assert "over 2 episodes" in capsys.readouterr().out
    policy = flipes.load_policy(run)
    assert isinstance(policy, CNNPolicy)
    env = make_vector_env("Pong-v5", 2)
    obs, _ = env.reset(seed=0)
    env.close()
    assert policy(obs).shape == (2,)
    assert program_inputs(export_policy(run)) == [(torch.uint8, (4, 84, 84))]
    capsys.readouterr()
    mlp = ["--policy", "mlp", "--popsize", "2", "--max-episode-steps", "2"]
    assert main(["train", *common, *mlp, "--generations", "1", "--out", str(tmp_path / "mlp")]) == 0
    assert "the mlp policy takes their 28,224 pixels flattened" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "mlp"), "--generations", "2", "--progress", "false"]) == 0
    resumed = json.loads((tmp_path / "mlp" / "config.json").read_text())  # the run's MLP, not the Atari row's CNN
    assert (resumed["policy"], resumed["hidden"], resumed["popsize"]) == ("mlp", [32, 32], 2)
    assert isinstance(flipes.load_policy(tmp_path / "mlp"), flipes.rl.MLPPolicy)
