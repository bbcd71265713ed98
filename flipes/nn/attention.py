"""Flipout multi-head attention (Wen et al., ICLR 2018, arXiv:1803.04386; Vaswani et al., 2017).

The four projections are linear layers, so each gets Flipout: the packed ``in_proj_weight``
(3E × E) is ONE weight sample per member, ``W̄ + σε ∘ (r_n s_nᵀ)`` with ``r_n`` over its 3E rows,
and q, k and v use their rows of it (``SlotNoise.out_slice``) when query, key and value differ.
Separate q/k/v weights (``kdim``/``vdim`` ≠ E) are three slots; their packed ``in_proj_bias`` and
``bias_k``/``bias_v`` get dense per-member noise. The attention itself has no parameters and runs
batched over the members, who are the batch dimension.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flipes.nn.base import FlipoutMixin, PerturbedWeight
from flipes.nn.dense import resolved
from flipes.nn.functional import check_members, flipout_linear
from flipes.nn.inputs import refuse_non_tensor
from flipes.noise import from_boundary


def _float_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A boolean mask (True = masked out) as an additive float mask, as torch's attention reads it."""
    if mask is None or mask.is_floating_point():
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))


class FlipoutMultiheadAttention(FlipoutMixin, nn.MultiheadAttention):
    r"""A ``torch.nn.MultiheadAttention`` with Flipout on its input and output projections.

    Inside an ES population the members are the batch dimension (dim 0 with ``batch_first``,
    else dim 1), ``N`` or ``N·k`` member-major. Outside a population it is exactly
    ``nn.MultiheadAttention`` (fast path included).

    Args: as ``nn.MultiheadAttention`` (all options: ``kdim``/``vdim``, ``add_bias_kv``,
    ``add_zero_attn``, ``bias=False``, dropout).

    Shape: as ``nn.MultiheadAttention``; masks as there (``attn_mask`` ``(L, S)`` or
    ``(B·heads, L, S)``, ``key_padding_mask`` ``(B, S)``).

    Examples::

        >>> attn = FlipoutMultiheadAttention(32, 4, batch_first=True)
        >>> es = flipes.FlipES(attn, popsize=8, sigma=0.1)
        >>> with es.population() as pop:
        ...     x = torch.randn(pop.size, 10, 32)
        ...     y, _ = attn(x, x, x, need_weights=False)   # (8, 10, 32)
    """

    def perturbed_weights(self) -> list[PerturbedWeight]:
        e = self.embed_dim
        if self._qkv_same_embed_dim:
            pws = [PerturbedWeight(self.in_proj_weight, self.in_proj_bias, e, 3 * e)]
        else:
            pws = [
                PerturbedWeight(self.q_proj_weight, None, e, e),
                PerturbedWeight(self.k_proj_weight, None, self.kdim, e),
                PerturbedWeight(self.v_proj_weight, None, self.vdim, e),
            ]
        return [*pws, PerturbedWeight(self.out_proj.weight, self.out_proj.bias, e, e)]

    def dense_parameters(self) -> dict[str, nn.Parameter]:
        dense = {}
        if not self._qkv_same_embed_dim and self.in_proj_bias is not None:
            dense["in_proj_bias"] = self.in_proj_bias
        if self.bias_k is not None:
            dense["bias_k"], dense["bias_v"] = self.bias_k, self.bias_v
        return dense

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if self.noise is None:
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal)
        for x in (query, key, value):  # a NumPy array or a list: one line naming the conversion
            refuse_non_tensor(
                type(self).__name__, x, self.in_proj_weight if self.in_proj_weight is not None else self.q_proj_weight
            )
        if query.dim() != 3:
            bf = self.batch_first
            example = {2: f"x.unsqueeze({int(bf)}) for one token per member", 4: "x.flatten(0, 1) for (N, k, L, E)" if bf else ""}
            raise ValueError(
                f"{type(self).__name__}: inside a population inputs are batched (3-D), got {query.dim()}-D of shape "
                f"{tuple(query.shape)}; reshape them to {'(N·k, L, E)' if bf else '(L, N·k, E)'} (batch_first={bf}): "
                "the batch dimension holds the N members' k ≥ 1 sequences each, member-major"
                + (f" (e.g. {example[query.dim()]})" if example.get(query.dim()) else "")
            )
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as nn.MultiheadAttention)")
        self._check_shapes(query, key, value, key_padding_mask, attn_mask)
        if not self.batch_first:  # members are the batch: work batch-first
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        out, weights = self._population_attention(
            query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
        )
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def _check_shapes(
        self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None, attn_mask: Tensor | None
    ) -> None:
        """The checks of ``nn.MultiheadAttention`` on its inputs, in the caller's layout: the population forward reads
        the batch as members, so a key of another batch would be taken as more keys per member, silently."""
        bdim = 0 if self.batch_first else 1
        batch, tgt = query.shape[bdim], query.shape[1 - bdim]
        layout = "(N·k, L, E)" if self.batch_first else "(L, N·k, E)"
        problem = None
        if key.dim() != 3 or value.dim() != 3:
            problem = f"key and value must be 3-D as the query, {layout}, got {tuple(key.shape)} and {tuple(value.shape)}"
        elif key.shape[bdim] != batch or value.shape[bdim] != batch:
            problem = (
                f"query, key and value must have the same batch (dim {bdim}: the members, or k per member, member-major), "
                f"got {batch}, {key.shape[bdim]} and {value.shape[bdim]}"
            )
        elif key.shape[1 - bdim] != value.shape[1 - bdim]:
            problem = f"key and value must have the same length, got {tuple(key.shape)} and {tuple(value.shape)}"
        elif (query.shape[-1], key.shape[-1], value.shape[-1]) != (self.embed_dim, self.kdim, self.vdim):
            problem = (
                f"query, key and value have {query.shape[-1]}, {key.shape[-1]} and {value.shape[-1]} features, the layer "
                f"takes embed_dim={self.embed_dim}, kdim={self.kdim} and vdim={self.vdim}"
            )
        else:
            src = key.shape[1 - bdim]
            if key_padding_mask is not None and tuple(key_padding_mask.shape) != (batch, src):
                problem = f"key_padding_mask of shape {tuple(key_padding_mask.shape)}, expected (batch, S) = {(batch, src)}"
            masks = ((tgt, src), (batch * self.num_heads, tgt, src))
            if attn_mask is not None and tuple(attn_mask.shape) not in masks:
                problem = (
                    f"attn_mask of shape {tuple(attn_mask.shape)}, expected (L, S) = {masks[0]} or "
                    f"(batch·num_heads, L, S) = {masks[1]}"
                )
        if problem is not None:
            raise ValueError(f"{type(self).__name__}: {problem} (batch_first={self.batch_first}, as nn.MultiheadAttention)")

    def _member_param(self, name: str, batch: int) -> Tensor:
        """``(B, *shape)``: batch entry ``b`` gets member ``b // k``'s perturbed copy of parameter ``name``."""
        param = getattr(self, name)
        noise = None if self.member_noise is None else self.member_noise.get(name)
        if noise is None:  # frozen
            return param.expand(batch, *param.shape)
        noise = resolved(noise)  # a Flipout weight's, made at its first read
        return (param + noise).repeat_interleave(batch // noise.shape[0], dim=0)

    def _projections(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        name, e, noise = type(self).__name__, self.embed_dim, self.noise
        if self._qkv_same_embed_dim:
            w, b, nz = self.in_proj_weight, self.in_proj_bias, noise[0]
            if query is key and key is value:  # self-attention: one projection, 3E wide
                return flipout_linear(query, w, b, nz, name).chunk(3, dim=-1)
            parts = []
            for i, x in enumerate((query, key, value)):
                rows = slice(i * e, (i + 1) * e)
                parts.append(flipout_linear(x, w[rows], None if b is None else b[rows], nz.out_slice(i * e, (i + 1) * e), name))
            return tuple(parts)
        weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        q, k, v = (flipout_linear(x, w, None, nz, name) for x, w, nz in zip((query, key, value), weights, noise[:3], strict=True))
        if self.in_proj_bias is not None:
            bias = self._member_param("in_proj_bias", query.shape[0]).unsqueeze(1)  # (B, 1, 3E)
            q, k, v = q + bias[..., :e], k + bias[..., e : 2 * e], v + bias[..., 2 * e :]
        return q, k, v

    def _population_attention(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        need_weights: bool,
        attn_mask: Tensor | None,
        average_attn_weights: bool,
        is_causal: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """Batch-first ``(B, L, E)`` inputs, ``B`` = members (·k); the steps of ``F.multi_head_attention_forward``."""
        check_members(type(self).__name__, query, self.noise[0].size, 3)
        batch, tgt_len, e = query.shape
        heads, head_dim = self.num_heads, self.head_dim
        q, k, v = self._projections(query, key, value)
        if is_causal and key_padding_mask is None and not need_weights:
            mask, causal = None, True
        else:
            mask, causal = _float_mask(attn_mask, q.dtype), False
            if mask is not None:
                mask = mask.unsqueeze(0).unsqueeze(0) if mask.dim() == 2 else mask.view(batch, heads, tgt_len, -1)
        pad = _float_mask(key_padding_mask, q.dtype)
        if self.bias_k is not None:
            k = torch.cat([k, self._member_param("bias_k", batch).view(batch, 1, e)], dim=1)
            v = torch.cat([v, self._member_param("bias_v", batch).view(batch, 1, e)], dim=1)
            mask = None if mask is None else F.pad(mask, (0, 1))
            pad = None if pad is None else F.pad(pad, (0, 1))
        q, k, v = (t.view(batch, -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))  # (B, H, len, hd)
        if self.add_zero_attn:
            zeros = k.new_zeros(batch, heads, 1, head_dim)
            k, v = torch.cat([k, zeros], dim=2), torch.cat([v, zeros], dim=2)
            mask = None if mask is None else F.pad(mask, (0, 1))
            pad = None if pad is None else F.pad(pad, (0, 1))
        if pad is not None:
            pad = pad.view(batch, 1, 1, -1)
            mask = pad if mask is None else mask + pad
        dropout = self.dropout if self.training else 0.0
        if not need_weights and mask is not None:
            mask = mask.expand(batch, heads, tgt_len, k.shape[2])
        # group by group, each group's q, k, v from a 64-byte boundary (from_boundary): a CPU kernel rounds a batch entry by
        # where its block lies, which one batch over all of a process's groups would tie to the process count
        outs, weights = [], []
        per = batch // self.noise[0].groups
        for start in range(0, batch, per):
            rows = slice(start, start + per)
            qg, kg, vg = (from_boundary(t[rows]) for t in (q, k, v))
            mg = None if mask is None else mask[rows] if mask.shape[0] == batch else mask
            if need_weights:
                scores = torch.matmul(qg * math.sqrt(1.0 / head_dim), kg.transpose(-2, -1))
                if mg is not None:
                    scores = scores + mg
                attn = torch.softmax(scores, dim=-1)
                if dropout > 0.0:
                    attn = F.dropout(attn, p=dropout)
                outs.append(torch.matmul(attn, vg))
                weights.append(attn.mean(dim=1) if average_attn_weights else attn)
            else:
                outs.append(F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mg, dropout_p=dropout, is_causal=causal))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        weights = None if not weights else weights[0] if len(weights) == 1 else torch.cat(weights)
        out = out.transpose(1, 2).reshape(batch, tgt_len, e)
        return flipout_linear(out, self.out_proj.weight, self.out_proj.bias, self.noise[-1], type(self).__name__), weights


def mha_switch() -> Any:
    """``torch.backends.mha``, the switch of torch's fused transformer kernels (torch >= 2.3), or None."""
    return getattr(torch.backends, "mha", None)


def fused_transformers_off(model: nn.Module) -> Callable[[], None]:
    """Turn torch's fused transformer kernels off for ``model``, which read a layer's mean weights
    directly, past its Flipout perturbation; returns the function that turns them back on. torch >= 2.3
    has a global switch; before it, an ``nn.TransformerEncoderLayer`` takes its fast path only with
    ``activation_relu_or_gelu`` set and an ``nn.TransformerEncoder`` its nested-tensor path only with
    ``use_nested_tensor`` set, so those flags are cleared instead."""
    switch = mha_switch()
    if switch is not None:
        before = switch.get_fastpath_enabled()
        switch.set_fastpath_enabled(False)
        return lambda: switch.set_fastpath_enabled(before)
    flags = [(m, "activation_relu_or_gelu") for m in model.modules() if isinstance(m, nn.TransformerEncoderLayer)]
    flags += [(m, "use_nested_tensor") for m in model.modules() if isinstance(m, nn.TransformerEncoder)]
    saved = [(m, name, getattr(m, name, False)) for m, name in flags]
    for m, name in flags:
        setattr(m, name, False)

    def restore() -> None:
        for m, name, value in saved:
            setattr(m, name, value)

    return restore
