"""``flipout(module)``: give every trainable parameter of any torch model a per-member perturbation.

Layers with a Flipout form (Linear and its subclasses that keep its forward, Conv1d/2d/3d,
Embedding, MultiheadAttention, LSTM/GRU/RNN and their cells, transformers' Conv1D) become Flipout layers sharing the
same Parameter objects. Every other trainable parameter is perturbed per member with dense noise
by the module that owns it (``flipes.nn.dense``), if that module has no Flipout layer below it.
Parameters with ``requires_grad=False`` stay frozen; anything else is an error naming it.
"""

from __future__ import annotations

import difflib
import functools
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from flipes.nn.attention import FlipoutMultiheadAttention
from flipes.nn.base import FlipoutMixin
from flipes.nn.conv import FlipoutConv1d, FlipoutConv2d, FlipoutConv3d
from flipes.nn.dense import PerMember, needs_member_batches, to_per_member
from flipes.nn.embedding import FlipoutEmbedding, check_embedding_supported
from flipes.nn.linear import FlipoutConv1D, FlipoutLinear
from flipes.nn.recurrent import (
    FlipoutGRU,
    FlipoutGRUCell,
    FlipoutLSTM,
    FlipoutLSTMCell,
    FlipoutRNN,
    FlipoutRNNCell,
    check_rnn_supported,
)
from flipes.noise import compiling

_FLIPOUT_OF: MappingProxyType[type[nn.Module], type[nn.Module]] = MappingProxyType(
    {
        nn.Linear: FlipoutLinear,
        nn.Conv1d: FlipoutConv1d,
        nn.Conv2d: FlipoutConv2d,
        nn.Conv3d: FlipoutConv3d,
        nn.Embedding: FlipoutEmbedding,
        nn.MultiheadAttention: FlipoutMultiheadAttention,
        nn.LSTM: FlipoutLSTM,
        nn.GRU: FlipoutGRU,
        nn.RNN: FlipoutRNN,
        nn.LSTMCell: FlipoutLSTMCell,
        nn.GRUCell: FlipoutGRUCell,
        nn.RNNCell: FlipoutRNNCell,
    }
)


@functools.cache  # one Flipout subclass per user subclass
def _flipout_subclass(flip: type[nn.Module], cls: type[nn.Module]) -> type[nn.Module]:
    def reduce(self: nn.Module, protocol: int) -> tuple:  # made at runtime: pickle how to make it again
        return _new_flipout_subclass, (flip, cls), self.__getstate__()

    return type(f"Flipout{cls.__name__}", (flip, cls), {"__module__": cls.__module__, "__reduce_ex__": reduce})


def _new_flipout_subclass(flip: type[nn.Module], cls: type[nn.Module]) -> nn.Module:
    new = _flipout_subclass(flip, cls)
    return new.__new__(new)


def flipout_class(cls: type[nn.Module]) -> type[nn.Module] | None:
    """The Flipout class for layers of type ``cls``, or ``None``. A subclass of a supported layer
    that keeps its parent's ``forward`` (e.g. attention's ``NonDynamicallyQuantizableLinear``)
    computes what the parent does, so it gets a Flipout subclass of itself; one with its own
    forward (or a conv with its own ``_conv_forward``) does not (flipes cannot know what it computes),
    nor does a parametrized layer (``torch.nn.utils.parametrize``: its weight is computed); those get
    dense per-member noise."""
    if cls in _FLIPOUT_OF:
        return _FLIPOUT_OF[cls]
    if issubclass(cls, (FlipoutMixin, PerMember)) or cls.__module__ == "torch.nn.utils.parametrize":
        return None
    if cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers."):  # GPT-2's (in, out) linear
        return _flipout_subclass(FlipoutConv1D, cls)
    for base, flip in _FLIPOUT_OF.items():
        if issubclass(cls, base) and all(getattr(cls, m, None) is getattr(base, m, None) for m in _COMPUTED_BY):
            return _flipout_subclass(flip, cls)
    return None


