"""``flipout(module)``: give every trainable parameter of any torch model a per-member perturbation.

Layers with a Flipout form (Linear and its subclasses that keep its forward, Conv1d/2d/3d, ConvTranspose1d/2d/3d,
Embedding, MultiheadAttention, LSTM/GRU/RNN and their cells, transformers' Conv1D) become Flipout layers sharing the
same Parameter objects. Every other trainable parameter is perturbed per member with dense noise
by the module that owns it (``flipes.nn.dense``), if that module has no Flipout layer below it.
Parameters with ``requires_grad=False`` stay frozen; anything else is an error naming it.

Here: the walk that converts a model (``flipout``) and finds what plain modules hold of it (``mean_reads``). Which
class a layer becomes is in :mod:`flipes.nn.flipout_classes`, what ``flipout`` refuses in :mod:`flipes.nn.refusals`,
the parameter report in :mod:`flipes.nn.report`, the watched aliases of replaced layers in :mod:`flipes.nn.watched`;
their names are importable from here too.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar, cast

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase  # BatchNorm and InstanceNorm: running statistics
from torch.nn.utils import parametrize

from flipes.nn.base import FlipoutMixin
from flipes.nn.compiled import uncompiled
from flipes.nn.dense import PerMember, needs_member_batches, to_per_member
from flipes.nn.embedding import check_embedding_supported
from flipes.nn.flipout_classes import _new_flipout_subclass, flipout_class  # noqa: F401 (a pickled subclass names it here)
from flipes.nn.recurrent import check_rnn_supported
from flipes.nn.refusals import (  # noqa: F401 (UNINITIALIZED, check_members_first: named from here, as before the split)
    UNINITIALIZED,
    _check_dense_recurrence,
    _check_inspectable,
    _check_shared_id_tables,
    _check_weight_hooks,
    _trainable,
    check_members_first,
    check_module,
    unhandled_message,
)
from flipes.nn.report import ParameterReport, ParameterRow, parameter_report
from flipes.nn.watched import (  # noqa: F401 (named from here, as before the split)
    NotingParameters,
    ReplacedParameters,
    noting_parameters,
    replaced_layer_message,
)


def _convert_layer(layer: nn.Module, cls: type[nn.Module], path: str = "") -> nn.Module:
    """A Flipout layer holding the very same Parameter objects (and hooks, flags) as ``layer``, the module
    ``path`` of the model (named in the error for an option without a Flipout form)."""
    try:
        if isinstance(layer, nn.RNNBase):
            check_rnn_supported(layer)
        if isinstance(layer, nn.Embedding):
            check_embedding_supported(layer)
    except ValueError as e:
        if not path:
            raise
        raise ValueError(f"flipout(): {path!r}: {e}") from None
    new = cls.__new__(cls)
    new.__dict__ = layer.__dict__.copy()  # same _parameters entries: the same Parameter objects
    for name in ("_parameters", "_buffers", "_modules"):
        setattr(new, name, dict(getattr(layer, name)))
    if isinstance(new, nn.RNNBase):
        new._init_flat_weights()  # its own list of (the same) weights for the fused kernel
    layer.__dict__["_parameters"] = ReplacedParameters(layer._parameters, new)  # the original, if still used somewhere
    return new


def training_dropout(module: nn.Module) -> list[str]:
    """The names of ``module``'s dropout modules in training mode with p > 0 ("" for the module itself): each adds
    noise of its own to every member's fitness, which ES reads as signal."""
    dropout = nn.modules.dropout._DropoutNd  # Dropout, Dropout1d/2d/3d, AlphaDropout, FeatureAlphaDropout
    return [name for name, m in uncompiled(module).named_modules() if isinstance(m, dropout) and m.p > 0 and m.training]


def dropout_fix(module: nn.Module, whole: str) -> str:
    """How to turn ``module``'s dropout off: ``whole`` (its ``model.eval()``), unless that would also switch a norm in
    training mode to its running statistics, which populations never update; then the dropout modules' own eval()."""
    modules = uncompiled(module).named_modules()
    norms = [(n, m) for n, m in modules if isinstance(m, _NormBase) and m.training and m.track_running_stats]
    if not norms:
        return whole
    name, norm = norms[0]
    kind = type(norm).__name__.removeprefix("PerMember")  # the user's class, not flipes' per-member subclass of it
    return (
        f"call eval() on the dropout modules alone ({name or 'the model'} ({kind}) in eval mode would normalize by "
        "running statistics, which populations never update)"
    )


