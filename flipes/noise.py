"""Counter-keyed sampling of Flipout noise: ε, sign bits and bias noise.

Wen et al., "Flipout: Efficient Pseudo-Independent Weight Perturbations on Mini-Batches",
ICLR 2018 (arXiv:1803.04386).

Every random tensor of a generation is a pure function of ``(seed, generation, group, slot,
stream)``: a fresh generator is keyed by a hash of that tuple. Nothing needs to be stored beyond
a generation, and a group's noise does not depend on which process samples it or on which other
groups exist. Streams are reproducible per device type (CPU and CUDA generators differ).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

EPS, SIGNS, BIAS = 0, 1, 2  # stream ids inside one (seed, generation, group, slot) key


def stream_seed(seed: int, generation: int, group: int, slot: int, stream: int) -> int:
    """A 63-bit generator seed derived from the full key (blake2b, so keys never collide in practice)."""
    msg = b"flipes/v1/" + b"/".join(str(int(v)).encode() for v in (seed, generation, group, slot, stream))
    return int.from_bytes(hashlib.blake2b(msg, digest_size=8).digest(), "little") >> 1


def generator(device: torch.device, seed: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def rademacher(numel: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``numel`` independent ±1 values in ``dtype``, drawn as packed random bits.

    One 64-bit draw gives 64 signs; a 256×8 lookup table unpacks each byte into 8 values of the
    compute dtype in one gather (on CPU ~20× faster than ``torch.randint`` per element).
    """
    words = torch.empty((numel + 63) // 64, dtype=torch.int64, device=device)
    words.random_(-(2**63), None, generator=gen)  # the full 64-bit range: every bit is fair
    bits = (torch.arange(256, device=device)[:, None] >> torch.arange(8, device=device)) & 1
    table = (bits * 2 - 1).to(dtype)  # (256, 8): byte value -> its 8 signs
    return table.index_select(0, words.view(torch.uint8).int()).view(-1)[:numel]


def gaussian(shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.randn(shape, generator=gen, dtype=dtype, device=device)


@dataclass
class SlotNoise:
    """The noise of one perturbed weight ("slot") for the members a process evaluates.

    Member ``n`` of local group ``g`` (members are contiguous, ``group_size`` per group) has the
    weight perturbation ``σ·u_n = eps[g] ∘ (r_n ⊗ s_n)`` (broadcast over kernel dims) and the bias
    perturbation ``bias[n]``. ``eps`` and ``bias`` already include σ.

    Shape:
        - eps: ``(G, *weight.shape)``, σ·ε per group
        - s: ``(n, in_channels)``, r: ``(n, out_channels)``, ±1 in the weight's dtype
        - bias: ``(n, out_channels)`` or ``None``; bias_r = bias ∘ r (used by the forward)
    """

    eps: Tensor
    s: Tensor
    r: Tensor
    bias: Tensor | None
    bias_r: Tensor | None

    @property
    def size(self) -> int:
        return self.s.shape[0]

    @property
    def groups(self) -> int:
        return self.eps.shape[0]


def sample_slot(
    *,
    seed: int,
    generation: int,
    slot: int,
    groups: range,
    group_size: int,
    weight: Tensor,
    in_channels: int,
    out_channels: int,
    has_bias: bool,
    sigma: float,
    mirrored: bool,
) -> SlotNoise:
    """Sample one slot's noise for the given (global) group indices.

    With ``mirrored``, member ``2k+1`` of a group reuses ``s_{2k}``, takes ``r = -r_{2k}`` and the
    negated bias noise, so its perturbation is exactly ``-u_{2k}``.
    """
    dtype, device = weight.dtype, weight.device
    distinct = group_size // 2 if mirrored else group_size
    eps, s, r, b = [], [], [], []
    for g in groups:
        key = (seed, generation, g, slot)
        eps.append(gaussian(tuple(weight.shape), generator(device, stream_seed(*key, EPS)), dtype, device))
        bits = rademacher(distinct * (in_channels + out_channels), generator(device, stream_seed(*key, SIGNS)), dtype, device)
        s.append(bits[: distinct * in_channels].view(distinct, in_channels))
        r.append(bits[distinct * in_channels :].view(distinct, out_channels))
        if has_bias:
            b.append(gaussian((distinct, out_channels), generator(device, stream_seed(*key, BIAS)), dtype, device))
    s_all, r_all = torch.cat(s), torch.cat(r)
    b_all = torch.cat(b).mul_(sigma) if has_bias else None
    if mirrored:
        s_all = s_all.repeat_interleave(2, dim=0)
        r_all = _antithetic(r_all)
        b_all = _antithetic(b_all) if b_all is not None else None
    eps_all = torch.stack(eps).mul_(sigma)
    return SlotNoise(eps_all, s_all, r_all, b_all, b_all * r_all if b_all is not None else None)


def _antithetic(x: Tensor) -> Tensor:
    """Rows ``[a, b, ...]`` -> ``[a, -a, b, -b, ...]``."""
    return torch.stack((x, -x), dim=1).flatten(0, 1)
