"""What a population refuses: a model that ran the mean network where the members were meant to run.

Each of these would otherwise go unseen, every member evaluating the same mean weights (or the told generation's
noise) and the ES gradient being noise: a Flipout layer's or per-member module's parameters read directly instead of
calling it, an evolved parameter read through a plain module that also holds it, a plain layer that ``flipes.flipout``
replaced still being called, and a forward after ``tell`` inside the same ``with es.population()``. So is a population
of a FlipES whose model a newer FlipES owns, or one nested inside another.

Outside a population, a step of ``es.optimizer`` other than ``tell``'s while the parameters' ``.grad`` is still the one
``tell`` wrote (the ``optimizer.step()`` of a training loop or framework) is refused: it would apply that gradient twice;
not once a backward has added a gradient to a ``.grad`` zeroed in place since (a backprop step of one's own).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from flipes.nn.convert import mean_reads_message, replaced_layer_message
from flipes.noise import compiling

if TYPE_CHECKING:
    from flipes.es.engine import FlipES


def refuse_older_owner(es: FlipES) -> None:
    """Raise at ``population()`` of a FlipES whose model's layers a newer FlipES owns (both would perturb them)."""
    owners = {
        id(o)
        for o in (m.__dict__.get("_flipes_owner", lambda: None)() for m in [*es.layers, *es.dense_modules])
        if o is not None and o is not es
    }
    if owners:
        raise RuntimeError(
            "population() of a FlipES whose model has a newer FlipES: one FlipES per model (two would each "
            "perturb the same layers); use the newer one, or make a new FlipES after `del`-ing the other"
        )


def refuse_nested(es: FlipES) -> None:
    """Raise at ``population()`` where the model's layers already evaluate a population (a nested one)."""
    busy = [m for m in es.layers if m.noise is not None] + [m for m in es.dense_modules if m.member_noise is not None]
    if busy:
        raise RuntimeError(
            f"population() inside a population: {len(busy)} layer(s) of this model are already evaluating one "
            "(a nested es.population(), or another FlipES on the same layers); leave the outer `with` first"
        )


def refuse_load_in_population(es: FlipES) -> None:
    """Raise at ``load_state_dict`` inside ``with es.population()``: the members being evaluated are of the generation
    the block began, so the loaded generation's ``tell`` would find no population of its own (a notebook cell rolled
    back while another is still in its block). Nothing has changed then. Asked of the block itself, not of the noise
    installed: with ``hold_noise=False`` none is until the block's first forward."""
    if es._inside is not None:
        raise RuntimeError(
            f"load_state_dict() inside `with es.population()`: the members being evaluated are generation "
            f"{es.generation}'s; leave the `with` block first (load before population() or after tell())"
        )


def read_watched(es: FlipES) -> list[nn.Module]:
    """The modules whose parameter reads by other code are noted in a population until their first call: the Flipout
    layers, and the per-member modules holding parameters of their own (a norm, a ``flipes.nn.Vector``)."""
    dense = [m for m in es.dense_modules if any(p is not None and p.requires_grad for p in m._parameters.values())]
    return [*es.layers, *dense]


def note_direct_reads(es: FlipES, ran: Callable[[nn.Module, Any], None]) -> list[torch.utils.hooks.RemovableHandle]:
    """Start noting each watched module's parameter reads (:func:`read_watched`), and return the hooks, to remove at the
    end, that end it at the module's first call: from the population's start until then, reads by other code than the
    module's own methods are noted (``flipes.nn.reads.NotesReads``; not while compiling) for ``refuse_direct_reads``.
    The hook calls ``ran`` (the population's note that the model ran) first: one hook per layer, not two."""
    watched = read_watched(es)
    for layer in watched:
        layer.__dict__["_flipes_reads"] = set()
    handles: dict[int, torch.utils.hooks.RemovableHandle] = {}

    def called(layer: nn.Module, args: Any) -> None:
        if not compiling() and id(layer) not in handles:  # the plain layer flipout() replaced (it shares its hooks)
            raise replaced_layer_error(es, layer)
        ran(layer, args)
        if not compiling():  # a graph being compiled notes no reads, and Dynamo would guard on the key: 2 graphs
            layer.__dict__.pop("_flipes_reads", None)
            handles[id(layer)].remove()  # gone after its first call: a module with hooks runs torch's slower call path

    called.flipes_population = True  # type: ignore[attr-defined]  # left out of copies (flipes.nn.dense.without_owner)
    handles.update((id(layer), layer.register_forward_pre_hook(called)) for layer in watched)
    return list(handles.values())


def replaced_layer_error(es: FlipES, layer: nn.Module) -> ValueError:
    """The error for a call of a plain layer that ``flipes.flipout`` replaced by a Flipout layer (its hooks are the
    Flipout layer's): the model reaches it other than through its modules, where every member runs its mean."""
    name = next((n for n, m in es._module.named_modules() if m._forward_pre_hooks is layer._forward_pre_hooks), "?")
    return ValueError(replaced_layer_message(type(layer).__name__, name))