def _convertible(layer: nn.Module, cross_tied: frozenset[int] = frozenset()) -> bool:
    """Whether a layer with a Flipout form becomes a Flipout layer: a frozen one stays as it is, and one with a
    parametrized submodule (MultiheadAttention's ``out_proj`` under ``parametrize``), whose Flipout form would read the
    computed weight as a plain tensor, gets dense noise on the parametrization's parameters instead; so does a layer in
    ``cross_tied`` (:func:`_cross_tied`)."""
    return (
        _trainable(layer)
        and id(layer) not in cross_tied
        and not any(parametrize.is_parametrized(m) for m in layer.modules() if m is not layer)
    )


def _cross_tied(model: nn.Module) -> frozenset[int]:
    """The transposed convs (their ids) whose weight a module of another kind or layout also holds, as an autoencoder's
    decoder tied to its encoder's Conv2d: one weight read as ``(in, out)`` by one layer and ``(out, in)`` by the other
    has no one Flipout noise (FlipES would refuse the tie), so the transposed conv keeps dense noise, which reads the
    tied weight's per-member values. A module without a Flipout form and without children (a ``Shift`` adding the
    kernel) is no conflict: it runs per member, reading each member's kernel in its stored shape."""
    transposed = nn.modules.conv._ConvTransposeNd
    holders: dict[int, set[tuple]] = {}
    for m in model.modules():
        if not isinstance(m, transposed) and flipout_class(type(m)) is None and not m._modules and not _no_forward(m):
            continue
        kind = (transposed, m.in_channels, m.out_channels, m.groups) if isinstance(m, transposed) else (type(m),)
        for p in m._parameters.values():
            if p is not None:
                holders.setdefault(id(p), set()).add(kind)
    # a parametrized kernel is no entry of _parameters (its ``weight`` is computed; it runs per member as a whole)
    kernels = ((m, m._parameters.get("weight")) for m in model.modules() if isinstance(m, transposed))
    return frozenset(id(m) for m, w in kernels if w is not None and len(holders[id(w)]) > 1)


M = TypeVar("M", bound=nn.Module)  # flipout returns the type it is given: a user model's own attributes stay typed


