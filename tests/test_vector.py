"""``flipes.nn.Vector``: a parameter tensor evolved as it is (black-box ES on a vector), and per-member
values of a parameter a module uses directly beside its Flipout layers."""

from __future__ import annotations

import math

import pytest
import torch
from reference import member_parameters
from torch import nn
from torch.func import functional_call

import flipes

DT = torch.float64


def test_a_vector_returns_each_members_value_inside_a_population_and_its_own_outside() -> None:
    """Inside a population ``vec()`` is row by row the member's explicit parameters θ + σε_n (mirrored
    twins opposite); outside it is θ, the same tensor as the parameter."""
    vec = flipes.flipout(flipes.nn.Vector(torch.linspace(-1, 1, 5, dtype=DT)))
    es = flipes.FlipES(vec, popsize=8, sigma=0.3, seed=4)
    with es.population() as pop:
        values = vec()
        expect = torch.stack([m["value"] for m in member_parameters(es, vec)])
    assert values.shape == (pop.size, 5) and torch.equal(values, expect)
    assert torch.equal(values[0] + values[1], 2 * vec.value.detach())  # θ + σε and θ - σε
    assert vec() is vec.value


class _GenericVector(flipes.nn.Vector):
    """A subclass: inside a population it runs the generic per-member forward (torch.func.vmap)."""


@pytest.mark.parametrize("split", [None, 4])
def test_a_vectors_members_are_bit_for_bit_those_of_the_generic_per_member_forward(split: int | None) -> None:
    """``vec()`` inside a population (a shortcut past vmap) gives the very bits of the generic per-member forward a
    subclass of Vector runs, for a float32 matrix, over the whole population and part by part, generation after
    generation; and both searches step to the same values."""
    start = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    vecs = [flipes.flipout(cls(start)) for cls in (flipes.nn.Vector, _GenericVector)]
    searches = [flipes.FlipES(v, popsize=16, sigma=0.2, lr=0.1, seed=3) for v in vecs]
    for _ in range(3):
        fitness, values = [], []
        for vec, es in zip(vecs, searches, strict=True):
            with es.population() as pop:
                values.append(vec() if split is None else torch.cat([vec() for _ in pop.split(split)]))
            fitness.append(-values[-1].square().sum((1, 2)))
        assert values[0].shape == (16, 3, 4) and values[0].dtype == torch.float32
        assert torch.equal(values[0], values[1])
        for es, f in zip(searches, fitness, strict=True):
            es.tell(f)
    assert torch.equal(vecs[0].value, vecs[1].value)


def test_es_on_a_vector_minimizes_a_100_dimensional_sphere() -> None:
    """Black-box ES on f(x) = ‖x‖² in 100 dimensions from x = 3·1 (f = 900): the center's f falls
    below 0.01 in 300 generations (0.0011 and 0.0016 on two dev boxes; seed 0, popsize 128, σ 0.1, Adam at 0.05)."""
    x = flipes.flipout(flipes.nn.Vector(torch.full((100,), 3.0)))
    es = flipes.FlipES(x, popsize=128, sigma=0.1, lr=0.05, seed=0, maximize=False)
    for _ in range(300):
        with es.population():
            loss = x().square().sum(1)
        es.tell(loss)
    with torch.no_grad():
        assert x().square().sum().item() < 0.01


def test_a_large_adaptive_sigma_escapes_rastrigins_local_minima_where_a_small_one_sticks() -> None:
    """Rastrigin in 10 dimensions from x = 3·1 (f = 90, the global minimum 0 at x = 0), 1,000
    generations, popsize 256, Adam at 0.05, seed 0: σ = 0.1 stays in the nearest local minimum
    (f > 80; 89.6 measured), σ = 2 gets below 5 (1.19 and 0.37 on two dev boxes), and with sigma_lr = 0.2
    below 0.5 (0.059 and 0.079, σ shrinking to 3e-4), as the README's tuning advice says."""

    def rastrigin(x: torch.Tensor) -> torch.Tensor:
        return 10 * x.shape[-1] + (x * x - 10 * torch.cos(2 * math.pi * x)).sum(-1)

    found = []
    for sigma, sigma_lr in ((0.1, 0.0), (2.0, 0.0), (2.0, 0.2)):
        x = flipes.flipout(flipes.nn.Vector(torch.full((10,), 3.0)))
        es = flipes.FlipES(x, popsize=256, sigma=sigma, lr=0.05, seed=0, sigma_lr=sigma_lr, maximize=False)
        for _ in range(1000):
            with es.population():
                loss = rastrigin(x())
            es.tell(loss)
        found.append(rastrigin(x().detach()).item())
    assert found[0] > 80 and found[1] < 5 and found[2] < 0.5, found


class GaussianPolicy(nn.Module):
    """A mean network and a log standard deviation of its own, used directly in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4, dtype=DT), nn.Tanh(), nn.Linear(4, 2, dtype=DT))
        self.log_std = flipes.nn.Vector(torch.tensor([-0.5, 0.2], dtype=DT))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.net(obs), self.log_std().exp().expand(*obs.shape[:-1], 2)), -1)


def test_a_vector_beside_flipout_layers_is_one_more_parameter_per_member() -> None:
    """A policy's log-std as a Vector beside Flipout layers: every member's output equals a plain copy
    of the policy run with that member's explicit parameters (mean network and log-std alike)."""
    torch.manual_seed(0)
    policy = flipes.flipout(GaussianPolicy())
    plain = GaussianPolicy()
    es = flipes.FlipES(policy, popsize=6, sigma=0.2, seed=1)
    obs = torch.randn(6, 3, dtype=DT)
    with es.population():
        out = policy(obs)
        members = member_parameters(es, policy)
    for n, params in enumerate(members):
        expect = functional_call(plain, params, (obs[n],))
        torch.testing.assert_close(out[n], expect, rtol=1e-12, atol=1e-12)
    assert not torch.equal(out[0, 2:], out[2, 2:])  # the log-std differs per member


