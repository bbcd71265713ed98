"""A FlipES saved and restored: ``state_dict``/``load_state_dict`` (a checkpoint, to resume bit for bit) and pickling
(``copy.deepcopy``, sending a FlipES to another process).

The noise is a pure function of (seed, generation), so no random state is stored.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import TYPE_CHECKING, Any

import torch

from flipes.checkpoint import state_mismatches
from flipes.es.checks import as_index
from flipes.es.evolved import held_sizes
from flipes.es.install import Deferred
from flipes.es.members import BestMember
from flipes.es.optimizer import optimizer_name
from flipes.es.population import EpochShuffles
from flipes.es.refusals import told_record

if TYPE_CHECKING:
    from flipes.es.engine import FlipES


def pickled_state(es: FlipES) -> dict[str, Any]:
    """``es.__getstate__()``: the layers' slots keyed by position, not by ``id`` (a copy's layers are other
    objects), and no population in progress (a copy of the model is the mean network)."""
    state = es.__dict__.copy()
    position = {id(layer): i for i, layer in enumerate(es.layers)}
    for name in ("_slot_index", "_bias_of"):
        state[name] = {(position[key], j): v for (key, j), v in state[name].items()}
    state["_inside"], state["_stale_hooks"], state["_in_part"] = None, [], False
    state["_shuffles"] = EpochShuffles()  # drawn again where needed: not an epoch's permutation in every pickle
    if isinstance(es._noise, Deferred):  # nothing sampled nor installed yet in the copy's layers
        state["_noise"] = Deferred()
        state["_noise"].block = es._noise.block
    return state


def unpickled_state(es: FlipES, state: dict[str, Any]) -> None:
    """``es.__setstate__(state)``: the slots keyed by ``id`` of the copy's layers, which the copy owns; a FlipES
    pickled by an older flipes gets the attributes it lacked."""
    es.__dict__.update(state)
    es.__dict__.setdefault("_ranks_agree", False)  # pickled before the ranks' check existed
    es.__dict__.setdefault("_train_fitness", False)
    es.__dict__.setdefault("_told_dropout", True)  # pickled before the dropout warning existed: its run went on
    es.__dict__.setdefault("_told_rounded", False)
    es.__dict__.setdefault("_noise_serial", 0)
    es.__dict__.setdefault("_built", True)  # pickled before the layout was guarded: fixed in the copy too
    es.__dict__.setdefault("_freed", None)
    es.__dict__.setdefault("_sigma_held", None)  # pickled before σ was held per generation
    es.__dict__.setdefault("_shuffles", EpochShuffles())
    if "_held_sizes" not in state:  # pickled before parameters added later were refused
        es._held_sizes = held_sizes(es._module)
    if "_weight_counts" not in state:  # pickled before it was kept
        es._weight_counts = [len(layer.perturbed_weights()) for layer in es.layers]
    for name in ("_slot_index", "_bias_of"):
        setattr(es, name, {(id(es.layers[i]), j): v for (i, j), v in state[name].items()})
    for module in [*es.layers, *es.dense_modules]:  # the copy owns its copy of the layers
        module.__dict__["_flipes_owner"] = weakref.ref(es)
    mark_generation(es)  # torch copies no optimizer hooks nor attributes of its own


def configuration(es: FlipES) -> dict[str, Any]:
    """What a checkpoint must agree on (not the process count)."""
    return {
        "popsize": es.popsize,
        "groups": es.groups,
        "seed": es.seed,
        "mirrored": es.mirrored,
        "noise_rank": es.noise_rank,
        "sigma_lr": es.sigma_lr,
        "maximize": es.maximize,
    }


def saved_state(es: FlipES) -> dict[str, Any]:
    """``es.state_dict()``: generation, configuration, model, optimizer (and its class), adaptive σ, best member, the
    shaping's state where it keeps one (:func:`shaping_state`)."""
    state = {
        "generation": es.generation,
        "config": configuration(es),
        "model": es._module.state_dict(),
        "optimizer": es.optimizer.state_dict(),
        "optimizer_class": optimizer_name(es.optimizer),  # what load_state_dict can take it into
    }
    if es.log_sigma is not None:
        state["log_sigma"] = es.log_sigma
    if es.best is not None:
        state["best"] = {f.name: getattr(es.best, f.name) for f in dataclasses.fields(es.best)}
    if (shaping := shaping_state(es.shaping)) is not None:
        state["shaping"] = shaping
    return state


