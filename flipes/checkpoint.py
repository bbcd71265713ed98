"""Checkpoint files that survive crashes: written to a temporary file and renamed into place.

The previous checkpoint is kept beside the latest one (``previous.pt``), so a checkpoint broken
after it was written (a full disk, a truncated copy) never leaves a run without a good one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, with what to do about it."""


def save_checkpoint(state: dict[str, Any], path: str | Path, keep_previous: bool = True) -> Path:
    """Write ``state`` to ``path`` atomically; the file it replaces becomes ``previous.pt`` beside it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if keep_previous and path.exists():
        os.replace(path, path.with_name("previous.pt"))
    os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half of one
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = None) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (a file, or a run directory's ``checkpoint.pt``).

    Raises:
        CheckpointError: the file is missing, truncated or not a flipes checkpoint; the message
            names the previous checkpoint to resume from instead, where there is one.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    previous = path.with_name("previous.pt")
    hint = f"; the previous checkpoint {previous} can be resumed instead" if previous.exists() and previous != path else ""
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}{hint}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        first = (str(e).strip().splitlines() or [""])[0][:100]  # torch's messages run to many lines
        raise CheckpointError(f"{path} is truncated or not a checkpoint ({type(e).__name__}: {first}){hint}") from e
    if not isinstance(state, dict) or "es" not in state:
        raise CheckpointError(f"{path} is not a flipes training checkpoint (no 'es' state){hint}")
    return state


def tensors_sha256(tensors: Iterable[Tensor]) -> str:
    """SHA-256 of the tensors' bytes, in order: equal exactly when every value is bitwise equal."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype, bf16 too
    return h.hexdigest()
