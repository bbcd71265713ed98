"""An EvoJAX project ported to flipes as README's "Coming from EvoJAX" says: its CartPoleSwingUp task as a
``TorchVectorEnv``, its MNIST task as a fitness, its PGPE's centre step, its Trainer's ``n_repeats`` and test
protocol, and what a porter's JAX habits are told."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import flipes
from envs import seeding
from envs.base import TorchVectorEnv
from flipes.rl import MLPPolicy, RolloutFitness
from flipes.rl.rollout import episode_seed

# EvoJAX's evojax/task/cartpole.py constants
GRAVITY, CART_MASS, POLE_MASS, POLE_LEN, FRICTION, FORCE, DT, X_LIMIT = 9.82, 0.5, 0.5, 0.6, 0.1, 10.0, 0.01, 2.4


class SwingUp(TorchVectorEnv):
    """EvoJAX's ``CartPoleSwingUp(harder=True)``: its ``update_state``, ``get_reward``, ``get_obs`` and
    ``out_of_screen`` on batched tensors; its ``max_steps`` is ``max_episode_steps``. ``done_dtype`` returns the
    terminations as EvoJAX does (an int array), ``reward_column`` the rewards and ``done_column`` the terminations as
    ``(N, 1)``: a porter's slips."""

    state_dim = 4

    def __init__(
        self,
        num_envs: int = 1,
        max_episode_steps: int = 1000,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        done_dtype: torch.dtype = torch.bool,
        reward_column: bool = False,
        done_column: bool = False,
    ) -> None:
        self.done_dtype, self.reward_column, self.done_column = done_dtype, reward_column, done_column
        obs, act = gym.spaces.Box(-np.inf, np.inf, (5,), np.float32), gym.spaces.Box(-1, 1, (1,), np.float32)
        super().__init__(num_envs, max_episode_steps, device, dtype, obs, act)

    def dynamics(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        a = action.reshape(-1).clamp(-1, 1) * FORCE
        x, x_dot, th, th_dot = state.unbind(1)
        s, c = th.sin(), th.cos()
        tm, mpl = CART_MASS + POLE_MASS, POLE_MASS * POLE_LEN
        x_acc = (-2 * mpl * th_dot**2 * s + 3 * POLE_MASS * GRAVITY * s * c + 4 * a - 4 * FRICTION * x_dot) / (
            4 * tm - 3 * POLE_MASS * c**2
        )
        th_acc = (-3 * mpl * th_dot**2 * s * c + 6 * tm * GRAVITY * s + 6 * (a - FRICTION * x_dot) * c) / (
            4 * POLE_LEN * tm - 3 * mpl * c**2
        )
        return torch.stack([x + x_dot * DT, x_dot + x_acc * DT, th + th_dot * DT, th_dot + th_acc * DT], 1)

    def _reward_terminated(
        self, state: torch.Tensor, action: torch.Tensor, next_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, th = next_state[:, 0], next_state[:, 2]
        reward = ((th.cos() + 1) / 2 * (x / X_LIMIT * math.pi / 2).cos()).float()
        done = (x < -X_LIMIT) | (x > X_LIMIT)
        done = done[:, None] if self.done_column else done
        return (reward[:, None] if self.reward_column else reward), done.to(self.done_dtype)

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        x, x_dot, th, th_dot = state.unbind(1)
        return torch.stack([x, x_dot, th.cos(), th.sin(), th_dot], 1).float()

    def _initial_range(self, options: dict | None) -> tuple[list[float], list[float]]:
        return [-X_LIMIT, -10.0, math.pi / 2, -10.0], [X_LIMIT, 10.0, 3 * math.pi / 2, 10.0]


class SwingUpEasy(SwingUp):
    """EvoJAX's ``CartPoleSwingUp()`` (not harder): Gaussian initial states, ``N(0, 0.2²)`` about ``[0, 0, π, 0]``."""

    initial_distribution = "normal"

    def _initial_range(self, options: dict | None) -> tuple[list[float], list[float]]:
        return [0.0, 0.0, math.pi, 0.0], [0.2] * 4  # each component's mean and standard deviation


def test_a_gaussian_initial_state_is_seeded_per_env_as_a_uniform_one() -> None:
    """``initial_distribution = "normal"`` draws env i of ``reset(seed=s)`` as ``mean + std·z`` with ``z`` the normals
    ``envs.seeding`` keys by ``s + i`` alone (one copy reset with ``s + i`` starts there too); 4,096 envs' θ have mean
    π within 4.5 standard errors and standard deviation 0.2 within 5% (seed 0: fixed draws); a misspelt distribution
    is refused when the env is built."""
    env = SwingUpEasy(4096)
    env.reset(seed=0)
    z = seeding.normal(torch.arange(4096), 4, dtype=torch.float32)
    assert torch.equal(env.state, torch.addcmul(torch.tensor([0.0, 0.0, math.pi, 0.0]), torch.full((4,), 0.2), z))
    one = SwingUpEasy(1)
    one.reset(seed=17)
    assert torch.equal(one.state[0], env.state[17])
    theta = env.state[:, 2].double()
    assert abs(theta.mean() - math.pi) < 4.5 * 0.2 / 64 and abs(theta.std() / 0.2 - 1) < 0.05

    class Misspelt(SwingUpEasy):
        initial_distribution = "gaussian"

    with pytest.raises(ValueError, match=r'^Misspelt\.initial_distribution must be "uniform" or "normal", got .gaussian.$'):
        Misspelt(2)


def test_a_gaussian_initial_state_without_a_seed_is_drawn_from_the_envs_generator() -> None:
    """``reset()`` without a seed after ``reset(seed=0)`` draws ``initial_distribution = "normal"`` states from the env's
    generator as Gaussians too: 4,096 envs' θ have mean π within 4.5 standard errors and standard deviation 0.2 within
    5% (seed 0: fixed draws), and differ from the seeded reset's."""
    env = SwingUpEasy(4096)
    env.reset(seed=0)
    seeded = env.state.clone()
    env.reset()
    theta = env.state[:, 2].double()
    assert abs(theta.mean() - math.pi) < 4.5 * 0.2 / 64 and abs(theta.std() / 0.2 - 1) < 0.05
    assert not torch.equal(env.state, seeded)


ENV_ID = "evojax_port/SwingUp-v0"
gym.register(ENV_ID, vector_entry_point=SwingUp)
QUIET = {"progress": False, "plot": False, "tensorboard": False, "target": None}


def returns_alone(policy: nn.Module, seeds: list[int], steps: int) -> torch.Tensor:
    """Each episode's return of ``policy`` (a plain module) on its own SwingUp copy reset with ``seeds[k]``: rewards
    summed up to and including the first step that terminates or hits ``steps``, as EvoJAX's ``valid_mask`` sums."""
    env = SwingUp(len(seeds), max_episode_steps=steps)
    obs, _ = env.reset(seed=seeds)
    total, alive = torch.zeros(len(seeds), dtype=torch.float64), torch.ones(len(seeds), dtype=torch.bool)
    with torch.no_grad():
        for _ in range(steps):
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += torch.where(alive, reward.double(), 0.0)
            alive &= ~(terminated | truncated)
    return total


def test_n_repeats_is_episodes_with_common_episodes_each_member_its_mean_over_the_same_resets() -> None:
    """EvoJAX's training rollout (``n_repeats`` reset keys tiled over the population, scores averaged) is
    ``RolloutFitness(env, episodes=K, common_episodes=True)``: each member's fitness is the mean return of its own
    explicit weights, run alone, over the same K resets (seeds ``episode_seed(seed, generation, "population") + k``),
    to float32 rounding, in two generations."""
    torch.manual_seed(0)
    popsize, k, steps, seed = 4, 3, 30, 5
    policy = MLPPolicy(SwingUp().single_observation_space, SwingUp().single_action_space, hidden=(8,))
    es = flipes.FlipES(policy, popsize=popsize, sigma=0.3, seed=1)
    fitness = RolloutFitness(SwingUp(popsize * k, max_episode_steps=steps), episodes=k, seed=seed, common_episodes=True)
    for generation in range(2):
        with es.population() as pop:
            f = fitness(policy, pop)
        seeds = [episode_seed(seed, generation, "population") + j for j in range(k)]
        for i in range(popsize):
            member = copy.deepcopy(policy)
            member.load_state_dict(es.member_state_dict(i))
            torch.testing.assert_close(f[i].double(), returns_alone(member, seeds, steps).mean(), rtol=1e-5, atol=1e-5)
        es.tell(f)
        policy.obs_norm.update()


def evojax_ranks(f: torch.Tensor) -> torch.Tensor:
    """EvoJAX's ``process_scores``: each value's position in ``argsort`` over ``N - 1``, minus 1/2."""
    ranks = torch.empty_like(f)
    ranks[f.argsort()] = torch.arange(len(f), dtype=f.dtype)
    return ranks / ranks.max() - 0.5


def test_evojax_pgpe_centre_step_with_its_clipup_is_flipes_clipup() -> None:
    """EvoJAX's ``PGPE(pop_size=8, center_learning_rate=0.15, optimizer="clipup")`` with fixed σ
    (``stdev_learning_rate=0``), written out from its ``ask_func``, ``compute_reinforce_update`` and ``clipup`` (rows
    ``2k``, ``2k+1`` = centre ± noise ``n_k``; ``g = mean_k n_k (F̂_2k − F̂_2k+1)/2``; ``v ← 0.9v + 0.15·g/‖g‖``
    clipped to 0.15) on flipes' member noises, moves the centre exactly as
    ``FlipES(..., optimizer=ClipUp(lr=0.15, momentum=0.9, max_speed=0.15))``: 1e-12 in float64
    over four generations, the later ones clipped."""
    torch.manual_seed(0)
    dt, n, sigma = torch.float64, 8, 0.1
    model = flipes.flipout(nn.Linear(4, 3).to(dt))
    es = flipes.FlipES(
        model, popsize=n, sigma=sigma, seed=2, optimizer=lambda p: flipes.optim.ClipUp(p, lr=0.15, momentum=0.9, max_speed=0.15)
    )
    names = [name for name, _ in model.named_parameters()]
    centre = torch.cat([p.detach().flatten() for p in model.parameters()])
    velocity = torch.zeros_like(centre)
    x = torch.randn(4, dtype=dt)
    clipped = 0
    for _ in range(4):
        with es.population():
            fitness = -(model(x.expand(n, 4)) - 1).square().sum(1)
            noise = [torch.cat([es.member_noise(i)[m].flatten() for m in names]) for i in range(n)]
        directions = torch.stack(noise[0::2])
        assert torch.equal(torch.stack(noise[1::2]), -directions)  # EvoJAX's hstack([c + n, c - n]) order
        scores = evojax_ranks(fitness).view(-1, 2)
        grad = (directions * (scores[:, 0] - scores[:, 1])[:, None] * 0.5).mean(0)
        step = -grad / grad.norm() * 0.15
        velocity = 0.9 * velocity + step
        if velocity.norm() > 0.15:
            velocity, clipped = velocity * 0.15 / velocity.norm(), clipped + 1
        centre = centre - velocity
        es.tell(fitness)
        torch.testing.assert_close(torch.cat([p.detach().flatten() for p in model.parameters()]), centre, rtol=0, atol=1e-12)
    assert clipped >= 2


# a synthetic MNIST: 10 classes of 8x8 images, each its mean image plus noise
MEANS = torch.randn(10, 64, generator=torch.Generator().manual_seed(0))


def digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    return (MEANS[y] + 0.8 * torch.randn(n, 64, generator=g)).view(n, 1, 8, 8), y


X_TRAIN, Y_TRAIN = digits(600, 1)
X_TEST, Y_TEST = digits(200, 2)
BATCH = 64


def convnet(env: object = None) -> nn.Module:
    return nn.Sequential(nn.Flatten(-3), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10), nn.LogSoftmax(-1))


def mnist_fitness(model: nn.Module, pop: flipes.Population) -> torch.Tensor:
    """EvoJAX's MNIST training reward, ``-loss``: the mean log-probability of the labels of one batch that every
    member sees (its reset keys are the same for all members)."""
    idx = torch.randperm(len(X_TRAIN), generator=pop.generator())[:BATCH]
    logp = model(X_TRAIN[idx].expand(pop.size, BATCH, 1, 8, 8))
    return logp.gather(-1, Y_TRAIN[idx].expand(pop.size, BATCH)[..., None]).squeeze(-1).mean(1)


def mnist_accuracy(model: nn.Module) -> dict[str, float]:
    """EvoJAX's MNIST test task: the accuracy on the held-out set."""
    accuracy = (model(X_TEST).argmax(-1) == Y_TEST).double().mean().item()
    return {"eval_return": accuracy, "accuracy": accuracy}


def test_mnist_port_each_member_on_one_batch_and_held_out_accuracy_logged(tmp_path) -> None:
    """The MNIST task as a fitness: each member's value is its own weights' mean label log-probability on the batch
    ``pop.generator()`` draws (to 1e-6); ``flipes.train(..., evaluate=)`` logs the held-out accuracy as
    ``eval_return`` and ``accuracy`` every ``eval_every`` generations and at the last (EvoJAX's ``test_interval`` and
    final test), equal to the accuracy of the saved centre."""
    model = flipes.flipout(convnet())
    es = flipes.FlipES(model, popsize=6, sigma=0.1, seed=3)
    with es.population() as pop:
        f = mnist_fitness(model, pop)
        idx = torch.randperm(len(X_TRAIN), generator=pop.generator())[:BATCH]
    plain = convnet()
    for i in range(6):
        plain.load_state_dict(es.member_state_dict(i))
        expected = plain(X_TRAIN[idx])[torch.arange(BATCH), Y_TRAIN[idx]].mean()
        torch.testing.assert_close(f[i], expected, rtol=0, atol=1e-6)

    result = flipes.train(
        env="none", model=convnet, fitness=mnist_fitness, evaluate=mnist_accuracy, popsize=8, generations=5, eval_every=2,
        out=str(tmp_path / "mnist"), **QUIET,
    )  # fmt: skip
    evaluated = [row["generation"] for row in result.metrics if "eval_return" in row]
    assert evaluated == [0, 2, 4] and all(row["accuracy"] == row["eval_return"] for row in result.metrics if "accuracy" in row)
    centre = flipes.load_policy(result.run_dir, model=convnet)
    assert result.metrics[-1]["eval_return"] == mnist_accuracy(centre)["eval_return"]


def test_trainer_test_protocol_is_eval_episodes_of_the_centre(tmp_path) -> None:
    """EvoJAX's Trainer test (``n_evaluations`` fresh episodes of the centre every ``test_interval`` and at the end,
    their mean logged) is ``eval_episodes`` and ``eval_every``: the last row's ``eval_return`` is the mean return of
    the saved centre policy over ``eval_episodes`` episodes seeded ``episode_seed(seed, generation, "eval") + i``,
    to float32 rounding; rows carry it at generations 0, 2 and the last."""
    result = flipes.train(
        env=ENV_ID, model=evojax_mlp, popsize=8, generations=4, episodes=2, common_episodes=True, eval_every=2,
        eval_episodes=5, max_episode_steps=30, seed=4, out=str(tmp_path / "su"), **QUIET,
    )  # fmt: skip
    assert [row["generation"] for row in result.metrics] == [0, 1, 2, 3]  # every generation logged: log_interval 1
    evaluated = [row["eval_return"] for row in result.metrics if "eval_return" in row]
    assert [row["generation"] for row in result.metrics if "eval_return" in row] == [0, 2, 3]
    assert result.best == max(evaluated) and result.eval_return == evaluated[-1]
    centre = flipes.load_policy(result.run_dir, model=evojax_mlp)
    last = result.metrics[-1]
    seeds = [episode_seed(4, last["generation"], "eval") + i for i in range(5)]

    assert last["eval_return"] == pytest.approx(returns_alone(centre, seeds, 30).mean().item(), rel=1e-5)


def evojax_mlp(env: object) -> nn.Module:
    """EvoJAX's ``MLPPolicy``: tanh hidden layers and a tanh output, no observation normalization."""
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1), nn.Tanh())


