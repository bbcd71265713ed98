"""Every layer kind of ``flipes.flipout``: each member's output equals the plain torch module run with
that member's explicit parameters, and ``tell``'s gradient equals the materialized estimator.

The reference is generic: the original (unconverted) module under ``torch.func.functional_call``
with member ``n``'s parameters, built from the sampled noise by index arithmetic (tests/reference.py)
for Flipout weights and as ``θ + δ_n`` for dense ones.
"""

from __future__ import annotations

import copy
import pickle
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import MADE_UP_FITNESS, TiedLinears
from reference import centered_ranks_distinct, member_parameters
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils import prune

import flipes
from flipes.nn import FlipoutMultiheadAttention, PerMember

DT = torch.float64
TOL = 1e-10
N = 8
SETTINGS = [(False, 1, None), (True, 2, None), (True, 1, 2), (False, 4, 1)]  # (mirrored, groups, noise_rank)


def check_members(
    make: Callable[[], nn.Module],
    inputs: Callable[[], tuple],
    member_inputs: Callable[[tuple, int], tuple],
    member_output: Callable[[object, int], object],
    mirrored: bool,
    groups: int,
    rank: int | None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> None:
    """Population outputs of ``flipout(make())`` against the original module with member n's parameters, which cover
    every trainable parameter."""
    torch.manual_seed(seed)
    original = make().to(device, DT)
    model = flipes.flipout(copy.deepcopy(original))
    es = flipes.FlipES(model, popsize=N, sigma=0.3, seed=seed, groups=groups, mirrored=mirrored, noise_rank=rank)
    args = tuple(a.to(device) if isinstance(a, Tensor) else a for a in inputs())
    with es.population():
        out = model(*args)
        params = member_parameters(es, model)
    # every trainable parameter has each member's own value: none is left at its mean silently
    assert set(params[0]) == {name for name, p in model.named_parameters() if p.requires_grad}
    for n in range(N):
        with torch.no_grad():
            expect = functional_call(original, params[n], member_inputs(args, n))
        got = member_output(out, n)
        for g, e in zip(*(o if isinstance(o, tuple) else (o,) for o in (got, expect)), strict=True):
            if e is None:
                assert g is None
            else:
                torch.testing.assert_close(g, e, atol=TOL, rtol=0)
    assert all(m.member_noise is None for m in [*es.layers, *es.dense_modules])
    torch.testing.assert_close(model(*member_inputs(args, 0)), original(*member_inputs(args, 0)), atol=0, rtol=0)


def rows(k: int, members: int | None = None) -> Callable[[tuple, int], tuple]:
    """Member n's inputs: rows n·k ... n·k + k - 1 of the first ``members`` tensors (all by default;
    the rest are shared, e.g. masks); k = 0: row n without a batch dim."""

    def pick(args: tuple, n: int) -> tuple:
        cut = len(args) if members is None else members
        part = [(a[n] if k == 0 else a[n * k : (n + 1) * k]) if isinstance(a, Tensor) else a for a in args[:cut]]
        return (*part, *args[cut:])

    return pick


def out_rows(k: int) -> Callable[[object, int], object]:
    def pick(out: object, n: int) -> object:
        if isinstance(out, tuple):
            return tuple(pick(o, n) for o in out)
        if out is None:
            return None
        return out[n] if k == 0 else out[n * k : (n + 1) * k]

    return pick


def randn(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=DT)


class PlainLinear(nn.Linear):
    """A Linear subclass that keeps nn.Linear's forward."""


class Scale(nn.Module):
    """A bare parameter used elementwise (a module flipes has no Flipout form for)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.randn(d))
        self.shift = nn.Parameter(torch.randn(1, d))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gain + self.shift


class ListScales(nn.Module):
    """Bare parameters in an ``nn.ParameterList`` and an ``nn.ParameterDict`` (containers without a forward), read
    by this module's own forward."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.gains = nn.ParameterList([nn.Parameter(torch.randn(d)) for _ in range(2)])
        self.shifts = nn.ParameterDict({"a": nn.Parameter(torch.randn(d))})

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gains[0] * self.gains[1] + self.shifts["a"]


class NormGain(nn.Module):
    """A norm and a gain of its own: a dense module with a dense module below it."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.gain = nn.Parameter(torch.randn(4))

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x) * self.gain


class NormCalledOutside(nn.Module):
    """A dense module's norm also called directly, from outside that module's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.block = nn.Linear(3, 4), NormGain()

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        return self.block(h) + self.block.norm(2 * h)


class TiedLM(nn.Module):
    """An embedding tied to a Linear head that has a bias of its own (PyTorch's word_language_model, BERT's MLM head)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.head = nn.Linear(6, 11)
        self.head.weight = self.emb.weight

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(torch.tanh(self.emb(tokens)))


class TiedNorms(nn.Module):
    """Two LayerNorms sharing their scale, around a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.fc, self.b = nn.LayerNorm(4), nn.Linear(4, 4), nn.LayerNorm(4)
        self.b.weight = self.a.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.fc(self.a(x)))


class SharedBias(nn.Module):
    """Two Linears with their own weights and one bias, which a bare-parameter module also adds."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.bias = self.a.bias
        self.shift = Shift(self.a.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.shift(self.b(torch.tanh(self.a(x))))


class Shift(nn.Module):
    def __init__(self, bias: nn.Parameter) -> None:
        super().__init__()
        self.bias = bias

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias


class ScaledEmbedding(nn.Embedding):
    """An embedding with a forward of its own (Gemma's and BART's scaled word embeddings): dense noise."""

    def forward(self, input: Tensor) -> Tensor:
        return super().forward(input) * 3.0


class ScaledTiedLM(nn.Module):
    """A scaled embedding (dense) tied to a Linear head (Flipout) with a padding row: Gemma's layout."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = ScaledEmbedding(11, 6, padding_idx=0)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(torch.tanh(self.emb(tokens)))


class WeightAsShift(nn.Module):
    """A Linear's weight also added by a bare-parameter module (dense) as a (4, 4) shift."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.shift = nn.Linear(4, 4), Shift(nn.Parameter(torch.zeros(4)))
        self.shift.bias = self.fc.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.shift(self.fc(x))


class LearnedPositions(nn.Module):
    """A table of position vectors added to the rows at 1-D positions (BART's learned positions): (B, T, d), (T,)."""

    def __init__(self, length: int, d: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(length, d))

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        return x + self.table[positions]


class AddTable(nn.Module):
    """A gain of its own, plus a tensor given in the forward and shared by the batch: a table (T, E) beside rows
    (B, T, E), or a context with a batch dim of one."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.randn(3))

    def forward(self, x: Tensor, table: Tensor) -> Tensor:
        return x * self.gain + table


class AddSummary(nn.Module):
    """A gain of its own applied to sequences (B, T, E), plus the mean of a second input of each example (B, F)."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.randn(3))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return x * self.gain + z.mean(-1, keepdim=True).unsqueeze(-1)


class ScalarContext(nn.Module):
    """A scalar gain of its own, plus a tensor given in the forward and shared by the batch: a (1,) context beside one
    number per example (B,), or a 0-d one."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.randn(()))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        return x * self.gain + context


class Doubled(nn.Module):
    """A parametrization: the tensor is twice the parameter it holds (as orthogonal or weight_norm compute theirs)."""

    def forward(self, w: Tensor) -> Tensor:
        return 2 * w


def parametrized(layer: nn.Module, name: str) -> nn.Module:
    return nn.utils.parametrize.register_parametrization(layer, name, Doubled())


def parametrized_out_proj(attention: nn.MultiheadAttention) -> nn.MultiheadAttention:
    parametrized(attention.out_proj, "weight")
    return attention


class LearnedScale(nn.Module):
    """A parametrization with a parameter of its own (a learned temperature): both it and the original are evolved."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, w: Tensor) -> Tensor:
        return w * self.scale


class Hooked(nn.Module):
    """User hooks: a pre-hook rewriting a Linear's input, a forward hook with kwargs rewriting a LayerNorm's output, and
    one on the norm of a dense module (run inside its per-member forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.norm, self.block = nn.Linear(3, 4), nn.LayerNorm(4), NormGain()
        self.fc.register_forward_pre_hook(lambda m, args: (args[0].flip(-1),))
        self.norm.register_forward_hook(lambda m, args, kwargs, out: out * 2 + 1, with_kwargs=True)
        self.block.norm.register_forward_hook(lambda m, args, out: torch.tanh(out))

    def forward(self, x: Tensor) -> Tensor:
        return self.block(self.norm(self.fc(x)))


def frozen_script() -> nn.Module:
    """A frozen TorchScript layer (a scripted feature extractor) under a LayerNorm and a Linear head."""
    script = torch.jit.script(nn.Linear(3, 4))
    for p in script.parameters():  # a ScriptModule has no requires_grad_()
        p.requires_grad_(False)
    return nn.Sequential(script, nn.LayerNorm(4), nn.Linear(4, 2))


class TiedAutoencoder(nn.Module):
    """A grouped Conv2d encoder and a ConvTranspose2d decoder sharing one kernel, read (out, in) by one and (in, out) by
    the other: the decoder keeps dense noise, reading each member's kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2)
        self.dec = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.dec.weight = self.enc.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.dec(torch.tanh(self.enc(x)))


def tied_transposed_twins() -> nn.Module:
    """Two ConvTranspose2d of one layout (4 -> 4 channels) and different strides sharing one kernel."""
    twins = nn.Sequential(nn.ConvTranspose2d(4, 4, 3), nn.Tanh(), nn.ConvTranspose2d(4, 4, 3, stride=2))
    twins[2].weight = twins[0].weight
    return twins


class OwnConvTranspose(nn.ConvTranspose2d):
    """A ConvTranspose2d subclass with a forward of its own: no Flipout form, so dense noise."""

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        kw = dict(stride=self.stride, padding=self.padding, output_padding=self.output_padding, dilation=self.dilation)
        return F.conv_transpose2d(input, self.weight, self.bias, groups=self.groups, **kw)


def transposed_and_own_twin() -> nn.Module:
    """A ConvTranspose2d (a Flipout layer) and a dense subclass of it sharing one grouped kernel: the dense module reads
    each member's kernel in the stored (in, out // groups, ...) shape."""
    twins = nn.Sequential(nn.ConvTranspose2d(4, 6, 3, groups=2), nn.Tanh(), OwnConvTranspose(4, 6, 3, stride=2, groups=2))
    twins[2].weight = twins[0].weight
    return nn.Sequential(twins[0], twins[1], nn.Conv2d(6, 4, 1), twins[2])


class AddKernel(nn.Module):
    """A leaf module adding the kernel it holds, flattened, to each row: no Flipout form, so dense."""

    def __init__(self, kernel: nn.Parameter) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: Tensor) -> Tensor:
        return x + self.kernel.flatten()


