"""What a Flipout layer takes as input: a tensor. A NumPy array or a list is refused in one line naming the conversion,
as ``torch.nn``'s layers refuse one (their ``TypeError``), where it would otherwise fail deep inside as an
``AttributeError`` of ``.dim()``."""

from __future__ import annotations

from torch import Tensor


def refuse_non_tensor(layer: str, x: object, like: Tensor | None = None) -> None:
    """Raise a ``TypeError`` naming the conversion where ``x`` is no tensor (a NumPy array, a list), as ``nn.Linear``
    refuses one; nothing for a tensor. Called only where ``x.dim()`` raised, so a tensor's forward pays nothing.
    ``like``: a parameter of the layer, whose dtype and device the conversion names."""
    if isinstance(x, Tensor):
        return
    kind = type(x).__qualname__ if type(x).__module__ == "builtins" else f"{type(x).__module__}.{type(x).__qualname__}"
    to = f"dtype={like.dtype}, device={str(like.device)!r}" if like is not None else "dtype=..., device=..."
    raise TypeError(
        f"{layer}: input must be a torch.Tensor, not {kind}: convert it first, torch.as_tensor(x, {to})"
    ) from None  # the AttributeError of x.dim() is no part of the story
