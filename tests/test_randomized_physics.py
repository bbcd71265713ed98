"""Domain randomization as a user of it checks it: the drawn constants lie in their ranges whatever the env's dtype, are
uniform in them and independent of each other and of the neighbouring envs' draws."""

from __future__ import annotations

import math

import torch

from envs import CartPoleVectorEnv

# ranges of a few float32 numbers between bounds that float32 lacks, rounding outward (past the range) or inward
NARROW = {
    "gravity_range": [9.79999, 9.80001],  # low outward
    "masscart_range": [0.999999, 1.000001],  # low outward
    "masspole_range": [0.2999999, 0.3],  # both outward
    "length_range": [0.05, 0.0500001],  # high outward
    "force_mag_range": [-0.3, -0.2999999],  # both outward
}


def test_float32_draws_lie_in_their_ranges() -> None:
    """A float32 env's draws, rounded to float32 from ranges whose bounds float32 cannot hold, still lie in
    ``[low, high]`` (compared exactly, in float64), and near both bounds: rounded to nearest, some would land just past
    a bound (0.3 rounds to 0.30000001)."""
    env = CartPoleVectorEnv(4096, dtype=torch.float32, **NARROW)
    env.reset(seed=3)
    for name, (low, high) in NARROW.items():
        drawn = getattr(env, name.removesuffix("_range")).double()
        assert drawn.dtype == torch.float64 and drawn.shape == (4096,)
        assert bool((drawn >= low).all()) and bool((drawn <= high).all()), (name, drawn.min().item(), drawn.max().item())


def test_draws_are_uniform_in_the_range_and_independent_across_constants_and_envs() -> None:
    """Over 20,000 envs of one ``reset(seed=s)``, each constant's draws mapped to [0, 1) by its range pass a
    Kolmogorov-Smirnov test at the DKW bound for false-alarm rate 1e-6 (sup |F_n - F| < sqrt(ln(2e6) / 2n)); the
    correlations between two constants of one env, and between one constant of envs i and i + 1, are below 0.04
    (5.7 standard errors: false-alarm rate < 1e-7 each, normal approximation). Fixed seed."""
    n = 20_000
    ranges = {"masspole_range": [0.05, 0.5], "length_range": [0.25, 1.0], "force_mag_range": [5.0, 15.0]}
    env = CartPoleVectorEnv(n, **ranges)
    env.reset(seed=12345)
    u = torch.stack([(getattr(env, k.removesuffix("_range")) - lo) / (hi - lo) for k, (lo, hi) in ranges.items()], 1)
    bound = math.sqrt(math.log(2e6) / (2 * n))
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    for column in u.T:
        ordered = column.sort().values
        gap = torch.maximum(grid - ordered, ordered - (grid - 1 / n)).max()
        assert gap < bound, (gap, bound)
    pairs = [(u[:, 0], u[:, 1]), (u[:, 1], u[:, 2]), (u[:, 0], u[:, 2]), (u[:-1, 0], u[1:, 0]), (u[:-1, 1], u[1:, 1])]
    for a, b in pairs:
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1]) < 0.04
