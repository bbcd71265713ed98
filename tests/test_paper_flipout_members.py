"""Flipout's pseudo-independence across the members of one ε group (Wen et al., ICLR 2018, Sec. 3.1): member n's
perturbation is ``ε ∘ r_n s_nᵀ`` with ``s_n``, ``r_n`` Rademacher vectors drawn independently per member, so any two
distinct members' sign vectors are unrelated. The statistical checks use a fixed seed and state their false-alarm
rate (for a correct sampler)."""

from __future__ import annotations

import math

import torch

import flipes


def test_every_pair_of_members_of_a_group_has_unrelated_input_and_output_signs() -> None:
    """A 512 → 512 Flipout layer, one group of 24 mirrored members (12 distinct sign rows): for each of the 66 pairs
    of distinct rows, s_n agrees with s_m, r_n with r_m, and s_n with r_m, in a fraction within Hoeffding's bound of
    1/2 (m = 512 signs each, false alarm 1e-7 per check, < 2e-5 over the 198); mirrored twins share s and negate r
    exactly. A key that gave two members of a group one sign vector (either of the two), or an output vector equal to
    another member's input vector, fails here."""
    layer = flipes.nn.FlipoutLinear(512, 512)
    es = flipes.FlipES(layer, popsize=24, sigma=0.05, seed=0, groups=1, mirrored=True)
    with es.population():
        noise = layer.noise[0]
    s, r = noise.s.double(), noise.r.double()
    assert torch.equal(s[1::2], s[0::2]) and torch.equal(r[1::2], -r[0::2])
    s, r = s[0::2], r[0::2]
    bound = math.sqrt(math.log(2 / 1e-7) / (2 * 512))  # Hoeffding: 512 independent fair coin flips
    pairs = torch.triu_indices(len(s), len(s), offset=1)
    for a, b in ((s, s), (r, r), (s, r)):
        agree = ((a @ b.T / 512 + 1) / 2)[pairs[0], pairs[1]]  # the fraction of equal signs of rows n < m
        assert (agree - 0.5).abs().max().item() < bound, agree
