"""Flipout recurrent layers (Wen et al., ICLR 2018, arXiv:1803.04386, Sec. 3.3 and 4.3).

Both the input-to-hidden and the hidden-to-hidden weights are perturbed, and a member's signs
stay fixed for the whole sequence: they are sampled once per population (generation), so every
time step of member ``n`` uses the same weights ``W_n``. Resampling per step would give each
step a different network. In backprop training (``flipes.nn.variational``) the same holds per
example: ``FlipoutLSTM`` draws once per call, and cells must run inside ``fixed_noise``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from flipes.nn.base import FlipoutMixin, PerturbedWeight
from flipes.nn.functional import flipout_linear
from flipes.nn.inputs import refuse_non_tensor
from flipes.nn.variational import backprop_noise
from flipes.noise import SlotNoise


def _zeros_like_hidden(x: Tensor, hidden_size: int) -> Tensor:
    return x.new_zeros(*x.shape[:-1], hidden_size)


def _lstm_update(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """``(h', c')`` from the pre-activations ``(*, 4H)`` in torch's gate order i, f, g, o."""
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru_update(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    """``h'`` from the input and hidden projections ``(*, 3H)`` (biases included) in torch's order r, z, n.

    The gates' sigmoid runs on a view of each row's first 2H sums, row by row: on a whole contiguous tensor torch's
    CPU sigmoid computes its last few elements by a scalar path that rounds otherwise, so an element's bits would
    depend on how many rows (members: the process count) the tensor holds (as the LSTM's gates, chunks, never do)."""
    hidden = gi.shape[-1] // 3
    r, z = torch.sigmoid((gi + gh)[..., : 2 * hidden]).chunk(2, dim=-1)
    return (1 - z) * torch.tanh(gi[..., 2 * hidden :] + r * gh[..., 2 * hidden :]) + z * h


def _cell_noise(cell: FlipoutMixin, input: Tensor) -> tuple[tuple[SlotNoise, ...] | None, bool]:
    """(noise, unbatched): ES noise if a population is active, else backprop noise held by
    ``fixed_noise`` (per sequence), else ``None``."""
    if cell.noise is not None:
        return cell.noise, False
    try:
        unbatched = input.dim() == 1
    except AttributeError:  # a NumPy array or a list: named as nn.Linear would (a tensor pays nothing)
        refuse_non_tensor(type(cell).__name__, input, cell.weight_ih)
        raise
    return backprop_noise(cell, 1 if unbatched else input.shape[0], per_sequence=True), unbatched


def _check_input(layer: nn.Module, input: Tensor) -> None:
    """The input's features against ``input_size``: named as the recurrent layer's own argument, not a Linear's (a
    NumPy array or a list refused first, naming the conversion)."""
    if not isinstance(input, Tensor):  # a cell's weight_ih, a sequence layer's first layer's
        refuse_non_tensor(type(layer).__name__, input, getattr(layer, "weight_ih", getattr(layer, "weight_ih_l0", None)))
    if input.shape[-1] != layer.input_size:
        raise ValueError(
            f"{type(layer).__name__}: input of shape {tuple(input.shape)} has {input.shape[-1]} features, the layer takes "
            f"input_size={layer.input_size}; build it with input_size={input.shape[-1]}, or feed it {layer.input_size}"
        )


def _check_state(layer: nn.Module, states: tuple[Tensor, ...], expected: tuple[int, ...], names: tuple[str, ...]) -> None:
    """Each given hidden state is ``expected``, as torch.nn checks it: one of another size would be read wrongly by the
    population forward (extra layers ignored) or fail deep inside it."""
    for t, name in zip(states, names, strict=True):
        if tuple(t.shape) != expected:
            raise ValueError(
                f"{type(layer).__name__}: {name} of shape {tuple(t.shape)}, expected {expected} (as torch.nn's "
                f"{type(layer).__name__.removeprefix('Flipout')}: the input's batch, hidden_size={layer.hidden_size}"
                + (f", num_layers={layer.num_layers} first" if hasattr(layer, "num_layers") else "")
                + "); inside a population the batch is the members, or k per member, member-major"
            )


class FlipoutLSTMCell(FlipoutMixin, nn.LSTMCell):
    r"""A ``torch.nn.LSTMCell`` with Flipout on ``weight_ih`` and ``weight_hh``.

    With a backprop noise model attached and in training mode, it must run inside
    ``flipes.nn.fixed_noise(model)``, which keeps each example's weights for the whole sequence.

    Args: as ``nn.LSTMCell``.

    Shape:
        - Outside a population: as ``nn.LSTMCell``.
        - Inside a population of N members: input ``(N, *B, input_size)``, ``hx = (h, c)`` each
          ``(N, *B, hidden_size)`` (zeros if omitted) -> ``(h', c')``.

    Examples::

        >>> cell = FlipoutLSTMCell(4, 16)
        >>> es = flipes.FlipES(cell, popsize=8, sigma=0.1)
        >>> with es.population() as pop:
        ...     h = c = torch.zeros(pop.size, 16)
        ...     for x_t in torch.randn(10, pop.size, 4):   # same weights at every step
        ...         h, c = cell(x_t, (h, c))
    """

    has_backprop_noise = True

    def perturbed_weights(self) -> list[PerturbedWeight]:
        return [
            PerturbedWeight(self.weight_ih, self.bias_ih, self.input_size, 4 * self.hidden_size),
            PerturbedWeight(self.weight_hh, self.bias_hh, self.hidden_size, 4 * self.hidden_size),
        ]

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        noise, unbatched = _cell_noise(self, input)
        if noise is None:
            return super().forward(input, hx)
        _check_input(self, input)
        if hx is not None:
            _check_state(self, tuple(hx), (*input.shape[:-1], self.hidden_size), ("hx[0] (h)", "hx[1] (c)"))
        if unbatched:
            h, c = self.forward(input.unsqueeze(0), None if hx is None else (hx[0].unsqueeze(0), hx[1].unsqueeze(0)))
            return h.squeeze(0), c.squeeze(0)
        if hx is None:
            hx = (_zeros_like_hidden(input, self.hidden_size), _zeros_like_hidden(input, self.hidden_size))
        h, c = hx
        name = type(self).__name__
        gates = flipout_linear(input, self.weight_ih, self.bias_ih, noise[0], name)
        gates = gates + flipout_linear(h, self.weight_hh, self.bias_hh, noise[1], name)
        return _lstm_update(gates, c)


class FlipoutGRUCell(FlipoutMixin, nn.GRUCell):
    r"""A ``torch.nn.GRUCell`` with Flipout on ``weight_ih`` and ``weight_hh``.

    With a backprop noise model attached and in training mode, it must run inside
    ``flipes.nn.fixed_noise(model)``, which keeps each example's weights for the whole sequence.

    Args: as ``nn.GRUCell``.

    Shape:
        - Outside a population: as ``nn.GRUCell``.
        - Inside a population of N members: input ``(N, *B, input_size)``, ``hx``
          ``(N, *B, hidden_size)`` (zeros if omitted) -> ``h'``.
    """

    has_backprop_noise = True

    def perturbed_weights(self) -> list[PerturbedWeight]:
        return [
            PerturbedWeight(self.weight_ih, self.bias_ih, self.input_size, 3 * self.hidden_size),
            PerturbedWeight(self.weight_hh, self.bias_hh, self.hidden_size, 3 * self.hidden_size),
        ]

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        noise, unbatched = _cell_noise(self, input)
        if noise is None:
            return super().forward(input, hx)
        _check_input(self, input)
        if hx is not None:
            _check_state(self, (hx,), (*input.shape[:-1], self.hidden_size), ("hx",))
        if unbatched:
            return self.forward(input.unsqueeze(0), None if hx is None else hx.unsqueeze(0)).squeeze(0)
        h = _zeros_like_hidden(input, self.hidden_size) if hx is None else hx
        name = type(self).__name__
        gi = flipout_linear(input, self.weight_ih, self.bias_ih, noise[0], name)
        return _gru_update(gi, flipout_linear(h, self.weight_hh, self.bias_hh, noise[1], name), h)


class FlipoutRNNCell(FlipoutMixin, nn.RNNCell):
    r"""A ``torch.nn.RNNCell`` (tanh or relu) with Flipout on ``weight_ih`` and ``weight_hh``.

    Args: as ``nn.RNNCell``.

    Shape:
        - Outside a population: as ``nn.RNNCell``.
        - Inside a population of N members: input ``(N, *B, input_size)``, ``hx``
          ``(N, *B, hidden_size)`` (zeros if omitted) -> ``h'``.
    """

    has_backprop_noise = True

    def perturbed_weights(self) -> list[PerturbedWeight]:
        return [
            PerturbedWeight(self.weight_ih, self.bias_ih, self.input_size, self.hidden_size),
            PerturbedWeight(self.weight_hh, self.bias_hh, self.hidden_size, self.hidden_size),
        ]

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        noise, unbatched = _cell_noise(self, input)
        if noise is None:
            return super().forward(input, hx)
        _check_input(self, input)
        if hx is not None:
            _check_state(self, (hx,), (*input.shape[:-1], self.hidden_size), ("hx",))
        if unbatched:
            return self.forward(input.unsqueeze(0), None if hx is None else hx.unsqueeze(0)).squeeze(0)
        h = _zeros_like_hidden(input, self.hidden_size) if hx is None else hx
        name = type(self).__name__
        pre = flipout_linear(input, self.weight_ih, self.bias_ih, noise[0], name)
        pre = pre + flipout_linear(h, self.weight_hh, self.bias_hh, noise[1], name)
        return torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)