class KernelAsShift(nn.Module):
    """A grouped ConvTranspose1d whose kernel a dense leaf module also adds: the transposed conv stays a Flipout layer,
    and the dense module reads each member's kernel in its stored (in, out // groups, k) order."""

    def __init__(self) -> None:
        super().__init__()
        self.dec = nn.ConvTranspose1d(4, 6, 2, groups=2)  # kernel (4, 3, 2): 24 entries, as (6, 4) outputs flattened
        self.add = AddKernel(self.dec.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.add(self.dec(x).flatten(-2))


TIED = [
    TiedLM,
    TiedNorms,
    SharedBias,
    ScaledTiedLM,
    WeightAsShift,
    TiedAutoencoder,
    tied_transposed_twins,
    transposed_and_own_twin,
    KernelAsShift,
]


def frozen(module: nn.Module, *names: str) -> nn.Module:
    """``module`` with the named parameters frozen (``requires_grad=False``)."""
    for name in names:
        getattr(module, name).requires_grad_(False)
    return module


def random_biases(module: nn.Module) -> nn.Module:
    """``module`` with every bias drawn from N(0, 1): torch starts attention's in_proj_bias and out_proj.bias at zero,
    where a forward that left out a mean bias would pass."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "bias" in name.rpartition(".")[2]:
                p.normal_()
    return module


# (name, make, inputs, member_inputs, member_output)
CASES = [
    (
        "conv1d",
        lambda: nn.Conv1d(4, 6, 3, padding=2, dilation=2, groups=2, padding_mode="circular"),
        lambda: (randn(N, 2, 4, 11),),
        rows(0),
        out_rows(0),
    ),
    ("conv1d-k", lambda: nn.Conv1d(3, 5, 4, stride=2), lambda: (randn(3 * N, 3, 12),), rows(3), out_rows(3)),
    ("conv3d", lambda: nn.Conv3d(2, 4, (2, 3, 3), padding=1), lambda: (randn(N, 2, 2, 5, 4, 4),), rows(0), out_rows(0)),
    (
        "conv3d-strided-dilated-groups",
        lambda: nn.Conv3d(4, 6, (2, 3, 3), stride=(1, 2, 1), dilation=(1, 1, 2), padding=1, groups=2),
        lambda: (randn(N, 4, 4, 6, 7),),
        rows(0),
        out_rows(0),
    ),
    ("linear-subclass", lambda: PlainLinear(7, 5), lambda: (randn(N, 3, 7),), rows(0), out_rows(0)),
    ("embedding", lambda: nn.Embedding(13, 6, padding_idx=2), lambda: (torch.randint(13, (N, 9)),), rows(0), out_rows(0)),
    (  # ids shared by all members (position ids): each member looks them up in its own table
        "embedding-shared-ids",
        lambda: nn.Embedding(9, 4),
        lambda: (torch.randint(9, (1, 5)),),
        lambda args, n: args,
        lambda out, n: out[n : n + 1],
    ),
    ("embedding-k", lambda: nn.Embedding(10, 4), lambda: (torch.randint(10, (2 * N, 3, 5)),), rows(2), out_rows(2)),
    (
        "mha-self-masks",
        lambda: random_biases(nn.MultiheadAttention(12, 3, batch_first=True)),
        lambda: (
            (x := randn(2 * N, 5, 12)),
            x,
            x,
            (torch.rand(2 * N, 5) < 0.3) & (torch.arange(5) > 0),  # key_padding_mask (True = ignore); key 0 always seen
            True,  # need_weights
            torch.ones(5, 5, dtype=torch.bool).triu(1),  # causal attn_mask
        ),
        rows(2, 4),
        out_rows(2),
    ),
    (
        "mha-cross-kv-dims",
        lambda: random_biases(nn.MultiheadAttention(8, 2, kdim=5, vdim=3, add_bias_kv=True, add_zero_attn=True)),
        lambda: (randn(4, N, 8), randn(6, N, 5), randn(6, N, 3)),
        lambda args, n: tuple(a[:, n : n + 1] for a in args),
        lambda out, n: (out[0][:, n : n + 1], out[1][n : n + 1]),
    ),
    (  # masks beside bias_k and the zero key: both appended keys unmasked (a -inf there changes every weight)
        "mha-bias-kv-zero-attn-masks",
        lambda: random_biases(nn.MultiheadAttention(8, 2, add_bias_kv=True, add_zero_attn=True, batch_first=True)),
        lambda: (
            (x := randn(2 * N, 5, 8)),
            x,
            x,
            (torch.rand(2 * N, 5) < 0.3) & (torch.arange(5) > 0),  # key_padding_mask; key 0 always seen
            True,  # need_weights
            torch.ones(5, 5, dtype=torch.bool).triu(1),  # causal attn_mask
        ),
        rows(2, 4),
        out_rows(2),
    ),
    (  # k = 2 sequences per member, member-major: bias_k, bias_v and in_proj_bias are member n's for rows 2n, 2n + 1
        "mha-cross-kv-dims-k",
        lambda: nn.MultiheadAttention(8, 2, kdim=5, vdim=3, add_bias_kv=True, batch_first=True),
        lambda: (randn(2 * N, 4, 8), randn(2 * N, 6, 5), randn(2 * N, 6, 3)),
        rows(2),
        out_rows(2),
    ),
    (  # in eval mode dropout is off, and per-head weights (average_attn_weights=False) are each member's own
        "mha-eval-dropout-per-head-weights",
        lambda: nn.MultiheadAttention(12, 3, dropout=0.5, batch_first=True).eval(),
        lambda: ((x := randn(N, 5, 12)), x, x, None, True, None, False),
        rows(1, 3),
        out_rows(1),
    ),
    (  # query is key, value another tensor: not self-attention
        "mha-shared-query-key",
        lambda: random_biases(nn.MultiheadAttention(12, 3, batch_first=True)),
        lambda: ((x := randn(N, 5, 12)), x, randn(N, 5, 12)),
        rows(1),
        out_rows(1),
    ),
    (  # frozen bias_k, bias_v and in_proj_bias: every member adds their values
        "mha-frozen-dense-biases",
        lambda: frozen(nn.MultiheadAttention(8, 2, kdim=5, vdim=3, add_bias_kv=True), "bias_k", "bias_v", "in_proj_bias"),
        lambda: (randn(4, N, 8), randn(6, N, 5), randn(6, N, 3)),
        lambda args, n: tuple(a[:, n : n + 1] for a in args),
        lambda out, n: (out[0][:, n : n + 1], out[1][n : n + 1]),
    ),
    (  # a parametrized out_proj: attention runs per member with dense noise (its Flipout form would read the weight)
        "mha-parametrized-out-proj",
        lambda: parametrized_out_proj(nn.MultiheadAttention(8, 2, batch_first=True, add_bias_kv=True)),
        lambda: ((x := randn(2 * N, 3, 8)), x, x),
        rows(2),
        out_rows(2),
    ),
    (
        "mha-packed-cross-no-bias",
        lambda: nn.MultiheadAttention(8, 4, bias=False, batch_first=True),
        lambda: (randn(N, 3, 8), (kv := randn(N, 6, 8)), kv, None, False),
        rows(1),
        out_rows(1),
    ),
    (
        "encoder-layer",
        lambda: nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=True).eval(),
        lambda: (randn(3 * N, 6, 16), nn.Transformer.generate_square_subsequent_mask(6, dtype=DT), None, True),
        rows(3, 1),
        out_rows(3),
    ),
    (
        "gru",
        lambda: nn.GRU(4, 6, num_layers=2, batch_first=True),
        lambda: (randn(2 * N, 7, 4),),
        rows(2),
        lambda out, n: (out[0][2 * n : 2 * n + 2], out[1][:, 2 * n : 2 * n + 2]),  # h_n is (layers, batch, hidden)
    ),
    (
        "rnn-relu",
        lambda: nn.RNN(3, 5, nonlinearity="relu"),
        lambda: (randn(6, N, 3), randn(1, N, 5)),
        lambda args, n: (args[0][:, n : n + 1], args[1][:, n : n + 1]),
        lambda out, n: (out[0][:, n : n + 1], out[1][:, n : n + 1]),
    ),
    ("rnn-cell", lambda: nn.RNNCell(4, 5), lambda: (randn(N, 2, 4), randn(N, 2, 5)), rows(0), out_rows(0)),
    ("rnn-cell-relu", lambda: nn.RNNCell(4, 5, nonlinearity="relu"), lambda: (randn(N, 4), randn(N, 5)), rows(0), out_rows(0)),
    (  # eval mode: no dropout between the layers
        "gru-dropout-eval",
        lambda: nn.GRU(4, 6, num_layers=2, dropout=0.5, batch_first=True).eval(),
        lambda: (randn(N, 5, 4),),
        rows(1),
        lambda out, n: (out[0][n : n + 1], out[1][:, n : n + 1]),
    ),
    # eps far from the default: a per-member norm that left out the module's own eps would be off by ~10%
    ("layernorm", lambda: nn.LayerNorm(6, eps=0.1), lambda: (randn(N, 3, 6),), rows(0), out_rows(0)),
    ("rmsnorm", lambda: nn.RMSNorm(6, eps=0.1), lambda: (randn(2 * N, 6),), rows(2), out_rows(2)),
    ("groupnorm", lambda: nn.GroupNorm(2, 4), lambda: (randn(2 * N, 4, 5),), rows(2), out_rows(2)),
    ("batchnorm-train", lambda: nn.BatchNorm1d(4), lambda: (randn(5 * N, 4),), rows(5), out_rows(5)),
    ("batchnorm-eval", lambda: nn.BatchNorm2d(3).eval(), lambda: (randn(N, 2, 3, 2, 2),), rows(0), out_rows(0)),
    ("bare-parameter", lambda: Scale(5), lambda: (randn(N, 4, 5),), rows(0), out_rows(0)),
    # 1-D positions along the rows (T = N, a multiple of the members, not the rows' count 2N): shared by every member
    (
        "positions-1d-shared",
        lambda: LearnedPositions(N, 3),
        lambda: (randn(2 * N, N, 3), torch.arange(N)),
        rows(2, 1),
        out_rows(2),
    ),
    # a (T, E) table beside (N, T, E) rows, T = 2N a multiple of the members: shared by every member, not 2 per member
    ("table-2d-shared", AddTable, lambda: (randn(N, 2 * N, 3), randn(2 * N, 3)), rows(1, 1), out_rows(1)),
    # a (1, E) context beside one (E,) row per member: each member's row runs as a batch of one, its output (N, E)
    ("context-batch-of-one", AddTable, lambda: (randn(N, 3), randn(1, 3)), rows(1, 1), out_rows(1)),
    # a (1,) context beside one number per member (N,): a batch of one too, the output (N,) as the plain model's (B,)
    ("context-batch-of-one-1d", ScalarContext, lambda: (randn(N), randn(1)), rows(1, 1), out_rows(1)),
    ("context-0d", ScalarContext, lambda: (randn(N), randn(())), rows(0, 1), out_rows(0)),
    # a second input (N, F) whose N is also the rows' T, of another width than E: one per member, no table
    ("per-member-as-long-as-t", AddSummary, lambda: (randn(N, N, 3), randn(N, 5)), rows(0), out_rows(0)),
    # N rows per member: the norm's input inside the block, one member's, must not be read as N members
    ("norm-inside-dense-called-outside", NormCalledOutside, lambda: (randn(N * N, 3),), rows(N), out_rows(N)),
    (
        "parameter-containers",
        lambda: nn.Sequential(nn.Linear(4, 5), ListScales(5)),
        lambda: (randn(N, 2, 4),),
        rows(0),
        out_rows(0),
    ),
    (
        "batchnorm-no-affine-train",
        lambda: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, affine=False)),
        lambda: (randn(5 * N, 4),),
        rows(5),
        out_rows(5),
    ),
    (
        "instancenorm-tracked-train",
        lambda: nn.Sequential(nn.Conv1d(3, 4, 1), nn.InstanceNorm1d(4, affine=True, track_running_stats=True)),
        lambda: (randn(2 * N, 3, 5),),
        rows(2),
        out_rows(2),
    ),
    # one example per member, (N, ...): norms with no unbatched form see each member's as a batch of one
    (
        "groupnorm-one-per-member",
        lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4)),
        lambda: (randn(N, 3, 7, 7),),
        rows(1),
        out_rows(1),
    ),
    (
        "batchnorm2d-one-per-member",
        lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)),
        lambda: (randn(N, 3, 6, 6),),
        rows(1),
        out_rows(1),
    ),
    (
        "batchnorm1d-one-per-member",
        lambda: nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5)).eval(),
        lambda: (randn(N, 4),),
        rows(1),
        out_rows(1),
    ),
    ("prelu-one-per-member", lambda: nn.Sequential(nn.Linear(4, 6), nn.PReLU(6)), lambda: (randn(N, 4),), rows(1), out_rows(1)),
    (  # one bag of ids per member, (N, L): each member's is 1-D, which EmbeddingBag reads as one bag only with a batch dim
        "embedding-bag-one-per-member",
        lambda: nn.Sequential(nn.EmbeddingBag(11, 4, mode="max"), nn.Linear(4, 3)),
        lambda: (torch.randint(11, (N, 5)),),
        rows(1),
        out_rows(1),
    ),
    (
        "embedding-bag-bags",
        lambda: nn.EmbeddingBag(11, 4, padding_idx=0),
        lambda: (torch.randint(11, (3 * N, 5)),),
        rows(3),
        out_rows(3),
    ),
    (
        "batchnorm-batch-stats-eval",  # no running statistics: batch statistics in eval mode too
        lambda: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, affine=False, track_running_stats=False)).eval(),
        lambda: (randn(5 * N, 4),),
        rows(5),
        out_rows(5),
    ),
    ("tied-embedding-head-bias", TiedLM, lambda: (torch.randint(11, (N, 5)),), rows(0), out_rows(0)),
    ("tied-embedding-head-bias-one-token", TiedLM, lambda: (torch.randint(11, (N, 1)),), rows(0), out_rows(0)),
    ("tied-weight-own-biases", TiedLinears, lambda: (randn(N, 16),), rows(0), out_rows(0)),
    ("tied-weight-own-biases-batch", TiedLinears, lambda: (randn(N, 3, 16),), rows(0), out_rows(0)),
    ("tied-norms", TiedNorms, lambda: (randn(N, 3, 4),), rows(0), out_rows(0)),
    ("tied-dense-embedding-flipout-head", ScaledTiedLM, lambda: (torch.randint(11, (N, 5)),), rows(0), out_rows(0)),
    ("flipout-weight-read-densely", WeightAsShift, lambda: (randn(N, 4, 4),), rows(0), out_rows(0)),
    ("shared-bias", SharedBias, lambda: (randn(2 * N, 4),), rows(2), out_rows(2)),
    # layers without a Flipout form: dense noise, each member's forward under vmap
    ("bilinear", lambda: nn.Bilinear(3, 4, 5), lambda: (randn(2 * N, 3), randn(2 * N, 4)), rows(2), out_rows(2)),
    # transposed convs: kernel stored (in, out // groups, ...), noise laid out (out, in // groups, ...)
    (
        "conv-transpose1d",
        lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=2),
        lambda: (randn(2 * N, 4, 5),),
        rows(2),
        out_rows(2),
    ),
    (
        "conv-transpose2d-one-per-member",
        lambda: nn.ConvTranspose2d(3, 4, 3, stride=2),
        lambda: (randn(N, 3, 4, 4),),
        rows(0),
        out_rows(0),
    ),
    (  # members first with examples, and output_size (read against one batch dim by torch) picking the output padding
        "conv-transpose2d-output-size",
        lambda: nn.ConvTranspose2d(4, 6, (3, 2), stride=2, padding=1, groups=2),
        lambda: (randn(N, 2, 4, 5, 4), [10, 7]),
        rows(0, 1),
        out_rows(0),
    ),
    ("conv-transpose-tied-to-conv", TiedAutoencoder, lambda: (randn(2 * N, 2, 4, 4),), rows(2), out_rows(2)),
    ("conv-transpose-tied-twins", tied_transposed_twins, lambda: (randn(N, 4, 3, 3),), rows(0), out_rows(0)),
    ("conv-transpose-tied-own-twin", transposed_and_own_twin, lambda: (randn(N, 4, 3, 3),), rows(0), out_rows(0)),
    ("conv-transpose-kernel-as-shift", KernelAsShift, lambda: (randn(2 * N, 4, 3),), rows(2), out_rows(2)),
    (
        "conv-transpose3d-no-bias",
        lambda: nn.ConvTranspose3d(2, 3, 2, stride=(1, 2, 2), bias=False),
        lambda: (randn(3 * N, 2, 2, 3, 3),),
        rows(3),
        out_rows(3),
    ),
    (
        "conv2d-same-replicate-depthwise",
        lambda: nn.Conv2d(3, 6, 3, padding="same", padding_mode="replicate", groups=3),
        lambda: (randn(2 * N, 3, 5, 5),),
        rows(2),
        out_rows(2),
    ),
    (
        "embedding-bag-per-sample-weights",
        lambda: nn.EmbeddingBag(11, 4, mode="sum"),
        lambda: (torch.randint(11, (2 * N, 5)), None, randn(2 * N, 5)),
        rows(2),
        out_rows(2),
    ),
    (
        "lstm-state-seq-first",
        lambda: nn.LSTM(3, 5, num_layers=2, bias=False),
        lambda: (randn(4, N, 3), (randn(2, N, 5), randn(2, N, 5))),
        lambda args, n: (args[0][:, n : n + 1], tuple(h[:, n : n + 1] for h in args[1])),
        lambda out, n: (out[0][:, n : n + 1], tuple(h[:, n : n + 1] for h in out[1])),
    ),
    (
        "transformer-batch-first",
        lambda: nn.Transformer(8, 2, 1, 1, 16, dropout=0.0, batch_first=True),
        lambda: (randn(N, 3, 8), randn(N, 4, 8)),
        rows(1),
        out_rows(1),
    ),
    (
        "parametrization-with-a-parameter",
        lambda: nn.utils.parametrize.register_parametrization(nn.Linear(4, 3), "weight", LearnedScale()),
        lambda: (randn(N, 2, 4),),
        rows(0),
        out_rows(0),
    ),
    ("user-hooks", Hooked, lambda: (randn(2 * N, 3),), rows(2), out_rows(2)),
    # GRUCell's kernel decomposes into ops vmap batches (LSTMCell's does not: refused)
    (
        "parametrized-gru-cell",
        lambda: parametrized(nn.GRUCell(3, 4), "weight_hh"),
        lambda: (randn(N, 3), randn(N, 4)),
        rows(0),
        out_rows(0),
    ),
    # a frozen TorchScript module runs as it is, on every member's rows (a trainable one is refused)
    ("torchscript-frozen", frozen_script, lambda: (randn(2 * N, 3),), rows(2), out_rows(2)),
]


@pytest.mark.parametrize("mirrored,groups,rank", SETTINGS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_members_equal_the_plain_module_with_their_explicit_parameters(
    case: tuple, mirrored: bool, groups: int, rank: int | None, device: torch.device
) -> None:
    """For every case (module kinds, layouts, tied and shared parameters) and setting: each member's outputs equal the
    original module under ``functional_call`` with member n's explicit parameters, to 1e-10 absolute (float64); after
    the population no member noise is left and the model's output equals the original's exactly."""
    name, make, inputs, member_inputs, member_output = case
    if name == "rmsnorm" and not hasattr(nn, "RMSNorm"):
        pytest.skip("nn.RMSNorm is torch >= 2.4")
    check_members(make, inputs, member_inputs, member_output, mirrored, groups, rank, device=device)


@pytest.mark.parametrize("k", [0, 2])
@pytest.mark.parametrize("mirrored,groups,rank", SETTINGS)
def test_transformers_conv1d_members_with_mean_biases_equal_their_explicit_parameters(
    mirrored: bool, groups: int, rank: int | None, k: int, device: torch.device
) -> None:
    """transformers' Conv1D (GPT-2's projections, weight stored (in, out)) with nonzero mean biases, one example per
    member and k per member: each member's output equals the plain Conv1D stack with member n's explicit parameters
    (to 1e-10, float64). Conv1D starts its biases at zero, where a forward that left out the mean bias would pass."""
    conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D

    def make() -> nn.Module:
        model = nn.Sequential(conv1d(5, 4), nn.Tanh(), conv1d(3, 5))
        for layer in (model[0], model[2]):
            nn.init.normal_(layer.bias)
        return model

    shape = (N, 4) if k == 0 else (k * N, 4)
    check_members(make, lambda: (randn(*shape),), rows(k), out_rows(k), mirrored, groups, rank, device=device)


class Blocking(nn.Module):
    """A gain whose forward waits for ``release`` after setting ``entered``: a long op of another thread."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(3, dtype=DT))
        self.entered, self.release = threading.Event(), threading.Event()

    def forward(self, x: Tensor) -> Tensor:
        self.entered.set()
        self.release.wait(10)
        return x * self.gain


def test_a_population_evaluated_while_another_thread_runs_a_dense_forward_stays_per_member() -> None:
    """Two models, each with its FlipES, in two threads: while one thread is inside a dense module's per-member
    forward, the other thread's population (a dense norm called alone and inside a dense block) gives exactly the
    outputs it gives with no other thread running."""
    torch.manual_seed(0)
    blocking = flipes.flipout(Blocking())
    es_a = flipes.FlipES(blocking, popsize=4, sigma=0.1, seed=0)
    model = flipes.flipout(NormCalledOutside().to(DT))
    es_b = flipes.FlipES(model, popsize=N, sigma=0.3, seed=1)
    x = randn(N, 3)
    with es_b.population():
        alone = model(x)

    def other() -> None:
        with es_a.population() as pop:
            blocking(torch.ones(pop.size, 3, dtype=DT))

    thread = threading.Thread(target=other)
    thread.start()
    try:
        assert blocking.entered.wait(10)
        with es_b.population():
            meanwhile = model(x)
    finally:
        blocking.release.set()
        thread.join()
    assert torch.equal(meanwhile, alone)


def test_a_dense_modules_batch_that_is_no_multiple_of_the_members_is_refused_not_shared() -> None:
    """7 rows for 8 members (a batch one short) are no members-first input: the dense module refuses them naming the
    rule, as before shared 1-D positions could make "no member input" mean every member's output of the same rows,
    which gave a plausible (8, 7, 2) result through the Flipout layer after it."""
    model = flipes.flipout(nn.Sequential(Scale(4), nn.Linear(4, 2)))
    es = flipes.FlipES(model, popsize=8, sigma=0.1)
    with pytest.raises(ValueError, match=r"inputs must be members first.*got shapes \[\(7, 4\)\]"):
        with es.population():
            model(torch.randn(7, 4))


