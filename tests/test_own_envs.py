"""Envs a user brings: ids registered with a vector entry point only, gymnasium vector envs made by
hand, Dict and Tuple observations (flattened on every engine, in rendering too)."""

from __future__ import annotations

import copy
import re
import types
import warnings
from collections import OrderedDict

import gymnasium as gym
import numpy as np
import pytest
import torch

import flipes
from flipes.builders import build_env
from flipes.commands import evaluate_command, export_command, record
from flipes.resume import same_option
from flipes.rl import MLPPolicy, RolloutFitness, make_vector_env, rollout, run_episodes
from flipes.rl.envs import EnvError
from flipes.rl.rollout import episode_seed
from flipes.rl.spaces import flatten_observations, layout


class Signs(gym.vector.VectorEnv):
    """A batched torch env: one-step episodes of 3 uniform numbers, MultiBinary(3) actions paid one per entry equal to
    ``x > 0``. Records the device it was made for and the type of the actions it was given."""

    def __init__(self, num_envs: int, device: str | torch.device = "cpu") -> None:
        self.num_envs, self.device = num_envs, torch.device(device)
        self.single_observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
        self.single_action_space = gym.spaces.MultiBinary(3)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}
        self.gen, self.action_types = torch.Generator(), []

    def reset(self, *, seed=None, options=None):  # type: ignore[override]
        self.gen.manual_seed(seed)  # one int: gymnasium's convention for a vector env
        self.x = 2 * torch.rand(self.num_envs, 3, generator=self.gen, device=self.device) - 1
        return self.x.clone(), {}

    def step(self, actions):  # type: ignore[override]
        self.action_types.append(type(actions))
        reward = (actions.long() == (self.x > 0).long()).sum(1).double()
        done = torch.ones(self.num_envs, dtype=torch.bool)
        return self.x.clone(), reward, done, torch.zeros_like(done), {}


class Goal(gym.Env):
    """A numpy env with nested Dict observations (a (2, 2) Box, a Tuple of a MultiBinary and a Box) and Box actions."""

    observation_space = gym.spaces.Dict(
        {
            "position": gym.spaces.Box(-5, 5, (2, 2), np.float32),
            "goal": gym.spaces.Tuple((gym.spaces.MultiBinary(2), gym.spaces.Box(-5, 5, (3,), np.float64))),
        }
    )
    action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}  # noqa: RUF012

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):  # type: ignore[override]
        super().reset(seed=seed)
        self.p = self.np_random.uniform(-2, 2, (2, 2)).astype(np.float32)
        self.g = self.np_random.uniform(-2, 2, 3)
        self.t = 0
        return self._obs(), {}

    def _obs(self) -> dict:
        return {"position": self.p.copy(), "goal": ((self.g[:2] > 0).astype(np.int8), self.g.copy())}

    def step(self, action):  # type: ignore[override]
        self.p = self.p + 0.1 * np.asarray(action, np.float32)
        self.t += 1
        return self._obs(), -float(np.abs(self.p[0] - self.g[:2]).sum()), False, self.t >= 5, {}

    def render(self):  # type: ignore[override]
        return np.zeros((8, 8, 3), np.uint8)


class NoFrames(Goal):
    def render(self):  # type: ignore[override]  # render_mode taken, no frame given
        return None


class NoRender(Goal):
    def __init__(self) -> None:  # no render_mode argument, as many envs of one's own
        pass


class Parity(gym.vector.VectorEnv):
    """A torch env with Discrete(6, start=2) observations (a state index): action 1 pays 1 in odd states, action 0 in
    even ones. Episodes last ``length`` steps, or never end (``length=None``: no time limit)."""

    def __init__(self, num_envs: int, length: int | None = 1) -> None:
        self.num_envs, self.length = num_envs, length
        self.single_observation_space = gym.spaces.Discrete(6, start=2)
        self.single_action_space = gym.spaces.Discrete(2)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}
        self.gen = torch.Generator()

    def _draw(self) -> torch.Tensor:
        self.s = torch.randint(2, 8, (self.num_envs,), generator=self.gen)
        return self.s.clone()

    def reset(self, *, seed=None, options=None):  # type: ignore[override]
        self.gen.manual_seed(seed)
        self.t = 0
        return self._draw(), {}

    def step(self, actions):  # type: ignore[override]
        reward = (actions == self.s % 2).double()
        self.t += 1
        ended = torch.full((self.num_envs,), self.length is not None and self.t >= self.length)
        return self._draw(), reward, ended, torch.zeros_like(ended), {}


gym.register("owntest/Signs-v0", vector_entry_point=Signs)
gym.register("owntest/Parity-v0", vector_entry_point=Parity)
# far longer episodes than the cut, and no time limit: an episode the cut missed ends the test, not runs forever
gym.register("owntest/Endless-v0", vector_entry_point=Parity, kwargs={"length": 1000})
gym.register("owntest/Goal-v0", entry_point=Goal)
gym.register("owntest/NoRender-v0", entry_point=NoRender)
gym.register("owntest/NoFrames-v0", entry_point=NoFrames)
gym.register("owntest/CartPoleVec-v0", vector_entry_point="gymnasium.envs.classic_control.cartpole:CartPoleVectorEnv")
gym.register("owntest/TorchCartPole-v0", vector_entry_point="envs.cartpole:CartPoleVectorEnv")  # env i from seed + i
gym.register("owntest/BothCartPole-v0", entry_point="envs.cartpole:CartPoleEnv",  # one to render, one to train
             vector_entry_point="envs.cartpole:CartPoleVectorEnv", max_episode_steps=500)  # fmt: skip
gym.register("owntest/DiscreteEntry-v0", entry_point=lambda: gym.wrappers.TransformObservation(
    Goal(), lambda o: {"position": o["position"], "n": 1}, gym.spaces.Dict(
        {"position": Goal.observation_space["position"], "n": gym.spaces.Discrete(3)})))  # fmt: skip