# what a supported layer's forward computes through: a subclass overriding any (a weight-standardized conv's
# _conv_forward) computes something a Flipout forward would not
_COMPUTED_BY = ("forward", "_conv_forward")


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


class ReplacedParameters(dict):
    """The ``_parameters`` of a layer that ``flipout`` replaced by a Flipout layer holding the same Parameter objects:
    the original reading one while that Flipout layer's FlipES evaluates a population is an error, as it would run the
    mean for every member (reached past the model's modules: a plain list, a bound ``layer.forward``, a reference kept
    from before). Outside a population it is the plain dict it was."""

    def __init__(self, params: dict[str, nn.Parameter | None], replacement: nn.Module) -> None:
        super().__init__(params)
        self.replacement = weakref.ref(replacement)

    def __getitem__(self, key: str) -> nn.Parameter | None:
        new = self.replacement()
        owner = None if new is None else new.__dict__.get("_flipes_owner")
        es = None if owner is None else owner()
        param = super().__getitem__(key)
        if es is not None and es._inside is not None and param is not None and not compiling():

            def refuse() -> None:
                if es._inside is None:  # an alias kept past the population's end
                    return
                name = next((n for n, m in es._module.named_modules() if m is new), "?")
                raise ValueError(replaced_layer_message(_plain_name(new), name))

            return _Watched.of(param, refuse)  # its dtype, device and shape are no use of the mean (x.to(w.dtype))
        return param

    def __reduce_ex__(self, protocol: object) -> tuple:  # a copy of the original is a plain layer
        return dict, (dict(self),)


# what a tensor's metadata reads are named in __torch_function__ (a getter's func is its descriptor's __get__)
_METADATA = frozenset(
    {"dtype", "device", "shape", "size", "dim", "ndim", "ndimension", "numel", "nelement", "__len__", "layout",
     "requires_grad", "is_leaf", "is_cuda", "is_cpu", "is_meta", "is_sparse", "is_quantized", "is_floating_point",
     "is_complex", "is_contiguous", "get_device", "element_size", "itemsize", "nbytes", "stride", "names", "grad_fn",
     # new tensors shaped, typed and placed as it (an initial state): they read no value either
     "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like", "new_zeros",
     "new_ones", "new_empty", "new_full"}
)  # fmt: skip
_CAST_AS = frozenset({"to", "type_as"})  # x.to(w), x.type_as(w): x gives its value, w only its dtype and device


