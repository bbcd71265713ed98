"""flipes: evolution strategies on PyTorch with Flipout perturbations.

One batched forward pass evaluates a whole population, every member with its own
pseudo-independent weight perturbation (Wen et al., ICLR 2018, arXiv:1803.04386).
"""

from flipes import dist, nn, noise, optim, shaping
from flipes.callbacks import Callback
from flipes.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from flipes.config import TrainConfig
from flipes.errors import (
    ChangedParametersWarning,
    EqualFitnessWarning,
    OutsidePopulationWarning,
    RoundedStepWarning,
    StorageError,
    UsageError,
)
from flipes.es import FlipES, Population
from flipes.export import export_policy
from flipes.nn import flipout, kl_divergence
from flipes.runs import evaluate_policy, load_policy, read_metrics
from flipes.training import TrainResult, train

__all__ = [
    "Callback",
    "ChangedParametersWarning",
    "CheckpointError",
    "EqualFitnessWarning",
    "FlipES",
    "OutsidePopulationWarning",
    "Population",
    "RoundedStepWarning",
    "StorageError",
    "TrainConfig",
    "TrainResult",
    "UsageError",
    "dist",
    "evaluate_policy",
    "export_policy",
    "flipout",
    "kl_divergence",
    "load_checkpoint",
    "load_policy",
    "nn",
    "noise",
    "optim",
    "read_checkpoint",
    "read_metrics",
    "save_checkpoint",
    "shaping",
    "train",
]
__version__ = "0.1.0"