def refuse_direct_reads(es: FlipES) -> None:
    """Raise where the model read an evolved parameter of a Flipout layer or a per-member module it never called
    (``x @ layer.weight``, ``self.log_std.value`` of a ``flipes.nn.Vector``, or a function given the module): every
    member ran its mean, not its own, and nothing else would show it. Not where no such module ran at all: members built
    from the noise by hand read every weight so (``tell`` warns where a fitness came from no member)."""
    watched = read_watched(es)
    called = [layer for layer in watched if "_flipes_reads" not in layer.__dict__]
    if not called:
        return
    used = {id(p) for layer in called for p in layer._parameters.values()}  # a tied one: perturbed where called
    read = {
        id(layer)
        for layer in watched
        for p in map(layer._parameters.get, layer.__dict__.get("_flipes_reads", ()))  # the block's end clears them
        if p is not None and p.requires_grad and id(p) not in used  # None: no bias, read as `layer.bias is None`
    }
    if not read:
        return
    names = [name for name, m in es._module.named_modules() if id(m) in read]
    raise ValueError(
        f"FlipES: the model read the parameters of {len(names)} evolved layer(s) directly and never called them "
        f"({', '.join(map(repr, names[:4]))}{', ...' if len(names) > 4 else ''}), as x @ layer.weight, vec.value of a "
        "flipes.nn.Vector or a function given the layer: every member ran their mean weights, not its own; freeze them, "
        f"flipes.flipout(model, frozen={names!r}), or call the layers instead (a Vector as vec() or vec(like))"
    )


def refuse_mean_reads(es: FlipES) -> None:
    """Raise where a module that runs as plain torch read a parameter it holds that a layer evolves (``x +
    self.shift`` with ``self.shift = self.fc.bias``): every member read the mean there, and nothing else would show it."""
    read = [r for r in es._mean_reads if r.key in (r.owner._parameters.reads or ())]
    if read:
        raise ValueError(mean_reads_message(read))


def refuse_stale(es: FlipES) -> None:
    """After a tell() inside ``with es.population()``, a forward in the same block would run the told
    generation's noise around the new mean: make it an error until the block ends."""
    if es._inside is None:
        return
    told = es.generation - 1

    def stale(module: nn.Module, args: Any) -> None:
        raise RuntimeError(
            f"{type(module).__name__}: a forward after tell() inside the same `with es.population()`: its members are "
            f"generation {told}'s noise around the mean tell() moved; end the block after tell(), and evaluate "
            f"generation {told + 1} in a new `with es.population()`"
        )

    stale.flipes_population = True  # type: ignore[attr-defined]  # left out of copies
    es._stale_hooks = [m.register_forward_pre_hook(stale) for m in es._inside]


@dataclass
class Told:
    """What the last ``tell`` that stepped an optimizer left in the parameters' ``.grad`` (kept on the optimizer, which a
    restart's FlipES may take over), whether ``tell`` itself is stepping it now, and the run (seed) and generation its
    state belongs to, as its ``state_dict()`` records them under ``"flipes"`` (:func:`note_loaded` reads them back).
    ``backprop``: the parameters (by id) where a backward has added a gradient of one's own to a ``.grad`` of tell's that
    was zeroed in place (``zero_grad(set_to_none=False)``) since: a step with every ``.grad`` of tell's among them is a
    backprop step of one's own, not tell's a second time (one zeroed layer does not clear another's ``-ĝ``)."""

    generation: int = -1  # the last generation told: the state is ready for generation + 1
    stepping: bool = False
    seed: int | None = None
    loaded: tuple[int, int] | None = None  # (seed, generation) of a state dict loaded since, until a population checks it
    backprop: set[int] = field(default_factory=set)
    _grads: list[tuple[nn.Parameter, weakref.ref[torch.Tensor]]] = field(default_factory=list, repr=False)
    _by_param: dict[int, weakref.ref[torch.Tensor]] = field(default_factory=dict, repr=False)  # _grads by id(parameter)
    _watched: dict[int, weakref.ref[nn.Parameter]] = field(default_factory=dict, repr=False)  # with watch_backward's hook

    @property
    def grads(self) -> list[tuple[nn.Parameter, weakref.ref[torch.Tensor]]]:
        """Each parameter ``tell`` stepped with, and (weakly) the ``.grad`` tensor it left there."""
        return self._grads

    @grads.setter
    def grads(self, grads: list[tuple[nn.Parameter, weakref.ref[torch.Tensor]]]) -> None:
        self._grads, self._by_param, self.backprop = grads, {id(p): ref for p, ref in grads}, set()
        for p, _ in grads:
            if (seen := self._watched.get(id(p))) is None or seen() is not p:
                watch_backward(self, p)


