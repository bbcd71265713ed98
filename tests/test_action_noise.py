"""Gaussian noise on continuous actions in training rollouts (--action-noise, OpenAI's ES starter's ac_noise_std)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import metrics
from torch import nn

import flipes
from flipes.es.population import Population
from flipes.rl import ActionNoise, GRUPolicy, MLPPolicy, RolloutFitness, make_vector_env, reset_episodes, run_episodes

PENDULUM_SPACES = (gym.spaces.Box(-8, 8, (3,), np.float32), gym.spaces.Box(-2, 2, (1,), np.float32))
TRAIN_KW = {"env": "flipes/Pendulum-v1", "popsize": 8, "max_episode_steps": 30, "eval_episodes": 4, "target": None,
            "tensorboard": False, "plot": False, "progress": False, "seed": 2}  # fmt: skip


class SecondOfTwo:
    """Process 1 of 2, for the member split alone: a rollout calls no collective."""

    rank, size, local_rank, local_size, bytes_sent = 1, 2, 0, 1, 0


class OwnPolicy(nn.Module):
    """A policy of one's own: a linear map of the observations, its actions unbounded (beyond ±2 as often as not)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return 3 * self.linear(obs)


def pendulum_es(
    comm: SecondOfTwo | None = None, dtype: torch.dtype = torch.float32, kind: str = "mlp", device: str | torch.device = "cpu"
) -> tuple[nn.Module, flipes.FlipES]:
    """8 members in 2 ε groups of one small Pendulum policy (the same initial weights every call), on one process or as
    process 1 of 2 (members 4..7): flipes' MLP or GRU policy, or a linear model of one's own, on ``device``."""
    torch.manual_seed(0)
    made = {"mlp": lambda: MLPPolicy(*PENDULUM_SPACES, hidden=(8,)), "gru": lambda: GRUPolicy(*PENDULUM_SPACES, hidden=(8,))}
    policy = flipes.flipout(made.get(kind, OwnPolicy)()).to(device=device, dtype=dtype)
    return policy, flipes.FlipES(policy, popsize=8, sigma=0.5, groups=2, seed=3, comm=comm)


def record_steps(env: gym.vector.VectorEnv) -> list[torch.Tensor]:
    """The actions ``env`` is stepped with from now on, one tensor per step."""
    sent: list[torch.Tensor] = []
    step = env.step

    def recording(actions: torch.Tensor) -> tuple:
        sent.append(actions.clone())
        return step(actions)

    env.step = recording  # type: ignore[method-assign]
    return sent


