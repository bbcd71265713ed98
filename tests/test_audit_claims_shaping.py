"""flipes.shaping's functions map fitness (N,) to weights (N,): any other shape is refused, naming it."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import flipes


@pytest.mark.parametrize("name", ["centered_ranks", "z_score", "raw", "ars"])
@pytest.mark.parametrize("shape", [(4, 1), (2, 2), ()])
def test_a_shaping_function_refuses_fitness_that_is_not_one_value_per_member(name: str, shape: tuple[int, ...]) -> None:
    """A column (N, 1), a table (N, k) or a scalar is refused with the shape and the fix, as a tensor and as a numpy
    array: centered ranks of a table were garbled silently, of a column a bare indexing error."""
    fitness = torch.arange(float(np.prod(shape, dtype=int))).reshape(shape)
    shaping = getattr(flipes.shaping, name)
    for value in (fitness, fitness.numpy()):
        with pytest.raises(ValueError, match=re.escape(f"fitness (N,), one value per member, got shape {shape}: pass a 1-D")):
            shaping(value)


def test_one_value_per_member_keeps_its_shaping() -> None:
    """1-D fitness, as a tensor, an array or a list, still shapes as before: mean ranks of ties, z-scores, ARS."""
    f = [3.0, 1.0, 3.0, 0.0]
    expect = torch.tensor([2.5, 1.0, 2.5, 0.0], dtype=torch.float64) / 3 - 0.5  # mean ranks of 0 .. 3, ties shared
    torch.testing.assert_close(flipes.shaping.centered_ranks(f), expect)
    assert flipes.shaping.raw(np.array(f)).shape == (4,)
    assert flipes.shaping.z_score(torch.tensor(f)).shape == (4,)
    assert flipes.shaping.ars(torch.tensor(f)).shape == (4,)