def test_an_id_registered_with_a_vector_entry_point_only_is_made_by_it() -> None:
    """An id with a vector_entry_point and no entry_point is made by that entry point (not refused by gymnasium's
    SyncVectorEnv): a torch env is given the device and gets tensor actions, and its observations are those of the class
    itself; gymnasium's numpy CartPoleVectorEnv under an id of one's own (a reset takes one int seed) rolls out; the
    sync and async prefixes, which make one env per copy, are refused naming the id to use."""
    env = make_vector_env("owntest/Signs-v0", 5, device="cpu")
    assert env.unwrapped.device == torch.device("cpu") and isinstance(env.unwrapped, Signs)
    assert make_vector_env("owntest/Signs-v0", 2, device="meta").unwrapped.device == torch.device("meta")  # not its default
    obs, _ = env.reset(seed=7)
    assert torch.equal(obs, Signs(5).reset(seed=7)[0])
    env.step(torch.zeros(5, 3, dtype=torch.int8))
    assert env.unwrapped.action_types == [torch.Tensor]
    cartpole = make_vector_env("owntest/CartPoleVec-v0", 4)
    ep = run_episodes(cartpole, lambda o: (o[:, 2] > 0).long(), seed=1)  # the lean-following controller
    assert (ep.lengths > 20).all() and torch.equal(ep.returns, ep.lengths.double())
    expect = "'gymnasium-sync:owntest/Signs-v0': owntest/Signs-v0 has a vector_entry_point only, no entry_point to make one "
    with pytest.raises(EnvError, match="^" + re.escape(expect + "env per copy; use owntest/Signs-v0") + "$"):
        make_vector_env("gymnasium-sync:owntest/Signs-v0", 2)


def test_flipes_train_learns_on_a_batched_torch_env_registered_under_ones_own_id(tmp_path) -> None:
    """flipes.train on an id registered with only a vector_entry_point (a torch env of one's own, MultiBinary actions):
    the center policy's mean return over 100 fresh episodes rises from chance (1.5 of 3) above 2.7 (2.82 at seed 0, 2.79–2.95
    on seeds 0–6; the 100 episodes' standard error is about 0.04)."""
    result = flipes.train(
        env="owntest/Signs-v0", popsize=64, generations=60, sigma=0.2, lr=0.1, hidden=[16], episodes=4, eval_every=60,
        eval_episodes=100, target=None, out=str(tmp_path / "run"), progress=False, tensorboard=False, plot=False,
    )  # fmt: skip
    assert result.eval_return > 2.7


def test_each_members_return_on_a_numpy_vector_env_of_ones_own_is_that_of_its_explicit_weights() -> None:
    """RolloutFitness given a gymnasium SyncVectorEnv made by hand (numpy in and out) rolls it out through torch: each
    member's mean return over its 2 episodes equals that of its own weights (member_state_dict in a plain copy) run
    alone on a fresh SyncVectorEnv reset with the member's seeds; run_episodes takes such an env too."""
    torch.manual_seed(0)
    space = gym.make_vec("CartPole-v1", num_envs=1).single_observation_space
    plain = MLPPolicy(space, gym.spaces.Discrete(2), hidden=(8,)).double()
    policy = copy.deepcopy(plain)
    es = flipes.FlipES(policy, popsize=4, sigma=0.5, seed=3)
    env = gym.make_vec("CartPole-v1", num_envs=8, vectorization_mode="sync")
    with es.population() as pop:
        returns = RolloutFitness(env, episodes=2, seed=5)(policy, pop)
        base = episode_seed(5, pop.generation, "population")
        for m in range(4):
            member = copy.deepcopy(plain)
            member.load_state_dict(es.member_state_dict(m))
            alone = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")
            assert run_episodes(alone, member, seed=base + 2 * m).returns.mean() == returns[m]
    assert len(set(returns.tolist())) > 1


def test_gymnasium_vector_envs_roll_out_alike_in_either_autoreset_mode_and_are_refused_without_autoreset() -> None:
    """A rollout steps every env until all episodes have ended, masking the steps after an env's end: gymnasium's
    SyncVectorEnv with NEXT_STEP and with SAME_STEP autoreset give each env its first episode's return and length alike.
    With DISABLED, whose env asserts when a finished env is stepped, run_episodes and RolloutFitness refuse it before
    any step, in one line naming the modes that work."""

    def make(mode: gym.vector.AutoresetMode, n: int = 6) -> gym.vector.VectorEnv:
        return gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode})

    lean = lambda o: (o[:, 2] > 0).long()  # noqa: E731
    next_step, same_step = (
        run_episodes(make(mode), lean, seed=1)
        for mode in (gym.vector.AutoresetMode.NEXT_STEP, gym.vector.AutoresetMode.SAME_STEP)
    )
    assert torch.equal(next_step.returns, same_step.returns) and torch.equal(next_step.lengths, same_step.lengths)
    assert len(set(next_step.lengths.tolist())) > 1  # the envs ended at different steps
    disabled = make(gym.vector.AutoresetMode.DISABLED)
    expect = "steps every env until all episodes have ended, and gymnasium's SyncVectorEnv with autoreset_mode DISABLED"
    with pytest.raises(ValueError, match="^run_episodes " + re.escape(expect)):
        run_episodes(disabled, lean, seed=1)
    with pytest.raises(ValueError, match="^RolloutFitness " + re.escape(expect)):
        RolloutFitness(disabled)


def test_a_rollout_fitness_given_to_train_counts_its_env_steps_in_the_rows_and_over_a_resume(tmp_path) -> None:
    """flipes.train(env="none", fitness=RolloutFitness(a vector env of one's own)), the README's way for an env object,
    logs the env steps that fitness counts: each row's timesteps is its count after that generation (not 0), and a run
    resumed after 2 of 4 generations logs the timesteps of the uninterrupted run."""
    env = gym.make_vec("CartPole-v1", num_envs=8, vectorization_mode="sync")

    def run(out: str, generations: int, resume: str = "") -> tuple[list[int], list[int]]:
        fitness, counts = RolloutFitness(env, seed=0), []

        class Count(flipes.Callback):
            def on_generation(self, state, row) -> None:
                counts.append(fitness.timesteps)

        result = flipes.train(
            env="none", model=lambda _: MLPPolicy(env.single_observation_space, env.single_action_space, hidden=(8,)),
            fitness=fitness, popsize=8, generations=generations, out=out, resume=resume, progress=False,
            tensorboard=False, plot=False, callbacks=[Count()],
        )  # fmt: skip
        return [row["timesteps"] for row in result.metrics], counts

    whole, counts = run(str(tmp_path / "whole"), 4)
    assert whole == counts and 0 < whole[0] < whole[1] < whole[2] < whole[3]
    first, _ = run(str(tmp_path / "part"), 2)
    rest, _ = run(str(tmp_path / "part"), 4, resume=str(tmp_path / "part"))
    assert first + rest == whole


