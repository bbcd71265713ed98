"""``flipes export`` on a torch older than 2.4 (whose torch.export made a GRU policy's program act otherwise than the
policy, measured on 2.2.2) is refused in one line naming the fix, before it reads the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.torch_version import TorchVersion

from flipes.errors import UsageError
from flipes.export import export_policy


@pytest.mark.parametrize("version", ["2.2.2+cpu", "2.3.1"])
def test_export_on_torch_before_2_4_is_refused_naming_the_upgrade(
    version: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal names the torch running and the version to install, and comes before the run directory is read (this
    one does not exist)."""
    monkeypatch.setattr(torch, "__version__", TorchVersion(version))
    with pytest.raises(UsageError, match=r"flipes export needs torch >= 2\.4") as caught:
        export_policy(tmp_path / "no-run")
    assert caught.value.option == "torch" and version in str(caught.value) and "pip install -U 'torch>=2.4'" in str(caught.value)