class _Watched(torch.Tensor):
    """An alias of a parameter that a module must not read the value of inside a population (a watched key of
    :class:`NotingParameters`, or any of a :class:`ReplacedParameters`): reading its metadata (``w.dtype``,
    ``w.device``, ``w.shape``) is fine, any other use calls ``on_value`` (which notes it, or raises) first."""

    _flipes_on_value: Callable[[], None]

    @staticmethod
    def of(param: torch.Tensor, on_value: Callable[[], None]) -> _Watched:
        alias = param.as_subclass(_Watched)  # the same storage, and still in the autograd graph
        if param.requires_grad and not alias.requires_grad:  # made under no_grad: its flag is the parameter's still
            alias.requires_grad_(True)
        alias._flipes_on_value = on_value
        return alias

    @classmethod
    def __torch_function__(cls, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> object:
        name = getattr(func, "__name__", "")
        name = getattr(func.__self__, "__name__", name) if name == "__get__" else name
        if name not in _METADATA:
            for a in args[:1] if name in _CAST_AS else (*args, *(kwargs or {}).values()):
                for t in a if isinstance(a, (list, tuple)) else (a,):
                    if isinstance(t, _Watched):
                        t._flipes_on_value()
        with torch._C.DisableTorchFunctionSubclass():  # results are plain tensors
            return func(*args, **(kwargs or {}))


def _plain_name(layer: nn.Module) -> str:
    """The name of the torch class a Flipout layer was made from (``Linear`` for ``FlipoutLinear``)."""
    return next(k.__name__ for k in type(layer).__mro__ if not issubclass(k, FlipoutMixin) and issubclass(k, nn.Module))


def replaced_layer_message(plain: str, name: str) -> str:
    return (
        f"FlipES: the model used the plain {plain} that flipes.flipout replaced by the Flipout layer {name!r} (they hold "
        "the same parameters): it reaches the original other than through its registered modules (a plain Python list, "
        "tuple or dict, a bound method such as layer.forward, or a reference kept from before flipout), so every member "
        "would run its mean weights; hold such layers in an nn.ModuleList / nn.ModuleDict (or call them through the "
        "model), so that flipout replaces them there too"
    )


def uncompiled(module: nn.Module) -> nn.Module:
    """The module ``torch.compile(module)`` wraps (its ``_orig_mod``), else ``module``: its parameter
    names and state dict are the model's own, without the wrapper's ``_orig_mod.`` prefix."""
    inner = getattr(module, "_orig_mod", None)
    # by name: importing torch._dynamo for its class costs ~1.3 s, and this runs for every model
    return inner if isinstance(inner, nn.Module) and type(module).__name__ == "OptimizedModule" else module


def training_dropout(module: nn.Module) -> list[str]:
    """The names of ``module``'s dropout modules in training mode with p > 0 ("" for the module itself): each adds
    noise of its own to every member's fitness, which ES reads as signal."""
    dropout = nn.modules.dropout._DropoutNd  # Dropout, Dropout1d/2d/3d, AlphaDropout, FeatureAlphaDropout
    return [name for name, m in uncompiled(module).named_modules() if isinstance(m, dropout) and m.p > 0 and m.training]


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _convertible(layer: nn.Module) -> bool:
    """Whether a layer with a Flipout form becomes a Flipout layer: a frozen one stays as it is, and one with a
    parametrized submodule (MultiheadAttention's ``out_proj`` under ``parametrize``), whose Flipout form would read the
    computed weight as a plain tensor, gets dense noise on the parametrization's parameters instead."""
    return _trainable(layer) and not any(parametrize.is_parametrized(m) for m in layer.modules() if m is not layer)


def check_module(obj: object, where: str) -> None:
    """Raise a TypeError naming what ``where`` takes when ``obj`` is no ``nn.Module`` (a function, a tensor)."""
    if isinstance(obj, nn.Module):
        return
    got = f"a {type(obj).__name__}" if not isinstance(obj, torch.Tensor) else f"a Tensor of shape {tuple(obj.shape)}"
    raise TypeError(
        f"{where} takes a torch.nn.Module, got {got}; to search over a plain tensor, evolve "
        "flipes.flipout(flipes.nn.Vector(init)) and compute f(x()) in your fitness (README: Black-box search over a vector)"
    )


def flipout(module: nn.Module, frozen: Iterable[str] = ()) -> nn.Module:
    """Make every trainable parameter of ``module`` evolvable per member of an ES population.

    - Layers with a Flipout form become Flipout layers (``flipes.nn``): ``nn.Linear`` (and
      subclasses that keep its forward), ``nn.Conv1d/2d/3d``, ``nn.Embedding``,
      ``nn.MultiheadAttention``, ``nn.LSTM``/``nn.GRU``/``nn.RNN`` and their cells, and
      ``transformers``' ``Conv1D`` (GPT-2).
    - A module that owns other trainable parameters (LayerNorm, RMSNorm, BatchNorm, a bare
      ``nn.Parameter``, a layer flipes has no Flipout form for) and has no Flipout layer below it
      is evaluated per member with dense noise on them (``flipes.nn.dense``).
    - Parameters with ``requires_grad=False`` stay frozen, and so do those named in ``frozen``
      (parameter names as in ``named_parameters()``, or module names for all their parameters):
      ``flipout`` sets their ``requires_grad`` to ``False``.

    The conversion is in place and returns ``module`` (or the new layer if ``module`` itself is a
    convertible layer). Converted layers share their ``Parameter`` objects with the originals, so
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
    """
    check_module(module, "flipout()")
    _freeze(uncompiled(module), frozen)  # torch.compile(net): net's names, as its state dict's
    _check_inspectable(uncompiled(module))  # after _freeze: a frozen TorchScript module is fine
    _check_weight_hooks(uncompiled(module))
    _check_shared_id_tables(uncompiled(module))
    cls = flipout_class(type(module))
    if cls is not None and _convertible(module):
        module = _convert_layer(module, cls)
    converted: dict[int, nn.Module] = {}  # a layer used twice (or aliased) becomes ONE Flipout layer
    _convert_children(module, converted)
    _unwatch_registered(uncompiled(module))
    _make_dense(module)
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


UNINITIALIZED = (
    "is not initialized yet (an UninitializedParameter or buffer: no shape until the module's first call); run the model "
    "once on an example input before flipes.flipout(model)"
)


def _uninitialized(m: nn.Module) -> str:
    """The name of a lazy (shapeless) parameter or buffer ``m`` holds itself, else ""."""
    lazy = [n for n, t in [*m._parameters.items(), *m._buffers.items()] if isinstance(t, nn.parameter.UninitializedTensorMixin)]
    return repr(lazy[0]) if lazy else ""


def _check_inspectable(model: nn.Module) -> None:
    """Refuse what flipout cannot see into: a lazy module not initialized yet (its parameters have no shape, and its
    first call turns it into its plain class, past any conversion) and a trainable TorchScript module (its compiled
    forward, which flipes cannot convert, would run the mean parameters for every member)."""
    for name, m in model.named_modules():
        where = f"{name!r} ({type(m).__name__})" if name else f"the model ({type(m).__name__})"
        if isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params():
            raise ValueError(
                f"flipout(): {where} is not initialized yet: its parameters get their shapes at its first call, which "
                "also turns it into its plain class; run the model once on an example input before flipes.flipout(model)"
            )
        lazy = _uninitialized(m)
        if lazy:  # a module of one's own holding torch.nn.UninitializedParameter
            raise ValueError(f"flipout(): {where}'s {lazy} {UNINITIALIZED}")
        if isinstance(m, torch.jit.ScriptModule) and _trainable(m):
            freeze = f", or freeze it: flipes.flipout(model, frozen=[{name!r}])" if name else ""
            raise ValueError(
                f"flipout(): {where} is a TorchScript module (torch.jit.script / torch.jit.trace): flipes cannot convert "
                "its compiled forward, which would run the mean parameters for every member; give flipes.flipout the "
                f"Python module it was made from (torch.compile works on the converted model){freeze}"
            )


# torch.nn.utils' old hook-based reparametrizations: a forward pre-hook sets the weight from other parameters
_WEIGHT_HOOKS = MappingProxyType({"WeightNorm": "weight_norm", "SpectralNorm": "spectral_norm"})


def _check_weight_hooks(model: nn.Module) -> None:
    """Refuse trainable modules with ``torch.nn.utils.weight_norm`` / ``spectral_norm`` / ``prune`` applied: their hook
    computes the weight from the mean parameters before the forward, so every member would run the mean weight (a Flipout
    layer would perturb a stale copy of it) while ``tell`` writes an ES gradient for parameters no member used."""
    for name, m in model.named_modules():
        for hook in m._forward_pre_hooks.values():
            where = repr(name) if name else "the model"
            freeze = f"flipes.flipout(model, frozen=[{name!r}])" if name else "model.requires_grad_(False)"
            if isinstance(hook, prune.BasePruningMethod) and _trainable(m):
                raise ValueError(
                    f"flipout(): {where} ({type(m).__name__}) has torch.nn.utils.prune applied: its hook computes "
                    f"{hook._tensor_name!r} from the mean {hook._tensor_name + '_orig'!r} and the mask before each call, so "
                    f"no member would run its own; make the pruning permanent first, torch.nn.utils.prune.remove(module, "
                    f"{hook._tensor_name!r}) (the pruned entries are then evolved too), or freeze it: {freeze}"
                )
            fn = _WEIGHT_HOOKS.get(type(hook).__name__)
            if fn is None or not type(hook).__module__.startswith("torch.nn.utils") or not _trainable(m):
                continue
            raise ValueError(
                f"flipout(): {where} ({type(m).__name__}) has torch.nn.utils.{fn} applied: its hook "
                f"computes {hook.name!r} from the mean parameters before each call, so no member would run its own; "
                f"apply torch.nn.utils.parametrizations.{fn} instead (flipes perturbs its parameters per member), or "
                f"freeze it: {freeze}"
            )


# embeddings Hugging Face's T5 family (T5, mT5, UMT5, LongT5, Switch, Pix2Struct, UDOP, Pop2Piano) and MPNet look up
# with (T, T) relative-position buckets that every member shares, then permute as (T, T, heads)
_SHARED_ID_TABLES = ("relative_attention_bias", "global_relative_attention_bias")


def _check_shared_id_tables(model: nn.Module) -> None:
    """Refuse trainable relative-position bias tables looked up with ids every member shares, ``(T, T)`` buckets: a
    population reads their first dim as members (an error where T is no multiple of N, silently wrong where it is),
    and each member's own lookup would not fit the ``(T, T, heads)`` the model permutes."""
    names = [
        f"{name}.{attr}" if name else attr
        for name, m in model.named_modules()
        for attr in _SHARED_ID_TABLES
        if not isinstance(m, torch.jit.ScriptModule)  # frozen (a trainable one is refused): its dicts have no .get
        and isinstance(m._modules.get(attr), nn.Embedding)
        and m._modules[attr].weight.requires_grad
    ]
    if names:
        shown = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
        raise ValueError(
            f"flipout(): {len(names)} relative-position bias table(s) ({shown}) are looked up with (T, T) position "
            "buckets every member shares, which a population would read as members (silently wrong where T is a "
            f"multiple of the members); freeze them: flipes.flipout(model, frozen={names!r})"
        )


def _convert_children(parent: nn.Module, converted: dict[int, nn.Module], prefix: str = "") -> None:
    if isinstance(parent, (FlipoutMixin, PerMember, torch.jit.ScriptModule)):  # its submodules are its own business
        return
    for name, child in list(parent._modules.items()):  # with repeats, unlike named_children()
        if child is None:
            continue
        if id(child) in converted:
            _replace(parent, name, converted[id(child)])
            continue
        cls = flipout_class(type(child))
        if cls is not None and _convertible(child):
            converted[id(child)] = _convert_layer(child, cls, prefix + name)
            _replace(parent, name, converted[id(child)])
        else:
            _convert_children(child, converted, f"{prefix}{name}.")


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
        if child is not None and (_no_forward(child) or isinstance(child, parametrize.ParametrizationList)):
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


# recurrent layers whose torch kernels have no torch.func.vmap form (torch 2.13: aten::lstm/gru/rnn_tanh/rnn_relu.input and
# aten::lstm_cell have no batching rule; GRUCell and RNNCell decompose into ops that have one)
_NO_PER_MEMBER_KERNEL = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell)


