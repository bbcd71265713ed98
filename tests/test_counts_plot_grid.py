"""``flipes plot --group --x timesteps``: seeds whose generations end at different env steps are averaged step-wise on
the union of their x, where every seed has data, with the standard error of the sample standard deviation (n-1)."""

from __future__ import annotations

import math

import pytest

from flipes.seeds import aggregate


def test_seeds_at_different_timesteps_average_their_latest_values_on_the_union_of_their_x() -> None:
    """Three seeds logging at their own timesteps: the grid is every x of any seed from the largest first x (120) to
    the smallest last x (390); at each x every seed counts with its value at its last x at or before it (nothing
    interpolated); mean, se = s/√n with s over n-1, and the t interval are those computed here by hand."""
    a = ([100, 250, 400], [1.0, 2.0, 3.0])
    b = ([120, 260, 390], [10.0, 20.0, 30.0])
    c = ([110, 240, 395], [4.0, 8.0, 16.0])
    agg = aggregate([a, b, c])
    assert agg.x == [120, 240, 250, 260, 390]
    held = {120: (1, 10, 4), 240: (1, 10, 8), 250: (2, 10, 8), 260: (2, 20, 8), 390: (2, 30, 8)}  # step-wise, by hand
    t = 0.95 * math.sqrt(2 / (1 - 0.95**2))  # Student's t(0.975) for 2 degrees of freedom, closed form: a√(2/(1-a²)), a = 2p-1
    for i, x in enumerate(agg.x):
        values = held[x]
        mean = sum(values) / 3
        se = math.sqrt(sum((v - mean) ** 2 for v in values) / 2 / 3)
        assert (agg.mean[i], agg.se[i]) == pytest.approx((mean, se), rel=1e-14)
        assert (agg.ci95_low[i], agg.ci95_high[i]) == pytest.approx((mean - t * se, mean + t * se), rel=1e-12)
        assert (agg.min[i], agg.max[i]) == (min(values), max(values))
    assert agg.n == 3 and agg.ends == (400, 390, 395)
