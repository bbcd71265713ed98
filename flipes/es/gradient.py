"""The ES gradient of a Flipout weight in one GEMM per ε group (Wen et al., ICLR 2018, Sec. 3.2).

    Σ_n c_n σu_n = Σ_g σε_g ∘ (R_gᵀ diag(c_g) S_g)        (u_n = ε_g ∘ r_n s_nᵀ)

The (out × members)·(members × in) product replaces N materialized perturbations.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flipes.nn.base import PerturbedWeight
from flipes.noise import DenseNoise, SlotNoise

# the most bytes that tell's per-group copies of one weight (R_gᵀ diag(c_g) S_g, low-rank ε, their product) take at once
GROUP_CHUNK_BYTES = 16 * 2**20


def paired(coeff: Tensor) -> Tensor:
    """``c_2k - c_2k+1``: the coefficient of each mirrored pair, entering the sums once."""
    return coeff[0::2] - coeff[1::2]


def distinct_rows(noise: SlotNoise, coeff: Tensor, pairs: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """``(s, r, bias_r, c)`` with each mirrored pair entering once as ``c_2k - c_2k+1`` (``pairs``, where the
    caller made it once for several slots): twins share ``s`` and ``bias_r`` and negate ``r``, so this halves
    the work of the gradient."""
    if not noise.mirrored:
        return noise.s, noise.r, noise.bias_r, coeff
    bias_r = None if noise.bias_r is None else noise.bias_r[0::2]
    return noise.s[0::2], noise.r[0::2], bias_r, paired(coeff) if pairs is None else pairs


def block_diagonal(m: Tensor, conv_groups: int) -> Tensor:
    """``(G, out, in)`` -> ``(G, out, in // conv_groups)``: the entries a grouped conv connects."""
    if conv_groups == 1:
        return m
    g, out, inp = m.shape
    blocks = m.view(g, conv_groups, out // conv_groups, conv_groups, inp // conv_groups)
    return torch.diagonal(blocks, dim1=1, dim2=3).permute(0, 3, 1, 2).reshape(g, out, inp // conv_groups)


def member_perturbations(noise: SlotNoise, conv_groups: int) -> Tensor:
    """σu_n of every member, ``(n, *weight.shape)``: ``σε_g ∘ r_n s_nᵀ`` materialized (a grouped conv's entries taken
    as :func:`block_diagonal` takes them), for a dense module that reads a Flipout weight as a plain parameter;
    ``n × numel`` values."""
    eps = noise.dense_eps()
    signs = block_diagonal(noise.r[:, :, None] * noise.s[:, None, :], conv_groups)
    signs = signs.view(*signs.shape, *(1,) * (eps.dim() - 3))  # over a conv's kernel
    return eps.repeat_interleave(noise.size // noise.groups, dim=0) * signs


class MemberPerturbations:
    """:func:`member_perturbations` of one slot, made at the first call and kept: a dense module reading a Flipout
    weight gets this in its ``member_noise``, in the weight's own shape (``PerturbedWeight.stored``)."""

    __slots__ = ("_noise", "_pw", "_value")

    def __init__(self, noise: SlotNoise, pw: PerturbedWeight) -> None:
        self._noise, self._pw = noise, pw
        self._value: Tensor | None = None

    def __call__(self) -> Tensor:
        if self._value is None:
            self._value = self._pw.stored(member_perturbations(self._noise, self._pw.conv_groups))
        return self._value


def weighted_perturbation(
    pw: PerturbedWeight, noise: SlotNoise, coeff: Tensor, pairs: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """``(Σ_n c_n σu_n, Σ_n c_n σε_b,n)`` over the local members of one slot (``pairs``: ``paired(coeff)``, if made)."""
    s, r, bias_r, c = distinct_rows(noise, coeff, pairs)
    if s.dtype in (torch.float16, torch.bfloat16):  # a sum over N members: accumulate in float32
        s, r, c = s.float(), r.float(), c.float()
        bias_r = None if bias_r is None else bias_r.float()
    g, n = noise.groups, s.shape[0]
    rc = r * c.unsqueeze(1)
    rcs, ss = rc.view(g, n // g, -1).mT, s.reshape(g, n // g, -1)
    # R_gᵀ diag(c_g) S_g, the low-rank ε and their product are each a copy of the weight per group: made for a chunk of
    # groups at a time, so that tell's temporaries stay near GROUP_CHUNK_BYTES however many groups there are
    # (all groups in one chunk where they fit: one bmm, as small layers always are)
    step = max(1, GROUP_CHUNK_BYTES // max(1, pw.weight.numel() * max(rc.element_size(), pw.weight.element_size())))
    if step >= g:  # no slicing: a tell of small layers pays per layer, every generation
        return _weighted_groups(pw, rcs, ss, noise.dense_eps()), _weighted_bias(rc, bias_r)
    weight = None
    for start in range(0, g, step):
        chunk = slice(start, min(start + step, g))
        part = _weighted_groups(pw, rcs[chunk], ss[chunk], noise.dense_eps(chunk))  # low-rank ε materialized here alone
        weight = part if weight is None else weight.add_(part)
    return weight, _weighted_bias(rc, bias_r)


def _weighted_groups(pw: PerturbedWeight, rcs: Tensor, ss: Tensor, eps: Tensor) -> Tensor:
    """``Σ_g (R_gᵀ diag(c_g) S_g) ∘ σε_g`` over the groups given."""
    m = block_diagonal(torch.bmm(rcs, ss), pw.conv_groups)
    if eps.dim() > 3:
        m = m.view(*m.shape, *(1,) * (eps.dim() - 3))  # broadcast over kernel dims
    return (m * eps).squeeze(0) if m.shape[0] == 1 else (m * eps).sum(0)  # one group: its product, no sum


def _weighted_bias(rc: Tensor, bias_r: Tensor | None) -> Tensor | None:
    """``Σ_n c_n r_n ∘ (σε_b,n ∘ r_n)``."""
    return None if bias_r is None else (rc * bias_r).sum(0)


def weighted_dense(noise: DenseNoise, coeff: Tensor) -> Tensor:
    """``Σ_n c_n σε_n`` of a dense per-member parameter (mirrored twins enter once, as ``c_2k - c_2k+1``),
    accumulated in float32 at least."""
    delta, c = (noise.delta[0::2], coeff[0::2] - coeff[1::2]) if noise.mirrored else (noise.delta, coeff)
    wide = torch.promote_types(delta.dtype, torch.float32)
    return torch.tensordot(c.to(wide), delta.to(wide), dims=1)


def accumulate(sums: dict[int, Tensor], p: Tensor | None, g: Tensor | None) -> None:
    """Add ``g`` to the sum of parameter ``p`` (keyed by ``id``): a parameter several slots use (tied
    weights, a shared bias) gets one sum; a missing part or a frozen parameter adds nothing."""
    if p is not None and g is not None and p.requires_grad:
        sums[id(p)] = sums[id(p)] + g if id(p) in sums else g
