"""ClipUp's step and the z_score / ARS weights are unchanged, bit for bit, by a power-of-two scaling of the gradient
or fitness, over the whole float range: where squares overflow, where some of them are subnormal, where the values
themselves are subnormal, and with denormals flushed to zero (the rescaling factor must then be a normal number)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from flipes.optim import ClipUp
from flipes.shaping import ars, z_score


def clipup_step(g: torch.Tensor) -> torch.Tensor:
    """The first ClipUp step (lr 0.1 < max_speed, no clipping) on gradient ``g`` split over two parameters."""
    a, b = nn.Parameter(torch.zeros(len(g) - 3, dtype=g.dtype)), nn.Parameter(torch.zeros(3, dtype=g.dtype))
    opt = ClipUp([a, b], lr=0.1, momentum=0.9, max_speed=0.2)
    a.grad, b.grad = g[:-3].clone(), g[-3:].clone()
    opt.step()
    return torch.cat([a.detach(), b.detach()])


def unit_gradient(dtype: torch.dtype, coarse: bool = True, n: int = 1024) -> torch.Tensor:
    """1024 entries in (-1, 1), the largest in [0.5, 1): ``coarse``, with 10 significant bits (exact after any
    power-of-two scaling down to 2^-139), else with every bit of the dtype (whose squares round where subnormal)."""
    generator = torch.Generator().manual_seed(0)
    if coarse:
        g = torch.randint(-1023, 1024, (n,), generator=generator).to(dtype) / 1024
    else:
        g = torch.rand(n, generator=generator, dtype=torch.float64).to(dtype) * 2 - 1
    g[0] = 1023 / 1024
    return g


@pytest.fixture
def flushed_denormals() -> Iterator[None]:
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize(
    ("dtype", "exponent", "coarse"),
    [
        (torch.float32, -139, True),  # subnormal entries: ‖g‖ underflowed to 0
        (torch.float32, -66, False),  # ‖g‖ ≈ 2^-62 > √tiny, a sum of subnormal squares, each rounded
        (torch.float32, -30, False),
        (torch.float32, 30, False),
        (torch.float32, 100, False),  # squares past float32's range: ‖g‖ = inf
        (torch.float64, -1060, True),
        (torch.float64, -514, False),  # ‖g‖ ≈ 2^-510 > √tiny, a sum of subnormal squares
        (torch.float64, 600, False),
    ],
)
def test_clipup_step_is_bitwise_the_same_for_a_gradient_scaled_by_a_power_of_two(
    dtype: torch.dtype, exponent: int, coarse: bool
) -> None:
    """``g · 2^k`` steps exactly as ``g`` does (``g/‖g‖`` is scale-free and a power of two rounds nothing): also where
    ``‖g‖`` is in range but the squares summed into it were subnormal, so rounded, which an unscaled norm gets wrong in
    its last bits."""
    g = unit_gradient(dtype, coarse)
    assert torch.equal(clipup_step(g * 2.0**exponent), clipup_step(g))


@pytest.mark.parametrize(("dtype", "exponent"), [(torch.float32, 127), (torch.float64, 1023)])
def test_clipup_rescales_the_largest_gradients_by_a_normal_factor(
    dtype: torch.dtype, exponent: int, flushed_denormals: None
) -> None:
    """With denormals flushed to zero (``torch.set_flush_denormal``, as some hardware runs), a gradient whose largest
    entry is within a factor 2 of the dtype's largest power of two still steps exactly as at scale 1: the factor that
    scales it down must be a normal number, or it is read as 0 and the step is 0."""
    g = unit_gradient(dtype)
    assert torch.equal(clipup_step(g * 2.0**exponent), clipup_step(g))


UNIT = torch.tensor([1.0, -3.0, 2.5, 0.5, 0.75, -1.25])


@pytest.mark.parametrize(
    ("dtype", "exponent"),
    [(torch.float32, -140), (torch.float32, -100), (torch.float32, 100), (torch.float64, -1070), (torch.float64, 1000)],
)
def test_z_score_and_ars_are_bitwise_the_same_for_fitness_scaled_by_a_power_of_two(dtype: torch.dtype, exponent: int) -> None:
    """Fitness ``f · 2^k`` gets exactly the weights of ``f``, down to subnormal fitness (whose rescaling factor, kept
    within the dtype's normal range, must not overflow to inf)."""
    f = UNIT.to(dtype)
    scaled = f * 2.0**exponent
    assert torch.equal(scaled / 2.0**exponent, f)  # the scaled fitness is exact
    assert torch.equal(z_score(scaled), z_score(f))
    assert torch.equal(ars(scaled), ars(f))


@pytest.mark.parametrize(("dtype", "exponent"), [(torch.float32, 126), (torch.float64, 1022)])
def test_z_score_and_ars_rescale_the_largest_fitness_by_a_normal_factor(
    dtype: torch.dtype, exponent: int, flushed_denormals: None
) -> None:
    """With denormals flushed to zero, fitness whose largest magnitude is in [2^(k), 2^(k+1)) near the top of the range
    gets the weights of the unscaled fitness: a subnormal factor would read as 0 and make every weight 0."""
    f = UNIT.to(dtype) / 4  # largest magnitude 0.75
    scaled = f * 2.0 ** (exponent + 1)
    assert torch.equal(z_score(scaled), z_score(f))
    assert torch.equal(ars(scaled), ars(f))


@pytest.mark.filterwarnings("ignore:std")  # torch warns of the std of no values
def test_z_score_of_no_fitness_is_empty() -> None:
    """An empty fitness tensor gives an empty z_score (there is no largest value to rescale by), as before rescaling."""
    assert z_score(torch.zeros(0)).shape == (0,)


@pytest.mark.parametrize("exponent", [-1000, 1000])
def test_clipup_steps_a_float64_gradient_past_float32s_range_in_a_group_with_float32_parameters(exponent: int) -> None:
    """A group holding a float32 and a float64 parameter, whose float64 gradient is ``g · 2^k`` beyond float32's range:
    the float64 parameter steps exactly as in an all-float64 group on ``g`` (``lr·g/‖g‖``), and the float32 one, its
    gradient 0 or ~1e-300 of the norm, not at all; a factor bounded by float32's range (or cast to float32) left
    ``‖g‖`` at 0 or inf, and the step at 0."""
    g = unit_gradient(torch.float64, coarse=False)
    steps = []
    for dtype, scale in ((torch.float64, 1.0), (torch.float32, 2.0**exponent)):
        a, b = nn.Parameter(torch.zeros(4, dtype=dtype)), nn.Parameter(torch.zeros(len(g), dtype=torch.float64))
        opt = ClipUp([a, b], lr=0.1, momentum=0.9, max_speed=0.2)
        a.grad = (
            torch.tensor([0.0, 1.0, -1.0, 0.0], dtype=dtype)
            if exponent > 0 and dtype == torch.float32
            else torch.zeros(4, dtype=dtype)
        )
        b.grad = g * scale
        opt.step()
        steps.append((a.detach(), b.detach()))
    (_, alone), (a_step, b_step) = steps
    assert torch.equal(b_step, alone)
    assert torch.equal(a_step, torch.zeros(4))
