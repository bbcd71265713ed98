"""Population forward passes of Flipout layers (Wen et al., ICLR 2018, arXiv:1803.04386).

Member ``n`` sees ``W_n = W̄ + σ·ε ∘ (r_n s_nᵀ)`` and ``b_n = b̄ + σ·ε_b,n``; batched over members:

    Y = X W̄ᵀ + b̄ + (((X ∘ S) (σε)ᵀ) + σE_b ∘ R) ∘ R        (R ∘ R = 1)

two GEMMs and two elementwise passes, whatever the population size. With low-rank noise
(``σε = A B``, rank r) the perturbation is ``((X ∘ S) Bᵀ) Aᵀ``: O(N·r·(in + out)) instead of
O(N·in·out), so the population costs little more than the plain batch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from flipes.nn.base import PerturbedWeight
from flipes.nn.inputs import refuse_non_tensor
from flipes.noise import SlotNoise, compiling, from_boundary


def check_members(layer: str, x: Tensor, members: int, min_dim: int = 2, like: Tensor | None = None) -> None:
    """Inputs are members first: ``(N, ...)``, or ``(N·k, ...)`` with k examples per member, member-major; a NumPy
    array or list is refused naming the conversion to the dtype and device of ``like`` (:func:`refuse_non_tensor`)."""
    try:
        dims = x.dim()
    except AttributeError:
        refuse_non_tensor(layer, x, like)
        raise
    if dims < min_dim or x.shape[0] == 0 or x.shape[0] % members:
        raise ValueError(
            f"{layer}: input of shape {tuple(x.shape)} inside a population of {members} members; "
            f"inputs must be members first: (members, ..., features) with members == {members}, "
            f"or k examples per member, member-major ({members}·k, ..., features)"
        )


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype an enclosing ``torch.autocast`` on ``device_type`` runs linear layers in, or ``None``."""
    if _DEVICE_AUTOCAST:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    if device_type == "cpu":  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    return torch.get_autocast_gpu_dtype() if device_type == "cuda" and torch.is_autocast_enabled() else None


_DEVICE_AUTOCAST = hasattr(torch, "get_autocast_dtype")  # the per-device autocast queries of torch >= 2.4


def _autocast_query(mps: bool) -> Callable[[], bool]:
    """Whether any torch.autocast is on, in one call (private in torch; without it, every layer call asks per
    device). torch's one call leaves out MPS (2.13 does): where MPS can hold tensors (``mps``), it is asked too,
    else a float16 autocast on MPS went unseen (a half-precision product met float32 buffers; tell summed in it)."""
    query = getattr(torch._C, "_is_any_autocast_enabled", None)
    if query is None:
        return lambda: True
    if mps and _DEVICE_AUTOCAST:
        return lambda: query() or torch.is_autocast_enabled("mps")
    return query


_any_autocast = _autocast_query(mps=torch.backends.mps.is_available())


def without_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Leaves an enclosing ``torch.autocast`` on ``device``'s type: for the ES sums over parameters (the
    gradient, a member's parameters), which must not round like a half-precision forward pass."""
    if not _any_autocast():
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False) if autocast_dtype(device.type) else contextlib.nullcontext()


def flipout_linear(x: Tensor, weight: Tensor, bias: Tensor | None, noise: SlotNoise, layer: str = "FlipoutLinear") -> Tensor:
    """``x``: ``(N, *B, in)`` -> ``(N, *B, out)``, member ``n`` through its own perturbed weights
    (or ``(N·k, *B, in)``: k examples per member, member-major).

    Under ``torch.autocast`` it computes in the autocast dtype, as ``nn.Linear`` does there (float64
    stays float64): the input, mean weights and noise are cast first, since the in-place sums below
    would otherwise meet a half-precision product and a float32 buffer."""
    check_members(layer, x, noise.size, like=weight)
    if not _any_autocast():  # the usual case, without asking for the input's device (~0.3 µs a layer call)
        return _flipout_linear(x, weight, bias, noise, layer)
    dtype = autocast_dtype(x.device.type)
    if dtype is None or weight.dtype == torch.float64:
        return _flipout_linear(x, weight, bias, noise, layer)
    with torch.autocast(x.device.type, enabled=False):
        x = x.to(dtype) if x.is_floating_point() and x.dtype != torch.float64 else x
        return _flipout_linear(x, weight.to(dtype), None if bias is None else bias.to(dtype), noise.to(dtype), layer)


