"""Under ``torch.autocast`` a Flipout conv's bfloat16 map reaches a module with dense per-member noise (a
weight-standardized conv, a PReLU): vmap applies autocast only in part, so each member's forward runs on the map in
float32, and every member is about as close to its exact output as its plain copy under the same autocast."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from helpers import autocast_member_errors
from torch import Tensor, nn

import flipes

N, K = 4, 2  # members, examples per member


class StandardizedConv(nn.Conv2d):
    """A weight-standardized conv (its own ``_conv_forward``): no Flipout form, so dense noise, run per member."""

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        weight = (weight - weight.mean((1, 2, 3), keepdim=True)) / (weight.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, weight, bias, self.stride, self.padding)


AFTER = {
    "standardized-conv": lambda: StandardizedConv(4, 4, 3, padding=1),
    "standardized-conv-no-bias": lambda: StandardizedConv(4, 4, 3, padding=1, bias=False),
    "prelu": lambda: nn.PReLU(4),
}


@pytest.mark.parametrize("after", AFTER.values(), ids=list(AFTER))
def test_a_dense_module_after_a_flipout_conv_under_autocast_is_each_members_plain_copy(after: Callable[[], nn.Module]) -> None:
    """Conv2d (Flipout) then the dense module, then a Linear head, inside ``torch.autocast(bfloat16)``: the population
    runs, and each member's largest error from its float64 output is nonzero and at most 4x its plain copy's (loaded
    with ``es.member_state_dict(n)``) under the same autocast (a member with another's noise is off by ~σ = 0.1)."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), after(), nn.Flatten(1), nn.Linear(144, 2))
    model = flipes.flipout(copy.deepcopy(plain))
    assert flipes.nn.parameter_report(model).rows[2].how == "dense"
    es = flipes.FlipES(model, popsize=N, sigma=0.1, seed=0)
    x = torch.randn(N * K, 3, 6, 6)
    ours, theirs, _ = autocast_member_errors(plain, model, es, x, N, torch.bfloat16)
    assert 0 < ours <= 4 * theirs, (ours, theirs)