def test_a_fitness_with_a_timesteps_setting_of_its_own_logs_no_env_steps_and_keeps_it_over_a_resume(tmp_path) -> None:
    """A plugged-in fitness object that is no RolloutFitness keeps its own integer ``timesteps`` (here a horizon):
    the rows log 0 env steps, and a resume leaves that attribute as the object was given."""

    class Horizon:
        def __init__(self, timesteps: int) -> None:
            self.timesteps = timesteps

        def __call__(self, model: torch.nn.Module, pop: flipes.Population) -> torch.Tensor:
            return model(torch.full((pop.size, 3), self.timesteps / 50.0))[:, 0]

    def run(fitness: Horizon, generations: int, resume: str = "") -> list[int]:
        result = flipes.train(
            env="none", model=lambda _: torch.nn.Linear(3, 2), fitness=fitness, popsize=8, generations=generations,
            out=str(tmp_path / "run"), resume=resume, progress=False, tensorboard=False, plot=False,
        )  # fmt: skip
        return [row["timesteps"] for row in result.metrics]

    first, resumed = Horizon(50), Horizon(30)
    assert run(first, 2) == [0, 0] and first.timesteps == 50
    assert run(resumed, 3, resume=str(tmp_path / "run")) == [0] and resumed.timesteps == 30


@pytest.mark.parametrize("engine", ["gymnasium-sync", "gymnasium-async"])
def test_dict_and_tuple_observations_are_flattened_as_gymnasium_flattens_one_env(engine: str) -> None:
    """Nested Dict observations (a (2, 2) Box, a Tuple of MultiBinary and float64 Box) come out of the sync and worker
    engines as one float64 Box, every row equal to gymnasium.spaces.flatten of that env alone, after a reset and a step;
    the note names each entry's columns; a Discrete entry is refused naming it and FlattenObservation."""
    notes: list[str] = []
    env = make_vector_env(f"{engine}:test_own_envs:owntest/Goal-v0", 4, threads=2, note=notes.append)  # workers import it
    try:
        assert env.single_observation_space == gym.spaces.flatten_space(Goal.observation_space)
        assert notes == [
            "test_own_envs:owntest/Goal-v0's Dict observations are flattened into one Box of 9 "
            "(goal[0] 0:2, goal[1] 2:5, position 5:9)"
        ]
        obs, _ = env.reset(seed=10)
        actions = torch.linspace(-1, 1, 8).view(4, 2)
        after = env.step(actions)[0]
        for i in range(4):
            one = Goal()
            first = gym.spaces.flatten(Goal.observation_space, one.reset(seed=10 + i)[0])
            second = gym.spaces.flatten(Goal.observation_space, one.step(actions[i].numpy())[0])
            assert (
                obs.dtype == torch.float64 and np.array_equal(obs[i].numpy(), first) and np.array_equal(after[i].numpy(), second)
            )
    finally:
        env.close()
    with pytest.raises(EnvError, match=r"entry 'n' is Discrete\(3\); .*gymnasium.wrappers.FlattenObservation"):
        make_vector_env(f"{engine}:test_own_envs:owntest/DiscreteEntry-v0", 2)


def test_a_batch_of_dict_observations_flattens_as_gymnasium_flattens_each_in_the_dicts_own_key_order() -> None:
    """A Dict space built from an OrderedDict keeps its keys unsorted (gymnasium sorts only a plain dict's); a batch
    of its observations, numpy or torch, with one or two batch dimensions, flattens into exactly the rows
    ``gymnasium.spaces.flatten`` gives each observation alone, in the flattened space's dtype, and ``layout`` names the
    columns in that order."""
    box = gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
    space = gym.spaces.Dict(OrderedDict([("z", box), ("a", gym.spaces.Tuple((gym.spaces.MultiBinary(3), box)))]))
    assert list(space.spaces) == ["z", "a"]
    space.seed(0)
    batch = [space.sample() for _ in range(4)]
    expect = np.stack([gym.spaces.flatten(space, b) for b in batch])
    stacked = {"z": np.stack([b["z"] for b in batch]), "a": tuple(np.stack([b["a"][i] for b in batch]) for i in range(2))}
    flat = flatten_observations(space, stacked)
    assert flat.dtype == expect.dtype and np.array_equal(flat, expect)
    tensors = {"z": torch.from_numpy(stacked["z"]), "a": tuple(torch.from_numpy(x) for x in stacked["a"])}
    assert torch.equal(flatten_observations(space, tensors), torch.from_numpy(expect))
    two = {"z": stacked["z"].reshape(2, 2, 2), "a": tuple(x.reshape(2, 2, -1) for x in stacked["a"])}
    assert np.array_equal(flatten_observations(space, two, batch_dims=2), expect.reshape(2, 2, -1))
    two_t = {"z": torch.from_numpy(two["z"]), "a": tuple(torch.from_numpy(x) for x in two["a"])}
    assert torch.equal(flatten_observations(space, two_t, batch_dims=2), torch.from_numpy(expect).view(2, 2, -1))
    assert layout(space) == "z 0:2, a[0] 2:5, a[1] 5:7"


def test_envpools_dm_control_dict_observations_are_its_entries_side_by_side() -> None:
    """EnvPool's dm_control tasks observe a Dict: through flipes each row is its position and velocity entries side by
    side, as a pool of the same seeds gives them, after a reset and after steps."""
    envpool = pytest.importorskip("envpool")
    env = make_vector_env("envpool:CheetahRun-v1", 3, threads=1)
    raw = envpool.make("CheetahRun-v1", env_type="gymnasium", num_envs=3, batch_size=3, num_threads=1, seed=[4, 5, 6])
    assert env.single_observation_space.shape == (17,)
    obs, _ = env.reset(seed=4)
    o, _ = raw.reset()
    assert np.array_equal(obs.numpy(), np.concatenate([o["position"], o["velocity"]], 1))
    for _ in range(3):
        obs = env.step(torch.full((3, 6), 0.5))[0]
        o = raw.step(np.full((3, 6), 0.5, np.float32))[0]
    assert np.array_equal(obs.numpy(), np.concatenate([o["position"], o["velocity"]], 1))
    env.close()


@pytest.mark.filterwarnings("ignore:.*RGB-array rendering should return")  # gymnasium's, before ours
def test_a_policy_trained_on_dict_observations_renders_on_the_flattened_env(tmp_path) -> None:
    """flipes.train's MLP policy on a Dict-observation env, then --render's recorder: the episode plays on gymnasium's
    env with its observations flattened as in training (5 steps: 6 frames); an env whose constructor takes no
    render_mode, or whose render() returns no frame, is one UsageError saying what the env needs, not a TypeError."""
    result = flipes.train(env="owntest/Goal-v0", popsize=8, generations=1, out=str(tmp_path / "goal"), progress=False,
                          tensorboard=False, plot=False, target=None)  # fmt: skip
    policy = flipes.load_policy(result.run_dir)
    assert record(policy, "owntest/Goal-v0", tmp_path / "goal.gif", seed=0, max_frames=100) == 6
    with pytest.raises(flipes.UsageError, match=r"^--render: gymnasium.make\('owntest/NoRender-v0', .*takes render_mode"):
        record(policy, "owntest/NoRender-v0", tmp_path / "no.gif", seed=0, max_frames=100)
    with pytest.raises(flipes.UsageError, match=r"^--render: owntest/NoFrames-v0's render\(\) returned NoneType .*uint8 array$"):
        record(policy, "owntest/NoFrames-v0", tmp_path / "no.gif", seed=0, max_frames=100)


