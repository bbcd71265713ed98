"""More habits students bring from other libraries, each refused in one line that names the fix: a NumPy array or a
list given to a Flipout layer (a TypeError naming torch.as_tensor at the layer's dtype and device, as torch.nn's layers
refuse one)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

import flipes

_LAYERS: list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]] = [
    ("FlipoutLinear", lambda: nn.Linear(4, 2), (4, 4)),
    ("FlipoutConv2d", lambda: nn.Conv2d(1, 2, 3), (4, 1, 5, 5)),
    ("FlipoutConvTranspose1d", lambda: nn.ConvTranspose1d(1, 2, 3), (4, 1, 5)),
]


@pytest.mark.parametrize("inside", [False, True], ids=["outside", "inside"])
@pytest.mark.parametrize("layer, make, shape", _LAYERS, ids=[name for name, _, _ in _LAYERS])
def test_numpy_and_list_inputs_are_refused_naming_the_conversion(
    layer: str, make: Callable[[], nn.Module], shape: tuple[int, ...], inside: bool
) -> None:
    """A NumPy array or nested list, in or outside a population, is a TypeError (as torch.nn's layers raise) naming
    torch.as_tensor at the parameters' dtype and device, with no AttributeError chained to it."""
    model = flipes.flipout(make().double())
    es = flipes.FlipES(model, popsize=4, sigma=0.1, seed=0)
    for x, kind in ((np.ones(shape), "numpy.ndarray"), (np.ones(shape).tolist(), "list")):
        with pytest.raises(TypeError) as caught, es.population() if inside else torch.no_grad():
            model(x)
        assert str(caught.value) == (
            f"{layer}: input must be a torch.Tensor, not {kind}: convert it first, "
            "torch.as_tensor(x, dtype=torch.float64, device='cpu')"
        )
        assert caught.value.__suppress_context__
    with es.population() if inside else torch.no_grad():  # the converted input goes through
        assert model(torch.as_tensor(x, dtype=torch.float64, device="cpu")).shape[0] == 4
