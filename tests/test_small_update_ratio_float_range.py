"""``stats["update_ratio"]`` (‖step‖ / ‖parameters after it‖) is the ratio of the float32 parameters tell changed even
where the squares of the parameters or of the step leave float32's range (magnitudes past 1e19 or below 1e-19): not
0, inf or NaN, which would misreport the step and stop a training run at its non-finite check."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import flipes
from flipes.optim import ClipUp, finite_norm


def _ratio(scale: float, dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """``update_ratio`` of one tell on parameters of magnitude ``scale`` with a ClipUp step of 1% of it, and the
    float64 ratio of the parameters before and after that tell."""
    torch.manual_seed(0)
    linear = nn.Linear(3, 2).to(dtype)
    with torch.no_grad():
        for p in linear.parameters():
            p.mul_(scale)
    model = flipes.flipout(linear)
    es = flipes.FlipES(
        model, popsize=8, sigma=0.1, seed=0, shaping=flipes.shaping.centered_ranks, optimizer=lambda p: ClipUp(p, lr=0.01 * scale)
    )
    before = torch.cat([p.detach().double().flatten() for p in es.params])
    with es.population():
        fitness = model(torch.randn(8, 3, dtype=dtype)).float().sum(-1)
    stats = es.tell(fitness)
    after = torch.cat([p.detach().double().flatten() for p in es.params])
    return stats["update_ratio"], float(torch.linalg.vector_norm(after - before) / torch.linalg.vector_norm(after))


@pytest.mark.parametrize("scale", [1e20, 1e-25], ids=["squares_overflow", "squares_underflow"])
def test_update_ratio_out_of_float32_range_is_the_ratio_of_the_step(scale: float) -> None:
    """Parameters and step whose float32 squares overflow (ratio 0 before) or underflow (inf before) report the ratio,
    within float32 rounding (relative 1e-6) of the float64 ratio of the parameters tell wrote."""
    ratio, reference = _ratio(scale)
    assert 0.005 < reference < 0.05  # a step of about 1% of the parameters took place
    assert ratio == pytest.approx(reference, rel=1e-6, abs=0)


def test_update_ratio_in_range_is_unchanged() -> None:
    """At ordinary magnitudes the ratio is the float32 norms' ratio, within float32 rounding of the float64 one."""
    ratio, reference = _ratio(1.0)
    assert ratio == pytest.approx(reference, rel=1e-6, abs=0)


def test_update_ratio_of_float16_parameters_has_float32_accuracy() -> None:
    """float16 parameters' norms are taken in float32: the ratio within float32 rounding (relative 1e-6) of the float64
    ratio of the float16 parameters tell wrote, where float16 norms are off by ~1e-3."""
    ratio, reference = _ratio(1.0, torch.float16)
    assert 0.005 < reference < 0.05
    assert ratio == pytest.approx(reference, rel=1e-6, abs=0)


def test_finite_norm_of_several_tensors_is_their_joint_norm() -> None:
    """A list of tensors, of mixed dtypes, their squares out of float32's range: the float64 norm of their
    concatenation (within float32 rounding)."""
    for parts, plain in (
        ([torch.tensor([3e30]), torch.tensor([4e30, 12e30])], math.inf),
        ([torch.tensor([3e-30]), torch.tensor([4e-30], dtype=torch.float64)], 0.0),
    ):
        reference = float(torch.linalg.vector_norm(torch.cat([t.double() for t in parts])))
        assert finite_norm(parts, plain) == pytest.approx(reference, rel=1e-6, abs=0)
