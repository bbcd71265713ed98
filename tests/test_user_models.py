"""A researcher's own torch models with hard, non-differentiable ops (a straight-through binarized layer, a spiking
neuron's threshold loop, a per-channel gain on a conv map): converted by ``flipes.flipout``, each member computes what
a plain copy of the model with that member's parameters (``es.member_state_dict``) computes."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import flipes

DT = torch.float64
N, B = 6, 3


class SignSTE(torch.autograd.Function):
    """A straight-through sign in the old style (``forward(ctx, x)``, no ``setup_context``): no vmap rule."""

    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:
        return x.sign()

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:
        return grad


class BinaryLinear(nn.Linear):
    """Binarized weights through the straight-through estimator, as quantization-aware training writes them."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, SignSTE.apply(self.weight), self.bias)


class Spiking(nn.Module):
    """Leaky integrate-and-fire neurons with a learned threshold per neuron, over the time steps of ``(..., T, n)``, that
    check their threshold with Python control flow and count spikes with ``.item()``."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.threshold = nn.Parameter(torch.linspace(0.5, 1.5, n, dtype=DT))
        self.spikes = 0

    def forward(self, current: Tensor) -> Tensor:
        if (self.threshold <= 0).any():
            raise ValueError("a threshold must be positive")
        v, out = torch.zeros_like(current[..., 0, :]), []
        for t in range(current.shape[-2]):
            v = 0.8 * v + current[..., t, :]
            spike = (v >= self.threshold).to(current.dtype)
            v = v - spike * self.threshold
            out.append(spike)
        self.spikes += int(torch.stack(out).sum().item())
        return torch.stack(out, -2)


def members_and_plain_copies(make: nn.Module, x: Tensor, **es_options: object) -> tuple[Tensor, Tensor]:
    """The population's outputs on ``x`` (members first, member n's examples ``x[n]``) and each member's plain copy's."""
    torch.manual_seed(0)
    original = make()
    plain = copy.deepcopy(original)
    model = flipes.flipout(original)
    es = flipes.FlipES(model, popsize=N, sigma=0.2, seed=3, **es_options)
    with es.population():
        out = model(x)
    expect = []
    for n in range(N):
        member = copy.deepcopy(plain)
        member.load_state_dict(es.member_state_dict(n))
        with torch.no_grad():
            expect.append(member(x[n]))
    return out, torch.stack(expect)


@pytest.mark.parametrize("groups", [1, 2])
def test_a_straight_through_binarized_layer_runs_member_by_member_as_its_plain_copies(groups: int) -> None:
    """An ``autograd.Function`` without a vmap rule (a straight-through sign) in a layer with dense noise: vmap cannot
    run it, so it runs one member at a time, with a warning naming why and the fix; each member equals its plain copy
    and differs from the mean network."""
    make = lambda: nn.Sequential(BinaryLinear(5, 8), nn.Tanh(), nn.Linear(8, 2)).to(DT)  # noqa: E731
    x = torch.randn(N, B, 5, dtype=DT)
    with pytest.warns(UserWarning, match=r"BinaryLinear's forward cannot run under torch.func.vmap \(an autograd"):
        out, expect = members_and_plain_copies(make, x, groups=groups, mirrored=False)
    torch.testing.assert_close(out, expect, rtol=1e-12, atol=1e-12)
    assert (out - out[:1]).abs().amax() > 1e-3  # members differ


def test_a_spiking_layer_with_python_control_flow_and_item_runs_member_by_member() -> None:
    """A threshold network whose neuron module branches on its parameter and reads ``.item()``: each member equals its
    plain copy; the warning is given once, and a later call goes member by member without trying vmap again."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.lif, self.out = nn.Linear(4, 16), Spiking(16), nn.Linear(16, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.out(self.lif(self.inp(x)).mean(-2))

    x = 2 * torch.randn(N, B, 5, 4, dtype=DT)
    with pytest.warns(UserWarning, match=r"Python control flow on a member's values\), so inside a population it runs"):
        out, expect = members_and_plain_copies(lambda: Net().to(DT), x)
    torch.testing.assert_close(out, expect, rtol=1e-12, atol=1e-12)
    assert (out - out[:1]).abs().amax() > 1e-3


def test_member_by_member_is_said_once_per_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback warns at the first population forward only, and a later one goes member by member without trying
    vmap again (here any call of it would raise)."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(BinaryLinear(5, 8), nn.Tanh(), nn.Linear(8, 2)))
    es = flipes.FlipES(model, popsize=4, sigma=0.1, seed=0)
    x = torch.randn(4, 5)
    with pytest.warns(UserWarning, match="member by member"):
        with es.population():
            first = model(x)

    def no_vmap(*args: object, **kwargs: object) -> None:
        raise AssertionError("vmap tried again")

    monkeypatch.setattr(torch.func, "vmap", no_vmap)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with es.population():
            again = model(x)
    assert torch.equal(first, again)


