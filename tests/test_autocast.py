"""Populations under ``torch.autocast``: members compute what the plain module computes there, and the ES
update and a member's parameters stay in the parameters' precision."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import pytest
import torch
from helpers import TiedLinears
from reference import member_parameters
from torch import Tensor, nn
from torch.func import functional_call

import flipes
from flipes.nn import GaussianPosterior

N = 8
HALF = torch.bfloat16
# bfloat16 keeps 8 significant bits (relative rounding 2^-8 = 0.4%); two ways of summing the same O(1) outputs
# differ by a few roundings. A member given another member's noise, or no noise, is off by ~σ = 0.3.
ATOL = RTOL = 3e-2


def first(out: object) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


CASES: list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]] = [
    # (name, module, member n's input shape: rows n·k .. n·k + k - 1 of the population's input when k > 0)
    ("linear-one-per-member", lambda: nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)), (1, 8)),
    ("linear-batch-per-member", lambda: nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)), (5, 8)),
    ("lstm-cell", lambda: nn.LSTMCell(8, 16), (1, 8)),
    ("gru-cell", lambda: nn.GRUCell(8, 16), (1, 8)),
    ("rnn-cell", lambda: nn.RNNCell(8, 16), (1, 8)),
    ("lstm", lambda: nn.LSTM(8, 16, batch_first=True), (1, 5, 8)),
    ("gru-two-layers", lambda: nn.GRU(8, 16, num_layers=2, batch_first=True), (1, 5, 8)),
    ("conv", lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(1), nn.Linear(144, 3)), (1, 3, 8, 8)),
    (  # a plain transposed conv (low-rank noise runs factored) and a grouped one (noise put in its kernel's shape)
        "conv-transpose",
        lambda: nn.Sequential(
            nn.ConvTranspose2d(3, 4, 3, stride=2), nn.ConvTranspose2d(4, 4, 2, groups=2), nn.Flatten(1), nn.Linear(576, 3)
        ),
        (1, 3, 5, 5),
    ),
    ("tied-weight-own-biases", TiedLinears, (1, 16)),
    ("attention", lambda: nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), (1, 5, 16)),
]


@pytest.mark.parametrize("mirrored,groups,rank", [(False, 1, None), (True, 2, None), (False, 2, 2)])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_members_under_autocast_equal_the_plain_module_under_autocast(
    case: tuple, mirrored: bool, groups: int, rank: int | None, device: torch.device
) -> None:
    """With a float32 model inside ``torch.autocast(bfloat16)``, every member's output has the plain module's
    dtype there (recurrent modules aside), and its RMS error from member n's exact float32 output (the plain
    module with member n's explicit parameters) is nonzero and at most 4× the plain module's own under the
    same autocast (measured: 0.9× to 2.7×; a member given no noise or another's is off by ~σ, hundreds of
    times more). Outside autocast the population equals the plain module to 1e-5."""
    _, make, shape = case
    torch.manual_seed(0)
    original = make().to(device)
    model = flipes.flipout(copy.deepcopy(original))
    es = flipes.FlipES(model, popsize=N, sigma=0.3, seed=0, groups=groups, mirrored=mirrored, noise_rank=rank)
    k = shape[0]
    x = torch.randn(N * k, *shape[1:], device=device)
    with es.population():
        with torch.autocast(device.type, dtype=HALF):
            low = first(model(x))
        exact = first(model(x))
        params = member_parameters(es, model)
    errs, plain_errs = [], []
    for n in range(N):
        rows = x[n * k : (n + 1) * k]
        with torch.no_grad(), torch.autocast(device.type, dtype=HALF):
            expect = first(functional_call(original, params[n], (rows,)))
        with torch.no_grad():
            expect_exact = first(functional_call(original, params[n], (rows,)))
        got = low[n * k : (n + 1) * k]
        if not isinstance(original, nn.RNNBase | nn.RNNCellBase):  # torch's own differ (LSTM bfloat16, GRU float32)
            assert got.dtype == expect.dtype, f"member {n}: {got.dtype} under autocast, the plain module gives {expect.dtype}"
        torch.testing.assert_close(exact[n * k : (n + 1) * k], expect_exact, atol=1e-5, rtol=1e-5)
        errs.append((got.float() - expect_exact).flatten())
        plain_errs.append((expect.float() - expect_exact).flatten())
    error, plain_error = (torch.cat(e).square().mean().sqrt().item() for e in (errs, plain_errs))
    assert 0 < error <= 4 * plain_error, f"RMS error {error:.2g} under autocast, the plain module's {plain_error:.2g}"


def test_a_population_under_autocast_runs_linear_layers_in_the_autocast_dtype() -> None:
    """A Linear population under CPU autocast returns bfloat16, as ``nn.Linear`` does there, and its outputs
    differ from the float32 ones by bfloat16 rounding (nonzero, below 3e-2): autocast took effect."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Linear(32, 8))
    es = flipes.FlipES(model, popsize=N, sigma=0.3, seed=0)
    x = torch.randn(N, 32)
    with es.population():
        with torch.autocast("cpu", dtype=HALF):
            low = model(x)
        exact = model(x)
    assert low.dtype == HALF and exact.dtype == torch.float32
    error = (low.float() - exact).abs().max().item()
    assert 0 < error < ATOL


class OwnLinear(nn.Linear):
    """A Linear subclass with a forward of its own: a layer with dense noise, run per member through vmap."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)


class OwnConv(nn.Conv2d):
    """A Conv2d subclass with a forward of its own (a weight-standardized conv would be one): dense noise too."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.conv2d(x, self.weight, self.bias)


