"""Behaviours for novelty search (NS-ES, Conti et al. 2018) from a rollout's final observations and probes, and an
archive of them kept across generations: each member's final observation against its explicit weights alone; probes a
rollout cannot call, NaN results and parts of other shapes refused in one line; an archive held in a callback's
``state_dict()`` continuing a resumed or 2-process ``flipes.train`` run as one uninterrupted process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_mpi import shared_two_rank_scripts
from torch import Tensor

import flipes
from flipes.rl import MLPPolicy, Probe, RolloutFitness, episode_seed, make_vector_env, run_episodes

ENV = "flipes/CartPole-v1"


class MeanSpeed(Probe):
    """Each episode's mean cart speed over its counted steps, divided by the steps without a floor: NaN for an episode
    of no steps (``max_steps=0``), the slip a NaN check should name."""

    def reset(self, env: Any, obs: Tensor) -> None:
        self.sum, self.steps = torch.zeros(len(obs), dtype=obs.dtype), torch.zeros(len(obs), dtype=obs.dtype)

    def step(self, actions: Tensor, obs: Tensor, reward: Tensor, counted: Tensor, info: dict[str, Any]) -> None:
        self.sum += obs[:, 1] * counted
        self.steps += counted

    def result(self) -> Tensor:
        return self.sum / self.steps


class SomeNaN(MeanSpeed):
    """MeanSpeed with rows 1 and 3 made NaN, as a behaviour computed wrongly for some envs."""

    def result(self) -> Tensor:
        out = super().result().clone()
        out[[1, 3]] = float("nan")
        return out


def test_a_probe_result_holding_nan_is_refused_in_one_line_naming_the_probe_and_its_rows() -> None:
    """A NaN behaviour would rank arbitrarily in a novelty score, or sit in an archive where every distance to it is NaN:
    ``run_episodes`` and ``RolloutFitness`` refuse a probe result holding NaN with a one-line ValueError naming the
    probe, the rows and the fix; an infinite entry and integer results pass."""
    env = make_vector_env(ENV, 4, note=None)
    act = lambda o: torch.zeros(len(o), dtype=torch.long)  # noqa: E731
    with pytest.raises(ValueError, match=r"^SomeNaN\.result\(\) returned NaN in 2 of 4 rows \(1, 3\).*finite") as e:
        run_episodes(env, act, seed=0, max_steps=5, probe=SomeNaN())
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"MeanSpeed\.result\(\) returned NaN in 4 of 4 rows \(0, 1, 2, 3\)"):
        run_episodes(env, act, seed=0, max_steps=0, probe=MeanSpeed())  # episodes of no steps: 0 / 0

    class Inf(MeanSpeed):
        def result(self) -> Tensor:
            return torch.full((len(self.sum),), float("inf"))

    class Steps(MeanSpeed):
        def result(self) -> Tensor:
            return self.steps.long()

    assert torch.isinf(run_episodes(env, act, seed=0, max_steps=5, probe=Inf()).probe).all()
    assert run_episodes(env, act, seed=0, max_steps=5, probe=Steps()).probe.tolist() == [5] * 4
    policy = flipes.flipout(MLPPolicy(env.single_observation_space, env.single_action_space, hidden=[4]))
    es = flipes.FlipES(policy, popsize=4, sigma=0.1, seed=0)
    with es.population() as pop, pytest.raises(ValueError, match=r"SomeNaN\.result\(\) returned NaN in 2 of 4 rows"):
        RolloutFitness(env, max_steps=5, probe=SomeNaN())(policy, pop)


class GymStyle(MeanSpeed):
    """A probe whose step takes gymnasium's step outputs, not what a rollout passes."""

    def step(self, obs: Tensor, reward: Tensor, done: Tensor, info: dict[str, Any]) -> None:  # type: ignore[override]
        pass


class NoResult(Probe):
    """A probe that forgot result()."""

    def reset(self, env: Any, obs: Tensor) -> None:
        pass

    def step(self, actions: Tensor, obs: Tensor, reward: Tensor, counted: Tensor, info: dict[str, Any]) -> None:
        pass


def test_a_probe_whose_methods_a_rollout_cannot_call_is_refused_before_any_step() -> None:
    """A probe whose ``step`` takes other arguments than ``(actions, obs, reward, counted, info)``, or that defines no
    ``result()``, is refused by ``RolloutFitness`` and ``run_episodes`` before the env is stepped, in one line naming
    the method and the signature to define; one taking ``*args`` passes."""
    env = make_vector_env(ENV, 4, note=None)
    stepped = []
    act = lambda o: stepped.append(1) or torch.zeros(len(o), dtype=torch.long)  # noqa: E731
    how = r"GymStyle\.step takes other arguments .*define it as def step\(self, actions, obs, reward, counted, info\)"
    with pytest.raises(TypeError, match=how) as e:
        RolloutFitness(env, probe=GymStyle())
    assert "\n" not in str(e.value)
    with pytest.raises(TypeError, match=how):
        run_episodes(env, act, seed=0, max_steps=5, probe=GymStyle())
    with pytest.raises(TypeError, match=r"NoResult defines no result\(\).*def result\(self\)"):
        run_episodes(env, act, seed=0, max_steps=5, probe=NoResult())
    assert not stepped

    class Loose(MeanSpeed):
        def step(self, *args: Any) -> None:
            super().step(*args)

    assert run_episodes(env, act, seed=0, max_steps=5, probe=Loose()).probe.shape == (4,)


