"""Explicit per-member references: materialized weights built straight from the sampled noise.

Written independently of flipes' own gradient code: index arithmetic, not block_diagonal().
"""

from __future__ import annotations

import torch
from torch import Tensor

from flipes.noise import SlotNoise


def member_deltas(noise: SlotNoise, weight_shape: tuple[int, ...], conv_groups: int = 1) -> Tensor:
    """σ·u_n for every member: ``(N, *weight_shape)`` with ``σu_n[o, i, ...] = σε_g[o, i, ...] r_n[o] s_n[c(o, i)]``."""
    n, g = noise.size, noise.groups
    out, in_g = weight_shape[0], weight_shape[1]
    out_g = out // conv_groups
    dev = noise.s.device
    o = torch.arange(out, device=dev)[:, None]
    channel = (o // out_g) * in_g + torch.arange(in_g, device=dev)[None, :]  # input channel of weight entry (o, i)
    signs = noise.r[:, :, None] * noise.s[:, channel]  # (N, out, in_g)
    signs = signs.view(n, out, in_g, *(1,) * (len(weight_shape) - 2))
    group_of = torch.arange(n, device=dev) // (n // g)
    if noise.factors is None:
        eps = noise.eps
    else:  # low rank: σε_g = A_g B_g, contracted over the rank index (independently of dense_eps())
        a, b = noise.factors
        eps = torch.einsum("gor,gr...->go...", a, b)
    return eps[group_of] * signs


def centered_ranks_distinct(f: Tensor) -> Tensor:
    """Centered ranks for distinct values, the textbook way (argsort of argsort)."""
    ranks = f.argsort().argsort().to(f.dtype)
    return ranks / (len(f) - 1) - 0.5