def padded(rows: int, length: int) -> Tensor:
    """A left-aligned key padding mask (True = padding at the end), every row at least half real."""
    lengths = torch.randint(length // 2, length + 1, (rows,))
    return torch.arange(length) >= lengths[:, None]


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")  # the plain reference's nested path
@pytest.mark.parametrize(
    "make,inputs",
    [
        (
            lambda: nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True).eval(),
            lambda: (randn(3 * N, 6, 16), None, padded(3 * N, 6)),
        ),
        (
            lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True), 2).eval(),
            lambda: (randn(3 * N, 6, 16), None, padded(3 * N, 6)),
        ),
    ],
    ids=["encoder-layer", "encoder-nested"],
)
def test_without_torchs_fast_path_switch_eval_transformer_members_are_still_their_own(
    make: Callable[[], nn.Module], inputs: Callable[[], tuple], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where torch has no switch for its fused transformer kernels (torch < 2.3; forced here), an eval-mode
    TransformerEncoderLayer's fast path and a TransformerEncoder's nested-tensor path (a padding mask) would
    read the mean weights: each member still equals the plain block with its own parameters, and the flags
    that turned those paths off are back afterwards. (Under torch 2.13 the flipout'd layer alone does not
    take its fast path, so the nested case is the one that fails without the flags; torch 2.2.2's layer
    did, caught by test_members_equal_the_plain_module_with_their_explicit_parameters there.)"""
    monkeypatch.setattr(flipes.nn.attention, "mha_switch", lambda: None)
    torch.manual_seed(0)
    original = make().to(DT)
    block = flipes.flipout(copy.deepcopy(original))
    es = flipes.FlipES(block, popsize=N, sigma=0.3, groups=2)

    def flags() -> dict:
        names = ("activation_relu_or_gelu", "use_nested_tensor")
        return {(id(m), k): v for m in block.modules() for k, v in vars(m).items() if k in names}

    before = flags()
    x, mask, pad = inputs()
    with es.population():
        out = block(x, mask, pad)
        params = member_parameters(es, block)
    assert flags() == before and any(before.values())  # back, and the paths were on: the test sees them taken
    for n in range(N):
        rows_n = slice(3 * n, 3 * n + 3)
        with torch.no_grad():  # the plain block may take its fast path: the same numbers at the real positions
            expect = functional_call(original, params[n], (x[rows_n], mask, pad[rows_n]))
        real = ~pad[rows_n]  # what padded positions hold differs between torch's paths
        torch.testing.assert_close(out[rows_n][real], expect[real], atol=TOL, rtol=0)


NORMS = {
    "affine": (lambda: nn.BatchNorm1d(3), (8, 3)),
    "no-affine": (lambda: nn.BatchNorm1d(3, affine=False), (8, 3)),
    "frozen-affine": (lambda: nn.BatchNorm1d(3).requires_grad_(False), (8, 3)),
    "instancenorm": (lambda: nn.InstanceNorm1d(3, track_running_stats=True), (8, 3, 5)),
}


@pytest.mark.parametrize("kind", NORMS)
def test_norms_in_a_population_leave_the_running_statistics_alone(kind: str) -> None:
    """With or without evolved parameters, a norm in a population moves no running statistic, and a
    member's output does not depend on the other members' inputs."""
    make, shape = NORMS[kind]
    torch.manual_seed(0)
    norm = make()
    model = flipes.flipout(nn.Sequential(nn.Conv1d(3, 3, 1) if len(shape) == 3 else nn.Linear(3, 3), norm))
    es = flipes.FlipES(model, popsize=4, sigma=0.1)
    x = torch.randn(*shape)
    other = x.clone()
    other[2:] += 100  # the examples of members 1, 2 and 3
    with es.population():
        y, y_other = model(x), model(other)
    assert torch.equal(y[:2], y_other[:2])
    assert torch.equal(norm.running_mean, torch.zeros(3)) and int(norm.num_batches_tracked) == 0
    norm(torch.randn(*shape))  # outside a population: as torch's
    assert not torch.equal(norm.running_mean, torch.zeros(3))


class EveryKind(nn.Module):
    """Embedding, Conv1d, grouped ConvTranspose1d, LayerNorm, MultiheadAttention, GRU, RNN, a bare parameter and
    Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.deconv = nn.ConvTranspose1d(8, 8, 3, padding=1, groups=2)
        self.norm = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.gru = nn.GRU(8, 8, batch_first=True)
        self.rnn = nn.RNN(8, 6, batch_first=True)
        self.scale = Scale(6)
        self.head = nn.Linear(6, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.emb(tokens)
        h = self.norm(h + (self.conv(h.transpose(1, 2)) + self.deconv(h.transpose(1, 2))).transpose(1, 2))
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h, _ = self.rnn(self.gru(h)[0])
        return self.head(torch.tanh(self.scale(h))).mean(1)


@MADE_UP_FITNESS
@pytest.mark.parametrize("mirrored,groups,rank", SETTINGS)
def test_a_model_of_every_kind_is_exact_and_its_gradient_is_the_materialized_estimator(
    mirrored: bool, groups: int, rank: int | None, device: torch.device
) -> None:
    """A model of every kind (embedding, conv, transposed conv, norm, attention, GRU, RNN, bare parameter, linear): each
    member equals the original module with its explicit parameters to 1e-10, and tell's ``.grad`` of every parameter
    equals -Σ_n F̂_n σu_n / (Nσ²) from those parameters, to 1e-12 absolute + 1e-9 relative."""
    check_members(EveryKind, lambda: (torch.randint(11, (N, 6)),), rows(1), out_rows(1), mirrored, groups, rank, device=device)
    check_gradient(EveryKind, mirrored, groups, rank, device)


def test_a_transposed_conv_tied_to_another_layout_keeps_dense_noise() -> None:
    """A ConvTranspose2d sharing its kernel with a Conv2d (read (out, in) there) stays a dense per-member module beside
    the Flipout conv, where FlipES would refuse one weight in two Flipout layouts; two ConvTranspose2d of one layout
    sharing a kernel both become Flipout layers, and one sharing it with a dense ConvTranspose2d subclass or a dense leaf
    module stays Flipout (their members are checked in test_members_equal_the_plain_module_with_their_explicit_parameters)."""
    autoencoder = flipes.flipout(TiedAutoencoder())
    assert isinstance(autoencoder.enc, flipes.nn.FlipoutConv2d) and isinstance(autoencoder.dec, flipes.nn.PerMember)
    twins = flipes.flipout(tied_transposed_twins())
    assert isinstance(twins[0], flipes.nn.FlipoutConvTranspose2d) and twins[2] is not twins[0]
    assert isinstance(twins[2], flipes.nn.FlipoutConvTranspose2d) and twins[2].weight is twins[0].weight
    own = flipes.flipout(transposed_and_own_twin())  # a subclass with its own forward reads the same layout: still tied
    assert isinstance(own[0], flipes.nn.FlipoutConvTranspose2d) and isinstance(own[3], PerMember)
    shifted = flipes.flipout(KernelAsShift())  # a dense leaf module adding the kernel reads it per member: no conflict
    assert isinstance(shifted.dec, flipes.nn.FlipoutConvTranspose1d) and isinstance(shifted.add, PerMember)


def test_a_transposed_conv_refuses_a_padding_mode_other_than_zeros_in_every_forward() -> None:
    """A padding mode torch's ConvTranspose2d refuses (set after construction) is a ValueError naming the mode and the
    fix in a population forward, with a backprop noise model and outside both, as torch's own forward raises, instead
    of a population padding with zeros silently."""
    plain = nn.ConvTranspose2d(2, 2, 3)
    plain.padding_mode = "reflect"
    with pytest.raises(ValueError, match="Only `zeros` padding mode is supported for ConvTranspose2d"):
        plain(torch.randn(1, 2, 3, 3))
    layer = flipes.flipout(plain)
    refused = r"FlipoutConvTranspose2d, got padding_mode='reflect' .*; set padding_mode='zeros'$"
    es = flipes.FlipES(layer, popsize=4, sigma=0.1)
    with es.population(), pytest.raises(ValueError, match=refused):
        layer(torch.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match=refused):
        layer(torch.randn(1, 2, 3, 3))
    noisy = flipes.nn.attach_noise(flipes.flipout(nn.ConvTranspose2d(2, 2, 3)), flipes.nn.GaussianPosterior)
    noisy.padding_mode = "circular"
    with pytest.raises(ValueError, match="got padding_mode='circular'"):
        noisy.train()(torch.randn(3, 2, 3, 3))


@MADE_UP_FITNESS
@pytest.mark.parametrize("mirrored,groups,rank", SETTINGS)
@pytest.mark.parametrize("make", TIED, ids=[m.__name__ for m in TIED])
def test_a_tied_parameter_has_one_perturbation_and_one_gradient(
    make: Callable[[], nn.Module], mirrored: bool, groups: int, rank: int | None, device: torch.device
) -> None:
    """A parameter used by several modules (a weight with different biases, a shared bias, tied norm
    scales) gets one gradient, that of its one per-member perturbation; the members' outputs with it
    are checked in test_members_equal_the_plain_module_with_their_explicit_parameters."""
    check_gradient(make, mirrored, groups, rank, device)


def check_gradient(make: Callable[[], nn.Module], mirrored: bool, groups: int, rank: int | None, device: torch.device) -> None:
    """``tell``'s ``.grad`` of every parameter equals ``-Σ_n F̂_n σu_n / (Nσ²)`` with the members' explicit parameters."""
    torch.manual_seed(1)
    model = flipes.flipout(make().to(device, DT))
    sigma = 0.05
    es = flipes.FlipES(
        model, popsize=N, sigma=sigma, seed=3, groups=groups, mirrored=mirrored, noise_rank=rank,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
    )  # fmt: skip
    with es.population():
        params = member_parameters(es, model)
    fitness = torch.randn(N, dtype=DT, device=device)
    es.tell(fitness)
    f_hat = centered_ranks_distinct(fitness)
    assert len(params[0]) == len(list(model.parameters()))  # every parameter has a per-member value
    for name, p in model.named_parameters():
        delta = torch.stack([params[n][name] - p for n in range(N)])  # σu_n
        expect = -(f_hat.view(-1, *(1,) * p.dim()) * delta).sum(0) / (N * sigma**2)
        torch.testing.assert_close(p.grad, expect, atol=1e-12, rtol=1e-9, msg=name)


class PositionalModel(nn.Module):
    """A bare parameter held beside Flipout layers: nothing could perturb it per member."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(5, 4))
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x + self.pos)


def test_a_frozen_pattern_of_parameters_names_the_parameters_it_matches_and_their_list() -> None:
    """``frozen=["*.bias"]`` or ``["[02].bias"]`` (patterns of parameter names, which match no module) is a ValueError
    naming the 2 parameters it matches and the ``named_parameters()`` list that freezes them, not a close name; that list
    (``fnmatch`` as the hint writes it) freezes exactly the 2 biases."""
    import fnmatch

    make = lambda: nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1))  # noqa: E731
    for pattern in ("*.bias", "[02].bias"):  # fnmatch's character class is a pattern too
        with pytest.raises(ValueError, match=re.escape(
            f"{pattern!r} is no parameter or module of Sequential; names are exact, not patterns: list the 2 parameters "
            f"it matches, frozen=[n for n, _ in model.named_parameters() if fnmatch.fnmatch(n, {pattern!r})]")):  # fmt: skip
            flipes.flipout(make(), frozen=[pattern])
    plain = make()
    model = flipes.flipout(plain, frozen=[n for n, _ in plain.named_parameters() if fnmatch.fnmatch(n, "*.bias")])
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == {"0.bias", "2.bias"}


def test_a_parameter_nothing_can_perturb_is_an_error_naming_it_unless_frozen() -> None:
    """A bare parameter beside Flipout layers makes ``flipout`` raise a ValueError naming it, its holder and the
    ``frozen=[...]`` fix; frozen, it stops requiring grad and is reported frozen; a misspelled frozen name is a
    ValueError suggesting the closest parameter (or, with none close, naming the model's modules); a model built by
    hand with such a parameter makes FlipES raise the same kind of error; so does a layer whose flipout() result was
    dropped (a layer alone is replaced, not converted in place), and the error says to evolve what flipout returns."""
    with pytest.raises(ValueError, match=r"would not be evolved: pos \(held by PositionalModel\).*frozen=\["):
        flipes.flipout(PositionalModel())
    model = flipes.flipout(PositionalModel(), frozen=["pos"])
    assert not model.pos.requires_grad
    report = flipes.nn.parameter_report(model)
    assert {r.name: r.how for r in report.rows} == {"pos": "frozen", "fc.weight": "flipout", "fc.bias": "flipout"}
    with pytest.raises(ValueError, match=r"'fc.wieght' is no parameter or module of PositionalModel; did you mean 'fc.weight'"):
        flipes.flipout(PositionalModel(), frozen=["pos", "fc.wieght"])
    with pytest.raises(ValueError, match=r"'layer0' is no parameter or module of Sequential; .*modules\(\), e.g. '0', '1'$"):
        flipes.flipout(nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 1)), frozen=["layer0"])  # nothing close: the names
    plain = PositionalModel()  # built by hand: FlipES checks too
    plain.fc = flipes.nn.FlipoutLinear(4, 2)
    with pytest.raises(
        ValueError, match=r"FlipES: 1 trainable parameter\(s\) would not be evolved.*: pos \(PositionalModel\)"
    ) as e:
        flipes.FlipES(plain, popsize=4)
    assert "not converted in place" not in str(e.value)
    layer = nn.Linear(4, 2)  # converted alone, flipout returns a new layer, and the old one stays plain
    assert type(flipes.flipout(layer)) is flipes.nn.FlipoutLinear and type(layer) is nn.Linear
    with pytest.raises(ValueError) as e:
        flipes.FlipES(layer, popsize=4)
    assert str(e.value).endswith(
        "weight (Linear), bias (Linear); convert the model with flipes.flipout(model), which evolves every parameter it can "
        "and names any it cannot, or freeze them with requires_grad_(False); a Linear given to flipout alone is not "
        "converted in place but replaced: evolve the layer it returns, model = flipes.flipout(model)"
    )


class HeldTwice(nn.Module):
    """A module holding a parameter that a layer below it evolves (a Flipout bias, a dense norm scale, or one in a
    ParameterList), which its own forward reads or not."""

    def __init__(self, kind: str, read: bool) -> None:
        super().__init__()
        self.fc, self.norm, self.read = nn.Linear(3, 3), nn.LayerNorm(3), read
        if kind == "container":
            self.held = nn.ParameterList([self.fc.weight])
        else:
            self.shift = self.fc.bias if kind == "flipout" else self.norm.weight

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(self.fc(x))
        if not self.read:
            return h
        return h @ self.held[0] if hasattr(self, "held") else h + self.shift


@pytest.mark.parametrize(
    "kind,name,other", [("flipout", "shift", "fc.bias"), ("dense", "shift", "norm.weight"), ("container", "held.0", "fc.weight")]
)
def test_an_evolved_parameter_read_by_a_plain_module_holding_it_too_is_an_error_naming_it(
    kind: str, name: str, other: str
) -> None:
    """A module that runs as plain torch reading a parameter it holds that a layer evolves under another name reads its
    mean for every member while the layer uses each member's own: the population raises a ValueError naming it, its
    holder, its other name and the frozen= fix. Frozen so, it runs; held but never read (BERT's prediction head holds
    its decoder's bias), it runs, and its members are the plain module with their explicit parameters."""
    x = torch.randn(N, 3)
    model = flipes.flipout(HeldTwice(kind, read=True))
    es = flipes.FlipES(model, popsize=N)
    expected = rf"the model read 1 evolved parameter\(s\) through a module that runs as plain torch: {re.escape(name)} "
    expected += rf"\(held by HeldTwice, also {re.escape(other)}\).*frozen=\[{re.escape(repr(name))}\]\)$"
    with pytest.raises(ValueError, match=expected), es.population():
        model(x)
    model = flipes.flipout(HeldTwice(kind, read=True), frozen=[name])
    with flipes.FlipES(model, popsize=N).population():
        model(x)
    check_members(lambda: HeldTwice(kind, read=False), lambda: (randn(N, 3),), rows(0), out_rows(0), False, 1, None)


class ReadsPassedOn(nn.Module):
    """Reads a parameter a Flipout layer evolves (``self.shift = self.fc.bias``) or the one a dense norm evolves
    (``self.scale = self.norm.weight``) by passing it to a torch function rather than calling a method on it: as a
    keyword argument, or inside a list."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.fc, self.norm, self.how = nn.Linear(3, 3), nn.LayerNorm(3), how
        self.shift, self.scale = self.fc.bias, self.norm.weight

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(self.fc(x))
        if self.how == "keyword":
            return torch.add(h, other=self.shift)
        if self.how == "in-a-list":
            return h + torch.stack([self.shift]).sum(0)
        if self.how == "both":
            return h * self.scale + self.shift
        return h * self.scale  # the other parameter it holds, shift never read


@pytest.mark.parametrize("how,name", [("keyword", "shift"), ("in-a-list", "shift"), ("plainly", "scale")])
def test_an_evolved_parameter_passed_on_by_a_plain_module_is_a_read_naming_it(how: str, name: str) -> None:
    """A plain module's read of an evolved parameter it holds is refused however the value reaches torch: as a keyword
    argument (torch.add(h, other=p)) or inside a list (torch.stack([p])). It holds two (a Flipout bias and a dense norm
    scale), each watched: the ValueError names the one read and not the other."""
    model = flipes.flipout(ReadsPassedOn(how))
    es = flipes.FlipES(model, popsize=N)
    with pytest.raises(ValueError, match=rf"read 1 evolved parameter\(s\).*: {name} \(held by ReadsPassedOn") as e:
        with es.population():
            model(torch.randn(N, 3))
    assert ({"shift", "scale"} - {name}).pop() + " (held" not in str(e.value)


def test_every_evolved_parameter_a_plain_module_read_is_named() -> None:
    """A plain module reading two evolved parameters it holds (a Flipout bias and a dense norm scale) is refused naming
    both, with their other names and the frozen= fix for the two."""
    model = flipes.flipout(ReadsPassedOn("both"))
    es = flipes.FlipES(model, popsize=N)
    expected = r"read 2 evolved parameter\(s\) .*: shift \(held by ReadsPassedOn, also fc.bias\), scale \(held by "
    expected += r"ReadsPassedOn, also norm.weight\)\..*frozen=\['shift', 'scale'\]\)$"
    with pytest.raises(ValueError, match=expected), es.population():
        model(torch.randn(N, 3))


class ListBeside(nn.Module):
    """A ParameterList beside a Linear layer: its parameters are read by this module's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.offsets = nn.ParameterList([nn.Parameter(torch.randn(4))])

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x + self.offsets[0])


class PlainList(nn.Module):
    """Layers registered as attributes but reached otherwise: through a plain Python list (not an nn.ModuleList; also
    of layers without biases), a bound method kept from before flipout, or the list after the registered layer itself."""

    def __init__(self, via: str) -> None:
        super().__init__()
        bias = via != "list-without-biases"
        self.a, self.b, self.via = nn.Linear(3, 4, bias=bias), nn.Linear(4, 2, bias=bias), via
        self.stack, self.project = [self.a, self.b], self.b.forward

    def forward(self, x: Tensor) -> Tensor:
        if self.via == "bound-method":
            return self.project(self.a(x))
        if self.via == "list-after-the-layer":
            h = self.a(x)
            return self.b(h) + self.stack[1](h)
        for layer in self.stack:
            x = layer(x)
        return x


@pytest.mark.parametrize("hold_noise", [True, False])
@pytest.mark.parametrize(
    "via,name", [("list", "a"), ("list-without-biases", "a"), ("bound-method", "b"), ("list-after-the-layer", "b")]
)
def test_a_replaced_layer_used_past_the_models_modules_is_an_error_naming_the_module_list_fix(
    via: str, name: str, hold_noise: bool
) -> None:
    """flipout replaces a layer by a Flipout one in the model's modules; a plain list or a bound method still holds the
    original, which would run the mean weights for every member: using it in a population is a ValueError naming the
    Flipout layer that replaced it and the nn.ModuleList fix (not a KeyError from flipes' hooks, nor silence where the
    hooks are bypassed or already gone), also where noise is sampled on demand; outside a population it runs."""
    model = flipes.flipout(PlainList(via))
    es = flipes.FlipES(model, popsize=4, hold_noise=hold_noise)
    expected = rf"the plain Linear that flipes.flipout replaced by the Flipout layer '{name}' .* nn.ModuleList"
    with pytest.raises(ValueError, match=expected), es.population():
        model(torch.randn(4, 3))
    assert model(torch.randn(4, 3)).shape == (4, 2)
    assert copy.deepcopy(model.stack[0]).weight is not model.a.weight  # a copy of an original is a plain layer


def test_a_replaced_layer_outside_a_population_or_copied_is_the_plain_layer_it_was() -> None:
    """Outside a population the original layer flipout replaced holds the Flipout layer's very Parameter objects (its
    weight's grad is the one backprop gave them); a value read through it inside a population but used after it is no
    error; and a deep copy of the original is a plain layer of its own, which runs inside a population as plain torch."""
    torch.manual_seed(0)
    model = flipes.flipout(PlainList("list"))
    es = flipes.FlipES(model, popsize=4)
    model(torch.randn(4, 3)).sum().backward()
    original = model.stack[0]
    assert original.weight is model.a.weight and type(original.weight) is nn.Parameter
    assert original.weight.grad is not None and torch.equal(original.weight.grad, model.a.weight.grad)
    twin = copy.deepcopy(original)
    x = torch.randn(4, 3)
    with es.population():
        kept = original.bias  # its value is not used here
        torch.testing.assert_close(twin(x), F.linear(x, model.a.weight, model.a.bias), rtol=0, atol=0)
    torch.testing.assert_close(kept * 2, model.a.bias * 2, rtol=0, atol=0)


class ReadsMetadata(nn.Module):
    """Reads only the dtype, device and shape of a parameter a Flipout layer evolves, through a name of its own
    (``self.w = self.fc.weight``) or the original layer kept in a plain list, as code casting its input does, and
    whether that layer has a bias (it has none)."""

    def __init__(self, via: str) -> None:
        super().__init__()
        self.fc, self.via = nn.Linear(3, 2, bias=False), via
        self.w, self.kept = self.fc.weight, [self.fc]

    def forward(self, x: Tensor) -> Tensor:
        w = self.w if self.via == "held" else self.kept[0].weight
        assert w.shape == (2, 3) and w.size(-1) == x.shape[-1] and w.dim() == 2 and len(w) == 2
        assert self.kept[0].bias is None
        return self.fc(x.to(w.dtype).to(w.device))


@pytest.mark.parametrize("via", ["held", "original-in-a-list"])
def test_reading_only_the_metadata_of_an_evolved_parameter_past_its_layer_is_no_error(via: str) -> None:
    """Reading a watched parameter's dtype, device, shape, size, dim, len or requires_grad (no value: every member has
    the mean's) through a plain module's own name for it or the original layer flipout replaced (or finding that layer's
    bias None) is no error in a population, whose members are the Flipout layer's; a value read there is still refused
    (the tests above)."""
    model = flipes.flipout(ReadsMetadata(via))
    es = flipes.FlipES(model, popsize=N, sigma=0.1)
    x = torch.randn(N, 3, dtype=torch.float64)
    with es.population():
        out = model(x)
        assert (model.w if via == "held" else model.kept[0].weight).requires_grad  # the parameter's flag, under no_grad
        params = member_parameters(es, model)
    for n in range(N):
        torch.testing.assert_close(out[n], functional_call(model, params[n], (x[n].float(),)))
    es.tell(torch.randn(N))


class AllocatesLike(nn.Module):
    """Makes tensors shaped, typed and placed as a parameter a Flipout layer evolves (``torch.zeros_like(self.w)``,
    ``self.w.new_zeros(...)``, an initial state), through a name of its own or the original layer kept in a list."""

    def __init__(self, via: str) -> None:
        super().__init__()
        self.fc, self.via = nn.Linear(3, 3), via
        self.w, self.kept = self.fc.bias, [self.fc]

    def forward(self, x: Tensor) -> Tensor:
        w = self.w if self.via == "held" else self.kept[0].bias
        start = torch.zeros_like(w) + torch.ones_like(w) + torch.empty_like(w).zero_() + torch.full_like(w, 2.0)
        start = start + w.new_zeros(w.shape) + w.new_ones(3) + w.new_full((3,), 1.0) + w.new_empty(3).zero_()
        return self.fc((x + start).to(w).type_as(w))  # cast as w: its dtype and device only


@pytest.mark.parametrize("via", ["held", "original-in-a-list"])
def test_allocating_like_an_evolved_parameter_past_its_layer_is_no_error(via: str) -> None:
    """torch.zeros_like(w), w.new_zeros(...) and their kind, and x.to(w) or x.type_as(w), read a watched parameter's
    shape, dtype and device only (no value: every member would get the same), so they are no error in a population, as
    w.shape and w.dtype are not."""
    model = flipes.flipout(AllocatesLike(via))
    es = flipes.FlipES(model, popsize=N, sigma=0.1)
    x = torch.randn(N, 3)
    with es.population():
        out = model(x)
        params = member_parameters(es, model)
    for n in range(N):
        torch.testing.assert_close(out[n], functional_call(model, params[n], (x[n],)))
    es.tell(torch.randn(N))


class AliasedChild(nn.Module):
    """Registers attention's out_proj under a name of its own too (a handle to inspect it), calling only the attention."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.proj = self.attn.out_proj

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def test_a_child_of_a_flipout_layer_also_registered_under_another_name_is_no_replaced_layer() -> None:
    """flipout converts an alias of attention's out_proj on its own, but the original stays the attention's registered
    child, read by its own forward: no "used the plain ... that flipes.flipout replaced" error in a population, and
    each member's output is the plain module's with its explicit parameters (float64, 1e-10)."""
    torch.manual_seed(0)
    model = flipes.flipout(AliasedChild().double())
    es = flipes.FlipES(model, popsize=N, sigma=0.1)
    x = torch.randn(N, 3, 4, dtype=torch.float64)
    with es.population():
        out = model(x)
        params = member_parameters(es, model)
    for n in range(N):
        torch.testing.assert_close(out[n], functional_call(model, params[n], (x[n : n + 1],))[0], atol=1e-10, rtol=0)


def test_parameters_in_a_container_are_evolved_by_the_module_that_reads_them() -> None:
    """Parameters in an ``nn.ParameterList``/``ParameterDict`` are dense parameters of the module that holds the
    container (which reads them in its forward), never of the container, which is never called; beside Flipout
    layers they are an error naming them, as a bare parameter there is."""
    model = flipes.flipout(nn.Sequential(nn.Linear(4, 5), ListScales(5)))
    assert isinstance(model[1], PerMember) and not isinstance(model[1].gains, PerMember)
    assert {r.name: r.module for r in flipes.nn.parameter_report(model).rows if r.how == "dense"} == dict.fromkeys(
        ["1.gains.0", "1.gains.1", "1.shifts.a"], "PerMemberListScales"
    )
    with pytest.raises(ValueError, match=r"would not be evolved: offsets\.0 \(held by ParameterList\).*frozen=\["):
        flipes.flipout(ListBeside())


def test_frozen_parameters_stay_frozen_and_unperturbed() -> None:
    """Parameters frozen by the user (requires_grad False) or by ``frozen=`` (a module's parameter, a Flipout weight)
    are reported frozen, are not among the ES parameters and get no per-member value: each member's output equals the
    model with only the other parameters perturbed (within 1e-5, float32), and after tell exactly the frozen
    parameters are unchanged."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 3))
    model[0].weight.requires_grad_(False)  # frozen by the user
    flipes.flipout(model, frozen=["1.bias", "2.weight"])  # a module's parameter and a Flipout weight
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    es = flipes.FlipES(model, popsize=8, sigma=0.5, lr=0.1)
    how = {r.name: r.how for r in es.report().rows}
    assert how == {"0.weight": "frozen", "1.weight": "dense", "1.bias": "frozen", "2.weight": "frozen", "2.bias": "flipout"}
    assert {id(p) for p in es.params} == {id(model[1].weight), id(model[2].bias)}
    tokens = torch.randint(10, (8, 6))
    with es.population():
        out = model(tokens)
        params = member_parameters(es, model)
    assert set(params[0]) == {"1.weight", "2.bias"}
    for n in range(8):  # each member: the frozen parameters at their values, the others perturbed
        expect = functional_call(model, params[n], (tokens[n],))
        torch.testing.assert_close(out[n], expect, atol=1e-5, rtol=1e-5)
    es.tell(torch.randn(8))
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) == (how[name] == "frozen"), name


NESTED = (
    "population() inside a population: {} layer(s) of this model are already evaluating one (a nested es.population(), "
    "or another FlipES on the same layers); leave the outer `with` first"
)
NEWER = (
    "population() of a FlipES whose model has a newer FlipES: one FlipES per model (two would each perturb the same "
    "layers); use the newer one, or make a new FlipES after `del`-ing the other"
)


@pytest.mark.parametrize("kind", ["flipout", "dense", "both"])
def test_nested_populations_and_two_flipes_on_one_model_are_errors_for_every_kind(kind: str) -> None:
    """For a model of a Flipout layer (Embedding), of dense parameters (LayerNorm) and of both: a population inside a
    population is a RuntimeError counting the busy layers and naming the fix, after which the outer population still
    evaluates its perturbed members as before; using a FlipES after a newer one was made for the model is a
    RuntimeError naming the fix, and the newer one evaluates perturbed members (linear layers: test_es)."""
    layers = {"flipout": [nn.Embedding(10, 4)], "dense": [nn.LayerNorm(4)], "both": [nn.Embedding(10, 4), nn.LayerNorm(4)]}
    model, busy = flipes.flipout(nn.Sequential(*layers[kind])), len(layers[kind])
    one = torch.randint(10, (1, 6)) if kind != "dense" else torch.randn(1, 6, 4)
    x = one.expand(4, *one.shape[1:])  # every member sees the same input: outputs differ by the perturbations alone
    es = flipes.FlipES(model, popsize=4, sigma=0.5)
    with es.population():
        before = model(x)
        with pytest.raises(RuntimeError, match="^" + re.escape(NESTED.format(busy)) + "$"):
            with es.population():
                pass
        assert torch.equal(model(x), before) and not torch.equal(before[0], before[1])  # the members, perturbed
    newer = flipes.FlipES(model, popsize=4, sigma=0.5)
    with pytest.raises(RuntimeError, match="^" + re.escape(NEWER) + "$"):
        with es.population():
            pass
    with newer.population():
        out = model(x)
    assert out.shape == before.shape and not torch.equal(out[0], out[1])


def test_layer_options_without_a_flipout_form_are_refused_naming_the_fix() -> None:
    """A trainable Embedding with max_norm is a ValueError naming the module's path in the model, the option and both
    fixes (build it without max_norm, or freeze it), and freezing it works: it stays a plain nn.Embedding; a
    bidirectional GRU and an LSTM with proj_size are ValueErrors naming the options and the fixes (a second layer on
    the reversed sequence, the cell, or freezing it), and the cell converts; a frozen bidirectional GRU is left as a
    plain nn.GRU."""
    max_norm = (
        "Embedding(max_norm=1.0) renormalizes rows of the table in place, which has no per-member form; build the "
        "embedding without max_norm (or freeze it: flipes.flipout(model, frozen=[...]))"
    )
    with pytest.raises(ValueError, match="^" + re.escape("flipout(): '0': " + max_norm) + "$"):
        flipes.flipout(nn.Sequential(nn.Embedding(5, 3, max_norm=1.0), nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="^" + re.escape(max_norm) + "$"):  # the model itself: no path to name
        flipes.flipout(nn.Embedding(5, 3, max_norm=1.0))
    model = flipes.flipout(nn.Sequential(nn.Embedding(5, 3, max_norm=1.0), nn.Linear(3, 2)), frozen=["0"])
    assert type(model[0]) is nn.Embedding and isinstance(model[1], flipes.nn.FlipoutLinear)
    rnn = (
        "Flipout{} supports unidirectional layers without projections; got bidirectional={}, proj_size={} (build the "
        "reverse direction from a second layer on the reversed sequence, or use the cell; or freeze it: "
        "flipes.flipout(model, frozen=[...]))"
    )
    with pytest.raises(ValueError, match="^" + re.escape(rnn.format("GRU", True, 0)) + "$"):
        flipes.flipout(nn.GRU(3, 4, bidirectional=True))
    with pytest.raises(ValueError, match="^" + re.escape("flipout(): 'encoder.0': " + rnn.format("LSTM", False, 2)) + "$"):
        flipes.flipout(nn.ModuleDict({"encoder": nn.Sequential(nn.LSTM(3, 4, proj_size=2))}))
    assert isinstance(flipes.flipout(nn.GRUCell(3, 4)), flipes.nn.FlipoutGRUCell)
    frozen_gru = nn.GRU(3, 4, bidirectional=True).requires_grad_(False)  # frozen: left as it is
    model = flipes.flipout(nn.ModuleDict({"gru": frozen_gru, "head": nn.Linear(8, 2)}))
    assert type(model["gru"]) is nn.GRU


class OwnLazy(nn.Module):
    """A module of one's own with a lazy parameter (``nn.UninitializedParameter``), shaped at its first call."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.parameter.UninitializedParameter()

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.scale, nn.parameter.UninitializedParameter):
            self.scale.materialize(x.shape[-1:])
            nn.init.ones_(self.scale)
        return x * self.scale


@pytest.mark.parametrize(
    "make,expected",
    [
        (
            lambda: nn.Sequential(nn.LazyLinear(4), nn.Linear(4, 2)),
            r"^flipout\(\): '0' \(LazyLinear\) is not initialized yet: .* run the model once on an example input",
        ),
        (
            lambda: nn.Sequential(nn.Linear(3, 4), nn.LazyBatchNorm1d()),
            r"^flipout\(\): '1' \(LazyBatchNorm1d\) is not initialized yet",
        ),
        (
            lambda: nn.Sequential(nn.Linear(3, 4), OwnLazy()),  # no LazyModuleMixin: torch's shape error came first
            r"^flipout\(\): '1' \(OwnLazy\)'s 'scale' is not initialized yet \(an UninitializedParameter .* run the model once",
        ),
        (
            lambda: nn.Sequential(torch.jit.script(nn.Linear(3, 4)), nn.Linear(4, 2)),
            r"^flipout\(\): '0' \(RecursiveScriptModule\) is a TorchScript module .* Python module it was made from "
            r".*frozen=\['0'\]\)$",
        ),
        (
            lambda: torch.jit.trace(nn.Linear(3, 2), torch.randn(1, 3)),
            r"^flipout\(\): the model \(TopLevelTracedModule\) is a TorchScript module .* Python module it was made "
            r"from \(torch.compile works on the converted model\)$",
        ),
    ],
    ids=["lazy-linear", "lazy-batchnorm", "own-lazy-parameter", "scripted-layer", "traced-model"],
)
def test_modules_flipout_cannot_see_into_are_refused_naming_the_fix(make: Callable[[], nn.Module], expected: str) -> None:
    """A lazy module not initialized yet (no parameter shapes; its first call turns it into its plain class) and a
    trainable TorchScript module (a compiled forward flipes cannot convert) are ValueErrors naming the module and the
    fix, not crashes inside flipout; once run, the lazy model converts, and frozen by name the scripted layer stays."""
    with pytest.raises(ValueError, match=expected):
        flipes.flipout(make())
    lazy = nn.Sequential(nn.LazyLinear(4), nn.Linear(4, 2))
    lazy(torch.randn(1, 3))
    assert isinstance(flipes.flipout(lazy)[0], flipes.nn.FlipoutLinear)
    scripted = flipes.flipout(nn.Sequential(torch.jit.script(nn.Linear(3, 4)), nn.Linear(4, 2)), frozen=["0"])
    assert [r.how for r in flipes.nn.parameter_report(scripted).rows] == ["frozen", "frozen", "flipout", "flipout"]


class LazyScale(nn.modules.lazy.LazyModuleMixin, nn.Module):
    """A lazy module of one's own without ``cls_to_become``: it stays a LazyScale once its first call shaped it."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.UninitializedParameter()

    def initialize_parameters(self, x: Tensor) -> None:
        with torch.no_grad():
            self.w.materialize(x.shape[-1:])
            self.w.normal_()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.w


def lazy_scale_run_once() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 3), LazyScale())
    model(torch.randn(2, 3))
    return model


def test_a_lazy_module_that_keeps_its_class_once_run_is_evolved_per_member() -> None:
    """A lazy module is refused only while it has uninitialized parameters: one that keeps its own class once run
    converts, and each member's output is the plain model's with that member's explicit parameters."""
    assert isinstance(lazy_scale_run_once()[1], nn.modules.lazy.LazyModuleMixin)
    check_members(lazy_scale_run_once, lambda: (randn(N, 3),), rows(0), out_rows(0), False, 1, None)


class OwnLSTM(nn.LSTM):
    """An LSTM subclass with a forward of its own: no Flipout form."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)[0] * 2


class FrozenGRUGain(nn.Module):
    """A frozen GRU inside a module with a gain of its own, which makes the module dense."""

    def __init__(self) -> None:
        super().__init__()
        self.gru, self.gain = nn.GRU(3, 4, batch_first=True).requires_grad_(False), nn.Parameter(torch.ones(4))

    def forward(self, x: Tensor) -> Tensor:
        return self.gru(x)[0] * self.gain


@pytest.mark.parametrize(
    "make,expected",
    [
        (
            lambda: nn.Sequential(OwnLSTM(3, 4, batch_first=True)),
            r"^flipout\(\): '0' \(OwnLSTM\) has no Flipout form .* torch's LSTM kernel has no vmap form\. Call a plain "
            r"nn\.LSTM from a module of your own .*frozen=\['0'\]\)$",
        ),
        (
            lambda: nn.Sequential(nn.Linear(3, 3), parametrized(nn.LSTMCell(3, 4), "weight_hh")),
            r"^flipout\(\): '1' \(ParametrizedLSTMCell\) has no Flipout form .* LSTMCell kernel has no vmap form",
        ),
        (
            lambda: nn.Sequential(FrozenGRUGain()),
            r"^flipout\(\): '0\.gru' \(GRU\) would run inside the per-member forward of '0', .* GRU kernel has no vmap "
            r"form\. Move the parameters of '0' itself into a submodule of their own .*frozen=\['0'\]\)$",
        ),
    ],
    ids=["lstm-own-forward", "parametrized-lstm-cell", "frozen-gru-in-a-dense-module"],
)
def test_a_recurrent_layer_that_would_run_per_member_through_vmap_is_refused_naming_the_fix(
    make: Callable[[], nn.Module], expected: str
) -> None:
    """torch's LSTM/GRU/RNN and LSTMCell kernels have no vmap form, so a recurrent layer that would run inside a dense
    module's per-member forward (itself without a Flipout form, or frozen inside a module with parameters of its own)
    is a ValueError from flipout naming it and the fix, not a vmap error at the first population."""
    with pytest.raises(ValueError, match=expected):
        flipes.flipout(make())


def test_a_norm_input_that_reads_as_one_example_or_as_several_is_an_error_naming_both_layouts() -> None:
    """GroupNorm(4) given (N, 4, 4, 4): one 4x4 image of 4 channels, or 4 examples of (4, 4), per member?"""
    model = flipes.flipout(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4)))
    es = flipes.FlipES(model, popsize=4)
    with es.population(), pytest.raises(ValueError, match=r"\(members, 1, 4, 4, 4\).*\(members·B, 4, 4\)"):
        model(torch.randn(4, 3, 6, 6))
    with es.population():
        one = model(torch.randn(4, 1, 3, 6, 6))  # the Conv2d passes the example dim through
    assert one.shape == (4, 1, 4, 4, 4)


def test_embedding_bag_offsets_in_a_population_are_an_error_naming_the_2d_layout() -> None:
    """EmbeddingBag with 1-D ids and offsets packs all members' bags into one sequence: inside a population that is a
    ValueError naming the 2-D layout (also where the lengths are multiples of N and would split), not bags cut by member;
    the same bags as 2-D ids run, and per_sample_weights with them."""
    bag = flipes.flipout(nn.EmbeddingBag(10, 3, mode="sum"))
    es = flipes.FlipES(bag, popsize=4)
    ids = torch.randint(10, (8,))
    with es.population():
        for offsets in (torch.arange(0, 8, 2), torch.zeros(8, dtype=torch.long)):
            with pytest.raises(ValueError, match=r"bags are rows of 2-D ids, \(members, L\) or \(members·k, L\)"):
                bag(ids, offsets)
        assert bag(ids.view(4, 2), per_sample_weights=torch.rand(4, 2)).shape == (4, 3)


class ScaledNorm(nn.Module):
    """A bare scale before a BatchNorm1d child: one dense module whose forward needs a batch dim."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(4))
        self.norm = nn.BatchNorm1d(4)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x * self.scale)


class Sequences(nn.Module):
    """A bare scale on inputs that must be 3-D, (batch, time, features)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(4))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError(f"expected (batch, time, features), got {tuple(x.shape)}")
        return x * self.scale


class Positions(nn.Module):
    """Learned positions for (batch, time, features) inputs, returned without a batch dim."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(10, 4))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError(f"expected (batch, time, features), got {tuple(x.shape)}")
        return self.table[: x.shape[1]]


@pytest.mark.parametrize("k", [1, 2])
def test_a_shared_table_as_long_as_the_rows_is_refused_naming_both_readings(k: int) -> None:
    """A (T, E) table beside (N·k, T, E) rows with T = N·k is shared along the rows (as a plain model broadcasts it) or
    one value per row: a ValueError naming both, not a silent split of the table's rows among the members."""
    model = flipes.flipout(AddTable())
    es = flipes.FlipES(model, popsize=N)
    with es.population(), pytest.raises(ValueError, match=rf"shape \({N * k}, 3\) beside rows .* or as one value per row"):
        model(torch.randn(N * k, N * k, 3), torch.randn(N * k, 3))


def test_a_dense_module_that_needs_a_batch_dim_runs_each_member_as_a_batch_of_one() -> None:
    """A dense module whose forward needs a batch dim (a BatchNorm1d child, a Hugging Face module reading
    ``input.shape[:2]``), given one example per member as (N, 4), fails on each member's (4,) and runs on its (1, 4):
    each member equals the plain module on ``x[n:n+1]`` with its explicit parameters (an output without a batch dim,
    learned positions, members first). One that fails both ways raises an error naming the shape it got and the
    (members, 1, ...) layout, with which it runs."""
    check_members(lambda: ScaledNorm().eval(), lambda: (randn(N, 4),), rows(1), out_rows(1), True, 2, None)
    # an output without a batch dim, (T, E) whatever the batch: each member's, members first (N, T, E)
    check_members(
        lambda: nn.Sequential(nn.Linear(4, 4), Positions()), lambda: (randn(N, 3, 4),), rows(1), out_rows(0), True, 2, None
    )
    model = flipes.flipout(Sequences())
    es = flipes.FlipES(model, popsize=4)
    hint = re.escape("without the member dim, (4,)") + r".*\(members, 1, \.\.\.\)"
    with es.population(), pytest.raises(ValueError, match=hint):
        model(torch.randn(4, 4))
    check_members(Sequences, lambda: (randn(N, 1, 4),), rows(1), out_rows(1), True, 2, None)


class CountedPositions(Positions):
    """Positions that count their forward's calls (vmap runs a forward once for all members)."""

    calls = 0

    def forward(self, x: Tensor) -> Tensor:
        CountedPositions.calls += 1  # on this class: flipout makes the module an instance of a subclass
        return super().forward(x)


def test_a_dense_module_found_to_need_a_batch_dim_runs_as_a_batch_of_one_at_once_on_later_calls() -> None:
    """After its first call fails on each member's row and runs on its batch of one, a dense module that needs a
    batch dim is run as a batch of one at once: one forward per later call instead of a failing one first, with
    outputs equal to the first call's."""
    model = flipes.flipout(CountedPositions())
    es = flipes.FlipES(model, popsize=4, seed=0)
    x = torch.randn(4, 3, 4)
    with es.population():
        first = model(x)
        assert CountedPositions.calls == 2  # the member's row, (3, 4), then its batch of one, (1, 3, 4)
        again = model(x)
    assert CountedPositions.calls == 3 and torch.equal(first, again) and first.shape == (4, 3, 4)


class MeanSquare(nn.Module):
    """A loss with a learned target: one value per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.target = nn.Parameter(torch.randn(4))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.target).square().mean()


def test_a_dense_module_reducing_each_members_batch_gives_one_value_per_member() -> None:
    """A dense module that reduces its batch to one value (a loss), given k = 3 examples per member, returns (N,):
    member n's value is the plain module's on its rows, with its explicit parameters."""
    check_members(MeanSquare, lambda: (randn(3 * N, 4),), rows(3), lambda out, n: out[n], False, 2, None)


class SetPool(nn.Module):
    """A gain, then the mean over the batch: one feature vector per set of examples (a permutation-invariant encoder)."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.randn(4))

    def forward(self, x: Tensor) -> Tensor:
        return (x * self.gain).mean(0)


@pytest.mark.parametrize("k", [2, 3])
def test_a_dense_module_pooling_each_members_batch_gives_one_vector_per_member(k: int) -> None:
    """A dense module that pools its batch of k examples into one (4,) vector returns (N, 4), members first (not the N
    vectors run together as (N·4,)): member n's row is the plain module's on its k rows, with its explicit parameters."""
    check_members(
        lambda: nn.Sequential(nn.Linear(3, 4), SetPool()),
        lambda: (randn(k * N, 3),),
        rows(k),
        lambda out, n: out[n],
        False,
        2,
        None,
    )


class RelativeBias(nn.Module):
    """A learned attention bias, (1, heads, L, L), computed from no input (Swin's and BEiT's)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(2, 3, 3))

    def forward(self) -> Tensor:
        return self.table.unsqueeze(0)


class BiasedAttention(nn.Module):
    """Two-head attention over (B, 3, 4) inputs with a relative bias added to its scores."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.bias = nn.Linear(4, 4), RelativeBias()

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj(x).view(x.shape[0], 3, 2, 2).transpose(1, 2)
        return F.scaled_dot_product_attention(h, h, h, attn_mask=self.bias()).transpose(1, 2).flatten(2)


def test_a_dense_module_of_no_input_that_the_model_cannot_use_per_member_is_named_with_the_freeze() -> None:
    """A dense module called with no tensor input returns every member's value, (N, ...): a model that adds it to
    its batch's attention scores fails on the shapes, and the error names the module and the frozen=[...] fix; with
    it frozen each member equals the plain model with its explicit parameters."""
    model = flipes.flipout(BiasedAttention())
    fix = re.escape("freeze it, flipes.flipout(model, frozen=['bias'])")
    with pytest.raises(RuntimeError, match=r"'bias' ran with no tensor input.*" + fix):
        with flipes.FlipES(model, popsize=4).population():
            model(torch.randn(4, 3, 4))
    make = lambda: frozen(BiasedAttention(), "bias")  # noqa: E731
    check_members(make, lambda: (randn(2 * N, 3, 4),), rows(2), out_rows(2), True, 2, None)


class PooledCNN(nn.Module):
    """A classifier as written for torch: conv, ReLU, max pooling over (B, C, H, W), a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.pool, self.head = nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.Linear(4 * 3 * 3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(F.relu(self.conv(x))).flatten(-3))


def test_torch_pooling_refusing_members_first_examples_after_a_conv_names_the_flattened_layout() -> None:
    """A CNN whose Flipout conv took members-first examples (N, B, C, H, W) and whose torch MaxPool2d then refused them
    (at most 4-D) raises torch's RuntimeError with a line naming the conv, the shape it got and the member-major layout
    x.flatten(0, 1), and for a policy of an env the flatten in its forward; that layout runs, (N·B, classes); a
    RuntimeError of the user's own in such a block is unchanged."""
    model = flipes.flipout(PooledCNN())
    es = flipes.FlipES(model, popsize=4)
    x = torch.randn(4, 5, 1, 6, 6)
    fix = re.escape("conv (FlipoutConv2d) got input of shape (4, 5, 1, 6, 6), members first") + r".*model\(x\.flatten\(0, 1\)\)"
    fix += r".*" + re.escape("; a policy of your own for an env does so in its forward, obs.flatten(0, -4), ")
    fix += re.escape("and returns its actions reshaped to obs.shape[:-3]")
    with pytest.raises(RuntimeError, match=r"(?s)^non-empty 3D or 4D .*\nflipes: inside the population, " + fix):
        with es.population():
            model(x)
    with es.population():
        assert model(x.flatten(0, 1)).shape == (20, 2)
    with pytest.raises(RuntimeError, match=r"^the simulator stopped$"):  # no layer's refusal: left as it is
        with es.population():
            model.conv(x)
            raise RuntimeError("the simulator stopped")


def test_dense_inputs_must_hold_the_members_first() -> None:
    """A dense per-member module (LayerNorm) given 3 rows in a population of 4 raises a ValueError saying inputs must
    be members first."""
    norm = flipes.flipout(nn.LayerNorm(4))
    es = flipes.FlipES(norm, popsize=4)
    with es.population(), pytest.raises(ValueError, match=r"inputs must be members first"):
        norm(torch.randn(3, 4))


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_inputs_that_are_not_3d_name_the_layout_and_the_reshape_that_fixes_them(batch_first: bool) -> None:
    """Inside a population, FlipoutMultiheadAttention refuses a 2-D or 4-D query with the layout it needs for the
    batch_first setting, and the reshape the message suggests gives an input that runs."""
    attn = flipes.flipout(nn.MultiheadAttention(8, 2, batch_first=batch_first))
    es = flipes.FlipES(attn, popsize=4)
    tokens = torch.randn(4, 8)  # one token per member
    layout = r"\(N·k, L, E\)" if batch_first else r"\(L, N·k, E\)"
    with es.population():
        fix = rf"x\.unsqueeze\({int(batch_first)}\)"
        with pytest.raises(ValueError, match=rf"got 2-D of shape \(4, 8\); reshape them to {layout}.*{fix}"):
            attn(tokens, tokens, tokens)
        x = tokens.unsqueeze(int(batch_first))
        out, _ = attn(x, x, x)
        assert out.shape == x.shape
        if batch_first:
            seqs = torch.randn(4, 2, 3, 8)  # (N, k, L, E)
            with pytest.raises(ValueError, match=r"got 4-D of shape \(4, 2, 3, 8\).*x\.flatten\(0, 1\)"):
                attn(seqs, seqs, seqs)
            flat = seqs.flatten(0, 1)
            assert attn(flat, flat, flat)[0].shape == (8, 3, 8)


def test_attention_is_causal_without_a_mask_is_refused_in_a_population_as_torch_refuses_it() -> None:
    """``is_causal=True`` is a hint about ``attn_mask``, not a mask: without one, nn.MultiheadAttention raises a
    RuntimeError asking for it, and so does its Flipout form inside a population (it would otherwise attend to every
    key, future ones included)."""
    attn = flipes.flipout(nn.MultiheadAttention(8, 2, batch_first=True))
    es = flipes.FlipES(attn, popsize=4)
    x = torch.randn(4, 3, 8)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        attn(x, x, x, need_weights=False, is_causal=True)
    with es.population(), pytest.raises(RuntimeError, match="Need attn_mask"):
        attn(x, x, x, need_weights=False, is_causal=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.TransformerEncoderLayer(16, 2, 32),
        lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32), 2, enable_nested_tensor=False),
        lambda: nn.TransformerDecoderLayer(16, 2, 32),
    ],
    ids=["encoder-layer", "encoder", "decoder-layer"],
)
def test_sequence_first_transformer_blocks_are_refused_naming_batch_first(make: Callable[[], nn.Module]) -> None:
    """torch's transformer blocks built sequence-first would feed (T, N, E) to their Linear layers and norms,
    which a population reads as T members (silently wrong where T == N): FlipES refuses them, naming the block
    and batch_first=True; the batch-first block is accepted."""
    with pytest.raises(ValueError, match=r"sequence-first \(batch_first=False\).*build it with batch_first=True"):
        flipes.FlipES(flipes.flipout(make()), popsize=8)
    flipes.FlipES(flipes.flipout(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)), popsize=8)


