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
per layer, so each layer's step points along its natural gradient. With raw fitness the estimate
is unbiased as it needs only every member's marginal, which under Flipout IS ``N(0, I)``
(Observation 1 of Wen et al., 2018): correlated members only change its variance. The catch: the signs square to
one, so ``‖z_n‖² = ‖ε_g‖²`` is the SAME for every member of ε group g. For the weights of a
Flipout layer the estimate is ``Σ_g (‖ε_g‖² - d) Σ_{n∈g} F̂_n``: with centered fitness and one
group it is exactly 0, and σ learns only from the variation between groups (G samples per
generation). Full-rank biases and dense parameters have independent noise per member and add
per-member information. Use ``groups ≥ 8`` with ``sigma_lr > 0``. Low-rank ε is not Gaussian, so
its score is not the one above: adaptive σ needs full-rank noise.

A baseline drawn from the same population biases this: centered shaping (ranks, z-scores) subtracts
a mean that holds the member's own fitness, and with it its score. Under Flipout a whole group shares
``‖ε_g‖²``, so the mean over all members shrinks the weights' estimate by a factor ``1 - 1/G`` (measured:
0.86 at G = 8), the per-member parts by ``1 - 1/N`` (``1 - 2/N`` with mirrored twins), and the step
would depend on ``groups``. So each member's coefficient is its shaped fitness minus the mean over the
members whose noise is independent of its own (``leave_out``): the other groups for a Flipout weight's
ε, the other members (pairs) for per-member noise. That baseline is independent of the member's score,
so the estimate is unbiased for any shaping that centers a per-member value (``F - mean F``); with
centered ranks a member's shaped value also depends on the others, and the correction holds to the
extent ranks behave like such values. Raw fitness gets a baseline that only lowers the variance.

The update ``log σ += sigma_lr · ĝ_σ`` keeps σ positive; mirrored twins share ``‖z‖²`` and enter
with both their fitness values.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flipes.nn.base import PerturbedWeight
from flipes.noise import DenseNoise, SlotNoise


def leave_out(coeff: Tensor, block: int) -> Tensor:
    """``c_n`` minus the mean of ``c`` over the members outside n's block of ``block`` consecutive members
    (a group, a mirrored pair, one member): a baseline independent of the block's noise. Unchanged when
    one block holds everyone (no other members to take a baseline from)."""
    n = coeff.numel()
    if block >= n:
        return coeff
    own = coeff.view(-1, block).sum(1).repeat_interleave(block)
    return coeff - (coeff.sum() - own) / (n - block)


def slot_norms(pw: PerturbedWeight, noise: SlotNoise, sigma: float) -> tuple[tuple[Tensor, int], tuple[Tensor, int]]:
    """``‖z_n‖²`` per member and the number of entries, ``(weight part, bias part)``, of a Flipout slot's
    evolved entries: ``‖ε_g‖²`` of the member's group (signs square to one), and its own bias noise."""
    n, g = noise.size, noise.groups
    weight = torch.zeros(n, dtype=torch.float64, device=noise.s.device)
    bias = torch.zeros_like(weight)
    d_weight = d_bias = 0
    if pw.weight.requires_grad:
        eps = noise.eps.double().flatten(1)
        weight += (eps.square().sum(1) / sigma**2).repeat_interleave(n // g)
        d_weight = pw.weight.numel() - len(pw.fixed_rows) * (pw.weight.numel() // pw.layout.shape[0])
    if noise.bias_r is not None:
        bias += noise.bias_r.double().square().sum(1) / sigma**2
        d_bias = noise.bias_r.shape[1]
    return (weight, d_weight), (bias, d_bias)


def dense_norms(noise: DenseNoise, sigma: float, fixed_rows: int = 0) -> tuple[Tensor, int]:
    """``(‖z_n‖² per member, d)`` of a dense parameter: independent per member; ``fixed_rows`` of its rows (an
    embedding's padding row) get no noise and are not counted."""
    delta = noise.delta.double().reshape(len(noise.delta), -1)  # a 0-dim parameter's (N,) too
    rows = noise.delta.shape[1] if noise.delta.dim() > 1 else 1
    return delta.square().sum(1) / sigma**2, delta.shape[1] - fixed_rows * (delta.shape[1] // rows)


def log_sigma_gradient(*parts: tuple[Tensor, int, Tensor]) -> Tensor:
    """``Σ_parts Σ_n c_n (‖z_n‖² - d_part) / √(2d)`` over the members given, ``d`` the entries of all parts
    (one σ; divide the sum over all members by N). Each part is ``(‖z_n‖², d_part, c)``, its noise
    independent of the others' and ``c`` its members' coefficients (``leave_out``)."""
    d = sum(part[1] for part in parts)
    if d == 0:
        return parts[0][0].new_zeros(())
    return sum((c.to(norms) * (norms - k)).sum() for norms, k, c in parts if k) / math.sqrt(2 * d)
