"""What flipes does in place of APIs newer than its torch floor (2.2): on every torch the fallback gives what the newer
API gives, so a run on the floor matches one on the newest torch."""

from __future__ import annotations

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