def _flipout_linear(x: Tensor, weight: Tensor, bias: Tensor | None, noise: SlotNoise, layer: str) -> Tensor:
    n = noise.s.shape[0]  # noise.size
    shape = x.shape
    if shape[-1] != weight.shape[-1]:
        fix = (
            f"inside a population inputs are members first: with k examples per member as (members, k, ...), "
            f"flatten only each example's features, counted from the end (nn.Flatten(start_dim=-3) after a Conv2d's "
            f"(C, H, W), -2 after a Conv1d's, -4 after a Conv3d's: a plain batch flattens alike), or pass them as ({n}·k, ...)"
            if shape[-1] and shape[-1] % weight.shape[-1] == 0  # examples flattened into the features (none: not so)
            else f"give it in_features={shape[-1]} (an env's observation size, say), or feed it {weight.shape[-1]}"
        )
        raise ValueError(
            f"{layer}: input of shape {tuple(shape)} has {shape[-1]} features, the layer takes {weight.shape[-1]}; {fix}"
        )
    if shape[0] == n and (len(shape) == 2 or math.prod(shape[1:-1]) == 1):
        # one example per member, (N, in) or (N, 1, in) (RolloutFitness's (members, episodes, obs)): 2-D GEMMs,
        # bias noise folded in; chosen by the input's shape alone, so every process count takes this path.
        # A policy calls it at every step of a rollout: its Python is kept to the few lookups it needs
        flat = len(shape) == 2
        x = x if flat else x.reshape(n, shape[-1])
        grad = torch.is_grad_enabled()
        one_group = noise.factors is None and noise.eps.shape[0] == 1  # full rank, G = 1: the usual case
        if not one_group and noise.factors is None and not grad and x.is_contiguous():  # full rank, G > 1
            out = _one_per_member_by_group(x, weight, bias, noise)
            return out if flat else out.view(*shape[:-1], -1)
        xs = torch.mul(x, noise.s, out=noise.scratch(x))
        if one_group:  # _grouped_product's product of one group, with the bias noise folded in
            own_bias = noise.bias_eps is None and noise.bias_r is not None
            out = torch.addmm(noise.bias_r, xs, noise.eps_t(0)) if own_bias else torch.mm(xs, noise.eps_t(0))
        else:
            out = _grouped_product(xs, noise, with_bias=True)
        # out = pert ∘ r + b̄, then the mean GEMM accumulates into it: no second N×out tensor
        if bias is None:
            out.mul_(noise.r)
        elif grad:
            out.mul_(noise.r).add_(bias)
        else:
            torch.addcmul(bias, out, noise.r, out=out)
        if one_group or noise.groups == 1:
            out.addmm_(from_boundary(x), weight.T)
            return out if flat else out.view(*shape[:-1], -1)
        m = n // noise.groups
        groups = [slice(i * m, (i + 1) * m) for i in range(noise.groups)]  # group by group: see _mean_product
        if torch.is_grad_enabled():  # the same sums out of place, for autograd
            return torch.cat([torch.addmm(out[rows], from_boundary(x[rows]), weight.T) for rows in groups]).view(*shape[:-1], -1)
        for rows in groups:
            out[rows].addmm_(from_boundary(x[rows]), weight.T)
        return out.view(*shape[:-1], -1)
    xb = x.reshape(n, -1, x.shape[-1])  # (N, B, in)
    if noise.factors is not None:  # low rank: the signs go into per-member factors, not into the (N, B, in) input
        b_n, a_n = _member_factors(noise)
        out = _mean_product(xb, weight, bias, noise.groups)
        m = n // noise.groups
        # group by group, each group's operands from a 64-byte boundary: a batched product rounds a member by where
        # its block lies (see from_boundary), which a batch over all of a process's groups ties to the process count
        for rows in [slice(i * m, (i + 1) * m) for i in range(noise.groups)] if noise.groups > 1 else [slice(None)]:
            t = torch.bmm(from_boundary(xb[rows]), from_boundary(b_n[rows]).mT)  # (m, B, r): x_n (s_n ∘ B_g)ᵀ
            if noise.bias_eps is not None:
                t = torch.cat((t, t.new_ones(*t.shape[:2], 1)), 2)
            out[rows].baddbmm_(t, from_boundary(a_n[rows]).mT)  # + t (r_n ∘ A_g)ᵀ, in place
        if noise.bias_eps is None and noise.bias_r is not None:  # a bias of its own beside a tied weight
            out += noise.bias.unsqueeze(1)
        return out.reshape(*x.shape[:-1], out.shape[-1])
    xs = xb * noise.s.unsqueeze(1)
    pert = _grouped_product(xs.reshape(-1, xs.shape[-1]), noise).view(n, xb.shape[1], weight.shape[0])  # not -1: B may be 0
    if noise.bias_r is not None:
        pert += noise.bias_r.unsqueeze(1)
    out = _mean_product(xb, weight, bias, noise.groups).addcmul_(pert, noise.r.unsqueeze(1))
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _one_per_member_by_group(x: Tensor, weight: Tensor, bias: Tensor | None, noise: SlotNoise) -> Tensor:
    """The one-example-per-member forward of full-rank noise in G > 1 groups, without autograd: the very
    products of the general path (each group's rows by themselves, see ``_grouped_product``), made on row
    views of buffers that live for the generation. Slicing G groups' rows of five tensors on every call
    cost pgpe's 8 groups a fifth of a small policy's rollout (~50 µs a layer call on a CPU)."""
    g, n = noise.groups, x.shape[0]
    xc, x_rows = noise.scratch_blocks("x", x.shape[1], x)
    padded = xc.dim() == 3  # blocks padded to 64-byte boundaries (see scratch_blocks): whole ops on (G, m, ·) views
    xc.copy_(x.view(xc.shape) if padded else x)  # the input's rows as views made once: a copy of N×in costs less than G slices
    xs, xs_rows = noise.scratch_blocks("xs", x.shape[1], x)
    torch.mul(xc, noise.grouped("s") if padded else noise.s, out=xs)
    out, out_rows = noise.scratch_blocks("out", weight.shape[0], x)
    bias_rows = None if noise.bias_r is None else noise.row_blocks("bias_r")
    eps_t = noise.eps_ts()
    for i in range(g):  # σε x∘s + the bias noise, into each group's rows
        if bias_rows is None:
            torch.mm(xs_rows[i], eps_t[i], out=out_rows[i])
        else:
            torch.addmm(bias_rows[i], xs_rows[i], eps_t[i], out=out_rows[i])
    r = noise.grouped("r") if out.dim() == 3 else noise.r
    if bias is None:
        out.mul_(r)
    else:
        torch.addcmul(bias, out, r, out=out)
    weight_t = weight.T
    for i in range(g):
        out_rows[i].addmm_(x_rows[i], weight_t)
    # a copy: the buffer serves the layer's next call
    return out.clone(memory_format=torch.contiguous_format).view(n, -1) if out.dim() == 3 else out.clone()