def converted_mlp() -> nn.Module:
    return flipes.flipout(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)))


def test_a_converted_model_converted_again_keeps_its_layers_and_can_freeze_by_name() -> None:
    """flipout of a converted model (a second call, to freeze a part) is the same model: the same layer objects of the
    same classes (no Flipout or per-member class wrapped twice) holding the same parameters, and ``frozen=`` freezes
    a Flipout layer by name; converted again, each member still equals the plain module with its explicit parameters."""
    model = converted_mlp()
    layers, classes, params = list(model), [type(m) for m in model], list(model.parameters())
    assert flipes.flipout(model, frozen=["2"]) is model
    assert all(a is b for a, b in zip(model, layers, strict=True)) and [type(m) for m in model] == classes
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    hows = [r.how for r in flipes.nn.parameter_report(model).rows]
    assert hows == ["flipout", "flipout", "dense", "dense", "frozen", "frozen"]
    check_members(converted_mlp, lambda: (randn(2 * N, 3),), rows(2), out_rows(2), True, 2, None)


def test_a_linear_subclass_with_its_own_forward_is_evolved_densely_not_silently_frozen() -> None:
    """An nn.Linear subclass that overrides forward is not turned into a FlipoutLinear (which would skip its forward)
    but evolved densely per member: all its parameters reported dense, and each member equal to the subclass with its
    explicit parameters, to 1e-10."""

    class Odd(nn.Linear):
        def forward(self, x: Tensor) -> Tensor:
            return super().forward(x) * 2

    model = flipes.flipout(nn.Sequential(Odd(3, 2)))
    assert isinstance(model[0], PerMember)
    assert all(r.how == "dense" for r in flipes.nn.parameter_report(model).rows)
    check_members(lambda: nn.Sequential(Odd(3, 2)), lambda: (randn(N, 3),), rows(0), out_rows(0), True, 1, None)


