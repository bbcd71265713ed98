"""A bare tensor of parameters as a module: black-box search over ``x ∈ R^d`` with ES (Salimans et
al., 2017, arXiv:1703.03864), and per-member values of a parameter that a module uses directly
(a Gaussian policy's log-std beside its Flipout layers)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn


class Vector(nn.Module):
    """A parameter tensor whose forward returns it: inside a population, every member's value.

    ``flipes.flipout`` gives it dense per-member noise, so inside a population ``vec()`` is the
    ``(N, *shape)`` stack of ``θ + σε_n``; outside one it is ``θ`` itself. Plain ES on a vector is
    the population of its values: ``f(vec())`` per member, ``es.tell``.

    Args:
        init: the starting value (copied): a floating-point tensor, or a list, tuple of floats or numpy array
            (in ``dtype``, else torch's default float dtype); or a size (an int or tuple of ints): zeros of that shape.
        device, dtype: as for ``torch.zeros`` (with a size), or to convert ``init`` to.

    Raises:
        TypeError: ``init`` is not floating-point once converted (complex, or an integer tensor).
        ValueError: ``init`` has no entries, or a NaN or infinite entry.

    Shape:
        - Outside a population: ``() -> shape``; ``(like) -> like.shape``, for a ``like`` the value broadcasts to
          (its shape ends in the value's, or in sizes the value's 1s broadcast to: ``(C, 1, 1)`` against
          ``(B, C, H, W)``).
        - Inside a population of N members: ``() -> (N, *shape)``; ``(like) -> like.shape``, members first
          (``(N, *B, *shape)`` or ``(N·k, *shape)``), each member's value over its rows.

    Examples::

        >>> x = flipes.flipout(flipes.nn.Vector(torch.full((100,), 3.0)))
        >>> es = flipes.FlipES(x, popsize=64, sigma=0.1, lr=0.05)
        >>> with es.population():
        ...     fitness = -x().square().sum(1)     # (64,): one value per member
        >>> es.tell(fitness)

    A Gaussian policy's log-std beside its Flipout layers, read against its mean actions ``mu``
    (``(N, episodes, act)`` in a rollout, ``(episodes, act)`` outside a population)::

        >>> self.log_std = flipes.nn.Vector(torch.zeros(act_dim))     # in __init__
        >>> return mu + self.log_std(mu).exp() * torch.randn_like(mu)  # in forward
    """

    def __init__(
        self,
        init: Tensor | Sequence[float] | np.ndarray | int | tuple[int, ...],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(init, Tensor):
            value = init.detach().to(device=device, dtype=dtype, copy=True)
        elif _is_size(init):  # a size (numpy's ints too)
            value = torch.zeros(init, device=device, dtype=dtype)
        else:  # a value as evosax's and EvoTorch's x0: a list or an array, of integers too
            value = torch.as_tensor(np.asarray(init, dtype=np.float64 if dtype is None else None))
            value = value.to(device=device, dtype=dtype or torch.get_default_dtype(), copy=True)
        if not value.is_floating_point():
            raise TypeError(f"Vector: a {value.dtype} tensor cannot be evolved; give floating-point values, e.g. init.float()")
        if value.numel() == 0:  # ES over it would step nothing, its update_ratio inf, without a word
            raise ValueError(f"Vector: the value of shape {tuple(value.shape)} has no entries to evolve; give at least one")
        if not value.is_meta and not bool(torch.isfinite(value).all()):
            # a NaN or inf start makes every member's fitness non-finite, and tell() then blames an overflowed update
            bad = (~torch.isfinite(value)).sum().item()
            raise ValueError(
                f"Vector: {bad} of the {value.numel()} starting values are not finite in {value.dtype} (nan or inf); "
                "give a finite start, e.g. init.nan_to_num(0.0)"
            )
        self.value = nn.Parameter(value)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.value.shape)}, dtype={self.value.dtype}"

    def forward(self, like: Tensor | None = None) -> Tensor:
        """The value; given ``like``, a tensor the value broadcasts to (a Gaussian policy's mean actions, whose shape
        ends in the value's; a conv feature map ``(B, C, H, W)`` for a per-channel ``(C, 1, 1)`` scale; members first
        inside a population), the value expanded to ``like``'s shape: each member's own over its rows, where
        ``(N, *shape)`` would broadcast against ``(N, B, *shape)`` wrongly."""
        if like is None:
            return self.value
        shape = tuple(self.value.shape)
        try:
            fits = like.dim() >= len(shape) and torch.broadcast_shapes(shape, like.shape) == like.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"Vector of shape {shape}: like= of shape {tuple(like.shape)} does not end in {shape}, nor in sizes its "
                "1s broadcast to (inside a population, each member's rows of it)"
            )
        return self.value.expand_as(like)


def _is_size(init: object) -> bool:
    """Whether ``init`` is a shape (an int, or a tuple of ints) rather than a value: ``(0.5, 1.5)`` is an x0."""
    if isinstance(init, tuple | torch.Size):
        return all(_is_int(v) for v in init)
    return _is_int(init)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)
