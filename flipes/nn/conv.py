"""Flipout 1-D, 2-D and 3-D convolutions and transposed convolutions (Wen et al., ICLR 2018, arXiv:1803.04386).

Signs are drawn per (member, input channel) and per (member, output channel) and broadcast over
space, so every member has ONE weight sample ``W̄ + σ·ε ∘ (r_n s_nᵀ)`` (kernel dims broadcast).
Signs per element of the feature map would not correspond to any weight sample.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from flipes.nn.base import FlipoutMixin, PerturbedWeight
from flipes.nn.functional import flipout_conv
from flipes.nn.inputs import refuse_non_tensor
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
            note_extra_dims(self, input, dims)
            return flipout_conv(input, self.bias, self.noise[0], self._conv_forward, self.weight, dims, name)
        out = with_backprop_noise(self, input, self._conv_forward)
        return super().forward(input) if out is None else out


def with_backprop_noise(
    layer: FlipoutMixin, input: Tensor, conv: Callable[..., Tensor], transposed: bool = False
) -> Tensor | None:
    """``layer``'s forward with its attached backprop noise model, every example with its own kernel sample (or one
    convolution on the minibatch's one shared sample); ``None`` where it samples none (no model, or not training).
    ``conv(x, w, b)`` is the layer's convolution; ``transposed``: a transposed one, whose noise is drawn in its
    kernel's own ``(in, out // groups, ...)`` shape."""
    dims = layer.spatial_dims
    try:
        unbatched = input.dim() == dims + 1
    except AttributeError:
        refuse_non_tensor(type(layer).__name__, input, layer.weight)
        raise
    if input.dim() not in (dims + 1, dims + 2) or input.shape[-dims - 1] != layer.in_channels:
        return None  # no population: the plain forward raises torch's error for the shape, as without noise
    noise = backprop_noise(layer, 1 if unbatched else input.shape[0])
    if noise is None:
        return None
    if (shared := shared_sample(layer, noise)) is not None:  # one sample for the minibatch: one convolution
        return conv(input, *shared[0])
    x = input.unsqueeze(0) if unbatched else input
    name = type(layer).__name__
    out = flipout_conv(x, layer.bias, noise[0], conv, layer.weight, dims, name, transposed=transposed, stored=True)
    return out.squeeze(0) if unbatched else out


def note_extra_dims(layer: nn.Module, input: Tensor, spatial_dims: int) -> None:
    """Note a members-first input with examples, ``(N, B, C, ...)``, for torch's pooling errors after the layer
    (:func:`members_first_fix`); a NumPy array or list is refused naming the conversion."""
    try:
        dims = input.dim()
    except AttributeError:
        refuse_non_tensor(type(layer).__name__, input, layer.weight)
        raise
    if dims > spatial_dims + 2 and not compiling():
        layer.__dict__["_flipes_extra_dims"] = tuple(input.shape)


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


