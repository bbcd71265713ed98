"""Explicit per-member references: materialized weights built straight from the sampled noise.

Written independently of flipes' own gradient code: index arithmetic, not block_diagonal().
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import flipes
from flipes.noise import SlotNoise


def member_deltas(noise: SlotNoise, weight_shape: tuple[int, ...], conv_groups: int = 1, transposed: bool = False) -> Tensor:
    """σ·u_n for every member: ``(N, *weight_shape)`` with ``σu_n[o, i, ...] = σε_g[o, i, ...] r_n[o] s_n[c(o, i)]``
    (``weight_shape`` the noise's ``(out, in // conv_groups, *kernel)``); ``transposed``: in the stored shape of a
    weight kept ``(in, out // conv_groups, *kernel)``, entry ``(i, o')`` being ``(o, i mod in_g)`` of the above with
    ``o = (i div in_g)·out_g + o'``."""
    deltas = _layout_deltas(noise, weight_shape, conv_groups)
    if not transposed:
        return deltas
    out, in_g = weight_shape[0], weight_shape[1]
    dev = deltas.device
    i = torch.arange(in_g * conv_groups, device=dev)[:, None]
    o = (i // in_g) * (out // conv_groups) + torch.arange(out // conv_groups, device=dev)[None, :]  # (in, out_g)
    return deltas[:, o, i % in_g]


def _layout_deltas(noise: SlotNoise, weight_shape: tuple[int, ...], conv_groups: int) -> Tensor:
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


def member_perturbations(es: flipes.FlipES, model: nn.Module) -> dict[str, Tensor]:
    """Inside a population: ``(N, *shape)`` perturbations ``σu_n`` of every evolved parameter, by name."""
    names = {id(p): name for name, p in model.named_parameters()}
    out: dict[str, Tensor] = {}
    for layer in es.layers:
        for pw, noise in zip(layer.perturbed_weights(), layer.noise, strict=True):
            if pw.weight.requires_grad:
                out[names[id(pw.weight)]] = member_deltas(noise, tuple(pw.layout.shape), pw.conv_groups, pw.transposed)
            if noise.bias is not None:
                out[names[id(pw.bias)]] = noise.bias
    # the noise the layers hold: with hold_noise=False the block that the whole population's forward sampled
    held = es._noise if isinstance(es._noise, tuple) else es._noise.noise
    for (_, _, p), noise in zip(es.dense_slots, held[1], strict=True):
        out[names[id(p)]] = noise.delta
    return out


def member_parameters(es: flipes.FlipES, model: nn.Module) -> list[dict[str, Tensor]]:
    """Inside a population: every member's explicit parameters ``θ + σu_n``, by name (frozen ones left out)."""
    params = dict(model.named_parameters())
    deltas = member_perturbations(es, model)
    return [{name: params[name] + d[n] for name, d in deltas.items()} for n in range(len(es.members))]
