"""Observation normalization with running statistics (Salimans et al., 2017, arXiv:1703.03864).

The statistics are frozen while a generation is evaluated, so every member sees the same
normalization; observations seen meanwhile are only recorded, and merged by ``update()`` after
the generation. They are buffers of the policy: saved with it, applied at evaluation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RunningNorm(nn.Module):
    """``(x - mean) / std`` with the mean and variance of all observations recorded so far.

    Args:
        size: observation features.
        clip: normalized values are clipped to ``[-clip, clip]``.
        eps: variance floor.

    Shape:
        ``(*, size) -> (*, size)``.
    """

    def __init__(self, size: int, clip: float = 5.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.size, self.clip, self.eps = size, clip, eps
        self.register_buffer("mean", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("var", torch.ones(size, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        # pending sums of the current generation: [count, Σx, Σx²], not saved
        self.register_buffer("pending", torch.zeros(1 + 2 * size, dtype=torch.float64), persistent=False)
        self._scale: Tensor | None = None  # (mean, 1/std) in the input dtype, cached until update()

    def extra_repr(self) -> str:
        return f"{self.size}, clip={self.clip}"

    def forward(self, x: Tensor) -> Tensor:
        if self.count == 0:
            return x
        if self._scale is None or self._scale.dtype != x.dtype or self._scale.device != x.device:
            inv = (self.var + self.eps).rsqrt()
            self._scale = torch.stack((self.mean, inv)).to(x.dtype)
        return ((x - self._scale[0]) * self._scale[1]).clamp_(-self.clip, self.clip)

    @torch.no_grad()
    def record(self, x: Tensor, mask: Tensor | None = None) -> None:
        """Add observations ``(*, size)`` (where ``mask``, of shape ``*``, is true) to the pending sums."""
        x = x.reshape(-1, self.size).double()
        if mask is not None:
            x = x[mask.reshape(-1)]
        self.pending += torch.cat((x.new_tensor([x.shape[0]]), x.sum(0), x.square().sum(0)))

    @torch.no_grad()
    def update(self, pending: Tensor | None = None) -> None:
        """Merge the pending sums (or ``pending``, e.g. summed over processes) into the statistics."""
        p = self.pending if pending is None else pending
        n = p[0]
        if n > 0:
            mean_b = p[1 : 1 + self.size] / n
            var_b = (p[1 + self.size :] / n - mean_b.square()).clamp_(min=0)
            total = self.count + n
            delta = mean_b - self.mean
            # Chan et al.'s parallel merge of (count, mean, M2)
            m2 = self.var * self.count + var_b * n + delta.square() * self.count * n / total
            self.mean += delta * n / total
            self.var.copy_(m2 / total)
            self.count.copy_(total)
            self._scale = None
        self.pending.zero_()

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self._scale = None
        super()._load_from_state_dict(*args, **kwargs)
