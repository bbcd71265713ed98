"""A Vector's mirrored noise, however large, is interleaved twins: row 2k+1 is exactly -row 2k, and the draws are the
same whichever way the twins are laid out (small and large vectors share one stream per group)."""

from __future__ import annotations

import pytest
import torch

from flipes.noise import generator, sample_dense, stream_seed


@pytest.mark.parametrize("size", [10, 1 << 16])
def test_mirrored_dense_noise_is_interleaved_twins_of_the_groups_draws(size: int) -> None:
    """For a small and a large parameter: rows 0, 2, ... are each group's draws (σ times its generator's normals, in
    order) and rows 1, 3, ... their negatives, bit for bit."""
    param = torch.zeros(size)
    noise = sample_dense(seed=5, generation=2, slot=0, groups=range(2), group_size=4, param=param, sigma=0.3, mirrored=True)
    expected = torch.cat([
        torch.empty(2, size).normal_(0.0, 0.3, generator=generator(param.device, stream_seed(5, 2, g, 0))) for g in range(2)
    ])  # fmt: skip
    assert torch.equal(noise.delta[0::2], expected) and torch.equal(noise.delta[1::2], -expected)
    assert noise.delta.shape == (8, size) and noise.delta.is_contiguous()
