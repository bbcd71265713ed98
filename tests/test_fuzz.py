"""Random layer configurations against the explicit per-member reference, where hand-picked cases cannot reach every
combination of a layer's options with the ES settings.

Each seed draws a layer (Linear, Conv1d/2d/3d or ConvTranspose1d/2d/3d, Embedding, MultiheadAttention, a transformer
block, LSTM/GRU/RNN, a cell, a norm or other dense module, a parametrized layer) with random options, some of its
parameters frozen, and FlipES settings (popsize, mirrored, groups, noise_rank, sigma_lr, hold_noise). Checked: each
member's rows equal the original module under ``functional_call`` with member n's explicit parameters
(tests/reference.py), parts of 1, 2 and 3 members give the whole population's rows, and tell's ``.grad`` with raw
fitness is -Σ_n F_n σu_n / (Nσ²).

Deterministic (fixed seeds, float64): no false alarms. The 1e-10 tolerance is rounding (outputs are O(1)); a member
run with another member's or the mean parameters is off by O(σ) = O(0.1). A failing seed reproduces alone:
``pytest tests/test_fuzz.py -k 'seed-17]'``.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import pytest
import torch
from helpers import MADE_UP_FITNESS
from reference import member_parameters
from torch import Tensor, nn
from torch.func import functional_call

import flipes
from flipes.es.shaping import raw

DT = torch.float64
TOL = 1e-10
SIGMA = 0.3
# a layer, inputs for `rows` member-major rows (members first, k per member), and the output tensor to compare
Case = tuple[Callable[[], nn.Module], Callable[[int], tuple], Callable[[object], Tensor]]


def randn(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=DT)


def first(out: object) -> Tensor:
    return out[0]  # type: ignore[index]


def same(out: object) -> Tensor:
    return out  # type: ignore[return-value]


def linear(rng: random.Random) -> Case:
    fin, fout, bias, extra = rng.choice([1, 3, 7]), rng.choice([1, 2, 5]), rng.random() < 0.7, rng.choice([(), (2,)])
    return lambda: nn.Linear(fin, fout, bias=bias), lambda b: (randn(b, *extra, fin),), same


def conv(rng: random.Random) -> Case:
    d, groups = rng.choice([1, 2, 3]), rng.choice([1, 2])
    cin, cout = groups * rng.choice([1, 2]), groups * rng.choice([1, 3])
    stride = rng.choice([1, 2])
    padding = rng.choice([0, 1, (1, 0, 2)[:d], "valid", *(["same"] if stride == 1 else [])])
    kw = dict(
        kernel_size=rng.choice([1, 2, 3]),
        stride=stride,
        padding=padding,
        dilation=rng.choice([1, 2]),
        groups=groups,
        bias=rng.random() < 0.7,
        padding_mode=rng.choice(["zeros", "reflect", "replicate", "circular"]),
    )
    if rng.random() < 0.4:  # transposed: kernel stored (in, out // groups, ...), zeros padding only, an output padding
        kw.update(padding=padding if not isinstance(padding, str) else 0, padding_mode="zeros")
        kw["output_padding"] = rng.choice(range(max(stride, kw["dilation"])))  # below the stride or the dilation
        cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[d - 1]
    else:
        cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[d - 1]
    return lambda: cls(cin, cout, **kw), lambda b: (randn(b, cin, *(5,) * d),), same


def embedding(rng: random.Random) -> Case:
    num, dim, pad = rng.choice([2, 9]), rng.choice([1, 4]), rng.choice([None, 0, -1])
    return lambda: nn.Embedding(num, dim, padding_idx=pad), lambda b: (torch.randint(num, (b, 3)),), same


def attention(rng: random.Random) -> Case:
    heads = rng.choice([1, 2])
    e, kdim, vdim = 2 * heads, rng.choice([None, 3]), rng.choice([None, 2])
    kw = dict(bias=rng.random() < 0.7, add_bias_kv=rng.random() < 0.3, add_zero_attn=rng.random() < 0.3, kdim=kdim, vdim=vdim)
    self_attention = kdim is None and vdim is None and rng.random() < 0.5
    causal, need_weights = rng.random() < 0.3, rng.random() < 0.5

    def inputs(b: int) -> tuple:
        q = randn(b, 3, e)
        k, v = (q, q) if self_attention else (randn(b, 3, kdim or e), randn(b, 3, vdim or e))
        pad = torch.rand(b, 3) < 0.3
        pad[:, 0] = False  # every query sees a key
        mask = torch.ones(3, 3, dtype=torch.bool).triu(1) if causal else None
        return q, k, v, pad, need_weights, mask

    return lambda: nn.MultiheadAttention(e, heads, batch_first=True, **kw), inputs, first


def block(rng: random.Random) -> Case:
    decoder = rng.random() < 0.4
    kw = dict(dropout=0.0, batch_first=True, norm_first=rng.random() < 0.5, activation=rng.choice(["relu", "gelu"]))
    cls = nn.TransformerDecoderLayer if decoder else nn.TransformerEncoderLayer
    evaluated = rng.random() < 0.5
    inputs = (lambda b: (randn(b, 3, 4), randn(b, 2, 4))) if decoder else (lambda b: (randn(b, 3, 4),))
    return lambda: cls(4, 2, 6, **kw).train(not evaluated), inputs, same


def recurrent(rng: random.Random) -> Case:
    cls = rng.choice([nn.LSTM, nn.GRU, nn.RNN])
    kw = dict(num_layers=rng.choice([1, 2]), bias=rng.random() < 0.8, batch_first=True)
    if cls is nn.RNN:
        kw["nonlinearity"] = rng.choice(["tanh", "relu"])
    return lambda: cls(2, 3, **kw), lambda b: (randn(b, 4, 2),), first


def cell(rng: random.Random) -> Case:
    cls, bias = rng.choice([nn.LSTMCell, nn.GRUCell, nn.RNNCell]), rng.random() < 0.8
    state = (lambda b: ((randn(b, 3), randn(b, 3)),)) if cls is nn.LSTMCell else (lambda b: (randn(b, 3),))
    with_state = rng.random() < 0.5
    return (
        lambda: cls(2, 3, bias=bias),
        lambda b: (randn(b, 2), *(state(b) if with_state else ())),
        first if cls is nn.LSTMCell else same,
    )


class Scale(nn.Module):
    """Bare parameters used elementwise: a gain and a 0-dim offset."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.gain, self.offset = nn.Parameter(torch.randn(d)), nn.Parameter(torch.randn(()))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gain + self.offset


