"""Flipout in backprop training: autograd through the layers equals explicit per-example weights."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import run_script_in_process
from reference import member_deltas
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

import flipes
from flipes.nn import (
    DropConnect,
    FlipoutConv1d,
    FlipoutConv2d,
    FlipoutConvTranspose2d,
    FlipoutGRU,
    FlipoutLinear,
    FlipoutLSTM,
    FlipoutLSTMCell,
    FlipoutRNNCell,
    GaussianPosterior,
    MultiplicativeGaussian,
    PerturbedWeight,
    attach_noise,
    fixed_noise,
    sample_weights,
)
from flipes.nn.variational import NoiseDraw, WeightNoise, layer_noise, rademacher_like

DT = torch.float64
TOL = 1e-10
ROOT = Path(__file__).resolve().parents[1]

NOISES: dict[str, Callable[[PerturbedWeight], WeightNoise]] = {
    "gaussian": functools.partial(GaussianPosterior, init_sigma=0.2, prior_sigma=0.5),
    "gaussian-shared": functools.partial(GaussianPosterior, init_sigma=0.2, flipout=False),
    "multiplicative": functools.partial(MultiplicativeGaussian, alpha=0.3),
    "dropconnect": DropConnect,
}


def randomize_rho(model: nn.Module, seed: int) -> None:
    """Distinct σ per entry, so a wrong index in the scale cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_rho"):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5 - 1.5)


def deltas(noise: WeightNoise, pw: PerturbedWeight, d: NoiseDraw) -> tuple[Tensor, Tensor | None]:
    """ΔŴ (weight-shaped) and the per-example bias perturbation, written out per noise model."""
    if isinstance(noise, GaussianPosterior):
        dw = F.softplus(noise.weight_rho) * d.z
        db = None if d.z_bias is None else F.softplus(noise.bias_rho) * d.z_bias
    elif isinstance(noise, MultiplicativeGaussian):
        dw = math.sqrt(noise.alpha) * pw.weight * d.z
        db = None if d.z_bias is None else math.sqrt(noise.alpha) * pw.bias * d.z_bias
    else:
        dw = pw.weight * d.z
        db = None if d.z_bias is None else pw.bias * d.z_bias
    return dw, db


def record_draws(layer: nn.Module) -> list[NoiseDraw]:
    """Every draw the layer's noise models make from now on, in order (a spy on ``draw``)."""
    seen: list[NoiseDraw] = []
    for slot in layer_noise(layer).slots:

        def spy(pw: PerturbedWeight, n: int, _draw: Callable = slot.draw) -> NoiseDraw:
            seen.append(_draw(pw, n))
            return seen[-1]

        slot.draw = spy
    return seen