def shaping_state(shaping: Any) -> Any:
    """The state of a shaping of one's own that keeps some (a fitness baseline, a running normalizer): what its
    ``state_dict()`` returns, None for a plain function (one without ``load_state_dict`` is refused on load). Saved
    with the FlipES, so that a resumed run shapes as an unstopped one, as an optimizer's state rides along."""
    save = getattr(shaping, "state_dict", None)
    return save() if callable(save) else None


def check_shaping_fits(es: FlipES, state: dict[str, Any]) -> None:
    """Raise before anything is loaded where ``state`` holds a shaping's state and this FlipES's shaping cannot take it
    back: the resumed run would shape from a fresh state, silently another run."""
    if "shaping" in state and not callable(getattr(es.shaping, "load_state_dict", None)):
        name = getattr(es.shaping, "__qualname__", type(es.shaping).__qualname__)
        raise ValueError(
            f"state holds the state of a shaping of one's own (its state_dict()), and this FlipES's shaping {name} has no "
            "load_state_dict to take it back; nothing was loaded: build the FlipES with the shaping the state was saved with "
            "(or drop state['shaping'] to shape afresh)"
        )


def check_groups_fit(es: FlipES, optimizer: dict[str, Any]) -> None:
    """Raise before anything is loaded where ``optimizer`` (a state dict) has other param groups than the optimizer's:
    torch's ``load_state_dict`` raises only then, after the model was loaded, which would leave the model holding the
    state's parameters and the generation and optimizer their own."""
    saved = [len(g["params"]) for g in optimizer["param_groups"]]
    now = [len(g["params"]) for g in es.optimizer.param_groups]
    if saved != now:
        raise ValueError(
            f"state['optimizer'] has parameter groups of {saved} parameters, this FlipES's optimizer {now}; nothing was "
            "loaded: build the FlipES with the optimizer factory (its param groups) the state was saved with"
        )


# every entry es.state_dict() has held, and of its "config" ("rank": noise_rank's former name): one a newer flipes adds
# is refused by name rather than dropped, which would continue its run as another one
STATE_KEYS = ("generation", "config", "model", "optimizer", "optimizer_class", "log_sigma", "best", "shaping")
CONFIG_KEYS = ("popsize", "groups", "seed", "mirrored", "noise_rank", "rank", "sigma_lr", "maximize")


def unknown_entries(state: dict[str, Any]) -> list[str]:
    """The entries of the FlipES state ``state`` that no flipes up to this one writes, as ``'key'`` and
    ``config['key']``."""
    config = state.get("config")
    return [repr(k) for k in state if k not in STATE_KEYS] + [
        f"config[{k!r}]" for k in (config if isinstance(config, dict) else ()) if k not in CONFIG_KEYS
    ]


def check_known(state: dict[str, Any]) -> None:
    """Raise before anything is loaded where ``state`` holds an entry no flipes up to this one writes (a newer flipes's
    setting or state, which loading without it would silently drop), naming it and the ways on."""
    if unknown := unknown_entries(state):
        from flipes import __version__

        raise ValueError(
            f"state holds {', '.join(unknown)}, which this flipes {__version__} does not know; nothing was loaded: a newer "
            "flipes saved it, whose run this one would continue as another: load it with that flipes or a later one (pip "
            "install -U flipes); entries added by hand: drop them before loading"
        )


