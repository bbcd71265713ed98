"""``flipout(module)``: turn the Linear/Conv2d/LSTM/LSTMCell/GRUCell layers of any model into Flipout ones."""

from __future__ import annotations

from torch import nn

from flipes.nn.base import FlipoutMixin
from flipes.nn.conv import FlipoutConv2d
from flipes.nn.linear import FlipoutLinear
from flipes.nn.recurrent import FlipoutGRUCell, FlipoutLSTM, FlipoutLSTMCell, check_lstm_supported

_FLIPOUT_OF: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: FlipoutLinear,
    nn.Conv2d: FlipoutConv2d,
    nn.LSTM: FlipoutLSTM,
    nn.LSTMCell: FlipoutLSTMCell,
    nn.GRUCell: FlipoutGRUCell,
}


def _convert_layer(layer: nn.Module) -> nn.Module:
    """A Flipout layer holding the very same Parameter objects (and hooks, flags) as ``layer``."""
    if isinstance(layer, nn.LSTM):
        check_lstm_supported(layer)
    new = _FLIPOUT_OF[type(layer)].__new__(_FLIPOUT_OF[type(layer)])
    new.__dict__ = layer.__dict__.copy()  # same _parameters entries: the same Parameter objects
    for name in ("_parameters", "_buffers", "_modules"):
        setattr(new, name, getattr(layer, name).copy())
    if isinstance(new, nn.RNNBase):
        new._init_flat_weights()  # its own list of (the same) weights for the fused kernel
    return new


def flipout(module: nn.Module) -> nn.Module:
    """Convert ``module``'s ``nn.Linear``, ``nn.Conv2d``, ``nn.LSTM``, ``nn.LSTMCell`` and ``nn.GRUCell``
    layers (exact types; subclasses with their own forward are left alone) into Flipout layers.

    The conversion is in place and returns ``module``, or the new layer if ``module`` itself is
    one of those types. Converted layers share their ``Parameter`` objects with the originals, so
    optimizers, weight tying and state dicts keep working; outside a population they compute
    exactly what the originals did.

    Raises:
        ValueError: if the model has no layer that can be converted, or has a bidirectional or
            projected ``nn.LSTM`` (not supported).
    """
    if type(module) in _FLIPOUT_OF:
        return _convert_layer(module)
    found = isinstance(module, FlipoutMixin)
    converted: dict[int, nn.Module] = {}  # a layer used twice (or aliased) becomes ONE Flipout layer
    for parent in list(module.modules()):
        for name, child in list(parent._modules.items()):  # with repeats, unlike named_children()
            if type(child) in _FLIPOUT_OF:
                if id(child) not in converted:
                    converted[id(child)] = _convert_layer(child)
                setattr(parent, name, converted[id(child)])
                found = True
            elif isinstance(child, FlipoutMixin):
                found = True
    if not found:
        kinds = ", ".join(t.__name__ for t in _FLIPOUT_OF)
        raise ValueError(
            f"flipout(): {type(module).__name__} has no layer to convert; flipes perturbs {kinds} "
            "(or build the model from flipes.nn layers)"
        )
    return module


def flipout_layers(module: nn.Module) -> list[FlipoutMixin]:
    """The Flipout layers of ``module`` in ``module.modules()`` order (the order keys noise)."""
    return [m for m in module.modules() if isinstance(m, FlipoutMixin)]


__all__ = ["flipout", "flipout_layers"]
