"""Which Flipout class a torch layer becomes (``flipout_class``): the supported layers' own, or a Flipout subclass of a
user's subclass that keeps its parent's forward (made once, picklable)."""

from __future__ import annotations

import functools
from types import MappingProxyType

from torch import nn

from flipes.nn.attention import FlipoutMultiheadAttention
from flipes.nn.base import FlipoutMixin
from flipes.nn.conv import (
    FlipoutConv1d,
    FlipoutConv2d,
    FlipoutConv3d,
    FlipoutConvTranspose1d,
    FlipoutConvTranspose2d,
    FlipoutConvTranspose3d,
)
from flipes.nn.dense import PerMember
from flipes.nn.embedding import FlipoutEmbedding
from flipes.nn.linear import FlipoutConv1D, FlipoutLinear
from flipes.nn.recurrent import FlipoutGRU, FlipoutGRUCell, FlipoutLSTM, FlipoutLSTMCell, FlipoutRNN, FlipoutRNNCell

_FLIPOUT_OF: MappingProxyType[type[nn.Module], type[nn.Module]] = MappingProxyType(
    {
        nn.Linear: FlipoutLinear,
        nn.Conv1d: FlipoutConv1d,
        nn.Conv2d: FlipoutConv2d,
        nn.Conv3d: FlipoutConv3d,
        nn.ConvTranspose1d: FlipoutConvTranspose1d,
        nn.ConvTranspose2d: FlipoutConvTranspose2d,
        nn.ConvTranspose3d: FlipoutConvTranspose3d,
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