def test_an_error_vmap_cannot_be_blamed_for_is_still_the_error() -> None:
    """A forward that fails for another reason than vmap's (a shape mismatch) is not retried member by member."""

    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

        def forward(self, x: Tensor) -> Tensor:
            return x * self.scale  # 3 against the input's 5

    model = flipes.flipout(nn.Sequential(nn.Linear(4, 5), Bad()))
    es = flipes.FlipES(model, popsize=4, sigma=0.1, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with es.population(), pytest.raises(RuntimeError, match="Bad: its forward cannot run per member"):
            model(torch.randn(4, 4))


def test_a_vector_broadcasts_to_like_as_a_per_channel_gain_on_a_conv_map() -> None:
    """``Vector((C, 1, 1))(like)`` on a ``(B, C, H, W)`` map is each member's gain over its rows (``(N·B, C, H, W)``
    in a population), as ``x * gain`` in the plain model, and a scalar temperature ``Vector(())`` each member's over
    its logits; a shape it does not broadcast to is refused, naming both."""

    class Gain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3)
            self.gain = flipes.nn.Vector(torch.linspace(0.5, 1.5, 4).view(4, 1, 1))
            self.temperature = flipes.nn.Vector(torch.tensor(0.7))

        def forward(self, x: Tensor) -> Tensor:
            y = self.conv(x)
            logits = (y * self.gain(y)).mean((-1, -2))
            return logits / self.temperature(logits)

    torch.manual_seed(0)
    original = Gain().to(DT)
    plain = copy.deepcopy(original)
    model = flipes.flipout(original)
    x = torch.randn(N, B, 2, 5, 5, dtype=DT)
    assert torch.equal(model(x[0]), plain(x[0]))
    es = flipes.FlipES(model, popsize=N, sigma=0.2, seed=1)
    with es.population():
        out = model(x.flatten(0, 1)).view(N, B, 4)
    for n in range(N):
        member = copy.deepcopy(plain)
        member.load_state_dict(es.member_state_dict(n))
        with torch.no_grad():
            torch.testing.assert_close(out[n], member(x[n]), rtol=1e-12, atol=1e-12)
    refused = r"Vector of shape \(4, 1, 1\): like= of shape \(3, 5, 2\) does not end in \(4, 1, 1\), nor"
    with pytest.raises(ValueError, match=refused):
        model.gain(torch.zeros(3, 5, 2))


def test_member_by_member_refuses_a_forward_that_writes_into_a_shared_buffer() -> None:
    """A forward vmap cannot run that also updates a buffer in place (a spike counter) is an error naming the buffer:
    member by member, each member would read the update of the one before."""

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.threshold = nn.Parameter(torch.ones(4))
            self.register_buffer("count", torch.zeros(()))

        def forward(self, x: Tensor) -> Tensor:
            if x.sum() > 1e9:  # Python control flow on the values: no vmap
                return x
            spikes = (x >= self.threshold).float()
            self.count += spikes.sum()
            return spikes

    model = flipes.flipout(nn.Sequential(nn.Linear(3, 4), Counting()))
    es = flipes.FlipES(model, popsize=4, sigma=0.1, seed=0)
    written = r"^Counting: its forward, run member by member, wrote into count, which every member shares"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the error says it; no warning of "the same outputs" before it
        with es.population(), pytest.raises(RuntimeError, match=written):
            model(torch.randn(4, 2, 3))


def test_a_forwards_own_error_member_by_member_is_that_error_naming_no_freezing() -> None:
    """A forward vmap cannot batch (``.item()``) that also has a bug of its own (``.item()`` of a whole row, which the
    plain model raises too) ends in that error, said as raised member by member: no warning of "the same outputs"
    before it, and no advice to freeze its parameters, which would not fix it."""

    class Thresholded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.threshold = nn.Parameter(torch.ones(4))

        def forward(self, x: Tensor) -> Tensor:
            if (x - self.threshold).item() > 0:  # a row of 4, not a number: the user's bug
                return x
            return -x

    model = flipes.flipout(nn.Sequential(nn.Linear(3, 4), Thresholded()))
    with pytest.raises(RuntimeError, match="cannot be converted to Scalar"):
        model(torch.randn(2, 3))  # the plain model's error
    es = flipes.FlipES(model, popsize=4, sigma=0.1, seed=0)
    own = r"Thresholded: its forward, run member by member \(torch.func.vmap cannot batch a member's value read as a number"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with es.population(), pytest.raises(RuntimeError, match=own) as raised:
            model(torch.randn(4, 3))
    assert "cannot be converted to Scalar" in str(raised.value) and "frozen" not in str(raised.value)


