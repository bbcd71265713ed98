"""Every member's Flipout output equals a plain layer with its explicit weights."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from reference import member_deltas
from torch import nn

import flipes
from flipes.nn import FlipoutConv2d, FlipoutGRUCell, FlipoutLinear, FlipoutLSTMCell

DT = torch.float64
TOL = 1e-10
# (mirrored, groups) with popsize 12: 12 / groups members per group, even where mirrored
SETTINGS = [(False, 1), (True, 1), (True, 2), (False, 3), (True, 6)]
N = 12
RANKS = [None, 2]  # full-rank ε, and low-rank ε = A B / √r


def rand_shape(gen: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (1,), generator=gen))


@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("mirrored,groups", SETTINGS)
@pytest.mark.parametrize("trial", range(3))
def test_linear_members_equal_explicit_weights(
    mirrored: bool, groups: int, trial: int, rank: int | None, device: torch.device
) -> None:
    """Random layer sizes, with and without a bias, every (mirrored, groups) setting, full or rank-2 noise: member n's
    output for (N, in), (N, B, in) and (N, 2, B, in) inputs equals ``F.linear`` with W̄ + δ_n and b̄ + δb_n
    materialized from the population's noise, to 1e-10 absolute (float64); outside a population the layer is exactly
    the mean ``F.linear``."""
    gen = torch.Generator().manual_seed(100 + trial)
    fin, fout, batch = rand_shape(gen, 1, 40), rand_shape(gen, 1, 40), rand_shape(gen, 1, 4)
    torch.manual_seed(trial)
    layer = FlipoutLinear(fin, fout, bias=trial != 1, dtype=DT, device=device)
    es = flipes.FlipES(layer, popsize=N, sigma=0.3, seed=trial, groups=groups, mirrored=mirrored, noise_rank=rank)
    for shape in [(N, fin), (N, batch, fin), (N, 2, batch, fin)]:
        x = torch.randn(shape, dtype=DT, device=device)
        with es.population():
            y = layer(x)
            noise = layer.noise[0]
        deltas = member_deltas(noise, tuple(layer.weight.shape))
        for n in range(N):
            b = None if layer.bias is None else layer.bias + noise.bias[n]
            expect = F.linear(x[n], layer.weight + deltas[n], b)
            torch.testing.assert_close(y[n], expect, atol=TOL, rtol=0)
    assert torch.equal(layer(x[0]), F.linear(x[0], layer.weight, layer.bias))  # outside: the mean net


@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("mirrored,groups", SETTINGS)
@pytest.mark.parametrize(
    "conv_kw",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=(2, 3), stride=2, groups=2, bias=False),
        dict(kernel_size=3, padding=2, dilation=2, padding_mode="reflect", groups=2),
        dict(kernel_size=1, padding=1, padding_mode="circular"),
    ],
)
def test_conv2d_members_equal_explicit_weights(
    mirrored: bool, groups: int, conv_kw: dict, rank: int | None, device: torch.device
) -> None:
    """With padding, stride, channel groups, dilation, reflect and circular padding: member n's output equals a plain
    convolution with its own kernel W̄ + δ_n and bias, to 1e-10 absolute; the signs have shapes (N, in_channels) and
    (N, out_channels), so δ_n is one kernel for all positions."""
    torch.manual_seed(groups)
    cin, cout = 4, 6
    conv = FlipoutConv2d(cin, cout, dtype=DT, device=device, **conv_kw)
    es = flipes.FlipES(conv, popsize=N, sigma=0.2, seed=7, groups=groups, mirrored=mirrored, noise_rank=rank)
    x = torch.randn(N, 2, cin, 7, 8, dtype=DT, device=device)
    with es.population():
        y = conv(x)
        noise = conv.noise[0]
    deltas = member_deltas(noise, tuple(conv.weight.shape), conv.groups)
    plain = nn.Conv2d(cin, cout, dtype=DT, device=device, **conv_kw)
    for n in range(N):
        b = None if conv.bias is None else conv.bias + noise.bias[n]
        expect = plain._conv_forward(x[n], conv.weight + deltas[n], b)
        torch.testing.assert_close(y[n], expect, atol=TOL, rtol=0)
    # signs are per (member, channel): the perturbation of member n is ONE kernel for all positions
    assert noise.s.shape == (N, cin) and noise.r.shape == (N, cout)


@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("mirrored,groups", SETTINGS)
@pytest.mark.parametrize(
    "dims,conv_kw",
    [
        (2, dict(kernel_size=3, stride=2, padding=1, output_padding=1)),
        (2, dict(kernel_size=(2, 3), stride=(2, 1), groups=2, dilation=2, bias=False)),
        (1, dict(kernel_size=4, stride=3, padding=2, groups=2, output_padding=1)),
        (3, dict(kernel_size=2, stride=2)),
    ],
)
def test_transposed_conv_members_equal_explicit_weights(
    mirrored: bool, groups: int, dims: int, conv_kw: dict, rank: int | None, device: torch.device
) -> None:
    """ConvTranspose1d/2d/3d with stride, padding, output padding, channel groups and dilation: member n's output equals
    ``F.conv_transposeNd`` with its own kernel W̄ + δ_n, δ_n built entry by entry in the stored (in, out // groups, ...)
    shape from the population's noise, and its own bias, to 1e-10 absolute (float64); one sign per (member, channel)."""
    torch.manual_seed(groups)
    cin, cout = 4, 6
    conv = flipes.flipout(getattr(nn, f"ConvTranspose{dims}d")(cin, cout, dtype=DT, device=device, **conv_kw))
    es = flipes.FlipES(conv, popsize=N, sigma=0.2, seed=7, groups=groups, mirrored=mirrored, noise_rank=rank)
    x = torch.randn(N, 2, cin, *(5,) * dims, dtype=DT, device=device)
    with es.population():
        y = conv(x)
        noise = conv.noise[0]
    layout = (cout, cin // conv.groups, *conv.kernel_size)  # the noise's (out, in // groups, *kernel)
    deltas = member_deltas(noise, layout, conv.groups, transposed=True)
    assert deltas.shape[1:] == conv.weight.shape
    plain = getattr(F, f"conv_transpose{dims}d")
    kw = dict(stride=conv.stride, padding=conv.padding, output_padding=conv.output_padding, groups=conv.groups)
    for n in range(N):
        b = None if conv.bias is None else conv.bias + noise.bias[n]
        expect = plain(x[n], conv.weight + deltas[n], b, dilation=conv.dilation, **kw)
        torch.testing.assert_close(y[n], expect, atol=TOL, rtol=0)
    assert noise.s.shape == (N, cin) and noise.r.shape == (N, cout)
    assert torch.equal(conv(x[0]), plain(x[0], conv.weight, conv.bias, dilation=conv.dilation, **kw))  # outside: the mean


def impulse_kernels(conv: nn.Module, members: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inside a population: each member's kernel ``(members, in, out // groups, *kernel)`` and bias read off the layer's
    own outputs, with no knowledge of the noise's layout: with stride 1 and no padding or dilation, a one-pixel input
    with channel i alone at 1 gives kernel row i on the outputs of i's group (and the bias), zero input the bias."""
    dims, ones = conv.weight.dim() - 2, (1,) * (conv.weight.dim() - 2)
    kept = conv.stride, conv.padding, conv.output_padding, conv.dilation
    conv.stride, conv.padding, conv.output_padding, conv.dilation = ones, (0,) * dims, (0,) * dims, ones
    try:
        zero = conv(torch.zeros(members, conv.in_channels, *ones, dtype=DT))
        rows = conv(torch.eye(conv.in_channels, dtype=DT).expand(members, -1, -1).reshape(-1, conv.in_channels, *ones))
    finally:
        conv.stride, conv.padding, conv.output_padding, conv.dilation = kept
    out_g, in_g = conv.out_channels // conv.groups, conv.in_channels // conv.groups
    rows = (rows.view(members, conv.in_channels, *zero.shape[1:]) - zero[:, None]).unflatten(2, (conv.groups, out_g))
    group = torch.arange(conv.in_channels) // in_g
    return rows[:, torch.arange(conv.in_channels), group], zero.flatten(2)[:, :, 0]


@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("mirrored,groups", [(True, 2), (False, 3)])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_transposed_conv_kernels_read_off_its_outputs_give_its_members_and_gradient(
    dims: int, mirrored: bool, groups: int, rank: int | None
) -> None:
    """A reference independent of the noise's layout: each member's kernel and bias read off the layer's own outputs
    (:func:`impulse_kernels`) give its output with stride, padding, output padding, dilation and channel groups
    (F.conv_transposeNd, 1e-10), ``member_state_dict`` (1e-12), and tell's ``.grad`` with raw fitness, -Σ_n F_n
    (W_n - W̄) / (Nσ²) (1e-12 absolute + 1e-9 relative; float64): the input-side sign and the output-side sign sit
    on the same dims of the (in, out // groups, ...) kernel in the forward, the members and the gradient."""
    torch.manual_seed(dims)
    sigma, kw = 0.1, dict(kernel_size=3, stride=2, padding=1, output_padding=1, dilation=2)
    conv = flipes.flipout(getattr(nn, f"ConvTranspose{dims}d")(4, 6, groups=1 if rank else 2, dtype=DT, **kw))
    es = flipes.FlipES(
        conv, popsize=N, sigma=sigma, seed=3, groups=groups, mirrored=mirrored, noise_rank=rank,
        shaping=lambda f: f, optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
    )  # fmt: skip
    x = torch.randn(N, 2, 4, *(4,) * dims, dtype=DT)
    mean_w, mean_b = conv.weight.detach().clone(), conv.bias.detach().clone()
    with es.population():
        kernels, biases = impulse_kernels(conv, N)
        y = conv(x)
        states = [es.member_state_dict(n) for n in range(N)]
    plain = getattr(F, f"conv_transpose{dims}d")
    for n in range(N):
        kw_n = dict(stride=conv.stride, padding=conv.padding, output_padding=conv.output_padding, groups=conv.groups)
        expect = plain(x[n], kernels[n], biases[n], dilation=conv.dilation, **kw_n)
        torch.testing.assert_close(y[n], expect, atol=TOL, rtol=0)
        torch.testing.assert_close(states[n]["weight"], kernels[n], atol=1e-12, rtol=0)
        torch.testing.assert_close(states[n]["bias"], biases[n], atol=1e-12, rtol=0)
    fitness = torch.randn(N, dtype=DT)
    es.tell(fitness)
    expect_w = -(fitness.view(-1, *(1,) * (dims + 2)) * (kernels - mean_w)).sum(0) / (N * sigma**2)
    torch.testing.assert_close(conv.weight.grad, expect_w, atol=1e-12, rtol=1e-9)
    expect_b = -(fitness[:, None] * (biases - mean_b)).sum(0) / (N * sigma**2)
    torch.testing.assert_close(conv.bias.grad, expect_b, atol=1e-12, rtol=1e-9)


def run_sequence(cell: nn.Module, xs: torch.Tensor, lstm: bool) -> list[torch.Tensor]:
    h = torch.zeros(*xs.shape[1:-1], cell.hidden_size, dtype=DT, device=xs.device)
    state = (h, h.clone()) if lstm else h
    outs = []
    for x in xs:
        state = cell(x, state)
        outs.append(state[0] if lstm else state)
    return outs


@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("mirrored,groups", SETTINGS)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_recurrent_cell_members_equal_explicit_weights_over_a_sequence(
    mirrored: bool, groups: int, kind: str, rank: int | None, device: torch.device
) -> None:
    """LSTM and GRU cells over 9 steps: member n's hidden state at every step equals torch's own cell with member n's
    weights and biases held fixed over the sequence, to 1e-10 absolute."""
    torch.manual_seed(3)
    lstm = kind == "lstm"
    cls, ref_cls = (FlipoutLSTMCell, nn.LSTMCell) if lstm else (FlipoutGRUCell, nn.GRUCell)
    fin, hidden, steps = 5, 7, 9
    cell = cls(fin, hidden, dtype=DT, device=device)
    es = flipes.FlipES(cell, popsize=N, sigma=0.3, seed=1, groups=groups, mirrored=mirrored, noise_rank=rank)
    xs = torch.randn(steps, N, 3, fin, dtype=DT, device=device)
    with es.population():
        outs = run_sequence(cell, xs, lstm)
        n_ih, n_hh = cell.noise
    d_ih = member_deltas(n_ih, tuple(cell.weight_ih.shape))
    d_hh = member_deltas(n_hh, tuple(cell.weight_hh.shape))
    for n in range(N):
        ref = ref_cls(fin, hidden, dtype=DT, device=device)  # torch's own cell with member n's weights, fixed over time
        with torch.no_grad():
            ref.weight_ih.copy_(cell.weight_ih + d_ih[n])
            ref.weight_hh.copy_(cell.weight_hh + d_hh[n])
            ref.bias_ih.copy_(cell.bias_ih + n_ih.bias[n])
            ref.bias_hh.copy_(cell.bias_hh + n_hh.bias[n])
            ref_outs = run_sequence(ref, xs[:, n], lstm)
        for t in range(steps):
            torch.testing.assert_close(outs[t][n], ref_outs[t], atol=TOL, rtol=0)


def test_recurrent_dropout_in_training_mode_falls_between_layers_only() -> None:
    """As in nn.GRU, dropout in training mode falls on every layer's outputs but the last's: inside a population the
    sequence output's last step is bit for bit the last layer's final hidden state, and the dropout between the
    layers does act (two calls on the same input differ; fixed seed, 120 dropout draws)."""
    torch.manual_seed(0)
    gru = flipes.flipout(nn.GRU(4, 6, num_layers=2, dropout=0.5, batch_first=True))
    es = flipes.FlipES(gru, popsize=4, sigma=0.1, seed=0)
    x = torch.randn(4, 5, 4)
    with es.population():
        out, h = gru(x)
        again, _ = gru(x)
    assert torch.equal(out[:, -1], h[-1])
    assert not torch.equal(out, again)


def test_flipout_converts_sharing_parameters_and_is_exact_outside_a_population() -> None:
    """``flipes.flipout`` converts a model in place (returning it): conv, linear, LSTM and GRU cells become Flipout
    layers and a LayerNorm gets per-member dense noise; every parameter is the same tensor object as before and the
    output outside a population equals the original's bit for bit; a bare nn.Linear becomes a FlipoutLinear that
    shares its weight and bias and gives its outputs."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(4 * 5 * 5, 16), nn.Tanh())
            self.cell = nn.LSTMCell(16, 8)
            self.gru = nn.GRUCell(8, 8)
            self.norm = nn.LayerNorm(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, _ = self.cell(self.body(self.conv(x)))
            return self.norm(self.gru(h))

    net = Net()
    params = dict(net.named_parameters())
    x = torch.randn(6, 3, 5, 5)
    before = net(x)
    converted = flipes.flipout(net)
    assert converted is net
    assert isinstance(net.conv, FlipoutConv2d) and isinstance(net.body[1], FlipoutLinear)
    assert isinstance(net.cell, FlipoutLSTMCell) and isinstance(net.gru, FlipoutGRUCell)
    assert isinstance(net.norm, nn.LayerNorm) and isinstance(net.norm, flipes.nn.PerMember)  # dense per-member noise
    for name, p in net.named_parameters():
        assert p is params[name], name
    assert torch.equal(net(x), before)

    bare = nn.Linear(3, 2)
    layer = flipes.flipout(bare)
    assert isinstance(layer, FlipoutLinear) and layer.weight is bare.weight and layer.bias is bare.bias
    x = torch.randn(4, 3)
    assert torch.equal(layer(x), bare(x))


def test_a_converted_layer_shares_the_originals_parameters_but_not_its_containers() -> None:
    """The Flipout layer that ``flipes.flipout`` makes of a layer holds the original's very Parameter objects in
    containers of its own: a noise model attached to it (a submodule with parameters), a buffer and a parameter
    registered on it leave the original nn.Linear (which a caller may still hold) with its weight and bias alone."""
    bare = nn.Linear(3, 2)
    model = flipes.flipout(nn.Sequential(bare, nn.Tanh()))
    layer = model[0]
    assert isinstance(layer, FlipoutLinear) and layer is not bare
    assert layer.weight is bare.weight and layer.bias is bare.bias
    flipes.nn.attach_noise(model, flipes.nn.GaussianPosterior)
    layer.register_buffer("extra", torch.zeros(1))
    layer.register_parameter("more", nn.Parameter(torch.zeros(1)))
    assert {"backprop_noise.slots.0.weight_rho", "extra", "more"} <= set(layer.state_dict())
    assert list(bare.state_dict()) == ["weight", "bias"] and list(bare.children()) == []


def test_a_converted_recurrent_layer_has_its_own_list_of_weights_for_the_fused_kernel() -> None:
    """An LSTM's fused forward reads its weights from a list (``_flat_weights``) that assigning a parameter updates in
    place: the converted layer gets a list of its own, so a weight assigned to it is the one its plain forward uses,
    and the original nn.LSTM (which a caller may still hold) keeps computing with its own weights."""
    torch.manual_seed(0)
    bare = nn.LSTM(3, 4, batch_first=True)
    x = torch.randn(2, 5, 3)
    before = bare(x)[0]
    layer = flipes.flipout(nn.Sequential(bare))[0]
    layer.weight_hh_l0 = nn.Parameter(torch.zeros_like(bare.weight_hh_l0))
    torch.testing.assert_close(bare(x)[0], before, atol=0, rtol=0)
    plain = copy.deepcopy(bare)
    plain.weight_hh_l0 = nn.Parameter(torch.zeros_like(bare.weight_hh_l0))
    torch.testing.assert_close(layer(x)[0], plain(x)[0], atol=0, rtol=0)


def test_flipout_without_trainable_parameters_is_an_error() -> None:
    """Converting a model without a trainable parameter raises a ValueError saying so."""
    with pytest.raises(ValueError, match="no trainable parameter"):
        flipes.flipout(nn.Sequential(nn.ReLU()))


def test_a_reused_or_aliased_layer_becomes_one_flipout_layer() -> None:
    """A Linear used twice in a Sequential and aliased under another attribute becomes one FlipoutLinear object in all
    three places and one ES slot: each member uses the same W̄ + δ_n at both uses, its output equal to the explicit
    two-layer computation within 1e-6 (float32)."""
    lin = nn.Linear(3, 3)
    net = nn.Sequential(lin, nn.Tanh(), lin)
    holder = nn.Module()
    holder.net, holder.head = net, lin  # an alias too
    flipes.flipout(holder)
    assert isinstance(net[0], FlipoutLinear) and net[2] is net[0] and holder.head is net[0]
    es = flipes.FlipES(holder, popsize=4)
    assert len(es.slots) == 1  # one weight, one perturbation per member, used twice
    x = torch.randn(4, 3)
    with es.population():
        y = net(x)
        d = member_deltas(net[0].noise[0], (3, 3))
        b = net[0].noise[0].bias
    for n in range(4):
        w, bias = net[0].weight + d[n], net[0].bias + b[n]
        expect = F.linear(torch.tanh(F.linear(x[n], w, bias)), w, bias)
        torch.testing.assert_close(y[n], expect, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("groups", [1, 3])
def test_non_contiguous_inputs_give_the_contiguous_result(groups: int, rank: int | None) -> None:
    """Transposed, strided and channels-last inputs: the same outputs as their contiguous copies."""
    torch.manual_seed(0)
    layer = FlipoutLinear(5, 4, dtype=DT)
    conv = FlipoutConv2d(3, 4, 3, padding=1, dtype=DT)
    model = nn.ModuleList([layer, conv])
    es = flipes.FlipES(model, popsize=N, sigma=0.2, groups=groups, mirrored=False, noise_rank=rank)
    inputs = [
        (layer, torch.randn(2, N, 5, dtype=DT).transpose(0, 1)),
        (layer, torch.randn(5, N, dtype=DT).T),
        (layer, torch.randn(N, 10, dtype=DT)[:, ::2]),
        (conv, torch.randn(N, 3, 6, 6, dtype=DT).to(memory_format=torch.channels_last)),
    ]
    with es.population():
        for module, x in inputs:
            assert not x.is_contiguous()
            torch.testing.assert_close(module(x), module(x.contiguous()), atol=TOL, rtol=0)
