"""``uncompiled(module)``: the model inside ``torch.compile``'s wrapper, whose names and state dict are the model's own."""

from __future__ import annotations

from torch import nn


def uncompiled(module: nn.Module) -> nn.Module:
    """The module ``torch.compile(module)`` wraps (its ``_orig_mod``), else ``module``: its parameter
    names and state dict are the model's own, without the wrapper's ``_orig_mod.`` prefix."""
    inner = getattr(module, "_orig_mod", None)
    # by name: importing torch._dynamo for its class costs ~1.3 s, and this runs for every model
    return inner if isinstance(inner, nn.Module) and type(module).__name__ == "OptimizedModule" else module