class _FlipoutConvTransposeNd(FlipoutMixin):
    """The population and backprop-noise forward shared by ConvTranspose1d/2d/3d (``spatial_dims`` of them). Its
    kernel is stored ``(in, out // groups, *kernel)``: ``PerturbedWeight.transposed``."""

    spatial_dims: int
    has_backprop_noise = True

    def perturbed_weights(self) -> list[PerturbedWeight]:
        return [PerturbedWeight(self.weight, self.bias, self.in_channels, self.out_channels, self.groups, transposed=True)]

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        if self.noise is None:
            out = with_backprop_noise(self, input, self._transposed_conv(input, output_size), transposed=True)
            return super().forward(input, output_size) if out is None else out  # type: ignore[misc]
        note_extra_dims(self, input, self.spatial_dims)
        conv = self._transposed_conv(input, output_size)
        return flipout_conv(input, self.bias, self.noise[0], conv, self.weight, self.spatial_dims, type(self).__name__, True)

    def _transposed_conv(self, input: Tensor, output_size: list[int] | None) -> Callable[..., Tensor]:
        """``conv(x, w, b)``: this layer's transposed convolution, its output padding read from ``output_size``."""
        if self.padding_mode != "zeros":  # as torch's forward: a population's would pad with zeros silently
            raise ValueError(
                f"Only `zeros` padding mode is supported for {type(self).__name__}, got padding_mode="
                f"{self.padding_mode!r} (set after construction, which refuses it): torch's transposed convolutions have no "
                "other; set padding_mode='zeros'"
            )
        dims = self.spatial_dims
        try:
            rank = input.dim()
        except AttributeError:
            refuse_non_tensor(type(self).__name__, input, self.weight)
            raise
        # torch reads output_size against one batch dim: the members and their examples flattened into it
        example = input.flatten(0, rank - dims - 2) if rank > dims + 2 else input
        stride, padding, kernel, dilation = self.stride, self.padding, self.kernel_size, self.dilation
        output_padding = self._output_padding(example, output_size, stride, padding, kernel, dims, dilation)
        return functools.partial(
            _CONV_TRANSPOSE[dims - 1],
            stride=stride, padding=padding, output_padding=output_padding, groups=self.groups, dilation=dilation,
        )  # fmt: skip


_CONV_TRANSPOSE = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)


class FlipoutConvTranspose1d(_FlipoutConvTransposeNd, nn.ConvTranspose1d):
    r"""A ``torch.nn.ConvTranspose1d`` whose kernel is perturbed per member inside an ES population.

    As ``FlipoutConvTranspose2d``, with signs per (member, channel) broadcast over the length.

    Args: as ``nn.ConvTranspose1d``.

    Shape:
        - Outside a population: as ``nn.ConvTranspose1d``.
        - Inside a population of N members: ``(N, *B, C_in, L) -> (N, *B, C_out, L')``.
    """

    spatial_dims = 1


class FlipoutConvTranspose2d(_FlipoutConvTransposeNd, nn.ConvTranspose2d):
    r"""A ``torch.nn.ConvTranspose2d`` whose kernel is perturbed per member inside an ES population.

    Member :math:`n` computes ``conv_transpose(x_n, W̄) + b̄ + (conv_transpose(x_n ∘ s_n, σε) + σε_b) ∘ r_n``, with
    ``s_n`` and ``r_n`` one ±1 per channel, so every member has one kernel sample (as ``FlipoutConv2d``), instead of
    the dense per-member noise (``N × numel`` normals, each member's forward under ``torch.func.vmap``) a layer without
    a Flipout form gets. Outside a population it is exactly ``nn.ConvTranspose2d``, unless a backprop noise model is
    attached (``flipes.nn.attach_noise``) and it is training: then every example gets its own kernel sample, as in
    ``FlipoutConv2d``.

    Args: as ``nn.ConvTranspose2d`` (stride, padding, output padding, channel groups, dilation; ``output_size`` in the
        forward).

    Shape:
        - Outside a population: as ``nn.ConvTranspose2d``.
        - Inside a population of N members: ``(N, *B, C_in, H, W) -> (N, *B, C_out, H', W')``.

    Examples::

        >>> deconv = FlipoutConvTranspose2d(8, 3, kernel_size=4, stride=2, padding=1)
        >>> es = flipes.FlipES(deconv, popsize=4, sigma=0.1)
        >>> with es.population() as pop:
        ...     y = deconv(torch.randn(pop.size, 2, 8, 16, 16))   # (4, 2, 3, 32, 32)
    """

    spatial_dims = 2


class FlipoutConvTranspose3d(_FlipoutConvTransposeNd, nn.ConvTranspose3d):
    r"""A ``torch.nn.ConvTranspose3d`` whose kernel is perturbed per member inside an ES population.

    As ``FlipoutConvTranspose2d``, with signs per (member, channel) broadcast over depth, height and width.

    Args: as ``nn.ConvTranspose3d``.

    Shape:
        - Outside a population: as ``nn.ConvTranspose3d``.
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
