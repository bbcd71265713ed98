"""What a notebook shows for the last expression of a cell, its repr, is readable: the parameter report as its table."""

from __future__ import annotations

import torch
from torch import nn

import flipes


def test_the_repr_of_a_parameter_report_is_its_table() -> None:
    """``es.report()`` as a cell's result (its repr) is the table ``print`` shows, one line per parameter and the totals,
    not the dataclass's single line of every row's fields."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))
    model[2].bias.requires_grad_(False)
    report = flipes.FlipES(model, popsize=4, sigma=0.1).report()
    assert repr(report) == str(report)
    assert repr(report).splitlines() == [
        "parameter  shape            how             module",
        "0.weight   (4, 3)           flipout         FlipoutLinear",
        "0.bias     (4,)             flipout         FlipoutLinear",
        "2.weight   (2, 4)           flipout         FlipoutLinear",
        "2.bias     (2,)             frozen          FlipoutLinear",
        "evolved 24 of 26 parameters (flipout 24, frozen 2)",
    ]