def explicit(layer: nn.Module, i: int, n: int, draws: list[NoiseDraw] | None = None) -> tuple[Tensor, Tensor | None]:
    """Example ``n``'s own weight ``W̄ + ΔŴ ∘ (r_n s_nᵀ)`` (kernel dims broadcast, channel groups by
    index arithmetic) and bias ``b̄ + Δb_n``, for the perturbed weight ``i`` of ``layer``, from
    ``draws`` (default: the draws held by ``fixed_noise``)."""
    pw = layer.perturbed_weights()[i]
    ln = layer_noise(layer)
    d = (ln.held if draws is None else draws)[i]
    dw, db = deltas(ln.slots[i], pw, d)
    # entry (o, i') joins output channel o to input channel (o div out_g)·in_g + i'; stored (in, out_g) if transposed,
    # entry (i, o') joins input channel i to output channel (i div in_g)·out_g + o'
    rows, cols = pw.weight.shape[:2]
    channel = (torch.arange(rows)[:, None] // (rows // pw.conv_groups)) * cols + torch.arange(cols)[None, :]
    row_signs, col_signs = (d.s[n], d.r[n]) if pw.transposed else (d.r[n], d.s[n])
    w = pw.weight + dw * (row_signs[:, None] * col_signs[channel]).view(rows, cols, *(1,) * (pw.weight.dim() - 2))
    b = None if pw.bias is None else pw.bias + db[n]
    return w, b


def explicit_cell_run(cell: nn.Module, plain: nn.Module, xs: Tensor, n: int) -> tuple[Tensor, ...]:
    """The plain cell run over the sequence ``xs`` (steps, examples, in) for example ``n`` alone, with
    example ``n``'s explicit weights (held by ``fixed_noise``) at every step: its final state."""
    (w_ih, b_ih), (w_hh, b_hh) = explicit(cell, 0, n), explicit(cell, 1, n)
    weights = {"weight_ih": w_ih, "bias_ih": b_ih, "weight_hh": w_hh, "bias_hh": b_hh}
    state = None
    for x in xs:
        state = torch.func.functional_call(plain, weights, (x[n], state))
    return state


def grads(loss: Tensor, params: list[Tensor]) -> list[Tensor]:
    return list(torch.autograd.grad(loss, params))


@pytest.mark.parametrize("kind", list(NOISES))
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients_equal_explicit_per_example_weights(kind: str, bias: bool) -> None:
    """For every noise model, with and without a bias, on (B, in) and (B, positions, in) inputs: under ``fixed_noise``
    each example's output equals ``F.linear`` with its explicit weight W̄ + ΔŴ∘(r_n s_nᵀ) and bias, and the autograd
    gradient of every parameter (means and noise scales) equals the gradient through that explicit computation, to
    1e-10 absolute (float64); every parameter gets a nonzero gradient."""
    torch.manual_seed(0)
    layer = FlipoutLinear(7, 5, bias=bias, dtype=DT)
    attach_noise(layer, NOISES[kind])
    randomize_rho(layer, 1)
    params = list(layer.parameters())
    for shape in [(6, 7), (6, 3, 7)]:  # one example per row; or (batch, positions, features)
        x = torch.randn(shape, dtype=DT)
        coeff = torch.randn(*shape[:-1], 5, dtype=DT)
        with fixed_noise(layer):
            y = layer(x)
            got = grads((y * coeff).sum(), params)
            ref = torch.stack([F.linear(x[n], *explicit(layer, 0, n)) for n in range(6)])
        torch.testing.assert_close(y, ref, atol=TOL, rtol=0)
        for g, e, p in zip(got, grads((ref * coeff).sum(), params), params, strict=True):
            assert g.abs().sum() > 0 or p.shape == (), "a parameter got no gradient"
            torch.testing.assert_close(g, e, atol=TOL, rtol=0)
    assert len(params) == (2 if bias else 1) + (2 if bias else 1) * kind.startswith("gaussian")


@pytest.mark.parametrize("kind", ["gaussian", "gaussian-shared"])
@pytest.mark.parametrize(
    "transposed,conv_kw",
    [
        (False, dict(kernel_size=3, padding=1)),
        (False, dict(kernel_size=(2, 3), stride=2, groups=2)),
        (False, dict(kernel_size=3, padding=2, dilation=2, padding_mode="reflect")),
        (False, dict(kernel_size=3, padding="same", dilation=(1, 2), groups=2, padding_mode="circular")),
        (True, dict(kernel_size=(2, 3), stride=2, padding=1, output_padding=1, groups=2)),
        (True, dict(kernel_size=3, dilation=2)),
    ],
)
def test_conv_gradients_equal_explicit_per_example_kernels(transposed: bool, conv_kw: dict, kind: str) -> None:
    """FlipoutConv2d and FlipoutConvTranspose2d (kernel stored (in, out // groups, ...)) with a Gaussian posterior
    (padding; stride, output padding, dilation, channel groups, reflect and circular padding), with Flipout signs or one
    shared sample (run as one convolution on W̄ + ΔŴ): each example's output and the gradients equal a convolution with
    ONE explicit kernel per example, the same at every position (signs of shape (B, in_channels) and (B,
    out_channels)), to 1e-10 absolute."""
    torch.manual_seed(1)
    conv = (FlipoutConvTranspose2d if transposed else FlipoutConv2d)(4, 6, dtype=DT, **conv_kw)
    attach_noise(conv, NOISES[kind])
    randomize_rho(conv, 2)
    params = list(conv.parameters())
    x = torch.randn(5, 4, 7, 8, dtype=DT)
    with fixed_noise(conv):
        y = conv(x)
        coeff = torch.randn_like(y)
        got = grads((y * coeff).sum(), params)
        # ONE kernel per example, the same at every position: per-channel signs, not per element
        ref = torch.cat([plain_conv(conv, x[n : n + 1], *explicit(conv, 0, n)) for n in range(5)])
        draw = layer_noise(conv).held[0]
    assert draw.s.shape == (5, 4) and draw.r.shape == (5, 6)
    torch.testing.assert_close(y, ref, atol=TOL, rtol=0)
    for g, e in zip(got, grads((ref * coeff).sum(), params), strict=True):
        torch.testing.assert_close(g, e, atol=TOL, rtol=0)


def plain_conv(conv: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``conv``'s convolution (transposed or not) of ``x`` with the given kernel and bias, by torch.nn.functional."""
    if not isinstance(conv, nn.ConvTranspose2d):
        return conv._conv_forward(x, weight, bias)
    kw = dict(stride=conv.stride, padding=conv.padding, output_padding=conv.output_padding, dilation=conv.dilation)
    return F.conv_transpose2d(x, weight, bias, groups=conv.groups, **kw)


def lstm_params_of_example(lstm: nn.Module, n: int, draws: list[NoiseDraw]) -> dict[str, Tensor]:
    params = {}
    for k in range(lstm.num_layers):
        for j, kind in enumerate(("ih", "hh")):
            w, b = explicit(lstm, 2 * k + j, n, draws)
            params[f"weight_{kind}_l{k}"], params[f"bias_{kind}_l{k}"] = w, b
    return params


@pytest.mark.parametrize("batch_first", [False, True])
def test_lstm_gradients_equal_explicit_weights_fixed_over_the_sequence(batch_first: bool) -> None:
    """A 2-layer FlipoutLSTM with a Gaussian posterior, time- or batch-major, draws once per weight for the whole
    sequence: its outputs at every step, its final h, and the gradients of a loss on the outputs and the final c equal
    those of torch's nn.LSTM run per example with that example's explicit weights, to 1e-10 absolute."""
    torch.manual_seed(2)
    lstm = FlipoutLSTM(3, 4, num_layers=2, batch_first=batch_first, dtype=DT)
    attach_noise(lstm, NOISES["gaussian"])
    randomize_rho(lstm, 3)
    plain = nn.LSTM(3, 4, num_layers=2, dtype=DT)  # torch's own LSTM runs each example's weights
    params = list(lstm.parameters())
    batch, steps = 4, 6
    x = torch.randn(batch, steps, 3, dtype=DT)
    h0 = torch.randn(2, batch, 4, dtype=DT), torch.randn(2, batch, 4, dtype=DT)
    draws = record_draws(lstm)
    out, (h, c) = lstm(x if batch_first else x.transpose(0, 1), h0)
    assert len(draws) == 4  # one draw per weight for the whole sequence
    out = out if batch_first else out.transpose(0, 1)
    coeff = torch.randn_like(out), torch.randn_like(c)
    got = grads((out * coeff[0]).sum() + (c * coeff[1]).sum(), params)
    refs = [
        torch.func.functional_call(plain, lstm_params_of_example(lstm, n, draws), (x[n], (h0[0][:, n], h0[1][:, n])))
        for n in range(batch)
    ]
    ref_out = torch.stack([r[0] for r in refs])
    ref_c = torch.stack([r[1][1] for r in refs], dim=1)
    torch.testing.assert_close(out, ref_out, atol=TOL, rtol=0)  # every step: the same weights
    torch.testing.assert_close(h, torch.stack([r[1][0] for r in refs], dim=1), atol=TOL, rtol=0)
    expect = grads((ref_out * coeff[0]).sum() + (ref_c * coeff[1]).sum(), params)
    for g, e in zip(got, expect, strict=True):
        torch.testing.assert_close(g, e, atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", ["GRU", "RNN"])
@pytest.mark.parametrize("noise", ["gaussian", "gaussian-shared", "dropconnect"])
def test_gru_and_rnn_gradients_equal_explicit_weights_fixed_over_the_sequence(kind: str, noise: str) -> None:
    """A 2-layer FlipoutGRU / FlipoutRNN with backprop noise draws once per weight for the whole sequence: its outputs,
    its final h and the gradients of every parameter (means and ``ρ``), with Flipout signs or one shared sample, equal
    those of torch's own nn.GRU / nn.RNN run per example with that example's explicit weights, to 1e-10 absolute (a
    GRU's hidden bias sits inside its reset gate, so a bias perturbation added outside it would show here)."""
    torch.manual_seed(4)
    layer = getattr(flipes.nn, f"Flipout{kind}")(3, 4, num_layers=2, batch_first=True, dtype=DT)
    attach_noise(layer, NOISES[noise])
    randomize_rho(layer, 5)
    plain = getattr(nn, kind)(3, 4, num_layers=2, dtype=DT)
    params = list(layer.parameters())
    x, h0 = torch.randn(4, 6, 3, dtype=DT), torch.randn(2, 4, 4, dtype=DT)
    draws = record_draws(layer)
    out, h = layer(x, h0)
    assert len(draws) == 4  # one draw per weight for the whole sequence
    coeff = torch.randn_like(out), torch.randn_like(h)
    got = grads((out * coeff[0]).sum() + (h * coeff[1]).sum(), params)
    refs = [torch.func.functional_call(plain, lstm_params_of_example(layer, n, draws), (x[n], h0[:, n])) for n in range(4)]
    ref_out, ref_h = torch.stack([r[0] for r in refs]), torch.stack([r[1] for r in refs], dim=1)
    torch.testing.assert_close(out, ref_out, atol=TOL, rtol=0)
    torch.testing.assert_close(h, ref_h, atol=TOL, rtol=0)
    expect = grads((ref_out * coeff[0]).sum() + (ref_h * coeff[1]).sum(), params)
    for g, e in zip(got, expect, strict=True):
        torch.testing.assert_close(g, e, atol=TOL, rtol=0)


def test_lstm_cell_needs_fixed_noise_and_keeps_its_draw_across_steps() -> None:
    """A noisy FlipoutLSTMCell called outside ``fixed_noise`` raises a RuntimeError naming it; inside, 5 steps equal
    nn.LSTMCell with each example's explicit weights from ONE draw held across the steps, to 1e-10 (hidden state); the
    draw is released when the block ends, and in eval mode the cell is exactly the mean cell."""
    torch.manual_seed(3)
    cell = FlipoutLSTMCell(3, 4, dtype=DT)
    attach_noise(cell, DropConnect)
    xs = torch.randn(5, 2, 3, dtype=DT)
    with pytest.raises(RuntimeError, match="fixed_noise"):
        cell(xs[0])
    plain = nn.LSTMCell(3, 4, dtype=DT)
    with fixed_noise(cell):
        state = None
        for x in xs:
            state = cell(x, state)
        held = layer_noise(cell).held
        for n in range(2):
            ref = explicit_cell_run(cell, plain, xs, n)
            torch.testing.assert_close(state[0][n], ref[0], atol=TOL, rtol=0)
    assert layer_noise(cell).held is None and held[0].s.shape == (2, 3)
    cell.eval()
    assert torch.equal(cell(xs[0])[0], plain.__class__.forward(cell, xs[0])[0])  # eval: the mean cell


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "RNNCell"])
def test_a_cell_outside_fixed_noise_names_the_layer_that_draws_per_sequence(cell: str) -> None:
    """A noisy recurrent cell called outside ``fixed_noise`` raises one line naming both fixes for its own kind:
    ``fixed_noise`` and the sequence layer of the same recurrence (FlipoutGRU for a GRU cell, not FlipoutLSTM)."""
    layer = flipes.flipout(getattr(nn, cell)(3, 4))
    attach_noise(layer, GaussianPosterior)
    sequence_layer = f"Flipout{cell.removesuffix('Cell')}"
    with pytest.raises(RuntimeError, match=rf"fixed_noise.*flipes\.nn\.{sequence_layer}, which draws once per call") as err:
        layer(torch.randn(2, 3))
    assert "\n" not in str(err.value) and hasattr(flipes.nn, sequence_layer)


def test_lstm_cell_gradients_equal_explicit_weights_fixed_over_the_sequence() -> None:
    """Backprop through a cell run step by step inside ``fixed_noise``: the gradients of every parameter
    (means and posterior scales) are those of each example's explicit weights, through the hidden path too."""
    torch.manual_seed(5)
    cell = FlipoutLSTMCell(3, 4, dtype=DT)
    attach_noise(cell, NOISES["gaussian"])
    randomize_rho(cell, 6)
    plain = nn.LSTMCell(3, 4, dtype=DT)
    params = list(cell.parameters())
    xs = torch.randn(5, 2, 3, dtype=DT)
    coeff = torch.randn(2, 2, 4, dtype=DT)
    with fixed_noise(cell):
        state = None
        for x in xs:
            state = cell(x, state)
        got = grads((state[0] * coeff[0]).sum() + (state[1] * coeff[1]).sum(), params)
        loss = torch.zeros((), dtype=DT)
        for n in range(2):
            ref = explicit_cell_run(cell, plain, xs, n)
            loss = loss + (ref[0] * coeff[0][n]).sum() + (ref[1] * coeff[1][n]).sum()
        expect = grads(loss, params)
    for g, e in zip(got, expect, strict=True):
        torch.testing.assert_close(g, e, atol=TOL, rtol=0)


def test_a_linear_unrolled_inside_fixed_noise_keeps_each_examples_weights() -> None:
    """A FlipoutLinear applied 3 times in one forward (a hand-written recurrence) draws anew at each call outside
    ``fixed_noise``; inside, the 3 steps equal each example's explicit weights from ONE draw, to 1e-10, and so do the
    gradients of the means and ``ρ``."""
    torch.manual_seed(6)
    cell = FlipoutLinear(4, 4, dtype=DT)
    attach_noise(cell, NOISES["gaussian"])
    randomize_rho(cell, 7)
    params = list(cell.parameters())
    h0 = torch.randn(3, 4, dtype=DT)
    assert not torch.equal(cell(h0), cell(h0))  # outside: a new sample per call
    with fixed_noise(cell):
        h = h0
        for _ in range(3):
            h = torch.tanh(cell(h))
        got = grads(h.square().sum(), params)
        refs = []
        for n in range(3):
            w, b = explicit(cell, 0, n)
            r = h0[n]
            for _ in range(3):
                r = torch.tanh(w @ r + b)
            refs.append(r)
        ref = torch.stack(refs)
        expect = grads(ref.square().sum(), params)
    torch.testing.assert_close(h, ref, atol=TOL, rtol=0)
    for g, e in zip(got, expect, strict=True):
        torch.testing.assert_close(g, e, atol=TOL, rtol=0)


def test_a_linear_gives_all_rows_of_an_example_its_one_weight_sample() -> None:
    """The example is the first dimension: a FlipoutLinear given (B, T, F) computes every one of example b's T rows
    with b's explicit weights from the draw, to 1e-10, gradients of the means and ``ρ`` included; so a sequence-first
    (T, B, F) input would give the T steps the samples and the batch one shared sample per step."""
    torch.manual_seed(8)
    layer = FlipoutLinear(4, 3, dtype=DT)
    attach_noise(layer, NOISES["gaussian"])
    randomize_rho(layer, 9)
    params = list(layer.parameters())
    x = torch.randn(2, 5, 4, dtype=DT)
    draws = record_draws(layer)
    out = layer(x)
    assert draws[0].s.shape == (2, 4)
    ref = torch.stack([F.linear(x[n], *explicit(layer, 0, n, draws)) for n in range(2)])
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)
    coeff = torch.randn_like(out)
    for g, e in zip(grads((out * coeff).sum(), params), grads((ref * coeff).sum(), params), strict=True):
        torch.testing.assert_close(g, e, atol=TOL, rtol=0)


