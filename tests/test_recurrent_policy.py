"""Recurrent policies in rollouts: a ``RecurrentPolicy``'s state is carried through each member's
episode (each member's returns equal its explicit weights run alone), memory solves a task that a
memoryless policy cannot, and ``--policy gru`` trains, resumes and evaluates from the command line."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import metrics
from reference import member_parameters
from torch import Tensor
from torch.func import functional_call

import flipes
from flipes.rl import GRUPolicy, MLPPolicy, RolloutFitness, make_vector_env, run_episodes


def test_each_members_return_is_its_own_weights_run_alone_with_its_state(device: torch.device) -> None:
    """A GRU policy's population rollout on flipes/CartPole-v1 (float64): every member's return equals
    a plain copy of the policy, loaded with that member's explicit parameters, stepped alone on the
    same episode with its state carried from step to step."""
    torch.manual_seed(0)
    n, seed = 8, 3
    env = make_vector_env("flipes/CartPole-v1", n, device)
    policy = flipes.flipout(
        GRUPolicy(env.single_observation_space, env.single_action_space, hidden=(8, 6)).to(device, torch.float64)
    )
    plain = GRUPolicy(env.single_observation_space, env.single_action_space, hidden=(8, 6)).to(device, torch.float64)
    plain.load_state_dict(policy.state_dict())
    es = flipes.FlipES(policy, popsize=n, sigma=0.5, seed=1, groups=2)
    fitness = RolloutFitness(env, seed=seed)
    with es.population() as pop:
        returns = fitness(policy, pop)
        members = member_parameters(es, policy)
        obs0 = flipes.rl.reset_episodes(env, seed, "population", pop.generation)
    one = make_vector_env("flipes/CartPole-v1", 1, device)
    for m, params in enumerate(members):
        state = None

        def act(obs: Tensor, params=params) -> Tensor:
            nonlocal state
            action, state = functional_call(plain, params, (obs, state))
            return action

        start = flipes.rl.episode_seed(seed, 0, "population") + m  # member m's episode (RolloutFitness's seeding)
        assert torch.equal(one.reset(seed=[start])[0][0], obs0[m])
        alone = run_episodes(one, act, seed=[start]).returns
        assert alone.item() == returns[m].item(), (m, alone.item(), returns[m].item())
    assert len(set(returns.tolist())) > 1  # the members differ


class CueRecall(gym.vector.VectorEnv):
    """A cue of ±1 shown at the first step only, then T-1 blank steps; the last step pays 1 if the
    action (0 or 1) names the cue's sign. A memoryless policy sees the same blank observation at the
    last step whatever the cue: it earns 1/2 on average at best."""

    metadata: ClassVar[dict] = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, length: int = 4) -> None:
        self.num_envs, self.length = num_envs, length
        self.single_observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.single_action_space = gym.spaces.Discrete(2)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)

    def _obs(self) -> Tensor:
        shown = (self.cue if self.t == 0 else torch.zeros_like(self.cue)).float()
        last = torch.full_like(shown, float(self.t == self.length - 1))
        return torch.stack((shown, last), 1)

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None) -> tuple[Tensor, dict]:
        seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else seed  # gymnasium's convention
        self.cue = torch.tensor([1 - 2 * (s % 2) for s in seeds])  # a balanced mix of cues
        self.t = 0
        return self._obs(), {}

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict]:
        final = self.t == self.length - 1
        reward = (actions == (self.cue > 0).long()).double() if final else torch.zeros(self.num_envs, dtype=torch.float64)
        self.t += 1
        done = torch.full((self.num_envs,), final)
        return self._obs() if not final else torch.zeros(self.num_envs, 2), reward, done, torch.zeros_like(done), {}


def train_on_cue(policy: torch.nn.Module, generations: int) -> float:
    """ES on CueRecall (popsize 32, 16 episodes per member); the center policy's mean return after it."""
    es = flipes.FlipES(policy, popsize=32, sigma=0.5, lr=0.1, seed=0)
    fitness = RolloutFitness(CueRecall(32 * 16), episodes=16, seed=0)
    for _ in range(generations):
        with es.population() as pop:
            values = fitness(policy, pop)
        es.tell(values)
    env = CueRecall(64)
    return run_episodes(env, policy, seed=list(range(64))).returns.mean().item()