def clipup_as_evojax(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """EvoJAX's PGPE ``optimizer="clipup"`` at that optimizer's defaults (its default optimizer is SGD)."""
    return flipes.optim.ClipUp(params, lr=0.15, momentum=0.9, max_speed=0.15)


def test_a_test_task_of_its_own_is_an_evaluate_beside_a_rollout_fitness(tmp_path) -> None:
    """A ``test_task`` other than the training task (here longer episodes) is ``evaluate=`` calling
    ``flipes.evaluate_policy`` beside ``fitness=RolloutFitness(venv, episodes=K, common_episodes=True)``: the rows'
    ``eval_return`` is that function of the saved centre, an ``MLPPolicy(normalize=False)`` (EvoJAX's
    ``normalize_obs=False``), trained with EvoJAX's ClipUp as ``optimizer=``."""
    venv = flipes.rl.make_vector_env(ENV_ID, 8 * 2)

    def model(env: object) -> MLPPolicy:
        return MLPPolicy(venv.single_observation_space, venv.single_action_space, hidden=(8,), normalize=False)

    def test_task(policy: nn.Module) -> float:
        return flipes.evaluate_policy(policy, ENV_ID, episodes=4, max_steps=40).mean().item()

    result = flipes.train(
        env="none", model=model, fitness=RolloutFitness(venv, episodes=2, common_episodes=True, max_steps=20, seed=1),
        evaluate=test_task, optimizer=clipup_as_evojax, popsize=8, generations=2, seed=1, out=str(tmp_path / "tt"), **QUIET,
    )  # fmt: skip
    centre = flipes.load_policy(result.run_dir, model=model)
    assert getattr(centre, "obs_norm", None) is None and result.metrics[-1]["timesteps"] > 0
    assert result.metrics[-1]["eval_return"] == test_task(centre)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"done_dtype": torch.float32}, r"returned terminations of dtype float32 and shape \(4,\) for 4 envs; return one bool"),
        ({"done_dtype": torch.int32}, r"returned terminations of dtype int32 and shape \(4,\) for 4 envs; return one bool"),
        ({"reward_column": True}, r"returned rewards of shape \(4, 1\) for 4 envs; return one per env, shape \(4,\)$"),
        ({"done_column": True}, r"returned terminations of dtype bool and shape \(4, 1\) for 4 envs; return one bool"),
    ],
)
def test_an_evojax_style_done_or_reward_column_is_one_line_naming_the_hook(option: dict, message: str) -> None:
    """EvoJAX's ``done`` (an int or float array) or a reward column returned by ``_reward_terminated`` stops the first
    ``step`` with a one-line ValueError naming the hook and the fix (a float ``done`` was torch's "bitwise_or_cpu not
    implemented for 'Float'")."""
    env = SwingUp(4, **option)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=rf"^SwingUp\._reward_terminated {message}") as refused:
        env.step(torch.zeros(4, 1))
    assert "\n" not in str(refused.value)