def test_dense_layers_under_cpu_autocast_run_as_torchs_vmap_runs_them() -> None:
    """What the README says of dense modules under a CPU autocast (torch 2.13): vmap's batching rules multiply
    ``F.linear`` in bfloat16 but add its bias in float32 (a float32 output off the float32 one by bfloat16 rounding),
    and run ``F.conv2d`` in float32 (equal to the float32 output); the plain modules return bfloat16 there. A torch
    whose vmap keeps autocast fails this: update the README."""
    torch.manual_seed(0)
    for layer, shape in ((OwnLinear(32, 8), (N, 32)), (OwnConv(2, 4, 3), (N, 2, 7, 7))):
        model = flipes.flipout(layer)
        es = flipes.FlipES(model, popsize=N, sigma=0.3, seed=0)
        x = torch.randn(*shape)
        with es.population():
            with torch.autocast("cpu", dtype=HALF):
                low = model(x)
            exact = model(x)
        with torch.autocast("cpu", dtype=HALF):
            assert model(x).dtype == HALF  # outside a population: the plain module's autocast
        assert low.dtype == torch.float32
        error = (low - exact).abs().max().item()
        if isinstance(layer, OwnConv):
            assert error == 0
        else:
            assert 0 < error < ATOL


def test_a_float64_population_under_autocast_stays_float64_as_nn_linear_does() -> None:
    """Autocast leaves float64 alone: inside ``torch.autocast(bfloat16)`` a float64 population returns float64, bit
    for bit its outputs outside autocast (one example per member and several), as the plain float64 ``nn.Linear``
    returns its own float64 outputs there; a layer that cast it to bfloat16 would be off by ~1e-2."""
    torch.manual_seed(0)
    original = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    model = flipes.flipout(copy.deepcopy(original))
    es = flipes.FlipES(model, popsize=N, sigma=0.3, seed=0)
    with torch.autocast("cpu", dtype=HALF):
        plain = original(torch.randn(3, 8, dtype=torch.float64))
    assert plain.dtype == torch.float64
    for x in (torch.randn(N, 8, dtype=torch.float64), torch.randn(N, 3, 8, dtype=torch.float64)):
        with es.population():
            with torch.autocast("cpu", dtype=HALF):
                low = model(x)
            exact = model(x)
        assert low.dtype == torch.float64 and torch.equal(low, exact)


def train_and_build(autocast: bool, rank: int | None, sigma_lr: float) -> tuple[Tensor, dict[str, Tensor]]:
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)))
    es = flipes.FlipES(model, popsize=N, sigma=0.1, seed=0, noise_rank=rank, groups=2, sigma_lr=sigma_lr)
    x = torch.randn(N, 8)
    for _ in range(3):
        with es.population():
            fitness = -model(x).square().sum(-1)
        with torch.autocast("cpu", dtype=HALF, enabled=autocast):
            member = es.member_state_dict(3)
            es.tell(fitness)
    return torch.cat([p.flatten() for p in model.parameters()]), member


@pytest.mark.parametrize("rank,sigma_lr", [(None, 0.0), (2, 0.0), (None, 0.1)])
def test_tell_and_a_members_parameters_inside_autocast_are_those_computed_outside(rank: int | None, sigma_lr: float) -> None:
    """``tell`` and ``member_state_dict`` called inside an enclosing ``torch.autocast`` give bit for bit the
    parameters they give outside it (full rank, low rank, adaptive σ): the ES sums do not round in bfloat16."""
    params, member = train_and_build(False, rank, sigma_lr)
    params_ac, member_ac = train_and_build(True, rank, sigma_lr)
    assert torch.equal(params, params_ac)
    assert member.keys() == member_ac.keys()
    for key in member:
        assert torch.equal(member[key], member_ac[key]), key


def test_backprop_noise_trains_under_autocast() -> None:
    """A Flipout model with a Gaussian posterior, in training mode under ``torch.autocast``: the forward
    equals the float32 forward of the same weight samples to bfloat16 rounding, and backward gives finite
    float32 gradients for every parameter, the posterior's scale included."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)))
    flipes.nn.attach_noise(model, functools.partial(GaussianPosterior, prior_sigma=0.1))
    model.train()
    x = torch.randn(6, 8)
    torch.manual_seed(1)
    exact = model(x)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=HALF):
        low = model(x)
    torch.testing.assert_close(low.float(), exact, atol=ATOL, rtol=RTOL)
    low.float().square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name


@pytest.mark.skipif(not hasattr(torch, "get_autocast_dtype"), reason="torch < 2.4 has no per-device autocast queries")
def test_autocast_on_mps_is_seen_where_mps_can_hold_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a machine with MPS, a float16 autocast on MPS is left for tell's sums (``without_autocast``) and seen by
    the Flipout linear layer's check: torch's one-call autocast query leaves MPS out, which skipped both (tell
    summed in float16; the layer met a half-precision product with float32 buffers)."""
    import importlib

    import flipes.nn.functional as functional

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    importlib.reload(functional)  # its autocast query is chosen once, at import, by the devices torch has
    try:
        was = torch.is_autocast_enabled("mps")
        torch.set_autocast_enabled("mps", True)
        try:
            assert functional._any_autocast()
            assert isinstance(functional.without_autocast(torch.device("mps")), torch.autocast)
        finally:
            torch.set_autocast_enabled("mps", was)
    finally:
        monkeypatch.undo()
        importlib.reload(functional)
    assert not functional._any_autocast()