def test_load_policy_takes_an_envs_dict_observations_as_gymnasium_gives_them(tmp_path) -> None:
    """The policy that load_policy gives for a run on a Dict-observation env takes gymnasium's own observations: one
    nested dict of arrays gives the numpy action of its ``gymnasium.spaces.flatten`` row (bit for bit), a stacked batch of 3 the
    actions of the 3 rows, a dict of tensors tensors; a policy built by hand on the flattened Box is one ValueError
    naming the flattening."""
    result = flipes.train(env="owntest/Goal-v0", popsize=8, generations=1, out=str(tmp_path / "goal"), progress=False,
                          tensorboard=False, plot=False, target=None)  # fmt: skip
    policy, env, space = flipes.load_policy(result.run_dir), Goal(), Goal.observation_space
    batch = [env.reset(seed=s)[0] for s in range(3)]
    flat = np.stack([gym.spaces.flatten(space, o) for o in batch])
    expect = policy(flat)
    one = policy(batch[0])
    assert isinstance(one, np.ndarray) and one.dtype == np.float32 and np.array_equal(one, policy(flat[0]))
    stacked = {
        "position": np.stack([o["position"] for o in batch]),
        "goal": tuple(np.stack([o["goal"][i] for o in batch]) for i in range(2)),
    }
    assert np.array_equal(policy(stacked), expect)
    tensors = {"position": torch.from_numpy(stacked["position"]), "goal": tuple(map(torch.from_numpy, stacked["goal"]))}
    assert torch.equal(policy(tensors), torch.from_numpy(expect))
    by_hand = MLPPolicy(gym.spaces.flatten_space(space), Goal.action_space)
    with pytest.raises(ValueError, match=r"^MLPPolicy takes observations as one array, got a dict; .*gymnasium.spaces.flatten"):
        by_hand(batch[0])


@pytest.mark.skipif(torch.__version__ < (2, 4), reason="flipes export needs torch >= 2.4")
def test_flipes_export_of_a_dict_observation_run_names_the_columns_its_program_takes(tmp_path, capsys) -> None:
    """`flipes export` of a run on nested Dict observations says the program takes them flattened as
    gymnasium.spaces.flatten does, naming each entry's columns; the program's actions on such rows are bit for bit
    those load_policy's policy gives for the dicts themselves."""
    run = flipes.train(env="owntest/Goal-v0", popsize=8, generations=1, out=str(tmp_path / "goal"), progress=False,
                       tensorboard=False, plot=False, target=None).run_dir  # fmt: skip
    capsys.readouterr()
    path = export_command([str(run)])
    assert capsys.readouterr().out == (
        f"wrote {path}: torch.export.load({str(path)!r}).module()(obs) maps observations float64 (batch, 9) (the env's "
        "Dict flattened as gymnasium.spaces.flatten does: goal[0] 0:2, goal[1] 2:5, position 5:9) to actions\n"
    )
    env, policy = Goal(), flipes.load_policy(run)
    batch = [env.reset(seed=s)[0] for s in range(3)]
    rows = torch.from_numpy(np.stack([gym.spaces.flatten(Goal.observation_space, o) for o in batch]))
    stacked = {"position": np.stack([o["position"] for o in batch]),
               "goal": tuple(np.stack([o["goal"][i] for o in batch]) for i in range(2))}  # fmt: skip
    assert np.array_equal(torch.export.load(str(path)).module()(rows).numpy(), policy(stacked))


def test_a_policy_built_on_a_dict_space_acts_as_on_its_flattened_box() -> None:
    """MLPPolicy built on a Dict observation space (as a loop of one's own passes a gymnasium vector env's) has the
    parameters of one on the Box flipes' envs flatten it into, and with the same weights gives the same actions on the
    flattened rows, a batch of dicts and one dict (one on a Tuple space a batch of tuples, flattened in the Tuple's
    order); GRUPolicy, which the README names beside it, gives a batch of dicts the actions and state of the flattened
    rows; a Dict with a Discrete entry is refused naming FlattenObservation."""
    space = Goal.observation_space
    torch.manual_seed(0)
    flat = MLPPolicy(gym.spaces.flatten_space(space), Goal.action_space, hidden=(8,), normalize=False)
    policy = MLPPolicy(space, Goal.action_space, hidden=(8,), normalize=False)
    policy.load_state_dict(flat.state_dict())
    env = Goal()
    batch = [env.reset(seed=s)[0] for s in range(3)]
    rows = torch.from_numpy(np.stack([gym.spaces.flatten(space, o) for o in batch]))
    stacked = {"position": torch.from_numpy(np.stack([o["position"] for o in batch])),
               "goal": tuple(torch.from_numpy(np.stack([o["goal"][i] for o in batch])) for i in range(2))}  # fmt: skip
    assert torch.equal(policy(rows), flat(rows)) and torch.equal(policy(stacked), flat(rows))
    assert np.array_equal(policy(batch[0]), flat(rows[0].numpy()))
    # a Tuple space at the top takes its entries in its order: position's 4 columns, then goal's 5 (the Dict sorts goal first)
    top = MLPPolicy(gym.spaces.Tuple((space["position"], space["goal"])), Goal.action_space, hidden=(8,), normalize=False)
    top.load_state_dict(flat.state_dict())
    pairs = (stacked["position"], stacked["goal"])
    assert torch.equal(top(pairs), flat(torch.cat([rows[:, 5:], rows[:, :5]], dim=-1)))
    torch.manual_seed(0)
    flat = flipes.rl.GRUPolicy(gym.spaces.flatten_space(space), Goal.action_space, hidden=(8,), normalize=False)
    policy = flipes.rl.GRUPolicy(space, Goal.action_space, hidden=(8,), normalize=False)
    policy.load_state_dict(flat.state_dict())
    (a, h), (b, g) = policy(stacked, None), flat(rows, None)
    assert torch.equal(a, b) and torch.equal(h, g)
    with pytest.raises(ValueError, match=r"entry 'n' is Discrete\(3\); .*gymnasium.wrappers.FlattenObservation"):
        MLPPolicy(gym.spaces.Dict({"x": space["position"], "n": gym.spaces.Discrete(3)}), Goal.action_space)