class Trajectory(Probe):
    """Each env's cart positions at every step of the rollout: as many columns as the rollout's longest episode has steps,
    which differs from part to part."""

    def reset(self, env: Any, obs: Tensor) -> None:
        self.seen = [obs[:, 0].clone()]

    def step(self, actions: Tensor, obs: Tensor, reward: Tensor, counted: Tensor, info: dict[str, Any]) -> None:
        self.seen.append(obs[:, 0].clone())

    def result(self) -> Tensor:
        return torch.stack(self.seen, 1)


def test_parts_whose_probe_results_differ_in_shape_are_refused_in_one_line() -> None:
    """A population rolled out in parts whose probe results have other shapes beyond their rows (trajectories as long as
    each part's longest episode) cannot be joined into ``last_probe``: a one-line ValueError naming the probe, the shapes
    and the fix, not torch's error from inside the join; in one pass the same probe is kept as it is."""
    torch.manual_seed(0)
    whole, parts = make_vector_env(ENV, 8, note=None), make_vector_env(ENV, 2, note=None)
    policy = flipes.flipout(MLPPolicy(whole.single_observation_space, whole.single_action_space, hidden=[4]))
    es = flipes.FlipES(policy, popsize=8, sigma=0.5, seed=3, groups=2)
    one = RolloutFitness(whole, seed=5, max_steps=60, probe=Trajectory())
    split = RolloutFitness(parts, seed=5, max_steps=60, probe=Trajectory())
    with es.population() as pop:
        one(policy, pop)
        assert one.last_probe.shape[:2] == (8, 1)
        with pytest.raises(ValueError, match=r"^Trajectory\.result\(\) returned shapes .*\(2, \d+\) and \(2, \d+\).*pad") as e:
            split(policy, pop)
    assert "\n" not in str(e.value)