def test_jax_habits_in_tell_and_seed_are_one_line_errors() -> None:
    """A fitness column ``(N, 1)`` (EvoJAX's scores of a one-output net) is refused naming the shape ``(N,)``; a
    numpy ``(N,)`` array is taken as the tensor would be; a JAX key ``PRNGKey(0)`` (two uint32) as the seed, or as
    ``rng=``/``key=``, is refused naming ``seed=`` an int."""
    for key in ("rng", "key"):
        with pytest.raises(TypeError, match=rf"'{key}': FlipES takes seed= \(the noise is a function of seed"):
            flipes.FlipES(flipes.flipout(nn.Linear(3, 2)), popsize=8, **{key: np.zeros(2, np.uint32)})
    with pytest.raises(TypeError, match=r"^seed must be an integer, got array\(\[0, 0\], dtype=uint32\)"):
        flipes.FlipES(flipes.flipout(nn.Linear(3, 2)), popsize=8, seed=np.zeros(2, np.uint32))
    with pytest.raises(flipes.UsageError, match=r"seed = array\(\[0, 0\], dtype=uint32\) is not an integer"):
        flipes.train(env=ENV_ID, seed=np.zeros(2, np.uint32), **QUIET)
    params = []
    for fitness in (np.arange(8.0), torch.arange(8.0, dtype=torch.float64)):
        torch.manual_seed(0)
        model = flipes.flipout(nn.Linear(3, 2))
        es = flipes.FlipES(model, popsize=8, seed=0)
        with es.population():
            model(torch.randn(8, 3))
        column = r"fitness has shape \(8, 1\), .* shape \(8,\); this is a column \(N, 1\): flatten it with fitness\.flatten\(\)$"
        with pytest.raises(ValueError, match=column):
            es.tell(fitness.reshape(8, 1))
        es.tell(fitness)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(*params)


