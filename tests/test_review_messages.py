"""The hint for a model converted inside a population (hints.moved_fix) raises no false alarm: a model given an input
of another dtype, without any conversion, still gets the hint to convert its inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import flipes


@pytest.mark.parametrize("model_dtype,input_dtype", [(torch.float32, torch.float64), (torch.float64, torch.float32)])
def test_an_input_of_another_dtype_gets_the_input_hint_not_the_converted_model_one(
    model_dtype: torch.dtype, input_dtype: torch.dtype
) -> None:
    """A float32 (float64) model, not converted, fed a float64 (float32) input: the error names the model's dtype and
    the input conversion, and does not say the model was converted."""
    model = flipes.flipout(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2), nn.LayerNorm(2))).to(model_dtype)
    es = flipes.FlipES(model, popsize=4, sigma=0.1, seed=0)
    with pytest.raises(RuntimeError) as caught, es.population():
        model(torch.randn(4, 4, dtype=input_dtype))
    text = str(caught.value)
    assert f"the model's parameters are {model_dtype} on cpu: give it floating-point inputs" in text
    assert "converted or moved" not in text