def watch_backward(told: Told, p: nn.Parameter) -> None:
    """Note in ``told.backprop`` a backward reaching ``p`` while its ``.grad`` is tell's, zeroed in place: the hook runs
    before autograd adds to ``.grad``. Once per parameter and record; it reads ``.grad`` only until the first such
    backward after each tell (a loop of ES alone runs none), and is removed when ``told`` is gone."""
    told_ref, p_ref = weakref.ref(told), weakref.ref(p)

    @torch.utils.hooks.unserializable_hook  # a pickled model (torch.save of the module) drops it without a warning
    def before_accumulation(grad: torch.Tensor) -> None:
        record, param = told_ref(), p_ref()
        if record is None or param is None or id(param) in record.backprop or record.stepping:
            return
        held, ref = param.grad, record._by_param.get(id(param))
        if held is not None and ref is not None and ref() is held and not held.any():
            record.backprop.add(id(param))

    try:
        handle = p.register_hook(before_accumulation)
    except RuntimeError:  # a parameter that requires no grad: no backward reaches it
        return
    told._watched[id(p)] = p_ref
    # removed with the record (its FlipES's optimizer gone): a model told by FlipES after FlipES keeps no hook per one
    weakref.finalize(told, handle.remove)


def told_record(optimizer: torch.optim.Optimizer) -> Told:
    """``optimizer``'s :class:`Told`, made with its hooks the first time (:func:`refuse_second_step`, :func:`mark_state`,
    :func:`note_loaded`): a copy or an unpickled optimizer (torch keeps no hooks across either) gets them again at its
    FlipES's first ``tell``."""
    told = optimizer.__dict__.get("_flipes_told")
    if not isinstance(told, Told):
        told = optimizer.__dict__["_flipes_told"] = Told()
        optimizer.register_step_pre_hook(refuse_second_step)
        optimizer.register_state_dict_post_hook(mark_state)
        optimizer.register_load_state_dict_pre_hook(note_loaded)
    return told


def mark_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """Add to ``optimizer.state_dict()`` the seed and generation its state is ready for (torch's load ignores the key):
    what a framework's checkpoint of the optimizer alone (Lightning's, the ``Trainer``'s) carries back."""
    told = optimizer.__dict__.get("_flipes_told")
    if isinstance(told, Told) and told.seed is not None:
        state["flipes"] = {"seed": told.seed, "generation": told.generation + 1}
    return state


def note_loaded(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Note the seed and generation of a state dict loaded into ``optimizer`` (:func:`mark_state`'s), for the next
    ``population()`` to compare with its FlipES's (:func:`refuse_replayed_noise`); none where it carries none."""
    told = optimizer.__dict__.get("_flipes_told")
    mark = state.get("flipes") if isinstance(state, dict) else None
    if not isinstance(told, Told):
        return
    if isinstance(mark, dict) and isinstance(mark.get("seed"), int) and isinstance(mark.get("generation"), int):
        told.loaded = (mark["seed"], mark["generation"])
        told.seed, told.generation = mark["seed"], mark["generation"] - 1
    else:
        told.loaded = None


def refuse_replayed_noise(es: FlipES) -> None:
    """Raise at ``population()`` where ``es.optimizer`` was loaded with the state of another generation of a run of this
    seed (a framework's checkpoint of the model and optimizer, without ``es.state_dict()``): the FlipES would draw its
    own generation's noise, which that run already stepped with, again."""
    told = es.optimizer.__dict__.get("_flipes_told")
    if not isinstance(told, Told) or told.loaded is None:
        return
    seed, generation = told.loaded
    if seed == es.seed and generation != es.generation:
        raise RuntimeError(
            f"es.optimizer was loaded with the state of generation {generation} of a run of seed {seed}, and this FlipES "
            f"is at generation {es.generation}: it would step with noise that run already used; save es.state_dict() "
            "with your checkpoint and resume with es.load_state_dict(it) (it loads the model and optimizer too; "
            "Lightning: in on_save_checkpoint / on_load_checkpoint), or give a restart a new seed"
        )
    told.loaded = None


def refuse_second_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Raise at a step of a FlipES's optimizer other than ``tell``'s while a parameter's ``.grad`` is still the ``-ĝ``
    that ``tell`` wrote and stepped with (changed in place or not: a clip, ``zero_grad(set_to_none=False)``): the
    ``optimizer.step()`` of a manual-optimization Lightning module, of Hugging Face's ``Trainer`` given ``es.optimizer``,
    or of a loop written for backprop would take a second step from it (momentum's too), silently. Not once a backward
    added a gradient of one's own to a ``.grad`` zeroed in place since (``Told.backprop``): a backprop step after ES's."""
    told = optimizer.__dict__.get("_flipes_told")
    if not isinstance(told, Told) or told.stepping:
        return
    if any((g := ref()) is not None and p.grad is g and id(p) not in told.backprop for p, ref in told.grads):
        raise RuntimeError(
            f"{type(optimizer).__name__}.step() after es.tell(): tell already stepped es.optimizer with generation "
            f"{told.generation}'s gradient, which is still in .grad, so this step would apply it twice; remove the "
            "optimizer.step() (and any clip_grad_norm_ or accumulation around it), or, where a framework steps after "
            "your training_step (Hugging Face's Trainer), call "
            "model.zero_grad(set_to_none=True) after tell: its step then has no gradient to apply"
        )