def _check_dense_recurrence(model: nn.Module) -> None:
    """Refuse a recurrent layer that would run inside a per-member (dense) forward, which evaluates every member through
    ``torch.func.vmap``: torch's fused kernels have no vmap form, so the first population would fail. It is there as a
    subclass with a forward of its own or a parametrized layer (no Flipout form), or frozen inside a module that holds
    parameters of its own."""
    for name, dense in model.named_modules():
        if not isinstance(dense, PerMember):
            continue
        for sub, m in dense.named_modules(prefix=name):
            kind = next((k.__name__ for k in _NO_PER_MEMBER_KERNEL if isinstance(m, k)), None)
            if kind is None:
                continue
            plain = type(m).__bases__[-1] if isinstance(m, PerMember) else type(m)  # the user's class
            where = f"{sub!r} ({plain.__name__})" if sub else f"the model ({plain.__name__})"
            vmap = f"every member's forward through torch.func.vmap, and torch's {kind} kernel has no vmap form"
            if isinstance(m, PerMember):  # itself without a Flipout form
                freeze = f"; or freeze it: flipes.flipout(model, frozen=[{sub!r}])" if sub else ""
                raise ValueError(
                    f"flipout(): {where} has no Flipout form (a subclass with a forward of its own, or a parametrized "
                    f"layer), so it would get dense noise, {vmap}. Call a plain nn.{kind} from a module of your own "
                    f"instead (flipout makes it a Flipout layer), or write its step with nn.Linear layers{freeze}"
                )
            holder = repr(name) if name else "the model"
            freeze = f"; or freeze those: flipes.flipout(model, frozen=[{name!r}])" if name else ""
            raise ValueError(
                f"flipout(): {where} would run inside the per-member forward of {holder}, which holds parameters of its "
                f"own: that runs {vmap}. Move the parameters of {holder} itself into a submodule of their own (such as "
                f"flipes.nn.Vector), so that {holder} runs as plain torch around its {kind}{freeze}"
            )


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
            if close:
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


