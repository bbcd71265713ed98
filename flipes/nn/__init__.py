"""Flipout layers: torch.nn layers whose weights are perturbed per member of an ES population,
or per example in backprop training with an attached noise model (``variational``)."""

from flipes.nn.base import FlipoutMixin, PerturbedWeight
from flipes.nn.conv import FlipoutConv2d
from flipes.nn.convert import flipout, flipout_layers
from flipes.nn.linear import FlipoutLinear
from flipes.nn.recurrent import FlipoutGRUCell, FlipoutLSTM, FlipoutLSTMCell
from flipes.nn.variational import (
    DropConnect,
    GaussianPosterior,
    MultiplicativeGaussian,
    NoiseDraw,
    WeightNoise,
    attach_noise,
    fixed_noise,
    kl_divergence,
    sample_weights,
)

__all__ = [
    "DropConnect",
    "FlipoutConv2d",
    "FlipoutGRUCell",
    "FlipoutLSTM",
    "FlipoutLSTMCell",
    "FlipoutLinear",
    "FlipoutMixin",
    "GaussianPosterior",
    "MultiplicativeGaussian",
    "NoiseDraw",
    "PerturbedWeight",
    "WeightNoise",
    "attach_noise",
    "fixed_noise",
    "flipout",
    "flipout_layers",
    "kl_divergence",
    "sample_weights",
]
