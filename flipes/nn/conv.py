"""Flipout 1-D, 2-D and 3-D convolutions (Wen et al., ICLR 2018, arXiv:1803.04386).

Signs are drawn per (member, input channel) and per (member, output channel) and broadcast over
space, so every member has ONE weight sample ``W̄ + σ·ε ∘ (r_n s_nᵀ)`` (kernel dims broadcast).
Signs per element of the feature map would not correspond to any weight sample.
"""

from __future__ import annotations

from torch import Tensor, nn

from flipes.nn.base import FlipoutMixin, PerturbedWeight
from flipes.nn.functional import flipout_conv
from flipes.nn.variational import backprop_noise


class _FlipoutConvNd(FlipoutMixin):
    """The population and backprop-noise forward shared by Conv1d/2d/3d (``spatial_dims`` of them)."""

    spatial_dims: int
    has_backprop_noise = True

    def perturbed_weights(self) -> list[PerturbedWeight]:
        return [PerturbedWeight(self.weight, self.bias, self.in_channels, self.out_channels, self.groups)]

    def forward(self, input: Tensor) -> Tensor:
        name, dims = type(self).__name__, self.spatial_dims
        if self.noise is not None:  # an ES population
            return flipout_conv(input, self.bias, self.noise[0], self._conv_forward, self.weight, dims, name)
        unbatched = input.dim() == dims + 1
        noise = backprop_noise(self, 1 if unbatched else input.shape[0])
        if noise is None:
            return super().forward(input)
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