def check_members_first(module: nn.Module) -> None:
    """Refuse torch's sequence-first transformer blocks with evolved parameters: their feed-forward layers and
    norms get ``(T, N, E)``, which a population reads as T members (and, where T == N, would perturb them by
    time step silently). A frozen one runs as plain torch."""
    for name, m in module.named_modules():
        sequence_first = isinstance(m, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer) and not m.self_attn.batch_first
        if sequence_first and any(p.requires_grad for p in m.parameters()):  # a frozen block sees a shared context
            raise ValueError(
                f"FlipES: {type(m).__name__} {name or '(the model)'!r} is sequence-first (batch_first=False): inside "
                "a population its Linear layers and norms take the members in dim 0, so a (T, N, E) input would be "
                "read as T members; build it with batch_first=True and pass (N, T, E)"
            )


def per_member_modules(module: nn.Module) -> list[nn.Module]:
    """The ``PerMember`` (dense-noise) modules of ``module`` in ``module.modules()`` order."""
    return [m for m in module.modules() if isinstance(m, PerMember)]


@dataclass(frozen=True)
class ParameterRow:
    """What happens to one parameter in a population.

    ``how``: ``"flipout"`` (a Flipout weight or bias), ``"low-rank"`` (a Flipout weight with
    low-rank noise), ``"dense"`` (independent per-member noise), ``"frozen"``
    (``requires_grad=False``), ``"backprop noise"`` (the scale of a backprop noise model, never
    evolved) or ``"unhandled"`` (an error: nothing would perturb it). ``tied``: the parameter's other names (a
    head tied to the token embedding: ``("lm_head.weight",)``), which share its perturbation and are not rows of
    their own.
    """

    name: str
    shape: tuple[int, ...]
    how: str
    module: str
    tied: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class ParameterReport:
    """``parameter_report(model)``: one row per parameter; ``str()`` is a table with totals."""

    rows: list[ParameterRow]

    def count(self, *how: str) -> int:
        return sum(r.numel for r in self.rows if r.how in how)

    @property
    def evolved(self) -> int:
        return self.count("flipout", "low-rank", "dense")

    def __str__(self) -> str:
        width = max([len(r.name) for r in self.rows] + [9])
        lines = [f"{'parameter':<{width}}  {'shape':<16} {'how':<15} module"]
        for r in self.rows:
            also = f" (also {', '.join(r.tied)})" if r.tied else ""
            lines.append(f"{r.name:<{width}}  {tuple(r.shape)!s:<16} {r.how:<15} {r.module}{also}")
        total = sum(r.numel for r in self.rows)
        parts = ", ".join(
            f"{h} {self.count(h):,}"
            for h in ("flipout", "low-rank", "dense", "frozen", "backprop noise", "unhandled")
            if self.count(h)
        )
        lines.append(f"evolved {self.evolved:,} of {total:,} parameters ({parts})")
        return "\n".join(lines)


