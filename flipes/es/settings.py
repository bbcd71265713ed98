"""What of a built FlipES may be changed between generations, and what is fixed when it is built.

``shaping``, ``weight_decay`` and ``optimizer`` are read at every ``tell``: assigning them between generations takes
effect at the next one, checked as ``FlipES(...)`` checks them. The layout of the population (``popsize``, ``groups``,
``mirrored``, ``seed``, the noise, the evolved parameters) is fixed when the FlipES is built: its members, each
process's share of them and every layer's buffers follow from it, and its checkpoints record it. Assigning one of those
would be an attribute that nothing, or only part of the FlipES, reads (``es.popsize = 2 * n`` failed at ``tell`` with a
fitness-shape error that blamed the fitness), so it is an error naming what to do instead: a new FlipES for the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from flipes.es.optimizer import build_optimizer

if TYPE_CHECKING:
    from flipes.es.engine import FlipES

# read at every tell: may be assigned between generations
SETTABLE = ("shaping", "weight_decay", "optimizer")

# fixed when the FlipES is built: an error to assign afterwards
FIXED = frozenset(
    {
        "popsize",
        "groups",
        "seed",
        "mirrored",
        "maximize",
        "noise_rank",
        "sigma_lr",
        "track_best",
        "hold_noise",
        "comm",
        "comm_mode",
        "local_groups",
        "members",
        "model",
        "params",
        "layers",
        "dense_modules",
        "slots",
        "dense_slots",
    }
)


# of FIXED, the arguments of FlipES(...); the others (its members, layers, parameters) follow from the model and these
OPTIONS = frozenset(
    {"popsize", "groups", "seed", "mirrored", "maximize", "noise_rank", "sigma_lr", "track_best", "hold_noise", "comm",
     "comm_mode"}
)  # fmt: skip


def fixed_message(name: str, value: Any) -> str:
    """Why ``es.<name> = value`` is refused, and what to do instead."""
    restart = (
        " For a restart (IPOP: a larger popsize from the best member), load the start into the model first "
        "(model.load_state_dict(es.best.state_dict)) and give the new FlipES another seed, or it replays the old one's "
        "noise from generation 0; new.optimizer.load_state_dict(old.optimizer.state_dict()) carries the optimizer's "
        "state over where wanted."
        if name in ("popsize", "groups", "seed")
        else ""
    )
    if name in OPTIONS:
        build = f"build a new FlipES(model, ..., {name}=...) for the same model instead"
    elif name == "model":
        build = "build a new FlipES(other_model, ...) for another model instead"
    else:  # not an argument: FlipES(model, ..., params=...) would be a TypeError
        build = "it follows from the model and FlipES's options: build a new FlipES(model, ...) instead"
    return (
        f"es.{name} = {value!r}: {name} is fixed when a FlipES is built (its members, noise, state and checkpoints "
        f"follow from it); {build}: the newest FlipES of a model owns its layers.{restart} Settable between generations: "
        f"{', '.join(f'es.{s}' for s in SETTABLE)} and es.lr"
    )


def checked_setting(es: FlipES, name: str, value: Any) -> Any:
    """``value`` for ``es.<name>`` (one of :data:`SETTABLE`), checked as the constructor checks it (``weight_decay`` as a
    float), or an error naming the problem; nothing changes then."""
    from flipes.es.options import checked_options

    if name == "optimizer":
        if not isinstance(value, torch.optim.Optimizer):
            raise TypeError(
                f"es.optimizer must be a torch.optim.Optimizer over es.params, got {value!r} ({type(value).__name__}); "
                "e.g. es.optimizer = torch.optim.SGD(es.params, lr=0.01, momentum=0.9, nesterov=True)"
            )
        try:
            return build_optimizer(es.params, lambda params: value, 0.0, False, _names(es), assigned=True)
        except (TypeError, ValueError) as error:
            raise type(error)(f"es.optimizer = {type(value).__name__}(...): {error}".replace("factory ", "")) from None
    shaping = value if name == "shaping" else es.shaping
    weight_decay = value if name == "weight_decay" else es.weight_decay
    o = checked_options(
        es.popsize, es._sigma, None, es.seed, es.groups, mirrored=es.mirrored, shaping=shaping,
        weight_decay=weight_decay, comm_mode=es.comm_mode, noise_rank=es.noise_rank, sigma_lr=es.sigma_lr,
        track_best=es.track_best, maximize=es.maximize, hold_noise=es.hold_noise,
    )  # fmt: skip
    return o.weight_decay if name == "weight_decay" else value


def _names(es: FlipES) -> Any:
    from functools import partial

    from flipes.es.evolved import parameter_names

    return partial(parameter_names, es._module)
