"""Aliases of evolved parameters watched inside a population: a replaced layer's original (``ReplacedParameters``:
reading it is an error) and a plain module holding an evolved parameter (``NotingParameters``: its reads are noted), both
through a tensor whose metadata reads are free and whose value reads call back (``_Watched``)."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable

import torch
from torch import nn

from flipes.nn.base import FlipoutMixin
from flipes.noise import compiling


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
