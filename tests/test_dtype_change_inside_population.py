"""A model converted to another dtype after its generation's noise was drawn (``model.double()`` inside
``with es.population()``) is an error naming that and where to convert it instead, not a hint to convert the inputs
(which have the model's new dtype)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import flipes

FIX = (
    "flipes: the model's parameters are now torch.float64 on cpu, but this generation's noise was drawn for "
    "torch.float32 on cpu (the model was converted or moved inside `with es.population()`, or between two blocks of "
    "one generation): call model.double() or model.to(...) before flipes.FlipES(model, ...) is built; for an ES "
    "already run, build a new FlipES for the converted model and load this one's state_dict()"
)


def _model_and_es() -> tuple[nn.Module, flipes.FlipES]:
    model = flipes.flipout(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2), nn.LayerNorm(2)))
    return model, flipes.FlipES(model, popsize=4, sigma=0.1, seed=0)


@pytest.mark.parametrize("convert", [lambda m: m.double(), lambda m: m.to(torch.float64)], ids=["double", "to_float64"])
def test_a_model_converted_inside_a_population_is_named_as_the_cause(convert: Callable[[nn.Module], nn.Module]) -> None:
    """The forward's error says the parameters are float64 now and the noise was drawn for float32, and gives the fix."""
    model, es = _model_and_es()
    with pytest.raises(RuntimeError) as caught, es.population():
        convert(model)
        model(torch.randn(4, 4, dtype=torch.float64))
    assert FIX in str(caught.value) and "give it floating-point inputs" not in str(caught.value)


def test_a_model_converted_between_two_blocks_of_one_generation_is_named_as_the_cause() -> None:
    """A second block of the same generation keeps its noise: a conversion between the blocks gets the same fix."""
    model, es = _model_and_es()
    with es.population():
        model(torch.randn(4, 4))
    model.double()
    with pytest.raises(RuntimeError) as caught, es.population():
        model(torch.randn(4, 4, dtype=torch.float64))
    assert FIX in str(caught.value)