@pytest.mark.parametrize("flipout", [True, False])
def test_an_empty_batch_gives_the_plain_layers_empty_output(flipout: bool) -> None:
    """A minibatch of 0 examples through Linear, Conv2d and LSTM with a posterior, training: the same empty output as
    the plain layer (not an error about a population of 0 members), and the KL term still backpropagates."""
    noise = functools.partial(GaussianPosterior, flipout=flipout)
    cases = [
        (nn.Linear(3, 2), torch.randn(0, 3)),
        (nn.Conv2d(1, 2, 3), torch.randn(0, 1, 5, 5)),
        (nn.LSTM(3, 2, batch_first=True), torch.randn(0, 4, 3)),
    ]
    for plain, x in cases:
        layer = attach_noise(flipes.flipout(plain), noise)
        out = layer(x)
        out = out[0] if isinstance(out, tuple) else out
        ref = plain.__class__.forward(layer, x)
        ref = ref[0] if isinstance(ref, tuple) else ref
        assert out.shape == ref.shape and out.numel() == 0
        (out.sum() + flipes.kl_divergence(layer)).backward()
        assert all(p.grad is not None for name, p in layer.named_parameters() if name.endswith("_rho"))


def test_an_unbatched_input_gets_the_weights_of_a_batch_of_one() -> None:
    """With a noise model attached and training, an input without its batch dim (and its state, if given: an LSTM's
    (h, c) too) gives what the batch of one gives with the same random draw: same shape, same values."""
    torch.manual_seed(7)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, dtype=DT)

    # (layer, unbatched args, batch dim of each arg and of each output, inside fixed_noise); a pair is (h, c)
    cases = [
        (FlipoutLinear(5, 3, dtype=DT), (randn(5),), (0,), (0,)),
        (FlipoutConv1d(2, 3, 3, dtype=DT), (randn(2, 7),), (0,), (0,)),
        (FlipoutRNNCell(4, 5, dtype=DT), (randn(4), randn(5)), (0, 0), (0,)),
        (FlipoutLSTMCell(4, 5, dtype=DT), (randn(4), (randn(5), randn(5))), (0, 0), (0, 0)),
        (  # time-major: (T, in) and h0 (layers, hidden) -> out (T, hidden), h (layers, hidden)
            FlipoutGRU(4, 5, num_layers=2, dtype=DT),
            (randn(6, 4), randn(2, 5)),
            (1, 1),
            (1, 1),
        ),
        (FlipoutLSTM(4, 5, num_layers=2, dtype=DT), (randn(6, 4), (randn(2, 5), randn(2, 5))), (1, 1), (1, 1)),
    ]

    def batch_of_one(a: object, d: int, squeeze: bool = False) -> object:
        if isinstance(a, tuple):
            return tuple(batch_of_one(t, d, squeeze) for t in a)
        return a.squeeze(d) if squeeze else a.unsqueeze(d)  # type: ignore[union-attr]

    for layer, args, arg_dims, out_dims in cases:
        attach_noise(layer, NOISES["gaussian"])
        outs = []
        for batched in (False, True):
            torch.manual_seed(8)
            call = tuple(batch_of_one(a, d) for a, d in zip(args, arg_dims, strict=True)) if batched else args
            with fixed_noise(layer):
                out = layer(*call)
            out = out if isinstance(out, tuple) else (out,)
            outs.append(tuple(batch_of_one(o, d, squeeze=True) for o, d in zip(out, out_dims, strict=True)) if batched else out)
        for got, expect in zip(*outs, strict=True):
            torch.testing.assert_close(got, expect, atol=TOL, rtol=0, msg=type(layer).__name__)
        layer.eval()
        mean = layer(*args)
        assert not torch.allclose(outs[0][0], mean if isinstance(mean, Tensor) else mean[0])  # the noise was applied


