"""Reinforcement learning with FlipES: policies, batched rollouts, observation normalization."""

from flipes.rl.envpool_vec import EnvPoolVectorEnv
from flipes.rl.envs import EnvError, available_cores, make_vector_env, split_env_id
from flipes.rl.normalize import RunningNorm
from flipes.rl.policy import CNNPolicy, MLPPolicy, SpacePolicy
from flipes.rl.probe import Probe
from flipes.rl.recurrent import POLICIES, GRUPolicy, RecurrentPolicy, stepper
from flipes.rl.rollout import (
    ActionNoise,
    Episodes,
    RolloutFitness,
    episode_seed,
    reference_observations,
    reset_episodes,
    run_episodes,
)
from flipes.rl.workers import WorkerVectorEnv

__all__ = [
    "POLICIES",
    "ActionNoise",
    "CNNPolicy",
    "EnvError",
    "EnvPoolVectorEnv",
    "Episodes",
    "GRUPolicy",
    "MLPPolicy",
    "Probe",
    "RecurrentPolicy",
    "RolloutFitness",
    "RunningNorm",
    "SpacePolicy",
    "WorkerVectorEnv",
    "available_cores",
    "episode_seed",
    "make_vector_env",
    "reference_observations",
    "reset_episodes",
    "run_episodes",
    "split_env_id",
    "stepper",
]