def dense(rng: random.Random) -> Case:
    """Modules with dense per-member noise, after a Linear (so a frozen norm still leaves something evolved)."""
    norms: list[Callable[[], nn.Module]] = [
        lambda: nn.LayerNorm(4, elementwise_affine=rng.random() < 0.8),
        lambda: nn.RMSNorm(4) if hasattr(nn, "RMSNorm") else nn.LayerNorm(4),  # torch >= 2.4
        lambda: nn.GroupNorm(2, 4),
        lambda: nn.BatchNorm1d(4).eval(),
        lambda: nn.PReLU(rng.choice([1, 4])),
        lambda: Scale(4),
        lambda: nn.utils.parametrize.register_parametrization(nn.Linear(4, 4), "weight", Twice()),
    ]
    norm = rng.choice(norms)
    return lambda: nn.Sequential(nn.Linear(3, 4), norm(), nn.Tanh()), lambda b: (randn(b, 3),), same


class Twice(nn.Module):
    """A parametrization: twice the parameter it holds."""

    def forward(self, w: Tensor) -> Tensor:
        return 2 * w


def parametrized(rng: random.Random) -> Case:
    kind = rng.choice(["linear", "embedding", "conv"])
    name = "bias" if kind != "embedding" and rng.random() < 0.3 else "weight"

    def make() -> nn.Module:
        layer = {"linear": lambda: nn.Linear(3, 2), "embedding": lambda: nn.Embedding(5, 2), "conv": lambda: nn.Conv1d(2, 2, 3)}
        return nn.utils.parametrize.register_parametrization(layer[kind](), name, Twice())

    inputs = {
        "linear": lambda b: (randn(b, 3),),
        "embedding": lambda b: (torch.randint(5, (b, 3)),),
        "conv": lambda b: (randn(b, 2, 5),),
    }
    return make, inputs[kind], same


KINDS = [linear, conv, embedding, attention, block, recurrent, cell, dense, parametrized]


