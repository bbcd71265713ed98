"""flipes: evolution strategies on PyTorch with Flipout perturbations.

One batched forward pass evaluates a whole population, every member with its own
pseudo-independent weight perturbation (Wen et al., ICLR 2018, arXiv:1803.04386).
"""

from typing import TYPE_CHECKING

# the submodules the README reaches as flipes.<module>.<name>: bound here, a type checker finds them after `import flipes`
from flipes import callbacks, cli, dist, es, nn, noise, optim, resume, rl, search, shaping
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
from flipes.interrupts import Interrupted
from flipes.nn import flipout, kl_divergence
from flipes.runs import evaluate_policy, load_policy, read_metrics
from flipes.train_state import TrainResult
from flipes.training import train

__all__ = [
    "Callback",
    "ChangedParametersWarning",
    "CheckpointError",
    "EqualFitnessWarning",
    "FlipES",
    "Interrupted",
    "OutsidePopulationWarning",
    "Population",
    "RoundedStepWarning",
    "StorageError",
    "TrainConfig",
    "TrainResult",
    "UsageError",
    "callbacks",
    "cli",
    "dist",
    "es",
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
    "resume",
    "rl",
    "save_checkpoint",
    "search",
    "shaping",
    "train",
]
__version__ = "0.1.0"

# other ES libraries' class names: one engine, FlipES, runs them all; say how instead of a bare AttributeError
_OTHER_LIBRARIES = {
    "ES": "FlipES(model, popsize=..., sigma=...)",
    "OpenES": "FlipES(model, ...) (OpenAI-ES with Adam; --algo openai-es)",
    "Open_ES": "FlipES(model, ...) (OpenAI-ES with Adam; --algo openai-es)",
    "OpenAIES": "FlipES(model, ...) (OpenAI-ES with Adam; --algo openai-es)",
    "PGPE": "FlipES(model, popsize=16 or more, groups=8, sigma_lr=0.2, optimizer=functools.partial(flipes.search.clipup, "
    "max_speed=0, lr=lr)) (--algo pgpe)",
    "SNES": "FlipES(model, sigma_lr=...) (a σ per layer, adapted; the nearest to SNES)",
    "ARS": "flipes.train(algo='ars') (--algo ars)",
}


# hidden from type checkers: a module __getattr__ would type every misspelt name (flipes.FlipE, from flipes import
# FlipEs) as its return type instead of an error
if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        if name in _OTHER_LIBRARIES:
            raise AttributeError(f"flipes has no {name}: its one engine is {_OTHER_LIBRARIES[name]}")
        raise AttributeError(f"module 'flipes' has no attribute {name!r}")