class StandardizedConv(nn.Conv2d):
    """A Conv2d subclass that keeps nn.Conv2d's forward but standardizes its kernel in ``_conv_forward``."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        mean, std = weight.mean((1, 2, 3), keepdim=True), weight.std((1, 2, 3), keepdim=True)
        return super()._conv_forward(input, (weight - mean) / std, bias)


def test_a_conv_subclass_with_its_own_conv_forward_is_evolved_densely_through_it() -> None:
    """A conv subclass that overrides ``_conv_forward`` (weight standardization) computes something a Flipout conv
    would not: it is evolved densely, and each member equals the subclass with its explicit parameters, to 1e-10."""
    model = flipes.flipout(nn.Sequential(StandardizedConv(3, 4, 3)))
    assert isinstance(model[0], PerMember)
    assert all(r.how == "dense" for r in flipes.nn.parameter_report(model).rows)
    for mirrored, groups, rank in SETTINGS[:2]:
        make, x = lambda: StandardizedConv(3, 4, 3), lambda: (randn(N, 3, 5, 5),)
        check_members(make, x, rows(1), out_rows(1), mirrored, groups, rank)


def test_attention_converts_as_one_layer_with_its_output_projection() -> None:
    """A TransformerEncoderLayer's self-attention becomes one FlipoutMultiheadAttention whose output projection stays
    the plain NonDynamicallyQuantizableLinear (its slot is the attention's), and every parameter of the layer is
    evolved."""
    model = flipes.flipout(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True))
    assert isinstance(model.self_attn, FlipoutMultiheadAttention)
    assert type(model.self_attn.out_proj).__name__ == "NonDynamicallyQuantizableLinear"  # its slot is the attention's
    assert flipes.nn.parameter_report(model).evolved == sum(p.numel() for p in model.parameters())


def test_a_groups_noise_does_not_depend_on_which_groups_are_sampled_with_it() -> None:
    """What makes results independent of the process count: each process samples its own groups."""
    model = flipes.flipout(EveryKind())
    es = flipes.FlipES(model, popsize=16, groups=4, noise_rank=2)
    slots, dense = es._sample(range(4))
    part_slots, part_dense = es._sample(range(2, 4))
    for full, part in zip(slots, part_slots, strict=True):
        assert torch.equal(full.s[8:], part.s) and torch.equal(full.r[8:], part.r)
        assert torch.equal(full.factors[0][2:], part.factors[0]) and torch.equal(full.factors[1][2:], part.factors[1])
    for full, part in zip(dense, part_dense, strict=True):
        assert torch.equal(full.delta[8:], part.delta)


class ProcessOf(flipes.dist.SerialComm):
    """Process ``rank`` of ``size`` for the group split alone (a population calls no collective)."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size


@pytest.mark.parametrize(
    "dtype,frozen_weight", [(torch.float32, False), (torch.bfloat16, False), (torch.float32, True), (torch.float64, True)]
)
def test_one_example_per_member_gives_the_same_bits_on_any_process_count(dtype: torch.dtype, frozen_weight: bool) -> None:
    """With G groups fixed, a member's output does not depend on how many groups its process holds: a
    process of one group gives bit for bit the rows of one process holding both, for (N, 1, in) inputs
    contiguous, column-major or expanded (a layer's bf16 bias, or a frozen weight, changes how torch
    multiplies a non-contiguous batch, so a 2-D shortcut for one group would round otherwise)."""
    torch.manual_seed(0)
    n, groups = 64, 2
    whole = flipes.flipout(nn.Linear(5, 16).to(dtype))
    whole.weight.requires_grad_(not frozen_weight)  # the bias still evolves: the weight keeps its (zero) noise slot
    inputs = {
        "contiguous": torch.randn(n, 1, 5, dtype=dtype),
        "column-major": torch.randn(5, n, dtype=dtype).T.unsqueeze(1),
        "expanded": torch.randn(n, 1, 1, dtype=dtype).expand(n, 1, 5),
    }
    es = flipes.FlipES(whole, popsize=n, groups=groups, mirrored=True, seed=3)
    with es.population():
        expected = {name: whole(x) for name, x in inputs.items()}
    for rank in range(groups):
        part = copy.deepcopy(whole)
        es_part = flipes.FlipES(part, popsize=n, groups=groups, mirrored=True, seed=3, comm=ProcessOf(rank, groups))
        rows = slice(es_part.members.start, es_part.members.stop)
        with es_part.population():
            for name, x in inputs.items():
                assert torch.equal(part(x[rows]), expected[name][rows]), (name, rank)


def assert_rows_of_any_process(
    whole: nn.Module, inputs: list[Tensor], n: int, groups: int, processes: int, **options: Any
) -> None:
    """Each of ``processes`` processes (``ProcessOf``), holding its share of the ``groups``, gives bit for bit the rows
    of one process holding every group, for each input (``(n·k, ...)`` member-major; a process given its own rows as a
    fresh tensor, as its env gives them), without and with autograd."""
    es = flipes.FlipES(whole, popsize=n, groups=groups, seed=3, mirrored=False, **options)
    with es.population():
        expected = [whole(x) for x in inputs]
        with torch.enable_grad():
            expected_grad = [whole(x).detach() for x in inputs]
    for process in range(processes):
        part = copy.deepcopy(whole)
        comm = ProcessOf(process, processes)
        es_part = flipes.FlipES(part, popsize=n, groups=groups, seed=3, mirrored=False, comm=comm, **options)
        members = es_part.members
        with es_part.population():
            for x, want, want_grad in zip(inputs, expected, expected_grad, strict=True):
                k = len(x) // n
                rows = slice(members.start * k, members.stop * k)
                mine = x[rows].clone()
                assert torch.equal(part(mine), want[rows]), (process, k)
                with torch.enable_grad():
                    assert torch.equal(part(mine).detach(), want_grad[rows]), (process, k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rank", [None, 2])
@pytest.mark.parametrize("n,groups,processes", [(6, 2, 2), (6, 3, 3), (12, 4, 2)])
def test_groups_of_rows_off_a_16_byte_boundary_give_the_same_bits_on_any_process_count(
    dtype: torch.dtype, rank: int | None, n: int, groups: int, processes: int
) -> None:
    """A group's rows of a 5-feature input start off a 16-byte boundary in one process holding every group (3 rows of 5
    float32 features are 60 bytes), where a CPU BLAS (MKL) rounds a product differently than from the start of a
    process's own input: each process still gives bit for bit the rows of one process, with one example per member and
    with 2, full-rank and low-rank noise, with and without autograd."""
    torch.manual_seed(0)
    whole = flipes.flipout(nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).to(dtype))
    inputs = [torch.randn(n, 5, dtype=dtype), torch.randn(n * 2, 5, dtype=dtype)]
    assert_rows_of_any_process(whole, inputs, n, groups, processes, noise_rank=rank)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("out,rank", [(1, None), (2, 1), (6, None)])
@pytest.mark.parametrize("groups,processes", [(2, 2), (4, 2)])
def test_a_groups_noise_off_a_16_byte_boundary_gives_the_same_bits_on_any_process_count(
    dtype: torch.dtype, out: int, rank: int | None, groups: int, processes: int
) -> None:
    """A group's ε starts a group's worth of elements into the stack of the groups a process holds (ε of an 11-input,
    1-output layer: 44 float32 bytes; rank-1 factors alike), and a CPU BLAS (MKL) rounds a product of one output
    column by that operand's address: each process still gives bit for bit the rows of one process holding every
    group, with one and with 2 examples per member, with and without autograd."""
    torch.manual_seed(0)
    n = groups * 3
    whole = flipes.flipout(nn.Linear(11, out).to(dtype))
    inputs = [torch.randn(n, 11, dtype=dtype), torch.randn(n * 2, 11, dtype=dtype)]
    assert_rows_of_any_process(whole, inputs, n, groups, processes, noise_rank=rank)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("groups,processes", [(3, 3), (8, 4)])
def test_low_rank_noise_on_several_examples_per_member_gives_the_same_bits_on_any_process_count(
    dtype: torch.dtype, groups: int, processes: int
) -> None:
    """Low-rank noise on (members, B, in) inputs multiplies each member's factors in a batched product, which a CPU
    BLAS (MKL) rounds by where a member's block lies: each process still gives bit for bit the rows of one process
    holding every group (rank 4, a 17-input layer on sequences of 3 and 3 sequences per member), with and without
    autograd."""
    torch.manual_seed(0)
    n = 15 if groups == 3 else 8
    whole = flipes.flipout(nn.Linear(17, 36).to(dtype))
    assert_rows_of_any_process(whole, [torch.randn(n * 3, 3, 17, dtype=dtype)], n, groups, processes, noise_rank=4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("make", [lambda: nn.GRUCell(3, 5), lambda: nn.GRU(3, 5, batch_first=True)], ids=["cell", "sequence"])
def test_a_gru_gives_the_same_bits_on_any_process_count(make: Callable[[], nn.Module], dtype: torch.dtype) -> None:
    """A GRU's gates (a sigmoid, which torch's CPU kernel rounds otherwise in the last few elements of a contiguous
    tensor) give each member the same bits whatever the number of members beside it: 2 processes of 4 groups of
    3 members give bit for bit the rows of one process holding every group, cell and sequence module alike."""
    torch.manual_seed(0)
    n, groups, processes = 12, 4, 2
    whole = flipes.flipout(make().to(dtype))
    cell = isinstance(whole, nn.GRUCell)
    x = torch.randn(n, 3, dtype=dtype) if cell else torch.randn(n, 4, 3, dtype=dtype)
    es = flipes.FlipES(whole, popsize=n, groups=groups, seed=3, mirrored=False)
    with es.population():
        expected = whole(x) if cell else whole(x)[0]
    for process in range(processes):
        part = copy.deepcopy(whole)
        es_part = flipes.FlipES(part, popsize=n, groups=groups, seed=3, mirrored=False, comm=ProcessOf(process, processes))
        rows = slice(es_part.members.start, es_part.members.stop)
        with es_part.population():
            got = part(x[rows].clone()) if cell else part(x[rows].clone())[0]
        assert torch.equal(got, expected[rows]), process


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("need_weights", [False, True])
def test_attention_between_sequences_gives_the_same_bits_on_any_process_count(dtype: torch.dtype, need_weights: bool) -> None:
    """The attention itself (softmax(q kᵀ) v, no parameters) is batched over the members, and torch's CPU kernel
    rounds a batch entry by where its block lies (heads of 5 dimensions attending to 4 keys): run group by group from
    a 64-byte boundary, 2 processes of 2 groups of 3 give bit for bit the rows (and weights) of one process."""
    torch.manual_seed(0)
    n, groups = 6, 2
    whole = flipes.flipout(nn.MultiheadAttention(5, 1, batch_first=True).to(dtype))
    query, memory = torch.randn(n, 3, 5, dtype=dtype), torch.randn(n, 4, 5, dtype=dtype)
    es = flipes.FlipES(whole, popsize=n, groups=groups, seed=3, mirrored=False)
    with es.population():
        expected, expected_weights = whole(query, memory, memory, need_weights=need_weights)
    for process in range(groups):
        part = copy.deepcopy(whole)
        es_part = flipes.FlipES(part, popsize=n, groups=groups, seed=3, mirrored=False, comm=ProcessOf(process, groups))
        rows = slice(es_part.members.start, es_part.members.stop)
        with es_part.population():
            got, weights = part(query[rows].clone(), memory[rows].clone(), memory[rows].clone(), need_weights=need_weights)
        assert torch.equal(got, expected[rows]), process
        assert (weights is None) if not need_weights else torch.equal(weights, expected_weights[rows]), process


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("groups,mirrored", [(1, False), (4, False), (4, True)])
def test_without_autograd_a_population_gives_the_bits_of_its_autograd_forward(mode: str, groups: int, mirrored: bool) -> None:
    """A population runs without autograd (also under ``inference_mode``), where the layers reuse buffers for
    the whole generation (and views of each group's rows of them): an MLP with and without biases, a GRU
    cell stepped 3 times and a grouped transposed conv (its kernels made once per generation) give bit for bit the
    outputs of the same population forward made for autograd, and an output already returned stays as it was after
    the layers' later calls."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 32, bias=False), nn.Tanh(), nn.Linear(32, 3))
    deconv = nn.ConvTranspose2d(2, 4, 3, stride=2, groups=2)
    model = flipes.flipout(nn.ModuleDict({"mlp": mlp, "cell": nn.GRUCell(6, 16), "deconv": deconv}))
    es = flipes.FlipES(model, popsize=N * 2, sigma=0.3, seed=1, groups=groups, mirrored=mirrored)
    xs = [torch.randn(N * 2, 6) for _ in range(3)]
    images = torch.randn(N * 2, 2, 3, 3)

    def run() -> list[Tensor]:
        outs, h = [], None
        for x in xs:
            h = model["cell"](x, h)
            outs += [model["mlp"](x), h, model["deconv"](images)]
        return outs

    with es.population():
        with torch.enable_grad():  # population() itself runs its block without autograd
            expected = run()
        with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
            got = run()
            kept = [t.clone() for t in got]
            run()  # the buffers are written again
    for i, (g, e, k) in enumerate(zip(got, expected, kept, strict=True)):
        assert torch.equal(g, e), i
        assert torch.equal(g, k), i


@pytest.mark.parametrize("shape", ["(N, in)", "(N, 1, in)", "(N, 2, in)"])
@pytest.mark.parametrize("rank", [None, 2])
def test_a_wide_layers_members_give_the_same_bits_on_any_process_count(shape: str, rank: int | None) -> None:
    """With 8 groups fixed, every member's output of a 376-input layer (Humanoid's observation) is bit for bit the
    same on 1, 2 or 8 processes, for one or two examples per member, full and low rank. A CPU BLAS may round a
    row of the mean product differently beside other rows (MKL does at this width), so the layer multiplies
    group by group; one product over all of a process's rows made 8 processes differ from 1."""
    torch.manual_seed(0)
    n, groups = 64, 8
    whole = flipes.flipout(nn.Linear(376, 256))
    x = {"(N, in)": torch.randn(n, 376), "(N, 1, in)": torch.randn(n, 1, 376), "(N, 2, in)": torch.randn(n, 2, 376)}[shape]
    es = flipes.FlipES(whole, popsize=n, groups=groups, seed=3, noise_rank=rank)
    with es.population():
        expected = whole(x)
        with torch.enable_grad():  # the forward made for autograd (no buffers kept)
            assert torch.equal(whole(x), expected)
    for size in (2, 8):
        for rank_of in range(size):
            part = copy.deepcopy(whole)
            es_part = flipes.FlipES(part, popsize=n, groups=groups, seed=3, noise_rank=rank, comm=ProcessOf(rank_of, size))
            rows = slice(es_part.members.start, es_part.members.stop)
            with es_part.population():
                assert torch.equal(part(x[rows]), expected[rows]), (size, rank_of)
                with torch.enable_grad():
                    assert torch.equal(part(x[rows]), expected[rows]), (size, rank_of)


def encoder_layer() -> nn.Module:
    return nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=True)