def flipout(module: M, frozen: Iterable[str] = ()) -> M:
    """Make every trainable parameter of ``module`` evolvable per member of an ES population.

    - Layers with a Flipout form become Flipout layers (``flipes.nn``): ``nn.Linear`` (and
      subclasses that keep its forward), ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d``, ``nn.Embedding``,
      ``nn.MultiheadAttention``, ``nn.LSTM``/``nn.GRU``/``nn.RNN`` and their cells, and
      ``transformers``' ``Conv1D`` (GPT-2).
    - A module that owns other trainable parameters (LayerNorm, RMSNorm, BatchNorm, a bare
      ``nn.Parameter``, a layer flipes has no Flipout form for) and has no Flipout layer below it
      is evaluated per member with dense noise on them (``flipes.nn.dense``).
    - Parameters with ``requires_grad=False`` stay frozen, and so do those named in ``frozen``
      (parameter names as in ``named_parameters()``, or module names for all their parameters):
      ``flipout`` sets their ``requires_grad`` to ``False``.

    The conversion is in place and returns ``module`` (or the new layer if ``module`` itself is a
    convertible layer, an instance of a subclass of its class: the result has ``module``'s type, to a
    type checker too). Converted layers share their ``Parameter`` objects with the originals, so
    optimizers, weight tying and state dicts keep working, and outside a population they compute
    exactly what the originals did. ``flipes.nn.parameter_report(model)`` lists what happens to
    every parameter. A tied parameter is one perturbation per member wherever a layer or module
    uses it; a Flipout layer's weight read directly by other code (``F.linear(x, layer.weight)``)
    is the mean weight there: call the layer instead (a population whose model reads the parameters of
    a layer it never calls raises, naming the layers to freeze).

    Raises:
        ValueError: a trainable parameter that cannot be perturbed per member (held directly by a
            module that also holds Flipout layers), an unknown name in ``frozen``, a model with no
            trainable parameter, or a layer option with no Flipout form (bidirectional or projected
            recurrent layers, ``Embedding(max_norm=...)``) on a trainable layer, or a trainable module with
            the hook-based ``torch.nn.utils.weight_norm`` / ``spectral_norm`` (use ``parametrizations``'s) or
            ``torch.nn.utils.prune`` (``prune.remove`` it first), or a trainable T5-style ``relative_attention_bias``
            (freeze it).
        TypeError: ``module`` is no ``nn.Module`` (a tensor: evolve ``flipes.nn.Vector(init)``), or an entry of
            ``frozen`` that is no name.
    """
    check_module(module, "flipout()")
    _freeze(uncompiled(module), frozen)  # torch.compile(net): net's names, as its state dict's
    _check_inspectable(uncompiled(module))  # after _freeze: a frozen TorchScript module is fine
    _check_weight_hooks(uncompiled(module))
    _check_shared_id_tables(uncompiled(module))
    cls = flipout_class(type(module))
    cross_tied = _cross_tied(uncompiled(module))
    if cls is not None and _convertible(module, cross_tied):
        module = cast(M, _convert_layer(module, cls))  # cls subclasses the layer's own class: still an M
    converted: dict[int, nn.Module] = {}  # a layer used twice (or aliased) becomes ONE Flipout layer
    if not _parametrized_layer(uncompiled(module)):
        _convert_children(module, converted, cross_tied)
    _unwatch_registered(uncompiled(module))
    _make_dense(module)
    for name, m in uncompiled(module).named_modules():  # for errors naming what frozen=[...] takes
        if isinstance(m, PerMember):
            m.__dict__["_flipes_path"] = name
    _check_dense_recurrence(uncompiled(module))
    unhandled = [row for row in parameter_report(module).rows if row.how == "unhandled"]
    if unhandled:
        raise ValueError(unhandled_message(unhandled))
    if not any(p.requires_grad for p in module.parameters()):
        raise ValueError(
            f"flipout(): {type(uncompiled(module)).__name__} has no trainable parameter to evolve; give it a layer with "
            "parameters (e.g. torch.nn.Linear), or set requires_grad=True on those to evolve"
        )
    return module


def _unwatch_registered(model: nn.Module) -> None:
    """Make a replaced layer's parameters a plain dict again where the layer is still one of the model's modules: a
    child of a Flipout layer, which reads it itself (``attn.out_proj``), that the model also registers under a name of
    its own (``self.proj = self.attn.out_proj``, converted there). Only one reached past the modules is watched."""
    for m in model.modules():
        if isinstance(m.__dict__.get("_parameters"), ReplacedParameters):
            m.__dict__["_parameters"] = dict(m.__dict__["_parameters"])


def _convert_children(parent: nn.Module, converted: dict[int, nn.Module], cross_tied: frozenset[int], prefix: str = "") -> None:
    if isinstance(parent, (FlipoutMixin, PerMember, torch.jit.ScriptModule)):  # its submodules are its own business
        return
    for name, child in list(parent._modules.items()):  # with repeats, unlike named_children()
        if child is None:
            continue
        if id(child) in converted:
            _replace(parent, name, converted[id(child)])
            continue
        cls = flipout_class(type(child))
        if cls is not None and _convertible(child, cross_tied):
            converted[id(child)] = _convert_layer(child, cls, prefix + name)
            _replace(parent, name, converted[id(child)])
        elif not _parametrized_layer(child):
            _convert_children(child, converted, cross_tied, f"{prefix}{name}.")


def _parametrized_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a layer with a Flipout form that ``parametrize`` made a class of its own (a
    MultiheadAttention whose ``in_proj_weight`` is parametrized): it runs per member as a whole, dense, and its forward
    reads its children's weights itself (``out_proj.weight``), so they stay plain layers too."""
    return parametrize.is_parametrized(module) and flipout_class(type(module).__bases__[0]) is not None