def _mean_product(x: Tensor, weight: Tensor, bias: Tensor | None, groups: int) -> Tensor:
    """``F.linear(x, weight, bias)`` of the mean weight, one call per group of rows (``x`` member-major).

    A CPU BLAS may round a row of a product differently with other rows beside it (MKL does, from
    ~128 input features at a few dozen rows), so one product over all the groups a process holds
    would make a member's bits depend on the process count; per group, a process of one group and a
    process of all of them make the same calls on the same rows.
    """
    if groups == 1:
        return F.linear(from_boundary(x), weight, bias)
    if torch.is_grad_enabled() or not x.is_contiguous():
        return torch.cat([F.linear(from_boundary(rows), weight, bias) for rows in x.chunk(groups)])
    # as F.linear computes a contiguous batch (one addmm on its 2-D view), written in place group by group
    x2 = x.view(-1, x.shape[-1])
    out = x2.new_empty(x2.shape[0], weight.shape[0])
    m = x2.shape[0] // groups
    for i in range(groups):
        rows = slice(i * m, (i + 1) * m)
        if bias is None:
            torch.mm(from_boundary(x2[rows]), weight.T, out=out[rows])
        else:
            torch.addmm(bias, from_boundary(x2[rows]), weight.T, out=out[rows])
    return out.view(*x.shape[:-1], weight.shape[0])