@pytest.mark.skipif(torch.__version__ < (2, 4), reason="flipes export needs torch >= 2.4")
def test_discrete_observations_are_one_hot_for_each_member_and_learnt_and_exported(tmp_path) -> None:
    """MLPPolicy on Discrete(6, start=2) observations (state indices): inside a population each member's logits are
    its explicit weights applied to the one-hot of ``obs - start`` (to 1e-12 in float64; no normalization, even when
    asked); flipes.train
    learns the state's parity from chance (0.5) to above 0.95 per step, and flipes.export_policy's program, which
    takes int64 indices, acts as the policy on every state."""
    space = gym.spaces.Discrete(6, start=2)
    plain = MLPPolicy(space, gym.spaces.Discrete(2), hidden=(4,)).double()
    assert plain.obs_norm is None and plain.obs_dim == 6
    policy = copy.deepcopy(plain)
    es = flipes.FlipES(policy, popsize=4, sigma=0.5, seed=0)
    obs = torch.arange(2, 8).repeat(4, 3, 1)  # (members, 3, 6)
    with es.population():
        logits = policy.net(policy.observe(obs, torch.float64))
        for i in range(4):
            member = copy.deepcopy(plain)
            member.load_state_dict(es.member_state_dict(i))
            expect = member.net(torch.eye(6, dtype=torch.float64).repeat(3, 1, 1))
            torch.testing.assert_close(logits[i], expect, rtol=0, atol=1e-12)
    result = flipes.train(
        env="owntest/Parity-v0", popsize=32, generations=30, hidden=[8], eval_every=30, eval_episodes=200, target=None,
        out=str(tmp_path / "parity"), progress=False, tensorboard=False, plot=False,
    )  # fmt: skip
    assert result.eval_return > 0.95
    program = torch.export.load(str(flipes.export_policy(result.run_dir))).module()
    states = torch.arange(2, 8)
    assert torch.equal(program(states), flipes.load_policy(result.run_dir)(states))


def test_max_episode_steps_cuts_the_episodes_of_an_env_without_a_time_limit(tmp_path, monkeypatch) -> None:
    """An env whose episodes run 1000 steps, with no time limit, trains with max_episode_steps=7: every generation
    counts popsize × 7 steps, every evaluation eval_episodes × 7, `flipes evaluate` cuts each of its episodes at 7 steps
    as the run did, and a resume with another cut is refused; without a cut, a rollout still running after LONG_EPISODE
    steps is warned about once."""
    kw = {"env": "owntest/Endless-v0", "popsize": 8, "eval_episodes": 3, "eval_every": 1, "target": None, "progress": False,
          "tensorboard": False, "plot": False, "out": str(tmp_path / "endless")}  # fmt: skip
    rows = flipes.train(**kw, generations=2, max_episode_steps=7).metrics
    assert [r["timesteps"] for r in rows] == [56, 112] and all(r["eval_steps"] == 21 for r in rows)
    evaluated: list[torch.Tensor] = []
    real = flipes.runs.run_episodes

    def spy(*args, **kwargs):  # the episodes flipes evaluate plays
        episodes = real(*args, **kwargs)
        evaluated.append(episodes.lengths)
        return episodes

    monkeypatch.setattr(flipes.runs, "run_episodes", spy)
    mean, _ = evaluate_command([kw["out"], "--episodes", "5"])
    assert 0 <= mean <= 7 and evaluated[0].tolist() == [7] * 5
    with pytest.raises(flipes.UsageError, match=r"--max-episode-steps: saved 7, now 9"):
        flipes.train(**kw, generations=3, max_episode_steps=9, resume=kw["out"])
    monkeypatch.setattr(rollout, "LONG_EPISODE", 50)
    with pytest.warns(UserWarning, match=r"^2 of 2 episodes are still running after 50 steps: .*--max-episode-steps N"):
        assert run_episodes(Parity(2, length=60), lambda o: o % 2, seed=0).lengths.tolist() == [60, 60]


def test_a_single_env_given_where_a_vector_env_is_needed_says_how_to_make_one() -> None:
    """RolloutFitness and run_episodes given one gymnasium.Env (or an id) instead of a vector env raise a TypeError
    naming what they got and the three ways to make a vector env, not an AttributeError on num_envs."""
    fix = r"; make one with flipes.rl.make_vector_env\(id, n\), gymnasium.make_vec\(id, num_envs=n\) or gymnasium.vector"
    with pytest.raises(
        TypeError, match=r"^RolloutFitness steps a vector env of many copies, got a single gymnasium.Env .*" + fix
    ):
        RolloutFitness(Goal())
    with pytest.raises(TypeError, match=r"^run_episodes steps a vector env of many copies, got a str \('CartPole-v1'\)" + fix):
        run_episodes("CartPole-v1", lambda o: o)


def test_a_numpy_vector_env_rolls_out_on_the_host_whatever_the_default_device() -> None:
    """run_episodes on a gymnasium SyncVectorEnv made by hand (numpy) sees its observations as CPU tensors, as the
    default torch device says nothing about where numpy data lives: under the meta default device the episodes of the
    lean-following controller are those played without it."""
    env = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")
    expect = run_episodes(env, lambda o: (o[:, 2] > 0).long(), seed=4).lengths
    torch.set_default_device("meta")
    try:
        got = run_episodes(env, lambda o: (o[:, 2] > 0).long(), seed=4).lengths
    finally:
        torch.set_default_device(None)
    assert got.device == torch.device("cpu") and torch.equal(got, expect) and (expect > 20).all()


gym.register("owntest/SignsLimited-v0", vector_entry_point=Signs, max_episode_steps=50)


def test_a_vector_entry_point_that_refuses_its_arguments_is_an_env_error_naming_them(tmp_path) -> None:
    """An id registered with a time limit passes max_episode_steps= to its vector_entry_point (gymnasium's rule): a
    constructor without it is an EnvError naming the id, the TypeError and every argument it is given, and
    flipes.train says so in one UsageError, not a traceback."""
    given = r"its constructor is given num_envs, device, max_episode_steps: take each of them \(or \*\*kwargs\)$"
    failed = r"^owntest/SignsLimited-v0's vector_entry_point failed \(.*'max_episode_steps'\); "
    with pytest.raises(EnvError, match=failed + given):
        make_vector_env("owntest/SignsLimited-v0", 2)
    with pytest.raises(flipes.UsageError, match=given):
        flipes.train(env="owntest/SignsLimited-v0", popsize=4, generations=1, progress=False, tensorboard=False, plot=False,
                     out=str(tmp_path))  # fmt: skip


