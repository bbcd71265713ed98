"""``stats["grad_norm"]`` is the norm of the finite gradient estimate even where its squares leave float32's range
(raw shaping of fitness values ~1e25 or ~1e-28): found by a power-of-two rescaling only there, so a norm in range is
the plain ``vector_norm``, bit for bit."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import flipes
from flipes.optim import finite_norm


def _told(scale: float) -> tuple[float, torch.Tensor]:
    """``grad_norm`` of one raw-shaped tell of fitness times ``scale`` (float32), and the gradient tell wrote."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Linear(3, 2))
    es = flipes.FlipES(
        model, popsize=8, sigma=0.1, seed=0, shaping=flipes.shaping.raw, optimizer=lambda p: torch.optim.SGD(p, lr=1e-30)
    )
    with es.population():
        fitness = model(torch.randn(8, 3)).sum(-1) * scale
    stats = es.tell(fitness)
    return stats["grad_norm"], torch.cat([p.grad.flatten() for p in es.params])


@pytest.mark.parametrize("scale", [1e25, 1e-28], ids=["squares_overflow", "squares_underflow"])
def test_grad_norm_of_a_finite_gradient_out_of_float32_range_is_its_norm(scale: float) -> None:
    """A finite float32 gradient whose squares overflow (inf before) or underflow (0 before) reports its norm, within
    float32 rounding (relative 1e-6) of the float64 norm of the gradient tell wrote."""
    grad_norm, grad = _told(scale)
    assert grad.dtype == torch.float32 and bool(grad.isfinite().all())
    assert float(torch.linalg.vector_norm(grad)) in (math.inf, 0.0)  # the plain norm: its squares out of range
    reference = float(torch.linalg.vector_norm(grad.double()))
    assert grad_norm == pytest.approx(reference, rel=1e-6, abs=0)


def test_grad_norm_in_range_is_the_plain_vector_norm_bit_for_bit() -> None:
    """At an ordinary fitness scale ``grad_norm`` is float32 ``vector_norm`` of the gradient, exactly."""
    grad_norm, grad = _told(1.0)
    assert grad_norm == float(torch.linalg.vector_norm(grad))


def test_a_non_finite_gradient_keeps_its_non_finite_norm() -> None:
    """The rescaling is for finite gradients: an inf or NaN entry still reads inf or NaN."""
    assert finite_norm(torch.tensor([1.0, math.inf]), math.inf) == math.inf
    assert math.isnan(finite_norm(torch.tensor([1.0, math.nan]), math.nan))
    assert finite_norm(torch.tensor([3e30, 4e30]), math.inf) == pytest.approx(5e30, rel=1e-6, abs=0)