def parameter_report(model: nn.Module, noise_rank: int | None = None) -> ParameterReport:
    """What a population does with every parameter of ``model`` (``noise_rank``: FlipES's, which
    makes Flipout weights ``"low-rank"``; biases stay ``"flipout"``). Of ``torch.compile(net)``: net's
    parameters, by their names in net (no ``_orig_mod.``)."""
    model = uncompiled(model)
    for name, m in model.named_modules():  # FlipES(model) of an unconverted lazy model: its shapes are read below
        lazy = _uninitialized(m)
        if lazy:
            where = f"{name!r} ({type(m).__name__})" if name else f"the model ({type(m).__name__})"
            raise ValueError(f"{where}'s {lazy} {UNINITIALIZED}")
    how: dict[int, tuple[str, str]] = {}
    for m in sorted(model.modules(), key=lambda m: not isinstance(m, FlipoutMixin)):  # a weight also read densely: flipout
        if isinstance(m, FlipoutMixin):
            kind = type(m).__name__
            noise_model = m._modules.get("backprop_noise")
            for p in [] if noise_model is None else noise_model.parameters():
                how.setdefault(id(p), ("backprop noise", kind))
            for pw in m.perturbed_weights():
                how.setdefault(id(pw.weight), ("flipout" if noise_rank is None else "low-rank", kind))
                if pw.bias is not None:
                    how.setdefault(id(pw.bias), ("flipout", kind))
            for p in m.dense_parameters().values():
                how.setdefault(id(p), ("dense", kind))
        elif isinstance(m, PerMember):
            for p in m.parameters():
                how.setdefault(id(p), ("dense", type(m).__name__))
    owners = dict(_owners(model))
    names: dict[int, list[str]] = {}  # every name of each parameter: named_parameters() lists a tied one once
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    rows = []
    for name, p in model.named_parameters():
        kind, module = how.get(id(p), ("unhandled", owners[name]))
        tied = tuple(n for n in names[id(p)] if n != name)
        rows.append(ParameterRow(name, tuple(p.shape), "frozen" if not p.requires_grad else kind, module, tied))
    return ParameterReport(rows)