@pytest.mark.parametrize(("kind", "per_pass"), [("mlp", 4), ("mlp", 2), ("gru", 4), ("own", 4)])
def test_each_members_env_gets_its_own_actions_plus_the_noise_of_its_row_clipped_to_the_bounds(
    kind: str, per_pass: int, device: torch.device
) -> None:
    """Process 1 of 2 (members 4..7 of 8), 2 episodes each, std 1.5 on Pendulum's [-2, 2], in one pass or in parts of 2
    members, with flipes' MLP or GRU policy or a model of one's own: at every step t the env gets, for member m and
    episode k, exactly the model's own action for that observation plus 1.5 times row m·2 + k (the global env) of
    ``torch.randn(16, 1, generator=pop.generator(f"action noise/{t}"))``, clipped to [-2, 2]; the clip is met (some
    actions are exactly ±2) and, for flipes' policies (in the bounds by their tanh), most actions are inside it. On the
    test device (scripts/gpu_check.py: CUDA, whose generator draws other numbers than the CPU's)."""
    std, k, steps = 1.5, 2, 20
    policy, es = pendulum_es(SecondOfTwo(), kind=kind, device=device)
    env = make_vector_env("flipes/Pendulum-v1", per_pass * k, device, max_episode_steps=steps)
    sent = record_steps(env)
    outputs: list[torch.Tensor] = []
    # the actions the model returns (a GRU policy returns its state beside them)
    policy.register_forward_hook(lambda module, args, out: outputs.append((out[0] if kind == "gru" else out).clone()))
    fitness = RolloutFitness(env, episodes=k, seed=5, pipeline=False, action_noise=std)
    with es.population() as pop:
        fitness(policy, pop)
        assert pop.members == range(4, 8) and len(sent) == len(outputs) == 4 // per_pass * steps
        for j, (got, own) in enumerate(zip(sent, outputs, strict=True)):
            part, t = divmod(j, steps)  # the parts are rolled out one after another
            z = torch.randn(8 * k, 1, generator=pop.generator(f"action noise/{t}", device), device=device)
            for i, m in enumerate(pop.members[part * per_pass : (part + 1) * per_pass]):
                for e in range(k):
                    want = torch.clamp(own[i, e] + std * z[m * k + e], -2.0, 2.0)
                    assert torch.equal(got[i * k + e], want), (t, m, e)
    clipped = torch.cat(sent).abs() == 2.0
    assert 0 < int(clipped.sum()) < (clipped.numel() if kind == "own" else clipped.numel() // 2)


def test_a_members_noisy_fitness_does_not_depend_on_the_process_split_or_the_parts() -> None:
    """With std 0.3, 2 episodes per member and Pendulum (20 steps): process 1 of 2 gives members 4..7 the fitness one
    process gives them, and one process rolling its 8 members out in parts of 2 (an env of 4 copies) the fitness of one
    pass, bit for bit; the noise changes every member's fitness (the same rollouts without it differ). A float64 policy:
    a float32 forward over fewer rows may round a member's action otherwise, noise or not."""
    runs = {}
    for name, comm, members, noise in (
        ("one", None, 8, 0.3),
        ("second", SecondOfTwo(), 4, 0.3),
        ("parts", None, 2, 0.3),
        ("quiet", None, 8, 0.0),
    ):
        policy, es = pendulum_es(comm, torch.float64)
        env = make_vector_env("flipes/Pendulum-v1", members * 2, max_episode_steps=20)
        fitness = RolloutFitness(env, episodes=2, seed=5, action_noise=noise)
        with es.population() as pop:
            runs[name] = fitness(policy, pop)
    assert torch.equal(runs["second"], runs["one"][4:]) and torch.equal(runs["parts"], runs["one"])
    assert len(set(runs["one"].tolist())) == 8 and bool((runs["one"] != runs["quiet"]).all())


def test_a_pipelined_rollout_adds_each_halfs_noise_of_its_own_step() -> None:
    """EnvPool's Hopper, 12 members × 2 episodes, std 0.2: the pipelined rollout (one half stepped while the policy acts
    for the other, the halves at different steps as their episodes end) gives the fitness, env steps and observation
    statistics of the serial one, bit for bit, and the noise changed the fitness."""
    pytest.importorskip("envpool")
    results = []
    for pipeline, noise in ((False, 0.2), (True, 0.2), (True, 0.0)):
        env = make_vector_env("envpool:Hopper-v5", 24, threads=2)
        torch.manual_seed(0)
        policy = flipes.flipout(MLPPolicy(env.single_observation_space, env.single_action_space, hidden=(16,)))
        es = flipes.FlipES(policy, popsize=12, sigma=0.5, seed=4)
        fitness = RolloutFitness(env, episodes=2, seed=9, obs_norm=policy.obs_norm, pipeline=pipeline, action_noise=noise)
        with es.population() as pop:
            f = fitness(policy, pop)
        results.append((f, fitness.timesteps, policy.obs_norm.pending.clone()))
        env.close()
    (f0, t0, p0), (f1, t1, p1), (quiet, _, _) = results
    assert torch.equal(f0, f1) and t0 == t1 and torch.equal(p0, p1)
    assert len(set(f0.tolist())) == 12 and bool((f0 != quiet).all())


def test_a_run_with_action_noise_resumes_bit_for_bit_and_refuses_another_std(tmp_path: Path) -> None:
    """flipes.train on Pendulum with action_noise 0.05: 2 generations, then a resume to 4 (which keeps the run's std
    unasked), log the parameters of 4 in one go in every row (whose fitness differs from a run's without noise); a resume with
    another std is refused naming both values."""
    kw = {**TRAIN_KW, "action_noise": 0.05}
    whole = flipes.train(**kw, generations=4, out=str(tmp_path / "whole"))
    flipes.train(**kw, generations=2, out=str(tmp_path / "part"))
    other = r"^--resume: the run was trained with other options \(--action-noise: saved 0.05, now 0.1\)"
    with pytest.raises(flipes.UsageError, match=other):
        flipes.train(**{**kw, "action_noise": 0.1}, generations=4, resume=str(tmp_path / "part"))
    rest = flipes.train(resume=str(tmp_path / "part"), generations=4, progress=False)
    assert rest.config.action_noise == 0.05
    hashes = [r["params_sha256"] for r in metrics(tmp_path / "part")]
    assert hashes == [r["params_sha256"] for r in whole.metrics] and len(hashes) == 4
    quiet = flipes.train(**TRAIN_KW, generations=1, out=str(tmp_path / "quiet"))
    assert quiet.metrics[0]["fitness_mean"] != whole.metrics[0]["fitness_mean"]


def test_the_center_policys_evaluation_is_noise_free(tmp_path: Path) -> None:
    """A run with action_noise 1 (half Pendulum's torque range) logs as eval_return the mean return of its center policy
    (load_policy) on the evaluation's 4 episodes without noise, exactly; the rollouts of its population had noise (its
    generation-0 fitness differs from the same run's without it)."""
    noisy = flipes.train(**TRAIN_KW, action_noise=1.0, generations=1, eval_every=1, out=str(tmp_path / "noisy"))
    quiet = flipes.train(**TRAIN_KW, generations=1, eval_every=1, out=str(tmp_path / "quiet"))
    assert noisy.metrics[0]["fitness_mean"] != quiet.metrics[0]["fitness_mean"]
    env = make_vector_env("flipes/Pendulum-v1", 4)
    obs = reset_episodes(env, TRAIN_KW["seed"], "eval", 0)
    episodes = run_episodes(env, flipes.load_policy(tmp_path / "noisy"), obs=obs, max_steps=30)
    assert episodes.returns.mean().item() == noisy.metrics[0]["eval_return"]


def test_the_noise_is_standard_normal_times_the_std_and_fresh_at_every_step_and_row() -> None:
    """The noise of 64 members × 2 episodes × 3 action dimensions over 100 steps (38,400 draws, std 0.3, seed 7): its
    mean, its variance and the correlation of each value with the next step's are within 5 standard errors of 0, 0.09
    and 0 (each a two-sided false alarm rate below 1e-6 for a correct N(0, 0.3²) stream: z-bounds of the sample mean,
    of the sample variance, whose standard error is σ²·√(2/n), and of the lag-one correlation, 1/√n); no two rows of a
    step are equal."""
    std, n_steps = 0.3, 100
    pop = Population(size=128, popsize=128, generation=2, sigma=0.1, members=range(0, 128), groups=range(0, 1), seed=7)
    noise = ActionNoise(std, pop, 2, gym.spaces.Box(-1, 1, (3,), np.float32))
    draws = torch.stack([noise.noise(t, torch.float64, torch.device("cpu")) for t in range(n_steps)])  # (steps, 256, 3)
    assert draws.shape == (n_steps, 256, 3)
    x = draws.flatten()
    n = x.numel()
    assert abs(x.mean().item()) < 5 * std / math.sqrt(n)
    assert abs(x.var().item() - std**2) < 5 * std**2 * math.sqrt(2 / n)
    a, b = draws[:-1].flatten(), draws[1:].flatten()
    assert abs(torch.corrcoef(torch.stack((a, b)))[0, 1].item()) < 5 / math.sqrt(a.numel())
    assert all(len(set(map(tuple, step.tolist()))) == 256 for step in draws)


def test_action_noise_is_refused_for_discrete_actions_and_a_negative_std(tmp_path: Path) -> None:
    """A std above 0 on an env of discrete actions (CartPole's Discrete(2), a MultiBinary), or a negative or non-finite
    std, is refused: by RolloutFitness as a ValueError, by flipes.train as a UsageError naming --action-noise and the
    space, before anything is written; 0 is accepted everywhere."""
    cartpole = make_vector_env("flipes/CartPole-v1", 4)
    discrete = r"^action_noise 0.01 adds Gaussian noise to continuous actions, and this env's actions are Discrete\(2\); leave"
    with pytest.raises(ValueError, match=discrete):
        RolloutFitness(cartpole, action_noise=0.01)
    binary = copy.copy(cartpole)
    binary.single_action_space = gym.spaces.MultiBinary(3)
    with pytest.raises(ValueError, match=r"actions are MultiBinary\(3\); leave it 0"):
        RolloutFitness(binary, action_noise=0.5)
    pendulum = make_vector_env("flipes/Pendulum-v1", 4)
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"^action_noise must be a finite std >= 0, got "):
            RolloutFitness(pendulum, action_noise=bad)
    RolloutFitness(cartpole, action_noise=0.0)
    with pytest.raises(flipes.UsageError, match=r"^--action-noise: 0.01 adds Gaussian noise to continuous actions, and "
                                                 r"flipes/CartPole-v1's are Discrete\(2\); drop --action-noise"):  # fmt: skip
        flipes.train(**{**TRAIN_KW, "env": "flipes/CartPole-v1"}, action_noise=0.01, out=str(tmp_path / "run"))
    with pytest.raises(flipes.UsageError, match=r"^--action-noise: must be a finite number >= 0, got -0.5; 0 is none"):
        flipes.train(**TRAIN_KW, action_noise=-0.5, out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_numpy_std_is_the_std_of_its_value() -> None:
    """A std given as a numpy scalar (np.float32(0.25), as read from an array of settings) is that number: RolloutFitness
    takes it and gives every member the fitness of the Python float 0.25, bit for bit; a negative numpy std is refused as
    a negative one, and a std that is no number (the string "0.25") is a TypeError naming it."""
    runs = []
    for std in (0.25, np.float32(0.25), np.float64(0.25)):
        policy, es = pendulum_es()
        fitness = RolloutFitness(make_vector_env("flipes/Pendulum-v1", 16, max_episode_steps=10), episodes=2, action_noise=std)
        assert type(fitness.action_noise) is float
        with es.population() as pop:
            runs.append(fitness(policy, pop))
    assert torch.equal(runs[1], runs[0]) and torch.equal(runs[2], runs[0])
    pendulum = make_vector_env("flipes/Pendulum-v1", 4)
    with pytest.raises(ValueError, match=r"^action_noise must be a finite std >= 0, got np.float32\(-0.25\)"):
        RolloutFitness(pendulum, action_noise=np.float32(-0.25))
    with pytest.raises(TypeError, match=r"^action_noise must be a number, got '0.25' \(str\)"):
        RolloutFitness(pendulum, action_noise="0.25")