@pytest.mark.filterwarnings("ignore:.*RGB-array rendering should return")
def test_render_steps_toy_text_envs_with_int_actions_and_stops_at_the_episode_cut(tmp_path) -> None:
    """--render's recorder on CliffWalking (Discrete observations, Discrete actions indexing the env's transition table,
    no time limit): the episode plays with the policy's actions as ints, and ends after ``max_steps`` steps (one frame
    more, the reset's) when it has not ended by itself, else after ``max_frames - 1``."""
    pytest.importorskip("pygame")
    env = gym.make("CliffWalking-v1")
    torch.manual_seed(0)
    policy = MLPPolicy(env.observation_space, env.action_space, hidden=(4,)).eval()
    with torch.no_grad():
        policy.net[-1].bias.copy_(torch.tensor([1.0, 0, 0, 0]))  # always up: at the top row it stays, never ending
        policy.net[-1].weight.zero_()
    assert record(policy, "CliffWalking-v1", tmp_path / "cw.gif", seed=0, max_frames=30, max_steps=7) == 8
    assert record(policy, "CliffWalking-v1", tmp_path / "cw.gif", seed=0, max_frames=5) == 5


def test_render_refuses_an_env_whose_observations_cannot_be_flattened_in_one_line(tmp_path) -> None:
    """A policy trained where Blackjack's observations are a Box (EnvPool's), rendered on gymnasium's Blackjack (a Tuple
    of Discrete): one UsageError naming the space and the way on, and no file written."""
    pytest.importorskip("pygame")
    policy = MLPPolicy(gym.spaces.Box(0, 31, (3,), np.int32), gym.spaces.Discrete(2), hidden=(4,)).eval()
    with pytest.raises(flipes.UsageError, match=r"^--render: gymnasium's Blackjack-v1 gives Tuple\(Discrete.*without --render$"):
        record(policy, "Blackjack-v1", tmp_path / "bj.gif", seed=0, max_frames=10)
    assert not list(tmp_path.iterdir())


@pytest.mark.filterwarnings("ignore:.*Taxi-v3 is out of date")  # gymnasium's own, beside the error
def test_render_of_an_id_gymnasium_does_not_have_says_so_in_one_line(tmp_path) -> None:
    """An id only an engine has (EnvPool's Taxi-v3; gymnasium 1.x has Taxi-v4) or no one has, given to --render's
    recorder: one UsageError saying gymnasium has no such env and to evaluate without --render, and no file written."""
    policy = MLPPolicy(gym.spaces.Discrete(500), gym.spaces.Discrete(6), hidden=(4,)).eval()
    for env_id in ("envpool:Taxi-v3", "NoSuchEnv-v0"):
        with pytest.raises(flipes.UsageError, match=r"^--render: gymnasium has no env '.*' to render \(.*without --render"):
            record(policy, env_id, tmp_path / "taxi.gif", seed=0, max_frames=10)
    assert not list(tmp_path.iterdir())


class Sloppy(Signs):
    """Signs whose ``step`` or ``reset`` returns what a hurried env author writes (``mistake`` names it)."""

    def __init__(self, num_envs: int, mistake: str = "") -> None:
        super().__init__(num_envs)
        self.mistake = mistake

    def reset(self, *, seed=None, options=None):  # type: ignore[override]
        obs, info = super().reset(seed=seed, options=options)
        if self.mistake == "obs 2d":
            return obs[:, None], info
        return obs if self.mistake == "obs only" else (obs, info)

    def step(self, actions):  # type: ignore[override]
        obs, reward, terminated, truncated, info = super().step(actions)
        if self.mistake == "reward column":
            return obs, reward[:, None], terminated, truncated, info
        if self.mistake == "float flags":
            return obs, reward, terminated.float(), truncated.float(), info
        if self.mistake == "done":
            return obs, reward, terminated | truncated, info
        if self.mistake == "obs short":
            return obs[:, :2], reward, terminated, truncated, info
        return obs, reward, terminated, truncated, info


MISTAKES = ("reward column", "float flags", "done", "obs only", "obs 2d", "obs short")
for _mistake in ("", *MISTAKES):
    gym.register(f"owntest/Sloppy{_mistake.title().replace(' ', '')}-v0", vector_entry_point=Sloppy, kwargs={"mistake": _mistake})


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        ("reward column", "Sloppy.step() returned rewards of shape (6, 1) for 6 envs; return one per env, shape (6,)"),
        ("float flags", "Sloppy.step() returned terminated as a Tensor of shape (6,) and dtype float32 for 6 envs; return one"),
        ("done", "Sloppy.step() returned a tuple of 4, not gymnasium's (observations, rewards, terminated, truncated, infos)"),
        ("obs only", "Sloppy.reset() returned a Tensor of shape (6, 3) and dtype float32, not gymnasium's (observations, info)"),
        (
            "obs 2d",
            "Sloppy.reset() returned observations of shape (6, 1, 3) for 6 envs of Box(-1.0, 1.0, (3,), float32); "
            "return shape (6, 3), or declare the shape they have in single_observation_space",
        ),
        (
            "obs short",
            "Sloppy.step() returned observations of shape (6, 2) for 6 envs of Box(-1.0, 1.0, (3,), float32); "
            "return shape (6, 3), or declare",
        ),
    ],
)
def test_an_own_env_returning_other_than_gymnasiums_api_is_one_error_naming_the_value(
    tmp_path, mistake: str, message: str
) -> None:
    """A batched env of one's own whose reset or step returns other than gymnasium's vector API (rewards as a column,
    float flags, the old API's 4-tuple, observations without info, observations of another shape than its space's)
    stops training at its first step with a UsageError naming the env, the value and the shape it should have, not a
    torch error deep in the rollout; the same env returning the right values trains."""
    kw = {"popsize": 6, "generations": 1, "eval_episodes": 2, "progress": False, "tensorboard": False, "plot": False}
    with pytest.raises(flipes.UsageError, match="^" + re.escape("--env: " + message)):
        flipes.train(env=f"owntest/Sloppy{mistake.title().replace(' ', '')}-v0", out=str(tmp_path / "bad"), **kw)
    assert flipes.train(env="owntest/Sloppy-v0", out=str(tmp_path / "good"), **kw).reason == "generations"