@pytest.mark.parametrize(
    "make,inputs",
    [(encoder_layer, lambda: (randn(3, 5, 16),)), (EveryKind, lambda: (torch.randint(11, (3, 6)),))],
    ids=["encoder-layer", "every-kind"],
)
def test_every_parameter_is_evolved_and_the_es_gradient_points_along_backprop(make: Callable, inputs: Callable) -> None:
    """Antithetic pairs with raw fitness estimate the gradient of the smoothed fitness, which for small σ
    is the backprop gradient; their cosine is about sqrt((N/2) / (N/2 + P)) for P parameters (0.56 for the
    encoder layer's 2,224 at N = 2,048), against ~0 (sd 1/sqrt(P)) for a wrong sign or layout. Fixed seeds."""
    torch.manual_seed(0)
    model = make().to(DT)
    args = inputs()
    target = torch.randn_like(model(*args))
    loss = ((model(*args) - target) ** 2).mean()
    loss.backward()
    backprop = torch.cat([-p.grad.flatten() for p in model.parameters()])  # gradient of the fitness -loss
    flipes.flipout(model)
    n = 2048
    es = flipes.FlipES(
        model, popsize=n, sigma=1e-5, groups=8, shaping=flipes.shaping.raw, optimizer=lambda p: torch.optim.SGD(p, lr=0.0)
    )
    assert es.report().evolved == sum(p.numel() for p in model.parameters()) == len(backprop)
    with es.population() as pop:
        x = tuple(a.repeat(pop.size, *(1,) * (a.dim() - 1)) for a in args)  # every member sees the same batch
        out = model(*x).view(pop.size, *target.shape)
        fitness = -((out - target) ** 2).flatten(1).mean(1)
    es.tell(fitness)
    es_grad = torch.cat([-p.grad.flatten() for p in model.parameters()])
    cos = F.cosine_similarity(es_grad, backprop, dim=0).item()
    expected = (n / 2 / (n / 2 + len(backprop))) ** 0.5
    assert cos > 0.6 * expected, (cos, expected)