@pytest.mark.parametrize(
    ("keyword", "fix"),
    [
        ("center_learning_rate", "EvoJAX's PGPE keeps its own max_speed, 0.15"),
        ("optimizer_config", "flipes.optim.ClipUp(p, lr=center_learning_rate, momentum=0.9, max_speed=0.15)"),
        ("init_stdev", "FlipES takes sigma="),
        ("stdev_learning_rate", "FlipES takes sigma_lr="),
        ("stdev_max_change", "adapted without a clamp"),
        ("solution_ranking", "shaping=flipes.shaping.centered_ranks (the default: solution_ranking=True)"),
        ("decay_stdev", "sigma=flipes.search.SigmaDecay(sigma, decay, min)"),
        ("limit_stdev", "sigma=flipes.search.SigmaDecay(sigma, decay, min)"),
        ("init_params", "the model's parameters are the center"),
        ("pop_size", "FlipES takes popsize="),
        ("param_size", "FlipES evolves the trainable parameters of model"),
    ],
)
def test_evojax_keywords_given_to_flipes_name_its_argument(keyword: str, fix: str) -> None:
    """``FlipES(model, popsize=8, <an EvoJAX PGPE or OpenES argument>=...)`` is a one-line TypeError naming EvoJAX and
    FlipES's argument for it."""
    start = rf"^FlipES\(\) got an unexpected keyword argument '{keyword}': {keyword}= is "
    with pytest.raises(TypeError, match=start) as refused:
        flipes.FlipES(flipes.flipout(nn.Linear(3, 2)), popsize=8, **{keyword: 0.1})
    assert "EvoJAX's" in str(refused.value) and fix in str(refused.value) and "\n" not in str(refused.value)


