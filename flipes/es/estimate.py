"""The ES estimate over one block of members: ``Σ_n c_n σu_n`` for every evolved parameter, and with adaptive σ each
slot's log-σ score, summed over the block (``tell`` adds the blocks, reduces over processes and scales by ``1/(Nσ²)``).

Salimans, Ho, Chen, Sidor & Sutskever, "Evolution Strategies as a Scalable Alternative to Reinforcement Learning",
2017 (arXiv:1703.03864); a Flipout weight's sum is one GEMM per ε group (``flipes.es.gradient``, Wen et al., ICLR 2018),
the log-σ score is ``flipes.es.sigma``'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from flipes.es.gradient import accumulate, paired, weighted_dense, weighted_perturbation
from flipes.es.install import HeldNoise
from flipes.es.sigma import dense_norms, log_sigma_gradient, slot_norms

if TYPE_CHECKING:
    from flipes.es.engine import FlipES


def block_gradient(
    es: FlipES, noise: HeldNoise, sigmas: list[float], coeff: Tensor, by_group: Tensor | None, by_member: Tensor | None
) -> tuple[dict[int, Tensor], list[Tensor]]:
    """``Σ_n c_n σu_n`` over the members of ``noise`` (keyed by ``id`` of each parameter; ``/ σ²`` per slot
    with adaptive σ), and with adaptive σ each slot's log-σ score summed over those members."""
    slot_noise, dense_noise = noise
    adaptive = by_group is not None
    grads: dict[int, Tensor] = {}
    copies: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}

    def on(t: Tensor, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``t`` on ``like``'s device: copied from the host once per device and dtype, not once per slot."""
        key = (id(t), like.device, dtype or t.dtype)
        if key not in copies:
            copies[key] = t.to(like.device, dtype or t.dtype)
        return copies[key]

    pairs: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}

    def paired_on(c: Tensor) -> Tensor | None:
        """Mirrored: ``c``'s pair coefficients, made once for every slot on its device and dtype."""
        if not es.mirrored:
            return None
        key = (id(c), c.device, c.dtype)
        if key not in pairs:
            pairs[key] = paired(c)
        return pairs[key]

    log_sigma_grad: list[Tensor] = []
    for i, (pw, nz) in enumerate(zip(es.slots, slot_noise, strict=True)):
        c = on(coeff, nz.s, torch.promote_types(nz.s.dtype, torch.float32))
        weight_grad, bias_grad = weighted_perturbation(pw, nz, c, paired_on(c))
        if adaptive:  # each slot has its own σ: Σ F̂ (σ_i u) / σ_i² here, / N below
            weight_grad, bias_grad = (None if g is None else g / sigmas[i] ** 2 for g in (weight_grad, bias_grad))
            (weight_norms, d_weight), (bias_norms, d_bias) = slot_norms(pw, nz, sigmas[i])
            weight_part = (weight_norms, d_weight, on(by_group, weight_norms))
            bias_part = (bias_norms, d_bias, on(by_member, bias_norms))
            log_sigma_grad.append(log_sigma_gradient(weight_part, bias_part))
        accumulate(grads, pw.weight, pw.stored(weight_grad) if pw.transposed else weight_grad)
        accumulate(grads, pw.bias, bias_grad)
    for i, ((_, _, p), nz) in enumerate(zip(es.dense_slots, dense_noise, strict=True), start=len(es.slots)):
        g = weighted_dense(nz, on(coeff, nz.delta))
        if adaptive:
            g = g / sigmas[i] ** 2
            norms, d = dense_norms(nz, sigmas[i], len(es._dense_fixed_rows[i - len(es.slots)]))
            log_sigma_grad.append(log_sigma_gradient((norms, d, on(by_member, norms))))
        accumulate(grads, p, g)
    return grads, log_sigma_grad
