"""A BatchNorm or InstanceNorm with running statistics after a conv under ``torch.autocast``: the conv's bfloat16 or
float16 map beside the norm's float32 parameters and statistics is the mixed case torch's own kernel runs, so each
member runs it too, with the plain module's output dtype and about its error."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from helpers import autocast_member_errors
from torch import nn

import flipes

N, K = 4, 2  # members, examples per member


def conv_norm(norm: Callable[[int], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), norm(4), nn.ReLU(), nn.Flatten(1), nn.Linear(64, 2))
    model[1].running_mean.normal_()
    model[1].running_var.uniform_(0.5, 2.0)
    return model


NORMS = {
    "batchnorm": lambda c: nn.BatchNorm2d(c),
    "instancenorm-running-stats": lambda c: nn.InstanceNorm2d(c, affine=True, track_running_stats=True),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("norm", NORMS.values(), ids=list(NORMS))
def test_a_norm_in_eval_mode_under_autocast_runs_each_member_as_its_plain_copy(norm: Callable, dtype: torch.dtype) -> None:
    """In eval mode (a rollout's), each member's output under autocast has the plain module's dtype, and its largest
    error from the member's float64 output is at most 4x the plain copy's own under the same autocast (bfloat16 keeps 8
    significant bits: a member with another member's noise is off by ~σ = 0.1, far beyond either)."""
    plain = conv_norm(norm).eval()
    model = flipes.flipout(copy.deepcopy(plain))
    es = flipes.FlipES(model, popsize=N, sigma=0.1, seed=0)
    x = torch.randn(N * K, 3, 6, 6)
    ours, theirs, same_dtype = autocast_member_errors(plain, model, es, x, N, dtype)
    assert same_dtype
    assert 0 < ours <= 4 * theirs, (ours, theirs)


def test_a_batchnorm_in_training_mode_under_autocast_returns_the_plain_dtype() -> None:
    """In training mode (each member's batch normalized by its own statistics) the norm's output under bfloat16
    autocast is bfloat16, as the plain module's, and its running statistics stay as they were."""
    plain = conv_norm(NORMS["batchnorm"])
    model = flipes.flipout(copy.deepcopy(plain))
    es = flipes.FlipES(model, popsize=N, sigma=0.1, seed=0)
    held = model[1].running_mean.clone()
    with es.population(), torch.autocast("cpu", dtype=torch.bfloat16):
        normed = model[1](model[0](torch.randn(N * K, 3, 6, 6)))
    assert normed.dtype == plain[1](plain[0](torch.randn(K, 3, 6, 6)).bfloat16()).dtype == torch.bfloat16
    assert torch.equal(model[1].running_mean, held)