@pytest.mark.parametrize("kind", ["gaussian-shared", "multiplicative", "dropconnect"])
def test_without_flipout_signs_the_whole_batch_shares_one_weight_sample(kind: str) -> None:
    """``flipout=False``: one weight and bias sample for every example of the batch (equal inputs give
    equal outputs), a new one at each call."""
    torch.manual_seed(9)
    layer = FlipoutLinear(6, 4, dtype=DT)
    make = functools.partial(NOISES[kind], flipout=False) if kind != "gaussian-shared" else NOISES[kind]
    attach_noise(layer, make)
    x = torch.randn(1, 6, dtype=DT).expand(5, 6)
    first, second = layer(x), layer(x)
    assert torch.equal(first, first[:1].expand(5, 4)) and torch.equal(second, second[:1].expand(5, 4))
    assert not torch.allclose(first, second) and not torch.allclose(first, F.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize("kind", ["gaussian-shared", "multiplicative", "dropconnect"])
def test_a_shared_sample_stores_nothing_per_example(kind: str) -> None:
    """``flipout=False``: the draw's signs and bias noise and the SlotNoise's ``bias_r`` for 1,000 examples are ONE row
    broadcast over the examples (stride 0: no O(batch) tensor built, filled and reduced in backward at every step),
    the signs all +1 and ``bias_r`` every example's one Δb."""
    layer = FlipoutLinear(6, 4, dtype=DT)
    make = functools.partial(NOISES[kind], flipout=False) if kind != "gaussian-shared" else NOISES[kind]
    attach_noise(layer, make)
    ln, pws = layer_noise(layer), layer.perturbed_weights()
    draws = record_draws(layer)
    (sn,) = ln.sample(pws, 1000, "FlipoutLinear")
    d = draws[-1]
    for t in (d.s, d.r, d.z_bias, sn.bias_r):
        assert t.shape[0] == 1000 and t.stride(0) == 0
    assert torch.equal(d.s, torch.ones_like(d.s)) and torch.equal(d.r, torch.ones_like(d.r))
    torch.testing.assert_close(sn.bias_r[0], ln.slots[0].bias_perturbation(pws[0], d.z_bias)[0], atol=0, rtol=0)


@pytest.mark.parametrize("layer_kind", ["linear", "conv"])
def test_a_shared_sample_runs_the_plain_layer_on_the_sampled_weights(layer_kind: str) -> None:
    """``flipout=False``: the forward is the plain layer on ``W̄ + ΔŴ`` and ``b̄ + Δb`` from the draw, bit for bit in
    float32 (one GEMM or convolution; the Flipout form ``x W̄ + (x ∘ s) ΔŴ ∘ r`` rounds differently), for a batch, an
    unbatched input and a Linear's (B, T, F) input, with gradients reaching the means and ``ρ``."""
    torch.manual_seed(10)
    noise = functools.partial(GaussianPosterior, init_sigma=0.3, flipout=False)
    if layer_kind == "linear":
        layer, inputs = FlipoutLinear(6, 4), (torch.randn(5, 6), torch.randn(6), torch.randn(3, 7, 6))
    else:
        layer, inputs = FlipoutConv2d(3, 4, 3, padding=1), (torch.randn(5, 3, 6, 6), torch.randn(3, 6, 6))
    attach_noise(layer, noise)
    draws = record_draws(layer)
    for x in inputs:
        out = layer(x)
        d = draws[-1]
        sigma = layer_noise(layer).slots[0]
        with torch.no_grad():
            w = layer.weight + sigma.weight_sigma() * d.z
            b = layer.bias + sigma.bias_sigma() * d.z_bias[0]
            ref = F.linear(x, w, b) if layer_kind == "linear" else layer._conv_forward(x, w, b)
        assert torch.equal(out, ref)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


@pytest.mark.parametrize("kind", ["gaussian", "dropconnect"])
def test_a_flipout_draw_gives_each_example_fair_signs_of_its_own_and_its_own_bias_draw(kind: str) -> None:
    """With flipout signs, a draw for n examples holds ±1 signs ``s`` (n, in) and ``r`` (n, out) and a bias draw
    (n, out), all drawn per example: over 4000 examples each sign column's mean is within 5/√4000 of 0 (a fair ±1;
    false alarm < 1e-6 per column) and each bias column's standard deviation across examples is within [0.9, 1.1]
    (N(0, 1) or ±1 draws; 0 if one draw were shared by the batch)."""
    torch.manual_seed(12)
    layer = FlipoutLinear(3, 2, dtype=DT)
    attach_noise(layer, NOISES[kind])
    n = 4000
    draw = layer_noise(layer).slots[0].draw(layer.perturbed_weights()[0], n)
    for signs in (draw.s, draw.r):
        assert set(signs.unique().tolist()) == {-1.0, 1.0}
        assert signs.mean(0).abs().max().item() < 5 / math.sqrt(n)
    assert draw.z_bias.shape == (n, 2)
    std = draw.z_bias.std(0)
    assert ((std > 0.9) & (std < 1.1)).all(), std


def test_a_posterior_starts_at_init_sigma_and_shows_its_settings() -> None:
    """σ = softplus(ρ) of every weight and bias entry starts at ``init_sigma``; the repr names the settings."""
    layer = FlipoutLinear(3, 2, dtype=DT)
    attach_noise(layer, functools.partial(GaussianPosterior, init_sigma=0.2, prior_sigma=0.5))
    post = layer_noise(layer).slots[0]
    torch.testing.assert_close(post.weight_sigma(), torch.full((2, 3), 0.2, dtype=DT), atol=1e-12, rtol=0)
    torch.testing.assert_close(post.bias_sigma(), torch.full((2,), 0.2, dtype=DT), atol=1e-12, rtol=0)
    assert "GaussianPosterior(prior_sigma=0.5, init_sigma=0.2, flipout=True)" in repr(layer)


def test_fixed_rate_noise_models_show_their_settings() -> None:
    """The repr of a layer with multiplicative Gaussian noise or DropConnect names the rate and the flipout flag."""
    for noise, shown in (
        (functools.partial(MultiplicativeGaussian, alpha=0.3, flipout=False), "MultiplicativeGaussian(alpha=0.3, flipout=False)"),
        (DropConnect, "DropConnect(p=0.5, flipout=True)"),
    ):
        layer = FlipoutLinear(3, 2)
        attach_noise(layer, noise)
        assert shown in repr(layer)


def test_fresh_noise_every_call_mean_network_in_eval_and_sampling_on_request() -> None:
    """In training mode two calls on the same input differ (a new draw per call); under ``fixed_noise`` they are
    equal, and another batch size is a ValueError; in eval mode the output is exactly the mean ``F.linear`` except
    under ``sample_weights``; ``attach_noise(layer, None)`` removes the noise module, leaving the mean layer in
    training mode too."""
    torch.manual_seed(4)
    layer = FlipoutLinear(6, 3, dtype=DT)
    attach_noise(layer, NOISES["gaussian"])
    x = torch.randn(8, 6, dtype=DT)
    a, b = layer(x), layer(x)
    assert not torch.allclose(a, b)  # a new draw per call (per step)
    with fixed_noise(layer):
        assert torch.equal(layer(x), layer(x))  # one draw for the block
        with pytest.raises(ValueError, match="same batch size"):
            layer(x[:4])
    layer.eval()
    mean = F.linear(x, layer.weight, layer.bias)
    assert torch.equal(layer(x), mean)
    with sample_weights(layer):
        assert not torch.allclose(layer(x), mean)
    assert torch.equal(layer(x), mean)
    attach_noise(layer, None)
    layer.train()
    assert torch.equal(layer(x), mean) and not list(layer.children())


def test_dropconnect_gives_each_example_a_mask_of_its_own() -> None:
    """Per example every weight is exactly 0 or 2W̄; per example the kept entries are
    Binomial(600, 1/2) (given the signs, the shared ±1 draws are fair and independent), checked
    at 5σ for 64 examples: false alarm < 64 · 5.8e-7 < 4e-5."""
    torch.manual_seed(5)
    layer = FlipoutLinear(20, 30, dtype=DT)
    attach_noise(layer, DropConnect)
    with fixed_noise(layer):
        layer(torch.randn(64, 20, dtype=DT))
        masks = torch.stack([explicit(layer, 0, n)[0] / layer.weight for n in range(64)])
        bias_masks = torch.stack([explicit(layer, 0, n)[1] / layer.bias for n in range(64)])
    assert set(torch.cat([masks.flatten(), bias_masks.flatten()]).round(decimals=9).unique().tolist()) == {0.0, 2.0}
    kept = (masks > 1).sum((1, 2)).to(DT)
    assert ((kept - 300).abs() < 5 * math.sqrt(600) / 2).all()
    assert len({tuple(m.flatten().tolist()) for m in masks}) == 64  # no two examples share a mask


def test_kl_matches_torch_distributions() -> None:
    """``flipes.kl_divergence(model)`` and the sum of the layers' ``kl()`` equal Σ KL(N(μ, softplus(ρ)²) ‖ N(0, 0.7²))
    over every weight and bias entry from torch.distributions, to 1e-12 (float64); DropConnect (no learnable
    posterior) gives exactly 0."""
    torch.manual_seed(6)
    model = flipes.flipout(nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3, bias=False)).to(DT))
    attach_noise(model, functools.partial(GaussianPosterior, prior_sigma=0.7))
    randomize_rho(model, 7)
    expect = torch.zeros((), dtype=DT)
    for layer in (model[0], model[2]):
        post = layer_noise(layer).slots[0]
        for mu, rho in ((layer.weight, post.weight_rho), (layer.bias, post.bias_rho)):
            if mu is not None:
                expect += kl_divergence(Normal(mu, F.softplus(rho)), Normal(torch.zeros_like(mu), 0.7)).sum()
    torch.testing.assert_close(flipes.kl_divergence(model), expect, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(model[0].kl() + model[2].kl(), expect, atol=1e-12, rtol=1e-12)
    attach_noise(model, DropConnect)
    assert flipes.kl_divergence(model).item() == 0.0  # fixed-rate noise: no learnable posterior


def test_the_kl_of_a_layer_with_several_weights_sums_each_weights_posterior() -> None:
    """A recurrent layer perturbs several weights (``weight_ih``, ``weight_hh`` per layer, each with its bias) and
    has a posterior for each: its ``kl()`` is Σ KL(N(μ, softplus(ρ)²) ‖ N(0, 0.7²)) over every entry of all of them,
    each with its own μ and ρ (torch.distributions, to 1e-12, float64)."""
    torch.manual_seed(13)
    for layer in (FlipoutLSTMCell(3, 2, dtype=DT), FlipoutLSTM(3, 2, num_layers=2, dtype=DT)):
        attach_noise(layer, functools.partial(GaussianPosterior, prior_sigma=0.7))
        randomize_rho(layer, 14)
        expect = torch.zeros((), dtype=DT)
        for pw, post in zip(layer.perturbed_weights(), layer_noise(layer).slots, strict=True):
            for mu, rho in ((pw.weight, post.weight_rho), (pw.bias, post.bias_rho)):
                expect += kl_divergence(Normal(mu, F.softplus(rho)), Normal(torch.zeros_like(mu), 0.7)).sum()
        torch.testing.assert_close(layer.kl(), expect, atol=1e-12, rtol=1e-12)


def test_noise_models_and_lstm_refuse_what_they_cannot_do() -> None:
    """Each refusal is a ValueError with its own message: DropConnect with p ≠ 0.5 (not symmetric about 0),
    GaussianPosterior with prior_sigma 0, MultiplicativeGaussian with alpha < 0, attach_noise on a model without
    Flipout layers, and bidirectional or projected LSTMs, built directly or converted by ``flipes.flipout``."""
    layer = FlipoutLinear(3, 2)
    pw = layer.perturbed_weights()[0]
    with pytest.raises(ValueError, match="symmetric about 0"):
        DropConnect(pw, p=0.3)
    with pytest.raises(ValueError, match=r"prior_sigma and init_sigma must be finite and > 0, got 0\.0 and"):
        GaussianPosterior(pw, prior_sigma=0.0)
    with pytest.raises(ValueError, match=r"alpha must be finite and >= 0, got -1\.0"):
        MultiplicativeGaussian(pw, alpha=-1.0)
    with pytest.raises(ValueError, match="no Flipout layer"):
        attach_noise(nn.Sequential(nn.Linear(2, 2)), DropConnect)
    for kw in (dict(bidirectional=True), dict(proj_size=2)):
        with pytest.raises(ValueError, match="unidirectional"):
            FlipoutLSTM(3, 4, **kw)
        with pytest.raises(ValueError, match="unidirectional"):
            flipes.flipout(nn.Sequential(nn.LSTM(3, 4, **kw)))


@pytest.mark.parametrize(
    "make,match",
    [
        (functools.partial(GaussianPosterior, prior_sigma=math.inf), "must be finite and > 0, got inf"),
        (functools.partial(GaussianPosterior, init_sigma=math.inf), "must be finite and > 0, got 1.0 and inf"),
        (functools.partial(GaussianPosterior, init_sigma=1e-50), r"σ = 0 and an infinite KL term in torch\.float32"),
        (functools.partial(GaussianPosterior, init_sigma=1e30), r"σ = 1e\+30 and an infinite KL term in torch\.float32"),
        (functools.partial(GaussianPosterior, prior_sigma=1e-30), r"an infinite KL term in torch\.float32"),
        (functools.partial(MultiplicativeGaussian, alpha=math.inf), "alpha must be finite and >= 0, got inf"),
    ],
)
def test_noise_settings_that_would_make_the_kl_or_the_noise_infinite_are_refused(make: Callable, match: str) -> None:
    """A posterior whose σ = softplus(ρ) underflows to 0 or overflows in the float32 KL (or an infinite prior σ or
    noise variance) would give an infinite KL and NaN gradients at the first step: it is a one-line ValueError when the
    noise model is made, naming the values; an extreme setting that float32 represents is accepted with a finite KL
    and finite gradients."""
    pw = FlipoutLinear(3, 2).perturbed_weights()[0]
    with pytest.raises(ValueError, match=match) as err:
        make(pw)
    assert "\n" not in str(err.value)
    layer = attach_noise(FlipoutLinear(3, 2), functools.partial(GaussianPosterior, init_sigma=1e-30))
    loss = layer(torch.randn(4, 3)).sum() + flipes.kl_divergence(layer)
    loss.backward()
    assert loss.isfinite() and all(p.grad.isfinite().all() for p in layer.parameters())


def test_layers_with_tied_weights_share_one_posterior_counted_once_in_the_kl() -> None:
    """Two Linears tied in weight and bias get ONE GaussianPosterior (one ρ per tied tensor, the same module), and
    ``kl_divergence`` is the closed-form KL of that one posterior, not twice it; each use still draws its own sample,
    and the ρ gradient sums both uses. A weight tied without its bias under a posterior is a one-line ValueError
    naming both layers (it would have two posteriors); a noise model without parameters is attached there."""
    torch.manual_seed(7)
    model = flipes.flipout(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))).to(DT)
    model[2].weight, model[2].bias = model[0].weight, model[0].bias
    attach_noise(model, functools.partial(GaussianPosterior, init_sigma=0.2, prior_sigma=0.5))
    randomize_rho(model, 8)
    assert layer_noise(model[0]).slots[0] is layer_noise(model[2]).slots[0]
    post = layer_noise(model[0]).slots[0]
    assert sum(name.endswith("_rho") for name, _ in model.named_parameters()) == 2
    q = [Normal(model[0].weight, post.weight_sigma()), Normal(model[0].bias, post.bias_sigma())]
    expect = sum(kl_divergence(d, Normal(torch.zeros_like(d.loc), 0.5)).sum() for d in q)
    torch.testing.assert_close(flipes.kl_divergence(model), expect, atol=TOL, rtol=0)
    seen = record_draws(model[0])  # the slot both layers share: every draw of either
    model(torch.randn(3, 4, dtype=DT)).sum().backward()
    assert len(seen) == 2 and not torch.equal(seen[0].z, seen[1].z)
    assert post.weight_rho.grad.abs().sum() > 0
    untied = flipes.flipout(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4)))
    untied[2].weight = untied[0].weight
    with pytest.raises(ValueError, match=r"layer '2' shares the weight of layer '0' but not its bias") as err:
        attach_noise(untied, GaussianPosterior)
    assert "\n" not in str(err.value) and layer_noise(untied[0]) is None
    attach_noise(untied, DropConnect)
    assert layer_noise(untied[2]) is not None