class _FlipoutRNNBase(FlipoutMixin):
    """The sequence loop shared by ``FlipoutLSTM``, ``FlipoutGRU`` and ``FlipoutRNN``: one weight
    sample per sequence, the input projection of all steps in one Flipout GEMM per layer."""

    has_backprop_noise = True
    gates: int  # rows of weight_ih per hidden unit: 4 (LSTM), 3 (GRU), 1 (RNN)
    num_layers: int
    hidden_size: int
    input_size: int
    bias: bool
    batch_first: bool
    dropout: float

    def perturbed_weights(self) -> list[PerturbedWeight]:
        pws = []
        for k in range(self.num_layers):
            fin = self.input_size if k == 0 else self.hidden_size
            for kind, size in (("ih", fin), ("hh", self.hidden_size)):
                bias = getattr(self, f"bias_{kind}_l{k}") if self.bias else None
                pws.append(PerturbedWeight(getattr(self, f"weight_{kind}_l{k}"), bias, size, self.gates * self.hidden_size))
        return pws

    def _step(self, gx: Tensor, gh: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The new state from this step's input and hidden projections (biases and noise included)."""
        raise NotImplementedError

    def forward(self, input: Tensor | PackedSequence, hx: Tensor | tuple[Tensor, Tensor] | None = None) -> tuple:
        if not isinstance(input, PackedSequence):  # a NumPy array or a list: one line naming the conversion
            refuse_non_tensor(type(self).__name__, input, self.weight_ih_l0)
        noise = self.noise
        if noise is None:  # backprop noise (drawn here for a padded batch; packed input: the error below)
            packed = isinstance(input, PackedSequence)
            batch = 1 if packed or input.dim() == 2 else input.shape[0 if self.batch_first else 1]
            noise = backprop_noise(self, batch)
        if noise is None:
            return super().forward(input, hx)  # type: ignore[misc]
        if isinstance(input, PackedSequence):
            raise TypeError(f"{type(self).__name__}: PackedSequence input is not supported with weight noise; pad the batch")
        if input.dim() not in (2, 3):
            layout = "(members·k, T, features)" if self.batch_first else "(T, members·k, features)"
            raise ValueError(
                f"{type(self).__name__}: expected 2-D or 3-D input, got {input.dim()}-D {tuple(input.shape)}; inside a "
                f"population the members are the batch: give k sequences per member member-major, {layout}"
                + (", x.flatten(0, 1) for (members, k, T, features)" if self.batch_first and input.dim() == 4 else "")
            )
        unbatched = input.dim() == 2
        x = input.unsqueeze(0) if unbatched else (input if self.batch_first else input.transpose(0, 1))  # (B, T, in)
        _check_input(self, x)
        state = None if hx is None else (tuple(hx) if isinstance(hx, tuple) else (hx,))
        if state is not None:
            batch = () if unbatched else (x.shape[0],)
            names = ("hx[0] (h_0)", "hx[1] (c_0)") if self.gates == 4 else ("hx (h_0)",)
            _check_state(self, state, (self.num_layers, *batch, self.hidden_size), names[: len(state)])
        if state is not None and unbatched:
            state = tuple(t.unsqueeze(1) for t in state)
        out, last = self._noisy_forward(x.contiguous(), state, noise)
        if unbatched:
            out, last = out.squeeze(0), tuple(t.squeeze(1) for t in last)
        out = out if unbatched or self.batch_first else out.transpose(0, 1).contiguous()  # as torch.nn
        return out, (last if len(last) > 1 else last[0])

    def _noisy_forward(
        self, x: Tensor, hx: tuple[Tensor, ...] | None, noise: tuple[SlotNoise, ...]
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """``x`` batch-major ``(B, T, in)``; every batch entry runs through its member's weights."""
        batch, steps, hidden = x.shape[0], x.shape[1], self.hidden_size
        members = noise[0].size
        if batch % members:
            raise ValueError(
                f"{type(self).__name__}: batch of {batch} sequences with noise for {members} members; "
                f"the batch must be the members, or k sequences per member (a multiple of {members}, member-major)"
            )
        k = batch // members
        if hx is None:
            zeros = x.new_zeros(self.num_layers, batch, hidden)
            hx = (zeros, zeros) if self.gates == 4 else (zeros,)
        name, pws = type(self).__name__, self.perturbed_weights()
        last: list[list[Tensor]] = [[] for _ in hx]
        for layer in range(self.num_layers):
            ih, hh = pws[2 * layer], pws[2 * layer + 1]
            n_ih, n_hh = noise[2 * layer], noise[2 * layer + 1]
            # the input projection of all steps at once, members first: (N, k·T, in)
            xm = x.view(members, k * steps, x.shape[-1])
            gx = flipout_linear(xm, ih.weight, ih.bias, n_ih, name).view(batch, steps, -1)
            state = tuple(t[layer] for t in hx)
            outs = []
            for t in range(steps):
                h = state[0]
                hm = h if k == 1 else h.reshape(members, k, hidden)
                gh = flipout_linear(hm, hh.weight, hh.bias, n_hh, name).view(batch, -1)
                state = self._step(gx[:, t], gh, state)
                outs.append(state[0])
            x = torch.stack(outs, dim=1)
            for acc, t in zip(last, state, strict=True):
                acc.append(t)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x, tuple(torch.stack(acc) for acc in last)


class FlipoutLSTM(_FlipoutRNNBase, nn.LSTM):
    r"""A ``torch.nn.LSTM`` with Flipout on every layer's ``weight_ih_l{k}`` and ``weight_hh_l{k}``.

    Each sequence (batch entry) has ONE weight sample for all its time steps. Outside an ES
    population and without backprop noise it is exactly ``nn.LSTM`` (cuDNN included).

    - In an ES population (``flipes.FlipES``): two noise slots per layer (``ih``, ``hh``), and the
      members are the batch dimension: dim 1 of ``(T, B, input_size)`` (``batch_first=False``) or
      dim 0 of ``(B, T, input_size)``. ``B`` is the population size, or a multiple ``N·k`` of it
      for ``k`` sequences per member, member-major (batch entry ``n·k + j`` is member ``n``).
    - In backprop training with a noise model attached (``flipes.nn.attach_noise``): every
      sequence of the batch is one example with its own weights, drawn once per call; inside
      ``flipes.nn.fixed_noise`` the draw is kept across calls (a sequence fed in chunks).

    Args: as ``nn.LSTM``; ``bidirectional=True`` and ``proj_size > 0`` are not supported.

    Shape: as ``nn.LSTM`` (``PackedSequence`` input only outside noise).

    Examples::

        >>> lstm = FlipoutLSTM(8, 32, num_layers=2, batch_first=True)
        >>> es = flipes.FlipES(lstm, popsize=16, sigma=0.1)
        >>> with es.population() as pop:
        ...     out, (h, c) = lstm(torch.randn(pop.size, 10, 8))   # (16, 10, 32)
    """

    gates = 4

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size, device, dtype)
        check_rnn_supported(self)

    def _step(self, gx: Tensor, gh: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return _lstm_update(gx + gh, state[1])


class FlipoutGRU(_FlipoutRNNBase, nn.GRU):
    r"""A ``torch.nn.GRU`` with Flipout on every layer's ``weight_ih_l{k}`` and ``weight_hh_l{k}``.

    As ``FlipoutLSTM``: one weight sample per sequence, members are the batch dimension (``N`` or
    ``N·k`` member-major), exactly ``nn.GRU`` outside noise.

    Args: as ``nn.GRU``; ``bidirectional=True`` is not supported.

    Shape: as ``nn.GRU``.
    """

    gates = 3

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device=device, dtype=dtype
        )
        check_rnn_supported(self)

    def _step(self, gx: Tensor, gh: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return (_gru_update(gx, gh, state[0]),)


class FlipoutRNN(_FlipoutRNNBase, nn.RNN):
    r"""A ``torch.nn.RNN`` (tanh or relu) with Flipout on every layer's ``weight_ih_l{k}`` and ``weight_hh_l{k}``.

    As ``FlipoutLSTM``: one weight sample per sequence, members are the batch dimension (``N`` or
    ``N·k`` member-major), exactly ``nn.RNN`` outside noise.

    Args: as ``nn.RNN``; ``bidirectional=True`` is not supported.

    Shape: as ``nn.RNN``.
    """

    gates = 1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(  # by keyword: torch < 2.3's nn.RNN takes nonlinearity by keyword alone (its *args skip it)
            input_size,
            hidden_size,
            num_layers,
            nonlinearity=nonlinearity,
            bias=bias,
            batch_first=batch_first,
            dropout=dropout,
            bidirectional=bidirectional,
            device=device,
            dtype=dtype,
        )
        check_rnn_supported(self)

    def _step(self, gx: Tensor, gh: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return (torch.tanh(gx + gh) if self.nonlinearity == "tanh" else torch.relu(gx + gh),)


def check_rnn_supported(rnn: nn.RNNBase) -> None:
    """Raise a clear error for the ``nn.LSTM``/``nn.GRU``/``nn.RNN`` options Flipout does not handle here."""
    proj = getattr(rnn, "proj_size", 0)
    if rnn.bidirectional or proj:
        raise ValueError(
            f"Flipout{type(rnn).__name__.removeprefix('Flipout')} supports unidirectional layers without projections; got "
            f"bidirectional={rnn.bidirectional}, proj_size={proj} (build the reverse direction from a second layer on the "
            "reversed sequence, or use the cell; or freeze it: flipes.flipout(model, frozen=[...]))"
        )
