"""Rollouts, policies and observation normalization."""

from __future__ import annotations

import copy
import math
import pickle
import re
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import flipes
from flipes.rl import MLPPolicy, RolloutFitness, RunningNorm, make_vector_env, run_episodes
from flipes.rl.rollout import check_actions, episode_seed


class Countdown(gym.vector.VectorEnv):
    """Env i ends after ``lengths[i]`` steps and pays ``reward_scale[i]`` per step; after the end it
    auto-resets (NEXT_STEP) and keeps paying, so any leak of post-episode reward shows up."""

    def __init__(self, lengths: list[int], scale: list[float], truncate: bool = False) -> None:
        self.num_envs, self.truncate = len(lengths), truncate  # truncate: episodes end truncated, not terminated
        self.lengths, self.scale = torch.tensor(lengths), torch.tensor(scale, dtype=torch.float64)
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.single_action_space = gym.spaces.Discrete(2)
        self.t = torch.zeros(self.num_envs, dtype=torch.int64)
        self.seen_actions: list[torch.Tensor] = []

    def reset(self, *, seed=None, options=None):  # type: ignore[override]
        self.t.zero_()
        return self._obs(), {}

    def _obs(self) -> torch.Tensor:
        return torch.stack([self.t.float(), self.lengths.float(), torch.arange(self.num_envs).float()], 1)

    def step(self, actions):  # type: ignore[override]
        self.seen_actions.append(actions.clone())
        self.t += 1
        done = self.t >= self.lengths
        reward = self.scale * (1 + actions.double())  # action 1 doubles the reward
        obs = self._obs()
        self.t[done] = 0  # auto-reset: the next episode pays too, and must be masked
        none = torch.zeros_like(done)
        return (obs, reward, none, done, {}) if self.truncate else (obs, reward, done, none, {})


def test_finished_episodes_collect_nothing_and_episodes_average_per_member() -> None:
    """``run_episodes`` on envs that autoreset and keep paying: each env's return and length are exactly its first
    episode's, steps their sum, and it stops after the longest episode (9 steps); RolloutFitness with 2 episodes per
    member (member m owns envs 2m and 2m + 1) returns each member's mean return and counts the timesteps; an env count
    other than members × episodes is a ValueError naming both."""
    lengths = [3, 7, 1, 5, 2, 9]  # 3 members × 2 episodes
    env = Countdown(lengths, [1.0, 2.0, 0.5, 1.0, 3.0, 1.0])
    ep = run_episodes(env, lambda obs: torch.zeros(obs.shape[0], dtype=torch.int64), seed=0)
    assert ep.returns.tolist() == [3.0, 14.0, 0.5, 5.0, 6.0, 9.0]
    assert ep.lengths.tolist() == lengths and ep.steps == sum(lengths)
    assert len(env.seen_actions) == 9  # stopped as soon as the longest episode ended

    policy = MLPPolicy(env.single_observation_space, env.single_action_space, hidden=(), normalize=False)
    es = flipes.FlipES(policy, popsize=3, mirrored=False, sigma=1e-9)
    with torch.no_grad():
        policy.net[0].weight.zero_()
        policy.net[0].bias.copy_(torch.tensor([0.0, 1.0]))  # always action 1: reward doubled
    fitness = RolloutFitness(Countdown(lengths, [1.0, 2.0, 0.5, 1.0, 3.0, 1.0]), episodes=2)
    with es.population() as pop:
        f = fitness(policy, pop)
    # member m owns envs 2m, 2m+1 (members first, then episodes)
    torch.testing.assert_close(f, torch.tensor([(6 + 28) / 2, (1 + 10) / 2, (12 + 18) / 2], dtype=torch.float64))
    assert fitness.timesteps == sum(lengths)
    with es.population() as pop, pytest.raises(ValueError, match="members × episodes = 3 × 3"):
        RolloutFitness(Countdown(lengths, [1.0] * 6), episodes=3)(policy, pop)


def test_a_truncated_episode_ends_like_a_terminated_one_and_max_steps_caps_every_episode() -> None:
    """An env that ends episodes by truncation (a time limit of its own) ends them there too: no reward
    after it; ``max_steps`` stops every episode after that many steps, its return counted up to there."""
    lengths, scale = [3, 7, 1, 5, 2, 9], [1.0, 2.0, 0.5, 1.0, 3.0, 1.0]
    zeros = lambda obs: torch.zeros(obs.shape[0], dtype=torch.int64)  # noqa: E731
    ep = run_episodes(Countdown(lengths, scale, truncate=True), zeros, seed=0, max_steps=20)  # 20: a bound past the ends
    assert ep.returns.tolist() == [3.0, 14.0, 0.5, 5.0, 6.0, 9.0] and ep.lengths.tolist() == lengths
    env = Countdown(lengths, scale)
    ep = run_episodes(env, zeros, seed=0, max_steps=4)
    assert ep.lengths.tolist() == [3, 4, 1, 4, 2, 4] and ep.steps == 18 and len(env.seen_actions) == 4
    assert ep.returns.tolist() == [3.0, 8.0, 0.5, 4.0, 6.0, 4.0]


class AsyncCountdown(Countdown):
    """Countdown with EnvPool's asynchronous steps (``send``/``recv``, as :class:`EnvPoolVectorEnv`): the envs ``ids``
    step while the caller computes other actions; an env whose episode ended is not stepped again, and sending it is a
    ValueError, as EnvPool refuses it."""

    def reset(self, *, seed=None, options=None):  # type: ignore[override]
        self.done = torch.zeros(self.num_envs, dtype=torch.bool)
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None
        return super().reset(seed=seed, options=options)

    def send(self, actions: np.ndarray, ids: np.ndarray) -> None:
        ids_t = torch.as_tensor(ids)
        if self.done[ids_t].any():
            raise ValueError("send() got finished envs; reset them first")
        self.batch = ids_t, torch.as_tensor(actions)[ids_t]

    def recv(self) -> tuple[np.ndarray, ...]:
        ids, actions = self.batch
        self.t[ids] += 1
        ended = self.t[ids] >= self.lengths[ids]
        self.done[ids] = ended
        reward = self.scale[ids] * (1 + actions.double())
        none = torch.zeros_like(ended)
        terminated, truncated = (none, ended) if self.truncate else (ended, none)
        return tuple(x.numpy() for x in (ids, self._obs()[ids], reward, terminated, truncated))


def test_a_pipelined_rollout_ends_episodes_where_the_serial_one_does() -> None:
    """Stepping half of the envs while the policy computes the other half's actions (``pipeline=True``) ends each episode
    at its truncation by the env, never stepping it again, and stops every episode after ``max_steps`` steps: the
    returns and lengths are exactly those of the serial rollout."""
    lengths, scale = [3, 7, 1, 5, 2, 9], [1.0, 2.0, 0.5, 1.0, 3.0, 1.0]
    zeros = lambda obs: torch.zeros(obs.shape[0], dtype=torch.int64)  # noqa: E731
    ep = run_episodes(AsyncCountdown(lengths, scale, truncate=True), zeros, seed=0, pipeline=True)
    assert ep.returns.tolist() == [3.0, 14.0, 0.5, 5.0, 6.0, 9.0] and ep.lengths.tolist() == lengths and ep.steps == 27
    ep = run_episodes(AsyncCountdown(lengths, scale), zeros, seed=0, max_steps=4, pipeline=True)
    assert ep.returns.tolist() == [3.0, 8.0, 0.5, 4.0, 6.0, 4.0] and ep.lengths.tolist() == [3, 4, 1, 4, 2, 4] and ep.steps == 18


@pytest.mark.parametrize("max_steps", [None, 4, 0])
def test_a_pipelined_rollout_records_the_observations_the_serial_one_does(max_steps: int | None) -> None:
    """Observation normalization records the observations a policy acted on: the pipelined rollout records exactly the
    serial one's sums, also where ``max_steps`` cuts episodes (not the observation each cut step returned, which no
    policy acts on), and none with ``max_steps=0``. By hand with ``max_steps=4``: env i records its steps
    ``t < min(lengths[i], 4)``."""
    lengths, scale = [3, 7, 1, 5, 2, 9], [1.0, 2.0, 0.5, 1.0, 3.0, 1.0]
    zeros = lambda obs: torch.zeros(obs.shape[0], dtype=torch.int64)  # noqa: E731
    pending = []
    for env in (Countdown(lengths, scale), AsyncCountdown(lengths, scale)):
        norm = RunningNorm(3)
        run_episodes(env, zeros, seed=0, max_steps=max_steps, pipeline=isinstance(env, AsyncCountdown), record=norm, members=3)
        pending.append(norm.pending)
    serial, pipelined = pending
    if max_steps == 0:  # no step taken: nothing acted on, nothing recorded
        assert serial is None and pipelined is None
        return
    assert torch.equal(serial, pipelined)
    if max_steps == 4:  # member m owns envs 2m, 2m + 1; counts, then Σt over the acted-on steps
        counts = [min(n, 4) for n in lengths]
        assert serial[:, 0].tolist() == [counts[0] + counts[1], counts[2] + counts[3], counts[4] + counts[5]]
        sum_t = [sum(range(c)) for c in counts]
        assert serial[:, 1].tolist() == [sum_t[0] + sum_t[1], sum_t[2] + sum_t[3], sum_t[4] + sum_t[5]]


class SecondOfTwo:
    """Process 1 of 2, for the member split alone: a rollout calls no collective."""

    rank, size, local_rank, local_size, bytes_sent = 1, 2, 0, 1, 0