def test_signs_drawn_under_vmap_are_fair_and_differ_per_vmapped_example() -> None:
    """``rademacher_like`` under ``torch.func.vmap(randomness="different")`` (per-example gradients) gives every vmapped
    example its own ±1 draw: values exactly ±1, the 64 rows of 48 signs not all equal, and the mean of the 3,072 signs
    within 5 standard deviations of 0 (false alarm < 1e-6; seed 0); with ``randomness="same"`` every row is equal."""
    torch.manual_seed(0)
    like = torch.zeros(1, dtype=DT)
    draw = functools.partial(rademacher_like, (6, 8), like)
    rows = torch.func.vmap(lambda v: v * draw(), randomness="different")(torch.ones(64, 1, 1, dtype=DT))
    assert rows.shape == (64, 6, 8) and bool(((rows == 1) | (rows == -1)).all())
    assert not bool((rows == rows[0]).all()) and abs(rows.mean().item()) < 5 / math.sqrt(rows.numel())
    same = torch.func.vmap(lambda v: v * draw(), randomness="same")(torch.ones(4, 1, 1, dtype=DT))
    assert bool((same == same[0]).all())


def test_flipout_converts_lstm_sharing_parameters() -> None:
    """``flipes.flipout(nn.LSTM)`` returns a FlipoutLSTM whose parameters are the LSTM's own tensor objects (shared,
    not copied), and without noise its output equals the LSTM's bit for bit."""
    torch.manual_seed(8)
    plain = nn.LSTM(3, 5, num_layers=2, batch_first=True)
    x = torch.randn(2, 4, 3)
    before = plain(x)[0]
    lstm = flipes.flipout(plain)
    assert isinstance(lstm, FlipoutLSTM)
    assert all(p is q for p, q in zip(lstm.parameters(), plain.parameters(), strict=True))
    assert torch.equal(lstm(x)[0], before)