class Archive(flipes.Callback):
    """NS-ES's archive: after each generation the center policy's final cart position (one episode, seeded by the
    generation), kept in ``state_dict()`` so that a resume and every MPI rank take it back."""

    def __init__(self) -> None:
        self.items: list[float] = []

    def on_generation(self, state: Any, row: dict[str, Any]) -> None:
        center = run_episodes(
            make_vector_env(ENV, 1, note=None), state.model, seed=state.es.generation, max_steps=50, final_obs=True
        )
        self.items.append(float(center.final_obs[0, 0]))

    def state_dict(self) -> dict[str, Any]:
        return {"items": torch.tensor(self.items, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.items = state["items"].tolist()


ARCHIVE = Archive()  # what novelty_fitness scores against: the run's callback
ROLLOUTS: dict[int, RolloutFitness] = {}  # one per part size


def novelty_fitness(model: Any, pop: Any) -> Tensor:
    """NS-ES's fitness: each member's mean distance from its final cart position to the 3 nearest in ``ARCHIVE``
    (its distance from the center of the track while the archive is empty)."""
    if pop.size not in ROLLOUTS:
        ROLLOUTS[pop.size] = RolloutFitness(make_vector_env(ENV, pop.size, note=None), seed=0, max_steps=50, final_obs=True)
    rollout = ROLLOUTS[pop.size]
    rollout(model, pop)
    behaviour = rollout.last_final_obs[:, 0, :1].double()
    if not ARCHIVE.items:
        return behaviour[:, 0].abs()
    archive = torch.tensor(ARCHIVE.items, dtype=torch.float64)[:, None]
    return torch.cdist(behaviour, archive).topk(min(3, len(archive)), largest=False).values.mean(1)


def ns_run(out: str, generations: int, resume: bool = False, comm: Any = None, members_per_pass: int = 0) -> dict[str, Any]:
    """``flipes.train`` of NS-ES on CartPole (16 members in 2 groups, ``comm="seeds"``) with ``ARCHIVE`` as its callback,
    from scratch or resumed from ``out``: each generation's parameter hash and the archive."""
    global ARCHIVE
    ARCHIVE = Archive()  # a new process's: empty until a resume loads it
    if resume:
        result = flipes.train(resume=out, generations=generations, fitness=novelty_fitness, callbacks=[ARCHIVE], comm=comm)
    else:
        options = dict(popsize=16, groups=2, comm="seeds", seed=1, target=None, progress=False, tensorboard=False, plot=False)
        config = flipes.TrainConfig.for_env(ENV, out=out, generations=generations, members_per_pass=members_per_pass, **options)
        result = flipes.train(config, fitness=novelty_fitness, callbacks=[ARCHIVE], comm=comm)
    return {"sha": [row["params_sha256"] for row in flipes.read_metrics(result.run_dir)], "archive": list(ARCHIVE.items)}


def test_an_archive_in_a_callbacks_state_dict_continues_a_resumed_ns_es_run_bit_for_bit(tmp_path: Any) -> None:
    """NS-ES in ``flipes.train`` with its archive in a callback's ``state_dict()``: 4 generations, or 2 and a resume to
    4, or 4 in parts of 8 members, give the same archive and the same parameters each generation, bit for bit."""
    whole = ns_run(str(tmp_path / "whole"), 4)
    ns_run(str(tmp_path / "broken"), 2)
    resumed = ns_run(str(tmp_path / "broken"), 4, resume=True)
    parts = ns_run(str(tmp_path / "parts"), 4, members_per_pass=8)
    assert len(whole["sha"]) == 4 and len(set(whole["archive"])) == 4
    assert resumed == whole and parts == whole


def test_two_ranks_score_against_rank_0s_archive_and_end_on_one_processs_parameters(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Under ``mpiexec -n 2`` the archive callback runs on rank 0, and its ``state_dict()`` reaches rank 1 after each
    generation: both ranks' archives, and the parameters each generation, are one process's, bit for bit (the 2-rank
    run: test_mpi.py's NS_RUN, in its shared 2-rank job)."""
    two_ranks = shared_two_rank_scripts(tmp_path_factory) / "novelty"
    one = ns_run(str(tmp_path / "one"), 3)
    assert len(set(one["archive"])) == 3
    for rank in (0, 1):
        two = torch.load(two_ranks / f"rank{rank}.pt")
        assert two["archive"] == one["archive"]
        if rank == 0:  # rank 0 writes the metrics
            assert two["sha"] == one["sha"]


def final_alone(plain: Any, seed: int, max_steps: int) -> tuple[Tensor, int]:
    """The reference: one flipes/CartPole-v1 (float64) alone, reset with ``seed`` and stepped by ``plain`` until its
    episode ends (terminated, truncated, or ``max_steps`` steps): the observation its last step returned, and its length."""
    env = make_vector_env(ENV, 1, dtype=torch.float64, note=None)
    obs, _ = env.reset(seed=seed)
    steps, ended = 0, False
    while not ended and steps < max_steps:
        obs, _, terminated, truncated, _ = env.step(plain(obs))
        steps, ended = steps + 1, bool(terminated) or bool(truncated)
    return obs[0], steps


@pytest.mark.parametrize("common", [False, True])
def test_each_members_final_obs_is_its_explicit_weights_alone_mirrored_twins_and_parts_included(common: bool) -> None:
    """``last_final_obs[m, k]`` of 8 mirrored members (2 groups, 2 episodes each, episodes of 8 to 60 steps) is the final
    observation of a plain MLPPolicy loaded with ``es.member_state_dict(m)`` in one env alone, reset with episode k's
    seed of member m (``episode_seed(...) + m·K + k``; ``+ k`` with common episodes), bit for bit (the actions are
    discrete); so no twin or neighbour swaps rows. Rolled out one member at a time it is the same, and a probe keeping
    each env's last counted observation and its steps agrees with it and with the lengths."""

    class LastSeen(Probe):
        def reset(self, env: Any, obs: Tensor) -> None:
            self.last, self.steps = obs.clone(), torch.zeros(len(obs), 1, dtype=obs.dtype)

        def step(self, actions: Tensor, obs: Tensor, reward: Tensor, counted: Tensor, info: dict[str, Any]) -> None:
            self.last = torch.where(counted[:, None], obs, self.last)
            self.steps += counted[:, None]

        def result(self) -> Tensor:
            return torch.cat((self.last, self.steps), 1)

    n, k, max_steps = 8, 2, 60
    torch.manual_seed(0)
    make = lambda envs: make_vector_env(ENV, envs, dtype=torch.float64, note=None)  # noqa: E731
    space = make(1)
    policy = flipes.flipout(MLPPolicy(space.single_observation_space, space.single_action_space, hidden=[8]).double())
    plain = MLPPolicy(space.single_observation_space, space.single_action_space, hidden=[8]).double()
    es = flipes.FlipES(policy, popsize=n, sigma=0.5, seed=3, groups=2)
    options = dict(episodes=k, seed=5, max_steps=max_steps, final_obs=True, common_episodes=common)
    whole, ones = RolloutFitness(make(n * k), **options), RolloutFitness(make(k), probe=LastSeen(), **options)
    with es.population() as pop:
        f, g = whole(policy, pop), ones(policy, pop)
        members = [es.member_state_dict(m) for m in range(n)]
        start = episode_seed(5, pop.generation, "population")
    assert torch.equal(f, g) and torch.equal(ones.last_final_obs, whole.last_final_obs)
    assert torch.equal(ones.last_probe[..., :4], whole.last_final_obs)
    lengths = set()
    for m, state in enumerate(members):
        plain.load_state_dict(state)
        for e in range(k):
            final, length = final_alone(plain, start + (e if common else m * k + e), max_steps)
            assert torch.equal(whole.last_final_obs[m, e], final), (m, e)
            assert int(ones.last_probe[m, e, 4]) == length
            lengths.add(length)
    assert len(lengths) > 3 and min(lengths) < max_steps  # episodes that end at other steps, some before the cut