def test_a_process_share_of_the_population_plays_its_members_own_episodes() -> None:
    """With 2 episodes per member, process 1 of 2 (members 4..7 of 8) gives each of its members exactly the fitness
    one process evaluating all 8 gives it: member m's episodes are the global envs 2m and 2m + 1 on any process
    (Pendulum: every initial state changes a return)."""
    torch.manual_seed(0)
    initial = MLPPolicy(gym.spaces.Box(-8, 8, (3,), np.float32), gym.spaces.Box(-2, 2, (1,), np.float32), hidden=(4,))
    fitness = []
    for comm, members in ((None, 8), (SecondOfTwo(), 4)):
        policy = flipes.flipout(copy.deepcopy(initial))
        es = flipes.FlipES(policy, popsize=8, sigma=0.5, groups=2, seed=3, comm=comm)
        env = make_vector_env("flipes/Pendulum-v1", members * 2, max_episode_steps=20)  # short episodes: quick
        rollout = RolloutFitness(env, episodes=2, seed=5)
        with es.population() as pop:
            fitness.append(rollout(policy, pop))
    assert pop.members == range(4, 8) and len(set(fitness[0].tolist())) == 8
    assert torch.equal(fitness[1], fitness[0][4:])


def test_a_rollout_stops_at_the_envs_own_step_limit_also_through_gymnasium_wrappers() -> None:
    """Without ``max_steps`` a rollout runs at most the env's ``max_episode_steps`` steps, read through any
    gymnasium vector wrapper (``unwrapped``), so that it never steps past the limit (a GPU rollout checks for
    finished episodes only every 16 steps)."""
    zeros = lambda obs: torch.zeros(obs.shape[0], dtype=torch.int64)  # noqa: E731
    env = Countdown([100, 100], [1.0, 1.0])  # episodes that would run 100 steps
    env.max_episode_steps = 6
    wrapped = gym.vector.VectorWrapper(env)  # as any wrapper of a torch vector env
    assert not hasattr(wrapped, "max_episode_steps")  # the wrapper does not forward it
    ep = run_episodes(wrapped, zeros, seed=0)
    assert ep.lengths.tolist() == [6, 6] and len(env.seen_actions) == 6


def test_a_rollout_records_each_members_observations_of_unfinished_episodes() -> None:
    """``record``: every observation an episode acts on, until it ends, goes into its member's pending row
    (members own consecutive envs); none after the end (the auto-reset episode)."""
    lengths = [3, 7, 1, 5, 2, 9]  # 3 members × 2 episodes
    norm = RunningNorm(3)
    run_episodes(Countdown(lengths, [1.0] * 6), lambda obs: torch.zeros(obs.shape[0], dtype=torch.int64), seed=0,
                 record=norm, members=3)  # fmt: skip
    counts = norm.pending[:, 0]
    assert counts.tolist() == [10.0, 6.0, 11.0]
    t_sums = [sum(range(a)) + sum(range(b)) for a, b in zip(lengths[0::2], lengths[1::2], strict=True)]
    assert norm.pending[:, 1].tolist() == t_sums  # feature 0 is the step t = 0 .. length - 1
    norm.update()
    assert norm.count.item() == sum(lengths)


def test_running_norm_matches_the_statistics_of_all_data_and_is_frozen_until_update() -> None:
    """RunningNorm is the identity before any statistics and its output does not change while a generation records;
    after 4 masked batches and updates its mean, population variance and count equal those of all unmasked data
    (within assert_close's float64 defaults), it returns (x - mean)/√(var + 1e-8) clipped to ±5, and a state dict
    round trip gives the same outputs bit for bit."""
    gen = torch.Generator().manual_seed(0)
    norm = RunningNorm(4)
    batches = [torch.randn(50, 3, 4, generator=gen) * torch.tensor([1.0, 2, 3, 4]) + 5 for _ in range(4)]
    masks = [torch.rand(50, 3, generator=gen) < 0.7 for _ in range(4)]
    x = torch.randn(2, 4)
    assert torch.equal(norm(x), x)  # no statistics yet
    for b, m in zip(batches, masks, strict=True):
        before = norm(x)
        norm.record(b, m)
        assert torch.equal(norm(x), before)  # frozen while a generation records
        norm.update()
    data = torch.cat([b[m] for b, m in zip(batches, masks, strict=True)]).double()
    torch.testing.assert_close(norm.mean, data.mean(0))
    torch.testing.assert_close(norm.var, data.var(0, unbiased=False))
    assert norm.count.item() == len(data)
    expect = ((x.double() - data.mean(0)) / (data.var(0, unbiased=False) + 1e-8).sqrt()).clamp(-5, 5).float()
    torch.testing.assert_close(norm(x), expect)
    restored = RunningNorm(4)
    restored.load_state_dict(norm.state_dict())  # saved with the policy
    assert torch.equal(restored(x), norm(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("earlier", [False, True])
def test_running_norm_recorder_adds_the_very_sums_of_record(dtype: torch.dtype, earlier: bool) -> None:
    """A rollout of one episode per member records through ``recorder(alive, members)`` (4 ops a step): after 40
    steps of observations over 10 orders of magnitude, with +0 and -0, a mask that loses members in place, and rows
    pending from before (with a -0) or none, ``pending`` is bit for bit (signed zeros too) what ``record`` of each
    step's ``(members, 1, size)`` rows gives, for float32 and full-precision float64 (MuJoCo's) observations (x·x is
    not exact there: no fused multiply-add may round it once). A subclass with its own ``record``, or more than one
    row per member, gets ``None``: the rollout calls ``record``."""
    gen = torch.Generator().manual_seed(0)
    members, size = 7, 5
    plain, fast = RunningNorm(size), RunningNorm(size)
    if earlier:
        rows = torch.randn(members, 1 + 2 * size, generator=gen, dtype=torch.float64)
        rows[0, 3] = -0.0
        plain.pending, fast.pending = rows.clone(), rows.clone()
    alive = torch.ones(members, dtype=torch.bool)
    record = fast.recorder(alive, members)
    assert record is not None
    for _ in range(40):
        # drawn in dtype: float64 observations with all 53 bits, whose squares are not exact
        x = torch.randn(members, size, generator=gen, dtype=dtype) * 10.0 ** torch.randint(-5, 5, (members, size), generator=gen)
        x[torch.rand(members, size, generator=gen) < 0.1] = -0.0
        x[torch.rand(members, size, generator=gen) < 0.1] = 0.0
        plain.record(x.view(members, 1, size), alive.view(members, 1))
        record(x)
        alive &= torch.rand(members, generator=gen) > 0.1
    assert torch.equal(fast.pending, plain.pending) and torch.equal(fast.pending.signbit(), plain.pending.signbit())

    class Own(RunningNorm):
        def record(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
            super().record(x, mask)

    assert Own(size).recorder(alive, members) is None
    assert RunningNorm(size).recorder(torch.ones(2 * members, dtype=torch.bool), members) is None


def test_running_norm_recorder_after_pending_was_replaced_records_as_record() -> None:
    """Where ``pending`` is replaced between two steps (merged by ``update``, or set by hand), the recorder adds the
    next rows to what ``pending`` is now, as ``record`` does, not to its own buffer from before: the statistics after
    the update and the rows pending after it equal record's bit for bit."""
    gen = torch.Generator().manual_seed(0)
    members, size = 4, 3
    plain, fast = RunningNorm(size), RunningNorm(size)
    alive = torch.ones(members, dtype=torch.bool)
    record = fast.recorder(alive, members)
    for step in range(6):
        if step == 3:
            plain.update()
            fast.update()
        x = torch.randn(members, size, generator=gen)
        plain.record(x.view(members, 1, size), alive.view(members, 1))
        record(x)
    assert torch.equal(fast.pending, plain.pending)
    assert all(torch.equal(a, b) for a, b in zip(fast.state_dict().values(), plain.state_dict().values(), strict=True))


def test_running_norm_recorder_leaves_rows_of_another_width_to_record() -> None:
    """Rows that are not ``(members, size)`` (a norm of another size than the env's observations) are record's to
    take or refuse, as before the recorder: one feature per member into a norm of 3 is refused, not broadcast into
    all 3 columns of the sums (nor out= resized with torch's warning)."""
    members = 6
    alive = torch.ones(members, dtype=torch.bool)
    plain, fast = RunningNorm(3), RunningNorm(3)
    record = fast.recorder(alive, members)
    assert record is not None
    x = torch.randn(members, 1)
    with pytest.raises(RuntimeError) as expected:
        plain.record(x.view(members, 1, 1), alive.view(members, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError) as got:
            record(x)
    assert str(got.value) == str(expected.value) and fast.pending is None


def test_run_episodes_records_through_a_records_own_wrapper() -> None:
    """A ``record`` set on the norm itself (a wrapper that logs or filters the rows) gets every step's rows, as a
    subclass's own ``record`` does: the recorder, which would bypass it, is not made for such a norm."""
    env = make_vector_env("flipes/CartPole-v1", 4, note=None)
    norm, plain = RunningNorm(4), RunningNorm(4)
    seen = []
    inner = norm.record

    def wrapper(x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        seen.append(x.shape)
        inner(x, mask)

    norm.record = wrapper
    act = lambda obs: torch.zeros(obs.shape[0], dtype=torch.int64)  # noqa: E731
    run_episodes(env, act, seed=0, record=norm, max_steps=5)
    run_episodes(env, act, seed=0, record=plain, max_steps=5)
    assert seen == [(4, 1, 4)] * 5 and torch.equal(norm.pending, plain.pending)


def test_run_episodes_without_record_takes_any_members() -> None:
    """``members`` only says whose observations ``record`` gets: without a ``record`` a count that does not divide the
    envs is no error (the rows of ``alive`` per member are made only for ``record``), and the returns are those of
    ``members=None``."""
    env = make_vector_env("flipes/CartPole-v1", 8, note=None)
    act = lambda obs: torch.zeros(obs.shape[0], dtype=torch.int64)  # noqa: E731
    plain = run_episodes(env, act, seed=0, max_steps=5)
    for members in (3, 16):
        ep = run_episodes(env, act, seed=0, members=members, max_steps=5)
        assert torch.equal(ep.returns, plain.returns) and torch.equal(ep.lengths, plain.lengths)


def test_running_norm_passes_inputs_unchanged_until_it_has_data_and_maps_a_constant_feature_to_zero() -> None:
    """Before any statistics the input passes as it is (no clipping either); a feature that never varied
    (variance 0) normalizes to 0, finite, thanks to the variance floor; its merged variance is exactly 0 also where
    float64 rounding makes E[x²] - E[x]² negative (0.1 three times: -1.7e-18)."""
    norm = RunningNorm(2)
    x = torch.tensor([[100.0, -7.0], [3.0, 0.5]])
    assert torch.equal(norm(x), x)
    norm.record(torch.stack((torch.full((1, 10), 4.0), torch.arange(10.0).view(1, 10)), -1))
    norm.update()
    y = norm(torch.tensor([[4.0, 4.5]]))
    assert torch.equal(y, torch.zeros(1, 2))
    rounded = RunningNorm(1)
    rounded.record(torch.full((1, 3, 1), 0.1, dtype=torch.float64))  # a float64 observation, as MuJoCo's
    rounded.update()
    assert rounded.var.item() == 0.0


def test_running_norm_normalizes_from_its_first_recorded_observation() -> None:
    """One recorded observation is statistics already (mean that observation, variance 0): it normalizes to 0 and any
    other input to ±5 (the clip), instead of passing unchanged as before any statistics."""
    norm = RunningNorm(2)
    norm.record(torch.tensor([[[1.0, -2.0]]]))
    norm.update()
    assert norm.count.item() == 1
    assert torch.equal(norm(torch.tensor([[1.0, -2.0], [1.5, -3.0]])), torch.tensor([[0.0, 0.0], [5.0, -5.0]]))


def test_running_norm_loaded_with_other_statistics_applies_them_at_once() -> None:
    """``load_state_dict`` into a normalizer already in use (its scale cached) normalizes with the loaded
    statistics from the next call on."""
    used, other = RunningNorm(2), RunningNorm(2)
    used.record(torch.randn(1, 50, 2, generator=torch.Generator().manual_seed(0)))
    used.update()
    other.record(torch.randn(1, 50, 2, generator=torch.Generator().manual_seed(1)) * 3 + 2)
    other.update()
    x = torch.randn(4, 2)
    used(x)  # caches its own scale
    used.load_state_dict(other.state_dict())
    assert torch.equal(used(x), other(x))


def test_episode_seeds_differ_across_generations_and_streams() -> None:
    """Each generation and each stream resets its episodes from its own seed (32 bits: no collision among
    these 2,000)."""
    seeds = {episode_seed(0, g, stream) for g in range(1000) for stream in ("population", "eval")}
    assert len(seeds) == 2000


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_running_norm_traced_by_torch_export_is_its_eager_self(dtype: torch.dtype) -> None:
    """Traced (torch.export, as ``flipes export`` does), the normalization gives the eager outputs bit
    for bit, before any statistics (the identity) and after (values past the clip included)."""
    norm = RunningNorm(3)
    x = 20 * torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=dtype)
    for _ in range(2):
        program = torch.export.export(norm, (x,)).module()
        assert torch.equal(program(x), norm(x)) and program(x).dtype == dtype
        norm.record(torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(2)))
        norm.update()
    assert norm(x).abs().max() == 5.0 and not torch.equal(norm(x), x)


def test_running_norm_keeps_float64_statistics_when_the_policy_is_cast() -> None:
    """Casting the policy (.to(torch.bfloat16)) leaves the statistics float64 and bit for bit unchanged, and the
    normalizer then works on, and returns, bfloat16; a device move (.to("cpu")) changes nothing."""
    gen = torch.Generator().manual_seed(0)
    policy = torch.nn.Sequential(RunningNorm(3), torch.nn.Linear(3, 2))
    norm = policy[0]
    for _ in range(3):
        norm.record(torch.randn(1, 1001, 3, generator=gen) * 3 + 7)
        norm.update()
    stats = {k: t.clone() for k, t in norm.named_buffers()}
    x = torch.randn(4, 3, generator=gen) * 3 + 7
    expect = norm(x.double())
    assert policy.to("cpu") is policy and all(torch.equal(t, stats[k]) for k, t in norm.named_buffers())
    policy.to(torch.bfloat16)
    assert policy[1].weight.dtype == torch.bfloat16
    for k, t in norm.named_buffers():
        assert t.dtype == torch.float64 and torch.equal(t, stats[k]), k
    assert norm.count.item() == 3003
    y = norm(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, expect.to(torch.bfloat16), rtol=0.02, atol=0.02)
    assert policy(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_policy_actions_respect_the_spaces() -> None:
    """MLPPolicy with a saturated output keeps Box actions within each dimension's bounds and comes within 0.1 of both
    ends of [-2, 2], from float64 observations; Discrete(3, start=1) actions are int64 in {1, 2, 3}; in a population
    (members, episodes, obs) inputs give (members, episodes) actions."""
    obs_space = gym.spaces.Box(-1, 1, (5,), np.float32)
    box = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32))
    torch.manual_seed(0)
    policy = MLPPolicy(obs_space, box, hidden=(8,))
    with torch.no_grad():
        policy.net[-1].weight.mul_(100)  # saturate the tanh
    a = policy(torch.randn(1000, 5, dtype=torch.float64))  # MuJoCo envs observe in float64
    assert a.shape == (1000, 2) and (a[:, 0].abs() <= 2).all() and ((a[:, 1] >= 0) & (a[:, 1] <= 10)).all()
    assert a[:, 0].max() > 1.9 and a[:, 0].min() < -1.9
    discrete = MLPPolicy(obs_space, gym.spaces.Discrete(3, start=1))
    d = discrete(torch.randn(100, 5))
    assert d.dtype == torch.int64 and set(d.unique().tolist()) <= {1, 2, 3}
    es = flipes.FlipES(discrete, popsize=4)
    with es.population() as pop:
        assert discrete(torch.randn(pop.size, 7, 5)).shape == (4, 7)  # members first, then episodes


class Counts(gym.Env):
    """Box(0, 10, (2,), int64) actions, as a count or level an env takes; it records each action it is given."""

    observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    action_space = gym.spaces.Box(0, 10, (2,), np.int64)

    def __init__(self, seen: list) -> None:
        self.seen = seen

    def reset(self, *, seed=None, options=None):  # type: ignore[override]
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action):  # type: ignore[override]
        self.seen.append(np.asarray(action))
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), 0.0, True, False, {}