def _owners(model: nn.Module) -> Iterator[tuple[str, str]]:
    for mname, m in model.named_modules():
        for pname in m._parameters.keys():  # a TorchScript module's dict wrapper has no __iter__
            yield (f"{mname}.{pname}" if mname else pname), type(m).__name__


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


class NotingParameters(dict):
    """The ``_parameters`` FlipES gives a module holding evolved parameters that it runs as plain torch
    (:class:`MeanRead`): while ``reads`` is a set (inside a population), the keys of ``watched`` read through it
    (``module.name`` looks parameters up here; ``named_parameters()`` and ``state_dict()`` iterate, and are not noted)."""

    watched: frozenset[str] = frozenset()
    reads: set[str] | None = None

    def __getitem__(self, key: str) -> nn.Parameter | None:
        param = super().__getitem__(key)
        if self.reads is None or key not in self.watched or param is None:
            return param
        reads = self.reads
        if compiling():  # Dynamo traces no tensor subclass here: any read is noted
            reads.add(key)
            return param
        return _Watched.of(param, lambda: reads.add(key))  # its dtype, device and shape are no read of the mean

    def __reduce_ex__(self, protocol: object) -> tuple:  # a copy is a plain model: no FlipES resets its reads
        return dict, (dict(self),)


def noting_parameters(owner: nn.Module, keys: Iterable[str]) -> NotingParameters:
    """``owner``'s ``_parameters`` as a :class:`NotingParameters` watching ``keys`` (installed once: a model keeps it)."""
    held = owner.__dict__["_parameters"]
    if not isinstance(held, NotingParameters):
        held = owner.__dict__["_parameters"] = NotingParameters(held)
    held.watched = held.watched | frozenset(keys)
    return held


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


def unhandled_message(rows: list[ParameterRow]) -> str:
    shown = ", ".join(f"{r.name} (held by {r.module})" for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
    return (
        f"{len(rows)} trainable parameter(s) would not be evolved: {shown}. They are held directly by a module that also "
        "holds Flipout layers, so flipes has no per-member forward for them. Move each into a small submodule of its own "
        "(flipes.flipout then perturbs it per member), e.g. self.log_std = flipes.nn.Vector(init) used as "
        "self.log_std(): (members, ...) inside a population; or freeze it: flipes.flipout(model, frozen=[name, ...]) or "
        "param.requires_grad_(False)"
    )


__all__ = ["ParameterReport", "ParameterRow", "flipout", "flipout_layers", "parameter_report", "per_member_modules"]
