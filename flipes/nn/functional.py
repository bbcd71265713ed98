"""Population forward passes of Flipout layers (Wen et al., ICLR 2018, arXiv:1803.04386).

Member ``n`` sees ``W_n = W̄ + σ·ε ∘ (r_n s_nᵀ)`` and ``b_n = b̄ + σ·ε_b,n``; batched over members:

    Y = X W̄ᵀ + b̄ + (((X ∘ S) (σε)ᵀ) + σE_b ∘ R) ∘ R        (R ∘ R = 1)

two GEMMs and two elementwise passes, whatever the population size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from flipes.noise import SlotNoise


def check_members(layer: str, x: Tensor, noise: SlotNoise) -> None:
    if x.dim() < 2 or x.shape[0] != noise.size:
        raise ValueError(
            f"{layer}: input of shape {tuple(x.shape)} inside a population of {noise.size} members; "
            f"inputs must be members first, (members, ..., features) with members == {noise.size}"
        )


def flipout_linear(x: Tensor, weight: Tensor, bias: Tensor | None, noise: SlotNoise, layer: str = "FlipoutLinear") -> Tensor:
    """``x``: ``(N, *B, in)`` -> ``(N, *B, out)``, member ``n`` through its own perturbed weights."""
    check_members(layer, x, noise)
    n, g = noise.size, noise.groups
    if x.dim() == 2:  # one example per member (the rollout case): 2-D GEMMs, bias noise folded in
        xs = x * noise.s
        if g == 1:
            eps_t = noise.eps[0].T
            pert = xs @ eps_t if noise.bias_r is None else torch.addmm(noise.bias_r, xs, eps_t)
        else:
            pert = torch.bmm(xs.view(g, n // g, -1), noise.eps.mT).view(n, -1)
            if noise.bias_r is not None:
                pert += noise.bias_r
        return F.linear(x, weight, bias).addcmul_(pert, noise.r)
    xb = x.reshape(n, -1, x.shape[-1])  # (N, B, in)
    xs = xb * noise.s.unsqueeze(1)
    pert = torch.matmul(xs.view(g, -1, xs.shape[-1]), noise.eps.mT).view(n, xb.shape[1], -1)
    if noise.bias_r is not None:
        pert += noise.bias_r.unsqueeze(1)
    out = F.linear(xb, weight, bias).addcmul_(pert, noise.r.unsqueeze(1))
    return out.view(*x.shape[:-1], out.shape[-1])


def flipout_conv(
    x: Tensor,
    bias: Tensor | None,
    noise: SlotNoise,
    conv: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    weight: Tensor,
    spatial_dims: int = 2,
    layer: str = "FlipoutConv2d",
) -> Tensor:
    """``x``: ``(N, *B, C, *spatial)``; signs are per (member, channel), broadcast over space.

    ``conv(x, w, b)`` is the layer's own convolution (stride, padding mode, dilation, groups), so
    the perturbation sees exactly the padding of the mean path: a per-channel sign commutes with
    any padding mode.
    """
    check_members(layer, x, noise)
    n, g = noise.size, noise.groups
    lead = x.shape[: x.dim() - spatial_dims - 1]
    flat = x.reshape(-1, *x.shape[len(lead) :])  # (N*B, C, *spatial)
    per = flat.shape[0] // n  # examples per member
    bshape = (n, 1, -1) + (1,) * spatial_dims  # (member, example, channel, *space)
    xs = (flat.view(n, per, *flat.shape[1:]) * noise.s.view(bshape)).view_as(flat)
    chunks = xs.chunk(g) if g > 1 else (xs,)
    pert = torch.cat([conv(c, noise.eps[i], None) for i, c in enumerate(chunks)])
    out = conv(flat, weight, bias)
    pert = pert.view(n, per, *out.shape[1:])
    if noise.bias_r is not None:
        pert += noise.bias_r.view(bshape)
    out = out.view_as(pert).addcmul_(pert, noise.r.view(bshape))
    return out.view(*lead, *out.shape[2:])