def test_converted_models_pickle_and_copy_with_their_runtime_classes() -> None:
    """torch.save of a whole model and deepcopy work for the classes flipout makes at runtime (a Flipout
    subclass of attention's output Linear, PerMember norms)."""
    import io
    import pickle

    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(PlainLinear(4, 4), nn.LayerNorm(4)))
    x = torch.randn(3, 4)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(clone[0]) is type(model[0]) and type(clone[1]) is type(model[1])
        assert torch.equal(clone(x), model(x))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    es = flipes.FlipES(loaded, popsize=4)
    with es.population() as pop:
        assert loaded(torch.randn(pop.size, 4)).shape == (4, 4)
    es.tell(torch.randn(4))
    # once evolved, too: the model saves whole, and a copy has no FlipES of its own until given one
    for clone in (copy.deepcopy(loaded), pickle.loads(pickle.dumps(loaded))):
        assert torch.equal(clone(x), loaded(x))
        es2 = flipes.FlipES(clone, popsize=4)
        with es2.population() as pop:
            assert clone(torch.randn(pop.size, 4)).shape == (4, 4)
    with es.population() as pop:  # the original's FlipES still owns the original
        assert loaded(torch.randn(pop.size, 4)).shape == (4, 4)


def test_a_model_pickled_when_convert_made_its_runtime_classes_loads() -> None:
    """A converted model pickled before flipout's classes moved to flipes.nn.flipout_classes names its runtime
    subclass's maker as flipes.nn.convert._new_flipout_subclass: it loads to the same class and the same outputs."""
    import pickle

    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(PlainLinear(4, 4), nn.LayerNorm(4)))
    now = pickle.dumps(model, protocol=0)  # protocol 0 names globals as text lines, so the old name is a replace
    assert now.count(b"cflipes.nn.flipout_classes\n_new_flipout_subclass\n") == 1
    before = now.replace(b"cflipes.nn.flipout_classes\n", b"cflipes.nn.convert\n")
    loaded, x = pickle.loads(before), torch.randn(3, 4)
    assert type(loaded[0]) is type(model[0]) and torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("ran", [False, True], ids=["before-the-forward", "after-the-forward"])
def test_a_copy_made_inside_a_population_is_the_mean_network(ran: bool) -> None:
    """deepcopy and pickle of a model of every kind taken inside ``es.population()`` (before or after its
    forward) give the mean network: outputs equal the original's outside the block, any batch size, no
    population hook left, and a FlipES of its own evaluates it."""
    import pickle

    torch.manual_seed(0)
    model = flipes.flipout(EveryKind())
    tokens = torch.randint(11, (N, 6))
    es = flipes.FlipES(model, popsize=N, groups=2)
    with es.population():
        if ran:
            model(tokens)
        clones = [copy.deepcopy(model), pickle.loads(pickle.dumps(model))]
    for clone in clones:
        assert torch.equal(clone(tokens), model(tokens)) and clone(tokens[:3]).shape == (3, 3)
        assert not any(m._forward_pre_hooks for m in clone.modules())
        with flipes.FlipES(clone, popsize=N, groups=2).population():
            assert clone(tokens).shape == (N, 3)


def test_a_parametrized_layer_is_evolved_per_member_through_its_parametrization() -> None:
    """weight_norm's Linear computes its weight from two parameters: those get dense per-member noise, and
    each member equals the plain layer with its explicit parameters."""
    with pytest.warns(UserWarning, match="performance drop"):  # torch has no vmap rule for _weight_norm yet
        check_members(
            lambda: nn.utils.parametrizations.weight_norm(nn.Linear(4, 3)),
            lambda: (randn(N, 2, 4),),
            rows(0),
            out_rows(0),
            mirrored=True,
            groups=2,
            rank=None,
        )


PARAMETRIZED = [  # (name, make, inputs, k: rows per member)
    ("embedding", lambda: parametrized(nn.Embedding(7, 3), "weight"), lambda: (torch.randint(7, (N, 4)),), 0),
    ("linear-frozen-bias", lambda: frozen(parametrized(nn.Linear(4, 3), "weight"), "bias"), lambda: (randn(N, 2, 4),), 0),
    ("conv-frozen-weight", lambda: frozen(parametrized(nn.Conv1d(2, 3, 3), "bias"), "weight"), lambda: (randn(2 * N, 2, 5),), 2),
]


@pytest.mark.parametrize("mirrored,groups,rank", SETTINGS)
@pytest.mark.parametrize("case", PARAMETRIZED, ids=[c[0] for c in PARAMETRIZED])
def test_a_layer_whose_trainable_parameters_are_all_parametrized_runs_each_member_through_them(
    case: tuple, mirrored: bool, groups: int, rank: int | None
) -> None:
    """A parametrized Embedding, a Linear with a parametrized weight and a frozen bias, a Conv1d with a frozen weight and
    a parametrized bias: the layer holds no trainable tensor of its own but reads the parametrization's in its forward,
    so the layer runs per member (not the parametrization, whose every member's value would reach one F.embedding or
    F.linear): each member equals the plain layer with its explicit parameters."""
    _, make, inputs, k = case
    check_members(make, inputs, rows(k), out_rows(k), mirrored, groups, rank)


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated")
@pytest.mark.parametrize("hook", ["weight_norm", "spectral_norm"])
@pytest.mark.parametrize("layer", ["flipout", "dense"])
def test_hook_based_weight_norm_is_refused_naming_the_module_and_parametrizations(hook: str, layer: str) -> None:
    """torch.nn.utils.weight_norm / spectral_norm (the old hook-based ones) compute the weight from the mean parameters
    before the forward, so every member of a dense module ran the mean weight (identical outputs, with a bias-free
    Bilinear) while tell wrote an ES gradient for weight_g / weight_v: flipout refuses such a trainable module, on a
    Linear or a Bilinear, naming its path and both fixes; frozen by that name, it converts and runs as plain torch."""
    apply = getattr(nn.utils, hook)
    inner = apply(nn.Linear(3, 2)) if layer == "flipout" else apply(nn.Bilinear(3, 3, 2, bias=False))
    message = (
        f"flipout(): 'body.0' ({type(inner).__name__}) has torch.nn.utils.{hook} applied: its hook computes 'weight' from "
        f"the mean parameters before each call, so no member would run its own; apply "
        f"torch.nn.utils.parametrizations.{hook} instead (flipes perturbs its parameters per member), or freeze it: "
        "flipes.flipout(model, frozen=['body.0'])"
    )
    model = nn.ModuleDict({"body": nn.Sequential(inner), "head": nn.Linear(2, 2)})
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        flipes.flipout(model)
    with pytest.raises(ValueError, match=re.escape("flipout(): the model (")):
        flipes.flipout(inner)
    model = flipes.flipout(model, frozen=["body.0"])
    assert type(model["body"][0]) is type(inner) and isinstance(model["head"], flipes.nn.FlipoutLinear)


@pytest.mark.parametrize("layer", ["flipout", "dense"])
def test_a_pruned_module_is_refused_naming_prune_remove(layer: str) -> None:
    """torch.nn.utils.prune computes the weight from the mean ``weight_orig`` and its mask in a forward pre-hook, which
    no member's perturbation reaches: flipout refuses such a trainable module (a Linear, or a LayerNorm that would be
    dense), naming its path, ``prune.remove`` and the freeze; after ``prune.remove`` it converts."""
    inner = nn.Linear(3, 2) if layer == "flipout" else nn.LayerNorm(2)
    prune.l1_unstructured(inner, "weight", 0.5)
    model = nn.ModuleDict({"body": nn.Sequential(inner), "head": nn.Linear(2, 2)})
    message = (
        f"flipout(): 'body.0' ({type(inner).__name__}) has torch.nn.utils.prune applied: its hook computes 'weight' from "
        "the mean 'weight_orig' and the mask before each call, so no member would run its own; make the pruning permanent "
        "first, torch.nn.utils.prune.remove(module, 'weight') (the pruned entries are then evolved too), or freeze it: "
        "flipes.flipout(model, frozen=['body.0'])"
    )
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        flipes.flipout(model)
    prune.remove(inner, "weight")
    report = flipes.nn.parameter_report(flipes.flipout(model))
    assert {r.how for r in report.rows} == {"flipout" if layer == "flipout" else "dense", "flipout"}


class MovingAverage(nn.Module):
    """A gain and a moving average of its inputs, updated in place in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.randn(4))
        self.register_buffer("average", torch.zeros(4))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.average.mul_(0.9).add_(0.1 * x.mean(0))
        return x * self.gain - self.average


def test_a_dense_buffer_update_in_training_mode_names_eval_and_runs_per_member_in_eval_mode() -> None:
    """A dense module updating a buffer in place (a moving average) cannot take every member's update: in training
    mode the error names that and model.eval(); in eval mode each member equals the module with its parameters."""
    model = flipes.flipout(MovingAverage())
    with flipes.FlipES(model, popsize=4).population(), pytest.raises(RuntimeError, match=r"writes in place .*model\.eval\(\)"):
        model(torch.randn(8, 4))
    check_members(lambda: MovingAverage().eval(), lambda: (randn(2 * N, 4),), rows(2), out_rows(2), True, 2, None)


def test_spectral_norm_in_training_mode_names_eval_and_runs_per_member_in_eval_mode() -> None:
    """A module with torch.nn.utils.parametrizations.spectral_norm in training mode runs its power iteration, an
    in-place update vmap cannot batch: the error says to call model.eval(); in eval mode each member's output is
    the plain module's with that member's parameters."""
    torch.manual_seed(0)
    inner = nn.utils.parametrizations.spectral_norm(nn.Bilinear(3, 3, 2).double())
    model = flipes.flipout(nn.ModuleDict({"b": inner}))
    es = flipes.FlipES(model, popsize=4, sigma=0.1, seed=0)
    x = torch.randn(4, 3, dtype=torch.float64)
    with es.population(), pytest.raises(RuntimeError, match=r"spectral_norm updates its power-iteration vectors in "
                                                            r"training mode: call model\.eval\(\)"):  # fmt: skip
        model["b"](x, x)
    model.eval()
    with es.population() as pop:
        out = model["b"](x, x)
    for n in range(pop.size):
        plain = copy.deepcopy(inner).eval()
        plain.load_state_dict({k.removeprefix("b."): v for k, v in es.member_state_dict(n).items()})
        torch.testing.assert_close(out[n], plain(x[n : n + 1], x[n : n + 1])[0], rtol=0, atol=1e-12)


def test_norm_misuses_are_errors_that_say_what_to_do() -> None:
    """A lazy norm not yet initialized cannot be converted; a BatchNorm training on one example per
    member has no batch statistics (torch's own message would not say why)."""
    with pytest.raises(ValueError, match=r"not initialized yet: .* run the model once"):
        flipes.flipout(nn.Sequential(nn.Linear(3, 8), nn.LazyBatchNorm1d(affine=False)))
    model = flipes.flipout(nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8)))
    es = flipes.FlipES(model, popsize=4)
    with es.population(), pytest.raises(ValueError, match=r"one example per member has none; call model.eval\(\)"):
        model(torch.randn(4, 3))
    with es.population():
        assert model.eval()(torch.randn(4, 3)).shape == (4, 8)


def test_the_report_lists_a_bias_with_dense_noise_as_dense() -> None:
    """A bias shared by two Linears (and a bare-parameter module) gets dense noise: es.report() says so."""
    es = flipes.FlipES(flipes.flipout(SharedBias()), popsize=4)
    rows = {r.name: r.how for r in es.report().rows}
    assert rows == {"a.weight": "flipout", "a.bias": "dense", "b.weight": "flipout"}


