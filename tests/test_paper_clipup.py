"""ClipUp (Toklu et al., PPSN 2020, arXiv:2008.02387, Algorithm 1) against its equations at the ends of the float range:
``v ← m·v + α·g/‖g‖``, ``v`` clipped to ``max_speed``, ``θ ← θ − v``: only the direction of ``g`` is read."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import flipes
from flipes.optim import ClipUp


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [
        (torch.float32, 1e-40),  # a subnormal gradient: its squares underflowed to ‖g‖ = 0
        (torch.float32, 1e-25),
        (torch.float32, 1e25),  # squares past float32's range: ‖g‖ = inf
        (torch.float32, 1e37),
        (torch.float64, 1e-310),
        (torch.float64, 1e200),
    ],
)
def test_a_first_step_is_lr_along_the_gradient_whatever_its_scale(dtype: torch.dtype, scale: float) -> None:
    """From v = 0 the first step is exactly ``α·g/‖g‖`` (Algorithm 1; ``α`` < max_speed, so no clipping) for a
    gradient of any finite scale, over two parameters taken as one vector: equal within 4 ulps of the dtype to the
    step of the same direction at scale 1, computed by hand in float64."""
    direction = torch.tensor([3.0, 0.0, -4.0, 12.0], dtype=torch.float64)  # ‖·‖ = 13
    a, b = nn.Parameter(torch.zeros(3, dtype=dtype)), nn.Parameter(torch.zeros(1, dtype=dtype))
    opt = ClipUp([a, b], lr=0.1, momentum=0.9, max_speed=0.2)
    g = (direction * scale).to(dtype)
    a.grad, b.grad = g[:3].clone(), g[3:].clone()
    opt.step()
    expected = -0.1 * direction / 13
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(torch.cat([a.detach(), b.detach()]).double(), expected, rtol=4 * eps, atol=4 * eps)


def test_flipes_with_clipup_steps_on_a_fitness_of_scale_1e25() -> None:
    """FlipES with raw shaping (its gradient then scales with the fitness) and ClipUp on a float32 vector: a fitness
    ``−1e25·‖x − 1‖²`` moves the centre exactly ``lr`` along the ES gradient on the first generation, as
    ``−1e-25``'s, ``−1``'s and ``−1e15``'s (its direction) would; a gradient this large once left the centre where it
    was."""
    ends = []
    for scale in (1e-25, 1.0, 1e15, 1e25):
        x = flipes.flipout(flipes.nn.Vector(torch.zeros(5)))
        optimizer = lambda p: ClipUp(p, lr=0.1, momentum=0.9, max_speed=0.2)  # noqa: E731
        es = flipes.FlipES(x, popsize=8, sigma=0.1, seed=0, shaping=flipes.shaping.raw, optimizer=optimizer)
        with es.population():
            fitness = -scale * (x() - 1).square().sum(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            es.tell(fitness)
        ends.append(x.value.detach().clone())
    for end in ends:
        assert abs(end.norm().item() - 0.1) < 1e-6
        torch.testing.assert_close(end, ends[1], rtol=1e-5, atol=1e-6)
