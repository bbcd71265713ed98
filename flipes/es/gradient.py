"""The ES gradient of a Flipout weight in one GEMM per ε group (Wen et al., ICLR 2018, Sec. 3.2).

    Σ_n c_n σu_n = Σ_g σε_g ∘ (R_gᵀ diag(c_g) S_g)        (u_n = ε_g ∘ r_n s_nᵀ)

The (out × members)·(members × in) product replaces N materialized perturbations.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flipes.nn.base import PerturbedWeight
from flipes.noise import SlotNoise


def sign_outer(noise: SlotNoise, coeff: Tensor) -> Tensor:
    """``R_gᵀ diag(c_g) S_g`` for every local group: ``(G, out_channels, in_channels)``."""
    g, n = noise.groups, noise.size
    rc = (noise.r * coeff.unsqueeze(1)).view(g, n // g, -1)
    return torch.bmm(rc.mT, noise.s.view(g, n // g, -1))


def block_diagonal(m: Tensor, conv_groups: int) -> Tensor:
    """``(G, out, in)`` -> ``(G, out, in // conv_groups)``: the entries a grouped conv connects."""
    if conv_groups == 1:
        return m
    g, out, inp = m.shape
    blocks = m.view(g, conv_groups, out // conv_groups, conv_groups, inp // conv_groups)
    return torch.diagonal(blocks, dim1=1, dim2=3).permute(0, 3, 1, 2).reshape(g, out, inp // conv_groups)


def weighted_perturbation(pw: PerturbedWeight, noise: SlotNoise, coeff: Tensor) -> tuple[Tensor, Tensor | None]:
    """``(Σ_n c_n σu_n, Σ_n c_n σε_b,n)`` over the local members of one slot."""
    m = block_diagonal(sign_outer(noise, coeff), pw.conv_groups)
    m = m.view(*m.shape, *(1,) * (noise.eps.dim() - 3))  # broadcast over kernel dims
    weight = (m[0] * noise.eps[0]) if noise.groups == 1 else (m * noise.eps).sum(0)
    bias = noise.bias.mT @ coeff if noise.bias is not None else None
    return weight, bias
