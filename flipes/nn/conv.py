"""Flipout 1-D, 2-D and 3-D convolutions (Wen et al., ICLR 2018, arXiv:1803.04386).

Signs are drawn per (member, input channel) and per (member, output channel) and broadcast over
space, so every member has ONE weight sample ``W̄ + σ·ε ∘ (r_n s_nᵀ)`` (kernel dims broadcast).
Signs per element of the feature map would not correspond to any weight sample.
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from flipes.nn.base import FlipoutMixin, PerturbedWeight
from flipes.nn.functional import flipout_conv
from flipes.nn.variational import backprop_noise, shared_sample
from flipes.noise import compiling


class _FlipoutConvNd(FlipoutMixin):
    """The population and backprop-noise forward shared by Conv1d/2d/3d (``spatial_dims`` of them)."""

    spatial_dims: int
    has_backprop_noise = True

    def perturbed_weights(self) -> list[PerturbedWeight]:
        return [PerturbedWeight(self.weight, self.bias, self.in_channels, self.out_channels, self.groups)]

    def forward(self, input: Tensor) -> Tensor:
        name, dims = type(self).__name__, self.spatial_dims
        if self.noise is not None:  # an ES population
            if input.dim() > dims + 2 and not compiling():  # (N, B, C, ...): noted for torch's pooling errors after it
                self.__dict__["_flipes_extra_dims"] = tuple(input.shape)
            return flipout_conv(input, self.bias, self.noise[0], self._conv_forward, self.weight, dims, name)
        unbatched = input.dim() == dims + 1
        noise = backprop_noise(self, 1 if unbatched else input.shape[0])
        if noise is None:
            return super().forward(input)
        if (shared := shared_sample(self, noise)) is not None:  # one sample for the minibatch: one convolution
            return self._conv_forward(input, *shared[0])
        x = input.unsqueeze(0) if unbatched else input
        out = flipout_conv(x, self.bias, noise[0], self._conv_forward, self.weight, dims, name)
        return out.squeeze(0) if unbatched else out


class FlipoutConv1d(_FlipoutConvNd, nn.Conv1d):
    r"""A ``torch.nn.Conv1d`` whose kernel is perturbed per member inside an ES population.

    As ``FlipoutConv2d``, with signs per (member, channel) broadcast over the length.

    Args: as ``nn.Conv1d``.

    Shape:
        - Outside a population: as ``nn.Conv1d``.
        - Inside a population of N members: ``(N, *B, C_in, L) -> (N, *B, C_out, L')``.
    """

    spatial_dims = 1


class FlipoutConv2d(_FlipoutConvNd, nn.Conv2d):
    r"""A ``torch.nn.Conv2d`` whose kernel is perturbed per member inside an ES population.

    Member :math:`n` computes ``conv(x_n, W̄) + b̄ + (conv(x_n ∘ s_n, σε) + σε_b) ∘ r_n``, with
    ``s_n`` and ``r_n`` one ±1 per channel. Outside a population it is exactly ``nn.Conv2d``,
    unless a backprop noise model is attached (``flipes.nn.attach_noise``) and it is training:
    then every example gets its own kernel sample (signs per example and channel), fresh per call.

    Args: as ``nn.Conv2d`` (all padding modes and channel groups are supported).

    Shape:
        - Outside a population: as ``nn.Conv2d``.
        - Inside a population of N members: ``(N, *B, C_in, H, W) -> (N, *B, C_out, H', W')``.

    Examples::

        >>> conv = FlipoutConv2d(3, 8, kernel_size=3, padding=1)
        >>> es = flipes.FlipES(conv, popsize=4, sigma=0.1)
        >>> with es.population() as pop:
        ...     y = conv(torch.randn(pop.size, 2, 3, 16, 16))   # (4, 2, 8, 16, 16)
    """

    spatial_dims = 2


class FlipoutConv3d(_FlipoutConvNd, nn.Conv3d):
    r"""A ``torch.nn.Conv3d`` whose kernel is perturbed per member inside an ES population.

    As ``FlipoutConv2d``, with signs per (member, channel) broadcast over depth, height and width.

    Args: as ``nn.Conv3d``.

    Shape:
        - Outside a population: as ``nn.Conv3d``.
        - Inside a population of N members: ``(N, *B, C_in, D, H, W) -> (N, *B, C_out, D', H', W')``.
    """

    spatial_dims = 3


# torch's layers that take at most one batch dimension say so in these words (pooling, unfold, padding)
_AT_MOST_ONE_BATCH_DIM = re.compile(r"\b[2-5]D\b|\d to \d dimensions|\d-dimensional|\d+D input")


def members_first_fix(named: list[tuple[str, tuple[int, ...]]], error: RuntimeError) -> str | None:
    """What to do where a torch layer after a Flipout convolution refused the members-first input with examples,
    ``(N, B, C, H, W)``, that the convolution took (``named``: the convolutions that got such input, and its shape);
    None where ``error`` is no such refusal."""
    if not named or not _AT_MOST_ONE_BATCH_DIM.search(str(error)):
        return None
    name, shape = named[0]
    return (
        f"flipes: inside the population, {name} got input of shape {shape}, members first with examples: flipes' "
        "layers take it, but torch's pooling (and other layers made for one batch dimension) take at most one batch "
        "dimension. Pass each member's examples member-major in one batch dimension instead, "
        "model(x.flatten(0, 1)) for (members·examples, C, H, W), and view the output as (pop.size, examples, ...); "
        "a policy of your own for an env does so in its forward, obs.flatten(0, -4), and returns its actions "
        "reshaped to obs.shape[:-3]"
    )