def draw(seed: int) -> tuple[Case, dict, int, float]:
    """The configuration of ``seed``: a case, FlipES settings, rows per member and the share of frozen parameters."""
    rng = random.Random(seed)
    case = rng.choice(KINDS)(rng)
    popsize = rng.choice([2, 4, 6, 8])
    groups = rng.choice([g for g in (1, 2, 3, 4) if popsize % g == 0])
    rank = rng.choice([None, None, 1, 2])
    setting = dict(
        popsize=popsize,
        groups=groups,
        mirrored=(popsize // groups) % 2 == 0 and rng.random() < 0.5,
        noise_rank=rank,
        sigma_lr=0.1 if rank is None and rng.random() < 0.2 else 0.0,
        hold_noise=rng.random() < 0.7,
    )
    return case, setting, rng.choice([1, 2]), rng.choice([0.0, 0.0, 0.3])


@MADE_UP_FITNESS
@pytest.mark.filterwarnings("ignore:sigma_lr > 0 with groups=1")
@pytest.mark.parametrize("seed", range(150), ids=lambda s: f"seed-{s}")
def test_a_random_configuration_equals_the_explicit_members(seed: int) -> None:
    """Each member's rows equal the plain module with its explicit parameters (1e-10, float64), materialized by
    tests/reference.py for every setting, hold_noise=False too, and equal to ``es.member_parameters`` (1e-15); parts
    of 1, 2 and 3 members give the whole population's rows (1e-12), and tell's ``.grad`` with raw fitness is the materialized
    estimator -Σ_n F_n σu_n / (Nσ²) (1e-12 absolute + 1e-9 relative)."""
    (make, inputs, pick), setting, k, frozen_share = draw(seed)
    torch.manual_seed(seed)
    original = make().to(DT)
    rng = random.Random(-seed)
    for p in original.parameters():
        p.requires_grad_(rng.random() >= frozen_share)
    if not any(p.requires_grad for p in original.parameters()):
        next(original.parameters()).requires_grad_(True)
    model = flipes.flipout(copy.deepcopy(original))
    n = setting["popsize"]
    es = flipes.FlipES(model, sigma=SIGMA, seed=seed, shaping=raw, optimizer=lambda p: torch.optim.SGD(p, lr=0.0), **setting)
    args = inputs(n * k)

    def rows(a: object, start: int, stop: int) -> object:
        if isinstance(a, tuple):
            return tuple(rows(t, start, stop) for t in a)
        return a[start * k : stop * k] if isinstance(a, Tensor) and a.dim() and a.shape[0] == n * k else a

    with es.population() as pop:
        out = pick(model(*args))
        # read off the noise the whole population's forward installed (with hold_noise=False too, before the parts
        # replace it): tests/reference.py's materialized members, not flipes' own member_parameters
        params = member_parameters(es, model)
        frozen = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
        for i in range(n):  # and es.member_parameters, flipes' own, gives the same members (frozen ones: their values)
            for name, value in es.member_parameters(i).items():
                want = params[i].get(name, frozen.get(name))
                torch.testing.assert_close(value, want, atol=1e-15, rtol=0, msg=f"{name} of {i}")
        for size in (1, 2, 3):
            parts = [pick(model(*rows(args, p.members.start, p.members.stop))) for p in pop.split(size)]
            # a part's GEMMs have fewer rows: BLAS may sum in another order (an ulp)
            torch.testing.assert_close(torch.cat(parts), out, atol=1e-12, rtol=0, msg=f"parts of {size}")
    for i in range(n):
        with torch.no_grad():
            expect = pick(functional_call(original, params[i], rows(args, i, i + 1)))
        torch.testing.assert_close(out[i * k : (i + 1) * k], expect, atol=TOL, rtol=0, msg=f"member {i}")
    deltas = {name: torch.stack([m[name] - p for m in params]) for name, p in model.named_parameters() if p.requires_grad}
    fitness = torch.randn(n, dtype=DT)
    es.tell(fitness)
    for name, p in model.named_parameters():
        if p.requires_grad:
            expect = -(fitness.view(-1, *(1,) * p.dim()) * deltas[name]).sum(0) / (n * SIGMA**2)
            torch.testing.assert_close(p.grad, expect, atol=1e-12, rtol=1e-9, msg=name)
