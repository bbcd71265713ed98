"""What a refused checkpoint of another format offers as the way on: a newer flipes's file names the upgrade and no
older file or fresh start (``--overwrite`` would delete the newer run); an older format offers no upgrade."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import flipes
from flipes.checkpoint import NewerCheckpointError
from flipes.errors import UsageError
from flipes.resume import restore


def _rewrap(path: Path, fmt: str, writer: str | None) -> None:
    """Rewrite the checkpoint at ``path`` as the flipes ``writer`` would in the format ``fmt``."""
    state = flipes.read_checkpoint(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    header: dict[str, Any] = {"format": fmt, "sha256": hashlib.sha256(data).hexdigest(),
                              "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8)}  # fmt: skip
    torch.save(header | ({"flipes": writer} if writer else {}), path)


def _checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    es = flipes.FlipES(flipes.flipout(torch.nn.Linear(3, 2)), popsize=4, sigma=0.1, lr=0.05, seed=0)
    state = {"es": es.state_dict(), "config": {}, "timesteps": 0, "seconds": 0.0, "best": 0.0}
    return flipes.save_checkpoint(state, tmp_path / "checkpoint.pt", keep_previous=False)


def test_a_resume_of_a_newer_format_names_the_upgrade_not_a_fresh_start(tmp_path: Path) -> None:
    """--resume of a run whose checkpoint.pt a newer flipes wrote (no previous.pt beside it) is one UsageError naming
    that flipes and the upgrade; it does not offer --overwrite, which would delete the newer run."""
    path = _checkpoint(tmp_path)
    _rewrap(path, "flipes-checkpoint/3", "9.1.0")
    state = SimpleNamespace(comm=SimpleNamespace(rank=0, size=1))
    with pytest.raises(UsageError) as caught:
        restore(state, str(tmp_path), "cpu", None)  # type: ignore[arg-type]
    text = str(caught.value)
    assert caught.value.option == "--resume" and "flipes 9.1.0" in text and "pip install -U flipes" in text, text
    assert "--overwrite" not in text and "previous" not in text and "\n" not in text, text


@pytest.mark.parametrize(("writer", "who"), [("0.0.1", "flipes 0.0.1"), (None, "another flipes")])
def test_an_older_format_offers_no_upgrade(tmp_path: Path, writer: str | None, who: str) -> None:
    """A file in a format numbered below this flipes's is refused naming its writer (or 'another flipes'), without
    the upgrade advice, which would not read it either."""
    path = _checkpoint(tmp_path)
    _rewrap(path, "flipes-checkpoint/1", writer)
    with pytest.raises(NewerCheckpointError) as caught:
        flipes.read_checkpoint(path)
    text = str(caught.value)
    assert f"was written by {who} in the checkpoint format flipes-checkpoint/1" in text, text
    assert "pip install" not in text and "later one" not in text, text


def test_load_policy_of_a_newer_format_names_only_the_upgrade(tmp_path: Path) -> None:
    """flipes.load_policy (flipes evaluate, export) of a run whose checkpoint a newer flipes wrote is one UsageError
    naming the upgrade, not another --checkpoint of the same run (which would be refused the same way)."""
    run = tmp_path / "run"
    flipes.train(env="flipes/CartPole-v1", popsize=4, hidden=[2], generations=1, out=str(run), progress=False, plot=False,
                 tensorboard=False)  # fmt: skip
    _rewrap(run / "checkpoint.pt", "flipes-checkpoint/3", "9.1.0")
    with pytest.raises(UsageError) as caught:
        flipes.load_policy(run)
    text = str(caught.value)
    assert caught.value.option == "--checkpoint" and "flipes 9.1.0" in text and "pip install -U flipes" in text, text
    assert "pass --checkpoint" not in text and "\n" not in text, text