def test_an_integer_box_gets_the_policys_squashed_actions_rounded_into_its_dtype() -> None:
    """MLPPolicy on Box(0, 10, (2,), int64) actions returns int64 actions equal to ``round(5·tanh(z) + 5)`` of its
    outputs ``z``, in a population too (on an unsigned Box(0, 255, uint8) uint8 ones, ``round(127.5·tanh(z) + 127.5)``);
    a gymnasium vector env of such envs is given int64 actions in its bounds by a rollout (floats reached it before); a
    model of one's own returning floats for it (or for the uint8 Box) is one error naming the cast."""
    space = Counts([]).action_space
    torch.manual_seed(0)
    policy = MLPPolicy(gym.spaces.Box(-1, 1, (3,), np.float32), space, hidden=(8,), normalize=False)
    with torch.no_grad():
        policy.net[-1].weight.mul_(5)  # spread the actions over the whole range
    x = torch.randn(64, 3)
    a = policy(x)
    assert a.dtype == torch.int64 and torch.equal(a, (5 * torch.tanh(policy.net(x)) + 5).round().long())
    assert a.min() == 0 and a.max() == 10 and len(a.unique()) > 5
    # an unsigned Box (pixel levels) is an integer Box too: uint8 actions, round(127.5·tanh(z) + 127.5)
    pixels = gym.spaces.Box(0, 255, (2,), np.uint8)
    levels = MLPPolicy(gym.spaces.Box(-1, 1, (3,), np.float32), pixels, hidden=(8,), normalize=False)
    b = levels(x)
    assert b.dtype == torch.uint8 and torch.equal(b.long(), (127.5 * torch.tanh(levels.net(x)) + 127.5).round().long())
    es = flipes.FlipES(policy, popsize=4)
    with es.population() as pop:
        assert policy(torch.randn(pop.size, 2, 3)).dtype == torch.int64
    seen: list = []
    venv = gym.vector.SyncVectorEnv([lambda: Counts(seen)] * 4)
    run_episodes(venv, policy, seed=0)
    assert len(seen) == 4 and all(s.dtype == np.int64 and space.contains(s) for s in seen)
    with pytest.raises(flipes.UsageError, match=r"torch.float32 actions for 4 envs of .*int64.*, which take integers; .*round"):
        run_episodes(venv, lambda o: torch.ones(4, 2), seed=0)
    with pytest.raises(flipes.UsageError, match=r"torch.float32 actions for 4 envs of .*uint8.*, which take integers"):
        check_actions(torch.ones(4, 2), pixels, 4)  # an unsigned Box's env takes integers too


def test_an_integer_boxs_actions_stay_in_bounds_that_float32_cannot_hold() -> None:
    """Saturated outputs ``z = ±50`` of MLPPolicy on integer Boxes whose bounds float32 rounds (int32's and int64's
    whole ranges, ``2**30 + 100``) give exactly the high and low bounds: float32 rounded ``2**31 - 1`` up to ``2**31``,
    whose cast wrapped the high action to ``-2**31``, and ``2**30 + 100`` up to ``2**30 + 128``, past the bound (int64's
    top is ``2**63 - 2**39``, float32's largest below ``2**63``); a bfloat16 policy's stay on their side, in bounds."""
    obs = gym.spaces.Box(-1, 1, (3,), np.float32)
    i32, i64 = np.iinfo(np.int32), np.iinfo(np.int64)
    for space in (
        gym.spaces.Box(int(i32.min), int(i32.max), (2,), np.int32),
        gym.spaces.Box(-np.inf, np.inf, (2,), np.int64),  # gymnasium's int64 Box of no bounds: int64's range
        gym.spaces.Box(-(2**30) - 100, 2**30 + 100, (2,), np.int64),
    ):
        policy = MLPPolicy(obs, space, hidden=(8,), normalize=False)
        z = torch.tensor([[50.0, -50.0], [-50.0, 50.0]])
        a, b = policy.action(z), policy.to(torch.bfloat16).action(z.bfloat16())
        # bfloat16 holds the bounds more coarsely still: its saturated actions are on their side, in the bounds
        assert all(space.contains(row) for row in b.numpy()) and b[0, 0] > 0 > b[0, 1], (space, b)
        expect = np.array([[space.high[0], space.low[1]], [space.low[0], space.high[1]]], dtype=space.dtype)
        if space.high[0] == i64.max:  # float32's largest below 2**63 is 2**63 - 2**39: the top ones are not reached
            expect[expect == i64.max] = 2**63 - 2**39
        assert a.dtype == torch.from_numpy(expect).dtype and np.array_equal(a.numpy(), expect), (space, a)