def test_evaluate_with_render_of_an_env_that_cannot_render_refuses_before_its_episodes(tmp_path, capsys) -> None:
    """``flipes evaluate --render`` on a run of an env that gymnasium cannot make to render (a batched env of one's own,
    registered with a vector_entry_point only) is one UsageError saying what the env needs before any episode is
    evaluated: no return is printed first, and no file written; without --render the same run evaluates."""
    run = tmp_path / "signs"
    flipes.train(env="owntest/Signs-v0", popsize=8, generations=1, out=str(run), progress=False, tensorboard=False, plot=False)
    capsys.readouterr()
    with pytest.raises(flipes.UsageError, match=r"^--render: gymnasium.make\('owntest/Signs-v0', .*takes render_mode"):
        evaluate_command([str(run), "--episodes", "3", "--render", str(tmp_path / "signs.gif")])
    assert capsys.readouterr().out == ""
    assert not (tmp_path / "signs.gif").exists()
    evaluate_command([str(run), "--episodes", "3"])
    assert "center policy return" in capsys.readouterr().out


def test_an_own_env_seeding_its_copies_from_one_generator_is_named_where_the_population_is_split(tmp_path) -> None:
    """Where a member's episodes must not depend on how the population is split (--members-per-pass; --comm seeds
    under MPI, its rank 0 built here with a stand-in communicator of 2 ranks), a batched env of one's own whose copies
    share one generator (its env i does not start as one copy reset with seed + i) is named in a warning saying what
    it breaks and gymnasium's convention, pointing at the line that called flipes.train; an own env that follows it
    (flipes' torch CartPole), an unsplit run, one whose --members-per-pass holds all 4 members, rank 1 of the seeds
    run and rank 0 of an --comm allreduce run warn of nothing."""
    kw = {"popsize": 4, "generations": 1, "eval_episodes": 2, "progress": False, "tensorboard": False, "plot": False}
    fix = re.escape("parameters; seed env i from seed + i alone (gymnasium's convention)")
    said = re.escape("owntest/Signs-v0: env 1 of a reset(seed=s) starts elsewhere than one copy reset with seed s + 1, ")
    with pytest.warns(UserWarning, match=said + r".*another --members-per-pass \(or none\) will not give the same " + fix) as w:
        flipes.train(env="owntest/Signs-v0", members_per_pass=2, out=str(tmp_path / "parts"), **kw)
    assert [r.filename for r in w if "seed env i" in str(r.message)] == [__file__]  # the user's line, not flipes'
    config = flipes.TrainConfig.for_env("owntest/Signs-v0", popsize=4, groups=2, comm="seeds")
    ranks = types.SimpleNamespace(size=2, rank=0, local_size=1)
    with pytest.warns(UserWarning, match=said + r".*--comm seeds on another process count will not"):
        build_env(config, ranks, "cpu", None).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_env(config, types.SimpleNamespace(size=2, rank=1, local_size=1), "cpu", None).close()  # rank 0 alone warns
        allreduce = flipes.TrainConfig.for_env("owntest/Signs-v0", popsize=4, groups=2, comm="allreduce")
        build_env(allreduce, ranks, "cpu", None).close()  # each rank rolls out its own members whatever the count
        flipes.train(env="owntest/TorchCartPole-v0", members_per_pass=2, out=str(tmp_path / "conforms"), **kw)
        flipes.train(env="owntest/Signs-v0", out=str(tmp_path / "whole"), **kw)
        flipes.train(env="owntest/Signs-v0", members_per_pass=4, out=str(tmp_path / "one pass"), **kw)  # all 4 at once


def test_an_own_id_registering_both_entry_points_trains_on_its_batched_env(monkeypatch) -> None:
    """An id of one's own registering an entry_point (one env, to render) and a vector_entry_point (the batched env) is
    made by the batched one, said in a note naming gymnasium-sync: for the other (it stepped copies of the single env,
    25x slower on a torch env of one's own); gymnasium-sync: makes those copies, which give the very observations
    and rewards of a reset and two steps; gymnasium's own CartPole-v1, which registers both, keeps SyncVectorEnv."""
    import envs.cartpole

    notes: list[str] = []
    batched = make_vector_env("owntest/BothCartPole-v0", 4, note=notes.append)
    copies = make_vector_env("gymnasium-sync:owntest/BothCartPole-v0", 4, note=None)
    try:
        assert type(batched.unwrapped) is envs.cartpole.CartPoleVectorEnv
        assert type(copies.unwrapped) is gym.vector.SyncVectorEnv
        assert notes == ["owntest/BothCartPole-v0 steps in its vector_entry_point, a batched env "
                         "(gymnasium-sync:owntest/BothCartPole-v0 steps copies of its entry_point)"]  # fmt: skip
        a, b = batched.reset(seed=3)[0], copies.reset(seed=3)[0]
        assert torch.equal(a, b.to(a.dtype))
        for actions in (torch.tensor([0, 1, 1, 0]), torch.tensor([1, 1, 0, 0])):
            (a, ra, *_), (b, rb, *_) = batched.step(actions), copies.step(actions)
            assert torch.equal(a, b.to(a.dtype)) and torch.equal(ra.double(), rb.double())
    finally:
        batched.close()
        copies.close()
    monkeypatch.setattr(flipes.rl.envs, "envpool_ids", frozenset)  # as without EnvPool: the id goes to gymnasium
    cartpole = make_vector_env("CartPole-v1", 2, note=None)
    assert type(cartpole.unwrapped) is gym.vector.SyncVectorEnv
    cartpole.close()


def test_ale_pys_ids_registering_both_entry_points_keep_copies_of_the_atari_env() -> None:
    """An id registered as ale_py registers ALE/Pong-v5 (entry_point AtariEnv, vector_entry_point AtariVectorEnv, which
    gives 84x84 grayscale frame stacks, not the (210, 160, 3) frames the README documents) goes to gymnasium's copies
    of its entry_point, as its note says, not to the batched env (ale_py is not installed here: making it then fails)."""
    gym.register("owntest/FakeALE-v5", entry_point="ale_py.env:AtariEnv", vector_entry_point="ale_py.vector_env:AtariVectorEnv")
    notes: list[str] = []
    try:
        with pytest.raises(Exception, match="ale_py"):
            make_vector_env("owntest/FakeALE-v5", 2, note=notes.append)
    finally:
        del gym.registry["owntest/FakeALE-v5"]
    assert len(notes) == 1 and "SyncVectorEnv" in notes[0] and "vector_entry_point" not in notes[0], notes


REGISTERS = 'import gymnasium as gym\ngym.register("regtest/Cart-v0", vector_entry_point="envs.cartpole:CartPoleVectorEnv")\n'


