"""Out of memory inside a module with dense per-member noise, as Apple's MPS backend raises it (a plain RuntimeError
"MPS backend out of memory ...", not ``torch.OutOfMemoryError``), is raised as torch raised it: not named a vmap failure
(with advice to freeze the module's parameters), nor retried in float32 or as a batch of one and remembered, which would
run the module so from then on."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import flipes

N, K = 4, 2  # members, rows per member
MPS_OUT_OF_MEMORY = (
    "MPS backend out of memory (MPS allocated: 17.00 GiB, other allocations: 1.00 GiB, max allowed: 18.13 GiB). Tried to "
    "allocate 2.00 GiB on private pool. Use PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 to disable upper limit for memory "
    "allocations (may cause system failure)."
)


class Scale(nn.Module):
    """``weight * x`` rounded to ``x``'s dtype (so a float32 retry of a bfloat16 input shows in the output)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, d))

    def forward(self, x: Tensor) -> Tensor:
        return (self.weight * x).to(x.dtype)


class OutOfMemoryOnce(Scale):
    """Scale whose first forward runs out of memory, as MPS reports it."""

    def __init__(self, d: int) -> None:
        super().__init__(d)
        self.failed = False

    def forward(self, x: Tensor) -> Tensor:
        if not self.failed:
            self.failed = True
            raise RuntimeError(MPS_OUT_OF_MEMORY)
        return super().forward(x)


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bfloat16-autocast"])
@pytest.mark.parametrize("rows", [K, 1], ids=["rows-per-member", "one-row-each"])
def test_out_of_memory_as_mps_raises_it_is_raised_as_it_is(rows: int, autocast: bool) -> None:
    """The first call raises the RuntimeError with torch's message alone; the second runs as given (no float32 or
    batch-of-one mode remembered from the failure), each member equal to its plain copy's output to 1e-6 relative."""
    torch.manual_seed(0)
    plain = nn.Sequential(Scale(6))
    model = flipes.flipout(nn.Sequential(OutOfMemoryOnce(6)))
    model.load_state_dict(plain.state_dict(), strict=False)
    es = flipes.FlipES(model, popsize=N, sigma=0.1, seed=0)
    x = torch.randn(N * rows, 6) if rows > 1 else torch.randn(N, 6)
    x = x.bfloat16() if autocast else x
    with es.population(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with pytest.raises(RuntimeError) as raised:
            model(x)
        assert str(raised.value) == MPS_OUT_OF_MEMORY
        out = model(x)
        assert out.dtype == x.dtype
        for n in range(N):
            member = copy.deepcopy(plain)
            member.load_state_dict(es.member_state_dict(n))
            mine = slice(n * rows, (n + 1) * rows) if rows > 1 else n
            torch.testing.assert_close(out[mine], member(x[mine]), rtol=1e-6, atol=0)
    assert not {"_flipes_float_inputs", "_flipes_batched_only", "_flipes_member_loop"} & set(model[0].__dict__)