def test_a_flipout_weight_also_read_by_a_dense_module_is_reported_flipout_and_runs_in_parts() -> None:
    """A Flipout weight that a dense module also reads (a scaled embedding tied to its head) is one Flipout slot,
    reported as such; evaluated in parts of 2 members, each member's logits are those of the whole population."""
    torch.manual_seed(0)
    model = flipes.flipout(ScaledTiedLM().to(DT))
    assert isinstance(model.emb, PerMember) and isinstance(model.head, flipes.nn.FlipoutLinear)
    assert [(r.name, r.how) for r in flipes.nn.parameter_report(model).rows] == [("emb.weight", "flipout")]
    es = flipes.FlipES(model, popsize=N, sigma=0.3, seed=1, groups=2, hold_noise=False)
    tokens = torch.randint(11, (N, 5))
    with es.population() as pop:
        whole = model(tokens)
        parts = torch.cat([model(tokens[part.members.start : part.members.stop]) for part in pop.split(2)])
    assert torch.equal(parts, whole)


def test_a_flipout_weight_read_by_a_dense_module_is_materialized_only_for_the_members_evaluated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each member's copy of a Flipout weight that a dense module reads (N × numel values, what parts exist to
    bound) is made once per population or part actually run, for that part's members: never for the whole
    population around its parts, where nothing reads it."""
    built: list[int] = []
    make = flipes.es.gradient.member_perturbations

    def counted(noise, conv_groups):  # type: ignore[no-untyped-def]
        built.append(noise.size)
        return make(noise, conv_groups)

    monkeypatch.setattr(flipes.es.gradient, "member_perturbations", counted)
    torch.manual_seed(0)
    model = flipes.flipout(ScaledTiedLM().to(DT))
    es = flipes.FlipES(model, popsize=N, sigma=0.3, seed=1, groups=2, hold_noise=False)
    tokens = torch.randint(11, (N, 5))
    with es.population() as pop:
        for part in pop.split(2):
            model(tokens[part.members.start : part.members.stop])
            model(tokens[part.members.start : part.members.stop])  # read twice: made once
    assert built == [2] * (N // 2)  # parts of 2 members
    es.tell(torch.randn(N, dtype=DT))
    with es.population():
        model(tokens)
    assert built == [2] * (N // 2) + [N]


@pytest.mark.parametrize("kind", ["flipout", "dense", "dense-tied-to-a-flipout-head"])
@pytest.mark.parametrize("rank", [None, 2])
def test_an_embeddings_padding_row_is_never_perturbed_nor_updated(rank: int | None, kind: str) -> None:
    """As torch never updates an embedding's padding row, every member looks it up at its mean value and
    ``tell`` leaves it unchanged (the other rows move): a Flipout embedding, one with a forward of its own (dense),
    and such a dense one tied to a Flipout head, whose row of the padding token stays fixed too."""
    torch.manual_seed(0)
    scale = 1.0 if kind == "flipout" else 3.0  # ScaledEmbedding's lookups are 3x the table's rows
    emb = nn.Embedding(10, 4, padding_idx=3) if kind == "flipout" else ScaledEmbedding(10, 4, padding_idx=3)
    model = nn.ModuleList([emb, nn.Linear(4, 10, bias=False)])
    if kind == "dense-tied-to-a-flipout-head":
        model[1].weight = emb.weight
    emb, head = flipes.flipout(model)
    before = emb.weight.detach().clone()
    es = flipes.FlipES(model, popsize=8, sigma=0.5, lr=0.1, groups=2, noise_rank=rank)
    with es.population() as pop:
        out = emb(torch.full((pop.size, 5), 3))
        other = emb(torch.full((pop.size, 5), 4))
        logits = head(torch.ones(pop.size, 4))
    assert torch.equal(out, scale * before[3].expand(8, 5, 4))
    assert not torch.equal(other, scale * before[4].expand(8, 5, 4))
    if kind == "dense-tied-to-a-flipout-head":
        assert torch.equal(logits[:, 3], logits[:1, 3].expand(8)) and not torch.equal(logits[:, 4], logits[:1, 4].expand(8))
    es.tell(torch.randn(8))
    assert torch.equal(emb.weight[3], before[3]) and not torch.equal(emb.weight[4], before[4])


def test_frozen_names_match_whole_names_not_prefixes() -> None:
    """``frozen=["fc1"]`` freezes the parameters of module ``fc1``, not those of ``fc10``; a single string
    is one name."""
    model = flipes.flipout(nn.ModuleDict({"fc1": nn.Linear(2, 2), "fc10": nn.Linear(2, 2)}), frozen=["fc1"])
    assert {name: p.requires_grad for name, p in model.named_parameters()} == {
        "fc1.weight": False, "fc1.bias": False, "fc10.weight": True, "fc10.bias": True,
    }  # fmt: skip
    model = flipes.flipout(nn.ModuleDict({"fc1": nn.Linear(2, 2), "fc10": nn.Linear(2, 2)}), frozen="fc1.weight")
    assert [name for name, p in model.named_parameters() if not p.requires_grad] == ["fc1.weight"]


@pytest.mark.parametrize(
    "layer,x",
    [
        (lambda: nn.Linear(5, 3), lambda: randn(12, 5)),  # one example per member would be 8 rows
        (lambda: nn.Linear(5, 3), lambda: randn(12, 2, 5)),
        (lambda: nn.Conv1d(2, 3, 3), lambda: randn(12, 2, 6)),
        (lambda: nn.Embedding(10, 3), lambda: torch.randint(10, (12, 4))),
    ],
    ids=["linear-2d", "linear-3d", "conv1d", "embedding"],
)
def test_flipout_layer_inputs_that_are_not_members_first_are_errors_naming_the_members(
    layer: Callable[[], nn.Module], x: Callable[[], Tensor]
) -> None:
    """12 rows for 8 members are neither one row per member nor k rows each: a ValueError that says so."""
    model = flipes.flipout(layer().to(DT))
    es = flipes.FlipES(model, popsize=8)
    with es.population(), pytest.raises(ValueError, match=r"population of 8 members.*members first"):
        model(x())


@pytest.mark.parametrize(
    "conv,x,hint",
    [
        (lambda: nn.Conv2d(3, 4, 3), lambda: randn(N, 8, 8, 3), r"\(members, \.\.\., C, H, W\).*x\.movedim\(-1, -3\)"),
        (lambda: nn.Conv1d(3, 4, 3), lambda: randn(N, 2, 5, 6), r"has 5 channels in dim 2, the layer takes 3: .*C, L\)"),
        (lambda: nn.Conv3d(2, 4, 3), lambda: randn(N, 5, 5, 5, 2), r"\(members, \.\.\., C, D, H, W\).*x\.movedim\(-1, -4\)"),
    ],
    ids=["conv2d-channels-last", "conv1d-wrong-channels", "conv3d-channels-last"],
)
def test_a_conv_input_with_its_channels_elsewhere_is_an_error_naming_the_layout(conv: Callable, x: Callable, hint: str) -> None:
    """A convolution fed channels last (or another channel count) in a population names its input's channel count
    and the layout (members, ..., C, *space), with movedim for channels-last input, instead of a size clash."""
    model = flipes.flipout(conv().to(DT))
    es = flipes.FlipES(model, popsize=N)
    with es.population(), pytest.raises(ValueError, match=hint):
        model(x())


def test_a_recurrent_layer_given_sequences_per_member_as_their_own_dimension_names_the_member_major_batch() -> None:
    """An LSTM (batch_first) fed k sequences per member as (members, k, T, features), which it cannot take, is a
    ValueError naming the member-major batch and the flatten that gives it; the flattened input runs."""
    model = flipes.flipout(nn.LSTM(3, 4, batch_first=True).to(DT))
    es = flipes.FlipES(model, popsize=N)
    x = randn(N, 2, 5, 3)
    with es.population(), pytest.raises(ValueError) as e:
        model(x)
    assert str(e.value) == (
        f"FlipoutLSTM: expected 2-D or 3-D input, got 4-D ({N}, 2, 5, 3); inside a population the members are the batch: "
        "give k sequences per member member-major, (members·k, T, features), x.flatten(0, 1) for (members, k, T, features)"
    )
    with es.population():
        assert model(x.flatten(0, 1))[0].shape == (N * 2, 5, 4)


class TinyGPT(nn.Module):
    """nanoGPT's embeddings: positions looked up as 1-D ``torch.arange(T)``, shared by the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.wte, self.wpe, self.head = nn.Embedding(20, 8), nn.Embedding(16, 8), nn.Linear(8, 20)

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device)))


@pytest.mark.parametrize("tokens", [1, 5, 6, 12], ids=["T=1", "T=5", "T=6", "T=12"])
def test_shared_1d_position_ids_are_looked_up_by_every_member_and_a_multiple_of_n_is_refused(tokens: int) -> None:
    """A model that looks up 1-D positions ``torch.arange(T)`` shared by its batch (nanoGPT): with 8 members and T
    no multiple of 8 every member's logits equal the plain model with its parameters (1e-10, float64), T = 1 too (one
    position, ``(1,)``: not read as one id per member's row, ``(N, d)``, which broadcast to ``(N, N, d)``); 1-D ids of
    length 8 or 16 could also be 1 or 2 tokens per member, and the error names both layouts (before, 16 ids were
    silently read as 2 per member)."""
    torch.manual_seed(0)
    original = TinyGPT().to(DT)
    model = flipes.flipout(copy.deepcopy(original))
    es = flipes.FlipES(model, popsize=N, seed=1, groups=2)
    idx = torch.randint(20, (N, tokens))
    with es.population():
        logits = model(idx)
        params = member_parameters(es, model)
    for n in range(N):
        expect = functional_call(original, params[n], (idx[n : n + 1],))
        torch.testing.assert_close(logits[n : n + 1], expect, atol=1e-10, rtol=0)
    for length, k in ((N, 1), (2 * N, 2)):
        with es.population(), pytest.raises(ValueError, match=rf"length {length} .*pass \({N}, {k}\) .*or \(1, {length}\)"):
            model(torch.randint(20, (N, length)))
        with es.population(), pytest.raises(ValueError, match=rf"length {length} .*pass \({N}, {k}\)"):
            model.wte(torch.randint(20, (length,)))  # k tokens per member, flattened: as ambiguous


class ScaleDrop(nn.Module):
    """A learnt scale then dropout: a module flipes runs per member under vmap, random in training mode."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x * self.gamma, 0.5, self.training)


def test_a_dense_module_with_dropout_runs_in_training_mode_with_a_mask_per_member() -> None:
    """A module with dense noise that calls dropout runs in a population in training mode, each member drawing
    its own mask (members with equal inputs differ in where the zeros are, about half of them), and in eval mode
    is deterministic."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(3, 64), ScaleDrop(64)))
    es = flipes.FlipES(model, popsize=N)
    with es.population():
        y = model(torch.ones(N, 3))
    zeros = y == 0
    assert 0.35 < zeros.float().mean().item() < 0.65  # p = 0.5 over 512 entries: 0.5 ± 0.15 is > 6 sd
    assert len({tuple(row.tolist()) for row in zeros}) == N  # a mask per member
    model.eval()
    with es.population():
        assert torch.equal(model(torch.ones(N, 3)), model(torch.ones(N, 3)))


class OwnNoise(nn.Module):
    """A module of a user's with attributes of its own named ``noise`` and ``members``."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.noise, self.members = 0.5, 3

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale * self.noise * self.members


def test_a_modules_own_noise_and_members_attributes_survive_populations_and_copies() -> None:
    """A module whose own attributes are named ``noise`` and ``members`` (flipes' words too) runs per member in a
    population (not taken for a layer already in one), keeps both through it, and copies of the model made
    outside and inside the block keep them and equal the original."""
    import pickle

    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(4, 4), OwnNoise()))
    x = torch.randn(N, 4)
    es = flipes.FlipES(model, popsize=N)
    with es.population():
        assert model(x).shape == (N, 4)
        inside = copy.deepcopy(model)
    for clone in (inside, copy.deepcopy(model), pickle.loads(pickle.dumps(model)), model):
        assert (clone[1].noise, clone[1].members) == (0.5, 3)
        assert torch.equal(clone(x), model(x))


def test_the_shared_ids_hint_is_given_only_for_n_lookups_meeting_a_multiple_of_n_rows() -> None:
    """The position-ids hint joins a size clash of the N shared lookups with k·N rows (naming the ids for those
    rows), and no other error: a clash with a size that is no multiple of N is the user's own mistake."""
    from flipes.nn.embedding import shared_ids_fix

    clash = "The size of tensor a ({}) must match the size of tensor b ({}) at non-singleton dimension 0"
    assert "position_ids=torch.arange(7).expand(24, 7)" in shared_ids_fix((1, 7), 8, clash.format(24, 8))
    assert "torch.arange(7).expand(16, 7)" in shared_ids_fix((7,), 8, clash.format(8, 16))
    assert shared_ids_fix((1, 7), 8, clash.format(8, 5)) is None
    assert shared_ids_fix((1, 7), 8, clash.format(8, 8)) is None
    assert shared_ids_fix((1, 7), 8, "mat1 and mat2 shapes cannot be multiplied") is None


class _RecurrentConvModel(nn.Module):
    """Images through every Flipout layer kind the mixed model of test_train's meta-device check leaves out: Conv2d,
    Conv3d, a grouped ConvTranspose2d, GRU, RNN, and LSTM, GRU and RNN cells."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.conv3 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv3d(1, 1, 1)
        self.deconv = nn.ConvTranspose2d(4, 4, 3, padding=1, groups=2)
        self.gru, self.rnn = nn.GRU(4, 4, batch_first=True), nn.RNN(4, 4, batch_first=True)
        self.lstm_cell, self.gru_cell, self.rnn_cell = nn.LSTMCell(4, 4), nn.GRUCell(4, 4), nn.RNNCell(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:  # (B, 1, 5, 5) -> (B, 2)
        x = self.conv3(x.unsqueeze(-4)).squeeze(-4)
        h = self.deconv(self.conv(x)).flatten(-2).transpose(-1, -2)  # (B, 25, 4): the pixels as a sequence
        h = self.rnn(self.gru(h)[0])[0][..., -1, :]
        return self.head(self.rnn_cell(self.gru_cell(self.lstm_cell(h)[0])))


def test_every_tensor_a_population_of_each_layer_makes_is_on_its_device() -> None:
    """Under the meta default device, FlipES steps of a model of Conv2d, Conv3d, ConvTranspose2d, GRU, RNN and the three
    cells (models built on the host) make real tensors only, with the noise held and with each part's noise sampled anew
    (hold_noise=False, low-rank), with adaptive σ and a best member: a factory without device= in a layer's population
    forward or the update would make a meta tensor, which fails where it meets the model's (on a GPU: a device mismatch,
    or a copy from the host)."""
    with torch.device("cpu"):
        torch.manual_seed(0)
        x = torch.randn(1, 1, 5, 5)
        held, parts = (flipes.flipout(_RecurrentConvModel()) for _ in range(2))
    runs = [
        (held, flipes.FlipES(held, popsize=8, groups=2, sigma_lr=0.1, track_best=True), 8),
        (parts, flipes.FlipES(parts, popsize=8, groups=4, noise_rank=2, hold_noise=False, weight_decay=0.01), 2),
    ]
    torch.set_default_device("meta")
    try:
        assert torch.empty(1).is_meta  # the check is in force
        for model, es, size in runs:
            for _ in range(2):
                with es.population() as pop:
                    fitness = torch.cat([model(x.expand(part.size, 1, 5, 5))[:, 0] for part in pop.split(size)])
                es.member_state_dict(1)
                es.tell(fitness)
    finally:
        torch.set_default_device(None)
    assert [es.generation for _, es, _ in runs] == [2, 2] and runs[0][1].best is not None


@pytest.mark.parametrize("kind", ["flipout", "dense"])
def test_a_copy_of_a_model_holding_an_evolved_parameter_twice_is_a_plain_model(kind: str) -> None:
    """A model whose plain module holds an evolved parameter (HeldTwice) copied or pickled whole, even inside a
    population, is a plain model: no FlipES watches the copy's reads, so its modules hold plain dicts of parameters
    (not ones noting reads into a set left from that population, handing out watched aliases for good)."""
    model = flipes.flipout(HeldTwice(kind, read=False))
    es = flipes.FlipES(model, popsize=N)
    with es.population():
        copied, pickled = copy.deepcopy(model), pickle.loads(pickle.dumps(model))
    for twin in (copied, pickled):
        assert type(twin._parameters) is dict
        assert type(twin.shift) is nn.Parameter
        torch.testing.assert_close(twin.shift, model.shift)