def _replace(parent: nn.Module, name: str, child: nn.Module) -> None:
    setattr(parent, name, child)
    if uncompiled(parent) is not parent:  # torch.compile(layer): its forward must call the new layer, not the old one
        rebuild = getattr(parent, "_initialize", None)  # torch's own (2.13 has it); else the wrapper would run the old layer
        if rebuild is None:
            raise ValueError(
                f"flipout: cannot convert the {type(child).__name__} inside torch.compile(...) with this torch "
                f"{torch.__version__}: its compiled forward would keep calling the old layer; convert first, "
                "torch.compile(flipes.flipout(model))"
            )
        rebuild()


def _has_flipout(module: nn.Module) -> bool:
    return any(isinstance(m, FlipoutMixin) for m in module.modules())


def _no_forward(module: nn.Module) -> bool:
    """Whether ``module`` has no forward of its own (``nn.ParameterList``/``ParameterDict``, a bare ``nn.Module``
    holding parameters): it is never called, so its parameters are read by the module above it."""
    return getattr(type(module), "forward", None) is nn.Module.forward  # a TorchScript class's raises: it has one


def _own_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """The trainable parameters ``module``'s own forward reads as plain tensors: those it holds, and those of its
    children without a forward (``self.scales = nn.ParameterList(...)``, read as ``self.scales[i]``) or that compute
    one of its parameters (``parametrize``'s lists, called when the forward reads ``self.weight``)."""
    return (p for _, p in _own_named_parameters(module))


def _own_named_parameters(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Parameter]]:
    """:func:`_own_parameters` with their names under ``prefix``."""
    yield from ((prefix + name, p) for name, p in module._parameters.items() if p is not None and p.requires_grad)
    for name, child in module._modules.items():
        if isinstance(child, parametrize.ParametrizationList):  # its parametrizations' own too (a LoRA's A and B)
            yield from ((f"{prefix}{name}.{n}", p) for n, p in child.named_parameters(remove_duplicate=False) if p.requires_grad)
        elif child is not None and _no_forward(child):
            yield from _own_named_parameters(child, f"{prefix}{name}.")


def _dense_owner(module: nn.Module) -> bool:
    """Whether ``module`` runs per member for itself: it reads trainable parameters in its own forward, or is a norm
    whose batch statistics must be each member's own; a module without a forward never (nothing calls it)."""
    owns = next(_own_parameters(module), None) is not None or needs_member_batches(module)
    return owns and not _no_forward(module)


def _make_dense(module: nn.Module) -> None:
    """Top-down: the first module on each path that owns a trainable parameter nobody perturbs
    (itself or through a child without a forward, such as a ``ParameterList``), and has no Flipout
    layer below it, becomes a ``PerMember`` module (for its subtree); so does a BatchNorm without one
    (its batch statistics must be each member's own). A module without a forward never becomes one:
    nothing calls it, so per-member parameters installed on it would never be read. The owners below it
    become ``PerMember`` modules too: inside its per-member forward they run as their plain class, and
    called from elsewhere (``self.block.norm(x)``, or a module shared with another part of the model)
    they run per member themselves."""
    if isinstance(module, (FlipoutMixin, PerMember, torch.jit.ScriptModule)):  # a TorchScript one is frozen: runs as it is
        return
    if _dense_owner(module) and not _has_flipout(module):
        for m in module.modules():  # and each owner below: one may also be called from outside this forward
            if m is module or (_dense_owner(m) and type(m).__module__ != "torch.nn.utils.parametrize"):
                to_per_member(m)
        return
    for child in module._modules.values():
        if child is not None:
            _make_dense(child)


