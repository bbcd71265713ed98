"""Flipout recurrent cells (Wen et al., ICLR 2018, arXiv:1803.04386, Sec. 3.3 and 4.3).

Both the input-to-hidden and the hidden-to-hidden weights are perturbed, and a member's signs
stay fixed for the whole sequence: they are sampled once per population (generation), so every
time step of member ``n`` uses the same weights ``W_n``. Resampling per step would give each
step a different network.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flipes.nn.base import FlipoutMixin, PerturbedWeight
from flipes.nn.functional import flipout_linear


def _zeros_like_hidden(x: Tensor, hidden_size: int) -> Tensor:
    return x.new_zeros(*x.shape[:-1], hidden_size)


class FlipoutLSTMCell(FlipoutMixin, nn.LSTMCell):
    r"""A ``torch.nn.LSTMCell`` with Flipout on ``weight_ih`` and ``weight_hh``.

    Args: as ``nn.LSTMCell``.

    Shape:
        - Outside a population: as ``nn.LSTMCell``.
        - Inside a population of N members: input ``(N, *B, input_size)``, ``hx = (h, c)`` each
          ``(N, *B, hidden_size)`` (zeros if omitted) -> ``(h', c')``.

    Examples::

        >>> cell = FlipoutLSTMCell(4, 16)
        >>> es = flipes.FlipES(cell, popsize=8, sigma=0.1)
        >>> with es.population() as pop:
        ...     h = c = torch.zeros(pop.size, 16)
        ...     for x_t in torch.randn(10, pop.size, 4):   # same weights at every step
        ...         h, c = cell(x_t, (h, c))
    """

    def perturbed_weights(self) -> list[PerturbedWeight]:
        return [
            PerturbedWeight(self.weight_ih, self.bias_ih, self.input_size, 4 * self.hidden_size),
            PerturbedWeight(self.weight_hh, self.bias_hh, self.hidden_size, 4 * self.hidden_size),
        ]

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        if self.noise is None:
            return super().forward(input, hx)
        if hx is None:
            hx = (_zeros_like_hidden(input, self.hidden_size), _zeros_like_hidden(input, self.hidden_size))
        h, c = hx
        name = type(self).__name__
        gates = flipout_linear(input, self.weight_ih, self.bias_ih, self.noise[0], name)
        gates = gates + flipout_linear(h, self.weight_hh, self.bias_hh, self.noise[1], name)
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class FlipoutGRUCell(FlipoutMixin, nn.GRUCell):
    r"""A ``torch.nn.GRUCell`` with Flipout on ``weight_ih`` and ``weight_hh``.

    Args: as ``nn.GRUCell``.

    Shape:
        - Outside a population: as ``nn.GRUCell``.
        - Inside a population of N members: input ``(N, *B, input_size)``, ``hx``
          ``(N, *B, hidden_size)`` (zeros if omitted) -> ``h'``.
    """

    def perturbed_weights(self) -> list[PerturbedWeight]:
        return [
            PerturbedWeight(self.weight_ih, self.bias_ih, self.input_size, 3 * self.hidden_size),
            PerturbedWeight(self.weight_hh, self.bias_hh, self.hidden_size, 3 * self.hidden_size),
        ]

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        if self.noise is None:
            return super().forward(input, hx)
        h = _zeros_like_hidden(input, self.hidden_size) if hx is None else hx
        name = type(self).__name__
        gi = flipout_linear(input, self.weight_ih, self.bias_ih, self.noise[0], name).chunk(3, dim=-1)
        gh = flipout_linear(h, self.weight_hh, self.bias_hh, self.noise[1], name).chunk(3, dim=-1)
        r = torch.sigmoid(gi[0] + gh[0])
        z = torch.sigmoid(gi[1] + gh[1])
        n = torch.tanh(gi[2] + r * gh[2])
        return (1 - z) * n + z * h