class GaussianRows(GaussianPolicy):
    """The mean actions and their standard deviation read against them, ``log_std(mu)``: any rows per member."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        mu = self.net(obs)
        return torch.cat((mu, self.log_std(mu).exp()), -1)


@pytest.mark.parametrize("layout", ["members-episodes", "member-major"])
def test_a_vector_read_against_a_tensor_gives_each_member_its_value_over_its_rows(layout: str) -> None:
    """``log_std(mu)`` expands the value to ``mu``'s shape: inside a population each member's rows, (N, K, act) or
    (N·K, act) member-major, get that member's own log-std (every row equal to the plain policy run with the member's
    explicit parameters), where ``log_std()`` of shape (N, act) would broadcast against (N, K, act) across members;
    outside, the plain value over every row; a tensor not ending in the value's shape is refused naming both."""
    torch.manual_seed(0)
    policy, plain = flipes.flipout(GaussianRows()), GaussianRows()
    es = flipes.FlipES(policy, popsize=4, sigma=0.2, seed=1)
    obs = torch.randn(4, 3, 3, dtype=DT)  # 3 rows per member
    with es.population():
        out = policy(obs if layout == "members-episodes" else obs.flatten(0, 1)).view(4, 3, 4)
        members = member_parameters(es, policy)
    for n, params in enumerate(members):
        torch.testing.assert_close(out[n], functional_call(plain, params, (obs[n],)), rtol=1e-12, atol=1e-12)
    assert not torch.equal(out[0, :, 2:], out[2, :, 2:]) and torch.equal(out[1, 0, 2:], out[1, 2, 2:])
    outside = policy(obs[0])
    assert torch.equal(outside[:, 2:], policy.log_std.value.detach().exp().expand(3, 2))
    with pytest.raises(ValueError, match=r"Vector of shape \(2,\): like= of shape \(3, 5\) does not end in \(2,\)"):
        policy.log_std(torch.zeros(3, 5, dtype=DT))


def test_a_vector_of_integers_is_refused() -> None:
    """Integer values cannot be perturbed: a Vector of them is an error naming the fix."""
    with pytest.raises(TypeError, match="floating-point"):
        flipes.nn.Vector(torch.arange(3))


def test_a_list_or_array_is_the_starting_value_and_an_int_or_tuple_a_size() -> None:
    """An x0 given as a list (of ints too) or a numpy array is the starting value in torch's default float dtype
    (or ``dtype``), as evosax and EvoTorch take it; an int or a tuple is a size of zeros."""
    import numpy as np

    cases = [([1, 2, 3], [1.0, 2.0, 3.0]), (np.array([2.0, 3.0]), [2.0, 3.0]), ([[1, 2], [3, 4]], [[1.0, 2.0], [3.0, 4.0]])]
    for init, expect in cases:
        value = flipes.nn.Vector(init).value
        assert value.dtype == torch.get_default_dtype() and value.tolist() == expect, init
    assert flipes.nn.Vector([1, 2], dtype=torch.float64).value.dtype == torch.float64
    assert flipes.nn.Vector(4).value.tolist() == [0.0] * 4 and flipes.nn.Vector((2, 3)).value.shape == (2, 3)


def test_a_tuple_of_floats_is_the_starting_value_and_a_tuple_of_ints_a_size() -> None:
    """A tuple is a size only where every entry is an integer: ``(0.5, 1.5)`` and ``(1, 2.5)`` are starting values
    (as a list of them is), ``(2, 3)`` and ``()`` are shapes of zeros; booleans are values, not sizes."""
    assert flipes.nn.Vector((0.5, 1.5)).value.tolist() == [0.5, 1.5]
    assert flipes.nn.Vector((1, 2.5)).value.tolist() == [1.0, 2.5]
    assert flipes.nn.Vector((2, 3)).value.tolist() == [[0.0] * 3] * 2 and flipes.nn.Vector(()).value.tolist() == 0.0
    assert flipes.nn.Vector((True, False)).value.tolist() == [1.0, 0.0]


def test_a_tensor_start_is_copied_a_size_is_made_on_its_device_and_the_repr_names_shape_and_dtype() -> None:
    """``Vector(t)`` holds a copy of ``t``: evolving it leaves the caller's tensor alone, and writing the tensor
    leaves the parameter alone. ``Vector(size, device=...)`` makes its zeros on that device (the meta device here,
    which needs no accelerator), and the repr names the shape and dtype."""
    start = torch.zeros(3, dtype=DT)
    vec = flipes.nn.Vector(start)
    with torch.no_grad():
        vec.value.add_(1.0)
    assert start.tolist() == [0.0] * 3
    start.fill_(5.0)
    assert vec.value.tolist() == [1.0] * 3
    assert flipes.nn.Vector((2, 3), device="meta").value.device.type == "meta"
    assert "Vector(shape=(3,), dtype=torch.float64)" in repr(vec)