def _freeze(module: nn.Module, names: Iterable[str]) -> None:
    names = [names] if isinstance(names, str) else list(names)
    params = dict(module.named_parameters(remove_duplicate=False))
    modules = {name for name, _ in module.named_modules(remove_duplicate=False) if name}
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"flipout(frozen=...): names of parameters or modules, got {type(name).__name__}")
        hits = [p for pname, p in params.items() if pname == name or pname.startswith(name + ".")]
        if not hits:
            close = difflib.get_close_matches(name, [*params, *modules], n=3)
            top = [n for n in module._modules if module._modules[n] is not None][:8]  # where a name starts
            pattern = any(c in name for c in "*?[")
            matching, kind = [n for n in modules if pattern and fnmatch.fnmatchcase(n, name)], "modules"
            if pattern and not matching:  # a pattern for parameters ("*.bias"): their list
                matching, kind = [n for n in params if fnmatch.fnmatchcase(n, name)], "parameters"
            if matching:  # a pattern for many layers (every block's attention): names are exact, so list the matches
                hint = (
                    f"; names are exact, not patterns: list the {len(matching)} {kind} it matches, frozen=[n for n, _ "
                    f"in model.named_{kind}() if fnmatch.fnmatch(n, {name!r})], or call requires_grad_(False) on "
                    "what stays fixed before flipout"
                )
            elif close:
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?"
            elif top:
                hint = f"; names are those of named_parameters() or named_modules(), e.g. {', '.join(map(repr, top))}"
            else:
                hint = f"; its parameters are {', '.join(map(repr, list(params)[:8]))}"
            raise ValueError(f"flipout(frozen=...): {name!r} is no parameter or module of {type(module).__name__}{hint}")
        for p in hits:
            p.requires_grad_(False)


def flipout_layers(module: nn.Module) -> list[FlipoutMixin]:
    """The Flipout layers of ``module`` in ``module.modules()`` order (the order keys noise)."""
    return [m for m in module.modules() if isinstance(m, FlipoutMixin)]


def per_member_modules(module: nn.Module) -> list[nn.Module]:
    """The ``PerMember`` (dense-noise) modules of ``module`` in ``module.modules()`` order."""
    return [m for m in module.modules() if isinstance(m, PerMember)]


@dataclass(frozen=True)
class MeanRead:
    """A trainable parameter that a module running as plain torch holds (itself, or in a container without a forward,
    ``owner._parameters[key]``) although a Flipout layer or a per-member module evolves it under another name
    (``self.shift = self.fc.bias``): where that module's forward reads it, every member reads the mean."""

    name: str  # as the plain module holds it
    holder: str  # the plain module's type
    also: tuple[str, ...]  # its other names
    owner: nn.Module
    key: str


def mean_reads(model: nn.Module) -> list[MeanRead]:
    """Each evolved parameter a module that runs as plain torch holds (:class:`MeanRead`). Holding is no error (BERT's
    prediction head holds its decoder's bias and never reads it); FlipES refuses a read in a population. Not inside a
    Flipout layer (its submodules, such as attention's ``out_proj``, are read through it) nor a per-member module (which
    swaps its members' values in for all its parameters)."""
    model = uncompiled(model)
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    evolved = {id(p) for m in model.modules() if isinstance(m, FlipoutMixin | PerMember) for p in m.parameters()}
    found: list[MeanRead] = []

    def walk(module: nn.Module, prefix: str) -> None:
        if isinstance(module, FlipoutMixin | PerMember):
            return
        if not _no_forward(module):
            for held, p in _own_named_parameters(module, prefix):
                if id(p) in evolved:
                    path, _, key = held[len(prefix) :].rpartition(".")
                    owner = module.get_submodule(path) if path else module
                    found.append(MeanRead(held, type(module).__name__, tuple(n for n in names[id(p)] if n != held), owner, key))
        for name, child in module._modules.items():
            if child is not None:
                walk(child, f"{prefix}{name}.")

    walk(model, "")
    return found


def mean_reads_message(reads: list[MeanRead]) -> str:
    shown = ", ".join(f"{r.name} (held by {r.holder}, also {', '.join(r.also)})" for r in reads[:5])
    return (
        f"FlipES: the model read {len(reads)} evolved parameter(s) through a module that runs as plain torch: "
        f"{shown}{', ...' if len(reads) > 5 else ''}. There every member read the mean value, while the layer that owns "
        "it uses each member's own (one parameter, two values per member). Read it through the layer that owns it, or "
        "move the code that reads it into a small submodule of its own holding it (flipes then evaluates that per "
        f"member, with the same perturbation); or freeze it: flipes.flipout(model, frozen={[r.name for r in reads]!r})"
    )


__all__ = ["ParameterReport", "ParameterRow", "flipout", "flipout_layers", "parameter_report", "per_member_modules"]