def test_evojax_trainer_names_given_to_train_name_flipes_option() -> None:
    """``flipes.train(max_iter=..., init_stdev=...)``, EvoJAX's Trainer's and PGPE's names, name flipes' option."""
    for keyword, fix in [("max_iter", "EvoJAX's max_iter is generations here"), ("init_stdev", "EvoJAX's init_stdev is sigma")]:
        with warnings.catch_warnings(), pytest.raises(flipes.UsageError, match=fix):
            flipes.train(env=ENV_ID, **{keyword: 3}, **QUIET)


def test_evojax_names_notes_name_flipes_options_as_given() -> None:
    """EvoJAX's ``n_repeats`` note names the option that gives every member the same resets as the caller spells
    options (``common_episodes`` as a keyword, ``--common-episodes`` as a flag); ``center_learning_rate``'s says
    EvoJAX's default is SGD at c·σ² and its ClipUp keeps its max speed 0.15 (2c is EvoTorch's)."""
    from flipes.command_options import parse_train_config
    from flipes.config import TrainConfig

    with pytest.raises(flipes.UsageError) as kw:
        TrainConfig(n_repeats=2)
    with pytest.raises(flipes.UsageError) as flag:
        parse_train_config(["--n-repeats", "2"])
    assert "common_episodes on gives every member the same resets" in kw.value.fix
    assert "--common-episodes on gives every member the same resets" in flag.value.fix
    with pytest.raises(flipes.UsageError) as lr:
        TrainConfig(center_learning_rate=0.1)
    assert "EvoJAX's PGPE is SGD at c·σ² unless its optimizer='adam' (Adam at c) or 'clipup' (max speed 0.15)" in lr.value.fix
    assert "at max speed 2c" in lr.value.fix


def test_a_policy_called_outside_no_grad_leaves_the_env_free_of_its_graph() -> None:
    """A rollout loop translated from EvoJAX's (``env.step(policy(obs))``, no ``torch.no_grad()``: JAX keeps no graph)
    steps a TorchVectorEnv to the same states and rewards as under ``no_grad``, bit for bit, and its state, rewards and
    observations hold no autograd graph: the graph chained every step's state to the last (memory growing with the
    episode: 214 MB more after 300 steps of 4,096 Pendulums)."""
    torch.manual_seed(0)
    policy = MLPPolicy(SwingUp().single_observation_space, SwingUp().single_action_space, hidden=(8,), normalize=False)
    plain, graphless = SwingUp(8, max_episode_steps=50), SwingUp(8, max_episode_steps=50)
    obs, _ = plain.reset(seed=3)
    ref_obs, _ = graphless.reset(seed=3)
    for _ in range(20):
        obs, reward, *_ = plain.step(policy(obs))
        with torch.no_grad():
            ref_obs, ref_reward, *_ = graphless.step(policy(ref_obs))
        assert torch.equal(reward, ref_reward) and torch.equal(plain.state, graphless.state)
    assert not (plain.state.requires_grad or obs.requires_grad or reward.requires_grad)