@pytest.mark.filterwarnings("ignore::flipes.EqualFitnessWarning")  # the memoryless policy ties at chance
def test_memory_solves_a_cue_that_a_memoryless_policy_cannot() -> None:
    """On CueRecall a GRU policy trained by ES (40 generations, seed 0) recalls the cue in every
    evaluation episode, where the same training of an MLP policy stays at chance, 1/2 (it cannot
    do better: its last observation is the same for both cues)."""
    env = CueRecall(1)
    torch.manual_seed(0)
    gru = flipes.flipout(GRUPolicy(env.single_observation_space, env.single_action_space, hidden=(16,), normalize=False))
    torch.manual_seed(0)
    mlp = flipes.flipout(MLPPolicy(env.single_observation_space, env.single_action_space, hidden=(16,), normalize=False))
    assert train_on_cue(gru, 40) == 1.0
    assert train_on_cue(mlp, 40) == 0.5


def test_gru_policy_from_the_command_line_solves_cartpole_and_evaluates(tmp_path) -> None:
    """``flipes train --policy gru`` solves flipes/CartPole-v1 (center policy ≥ 475 over 100 episodes,
    seed 0), ``flipes.load_policy`` rebuilds the GRU policy, and ``--policy`` is kept on resume."""
    result = flipes.train(
        env="flipes/CartPole-v1", policy="gru", seed=0, out=str(tmp_path), progress=False, tensorboard=False, plot=False
    )
    assert result.reason.startswith("solved") and result.eval_return >= 475
    policy = flipes.load_policy(tmp_path)
    assert isinstance(policy, GRUPolicy)
    returns = run_episodes(make_vector_env("flipes/CartPole-v1", 100), policy, seed=987_654).returns
    assert returns.mean() >= 475, returns.mean()
    with pytest.raises(flipes.UsageError, match="--policy: saved 'gru', now 'mlp'"):
        flipes.train(resume=str(tmp_path), policy="mlp", target=None, generations=len(metrics(tmp_path)) + 1, progress=False)


def test_a_recurrent_policy_is_never_pipelined() -> None:
    """Pipelined rollouts hand the policy half-stale batches: asking for one with a recurrent policy
    is an error, not a silent wrong rollout."""
    env = make_vector_env("flipes/CartPole-v1", 4)
    policy = flipes.flipout(GRUPolicy(env.single_observation_space, env.single_action_space, hidden=(4,)))
    es = flipes.FlipES(policy, popsize=4)
    with es.population() as pop, pytest.raises(ValueError, match="recurrent policy needs pipeline=False"):
        RolloutFitness(env, pipeline=True)(policy, pop)


