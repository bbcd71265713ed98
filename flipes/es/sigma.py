"""Adaptive σ under Flipout: a standardized natural gradient of the expected fitness in log σ, one σ per layer.

Separable NES / PGPE adapt σ from the score of the search distribution (Sehnke et al., "Parameter-
exploring policy gradients", Neural Networks 2010; Schaul, Glasmachers & Schmidhuber, "High
dimensions and heavy tails for natural evolution strategies", GECCO 2011). For a layer with d
evolved entries, member n uses ``θ + σ z_n`` with ``z_n ~ N(0, I_d)`` marginally, so

    ∂/∂ log σ  E[F(θ + σz)] = E[F · (‖z‖² - d)]         (the Gaussian score in log σ)

and the Fisher information of log σ is ``2d``, so the natural gradient is
``E[F (‖z‖² - d)] / (2d)``. flipes ascends it times ``√(2d)``, estimated over the population as

    ĝ_σ = 1/N Σ_n F̂_n (‖z_n‖² - d) / √(2d).

Why the factor: ``(‖z‖² - d)/√(2d)`` has unit variance whatever d, so ĝ_σ is the covariance of the
shaped fitness with a standardized score, about ``ρ · std(F̂)`` when the search radius explains a
fraction ρ² of the fitness variance, for a bias of 6 entries and a weight of 4,096 alike. With the
plain natural gradient a layer's step shrinks as 1/√d and one ``sigma_lr`` cannot suit both
(measured: at η 0.2, σ of 64-64 MLPs moved < 7% in 500 generations). It is one fixed preconditioner
per layer, so each layer's step points along its natural gradient. The estimate is unbiased for
every member's marginal, which under Flipout IS ``N(0, I)`` (Observation 1 of
Wen et al., 2018): correlated members only change its variance. The catch: the signs square to
one, so ``‖z_n‖² = ‖ε_g‖²`` is the SAME for every member of ε group g. For the weights of a
Flipout layer the estimate is ``Σ_g (‖ε_g‖² - d) Σ_{n∈g} F̂_n``: with centered fitness and one
group it is exactly 0, and σ learns only from the variation between groups (G samples per
generation). Full-rank biases and dense parameters have independent noise per member and add
per-member information. Use ``groups ≥ 8`` with ``sigma_lr > 0``. Low-rank ε is not Gaussian, so
its score is not the one above: adaptive σ needs full-rank noise.

The update ``log σ += sigma_lr · ĝ_σ`` keeps σ positive; mirrored twins share ``‖z‖²`` and enter
with both their fitness values.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flipes.nn.base import PerturbedWeight
from flipes.noise import DenseNoise, SlotNoise


def slot_norms(pw: PerturbedWeight, noise: SlotNoise, sigma: float) -> tuple[Tensor, int]:
    """``(‖z_n‖² per member, d)`` of a Flipout slot's evolved entries: ``‖ε_g‖²`` of the member's group
    (signs square to one) plus its own bias noise."""
    n, g = noise.size, noise.groups
    total = torch.zeros(n, dtype=torch.float64, device=noise.s.device)
    d = 0
    if pw.weight.requires_grad:
        eps = noise.eps.double().flatten(1)
        total += (eps.square().sum(1) / sigma**2).repeat_interleave(n // g)
        d += pw.weight.numel() - len(pw.fixed_rows) * (pw.weight.numel() // pw.layout.shape[0])
    if noise.bias_r is not None:
        total += noise.bias_r.double().square().sum(1) / sigma**2
        d += noise.bias_r.shape[1]
    return total, d


def dense_norms(noise: DenseNoise, sigma: float) -> tuple[Tensor, int]:
    """``(‖z_n‖² per member, d)`` of a dense parameter: independent per member."""
    delta = noise.delta.double().flatten(1)
    return delta.square().sum(1) / sigma**2, delta.shape[1]


def log_sigma_gradient(norms: Tensor, d: int, coeff: Tensor) -> Tensor:
    """``Σ_n c_n (‖z_n‖² - d) / √(2d)`` over the members given (divide the sum over all by N)."""
    if d == 0:
        return norms.new_zeros(())
    return (coeff.to(norms) * (norms - d)).sum() / math.sqrt(2 * d)
