"""A fitness given as a list of NumPy arrays (one per member, as a loop over members builds it) reaches flipes' own
checks without torch's note that such a list is "extremely slow" to convert (N values are not), pointing into flipes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from flipes.es.checks import check_fitness


def test_a_list_of_numpy_scalars_is_read_as_float64_without_a_warning() -> None:
    """Four np.float64 values (a loop appending each member's float) are the four members' fitness, as float64."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = check_fitness([np.float64(i) / 3 for i in range(4)], range(4), 4)
    assert torch.equal(f, torch.arange(4, dtype=torch.float64) / 3)


def test_a_list_of_one_element_arrays_gets_the_shape_error_alone() -> None:
    """Four (1,)-shaped arrays: flipes' shape error, with no torch warning before it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"fitness has shape \(4, 1\), but this process evaluates 4 members"):
            check_fitness([np.ones(1) for _ in range(4)], range(4), 4)