def _member_factors(noise: SlotNoise) -> tuple[Tensor, Tensor]:
    """Low-rank factors with member ``n``'s signs folded in: ``s_n ∘ B_g`` ``(N, r, in)`` and ``r_n ∘ A_g``
    ``(N, out, r)`` (one more column ``r_n ∘ σε_b,g`` with bias noise). O(N·r·(in + out)): far less
    than signing the ``(N, B, in)`` input and the ``(N, B, out)`` perturbation."""
    a, b = noise.factors
    n, g = noise.size, noise.groups

    def per_member(t: Tensor) -> Tensor:
        return t.expand(n, *t.shape[1:]) if g == 1 else t.repeat_interleave(n // g, dim=0)

    b_n = per_member(b) * noise.s.unsqueeze(1)
    a_n = per_member(a) * noise.r.unsqueeze(2)
    if noise.bias_eps is not None:
        a_n = torch.cat((a_n, (per_member(noise.bias_eps) * noise.r).unsqueeze(2)), 2)
    return b_n, a_n


def _grouped_product(xs: Tensor, noise: SlotNoise, with_bias: bool = False) -> Tensor:
    """``(rows, in) -> (rows, out)``, rows member-major: each group's rows times its σεᵀ (two thin
    GEMMs if low-rank); ``with_bias``: plus each member's bias noise (folded into the GEMM).

    One 2-D product per group, never one batched over the groups a process holds: batched and
    single products round differently (also a batch of one), and a group must give the same bits on
    any process count. The price is a GEMM call per group: keep G modest on a GPU.
    """
    g = noise.groups
    m = xs.shape[0] // g
    low_rank = noise.factors is not None
    own_bias = with_bias and noise.bias_eps is None and noise.bias_r is not None  # full rank, or beside a tied weight
    if g == 1 and not low_rank:  # one group: the same product with no slicing (each slice or select costs ~1 µs)
        return torch.addmm(noise.bias_r, xs, noise.eps_t(0)) if own_bias else torch.mm(xs, noise.eps_t(0))
    # written in place group by group; under autograd (backprop noise) out= is not allowed: concatenated
    out = None if torch.is_grad_enabled() else xs.new_empty(xs.shape[0], (noise.factors[0] if low_rank else noise.eps).shape[1])
    parts = []
    for i in range(g):
        rows = slice(i * m, (i + 1) * m)
        into = None if out is None else out[rows]
        if low_rank:  # ((x∘s) Bᵀ) Aᵀ, the group's bias noise as one more rank
            a, t = noise.factor(0, i), from_boundary(xs[rows]) @ noise.factor(1, i).T
            if with_bias and noise.bias_eps is not None:
                t = torch.cat((t, t.new_ones(m, 1)), 1)
                a = torch.cat((a, noise.bias_eps[i : i + 1].T), 1)
            parts.append(torch.mm(t, a.T, out=into))
        elif own_bias:
            parts.append(torch.addmm(noise.bias_r[rows], from_boundary(xs[rows]), noise.eps_t(i), out=into))
        else:
            parts.append(torch.mm(from_boundary(xs[rows]), noise.eps_t(i), out=into))
    result = out if out is not None else parts[0] if g == 1 else torch.cat(parts)
    if low_rank and own_bias:
        result = result.add_(noise.bias_r) if out is not None else result + noise.bias_r
    return result


def flipout_conv(
    x: Tensor,
    bias: Tensor | None,
    noise: SlotNoise,
    conv: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    weight: Tensor,
    spatial_dims: int = 2,
    layer: str = "FlipoutConv2d",
    transposed: bool = False,
    stored: bool = False,
) -> Tensor:
    """``x``: ``(N, *B, C, *spatial)``; signs are per (member, channel), broadcast over space.

    ``conv(x, w, b)`` is the layer's own convolution (stride, padding mode, dilation, groups), so
    the perturbation sees exactly the padding of the mean path: a per-channel sign commutes with
    any padding mode. Low-rank noise (``σε = A B``) runs as ``conv(x ∘ s, B)`` into r channels and a
    1×1 mixing by ``A``; with channel groups it is materialized (a rank-r kernel is not grouped).
    ``transposed``: ``conv`` is a transposed convolution, whose kernel is stored ``(in, out // groups, *kernel)``
    (the noise's kernels are put in that shape once per generation, unless ``stored``: drawn in it, as a backprop
    noise model draws); it is linear in each input and each output channel alike, so the same signs give one kernel
    sample per member.
    """
    check_members(layer, x, noise.size, spatial_dims + 2, weight)
    n, g = noise.size, noise.groups
    channels = noise.s.shape[1]
    if x.shape[-spatial_dims - 1] != channels:  # before the sign flip fails on a bare size clash
        raise ValueError(
            f"{layer}: input of shape {tuple(x.shape)} has {x.shape[-spatial_dims - 1]} channels in dim "
            f"{x.dim() - spatial_dims - 1}, the layer takes {channels}: inputs are (members, ..., C, "
            f"{('L', 'H, W', 'D, H, W')[spatial_dims - 1]}), channels before space"
            + (f" (channels last: x.movedim(-1, {-spatial_dims - 1}))" if x.shape[-1] == channels else "")
        )
    lead = x.shape[: x.dim() - spatial_dims - 1]
    flat = x.reshape(-1, *x.shape[len(lead) :])  # (N*B, C, *spatial)
    per = flat.shape[0] // n  # examples per member
    bshape = (n, 1, -1) + (1,) * spatial_dims  # (member, example, channel, *space)
    xs = (flat.view(n, per, *flat.shape[1:]) * noise.s.view(bshape)).view_as(flat)
    chunks = xs.chunk(g) if g > 1 else (xs,)
    conv_groups = noise.r.shape[1] // weight.shape[1] if transposed else flat.shape[1] // weight.shape[1]
    if noise.factors is not None and conv_groups == 1:
        a, b = noise.factors
        b = b.transpose(1, 2) if transposed else b  # (G, r, in, *kernel); a transposed conv's kernel is (in, r, *kernel)
        pert = torch.cat([_mix_channels(a[i], conv(c, b[i], None)) for i, c in enumerate(chunks)])
    else:
        eps = _transposed_kernels(noise, weight, conv_groups) if transposed and not stored else noise.dense_eps()
        pert = torch.cat([conv(c, eps[i], None) for i, c in enumerate(chunks)])
    out = conv(flat, weight, bias)
    pert = pert.view(n, per, *out.shape[1:])
    if noise.bias_r is not None:
        pert += noise.bias_r.view(bshape)
    out = out.view_as(pert).addcmul_(pert, noise.r.view(bshape))
    return out.view(*lead, *out.shape[2:])


def _transposed_kernels(noise: SlotNoise, weight: Tensor, conv_groups: int) -> Tensor:
    """Every group's σε in a transposed conv's kernel shape, ``(G, in, out // conv_groups, *kernel)``: made once per
    generation and autocast dtype (kept in the noise's workspace; afresh under autograd or while compiling). Low-rank
    noise is materialized by a product, which an enclosing autocast runs in its dtype: a kernel made there is not the
    one a later forward outside it reads."""
    pw = PerturbedWeight(weight, None, noise.s.shape[1], noise.r.shape[1], conv_groups, transposed=True)
    if torch.is_grad_enabled() or compiling():
        return pw.stored(noise.dense_eps())
    key = ("transposed_kernels", autocast_dtype(noise.s.device.type) if noise.factors is not None else None)
    kernels = noise.workspace.get(key)
    if kernels is None:
        kernels = noise.workspace[key] = pw.stored(noise.dense_eps())
    return kernels


def _mix_channels(a: Tensor, t: Tensor) -> Tensor:
    """``(out, r)`` times the channels of ``t`` ``(M, r, *spatial)`` -> ``(M, out, *spatial)``: a 1×1 conv."""
    return torch.matmul(a, t.flatten(2)).view(t.shape[0], a.shape[0], *t.shape[2:])