def test_lstm_in_an_es_population_equals_explicit_member_weights() -> None:
    """In an ES population (time-major, members along dim 1, 2 sequences each), each member's outputs at every step
    equal nn.LSTM with the member's explicit weights W̄ + δ_n and biases b̄ + δb_n materialized from the layer's
    noise, to 1e-10 absolute."""
    torch.manual_seed(9)
    lstm = FlipoutLSTM(3, 4, num_layers=2, dtype=DT)  # time-major: members are dim 1
    es = flipes.FlipES(lstm, popsize=4, sigma=0.3, seed=1)
    x = torch.randn(5, 8, 3, dtype=DT)  # 2 sequences per member, member-major
    with es.population():
        out, _ = lstm(x)
        noise = lstm.noise
    plain = nn.LSTM(3, 4, num_layers=2, dtype=DT)
    pws = lstm.perturbed_weights()
    ds = [member_deltas(nz, tuple(pw.weight.shape)) for nz, pw in zip(noise, pws, strict=True)]
    for n in range(4):
        params = {}
        for i, (pw, nz) in enumerate(zip(pws, noise, strict=True)):
            k, kind = divmod(i, 2)
            kind = ("ih", "hh")[kind]
            params[f"weight_{kind}_l{k}"] = pw.weight + ds[i][n]
            params[f"bias_{kind}_l{k}"] = pw.bias + nz.bias[n]
        with torch.no_grad():
            ref, _ = torch.func.functional_call(plain, params, (x[:, 2 * n : 2 * n + 2],))
        torch.testing.assert_close(out[:, 2 * n : 2 * n + 2], ref, atol=TOL, rtol=0)


def test_flipes_ignores_the_posterior_parameters() -> None:
    """ES noise takes precedence over backprop noise, and the learnable scales are not evolved."""

    def make() -> nn.Module:
        torch.manual_seed(10)
        return flipes.flipout(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)))

    bare, bayes = make(), make()
    attach_noise(bayes, GaussianPosterior)
    rho = [p.detach().clone() for n, p in bayes.named_parameters() if n.endswith("_rho")]
    es_bare, es_bayes = flipes.FlipES(bare, popsize=8, seed=3), flipes.FlipES(bayes, popsize=8, seed=3)
    assert [p.shape for p in es_bayes.params] == [p.shape for p in es_bare.params] == [p.shape for p in bare.parameters()]
    x = torch.randn(8, 4)
    for es, model in ((es_bare, bare), (es_bayes, bayes)):
        for _ in range(2):
            with es.population():
                y = model(x)
            es.tell(-y.square().sum(1))
    for p, q in zip(bare.parameters(), es_bayes.params, strict=True):
        assert torch.equal(p, q) and torch.equal(p.grad, q.grad)
    assert all(
        torch.equal(a, b.detach()) and b.grad is None
        for a, b in zip(rho, (p for n, p in bayes.named_parameters() if n.endswith("_rho")), strict=True)
    )


def test_backprop_variance_script_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """scripts/backprop_variance.py --quick prints finite slopes and variances for the FC (shared, Flipout, LRT),
    ConvNet (Flipout) and LSTM (shared, Flipout) rows, each variance at N = 16 below that at N = 1 and positive, and
    writes a PNG of more than 10 kB as backprop_variance_quick.png (not the full run's backprop_variance.png)."""
    run_script_in_process("backprop_variance", "--quick", "true", "--out", tmp_path)
    out = capsys.readouterr().out
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in out.splitlines() if line.startswith("| ")}
    for key in [
        ("FC", "shared"),
        ("FC", "Flipout"),
        ("FC", "LRT"),
        ("ConvNet", "Flipout"),
        ("LSTM", "shared"),
        ("LSTM", "Flipout"),
    ]:
        cells = rows[key].split("|")
        assert all(math.isfinite(float(c)) for c in cells[3:7]), rows[key]
        assert float(cells[5]) > float(cells[6]) > 0  # variance falls from N=1 to N=16
    assert not (tmp_path / "backprop_variance.png").exists()
    png = tmp_path / "backprop_variance_quick.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_bench_backprop_step_script_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    """scripts/bench_backprop_step.py --quick (the README's "Cost" command) prints one row per variant, plain, Flipout
    and shared, each with a positive step time, and plain's ratio to itself exactly 1.0 (no timing is asserted)."""
    run_script_in_process("bench_backprop_step", "--quick", "true")
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.split("|")[1:5]] for line in out.splitlines() if line.startswith("| 8 |")]
    assert [r[1] for r in rows] == ["plain", "Flipout", "shared"]
    assert all(float(r[2]) > 0 for r in rows) and rows[0][3] == "1.0"


