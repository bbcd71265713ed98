"""Per-env seeded uniforms and normals: SplitMix64 (Steele, Lea & Flood, OOPSLA 2014) in torch int64 arithmetic.

``reset(seed=[s_0, ..., s_{N-1}])`` must give env ``i`` an initial state that depends on ``s_i``
alone (not on N, nor on which other envs share the batch), so that a population split across
processes draws the same episodes. One torch generator per env would cost N generator calls; this
counter-based generator is a few vectorized integer ops for all envs, on any device, with the same
numbers everywhere.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# SplitMix64's constants as int64 (two's complement); torch's int64 products wrap like uint64 ones
GOLDEN_GAMMA = 0x9E3779B97F4A7C15 - 2**64
MIX_1 = 0xBF58476D1CE4E5B9 - 2**64
MIX_2 = 0x94D049BB133111EB - 2**64


def _shr(z: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic: it copies the sign bit)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def mix64(z: Tensor) -> Tensor:
    """SplitMix64's output function: a bijection of 64-bit words that scrambles every bit."""
    z = (z ^ _shr(z, 30)) * MIX_1
    z = (z ^ _shr(z, 27)) * MIX_2
    return z ^ _shr(z, 31)


def splitmix64(seeds: Tensor, n: int) -> Tensor:
    """``(N,) int64 -> (N, n) int64``: the first ``n`` outputs of SplitMix64 seeded with each seed."""
    steps = torch.arange(1, n + 1, dtype=torch.int64, device=seeds.device) * GOLDEN_GAMMA
    return mix64(seeds[:, None] + steps)


def uniform(seeds: Tensor, n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``(N,) int64 -> (N, n)``: uniforms in [0, 1) from the top 53 bits of each SplitMix64 output."""
    return (_shr(splitmix64(seeds, n), 11).double() * 2.0**-53).to(dtype)


def normal(seeds: Tensor, n: int, skip: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    """``(N,) int64 -> (N, n)``: standard normals, the Box–Muller transform (Box & Muller, 1958) of
    SplitMix64 outputs ``skip + 1 ... skip + 2n`` (``skip``: outputs already used for uniforms)."""
    u = uniform(seeds, skip + 2 * n)[:, skip:]
    radius = torch.log1p(-u[:, :n]).mul_(-2.0).sqrt_()  # 1 - u in (0, 1]: the log is finite
    return radius.mul_(torch.cos(u[:, n:] * (2 * math.pi))).to(dtype)
