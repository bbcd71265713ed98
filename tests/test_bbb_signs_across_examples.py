"""Flipout's per-example signs in backprop training are independent across the examples of a minibatch.

Wen et al. (ICLR 2018, arXiv:1803.04386, Sec. 3) draw ``s_n`` and ``r_n`` with independent fair ±1 entries for every
example ``n``: the pseudo-independence of the examples' weights ``W̄ + ΔŴ ∘ (r_n s_nᵀ)`` rests on it. The tests of
fairness (tests/test_backprop.py) look at each sign column's mean and at lagged products of the flattened draw; these
look at every channel pair of two examples a fixed distance apart, which a sampler that repeated, negated or rotated
an example's signs in a later example would fail.
"""

from __future__ import annotations

import math

import pytest
import torch

from flipes.nn import FlipoutLinear, GaussianPosterior, attach_noise
from flipes.nn.variational import layer_noise

EXAMPLES = 4096
LAGS = 8


@pytest.mark.parametrize(("in_features", "out_features"), [(64, 32), (3, 5)])
def test_signs_of_different_examples_are_uncorrelated_for_every_channel_pair(in_features: int, out_features: int) -> None:
    """For ``s`` (examples, in) and ``r`` (examples, out) of one draw for 4096 examples, and each lag L = 1..8, every
    entry of the channel-by-channel mean ``s[:-L]ᵀ s[L:] / (4096 - L)`` (example n's channel i times example n+L's
    channel j) is within 6/√(4096 - L) of 0 (two-sided 2e-9 per entry for fair independent signs, < 1e-4 over the
    2·8·(64² + 32²) + 2·8·(3² + 5²) entries; seed fixed), and every sign is ±1. Channel counts that are and are not
    multiples of the 64 signs of a random word."""
    torch.manual_seed(21)
    layer = FlipoutLinear(in_features, out_features)
    attach_noise(layer, GaussianPosterior)
    draw = layer_noise(layer).slots[0].draw(layer.perturbed_weights()[0], EXAMPLES)
    for signs in (draw.s, draw.r):
        assert set(signs.unique().tolist()) == {-1.0, 1.0}
        signs = signs.double()
        for lag in range(1, LAGS + 1):
            pairs = signs[:-lag].T @ signs[lag:] / (EXAMPLES - lag)
            assert pairs.abs().max().item() < 6 / math.sqrt(EXAMPLES - lag), (lag, pairs.abs().max().item())