def test_bayes_digits_script_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """scripts/bayes_digits.py, 3 epochs: the JSON holds validation results for each β and the deterministic net, the
    selected β has the lowest validation NLL (seed 0), the printed test rows are the deterministic net, the selected β
    and the ELBO (β = 1) when not selected, matching the JSON, each with accuracy in (50, 100] %, ECE in [0, 1] and
    NLL in (0, 3), and the Markdown has the table and marks the selection."""
    args = ["--epochs", "3", "--samples", "2", "--betas", "1", "0.1", "--select-seeds", "0", "--seeds", "0"]
    run_script_in_process("bayes_digits", *args, "--out", tmp_path)
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "bayes_digits.json").read_text())
    val = result["validation"]
    assert set(val) == {"1", "0.1", "deterministic"}
    # β is the lowest mean validation NLL; the test split plays no part in the choice
    assert result["selected_beta"] == min((1.0, 0.1), key=lambda b: val[f"{b:g}"][0]["nll"])
    beta = f"{result['selected_beta']:g}"
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| 0 |")]
    names = ["deterministic", f"Bayes by Backprop, β={beta} (selected)"]
    names += ["Bayes by Backprop, β=1 (ELBO)"] if beta != "1" else []
    assert [r[2].strip() for r in rows] == names == list(result["test"])
    for row in rows:
        acc, ece, nll = float(row[3].strip(" %")), float(row[4]), float(row[5])
        assert 50 < acc <= 100 and 0 <= ece <= 1 and 0 < nll < 3  # 3 epochs already beat chance (10%)
    md = (tmp_path / "bayes_digits.md").read_text()
    assert "|---|" in md and "(selected)" in md and "Target (selected" in md


def test_expected_calibration_error_by_hand() -> None:
    """scripts/bayes_digits.py's ``expected_calibration_error`` equals the hand-computed value with 4 bins and with 2
    bins (one occupied bin: |accuracy - mean confidence|), to 1e-12, and is exactly 0 for confident correct
    predictions."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from bayes_digits import expected_calibration_error

    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.2, 0.8]], dtype=DT)
    labels = torch.tensor([0, 1, 1, 1])
    # bins of 1/4: (1/2, 3/4] holds {0.6}, accuracy 1; (3/4, 1] holds {0.9, 0.9, 0.8}, accuracy 2/3
    expect = 0.25 * 0.4 + 0.75 * abs(2 / 3 - 2.6 / 3)
    assert expected_calibration_error(probs, labels, bins=4) == pytest.approx(expect, abs=1e-12)
    assert expected_calibration_error(probs, labels, bins=2) == pytest.approx(abs(0.75 - 0.8), abs=1e-12)  # one bin
    assert expected_calibration_error(torch.eye(3), torch.arange(3)) == 0.0


def test_lstm_with_noise_refuses_packed_input_and_returns_a_contiguous_output() -> None:
    """With noise in training mode a PackedSequence input is a TypeError (not silently the mean network), and a padded
    (T, B, in) input gives a contiguous (T, B, hidden) output; in eval mode (no noise) packed input is taken."""
    torch.manual_seed(0)
    lstm = FlipoutLSTM(3, 4)
    attach_noise(lstm, DropConnect)
    lstm.train()
    seqs = torch.randn(5, 2, 3)  # (T, B, in)
    packed = nn.utils.rnn.pack_padded_sequence(seqs, torch.tensor([5, 3]))
    with pytest.raises(TypeError, match="PackedSequence"):
        lstm(packed)  # not silently the mean network
    out, _ = lstm(seqs)
    assert out.is_contiguous() and out.shape == (5, 2, 4)
    lstm.eval()  # no noise in eval mode: plain nn.LSTM, which takes packed input
    lstm(packed)


def test_attaching_noise_to_layers_that_would_ignore_it_is_an_error() -> None:
    """Embedding and attention sample no backprop noise: attaching some would leave it unused while
    its KL term entered the loss."""
    model = flipes.flipout(nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="no backprop-noise forward in FlipoutEmbedding"):
        attach_noise(model, GaussianPosterior)
    attach_noise(model[1], GaussianPosterior)  # the Linear alone
    assert flipes.nn.kl_divergence(model).detach() > 0


def test_the_fix_the_unsupported_layer_error_gives_attaches_to_every_other_layer() -> None:
    """The error for a model holding Embedding and attention layers gives a loop as its fix; run as written, it
    attaches a posterior to exactly the Linear layers (a transformer layer's two and the head), with no warning."""
    model = flipes.flipout(
        nn.Sequential(nn.Embedding(10, 8), nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), nn.Linear(8, 3))
    )
    with pytest.raises(ValueError, match="FlipoutEmbedding, FlipoutMultiheadAttention") as err:
        attach_noise(model, GaussianPosterior)
    message = str(err.value)
    assert "\n" not in message
    loop = message.split("`")[1].replace(": if", ":\n    if").replace("): attach", "):\n        attach")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(loop, {"model": model, "noise": GaussianPosterior, "attach_noise": attach_noise})
    noisy = sorted(name.removesuffix(".backprop_noise") for name, _ in model.named_modules() if name.endswith("backprop_noise"))
    assert noisy == ["1.linear1", "1.linear2", "2"]


def test_attaching_noise_warns_about_weights_left_as_point_estimates() -> None:
    """A weight matrix with no Flipout form (a Bilinear's) would silently train without noise or KL term:
    attach_noise names it in one warning, attributed to the caller's line (this file); of 4 (5 layers, two tied) it
    names 3 and "1 more". Norm scales (1-D) and a frozen kernel are left out, and attaching to the Flipout layers alone
    (the explicit choice) warns about nothing."""
    model = flipes.flipout(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Bilinear(2, 2, 1), nn.Flatten(), nn.LayerNorm(25)))
    with pytest.warns(UserWarning, match=r"no backprop noise, for 1\.weight \(Bilinear\): point estimates") as rec:
        attach_noise(model, GaussianPosterior)
    assert len(rec) == 1 and "\n" not in str(rec[0].message) and "3.weight" not in str(rec[0].message)
    assert rec[0].filename == __file__
    bilinear = [nn.Bilinear(2, 2, 2) for _ in range(5)]
    bilinear[4].weight = bilinear[3].weight  # tied: one weight, named once
    many = flipes.flipout(nn.Sequential(nn.Conv2d(1, 2, 3), *bilinear))
    with pytest.warns(UserWarning, match=r"for 1\.weight \(Bilinear\), 2\.weight \(Bilinear\), 3\.weight "
                      r"\(Bilinear\) and 1 more: point estimates"):  # fmt: skip
        attach_noise(many, GaussianPosterior)
    fixed = flipes.flipout(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Bilinear(2, 2, 1)))
    fixed[1].requires_grad_(False)  # a kernel that does not train is no posterior's point estimate
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attach_noise(fixed, GaussianPosterior)
        attach_noise(model[0], GaussianPosterior)
        attach_noise(flipes.flipout(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 2))), GaussianPosterior)
        attach_noise(model, None)  # removing noise warns about nothing


def test_the_point_estimate_warning_names_a_parametrized_weight_as_its_layers_tensor() -> None:
    """A weight_norm Linear (kept a plain parametrized layer by ``flipout``, no Flipout form) beside a Flipout Linear:
    the one warning names ``0.weight (ParametrizedLinear)``, the tensor the user wrote, not the two internal
    ``parametrizations.weight.original0/1`` under torch's ``ParametrizationList``."""
    model = flipes.flipout(nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(3, 3)), nn.Linear(3, 2)))
    with pytest.warns(UserWarning) as rec:
        attach_noise(model, GaussianPosterior)
    assert len(rec) == 1
    assert "no backprop noise, for 0.weight (ParametrizedLinear): point estimates" in str(rec[0].message)
    assert "original" not in str(rec[0].message) and "ParametrizationList" not in str(rec[0].message)


