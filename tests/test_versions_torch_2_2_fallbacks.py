"""What flipes does in place of APIs newer than its torch floor (2.2): on every torch the fallback gives what the newer
API gives, so a run on the floor matches one on the newest torch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch._C import _functorch

import flipes

DT = torch.float64
N, K = 4, 3  # members, examples per member


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.norm, self.act, self.out = nn.Linear(5, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.act(self.norm(self.inp(x))))


def hooked_outputs() -> tuple[Tensor, Tensor]:
    """Every member's output of a model whose per-member LayerNorm has a forward hook that scales its output and keeps
    it, and what the hook kept (members first)."""
    torch.manual_seed(0)
    model, kept = flipes.flipout(Net().to(DT)), []
    model.norm.register_forward_hook(lambda m, args, out: kept.append(out * 2.0) or out * 2.0)
    es = flipes.FlipES(model, popsize=N, sigma=0.1, seed=0)
    x = torch.randn(N, K, 5, dtype=DT)
    with es.population():
        out = model(x)
    return out, kept[-1]


def test_the_level_fallback_is_torchs_maybe_current_level_outside_and_inside_vmap() -> None:
    """torch < 2.3 has no ``torch._C._functorch.maybe_current_level``; the stand-in returns None outside every functorch
    transform and the innermost transform's level inside one (vmap, nested vmap), as the newer API does there."""
    from flipes.nn.dense import _maybe_current_level_before_2_3

    seen: list[tuple[int | None, int | None]] = []

    def record(x: Tensor) -> Tensor:
        newer = _functorch.maybe_current_level() if hasattr(_functorch, "maybe_current_level") else _functorch.current_level()
        seen.append((_maybe_current_level_before_2_3(), newer))
        return x * 2

    assert _maybe_current_level_before_2_3() is None
    if hasattr(_functorch, "maybe_current_level"):
        assert _functorch.maybe_current_level() is None
    torch.func.vmap(record)(torch.ones(3))
    torch.func.vmap(torch.func.vmap(record))(torch.ones(2, 3))
    assert len(seen) == 2 and all(mine == newer for mine, newer in seen) and seen[0][0] != seen[1][0], seen


def test_hooks_below_a_per_member_module_run_the_same_without_maybe_current_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward hook on a LayerNorm that runs per member under vmap gets every member's output, members first, and
    changes each member's output; with ``maybe_current_level`` gone (as on torch 2.2), outputs and what the hook kept are
    bit for bit those with it (on torch 2.2 both runs take the fallback)."""
    want_out, want_kept = hooked_outputs()
    assert want_kept.shape == (N, K, 5)
    monkeypatch.delattr(_functorch, "maybe_current_level", raising=False)
    got_out, got_kept = hooked_outputs()
    assert torch.equal(got_out, want_out) and torch.equal(got_kept, want_kept)


def test_compiling_is_true_while_dynamo_traces_and_false_in_eager() -> None:
    """flipes' check of whether Dynamo is tracing (which keeps the noise workspace and the packed-bit sign draw out of a
    compiled graph) is False in eager and True inside ``torch.compile``, on torch < 2.3 too, which has no
    ``torch.compiler.is_compiling`` (``torch._utils.is_compiling`` stands in)."""
    from flipes.noise import compiling
    from flipes.rl.normalize import compiling as _compiling  # RunningNorm's check

    def both(x: Tensor) -> Tensor:
        return x + (10 * compiling() + _compiling())

    assert not compiling() and not _compiling()
    assert torch.equal(both(torch.zeros(2)), torch.zeros(2))
    assert torch.equal(torch.compile(both, backend="eager")(torch.zeros(2)), torch.full((2,), 11.0))


def test_the_versions_a_checkpoint_header_names_read_from_a_path(tmp_path: Path) -> None:
    """``written_by`` maps the checkpoint given as a ``pathlib.Path`` (torch 2.2's ``torch.load(mmap=True)`` takes a str
    alone): the versions its header names come back, so a resume from a file another torch wrote says so."""
    from flipes.checkpoint import written_by

    path = tmp_path / "checkpoint.pt"
    flipes.save_checkpoint({"x": torch.ones(2)}, path)
    header = torch.load(path, weights_only=True)
    torch.save(header | {"torch": "2.5.0"}, path)
    assert written_by(path) == {"flipes": flipes.__version__, "torch": "2.5.0"}
    assert written_by(str(path)) == written_by(path)