class Strict(gym.Env):
    """A Box env that asserts ``action_space.contains(action)`` at each step, as envs of one's own often do."""

    observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)

    def __init__(self, action_space: gym.spaces.Box) -> None:
        self.action_space = action_space

    def reset(self, *, seed=None, options=None):  # type: ignore[override]
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action):  # type: ignore[override]
        assert self.action_space.contains(np.asarray(action)), (action, self.action_space)
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), 0.0, False, False, {}


# bounds whose saturated actions center ± scale rounded past them: not symmetric about 0, and (float64) not float32's
STRICT_BOXES = (
    gym.spaces.Box(np.array([-2.8, -2.9], np.float32), np.array([0.85, -0.177], np.float32)),
    gym.spaces.Box(np.array([-0.422, 1.839, 1.59, -2.772]), np.array([0.552, 5.709, 4.495, 1.201]), dtype=np.float64),
)


@pytest.mark.parametrize("space", STRICT_BOXES, ids=["float32", "float64"])
def test_saturated_box_actions_and_their_action_noise_stay_in_the_spaces_bounds(space: gym.spaces.Box) -> None:
    """MLPPolicy's actions at saturated outputs ``z = ±30`` lie in the Box (``space.contains``), within float32's rounding
    of its bounds (``tanh``'s ±1 gave ``center ± scale``, rounded past 0.85 to 0.8500001, and float32's nearest to a
    float64 bound of 5.709 is above it); so do a numpy observation's actions (``env.step(policy(
    obs))``) and, with action noise of std 10 clipped to the bounds, every action a rollout gives an env that asserts
    them; symmetric bounds keep the unclipped ``scale·tanh(z)``."""
    obs = gym.spaces.Box(-1, 1, (3,), np.float32)
    policy = MLPPolicy(obs, space, hidden=(4,), normalize=False)
    n = space.shape[0]
    z = torch.tensor([[30.0] * n, [-30.0] * n])
    a = policy.action(z).double().numpy()
    assert all(space.contains(row.astype(space.dtype)) for row in a)
    np.testing.assert_allclose(a, np.stack([space.high, space.low]), rtol=1e-6, atol=0)  # float32's rounding
    with torch.no_grad():
        policy.net[-1].weight.zero_()
        policy.net[-1].bias.copy_(torch.tensor([30.0, -30.0] * (n // 2)))
    assert space.contains(policy(np.zeros(3, np.float32)))
    venv = gym.vector.SyncVectorEnv([lambda: Strict(space)] * 8)
    es = flipes.FlipES(policy, popsize=4, sigma=1.0, seed=0)
    with es.population() as pop:
        RolloutFitness(venv, episodes=2, max_steps=20, action_noise=10.0)(policy, pop)  # Strict asserts each action
    symmetric = MLPPolicy(obs, gym.spaces.Box(-0.4, 0.4, (2,), np.float32), hidden=(4,), normalize=False)
    assert not symmetric.clipped and torch.equal(symmetric.action(z[:, :2]), 0.4 * torch.tanh(z[:, :2]))


class NoFloat64OffHost(torch.overrides.TorchFunctionMode):
    """Refuses a float64 tensor made on a device other than the CPU, as MPS (flipes' --device mps) refuses it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.device.type != "cpu":
                raise TypeError(f"float64 on {t.device}")
        return out


def test_inward_bounds_on_a_device_are_the_hosts_made_without_float64_there() -> None:
    """``inward_bounds`` on another device (``meta`` standing for MPS, which has no float64: ActionNoise asks for the
    actions' device) makes no float64 tensor there and gives ``dtype`` there; on the host, float32's nearest bound is
    kept where it lies inside (0.552, -0.422) and stepped inward where it lies outside (1.839, 5.709, 0.85)."""
    low, high = np.array([-0.422, 1.839, -np.inf]), np.array([0.552, 5.709, 0.85])
    host = flipes.rl.spaces.inward_bounds(low, high, torch.float32)
    with NoFloat64OffHost():
        there = flipes.rl.spaces.inward_bounds(low, high, torch.float32, "meta")
    assert [(b.device.type, b.dtype) for b in there] == [("meta", torch.float32)] * 2
    below = [np.nextafter(np.float32(v), np.float32(0)) for v in (5.709, 0.85)]  # float32's nearest lie above these
    above = np.nextafter(np.float32(1.839), np.float32(np.inf))  # and below this low
    assert host[1].tolist() == [np.float32(0.552), *below] and host[0].tolist() == [np.float32(-0.422), above, -np.inf]


def test_multi_binary_observations_are_features_as_a_box_of_zeros_and_ones_takes_them() -> None:
    """MLPPolicy and GRUPolicy on MultiBinary((2, 3)) observations (as flipes takes them inside a Dict) give, with the
    same weights and statistics, the actions of the policy on Box(0, 1, (2, 3)) given the same 0/1 values as float32;
    gymnasium's int8 observation of one env gives a numpy action."""
    box, bits = gym.spaces.Box(0, 1, (2, 3), np.float32), gym.spaces.MultiBinary((2, 3))
    x = torch.randint(0, 2, (4, 5, 2, 3), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    for kind in (MLPPolicy, flipes.rl.GRUPolicy):
        torch.manual_seed(0)
        reference = kind(box, gym.spaces.Discrete(3), hidden=(8,))
        policy = kind(bits, gym.spaces.Discrete(3), hidden=(8,))
        policy.load_state_dict(reference.state_dict())
        for p in (reference, policy):
            p.obs_norm.record(x.float())
            p.obs_norm.update()
        if kind is MLPPolicy:
            assert torch.equal(policy(x), reference(x.float()))
            assert isinstance(policy(x[0, 0].numpy()), np.integer)
        else:
            assert torch.equal(policy(x, None)[0], reference(x.float(), None)[0])


def test_a_policy_acts_on_observations_flattened_and_normalized_once_by_its_statistics() -> None:
    """An MLPPolicy over (2, 3) Box observations with recorded statistics maps (members, episodes, 2, 3) inputs to the
    actions of a float64 reference: each observation flattened to 6 features, normalized once by the statistics,
    ``(x - mean) / √(var + 1e-8)`` clipped to ±5 (some inputs are far beyond it), the network applied, ``tanh``
    scaled into the action bounds [-1, 3] (within 1e-5)."""
    gen = torch.Generator().manual_seed(0)
    policy = MLPPolicy(
        gym.spaces.Box(-np.inf, np.inf, (2, 3), np.float32), gym.spaces.Box(-1.0, 3.0, (2,), np.float32), hidden=(8,)
    )
    seen = torch.randn(1, 200, 2, 3, generator=gen) * 3 + 2
    policy.obs_norm.record(seen)
    policy.obs_norm.update()
    obs = torch.randn(4, 5, 2, 3, generator=gen) * 20
    data = seen.reshape(-1, 6).double()
    z = ((obs.reshape(4, 5, 6).double() - data.mean(0)) / (data.var(0, unbiased=False) + 1e-8).sqrt()).clamp(-5, 5)
    assert (z.abs() == 5).any() and (z.abs() < 5).any()
    with torch.no_grad():
        expect = 1.0 + 2.0 * torch.tanh(policy.net(z.float()))
        torch.testing.assert_close(policy(obs), expect, rtol=1e-5, atol=1e-5)


def test_observations_of_another_shape_than_the_policys_space_are_one_error_naming_both() -> None:
    """A built-in policy given observations whose trailing shape is not its observation space's (another env's, a
    flattened image) raises a ValueError naming both shapes, numpy or torch, one observation or a batch, with or
    without normalization; not torch's broadcasting error from the running statistics or the first layer."""
    for normalize in (True, False):
        policy = MLPPolicy(gym.spaces.Box(-1, 1, (2, 3), np.float32), gym.spaces.Discrete(2), hidden=(4,), normalize=normalize)
        for obs in (np.zeros(6, np.float32), torch.zeros(5, 6), torch.zeros(5, 3, 2)):
            got = re.escape(str(tuple(obs.shape)))
            with pytest.raises(
                ValueError, match=rf"^MLPPolicy takes observations of shape \(\.\.\., 2, 3\) .* got shape {got}; "
            ):
                policy(obs)
        assert policy(np.zeros((2, 3), np.float32)).shape == () and policy(torch.zeros(5, 2, 3)).shape == (5,)


def test_hidden_widths_that_are_no_positive_integers_are_refused_naming_the_policy() -> None:
    """MLPPolicy, GRUPolicy and CNNPolicy refuse hidden widths of 0 (a layer of no outputs, built silently), -1 (torch's
    negative-dimension error) or 1.5, and a bare width for the sequence (hidden=64), naming the policy and the widths;
    numpy's integers are widths like ints."""
    from flipes.rl import CNNPolicy, GRUPolicy

    box, image, actions = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(0, 255, (1, 36, 36), np.uint8), gym.spaces.Discrete(2)
    for cls, space in ((MLPPolicy, box), (GRUPolicy, box), (CNNPolicy, image)):
        for hidden in ([0], [4, -1], [1.5]):
            with pytest.raises(ValueError, match=rf"^{cls.__name__}: hidden layer widths must be integers of at least 1, got "):
                cls(space, actions, hidden=hidden)
        with pytest.raises(
            TypeError, match=rf"^{cls.__name__}: hidden is a sequence of layer widths, e\.g\. hidden=\(64, 64\), got 64"
        ):
            cls(space, actions, hidden=64)
        out = cls(space, actions, hidden=[np.int64(4)])(torch.zeros(2, *space.shape))
        assert (out[0] if isinstance(out, tuple) else out).shape == (2,)  # GRUPolicy's: (actions, state)


def test_a_scalar_box_observation_is_one_feature_of_each_row() -> None:
    """A Box observation of shape ``()`` (one number per env) is one input feature: a batch of 50 observations gives
    50 actions, the argmax of the network applied to the observations as a column."""
    torch.manual_seed(0)
    policy = MLPPolicy(gym.spaces.Box(-1, 1, (), np.float32), gym.spaces.Discrete(3), hidden=(8,), normalize=False)
    obs = torch.randn(50)
    actions = policy(obs)
    assert actions.shape == (50,) and len(set(actions.tolist())) > 1
    assert torch.equal(actions, policy.net(obs[:, None]).argmax(-1))


def test_policies_take_a_gymnasium_envs_numpy_observations_and_give_actions_it_steps_with() -> None:
    """A numpy observation straight from a gymnasium env (one, or a batch; float64 from MuJoCo, int64 from Taxi) gives
    an MLP and a GRU policy the actions (and GRU state) of the same values as a tensor, as a numpy array of the action
    space's dtype (one Discrete action a numpy integer; an integer Box's rounded), so ``env.step(policy(obs))`` runs:
    a CartPole episode of the numpy loop takes the actions of the tensor loop, step for step."""
    from flipes.rl import GRUPolicy

    torch.manual_seed(0)
    env = gym.make("CartPole-v1")
    one = env.reset(seed=0)[0]
    batch = np.stack([env.reset(seed=s)[0] for s in range(5)]).astype(np.float64)
    for make in (MLPPolicy, GRUPolicy):
        policy = make(env.observation_space, env.action_space, hidden=(8, 8)).eval()
        for obs in (one, batch):
            got, want = policy(obs), policy(torch.as_tensor(obs))
            if make is GRUPolicy:
                assert torch.equal(got[1], want[1])
                got, want = got[0], want[0]
            assert isinstance(got, np.ndarray | np.integer) and got.dtype == np.int64 and np.shape(got) == want.shape
            assert np.array_equal(got, want.numpy())
    policy = MLPPolicy(env.observation_space, env.action_space, hidden=(8,)).eval()
    obs, steps, done = env.reset(seed=1)[0], 0, False
    while not done:
        action = policy(obs)
        assert action == int(policy(torch.as_tensor(obs)))
        obs, _, terminated, truncated, _ = env.step(action)
        steps, done = steps + 1, terminated or truncated
    assert steps > 1
    box = gym.spaces.Box(-2, 2, (3,), np.float32)
    pendulum = MLPPolicy(gym.spaces.Box(-1, 1, (5,), np.float64), box, hidden=(4,)).double().eval()
    x = np.random.default_rng(0).normal(size=(2, 5))
    assert pendulum(x).dtype == np.float32 and box.contains(pendulum(x)[0])
    assert np.array_equal(pendulum(x), pendulum(torch.as_tensor(x)).detach().float().numpy())
    ints = MLPPolicy(gym.spaces.Box(-1, 1, (5,), np.float64), gym.spaces.Box(-3, 3, (2,), np.int64), hidden=(4,)).double()
    got = ints(x)
    assert got.dtype == np.int64 and np.array_equal(got, np.rint(ints(torch.as_tensor(x)).detach().numpy()))
    taxi = MLPPolicy(gym.spaces.Discrete(500), gym.spaces.Discrete(6), hidden=(4,)).eval()
    states = np.array([3, 499, 0])
    assert np.array_equal(taxi(states), taxi(torch.as_tensor(states)).numpy())
    assert taxi(np.int64(7)) == int(taxi(torch.tensor(7)))


def test_a_model_of_another_float_dtype_than_the_envs_observations_is_one_error_naming_the_cast() -> None:
    """A model of one's own whose parameters are float64 given flipes/CartPole-v1's float32 observations (as float32
    layers get MuJoCo's float64) stops at the first step with a UsageError naming both dtypes and the cast, not
    torch's bare 'mat1 and mat2' error; a plain function's dtype clash, and another error of the model's own, propagate
    as they are."""
    env = make_vector_env("flipes/CartPole-v1", 8)
    model = flipes.flipout(torch.nn.Linear(4, 2).double())
    es = flipes.FlipES(model, popsize=8)
    said = r"^--model: the model's float64 parameters got the env's float32 observations \(torch: .*dtype.*\); "
    with es.population() as pop, pytest.raises(flipes.UsageError, match=said + r"cast them .*obs.to\(torch.float64\)"):
        RolloutFitness(env)(model, pop)
    with es.population() as pop, pytest.raises(RuntimeError, match=r"^mat1 and mat2 must have the same dtype"):
        RolloutFitness(env)(lambda obs: model(obs).argmax(-1), pop)  # a function: no parameters to name, torch's words

    def broken(obs: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the model's own dtype trouble")

    with es.population() as pop, pytest.raises(RuntimeError, match=r"^the model's own dtype trouble$"):
        RolloutFitness(env)(broken, pop)


def test_rollout_fitness_refuses_fewer_than_one_episode_per_member_when_made() -> None:
    """``RolloutFitness(env, episodes=0)`` (or a negative or fractional count) is refused when it is made, naming
    the option, instead of a ZeroDivisionError at the first generation; numpy's integers are counts."""
    env = make_vector_env("flipes/CartPole-v1", 8)
    for bad in (0, -1):
        with pytest.raises(ValueError, match=rf"^RolloutFitness: episodes is the episodes per member, at least 1, got {bad}$"):
            RolloutFitness(env, episodes=bad)
    with pytest.raises(TypeError, match=r"^episodes must be an integer, got 1.5"):
        RolloutFitness(env, episodes=1.5)
    assert RolloutFitness(env, episodes=np.int64(2)).episodes == 2


def test_a_policy_of_scalar_boxes_acts_on_one_observation() -> None:
    """Observations and actions of shape ``()`` (a scalar Box): one observation, a number or a 0-d tensor, gives one
    action of shape ``()``, the batch's row for it."""
    torch.manual_seed(0)
    policy = MLPPolicy(gym.spaces.Box(-1, 1, ()), gym.spaces.Box(-2, 2, ()), hidden=(4,)).eval()
    batch = policy(torch.tensor([0.5, -0.25]))
    assert batch.shape == (2,)
    one = policy(torch.tensor(0.5))
    assert one.shape == () and torch.equal(one, batch[0])
    number = policy(np.float32(-0.25))
    assert np.shape(number) == () and number == batch[1].item()


def test_policy_leaves_unbounded_box_dimensions_linear() -> None:
    """A Box dimension with finite bounds gets ``tanh`` scaled into them, an unbounded one the network's output
    itself, bit for bit."""
    box = gym.spaces.Box(np.array([-3.0, -np.inf], np.float32), np.array([1.0, np.inf], np.float32))
    torch.manual_seed(0)
    policy = MLPPolicy(gym.spaces.Box(-1, 1, (4,), np.float32), box, hidden=(), normalize=False)
    obs = 3 * torch.randn(50, 4)
    z = policy.net(obs)
    a = policy(obs)
    assert torch.equal(a[:, 0], torch.tanh(z[:, 0]) * 2 - 1) and torch.equal(a[:, 1], z[:, 1])


def test_rollouts_are_pipelined_only_for_memoryless_policies_on_enough_async_envs() -> None:
    """``can_pipeline`` holds for an env with ``send``/``recv`` of at least ``PIPELINE_MIN_ENVS`` copies and an
    MLPPolicy; one env fewer, an env without ``send``/``recv``, or a GRUPolicy (its state needs every row each
    step) is not pipelined."""
    from flipes.rl import GRUPolicy
    from flipes.rl.rollout import PIPELINE_MIN_ENVS, can_pipeline

    class PoolLike:  # what can_pipeline reads of an EnvPool vector env
        def __init__(self, num_envs: int) -> None:
            self.num_envs = num_envs

        def send(self) -> None: ...

        def recv(self) -> None: ...

    obs, act = gym.spaces.Box(-1.0, 1.0, (3,)), gym.spaces.Discrete(2)
    mlp, gru = MLPPolicy(obs, act, hidden=[4]), GRUPolicy(obs, act, hidden=[4])
    assert can_pipeline(PoolLike(PIPELINE_MIN_ENVS), mlp)
    assert not can_pipeline(PoolLike(PIPELINE_MIN_ENVS - 1), mlp)
    assert not can_pipeline(Countdown([1] * PIPELINE_MIN_ENVS, [1.0] * PIPELINE_MIN_ENVS), mlp)
    assert not can_pipeline(PoolLike(PIPELINE_MIN_ENVS), gru)


def test_available_cores_shares_the_affinity_among_a_nodes_ranks_unless_the_launcher_bound_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a machine of 8 cores, a process that may use all of them gets 8 // ranks (at least 1); one bound to 3 cores
    by its launcher gets those 3 whatever the rank count; without sched_getaffinity (macOS) the machine's cores count."""
    import os

    from flipes.rl import available_cores

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert [available_cores(k) for k in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert [available_cores(k) for k in (1, 4)] == [3, 3]
    monkeypatch.delattr(os, "sched_getaffinity")
    assert [available_cores(k) for k in (1, 2)] == [8, 4]


def test_box_dimensions_bounded_on_one_side_stay_linear_within_and_clip_at_the_bound() -> None:
    """A Box action space with dimensions bounded below only, above only and not at all: each dimension's action is
    the policy's output itself where that lies within the bounds and the bound beyond it (the unbounded one is never
    changed); a policy's state dict has the keys of one written before (the bounds are the space's, not saved)."""
    box = gym.spaces.Box(np.array([0.0, -np.inf, -np.inf], np.float32), np.array([np.inf, 2.0, np.inf], np.float32))
    policy = MLPPolicy(gym.spaces.Box(-1, 1, (4,), np.float32), box, hidden=(), normalize=False)
    z = 5 * torch.randn(500, 3)
    expect = torch.stack([z[:, 0].clamp(min=0), z[:, 1].clamp(max=2), z[:, 2]], 1)
    assert torch.equal(policy.action(z), expect) and (z[:, :2] < 0).any() and (z[:, 1] > 2).any()
    assert set(policy.state_dict()) == {"bounded", "center", "scale", "net.0.weight", "net.0.bias"}


class Quadrants(gym.vector.VectorEnv):
    """One-step episodes of 3 uniform numbers x; action ``a`` of ``space`` pays the number of its entries equal to
    ``target(x)``: MultiDiscrete([3, 3, 3]) the tercile of each x (start 0), MultiBinary(3) whether x > 0."""

    def __init__(self, num_envs: int, space: gym.Space) -> None:
        self.num_envs, self.single_action_space = num_envs, space
        self.single_observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
        self.gen = torch.Generator()

    def target(self) -> torch.Tensor:
        if isinstance(self.single_action_space, gym.spaces.MultiBinary):
            return (self.x > 0).long()
        return torch.bucketize(self.x, torch.tensor([-1 / 3, 1 / 3]))

    def reset(self, *, seed=None, options=None):  # type: ignore[override]
        self.gen.manual_seed(seed if isinstance(seed, int) else seed[0])
        self.x = 2 * torch.rand(self.num_envs, 3, generator=self.gen) - 1
        return self.x.clone(), {}

    def step(self, actions):  # type: ignore[override]
        reward = (actions.long() == self.target()).sum(1).double()
        done = torch.ones(self.num_envs, dtype=torch.bool)
        return self.x.clone(), reward, done, torch.zeros_like(done), {}


def test_multi_discrete_and_multi_binary_actions_are_each_members_argmax_per_component_and_signs() -> None:
    """MLPPolicy on MultiDiscrete (components of widths 2, 3, 4, 1 in a 2×2 grid, starts from −2 to 1) and MultiBinary
    ((2, 3)) spaces: inside a population every member's actions equal those of its explicit weights
    (``member_state_dict`` loaded into a plain copy) mapped by hand: one argmax per component over its own slice of
    the outputs, plus its start; MultiBinary the int8 signs ``z > 0``, in the space's shape; all within the space."""
    obs_space = gym.spaces.Box(-1, 1, (5,), np.float32)
    multi = gym.spaces.MultiDiscrete(np.array([[2, 3], [4, 1]]), start=np.array([[1, 0], [-2, 0]]))
    torch.manual_seed(0)
    for space in (multi, gym.spaces.MultiBinary([2, 3])):
        plain = MLPPolicy(obs_space, space, hidden=(8,), normalize=False).double()
        policy = copy.deepcopy(plain)
        es = flipes.FlipES(policy, popsize=6, sigma=0.5, seed=1)
        obs = torch.randn(6, 40, 5, dtype=torch.float64)
        with es.population():
            actions = policy(obs)
            for i in range(6):
                member = copy.deepcopy(plain)
                member.load_state_dict(es.member_state_dict(i))
                z = member.net(obs[i])  # (40, action_dim)
                if space is multi:
                    widths, first, ref = [2, 3, 4, 1], [0, 2, 5, 9], []
                    for w, f, start in zip(widths, first, [1, 0, -2, 0], strict=True):
                        ref.append(z[:, f : f + w].argmax(-1) + start)
                    expect = torch.stack(ref, 1).view(40, 2, 2)
                else:
                    expect = (z > 0).to(torch.int8).view(40, 2, 3)
                assert actions[i].dtype == expect.dtype and torch.equal(actions[i], expect)
                assert all(space.contains(a.numpy()) for a in actions[i])
        assert len(set(map(tuple, actions.flatten(2).tolist()[0]))) > 3  # not one constant action


@pytest.mark.parametrize("space,above", [(gym.spaces.MultiDiscrete([3, 3, 3]), 2.2), (gym.spaces.MultiBinary(3), 2.8)])
def test_es_learns_multi_discrete_and_multi_binary_actions(space: gym.Space, above: float) -> None:
    """A MLPPolicy trained by FlipES on one-step episodes that pay one per entry of the action equal to a function of
    the observation (chance: 1 of 3 MultiDiscrete, 1.5 MultiBinary) reaches a mean return above 2.2 (MultiDiscrete;
    2.34–2.72 on seeds 0–3) and 2.8 (MultiBinary; 2.89–2.94) of 3 on 1,000 fresh episodes in 150 generations."""
    torch.manual_seed(0)
    env = Quadrants(128 * 4, space)
    policy = MLPPolicy(env.single_observation_space, space, hidden=(16,))
    es = flipes.FlipES(policy, popsize=128, sigma=0.2, lr=0.1, seed=0)
    fitness = RolloutFitness(env, episodes=4)
    for _ in range(150):
        with es.population() as pop:
            f = fitness(policy, pop)
        es.tell(f)
        policy.obs_norm.update()
    assert run_episodes(Quadrants(1000, space), policy, seed=123).returns.mean() > above


def test_multi_discrete_and_multi_binary_actions_out_of_the_space_are_one_error() -> None:
    """Actions for MultiDiscrete and MultiBinary spaces are checked at the first step: another shape, float values, and
    an entry out of its component's range (named with its index and the range there) are each a UsageError saying
    what to return, not the env's traceback."""
    multi = gym.spaces.MultiDiscrete([3, 2], start=[0, 5])
    for space, bad, message in [
        (multi, torch.zeros(4, 3, dtype=torch.int64), r"actions of shape \(4, 3\) for 4 envs of .*, which take \(4, 2\); "),
        (multi, torch.zeros(4, 2), r"torch.float32 actions for 4 envs of .*, which take integers; .*argmax"),
        (multi, torch.tensor([[0, 5]] * 3 + [[1, 7]]), r"returned 7 at action index \(1,\) .*, which takes 5 \.\.\. 6 there; "),
        (gym.spaces.MultiBinary(3), torch.full((4, 3), 2), r"returned 2 at action index \(0,\) .*takes 0 \.\.\. 1 there; .*int8"),
    ]:
        with pytest.raises(flipes.UsageError, match=message):
            run_episodes(Quadrants(4, space), lambda o, bad=bad: bad, seed=0)


def test_policies_map_outputs_of_subclassed_multi_discrete_and_multi_binary_spaces_as_of_the_spaces_themselves() -> None:
    """MLPPolicy and GRUPolicy built on a subclass of MultiDiscrete or MultiBinary (a library's own space type) give,
    with the same weights, the actions they give on the space itself."""
    from flipes.rl import GRUPolicy

    class OwnNvec(gym.spaces.MultiDiscrete):
        pass

    class OwnBits(gym.spaces.MultiBinary):
        pass

    obs_space, obs = gym.spaces.Box(-1, 1, (3,), np.float32), torch.randn(20, 3)
    for cls in (MLPPolicy, GRUPolicy):
        for space, own in ((gym.spaces.MultiDiscrete([3, 2], start=[1, 0]), OwnNvec([3, 2], start=[1, 0])),
                           (gym.spaces.MultiBinary(4), OwnBits(4))):  # fmt: skip
            torch.manual_seed(0)
            plain, sub = cls(obs_space, space, hidden=(5,), normalize=False), cls(obs_space, own, hidden=(5,), normalize=False)
            sub.load_state_dict(plain.state_dict())
            a, b = plain(obs), sub(obs)
            a, b = (a[0], b[0]) if cls is GRUPolicy else (a, b)
            assert torch.equal(a, b) and a.shape == (20, *space.shape)


FLIPES_IDS = (
    "flipes/Acrobot-v1, flipes/Ant-v5, flipes/CartPole-v1, flipes/HalfCheetah-v5, flipes/Hopper-v5, flipes/Humanoid-v5, "
    "flipes/MountainCarContinuous-v0, flipes/Pendulum-v1, flipes/Walker2d-v5"
)


def whole(message: str) -> str:
    """A pattern that matches exactly ``message``."""
    return "^" + re.escape(message) + "$"


def test_bad_input_gives_errors_that_say_what_to_do() -> None:
    """Each is a ValueError whose whole message names the problem and the fix: MLPPolicy with a Tuple action
    space (the supported spaces; write a policy from flipes.nn layers), with a MultiDiscrete observation space (wrap the
    env in FlattenObservation where it is registered, or write a policy); an unknown gymnasium id (every flipes id,
    gymnasium.pprint_registry, the MuJoCo extra, envpool.list_all_envs, and, where no module was named and gymnasium
    knows no such name in any version, the ``mymodule:ID`` form that imports the module registering an env of one's
    own) and an unknown flipes/ id (every flipes id)."""
    obs_space = gym.spaces.Box(-1, 1, (5,), np.float32)
    action = (
        "MLPPolicy handles Discrete, MultiDiscrete, MultiBinary and Box action spaces, got Tuple; write your own policy "
        "module from flipes.nn layers for this space"
    )
    with pytest.raises(ValueError, match=whole(action)):
        MLPPolicy(obs_space, gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Discrete(3))))
    observation = (
        "MLPPolicy needs a Box, Discrete or MultiBinary observation space, got MultiDiscrete([2 3]); wrap the env in "
        "gymnasium.wrappers.FlattenObservation (one-hot for MultiDiscrete) when you register it, or write a policy from "
        "flipes.nn layers"
    )
    with pytest.raises(ValueError, match=whole(observation)):
        MLPPolicy(gym.spaces.MultiDiscrete([2, 3]), gym.spaces.Discrete(2))
    fix = (
        f"; use a flipes id ({FLIPES_IDS}), a registered gymnasium id (gymnasium.pprint_registry() lists them; MuJoCo ids "
        "need pip install 'flipes[mujoco]') or an EnvPool id (envpool.list_all_envs())"
    )
    own = "; an env your module registers: 'mymodule:NoSuchEnv-v0' imports the module first"
    # (gymnasium's words in the parentheses)
    with pytest.raises(ValueError, match=r"^unknown env id 'NoSuchEnv-v0' \(.+\)" + re.escape(fix + own) + "$"):
        make_vector_env("NoSuchEnv-v0", 2)
    with pytest.raises(ValueError, match=r"^unknown env id 'gymnasium:NoSuchEnv-v0' \(.+\).*'gymnasium:mymodule:NoSuchEnv-v0'"):
        make_vector_env("gymnasium:NoSuchEnv-v0", 2)  # the module goes after the engine's prefix
    with pytest.raises(ValueError, match=r"^unknown env id 'math:NoSuchEnv-v0' \(.+\)" + re.escape(fix) + "$"):
        make_vector_env("math:NoSuchEnv-v0", 2)  # a module was named: it registered no such id, no hint to name one
    with pytest.raises(ValueError, match=r"^unknown env id 'CartPole-v9' \(.+\)" + re.escape(fix) + "$"):
        make_vector_env("CartPole-v9", 2)  # gymnasium has CartPole in other versions: no module is left to import
    with pytest.raises(ValueError, match=whole(f"unknown env id 'flipes/NoSuch-v0'; flipes has {FLIPES_IDS}")):
        make_vector_env("flipes/NoSuch-v0", 2)


@pytest.mark.parametrize("typed", ["flipes/CartPol-v1", "flipes/Cartpole-v1", "flipes/CartPole-v0", "flipes/pendulum-v1"])
def test_a_flipes_id_with_a_typo_is_refused_naming_the_id_meant(typed: str) -> None:
    """A flipes id typed with a letter missing, another case or another version is refused with the one flipes id
    it is closest to, before the list of them all."""
    meant = "flipes/Pendulum-v1" if "endulum" in typed else "flipes/CartPole-v1"
    expect = f"unknown env id {typed!r}; did you mean {meant}? flipes has {FLIPES_IDS}"
    with pytest.raises(ValueError, match=whole(expect)):
        make_vector_env(typed, 2)


@pytest.mark.parametrize(
    "env_id,pipeline",
    [
        ("flipes/CartPole-v1", False),
        ("gymnasium:CartPole-v1", False),
        ("envpool:CartPole-v1", True),
        ("flipes/Pendulum-v1", False),
    ],
)
def test_a_model_returning_other_than_actions_is_one_error_naming_the_expected_shape(env_id: str, pipeline: bool) -> None:
    """A model that returns logits for a Discrete space, or actions of another shape for a Box space,
    is stopped at the first step by a UsageError naming what the env takes and what to return, on
    every engine and in pipelined rollouts (not an assertion deep in the env); float actions for a
    Discrete space are refused too, and so are integers out of its range at the first step (a head of
    another width: one line, not the env's traceback), a tuple of actions and a state names RecurrentPolicy,
    and (unpipelined) numpy actions of the right kind are taken as before."""
    if env_id.startswith("envpool:"):
        pytest.importorskip("envpool")
    env = make_vector_env(env_id, 6)
    discrete = isinstance(env.single_action_space, gym.spaces.Discrete)
    wrong = (lambda o: torch.zeros(6, 2)) if discrete else (lambda o: torch.zeros(6))
    expect = r"\(6, 2\) for 6 envs of Discrete\(2\), which take \(6,\); .*argmax" if discrete else r"\(6,\) .* take \(6, 1\)"
    with pytest.raises(flipes.UsageError, match=r"--model: the model returned actions of shape " + expect):
        run_episodes(env, wrong, seed=0, pipeline=pipeline)
    if discrete:
        with pytest.raises(flipes.UsageError, match=r"torch.float32 actions for 6 envs of Discrete\(2\), which take integers"):
            run_episodes(env, lambda o: torch.zeros(6), seed=0, pipeline=pipeline)
        with pytest.raises(flipes.UsageError, match=r"actions from 0 to 2 for 6 envs of Discrete\(2\), which take 0 \.\.\. 1; "):
            run_episodes(env, lambda o: torch.arange(6) % 3, seed=0, pipeline=pipeline)  # a head of 3 outputs
    with pytest.raises(flipes.UsageError, match=r"returned a tuple of 2 \(actions and a state\?\).*RecurrentPolicy"):
        run_episodes(env, lambda o: (wrong(o), (torch.zeros(6, 4), torch.zeros(6, 4))), seed=0, pipeline=pipeline)
    if discrete:
        lean = (lambda o: (o[:, 2] > 0).long()) if pipeline else (lambda o: (o[:, 2] > 0).long().numpy())
        assert (run_episodes(env, lean, seed=1, pipeline=pipeline).lengths > 20).all()  # numpy actions unpipelined
        if not pipeline:  # a list of per-env 0-d tensors is actions, not (actions, state)
            assert (run_episodes(env, lambda o: [(x[2] > 0).long() for x in o], seed=1).lengths > 20).all()


@pytest.mark.parametrize("env_id", ["flipes/CartPole-v1", "flipes/Pendulum-v1"])
def test_a_wrong_action_shape_in_training_is_named_in_the_models_own_members_first_shape(env_id: str) -> None:
    """In training the model sees observations (members, episodes, ...): a wrong action shape is named
    as the model returned it, beside the (members, episodes, ...) shape the env takes, and actions
    flattened to one row per env (what a flat shape in the message would suggest) are one such error,
    not an IndexError from deep in the rollout."""

    class Wrong(torch.nn.Module):
        def __init__(self, out) -> None:
            super().__init__()
            self.layer, self.out = torch.nn.Linear(env.single_observation_space.shape[0], 1), out

        def forward(self, obs):
            return self.out(obs) + 0 * self.layer(obs).sum()

    env = make_vector_env(env_id, 6)
    discrete = isinstance(env.single_action_space, gym.spaces.Discrete)
    logits = (lambda o: torch.zeros(*o.shape[:2], 2)) if discrete else (lambda o: torch.zeros(*o.shape[:2]))
    take = r"Discrete\(2\), which take \(3, 2\)" if discrete else r"Box\(.*\), which take \(3, 2, 1\)"
    for out, got in [(logits, r"\(3, 2, 2\)" if discrete else r"\(3, 2\)"), (lambda o: torch.zeros(6).long(), r"\(6,\)")]:
        model = flipes.flipout(Wrong(out))
        es = flipes.FlipES(model, popsize=3, mirrored=False, sigma=0.1)
        expect = rf"actions of shape {got} for 3 members × 2 episodes of {take}"
        with es.population() as pop, pytest.raises(flipes.UsageError, match=expect):
            RolloutFitness(env, episodes=2)(model, pop)


@pytest.mark.parametrize("env_id", ["gymnasium:CartPole-v1", "CartPole-v1"])
def test_gymnasium_ids_give_torch_tensors_on_every_engine(env_id: str) -> None:
    """gymnasium's own CartPole through the numpy adapter, and the plain id (EnvPool's when installed)."""
    env = make_vector_env(env_id, 6)
    obs, _ = env.reset(seed=0)
    assert isinstance(obs, torch.Tensor) and obs.shape == (6, 4)
    ep = run_episodes(env, lambda o: (o[:, 2] > 0).long(), seed=1)  # lean-following controller
    assert (ep.lengths > 20).all() and torch.equal(ep.returns, ep.lengths.double())


def test_reward_shift_lowers_each_members_fitness_by_shift_times_its_steps() -> None:
    """An alive bonus removed in the fitness: F = return - shift × episode length, per episode."""
    lengths, scale = [3, 7, 1, 5], [1.0, 2.0, 0.5, 1.0]
    policy = MLPPolicy(Countdown(lengths, scale).single_observation_space, gym.spaces.Discrete(2), hidden=(), normalize=False)
    es = flipes.FlipES(policy, popsize=2, mirrored=False, sigma=1e-9)
    with torch.no_grad():
        policy.net[0].weight.zero_()
        policy.net[0].bias.copy_(torch.tensor([1.0, 0.0]))  # always action 0: reward = scale per step
    plain = RolloutFitness(Countdown(lengths, scale), episodes=2)
    shifted = RolloutFitness(Countdown(lengths, scale), episodes=2, reward_shift=0.25)
    with es.population() as pop:
        f0, f1 = plain(policy, pop), shifted(policy, pop)
    torch.testing.assert_close(f0, torch.tensor([(3 + 14) / 2, (0.5 + 5) / 2], dtype=torch.float64))
    torch.testing.assert_close(f1, f0 - 0.25 * torch.tensor([(3 + 7) / 2, (1 + 5) / 2], dtype=torch.float64))


def test_a_user_policy_holding_obs_norm_gets_the_statistics_of_every_population_step(tmp_path) -> None:
    """A user's model with a ``RunningNorm`` as ``self.obs_norm`` has it fed by flipes.train's rollouts:
    after training, its count is exactly the population's env steps (the logged timesteps)."""

    class Policy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.obs_norm, self.net = RunningNorm(4), torch.nn.Linear(4, 2)

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.net(self.obs_norm(obs)).argmax(-1)

    result = flipes.train(env="flipes/CartPole-v1", model=lambda env: Policy(), popsize=8, generations=3, target=None,
                          out=str(tmp_path / "run"), progress=False, tensorboard=False, plot=False)  # fmt: skip
    steps = result.metrics[-1]["timesteps"]
    assert steps > 0 and result.model.obs_norm.count.item() == steps


def test_rollout_fitness_records_into_the_policys_own_obs_norm_by_default() -> None:
    """RolloutFitness made without obs_norm records the population's observations into the model's
    ``obs_norm``: after a generation and ``obs_norm.update()`` its count is the env steps taken (as with
    obs_norm passed explicitly), so an own loop's normalization learns."""
    counts = []
    for explicit in (False, True):
        env = make_vector_env("flipes/CartPole-v1", 8)
        torch.manual_seed(0)
        policy = flipes.flipout(MLPPolicy(env.single_observation_space, env.single_action_space, hidden=(4,)))
        es = flipes.FlipES(policy, popsize=8, seed=0)
        fitness = RolloutFitness(env, seed=0, obs_norm=policy.obs_norm if explicit else None)
        es.step(fitness)
        policy.obs_norm.update()
        assert policy.obs_norm.count.item() == fitness.timesteps > 0
        counts.append((policy.obs_norm.count.item(), policy.obs_norm.mean.clone()))
    assert counts[0][0] == counts[1][0] and torch.equal(counts[0][1], counts[1][1])


def test_an_own_loop_that_never_merges_obs_norm_is_warned_once() -> None:
    """RolloutFitness records observations into the policy's normalizer; a loop that calls the next
    generation without obs_norm.update() gets one warning at its own line (the statistics would
    never move); a loop that merges after every tell gets none, also with two fitness objects
    recording into one normalizer in the same generation."""
    import warnings

    for mode in ("merge", "forget", "two"):
        env = make_vector_env("flipes/CartPole-v1", 8)
        torch.manual_seed(0)
        policy = flipes.flipout(MLPPolicy(env.single_observation_space, env.single_action_space, hidden=(4,)))
        es = flipes.FlipES(policy, popsize=8, seed=0)
        fitness = RolloutFitness(env, seed=0, obs_norm=policy.obs_norm)
        if mode == "two":
            other = RolloutFitness(make_vector_env("flipes/CartPole-v1", 8), seed=1, obs_norm=policy.obs_norm)
            fitness = (lambda first, second: lambda model, pop: first(model, pop) + second(model, pop))(fitness, other)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            for _ in range(3):
                es.step(fitness)
                if mode != "forget":
                    policy.obs_norm.update()
        told = [w for w in seen if "obs_norm still holds" in str(w.message)]
        assert len(told) == (1 if mode == "forget" else 0), (mode, [str(w.message) for w in seen])
        if mode == "forget":
            assert "generation 0 unmerged" in str(told[0].message) and told[0].filename == __file__
            assert policy.obs_norm.count.item() == 0


def test_box_actions_of_a_policy_pickled_without_the_bound_flags_equal_a_new_policys() -> None:
    """A Box policy unpickled from a checkpoint written before ``all_bounded`` and ``half_bounded`` existed (no such
    attributes) acts, bit for bit (-0, NaN and ±inf outputs included), as one built now: on a space bounded in every
    dimension (tanh alone) and on one with an unbounded dimension (tanh only where bounded)."""
    special = torch.tensor([0.0, -0.0, math.nan, math.inf, -math.inf, 1e-30, -30.0, 0.5])
    for low, high in (([-2.0, -1.0], [3.0, 1.0]), ([-2.0, -np.inf], [3.0, np.inf])):
        box = gym.spaces.Box(np.array(low, np.float32), np.array(high, np.float32))
        policy = MLPPolicy(gym.spaces.Box(-1, 1, (4,), np.float32), box, hidden=(), normalize=False).double()
        old = pickle.loads(pickle.dumps(policy))
        del old.__dict__["all_bounded"], old.__dict__["half_bounded"]
        z = torch.stack([special, special.flip(0)], 1).double()
        assert policy.all_bounded == bool(np.isfinite(high).all())
        assert torch.equal(old.action(z).view(torch.int64), policy.action(z).view(torch.int64))


class _HostReads(TorchDispatchMode):
    """Counts the host reads of the ops run inside it: .item(), bool(), int() and float() of a tensor all end in
    aten::_local_scalar_dense, which on a GPU waits for the device."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    ("kind", "final_obs"), [(flipes.rl.MLPPolicy, False), (flipes.rl.GRUPolicy, False), (flipes.rl.MLPPolicy, True)]
)
def test_a_rollout_reads_the_host_per_step_only_to_ask_whether_episodes_are_left(
    kind: type[torch.nn.Module], final_obs: bool
) -> None:
    """A host read (.item(), bool(), int() or float() of a tensor) waits for a GPU. A rollout makes one per step, asking
    whether any episode is left (on the CPU; a GPU asks every 16 steps), and the others a few times per rollout, not
    per step: training rollouts of a Flipout population (observation normalization, action noise) on
    flipes/Pendulum-v1 cut at 50 steps, and the center policy's evaluation, read at most 50 + 5 times each; keeping
    each episode's final observation (``final_obs``) adds none."""
    env = make_vector_env("flipes/Pendulum-v1", 8, note=None)
    torch.manual_seed(0)
    policy = flipes.flipout(kind(env.single_observation_space, env.single_action_space, hidden=[8]))
    es, fitness = flipes.FlipES(policy, popsize=8), RolloutFitness(env, action_noise=0.1, max_steps=50, final_obs=final_obs)
    counts = []
    for _ in range(2):  # the second with the statistics merged: the normalization's own path
        with es.population() as pop, _HostReads() as reads:
            values = fitness(policy, pop)
        counts.append(reads.count)
        es.tell(values)
        policy.obs_norm.update()
    with _HostReads() as reads:
        episodes = run_episodes(env, policy, seed=0, max_steps=50, final_obs=final_obs)
    counts.append(reads.count)
    assert fitness.timesteps == 2 * 8 * 50 and episodes.steps == 8 * 50
    assert all(50 <= c <= 55 for c in counts), counts


def test_rollout_fitness_refuses_options_it_would_misread_when_made_each_named() -> None:
    """Each option a rollout would silently misread or fail on in its loop is refused when ``RolloutFitness`` is made, in a
    one-line error naming the option and what it takes: max_steps below 1 (-1 made every return 0), fractional (1.5 ran 2
    steps), a string or bool; a reward_shift that is no finite number; a seed that is no integer (None and 1.5 keyed
    other episodes); final_obs or pipeline other than a bool ("false" read as True); an obs_norm that is no RunningNorm.
    run_episodes refuses a negative or fractional max_steps and keeps 0 (every episode cut at its reset)."""
    env = make_vector_env("flipes/CartPole-v1", 4, note=None)
    for bad in (0, -1, 1.5, "10", True, math.nan):
        message = (
            "RolloutFitness: max_steps cuts every episode after that many steps, an integer of at least 1, or None for the "
            f"env's own time limit; got {bad!r}"
        )
        with pytest.raises(ValueError, match=whole(message)):
            RolloutFitness(env, max_steps=bad)
    assert RolloutFitness(env, max_steps=np.int64(3)).max_steps == 3
    with pytest.raises(TypeError, match=whole("reward_shift must be a number, got '1' (str)")):
        RolloutFitness(env, reward_shift="1")
    with pytest.raises(ValueError, match=whole("reward_shift must be a finite number (0: no shift), got inf")):
        RolloutFitness(env, reward_shift=math.inf)
    for bad in (None, 1.5, "3"):
        with pytest.raises(TypeError, match=rf"^seed must be an integer, got {re.escape(repr(bad))}"):
            RolloutFitness(env, seed=bad)
    with pytest.raises(TypeError, match=whole("final_obs must be True or False, got 'false'")):
        RolloutFitness(env, final_obs="false")
    with pytest.raises(TypeError, match=whole("pipeline must be None (pipelined where it helps), True or False, got 'no'")):
        RolloutFitness(env, pipeline="no")
    with pytest.raises(TypeError, match=r"^RolloutFitness: obs_norm is the flipes.rl.RunningNorm .*, got a Identity$"):
        RolloutFitness(env, obs_norm=torch.nn.Identity())
    act = lambda obs: torch.zeros(obs.shape[0], dtype=torch.int64)  # noqa: E731
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match=rf"^run_episodes: max_steps .* at least 0, or None .*; got {bad}$"):
            run_episodes(env, act, seed=0, max_steps=bad)
    assert run_episodes(env, act, seed=0, max_steps=0).steps == 0


def test_an_obs_norm_of_another_size_and_pipelining_without_send_and_recv_are_errors_naming_the_fix() -> None:
    """An ``obs_norm`` of another width than the env's observations is one ValueError naming both sizes (not torch's view
    error from the first step), and ``pipeline=True`` on an env without ``send``/``recv`` one naming what it lacks (not an
    AttributeError)."""
    env = make_vector_env("flipes/CartPole-v1", 4, note=None)
    policy = MLPPolicy(env.single_observation_space, env.single_action_space, hidden=(4,))
    es = flipes.FlipES(policy, popsize=4, sigma=0.1, seed=0)
    message = (
        "RolloutFitness: obs_norm records 3 features, and the env's observations have 4 (shape (4,)); give it a "
        "flipes.rl.RunningNorm(4), or None for the model's own"
    )
    with es.population() as pop:
        with pytest.raises(ValueError, match=whole(message)):
            RolloutFitness(env, obs_norm=RunningNorm(3))(policy, pop)
        with pytest.raises(ValueError, match=r"^pipelined rollouts .* CartPoleVectorEnv lacks .*; pass pipeline=False"):
            RolloutFitness(env, pipeline=True)(policy, pop)
        RolloutFitness(env)(policy, pop)  # then a generation as usual


def test_run_episodes_recording_per_member_refuses_members_that_do_not_divide_the_envs() -> None:
    """With a ``record``, ``members`` that does not divide the envs (3 or 16 of 8), 0 or a float is one ValueError naming
    the fix, not torch's view error or 0 read as one member per env; 4 records 4 rows."""
    env = make_vector_env("flipes/CartPole-v1", 8, note=None)
    act = lambda obs: torch.zeros(obs.shape[0], dtype=torch.int64)  # noqa: E731
    for bad in (3, 16, 0, 2.0):
        message = (
            f"run_episodes: members={bad!r} must be an integer that divides the env's 8 envs (each member's envs are "
            "consecutive, their observations recorded together); None gives each env a member of its own"
        )
        with pytest.raises(ValueError, match=whole(message)):
            run_episodes(env, act, seed=0, max_steps=3, record=RunningNorm(4), members=bad)
        with pytest.raises(ValueError, match=whole(message)):  # pipelined too
            run_episodes(AsyncCountdown([2] * 8, [1.0] * 8), act, seed=0, record=RunningNorm(3), members=bad, pipeline=True)
    norm = RunningNorm(4)
    run_episodes(env, act, seed=0, max_steps=3, record=norm, members=4)
    assert norm.pending.shape == (4, 9)
