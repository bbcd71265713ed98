"""Under ``torch.autocast`` a module with dense per-member noise gets its bfloat16 input as given where its forward runs
on it (so a forward that rounds to its input's dtype matches each member's plain copy), in float32 only where it fails
as given; and an input that is wrong in any dtype raises the error the module gives on it, not a dtype complaint."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import RoundingScale
from torch import Tensor, nn

import flipes

N, K = 4, 2  # members, rows per member


def test_a_forward_that_runs_on_its_bfloat16_input_gets_it_as_given() -> None:
    """Each member's output under bfloat16 autocast equals its plain copy's (``es.member_state_dict(n)``) under the
    same autocast to 1e-6 relative: widened to float32, the rounding to bfloat16 would be skipped (~4e-3 off)."""
    torch.manual_seed(0)
    plain = nn.Sequential(RoundingScale(6))
    model = flipes.flipout(copy.deepcopy(plain))
    es = flipes.FlipES(model, popsize=N, sigma=0.1, seed=0)
    x = torch.randn(N * K, 6).bfloat16()
    with es.population(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        for n in range(N):
            member = copy.deepcopy(plain)
            member.load_state_dict(es.member_state_dict(n))
            rows = slice(n * K, (n + 1) * K)
            torch.testing.assert_close(out[rows], member(x[rows]), rtol=1e-6, atol=0)


def test_a_wrong_input_under_autocast_raises_the_modules_own_error() -> None:
    """A PReLU of 4 channels given 5 under bfloat16 autocast raises torch's channel mismatch, as the plain module does,
    not the bfloat16/float32 mix its as-given try met; given 4 it runs."""
    model = flipes.flipout(nn.Sequential(nn.PReLU(4)))
    es = flipes.FlipES(model, popsize=N, sigma=0.1, seed=0)
    with es.population(), torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError, match="channel size = 5") as raised:
            model(torch.randn(N * K, 5, 3).bfloat16())
        assert "BFloat16" not in str(raised.value)
        assert model(torch.randn(N * K, 4, 3).bfloat16()).shape == (N * K, 4, 3)


def test_a_bfloat16_input_runs_where_torch_asks_autocast_without_a_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torch < 2.4, whose ``torch.is_autocast_enabled()`` takes no device (played here), a bfloat16 PReLU's
    population runs on a bfloat16 input, each member equal to its plain copy: asking for the device raised a TypeError."""
    real = torch.is_autocast_enabled

    def without_device(*args: object) -> bool:
        if args:
            raise TypeError(f"is_autocast_enabled() takes 0 positional arguments but {len(args)} was given")
        return real("cuda")

    monkeypatch.setattr(torch, "is_autocast_enabled", without_device)
    monkeypatch.setattr(torch, "is_autocast_cpu_enabled", lambda: real("cpu"))  # not deprecated there
    monkeypatch.setattr(flipes.nn.functional, "_DEVICE_AUTOCAST", False)
    plain = nn.Sequential(nn.PReLU(4)).bfloat16()
    model = flipes.flipout(copy.deepcopy(plain))
    es = flipes.FlipES(model, popsize=N, sigma=0.1, seed=0)
    x = torch.randn(N * K, 4, 3).bfloat16()
    with es.population():
        out = model(x)
        for n in range(N):
            member = copy.deepcopy(plain)
            member.load_state_dict(es.member_state_dict(n))
            rows = slice(n * K, (n + 1) * K)
            torch.testing.assert_close(out[rows], member(x[rows]), rtol=0, atol=0)


class OutOfMemoryOnce(RoundingScale):
    """RoundingScale whose first bfloat16 forward runs out of memory, as a device short of it for a moment does."""

    def __init__(self, d: int) -> None:
        super().__init__(d)
        self.failed = False

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.bfloat16 and not self.failed:
            self.failed = True
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


@pytest.mark.parametrize("rows", [K, 1], ids=["rows-per-member", "one-row-each"])
def test_running_out_of_memory_is_raised_as_it_is_and_leaves_the_inputs_as_given(rows: int) -> None:
    """An out-of-memory error of a dense module's bfloat16 input under autocast is raised as torch raised it, not
    named a vmap failure, nor retried in float32 (twice the memory) or as a batch of one and remembered: the next call
    runs as given, each member equal to its plain copy's output under the same autocast to 1e-6 relative (in float32,
    the rounding to bfloat16 would be skipped)."""
    torch.manual_seed(0)
    plain = nn.Sequential(RoundingScale(6))
    model = flipes.flipout(nn.Sequential(OutOfMemoryOnce(6)))
    model.load_state_dict(plain.state_dict(), strict=False)
    es = flipes.FlipES(model, popsize=N, sigma=0.1, seed=0)
    x = torch.randn(N * rows, 6).bfloat16() if rows > 1 else torch.randn(N, 6).bfloat16()
    with es.population(), torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(torch.cuda.OutOfMemoryError, match="Tried to allocate"):
            model(x)
        out = model(x)
        for n in range(N):
            member = copy.deepcopy(plain)
            member.load_state_dict(es.member_state_dict(n))
            mine = slice(n * rows, (n + 1) * rows) if rows > 1 else n
            torch.testing.assert_close(out[mine], member(x[mine]), rtol=1e-6, atol=0)
