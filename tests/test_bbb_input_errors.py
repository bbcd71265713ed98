"""A Flipout layer sampling backprop noise refuses a badly shaped input with the error the same layer gives without
noise (eval mode: torch's own), not the error of an ES population, which a backprop minibatch is not."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import flipes
from flipes.nn import GaussianPosterior, attach_noise

CASES = [
    ("Linear, 2x the features", lambda: nn.Linear(3, 2), (4, 6)),
    ("Linear, other features", lambda: nn.Linear(3, 2), (4, 5)),
    ("Linear, 0-dim", lambda: nn.Linear(3, 2), ()),
    ("Conv2d, 2-D input", lambda: nn.Conv2d(3, 4, 3), (8, 8)),
    ("Conv2d, other channels", lambda: nn.Conv2d(3, 4, 3), (2, 5, 8, 8)),
    ("Conv2d, 5-D input", lambda: nn.Conv2d(3, 4, 3), (2, 1, 3, 8, 8)),
    ("ConvTranspose2d, 2-D input", lambda: nn.ConvTranspose2d(3, 4, 3), (8, 8)),
    ("ConvTranspose2d, other channels", lambda: nn.ConvTranspose2d(3, 4, 3), (2, 5, 8, 8)),
]


def error(layer: nn.Module, x: Tensor) -> BaseException:
    with pytest.raises(Exception) as info:
        layer(x)
    return info.value


@pytest.mark.parametrize(("make", "shape"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_badly_shaped_minibatch_gets_the_plain_layers_error_with_noise_too(make: Callable[[], nn.Module], shape: tuple) -> None:
    """With a Gaussian posterior attached, in training mode (sampling) and in eval mode (the mean network), the input
    raises the same exception type and message as the plain torch layer it was converted from, which speaks of no
    population or members (it was the population's 'inside a population of 8 members', its members-first hint for
    2x the features, or an IndexError for a 0-dim input, in eval mode too)."""
    torch.manual_seed(0)
    bare = make()
    layer = attach_noise(flipes.flipout(bare), GaussianPosterior)
    x = torch.randn(shape)
    plain = error(bare, x)
    for training in (True, False):
        got = error(layer.train(training), x)
        assert (type(got), str(got)) == (type(plain), str(plain)), training
