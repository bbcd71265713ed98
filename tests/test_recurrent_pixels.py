"""A recurrent policy of one's own on image observations (a Flipout conv torso into a Flipout GRU cell), rolled out by
``RolloutFitness`` over episodes that end at different steps: every member's episode is its explicit weights run alone
in plain torch, its state starting at zero and carried to its own episode's end whenever the others' end."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from reference import member_parameters
from torch import Tensor

import flipes
from flipes.nn import FlipoutConv2d, FlipoutGRUCell, FlipoutLinear
from flipes.rl import RecurrentPolicy, RolloutFitness, episode_seed, reset_episodes

SIDE, HIDDEN = 36, 6


class SpotThenBlank(gym.vector.VectorEnv):
    """``(1, 36, 36)`` uint8 frames: an 8x8 spot at a place drawn at the reset shows at the first step, then a blank
    frame with a bar as long as the step count; an episode lasts 2 to 5 steps, drawn at the reset. Step ``t``'s reward
    is ``action · 2**-t``: a return spells out every action of its episode. Env ``i`` reset with seed ``s`` draws from
    ``s + i`` (gymnasium's convention); a finished env resets itself at its next step (NEXT_STEP), from its own
    generator."""

    metadata: ClassVar[dict[str, Any]] = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs
        self.single_observation_space = gym.spaces.Box(0, 255, (1, SIDE, SIDE), np.uint8)
        self.single_action_space = gym.spaces.Discrete(2)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)

    def _start(self, i: int) -> None:
        row, col, length = (int(v) for v in torch.randint(0, SIDE - 8, (3,), generator=self.gens[i]))
        self.spot[i], self.length[i], self.t[i], self.done[i] = (row, col), 2 + length % 4, 0, False

    def _frame(self, i: int) -> Tensor:
        frame = torch.zeros(1, SIDE, SIDE, dtype=torch.uint8)
        if self.t[i] == 0:
            row, col = self.spot[i]
            frame[0, row : row + 8, col : col + 8] = 255
        else:
            frame[0, : 4 * self.t[i], :4] = 200
        return frame

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None) -> tuple[Tensor, dict]:
        seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else seed
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.spot, self.length = [(0, 0)] * self.num_envs, [0] * self.num_envs
        self.t, self.done = [0] * self.num_envs, [False] * self.num_envs
        for i in range(self.num_envs):
            self._start(i)
        return torch.stack([self._frame(i) for i in range(self.num_envs)]), {}

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict]:
        reward = torch.zeros(self.num_envs, dtype=torch.float64)
        ended = torch.zeros(self.num_envs, dtype=torch.bool)
        for i in range(self.num_envs):
            if self.done[i]:  # NEXT_STEP autoreset: this step starts the env's next episode
                self._start(i)
                continue
            reward[i] = int(actions[i]) * 2.0 ** -self.t[i]
            self.t[i] += 1
            self.done[i] = ended[i] = self.t[i] == self.length[i]
        obs = torch.stack([self._frame(i) for i in range(self.num_envs)])
        return obs, reward, ended, torch.zeros_like(ended), {}


class ConvGRU(RecurrentPolicy):
    """A user's policy with memory on frames: Flipout conv (4 channels, 8x8 stride 4), a Flipout GRU cell, a Flipout
    head, argmax; the conv body takes one batch dim, so rows are flattened member-major as the README says."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = FlipoutConv2d(1, 4, 8, 4)
        self.cell = FlipoutGRUCell(4 * 8 * 8, HIDDEN)
        self.head = FlipoutLinear(HIDDEN, 2)

    def forward(self, obs: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        x = obs.flatten(0, -4).to(self.head.weight.dtype) / 255
        h = self.cell(torch.relu(self.conv(x)).flatten(1), state)
        return self.head(h).argmax(-1).view(obs.shape[:-3]), h


def explicit_episode(params: dict[str, Tensor], env: SpotThenBlank, seed: int) -> tuple[float, int]:
    """One episode of the policy with ``params`` stepped alone in plain torch from a zero state: (return, length)."""
    obs, _ = env.reset(seed=[seed])
    h, total, steps, done = torch.zeros(1, HIDDEN, dtype=torch.float64), 0.0, 0, False
    while not done:
        x = obs.double() / 255
        y = torch.relu(F.conv2d(x, params["conv.weight"], params["conv.bias"], stride=4)).flatten(1)
        gi = F.linear(y, params["cell.weight_ih"], params["cell.bias_ih"])
        gh = F.linear(h, params["cell.weight_hh"], params["cell.bias_hh"])
        r, z = torch.sigmoid(gi[:, : 2 * HIDDEN] + gh[:, : 2 * HIDDEN]).chunk(2, 1)
        h = (1 - z) * torch.tanh(gi[:, 2 * HIDDEN :] + r * gh[:, 2 * HIDDEN :]) + z * h
        action = F.linear(h, params["head.weight"], params["head.bias"]).argmax(-1)
        obs, reward, terminated, _, _ = env.step(action)
        total, steps, done = total + float(reward[0]), steps + 1, bool(terminated[0])
    return total, steps


def test_each_members_pixel_episodes_are_its_explicit_weights_run_alone_from_a_zero_state() -> None:
    """8 members × 2 episodes (float64, 2 ε groups) of a conv-GRU policy of one's own on frames whose cue shows at the
    first step only, episodes of 2 to 5 steps: each member's episode returns (which spell out its actions) and the steps
    taken equal plain F.conv2d / GRU equations / F.linear with that member's explicit weights, stepped alone on the same
    episode from a zero state; the episodes end at different steps and the members act differently."""
    torch.manual_seed(0)
    n, k, seed = 8, 2, 4
    policy = flipes.flipout(ConvGRU().double())
    es = flipes.FlipES(policy, popsize=n, sigma=0.5, seed=1, groups=2)
    env = SpotThenBlank(n * k)
    fitness = RolloutFitness(env, episodes=k, seed=seed)
    with es.population() as pop:
        fitness(policy, pop)
        members = member_parameters(es, policy)
        first = reset_episodes(SpotThenBlank(n * k), seed, "population", pop.generation)
    returns = fitness.last_returns
    alone = SpotThenBlank(1)
    explicit = []
    for m, params in enumerate(members):
        for e in range(k):
            start = episode_seed(seed, 0, "population") + m * k + e  # global env m·K + e (RolloutFitness's seeding)
            assert torch.equal(alone.reset(seed=[start])[0][0], first[m * k + e])
            explicit.append(explicit_episode(params, alone, start))
    explicit_returns = torch.tensor([r for r, _ in explicit], dtype=torch.float64).view(n, k).mean(1)
    assert torch.equal(returns, explicit_returns), (returns, explicit_returns)
    assert fitness.timesteps == sum(steps for _, steps in explicit)  # each episode's length too
    assert len({steps for _, steps in explicit}) > 1  # the episodes end at different steps
    assert len(set(returns.tolist())) > 1  # the members act differently