def load_state(es: FlipES, state: dict[str, Any]) -> None:
    """``es.load_state_dict(state)``: refused before anything changes where ``state`` is of another configuration,
    model or optimizer; the generation's noise is drawn anew from the seeds, and the ranks compare again."""
    missing = {"generation", "config", "model", "optimizer"} - set(state)
    if missing:
        raise ValueError(
            f"not a FlipES state dict: missing {sorted(missing)}; pass what es.state_dict() returned (in a flipes "
            "checkpoint: flipes.load_checkpoint(DIR)['es'])"
        )
    generation = as_index(state["generation"])
    if generation is None or generation < 0:  # int() would truncate 1.5 and parse "3"; a negative one keys no noise
        raise ValueError(
            f"state['generation'] must be an integer >= 0, got {state['generation']!r}; pass what es.state_dict() returned"
        )
    if not isinstance(state["optimizer"], dict) or "param_groups" not in state["optimizer"]:  # torch: KeyError, AttributeError
        raise ValueError(
            f"state['optimizer'] is not an optimizer's state dict (got {type(state['optimizer']).__name__}); pass what "
            "es.state_dict() returned"
        )
    if not isinstance(state["config"], dict):
        raise ValueError(f"state['config'] is a {type(state['config']).__name__}, not the dict es.state_dict() returns")
    check_known(state)
    saved = dict(state["config"])
    if "rank" in saved:  # states saved before the option was called noise_rank
        saved["noise_rank"] = saved.pop("rank")
    saved.setdefault("sigma_lr", 0.0)  # states saved before adaptive σ existed
    saved.setdefault("maximize", True)  # states saved before minimizing existed
    diff = {k: (v, saved.get(k)) for k, v in configuration(es).items() if saved.get(k) != v}
    if diff:
        shown = ", ".join(f"{k}: saved {s!r}, now {c!r}" for k, (c, s) in diff.items())
        raise ValueError(f"state was saved by a FlipES with another configuration ({shown}); use the same settings to resume")
    if es.log_sigma is not None:
        saved_sigma = state.get("log_sigma")
        if saved_sigma is None or saved_sigma.shape != es.log_sigma.shape:
            raise ValueError("state has no adaptive σ of this model's layers (log_sigma); resume with the same model")
    saved_optimizer, optimizer = state.get("optimizer_class"), optimizer_name(es.optimizer)
    if saved_optimizer is not None and saved_optimizer != optimizer:  # torch would load it and fail later (KeyError)
        raise ValueError(
            f"state was saved with the optimizer {saved_optimizer}, this FlipES has {optimizer}; build it with the "
            "optimizer the state was saved with to resume"
        )
    check_groups_fit(es, state["optimizer"])  # torch's optimizer load fails after the model's
    check_shaping_fits(es, state)
    if reasons := state_mismatches(state["model"], es._module.state_dict()):  # torch copies what fits, then raises
        # torch's layout (a header, a reason a line), which load_mismatch reads back into one line
        raise ValueError(
            f"Error(s) in loading state_dict for {type(es._module).__name__} (nothing was loaded; build the model the state "
            f"was saved from{_wrapper_hint(state['model'], es._module.state_dict())}):\n\t" + "\n\t".join(reasons)
        )
    if "shaping" in state:  # first: one of one's own that refuses its state leaves the rest unloaded
        es.shaping.load_state_dict(state["shaping"])
    es._module.load_state_dict(state["model"])
    es.optimizer.load_state_dict(state["optimizer"])
    es._placement = [(p.dtype, p.device) for p in es.params]  # torch cast the state to them
    if es.log_sigma is not None:
        es.log_sigma = state["log_sigma"].detach().to("cpu", torch.float64).clone()
    es.generation = generation
    mark_generation(es)  # what it loaded may carry no record (a state of an older flipes) or another one
    es._noise, es._freed, es._versions = None, None, None
    es._sigma_held = None  # a schedule's σ is read again at the next population, as its noise is drawn again
    es._ranks_agree = False  # compared at the next tell, on every rank even where only some loaded
    best = state.get("best") if es.track_best else None  # a run may start or stop keeping it on resume
    es.best = None if best is None else BestMember(best["fitness"], best["generation"], best["index"], best["state_dict"])


def _wrapper_hint(saved: Any, ours: dict[str, Any]) -> str:
    """Where the two models' keys differ by DDP's or DataParallel's ``module.`` prefix alone: which side was wrapped."""
    if not isinstance(saved, dict) or not saved or not ours:
        return ""
    keys, own = set(saved), set(ours)
    if {k.removeprefix("module.") for k in keys} == own and all(k.startswith("module.") for k in keys):
        return (
            "; its keys start with 'module.', as a DistributedDataParallel or DataParallel wrapper names them: build the "
            "FlipES on the model wrapped alike"
        )
    if keys == {k.removeprefix("module.") for k in own} and all(k.startswith("module.") for k in own):
        return (
            "; this model's keys start with 'module.' (a DistributedDataParallel or DataParallel wrapper) and the "
            "state's do not: build the FlipES on the unwrapped model (model.module), as it was saved"
        )
    return ""


def mark_generation(es: FlipES) -> None:
    """Make ``es.optimizer.state_dict()`` record ``es``'s seed and generation, as after a ``tell``, with no load of another
    generation pending (:func:`flipes.es.refusals.refuse_replayed_noise`): its state is the one ``es`` goes on from."""
    told = told_record(es.optimizer)
    told.seed, told.generation, told.loaded = es.seed, es.generation - 1, None
