"""Flipout linear layer (Wen et al., ICLR 2018, arXiv:1803.04386)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from flipes.nn.base import FlipoutMixin, PerturbedWeight
from flipes.nn.functional import flipout_linear
from flipes.nn.inputs import refuse_non_tensor
from flipes.nn.variational import backprop_noise, shared_sample


class FlipoutLinear(FlipoutMixin, nn.Linear):
    r"""A ``torch.nn.Linear`` whose weights are perturbed per member inside an ES population.

    Member :math:`n` computes :math:`y_n = x_n W_n^T + b_n` with
    :math:`W_n = \bar W + \sigma\,\varepsilon \circ (r_n s_n^T)`, in two GEMMs for all members.
    Outside a population it is exactly ``nn.Linear``, unless a backprop noise model is attached
    (``flipes.nn.attach_noise``) and it is training: then every example (first dimension) gets
    its own weight sample, fresh at every call (``flipes.nn.variational``).

    Args:
        in_features: size of each input sample
        out_features: size of each output sample
        bias: if ``False``, the layer learns no additive bias
        device, dtype: as for ``nn.Linear``

    Shape:
        - Outside a population: as ``nn.Linear``, ``(*, in_features) -> (*, out_features)``.
        - Inside a population of N members: ``(N, *B, in_features) -> (N, *B, out_features)``;
          the first dimension indexes members, ``*B`` are examples of each member.

    Examples::

        >>> layer = FlipoutLinear(20, 30)
        >>> es = flipes.FlipES(layer, popsize=8, sigma=0.1)
        >>> with es.population() as pop:
        ...     y = layer(torch.randn(pop.size, 5, 20))   # (8, 5, 30)
    """

    has_backprop_noise = True

    def perturbed_weights(self) -> list[PerturbedWeight]:
        return [PerturbedWeight(self.weight, self.bias, self.in_features, self.out_features)]

    def forward(self, input: Tensor) -> Tensor:
        name = type(self).__name__
        if self.noise is not None:  # an ES population
            return flipout_linear(input, self.weight, self.bias, self.noise[0], name)
        try:
            unbatched = input.dim() == 1
        except AttributeError:
            refuse_non_tensor(name, input, self.weight)
            raise
        if input.dim() == 0 or input.shape[-1] != self.in_features:  # no population: torch's error, as without noise
            return super().forward(input)
        noise = backprop_noise(self, 1 if unbatched else input.shape[0])
        if noise is None:
            return super().forward(input)
        if (shared := shared_sample(self, noise)) is not None:  # one sample for the minibatch: one GEMM
            return F.linear(input, *shared[0])
        if unbatched:
            return flipout_linear(input.unsqueeze(0), self.weight, self.bias, noise[0], name).squeeze(0)
        return flipout_linear(input, self.weight, self.bias, noise[0], name)


class FlipoutConv1D(FlipoutMixin):
    r"""The Flipout form of ``transformers``' ``Conv1D`` (GPT-2's projections): a linear layer whose
    weight is stored ``(in, out)``, ``y = x W + b``. Mixed into a subclass of that class by
    ``flipes.flipout``; the noise is laid out for ``Wᵀ`` (``PerturbedWeight.transposed``).
    Outside a population it is exactly ``transformers``' ``Conv1D``.

    Not built directly (``FlipoutConv1D()`` takes no arguments): ``flipes.flipout`` converts a
    ``transformers.pytorch_utils.Conv1D(nf, nx)`` (``nf`` output features, ``nx`` input ones: ``weight``
    ``(nx, nf)``, ``bias`` ``(nf,)``), keeping its parameters.

    Shape:
        - Outside a population: as ``Conv1D``, ``(*, nx) -> (*, nf)``.
        - Inside a population of N members: ``(N, *B, nx) -> (N, *B, nf)``; the first dimension
          indexes members, ``*B`` are examples of each member (as ``FlipoutLinear``).
    """

    weight: nn.Parameter
    bias: nn.Parameter

    def perturbed_weights(self) -> list[PerturbedWeight]:
        return [PerturbedWeight(self.weight, self.bias, self.weight.shape[0], self.weight.shape[1], transposed=True)]

    def forward(self, input: Tensor) -> Tensor:
        if self.noise is None:
            return super().forward(input)  # type: ignore[misc]
        return flipout_linear(input, self.weight.T, self.bias, self.noise[0], type(self).__name__)
