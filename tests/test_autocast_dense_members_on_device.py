"""Under ``torch.autocast`` of the device the model runs on (bfloat16 and float16: CUDA's default is float16, the CPU's
bfloat16), each member's output of a module with dense per-member noise (a norm, a PReLU, a module of one's own, a
BatchNorm in training mode, or in eval mode after a Flipout conv) is its plain copy's under the same autocast, to the
rounding of the autocast dtype. scripts/gpu_check.py runs these on CUDA (``FLIPES_TEST_DEVICE``), where autocast's op
lists and vmap's handling of them are CUDA's own, not the CPU's that the suite checks."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from helpers import RoundingScale
from torch import nn

import flipes

N, K = 4, 2  # members, rows per member


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "prelu": (lambda: nn.Sequential(nn.PReLU(4)), (4, 3)),
    "layer_norm": (lambda: nn.Sequential(nn.LayerNorm(6)), (6,)),
    "group_norm": (lambda: nn.Sequential(nn.GroupNorm(2, 4)), (4, 3)),
    "batch_norm_eval": (lambda: nn.Sequential(nn.BatchNorm1d(4)).eval(), (4, 3)),
    "batch_norm_training": (lambda: nn.Sequential(nn.BatchNorm1d(4)), (4, 3)),  # each member's K rows' statistics
    "own_module": (lambda: nn.Sequential(RoundingScale(6)), (6,)),
    "conv_then_batch_norm_eval": (lambda: nn.Sequential(nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4)).eval(), (3, 5)),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("name", list(MODELS))
def test_each_member_equals_its_plain_copy_under_autocast_of_the_device(name: str, dtype: torch.dtype, device) -> None:
    """Every member's rows of the population output, under ``torch.autocast(device.type, dtype)`` on a low-precision
    input, lie within 4 units of ``dtype``'s rounding (of the output's largest entry) of the plain copy
    ``es.member_state_dict(n)`` loads, under the same autocast: one member's noise (σ = 0.1) in another's rows, or the
    mean's, is ~10% off. Where the device's autocast has no ``dtype``, it is skipped."""
    make, shape = MODELS[name]
    torch.manual_seed(0)
    plain = make().to(device)
    model = flipes.flipout(copy.deepcopy(plain))
    es = flipes.FlipES(model, popsize=N, sigma=0.1, seed=0)
    x = torch.randn(N * K, *shape, device=device).to(dtype)
    try:
        with torch.autocast(device.type, dtype=dtype):
            pass
    except RuntimeError as e:  # an autocast dtype this device does not take
        pytest.skip(str(e))
    bound = 4 * torch.finfo(dtype).eps
    with es.population(), torch.autocast(device.type, dtype=dtype):
        out = model(x)
        assert out.device == x.device and out.shape[0] == N * K
        for n in range(N):
            member = copy.deepcopy(plain)
            member.load_state_dict(es.member_state_dict(n))
            rows = slice(n * K, (n + 1) * K)
            ref = member(x[rows]).double()
            err = (out[rows].double() - ref).abs().max().item()
            assert err <= bound * ref.abs().max().item(), f"member {n}: {err:.3g} off, ref max {ref.abs().max().item():.3g}"