@pytest.mark.parametrize("hold_noise", [True, False])
def test_member_by_member_in_parts_equals_the_whole_population(hold_noise: bool) -> None:
    """A population evaluated in parts runs each part's members one at a time: the same outputs as one pass."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(BinaryLinear(5, 8), nn.Tanh(), nn.Linear(8, 2)).to(DT))
    es = flipes.FlipES(model, popsize=8, sigma=0.2, seed=2, groups=4, hold_noise=hold_noise)
    x = torch.randn(8, B, 5, dtype=DT)
    with pytest.warns(UserWarning, match="member by member"), es.population() as pop:
        whole = model(x)
        parts = torch.cat([model(x[part.members]) for part in pop.split(2)])
    assert torch.equal(whole, parts)


def test_a_bare_temperature_beside_linear_layers_is_refused_naming_vector_read_against_the_logits() -> None:
    """A learned temperature held as a bare parameter by the module that holds the Linear layers is refused, and the
    message names the form that lines up with the logits' rows: ``self.temperature(logits)``."""

    class Tempered(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 3)
            self.log_temperature = nn.Parameter(torch.zeros(()))

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(x) / self.log_temperature.exp()

    with pytest.raises(ValueError, match=r"log_temperature \(held by Tempered\).*logits / self\.temperature\(logits\)"):
        flipes.flipout(Tempered())


def test_the_named_fix_a_vmap_rule_runs_the_straight_through_layer_in_one_call() -> None:
    """The rewrite the warning names, ``setup_context`` and ``generate_vmap_rule = True``, runs every member in one
    vmapped call: no warning, the same outputs as the plain copies."""

    class VmappableSign(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x: Tensor) -> Tensor:
            return x.sign()

        @staticmethod
        def setup_context(ctx: object, inputs: tuple, output: Tensor) -> None:
            pass

        @staticmethod
        def backward(ctx: object, grad: Tensor) -> Tensor:
            return grad

    class Binary(nn.Linear):
        def forward(self, x: Tensor) -> Tensor:
            return F.linear(x, VmappableSign.apply(self.weight), self.bias)

    x = torch.randn(N, B, 5, dtype=DT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, expect = members_and_plain_copies(lambda: nn.Sequential(Binary(5, 8), nn.Tanh(), nn.Linear(8, 2)).to(DT), x)
    torch.testing.assert_close(out, expect, rtol=1e-12, atol=1e-12)


class OffsetRMSNorm(nn.Module):
    """An RMSNorm of one's own scaled by ``1 + weight`` (as Gemma's): named like Hugging Face's ``weight * x`` norms."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(d, dtype=DT))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + self.weight)


def test_an_rmsnorm_first_called_on_zeros_is_still_checked_against_its_members_on_real_rows() -> None:
    """Zero rows give zero whatever the scale, so a first call on them cannot show that a norm is ``weight * x``: an
    own ``1 + weight`` RMSNorm first run on zeros, then on real rows, gives each member's plain copy's output there
    (a scaled forward times the member's weight alone would give another)."""
    make = lambda: nn.Sequential(nn.Linear(4, 6).to(DT), OffsetRMSNorm(6))  # noqa: E731
    torch.manual_seed(0)
    original = make()
    plain = copy.deepcopy(original)
    model = flipes.flipout(original)
    es = flipes.FlipES(model, popsize=N, sigma=0.2, seed=3)
    norm = model[1]
    x = torch.randn(N, B, 4, dtype=DT)
    with es.population():
        zeros = norm(torch.zeros(N, B, 6, dtype=DT))
        out = model(x)
    assert torch.equal(zeros, torch.zeros_like(zeros)) and norm.__dict__.get("_flipes_scaled") is False
    for n in range(N):
        member = copy.deepcopy(plain)
        member.load_state_dict(es.member_state_dict(n))
        with torch.no_grad():
            torch.testing.assert_close(out[n], member(x[n]), rtol=1e-12, atol=1e-12)


class CastAfterRMSNorm(nn.Module):
    """An RMSNorm of one's own that multiplies by ``weight`` in float32 and casts to the input's dtype after the product:
    one rounding, where a unit-weight forward times each member's weight rounds twice."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, d, dtype=torch.bfloat16))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        return (self.weight.float() * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))).to(x.dtype)


def test_an_rmsnorm_rounding_after_its_product_stays_per_member_bit_for_bit() -> None:
    """The scaled form is taken only where it equals the per-member forward bit for bit: a bfloat16 RMSNorm that casts
    after its float32 product (the scaled form rounds twice, off by an ulp in some of its 6·16·64 entries) is decided
    per member on its first call, and a second call gives the first's outputs exactly."""
    norm = flipes.flipout(nn.Sequential(CastAfterRMSNorm(64)))
    es = flipes.FlipES(norm, popsize=N, sigma=0.05, seed=0)
    x = torch.randn(N, 16, 64, generator=torch.Generator().manual_seed(0)).bfloat16()
    with es.population():
        first, again = norm(x), norm(x)
    assert norm[0].__dict__.get("_flipes_scaled") is False and torch.equal(first, again)