def test_a_gru_policy_is_its_documented_layers_and_is_recognised_when_compiled() -> None:
    """Outside a population, ``GRUPolicy(hidden=(16, 8))`` is ``Linear(obs, 16) -> tanh -> GRUCell(16, 8) -> Linear(8,
    actions)`` then tanh into the bounds: over 3 steps its actions and states equal torch.nn's layers holding its
    weights (within 1e-6), each step taking the state the previous returned; ``torch.compile`` of it is still a
    recurrent policy (its state carried), of an MLPPolicy not."""
    from flipes.rl.recurrent import is_recurrent

    torch.manual_seed(0)
    box = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    policy = GRUPolicy(box, gym.spaces.Box(-1.0, 1.0, (2,), np.float32), hidden=(16, 8), normalize=False)
    encoder, head = torch.nn.Linear(4, 16), torch.nn.Linear(8, 2)
    cell = torch.nn.GRUCell(16, 8)
    encoder.load_state_dict(policy.encoder[0].state_dict())
    cell.load_state_dict(policy.cell.state_dict())
    head.load_state_dict(policy.head.state_dict())
    state, h = None, torch.zeros(5, 8)
    with torch.no_grad():
        for obs in torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(1)):
            action, state = policy(obs, state)
            h = cell(torch.tanh(encoder(obs)), h)
            torch.testing.assert_close(state, h, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(action, torch.tanh(head(h)), rtol=1e-6, atol=1e-6)
    assert is_recurrent(torch.compile(policy)) and not is_recurrent(torch.compile(MLPPolicy(box, gym.spaces.Discrete(2))))


def test_a_mixin_listing_recurrent_policy_first_is_told_to_list_it_last() -> None:
    """A class inheriting (RecurrentPolicy, MyModule) resolves forward to RecurrentPolicy's, which raises
    NotImplementedError naming the class and the order that works; (MyModule, RecurrentPolicy) runs its own forward."""

    class MyModule(torch.nn.Module):
        def forward(self, obs: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
            return obs.sum(-1), obs

    class Wrong(flipes.rl.RecurrentPolicy, MyModule):
        pass

    class Right(MyModule, flipes.rl.RecurrentPolicy):
        pass

    obs = torch.ones(2, 3)
    with pytest.raises(NotImplementedError, match=r"^Wrong reached RecurrentPolicy\.forward.*\(MyModule, RecurrentPolicy\)"):
        Wrong()(obs, None)
    assert torch.equal(Right()(obs, None)[0], torch.full((2,), 3.0))


def test_a_recurrent_policy_returning_its_actions_alone_is_told_to_return_its_state() -> None:
    """A RecurrentPolicy whose forward returns the actions without the state stops at the first step with a UsageError
    naming ``(actions, state)``: unpacked as they came, 2 envs' actions were one action and a 'state' (a shape error
    naming actions of shape ()), 1 env's an unpacking error."""

    class ActionsOnly(flipes.rl.RecurrentPolicy):
        def forward(self, obs: Tensor, state: Tensor | None) -> Tensor:  # type: ignore[override]
            return (obs[..., 0] > 0).long()

    for envs in (1, 2, 3):
        with pytest.raises(flipes.UsageError, match=r"ActionsOnly .* returned a Tensor, not \(actions, state\); return the"):
            run_episodes(make_vector_env("flipes/CartPole-v1", envs), ActionsOnly(), seed=0)


def test_a_gru_policy_refuses_a_state_of_another_shape_and_takes_a_numpy_one() -> None:
    """GRUPolicy takes the state its previous step returned: one of another hidden size or batch, or the same numbers in
    another layout ((episodes, members, H) for (members, episodes, H), which a reshape took silently, each row then
    reading another env's memory), is a ValueError naming the shape it takes; a numpy state acts as the same tensor."""
    box = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    policy = flipes.flipout(GRUPolicy(box, gym.spaces.Discrete(2), hidden=(8, 6)))
    with pytest.raises(
        ValueError, match=r"GRUPolicy takes the state its previous step returned, of shape \(5, 6\) .* got \(5, 7\)"
    ):
        policy(torch.zeros(5, 4), torch.zeros(5, 7))
    with pytest.raises(ValueError, match=r"of shape \(5, 6\) .* got \(3, 6\)"):
        policy(torch.zeros(5, 4), torch.zeros(3, 6))
    es = flipes.FlipES(policy, popsize=4)
    obs = torch.randn(4, 2, 4, generator=torch.Generator().manual_seed(0))
    with es.population():
        _, state = policy(obs, None)
        with pytest.raises(ValueError, match=r"of shape \(4, 2, 6\) .* got \(2, 4, 6\)"):
            policy(obs, state.transpose(0, 1).contiguous())
        policy(obs, state)  # the layers were called: the population ends without a complaint
    a, h = policy(obs[0].numpy(), torch.ones(2, 6))
    b, g = policy(obs[0].numpy(), np.ones((2, 6), np.float32))
    assert np.array_equal(a, b) and torch.equal(h, g)


def test_a_recurrent_policy_returning_a_list_of_actions_and_state_runs_as_a_tuple() -> None:
    """``return [actions, state]`` unpacks as ``(actions, state)`` does: the same episodes, not a refusal."""

    class Counts(flipes.rl.RecurrentPolicy):
        def __init__(self, as_list: bool) -> None:
            super().__init__()
            self.as_list = as_list

        def forward(self, obs: Tensor, state: Tensor | None) -> Any:  # type: ignore[override]
            state = torch.zeros(obs.shape[0]) if state is None else state + 1
            actions = (state % 2).long()
            return [actions, state] if self.as_list else (actions, state)

    runs = [run_episodes(make_vector_env("flipes/CartPole-v1", 2), Counts(as_list), seed=0) for as_list in (False, True)]
    assert torch.equal(torch.as_tensor(runs[0].returns), torch.as_tensor(runs[1].returns))