def test_every_tensor_a_backprop_noise_model_makes_is_on_its_device() -> None:
    """Under the meta default device, each noise model on Linear, Conv2d, a grouped ConvTranspose2d, LSTM and an LSTM
    cell (a model built on the host) draws, backpropagates its ELBO and samples weights in eval mode with real tensors
    only: a factory without device= in a draw, the KL or the per-example forward would make a meta tensor, which fails
    where it meets the model's (on a GPU: a device mismatch)."""
    noises = (GaussianPosterior, functools.partial(MultiplicativeGaussian, alpha=0.1), functools.partial(DropConnect, p=0.5))
    with torch.device("cpu"):
        torch.manual_seed(0)
        x, seq = torch.randn(4, 1, 5, 5), torch.randn(4, 3, 2)
        convs = [(nn.Conv2d(1, 2, 3), nn.ConvTranspose2d(2, 2, 1, groups=2)) for _ in noises]
        models = [flipes.flipout(nn.Sequential(*c, nn.Flatten(), nn.Linear(18, 2))) for c in convs]
        lstms = [flipes.flipout(nn.ModuleList([nn.LSTM(2, 3, batch_first=True), nn.LSTMCell(3, 2)])) for _ in noises]
    torch.set_default_device("meta")
    try:
        assert torch.empty(1).is_meta  # the check is in force
        for model, lstm, noise in zip(models, lstms, noises, strict=True):
            for m in (model, lstm):
                attach_noise(m, noise)
            with fixed_noise(lstm):  # the cell runs step by step
                out = lstm[1](lstm[0](seq)[0][:, -1])[0]
            loss = model(x).square().mean() + out.square().mean() + flipes.kl_divergence(model) / 100
            loss.backward()
            model.eval()
            with sample_weights(model):
                model(x)
    finally:
        torch.set_default_device(None)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for m in models for p in m.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flipout_signs_follow_torchs_global_seed(dtype: torch.dtype) -> None:
    """The packed-bit sign draws come from torch's global generator: ``torch.manual_seed`` repeats a draw exactly
    (signs, bias and weight draws), another seed changes it, and every sign is exactly ±1 in the layer's dtype, also
    for a sign count that is no multiple of 8."""
    layer = FlipoutLinear(5, 3, dtype=dtype)
    attach_noise(layer, GaussianPosterior)
    slot, pw = layer_noise(layer).slots[0], layer.perturbed_weights()[0]
    draws = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        draws.append(slot.draw(pw, 7))  # 35 and 21 signs
    for a, b in zip(dataclasses.astuple(draws[0]), dataclasses.astuple(draws[1]), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(draws[0].s, draws[2].s)
    for signs in (draws[0].s, draws[0].r):
        assert signs.dtype == dtype and set(signs.unique().tolist()) == {-1.0, 1.0}


def test_packed_signs_from_the_global_generator_are_fair_per_bit_and_fresh_per_layer_and_call() -> None:
    """The packed-bit signs of two same-shaped layers in one forward, and of the next forward, are independent fair
    ±1: over 2**20 signs per draw, the mean of each of the 64 bit positions of a random word is within 5/√(2**14) of 0,
    and the lag-1, lag-8 and lag-64 products and the products of the two layers' and of two calls' signs average within
    5/√(2**20) of 0 (false alarm 5.7e-7 per statistic, < 2e-4 over the 271; seed fixed; measured at most 0.60 of a
    bound). A sampler reusing a buffer or a word would fail."""
    torch.manual_seed(13)
    model = flipes.flipout(nn.Sequential(nn.Linear(1024, 1024, bias=False), nn.Linear(1024, 1024, bias=False)))
    attach_noise(model, GaussianPosterior)
    draws = [record_draws(model[0]), record_draws(model[1])]
    x = torch.zeros(1024, 1024)
    with torch.no_grad():
        model(x), model(x)
    assert [len(d) for d in draws] == [2, 2]
    (first, second), (other_layer, _) = draws
    s, r, s_next, s_other = (t.flatten().double() for t in (first.s, first.r, second.s, other_layer.s))
    bound = 5 / math.sqrt(s.numel())
    for signs in (s, r, s_next, s_other):
        assert (signs.view(-1, 64).mean(0).abs() < 5 / math.sqrt(s.numel() / 64)).all()
        for lag in (1, 8, 64):
            assert abs((signs[lag:] * signs[:-lag]).mean().item()) < bound
    for u, v in ((s, r), (s, s_next), (s, s_other)):
        assert abs((u * v).mean().item()) < bound


def test_a_compiled_model_draws_fresh_per_example_noise() -> None:
    """``torch.compile`` of a model with a Gaussian posterior (``aot_eager``: the fake-tensor tracing inductor uses
    too) traces its draws: a batch of one input repeated 8 times gives 8 different outputs (one weight sample per
    example), two calls differ (fresh noise), and every ``ρ`` gets a nonzero gradient."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)))
    attach_noise(model, functools.partial(GaussianPosterior, init_sigma=0.5))
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(1, 4).expand(8, 4)
    out = compiled(x)
    assert len({tuple(row.tolist()) for row in out}) == 8
    assert not torch.equal(out, compiled(x))
    (out.square().sum() + flipes.kl_divergence(model)).backward()
    rhos = [p for name, p in model.named_parameters() if name.endswith("_rho")]
    assert len(rhos) == 4 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in rhos)


def test_a_posteriors_state_dict_restores_every_rho_and_its_means_load_into_the_plain_model() -> None:
    """A state dict of a model with a Gaussian posterior loads into a fresh converted model given a posterior by
    ``attach_noise`` (another ``init_sigma``): every tensor equal, so every σ restored; into the model before
    ``attach_noise`` it is refused for the ``ρ`` keys; with ``strict=False`` the plain ``nn`` model takes the means."""

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))

    torch.manual_seed(0)
    model = attach_noise(flipes.flipout(net()), GaussianPosterior)
    randomize_rho(model, 1)
    sd = model.state_dict()
    fresh = attach_noise(flipes.flipout(net()), functools.partial(GaussianPosterior, init_sigma=0.5))
    fresh.load_state_dict(sd)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), sd.values(), strict=True))
    with pytest.raises(RuntimeError, match=r"backprop_noise\.slots\.0\.weight_rho"):
        flipes.flipout(net()).load_state_dict(sd)
    plain = net()
    result = plain.load_state_dict(sd, strict=False)
    assert result.missing_keys == [] and len(result.unexpected_keys) == 4
    assert all(torch.equal(plain.state_dict()[k], sd[k]) for k in plain.state_dict())


def test_torch_func_gradients_of_a_noisy_model_equal_autograds() -> None:
    """``torch.func.grad`` through a model with Gaussian posteriors attached gives, under ``fixed_noise``, exactly the
    gradients ``backward()`` gives for every mean and ρ; and ``vmap(grad)`` per-example gradients of the mean network
    (eval mode) equal each example's own ``backward()`` to float64 rounding (vmap batches the matmuls, which a CPU's
    kernels may round otherwise: bit for bit on AMD EPYC, within 4.4e-16 on an Intel Xeon)."""
    torch.manual_seed(0)
    model = attach_noise(flipes.flipout(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))), GaussianPosterior)
    model.double()
    x, y = torch.randn(5, 3, dtype=DT), torch.randn(5, 2, dtype=DT)
    params = dict(model.named_parameters())

    def loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return ((torch.func.functional_call(model, p, (x,)) - y) ** 2).sum()

    with fixed_noise(model):
        grads = torch.func.grad(loss)(params, x, y)
        model.zero_grad()
        loss(params, x, y).backward()
    assert any("rho" in name for name in grads)
    for name, p in params.items():
        assert torch.equal(grads[name], p.grad), name
    model.eval()
    each = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x[:, None], y[:, None])
    for i in range(len(x)):
        model.zero_grad()
        loss(params, x[i : i + 1], y[i : i + 1]).backward()
        for name in ("0.weight", "2.bias"):
            torch.testing.assert_close(each[name][i], params[name].grad, rtol=1e-14, atol=1e-15, msg=str((i, name)))
