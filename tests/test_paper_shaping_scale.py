"""Shapings that the papers define invariant to the fitness's scale stay so at the ends of the float range: z-scores
``(f − mean)/std``, and ARS's weights ``N (r+ − r−)/(2 b σ_R)`` (Mania, Guy & Recht, 2018, Algorithm 2, line 7: the
step divided by σ_R, the standard deviation of the 2b returns used)."""

from __future__ import annotations

import math

import pytest
import torch

from flipes.shaping import ars, z_score

UNIT = [1.0, -3.0, 2.5, 0.5]  # (r+, r-) of two directions


def z_reference() -> torch.Tensor:
    """(f - mean) / std by hand, population std."""
    mean = sum(UNIT) / 4
    std = math.sqrt(sum((f - mean) ** 2 for f in UNIT) / 4)
    return torch.tensor([(f - mean) / std for f in UNIT], dtype=torch.float64)


def ars_reference() -> torch.Tensor:
    """Both directions kept (b = 2): w_2k = -w_2k+1 = N (r+ - r-) / (2 b σ_R), σ_R the population std of the 4."""
    mean = sum(UNIT) / 4
    sigma_r = math.sqrt(sum((f - mean) ** 2 for f in UNIT) / 4)
    w = [4 * (UNIT[0] - UNIT[1]) / (2 * 2 * sigma_r), 4 * (UNIT[2] - UNIT[3]) / (2 * 2 * sigma_r)]
    return torch.tensor([w[0], -w[0], w[1], -w[1]], dtype=torch.float64)


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [(torch.float64, 1e200), (torch.float64, 1e-170), (torch.float64, 1e300), (torch.float32, 1e38), (torch.float32, 1e-30)],
)
def test_z_scores_and_ars_weights_do_not_depend_on_the_fitness_scale(dtype: torch.dtype, scale: float) -> None:
    """Fitness ``UNIT · scale`` gets the weights of ``UNIT`` computed by hand (within 8 ulps of the dtype): squares of
    such fitness overflow or underflow, which once made every weight 0 (no step) or NaN."""
    fitness = (torch.tensor(UNIT, dtype=torch.float64) * scale).to(dtype)
    tol = 8 * torch.finfo(dtype).eps
    torch.testing.assert_close(z_score(fitness).double(), z_reference(), rtol=tol, atol=tol)
    torch.testing.assert_close(ars(fitness).double(), ars_reference(), rtol=tol, atol=tol)