@pytest.mark.skipif(torch.__version__ < (2, 4), reason="flipes export needs torch >= 2.4")
def test_a_run_on_an_id_its_script_registered_evaluates_exports_and_resumes_given_the_module(tmp_path, monkeypatch) -> None:
    """A run trained on an id the training process registered (``gym.register`` in the script) is made again in a
    process where nothing registers it by naming the module that does, ``--env mymodule:ID``, found in the working
    directory as ``--fitness`` finds its module: ``flipes evaluate`` then gives exactly the return it gave where the id
    was registered, ``flipes export`` writes, and a resume with that ``--env`` continues bit for bit (as ``flipes.train``
    without a stop). Without it, each says what is missing and how to give it; another id, engine or no module is
    refused as ``--env``."""
    import sys

    common = dict(popsize=8, episodes=1, progress=False, tensorboard=False, plot=False, seed=3)
    gym.register("regtest/Cart-v0", vector_entry_point="envs.cartpole:CartPoleVectorEnv")
    try:
        whole = flipes.train(env="regtest/Cart-v0", generations=3, out=str(tmp_path / "whole"), **common)
        flipes.train(env="regtest/Cart-v0", generations=2, out=str(tmp_path / "run"), **common)
        registered = evaluate_command([str(tmp_path / "run"), "--episodes", "4"])
    finally:
        del gym.registry["regtest/Cart-v0"]  # a fresh process: nothing registers it
    (tmp_path / "regmod.py").write_text(REGISTERS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])  # a console script's path
    monkeypatch.delitem(sys.modules, "regmod", raising=False)
    missing = r"run: its env regtest/Cart-v0 is registered by nothing imported here .*--env mymodule:regtest/Cart-v0 of"
    with pytest.raises(flipes.UsageError, match=missing):
        evaluate_command(["run", "--episodes", "4"])
    with pytest.raises(flipes.UsageError, match=missing):
        export_command(["run"])
    for other in ("regmod:regtest/Pole-v0", "gymnasium:regmod:regtest/Cart-v0", "regtest/Cart-v0"):
        with pytest.raises(flipes.UsageError, match=r"^--env: .* is not run's env regtest/Cart-v0 with a module: "):
            evaluate_command(["run", "--env", other])
    with pytest.raises(flipes.UsageError, match=r"^--env: cannot import 'nomod'"):
        evaluate_command(["run", "--env", "nomod:regtest/Cart-v0"])
    try:
        assert evaluate_command(["run", "--episodes", "4", "--env", "regmod:regtest/Cart-v0"]) == registered
        assert export_command(["run", "--env", "regmod:regtest/Cart-v0"]).is_file()
        gym.register("regtest/Pole-v0", vector_entry_point="envs.cartpole:CartPoleVectorEnv")  # another id, the same env
        with pytest.raises(flipes.UsageError, match=r"--env: saved 'regtest/Cart-v0', now 'regmod:regtest/Pole-v0'"):
            flipes.train(env="regmod:regtest/Pole-v0", generations=3, resume="run", out="run", **common)
        resumed = flipes.train(env="regmod:regtest/Cart-v0", generations=3, resume="run", out="run", **common)
    finally:
        for name in ("regtest/Cart-v0", "regtest/Pole-v0"):
            gym.registry.pop(name, None)
    assert all(
        torch.equal(a, b) for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True)
    )


TWO_MODULES = {
    "moda": 'import gymnasium as gym\ngym.register("regtest/Two-v0", vector_entry_point="envs.cartpole:CartPoleVectorEnv")\n',
    "modb": "import gymnasium as gym  # the same id, another env: episodes cut at 20 steps\n"
    'gym.register("regtest/Two-v0", vector_entry_point="envs.cartpole:CartPoleVectorEnv", kwargs={"max_episode_steps": 20})\n',
}


def test_a_resume_refuses_the_id_of_a_run_under_another_module_which_may_register_another_env(tmp_path, monkeypatch) -> None:
    """A run trained on ``moda:regtest/Two-v0`` is not resumed on ``modb:regtest/Two-v0``, which registers the id as
    another env (its episodes cut at 20 steps): the error names the saved and the given --env. The id without a module
    on one side only (the training script registered it, or imports the module itself) is the same env; so is the
    same module's spelling."""
    import sys

    for name, text in TWO_MODULES.items():
        (tmp_path / f"{name}.py").write_text(text)
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.chdir(tmp_path)
    common = dict(popsize=8, episodes=1, progress=False, tensorboard=False, plot=False, seed=3, out="run")
    try:
        flipes.train(env="moda:regtest/Two-v0", generations=1, **common)
        del gym.registry["regtest/Two-v0"]  # a fresh process: modb registers it alone
        with pytest.raises(flipes.UsageError, match=r"--env: saved 'moda:regtest/Two-v0', now 'modb:regtest/Two-v0'"):
            flipes.train(env="modb:regtest/Two-v0", generations=2, resume="run", **common)
    finally:
        gym.registry.pop("regtest/Two-v0", None)
    same = [("moda:regtest/Two-v0", "regtest/Two-v0"), ("regtest/Two-v0", "moda:regtest/Two-v0"), ("moda:X-v0", "moda:X-v0")]
    assert all(same_option("env", {"env": a}, {"env": b}) for a, b in same)
    other = [("moda:X-v0", "modb:X-v0"), ("envpool:X-v0", "X-v0"), ("gymnasium:moda:X-v0", "moda:X-v0"), ("moda:X", "moda:Y")]
    assert not any(same_option("env", {"env": a}, {"env": b}) for a, b in other)


def test_an_id_registered_by_the_running_script_is_named_with_how_another_process_makes_it() -> None:
    """Making an env whose id the running script registered (its creator in ``__main__``) notes that ``flipes evaluate``
    and ``flipes export`` need its module, ``--env mymodule:ID``; an id registered by a module's creator notes nothing."""

    def creator(**kwargs):  # a class of the training script
        return gym.make_vec("CartPole-v1", num_envs=kwargs["num_envs"], vectorization_mode="sync")

    creator.__module__ = "__main__"
    gym.register("regtest/Script-v0", vector_entry_point=creator)
    notes: list[str] = []
    try:
        make_vector_env("regtest/Script-v0", 1, "cpu", note=notes.append).close()
        make_vector_env("owntest/CartPoleVec-v0", 1, "cpu", note=notes.append).close()
    finally:
        del gym.registry["regtest/Script-v0"]
    assert len(notes) == 1 and re.search(
        r"^regtest/Script-v0 is registered by the running script.*--env mymodule:regtest/Script-v0$", notes[0]
    )
