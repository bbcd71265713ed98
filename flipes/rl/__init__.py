"""Reinforcement learning with FlipES: policies, batched rollouts, observation normalization."""

from flipes.rl.envs import make_vector_env
from flipes.rl.normalize import RunningNorm
from flipes.rl.policy import MLPPolicy
from flipes.rl.rollout import Episodes, RolloutFitness, episode_seed, run_episodes

__all__ = ["Episodes", "MLPPolicy", "RolloutFitness", "RunningNorm", "episode_seed", "make_vector_env", "run_episodes"]
