"""Flipout layers: torch.nn layers whose weights are perturbed per member of an ES population,
or per example in backprop training with an attached noise model (``variational``)."""

from flipes.nn.attention import FlipoutMultiheadAttention
from flipes.nn.base import FlipoutMixin, PerturbedWeight
from flipes.nn.compiled import uncompiled
from flipes.nn.conv import (
    FlipoutConv1d,
    FlipoutConv2d,
    FlipoutConv3d,
    FlipoutConvTranspose1d,
    FlipoutConvTranspose2d,
    FlipoutConvTranspose3d,
)
from flipes.nn.convert import (
    ParameterReport,
    ParameterRow,
    flipout,
    flipout_layers,
    parameter_report,
    per_member_modules,
)
from flipes.nn.dense import PerMember
from flipes.nn.embedding import FlipoutEmbedding
from flipes.nn.linear import FlipoutConv1D, FlipoutLinear
from flipes.nn.recurrent import FlipoutGRU, FlipoutGRUCell, FlipoutLSTM, FlipoutLSTMCell, FlipoutRNN, FlipoutRNNCell
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
from flipes.nn.vector import Vector

__all__ = [
    "DropConnect",
    "FlipoutConv1D",
    "FlipoutConv1d",
    "FlipoutConv2d",
    "FlipoutConv3d",
    "FlipoutConvTranspose1d",
    "FlipoutConvTranspose2d",
    "FlipoutConvTranspose3d",
    "FlipoutEmbedding",
    "FlipoutGRU",
    "FlipoutGRUCell",
    "FlipoutLSTM",
    "FlipoutLSTMCell",
    "FlipoutLinear",
    "FlipoutMixin",
    "FlipoutMultiheadAttention",
    "FlipoutRNN",
    "FlipoutRNNCell",
    "GaussianPosterior",
    "MultiplicativeGaussian",
    "NoiseDraw",
    "ParameterReport",
    "ParameterRow",
    "PerMember",
    "PerturbedWeight",
    "Vector",
    "WeightNoise",
    "attach_noise",
    "fixed_noise",
    "flipout",
    "flipout_layers",
    "kl_divergence",
    "parameter_report",
    "per_member_modules",
    "sample_weights",
    "uncompiled",
]
