"""Large populations: what tell allocates as the number of ε groups grows, and parts against one pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import flipes
from flipes.es import gradient


class LargestOutput(TorchDispatchMode):
    """Records the bytes of the largest tensor any op makes while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: object, types: object, args: tuple = (), kwargs: dict | None = None) -> object:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def told(
    rank: int | None, groups: int, chunk_bytes: int, monkeypatch: pytest.MonkeyPatch, conv: bool = False
) -> tuple[torch.Tensor, int]:
    """The weight after one tell of a 256×256 layer (or a grouped 3×3 conv of as many weights), and the largest tensor
    tell made."""
    monkeypatch.setattr(gradient, "GROUP_CHUNK_BYTES", chunk_bytes, raising=False)
    torch.manual_seed(0)
    model = flipes.flipout(nn.Conv2d(64, 512, 3, groups=4) if conv else nn.Linear(256, 256))
    es = flipes.FlipES(model, popsize=64, sigma=0.1, lr=0.1, seed=3, groups=groups, noise_rank=rank, optimizer=torch.optim.SGD)
    x = torch.randn(64, 64, 4, 4) if conv else torch.randn(64, 256)
    with es.population():
        fitness = model(x).flatten(1).sum(1)
    with LargestOutput() as mode:
        es.tell(fitness)
    return model.weight.detach().clone(), mode.largest


@pytest.mark.parametrize(("rank", "conv"), [(None, False), (2, False), (None, True), (2, True)])
def test_tell_temporaries_do_not_grow_with_groups(rank: int | None, conv: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 32 ε groups, tell's largest temporary stays within its chunk budget (a few copies of the 256 KB weight),
    not one copy per group (8 MB), for full-rank and low-rank noise of a linear and a grouped conv layer; the update
    equals that of unchunked sums to float32 rounding."""
    layer = 256 * 256 * 4
    chunked, largest = told(rank, 32, 4 * layer, monkeypatch, conv)
    whole, _ = told(rank, 32, 2**40, monkeypatch, conv)
    assert largest <= 4 * layer, f"tell made a tensor of {largest} bytes, over its budget of {4 * layer}"
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_centered_ranks_of_half_precision_fitness_at_65536_members(dtype: torch.dtype) -> None:
    """Fitness of 65,536 members in float16 or bfloat16 gets float32 weights equal, bit for bit, to ``rank / (N - 1) -
    1/2`` with each value's exact mean rank (counted by searchsorted): every weight finite and in [-1/2, 1/2] (float16
    holds no rank past 65,504), tied values alone sharing one."""
    from flipes.shaping import centered_ranks

    f = torch.randn(65536, generator=torch.Generator().manual_seed(0)).to(dtype)
    ordered = f.double().sort().values
    below = torch.searchsorted(ordered, f.double())
    upto = torch.searchsorted(ordered, f.double(), right=True)
    expect = ((below + upto - 1).double() / 2).float() / (len(f) - 1) - 0.5
    got = centered_ranks(f)
    assert got.isfinite().all() and torch.equal(got.float(), expect)
    assert got.dtype == torch.float32


@pytest.mark.parametrize("name", ["ars", "z_score"])
def test_ars_and_z_score_of_float16_fitness_at_65536_members(name: str) -> None:
    """``ars`` and ``z_score`` of 65,536 float16 fitness values equal, bit for bit, those of the same values in float32:
    finite (ars's ``N (r+ - r-)`` overflowed float16's 65,504 to inf)."""
    shaping = getattr(flipes.shaping, name)
    f = torch.randn(65536, generator=torch.Generator().manual_seed(0)).half()
    got = shaping(f)
    assert got.isfinite().all() and torch.equal(got.float(), shaping(f.float()))


@pytest.mark.parametrize(("groups", "rank"), [(1, None), (8, None), (1, 2), (8, 2)])
def test_odd_parts_that_split_mirrored_pairs_train_like_one_pass(groups: int, rank: int | None) -> None:
    """2,048 members evaluated in parts of 333 (one group) or 37 (eight groups of 256): odd sizes that divide no group,
    so parts split mirrored pairs, and the last part of a group is smaller; they give, for three generations, the
    fitness and then the parameters of one pass, bit for bit, with full and low-rank noise, in one and eight ε groups.
    (Parts of 1 to 3 rows are left out: MKL rounds such thin products otherwise, plain torch included.)"""
    runs = []
    for size in (None, 333 if groups == 1 else 37):
        torch.manual_seed(0)
        model = flipes.flipout(nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 32), nn.LayerNorm(32), nn.Linear(32, 3)))
        es = flipes.FlipES(model, popsize=2048, sigma=0.05, lr=0.03, seed=11, groups=groups, noise_rank=rank)
        x = torch.randn(2048, 6, generator=torch.Generator().manual_seed(1))
        told = []
        for _ in range(3):
            with es.population() as pop:
                parts = [pop] if size is None else pop.split(size)
                fitness = torch.cat([-model(x[p.members.start : p.members.stop]).square().sum(1) for p in parts])
            told.append(fitness)
            es.tell(fitness)
        runs.append((torch.cat(told), nn.utils.parameters_to_vector(model.parameters()).clone()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
