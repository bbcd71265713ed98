"""Flipout layers: torch.nn layers whose weights are perturbed per member of an ES population."""

from flipes.nn.base import FlipoutMixin, PerturbedWeight
from flipes.nn.conv import FlipoutConv2d
from flipes.nn.convert import flipout, flipout_layers
from flipes.nn.linear import FlipoutLinear
from flipes.nn.recurrent import FlipoutGRUCell, FlipoutLSTMCell

__all__ = [
    "FlipoutConv2d",
    "FlipoutGRUCell",
    "FlipoutLSTMCell",
    "FlipoutLinear",
    "FlipoutMixin",
    "PerturbedWeight",
    "flipout",
    "flipout_layers",
]
