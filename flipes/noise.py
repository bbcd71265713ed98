"""Counter-keyed sampling of Flipout noise: ε, sign bits and bias noise.

Wen et al., "Flipout: Efficient Pseudo-Independent Weight Perturbations on Mini-Batches",
ICLR 2018 (arXiv:1803.04386). Low-rank ε (``A Bᵀ/√r``) is the perturbation of EGGROLL: Sarkar et al.,
"Evolution Strategies at the Hyperscale", 2025 (arXiv:2511.16652).

Every random tensor of a generation is a pure function of ``(seed, generation, group, slot)``:
a fresh generator is keyed by a hash of that tuple. Nothing needs to be stored beyond
a generation, and a group's noise does not depend on which process samples it or on which other
groups exist. Streams are reproducible per device type (CPU and CUDA generators differ).
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor


def compiling() -> bool:
    """Inside ``torch.compile`` (or ``torch.export``) tracing: the per-generation workspace of
    :class:`SlotNoise` is then left alone, since its key reads ``torch.is_inference_mode_enabled()``,
    which Dynamo cannot trace (a graph break in every layer), and a compiled graph plans its own
    buffers. torch < 2.3 has no ``torch.compiler.is_compiling``: ``torch._utils.is_compiling`` stands in."""
    return _is_compiling is not None and bool(_is_compiling())


# looked up once: compiling() runs in every layer call (torch < 2.3: torch._utils.is_compiling)
_is_compiling = getattr(torch.compiler, "is_compiling", None) or getattr(torch._utils, "is_compiling", None)


def stream_seed(seed: int, generation: int, group: int, slot: int) -> int:
    """A 63-bit generator seed derived from the full key (blake2b: keys never collide in practice)."""
    msg = b"flipes/v1/%d/%d/%d/%d" % (int(seed), int(generation), int(group), int(slot))  # decimal, as str(int(v))
    return int.from_bytes(hashlib.blake2b(msg, digest_size=8).digest(), "little") >> 1


def generator(device: torch.device, seed: int) -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed`` (a :func:`stream_seed`). CPU and
    CUDA generators give different numbers for one seed, so streams are reproducible per device type."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def sign_table(dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(256, 8)``: row ``b`` holds the 8 signs of byte value ``b`` (bit set -> +1) in the compute dtype."""
    bits = (torch.arange(256, device=device)[:, None] >> torch.arange(8, device=device)) & 1
    return (bits * 2 - 1).to(dtype)


def shared_sign_table(dtype: torch.dtype, device: torch.device) -> Tensor:
    """:func:`sign_table`, made once per dtype and device and shared (nobody writes it): building it
    takes eight small ops, which every generation would otherwise pay again."""
    return _cached_sign_table(dtype, torch.device(device))


@functools.cache
def _cached_sign_table(dtype: torch.dtype, device: torch.device) -> Tensor:
    with torch.inference_mode(False), torch.no_grad():  # a plain tensor, usable in and out of inference mode
        return sign_table(dtype, device)


def random_bytes(numel: int, gen: torch.Generator | None, device: torch.device) -> Tensor:
    """``numel`` uniform random bytes, 8 per 64-bit draw (``gen=None``: torch's global generator)."""
    words = torch.empty((numel + 7) // 8, dtype=torch.int64, device=device)
    words.random_(-(2**63), None, generator=gen)  # the full 64-bit range: every bit is fair
    return words.view(torch.uint8)[:numel]


def rademacher(numel: int, gen: torch.Generator | None, table: Tensor) -> Tensor:
    """``numel`` independent ±1 values in ``table``'s dtype and device (``table = sign_table(...)``;
    ``gen=None``: torch's global generator).

    One 64-bit draw gives 64 signs and one gather unpacks every byte into 8 values of the compute
    dtype (on CPU ~20× faster than ``torch.randint`` per element).
    """
    return table.index_select(0, random_bytes((numel + 7) // 8, gen, table.device).int()).view(-1)[:numel]


@dataclass
class SlotNoise:
    """The noise of one perturbed weight ("slot") for the members a process evaluates.

    Member ``n`` of local group ``g`` (members are contiguous, ``n_g`` per group) has the weight
    perturbation ``σ·u_n = σε_g ∘ (r_n ⊗ s_n)`` (broadcast over kernel dims) and the bias
    perturbation ``bias[n] = bias_r[n] ∘ r_n``. ``eps``, ``factors`` and ``bias_r`` include σ.

    Full rank, ``σε_g = eps[g]``; low rank (``factors = (a, b)``), ``σε_g = a[g] b[g]``: a rank-r
    product whose entries still have mean 0 and variance σ² and are uncorrelated. Low-rank slots
    also share their bias noise within a group, ``σε_b,g ∘ r_n`` (``bias_eps``), sign-flipped per
    member like the weights: it then rides in the thin GEMM instead of an N×out tensor.

    Shape:
        - eps: ``(G, *weight.shape)``, σ·ε per group; ``None`` when ``factors`` hold the noise
        - factors: ``None``, or ``a`` ``(G, out_channels, r)`` (holds σ/√r) and ``b``
          ``(G, r, *weight.shape[1:])``
        - s: ``(n, in_channels)``, r: ``(n, out_channels)``: ±1 in the weight's dtype
        - bias_eps: ``(G, out_channels)`` or ``None``: the group's bias noise of a low-rank slot
        - bias_r: ``(n, out_channels)`` or ``None``: the bias noise times ``r`` (what the forward adds
          before the output sign flip; equal for mirrored twins)
        - mirrored: rows ``2k+1`` are the antithetic twins of rows ``2k``
    """

    eps: Tensor | None
    s: Tensor
    r: Tensor
    bias_r: Tensor | None
    mirrored: bool
    factors: tuple[Tensor, Tensor] | None = None
    bias_eps: Tensor | None = None
    workspace: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict:
        """Copied and pickled without the workspace, a cache of views into buffers: pickle copies each view on its
        own, so a copy's forward would write a group's rows of a buffer and read the unshared buffer."""
        return {**self.__dict__, "workspace": {}}

    @property
    def size(self) -> int:
        return self.s.shape[0]

    @property
    def groups(self) -> int:
        return (self.eps if self.eps is not None else self.factors[0]).shape[0]

    @property
    def rank(self) -> int | None:
        """``r`` of low-rank noise, ``None`` for full rank."""
        return None if self.factors is None else self.factors[0].shape[-1]

    def scratch(self, like: Tensor) -> Tensor | None:
        """A buffer shaped like ``like``, reused for this generation's forward passes, or ``None``
        under autograd (which may keep intermediates alive) or ``torch.compile`` (see :func:`compiling`).
        Fresh multi-MB tensors on every call cost page faults on CPU: up to a third of a low-rank
        population forward."""
        if torch.is_grad_enabled() or compiling():
            return None
        # an inference tensor cannot be written outside inference mode (nor a normal one reused in it)
        key = (like.shape, like.dtype, like.device, torch.is_inference_mode_enabled())
        if key not in self.workspace:
            self.workspace[key] = torch.empty_like(like, memory_format=torch.contiguous_format)
        return self.workspace[key]

    def scratch_blocks(self, tag: str, columns: int, like: Tensor) -> tuple[Tensor, list[Tensor]]:
        """A buffer of ``size`` rows of ``columns`` in ``like``'s dtype and device for this generation's forward
        passes (not under autograd), and each group's block of rows: views made once, not on every call.
        Every block starts on a 64-byte boundary: a CPU BLAS rounds a product by its first operand's address
        (MKL by its address mod 16 bytes), so a group's rows must sit at one alignment whatever groups the
        process holds beside them. Where the blocks need padding between them the buffer is ``(groups, size /
        groups, columns)`` and not contiguous; else ``(size, columns)``."""
        reuse = not compiling()  # compiling: fresh, the compiled graph plans its own buffers
        key = ("blocks", tag, columns, like.dtype, like.device, torch.is_inference_mode_enabled()) if reuse else ()
        entry = self.workspace.get(key) if reuse else None
        if entry is None:
            g, m, size = self.groups, self.size // self.groups, like.element_size()
            # a block's elements, padded to whole 64 bytes (not in a graph: no addresses there, nor non-contiguous out=)
            per = -(-m * columns * size // 64) * 64 // size if reuse else m * columns
            if per == m * columns:  # no padding: the usual (size, columns) buffer, its blocks row views
                buffer = torch.empty(self.size, columns, dtype=like.dtype, device=like.device)
                entry = (buffer, list(buffer.chunk(g)))
            else:  # (groups, m, columns), not contiguous: what is done to it whole is done to (groups, m, ·) views
                buffer = torch.empty(g, per, dtype=like.dtype, device=like.device)[:, : m * columns].view(g, m, columns)
                entry = (buffer, list(buffer.unbind()))
            if reuse:
                self.workspace[key] = entry
        return entry

    def grouped(self, name: str) -> Tensor:
        """The member tensor ``name`` (``"s"``, ``"r"``) as ``(groups, size / groups, ·)``, viewed once (for
        padded :meth:`scratch_blocks`)."""
        if compiling():
            return getattr(self, name).view(self.groups, self.size // self.groups, -1)
        key = ("grouped", name, torch.is_inference_mode_enabled())
        view = self.workspace.get(key)
        if view is None:
            view = self.workspace[key] = getattr(self, name).view(self.groups, self.size // self.groups, -1)
        return view

    def row_blocks(self, name: str) -> list[Tensor]:
        """Each group's rows of the member tensor ``name`` (``"s"``, ``"r"``, ``"bias_r"``), sliced once."""
        if compiling():
            return list(getattr(self, name).chunk(self.groups))
        key = ("rows", name, torch.is_inference_mode_enabled())
        views = self.workspace.get(key)
        if views is None:
            views = self.workspace[key] = list(getattr(self, name).chunk(self.groups))
        return views

    def eps_t(self, group: int) -> Tensor:
        """``eps[group].T``, ``(in, out)``: a view made once per generation (each forward would
        otherwise pay a select and a transpose per layer; ~2 µs on a CPU), from a 64-byte boundary
        (see :func:`from_boundary`)."""
        if torch.is_grad_enabled() or compiling():  # backprop noise: a fresh view in each graph
            return from_boundary(self.eps[group]).T
        key = ("eps_t", group)
        view = self.workspace.get(key)
        if view is None:
            view = self.workspace[key] = from_boundary(self.eps[group]).T
        return view

    def eps_ts(self) -> list[Tensor]:
        """Every group's :meth:`eps_t`, listed once per generation: a forward over G groups asks once, not G times
        (each ask checks autograd and compiling, ~1 µs on a CPU, at every layer call of a rollout)."""
        if torch.is_grad_enabled() or compiling():
            return [self.eps_t(i) for i in range(self.groups)]
        views = self.workspace.get(("eps_ts",))
        if views is None:
            views = self.workspace[("eps_ts",)] = [self.eps_t(i) for i in range(self.groups)]
        return views

    def factor(self, which: int, group: int) -> Tensor:
        """``factors[which][group]`` (0: ``a``, 1: ``b``) from a 64-byte boundary, made once per generation (see
        :func:`from_boundary`)."""
        if torch.is_grad_enabled() or compiling():
            return from_boundary(self.factors[which][group])
        key = ("factor", which, group)
        block = self.workspace.get(key)
        if block is None:
            block = self.workspace[key] = from_boundary(self.factors[which][group])
        return block

    def to(self, dtype: torch.dtype) -> SlotNoise:
        """This noise in ``dtype`` (an enclosing ``torch.autocast`` runs the layer in it): made once per
        generation and dtype, fresh under autograd (backprop noise may be a function of learnt σ)."""
        reuse = not torch.is_grad_enabled() and not compiling()  # nor under torch.compile (see compiling())
        key = ("to", dtype, torch.is_inference_mode_enabled()) if reuse else ()
        cast = self.workspace.get(key) if reuse else None
        if cast is None:

            def conv(t: Tensor | None) -> Tensor | None:
                return None if t is None else t.to(dtype)

            cast = SlotNoise(
                eps=conv(self.eps),
                s=conv(self.s),
                r=conv(self.r),
                bias_r=conv(self.bias_r),
                mirrored=self.mirrored,
                factors=None if self.factors is None else (conv(self.factors[0]), conv(self.factors[1])),
                bias_eps=conv(self.bias_eps),
            )
            if reuse:
                self.workspace[key] = cast
        return cast

    def dense_eps(self, groups: slice = slice(None)) -> Tensor:
        """σε of every group (or of ``groups``), ``(G, *weight.shape)`` (materialized from the factors if low-rank)."""
        if self.factors is None:
            return self.eps if groups == slice(None) else self.eps[groups]
        a, b = self.factors[0][groups], self.factors[1][groups]
        return torch.bmm(a, b.flatten(2)).view(a.shape[0], a.shape[1], *b.shape[2:])

    @property
    def bias(self) -> Tensor | None:
        """σ·ε_b per member, ``(n, out_channels)``."""
        return None if self.bias_r is None else self.bias_r * self.r

    def with_bias(self, delta: Tensor | None) -> SlotNoise:
        """This noise with member ``n``'s bias perturbation ``delta[n]`` (``(n, out_channels)``, or none):
        for a layer that shares the weight but not its bias."""
        return replace(self, bias_r=None if delta is None else delta * self.r, bias_eps=None, workspace={})

    def rows(self, groups: slice, rows: slice) -> SlotNoise:
        """The noise of member rows ``rows`` alone, which lie in groups ``groups`` (indices into this noise's
        groups): the same perturbation of each of those members, with their groups' ε."""
        factors = None if self.factors is None else (self.factors[0][groups], self.factors[1][groups])
        return SlotNoise(
            eps=None if self.eps is None else self.eps[groups],
            s=self.s[rows],
            r=self.r[rows],
            bias_r=None if self.bias_r is None else self.bias_r[rows],
            mirrored=self.mirrored,
            factors=factors,
            bias_eps=None if self.bias_eps is None else self.bias_eps[groups],
        )

    def out_slice(self, start: int, stop: int) -> SlotNoise:
        """The noise of output channels ``start:stop``: member ``n``'s perturbation restricted to those
        rows of the weight (a packed projection, e.g. attention's q, k and v, used one part at a time)."""
        part = slice(start, stop)
        factors = None if self.factors is None else (self.factors[0][:, part], self.factors[1])
        return SlotNoise(
            eps=None if self.eps is None else self.eps[:, part],
            s=self.s,
            r=self.r[:, part],
            bias_r=None if self.bias_r is None else self.bias_r[:, part],
            mirrored=self.mirrored,
            factors=factors,
            bias_eps=None if self.bias_eps is None else self.bias_eps[:, part],
        )


@dataclass
class DenseNoise:
    """Independent per-member noise of one parameter with no Flipout form (a norm's scale, a bare
    ``nn.Parameter``): member ``n`` uses ``θ + delta[n]``. ``delta`` includes σ; with ``mirrored``,
    row ``2k+1`` is ``-delta[2k]``.

    Shape:
        - delta: ``(n, *param.shape)``
    """

    delta: Tensor
    mirrored: bool

    @property
    def size(self) -> int:
        return self.delta.shape[0]

    def rows(self, rows: slice) -> DenseNoise:
        """The noise of member rows ``rows`` alone."""
        return DenseNoise(self.delta[rows], self.mirrored)


def sample_dense(
    *, seed: int, generation: int, slot: int, groups: range, group_size: int, param: Tensor, sigma: float, mirrored: bool
) -> DenseNoise:
    """Per-member Gaussian noise ``σε_n`` of ``param``'s shape, keyed like a Flipout slot by
    ``(seed, generation, group, slot)``: one generator per group draws its distinct members' rows."""
    distinct = group_size // 2 if mirrored else group_size
    rows = []
    for g in groups:
        gen = generator(param.device, stream_seed(seed, generation, g, slot))
        rows.append(
            torch.empty(distinct, *param.shape, dtype=param.dtype, device=param.device).normal_(0.0, sigma, generator=gen)
        )
    delta = _cat(rows)
    # twins interleaved, row 2k+1 = -row 2k, written in place: no -delta temporary (1.25x a 10^5-entry Vector's step;
    # not on MPS, whose out= into a strided view some builds got wrong)
    if mirrored and delta.numel() >= 1 << 16 and delta.device.type != "mps":
        twins = delta.new_empty(delta.shape[0], 2, *delta.shape[1:])
        twins[:, 0] = delta
        torch.neg(delta, out=twins[:, 1])
        delta = twins.flatten(0, 1)
    elif mirrored:  # small (one op fewer), or on MPS
        delta = torch.stack((delta, -delta), dim=1).flatten(0, 1)
    return DenseNoise(delta, mirrored)


def sample_slot(
    *,
    seed: int,
    generation: int,
    slot: int,
    groups: range,
    group_size: int,
    weight: Tensor,
    in_channels: int,
    out_channels: int,
    has_bias: bool,
    sigma: float,
    mirrored: bool,
    table: Tensor | None = None,
    rank: int | None = None,
) -> SlotNoise:
    """Sample one slot's noise for the given (global) group indices.

    Each (group, slot) has its own generator, drawn in a fixed order: ε (or with ``rank``, its
    factors ``A`` (out, r) then ``B`` (r, in, *kernel), Gaussian, ``ε = A B / √r``), the sign bytes,
    the bias noise (per member; with ``rank``, one ``ε_b`` per group, sign-flipped by ``r_n``).
    With ``mirrored``, member ``2k+1`` of a group reuses ``s_{2k}``, takes ``r = -r_{2k}`` and the
    negated bias noise, so its perturbation is exactly ``-u_{2k}``: a pair draws the random bytes of one
    member.
    ``table`` is ``sign_table(weight.dtype, weight.device)``, passed in to share it across slots.
    """
    dtype, device = weight.dtype, weight.device
    table = shared_sign_table(dtype, device) if table is None else table
    distinct = group_size // 2 if mirrored else group_size
    s_bytes, r_bytes = (in_channels + 7) // 8, (out_channels + 7) // 8  # each row starts on a byte
    eps, idx, bias = [], [], []
    for g in groups:
        gen = generator(device, stream_seed(seed, generation, g, slot))
        if rank is None:
            eps.append(torch.empty(weight.shape, dtype=dtype, device=device).normal_(0.0, sigma, generator=gen))
        else:
            a = torch.empty(out_channels, rank, dtype=dtype, device=device).normal_(0.0, sigma / math.sqrt(rank), generator=gen)
            b = torch.empty(rank, *weight.shape[1:], dtype=dtype, device=device).normal_(generator=gen)
            eps.append((a, b))
        idx.append(random_bytes(distinct * (s_bytes + r_bytes), gen, device).view(distinct, -1))
        if has_bias:
            rows = distinct if rank is None else 1
            bias.append(torch.empty(rows, out_channels, dtype=dtype, device=device).normal_(0.0, sigma, generator=gen))
    # both sign rows of every member in one gather: (members, 8·(s_bytes + r_bytes)), s and r column views of it
    rows = _cat(idx).int()
    signs = table.index_select(0, rows.view(-1)).view(rows.shape[0], -1)
    s, r = signs[:, :in_channels], signs[:, 8 * s_bytes : 8 * s_bytes + out_channels]
    if not mirrored:  # contiguous: the forward's elementwise ops run ~1.5x faster on them (twins below are copies)
        s, r = s.contiguous(), r.contiguous()
    bias_r = None
    if has_bias and rank is None:
        bias_r = _cat(bias) * r
        bias_r = _twins(bias_r, bias_r) if mirrored else bias_r  # (-b)(-r) = b r
    if mirrored:  # twin rows: the same s, the negated r (±1, exact)
        s, r = _twins(s, s), _twins(r, r.neg())  # unpacked once per pair: a gather costs more than a copy
    if rank is None:
        return SlotNoise(_stack(eps), s, r, bias_r, mirrored)
    bias_eps = None
    if has_bias:  # (G, out); each member's bias_r is its group's row (a view when G = 1)
        bias_eps = _cat(bias)
        bias_r = bias_eps.expand(len(s), -1) if len(bias) == 1 else bias_eps.repeat_interleave(group_size, dim=0)
    factors = (_stack([a for a, _ in eps]), _stack([b for _, b in eps]))
    return SlotNoise(None, s, r, bias_r, mirrored, factors=factors, bias_eps=bias_eps)


def from_boundary(t: Tensor) -> Tensor:
    """``t`` where it starts on a 64-byte boundary (a view keeps its strides), else a contiguous copy, which does; as
    it is in a graph (no addresses there). A CPU BLAS rounds a product by where its operands start (MKL by the
    address mod 16 bytes: a GEMM's first operand, a matrix-vector product's second, a batched product's blocks, the
    CPU attention kernel's), and where a group's rows, its ε or factors start depends on the groups a process holds
    beside it: from a 64-byte boundary a group's products give the same bits on any process count."""
    if compiling():
        return t
    try:
        address = t.data_ptr()
    except RuntimeError:  # a torch.func transform's wrapper (grad, vmap): no storage of its own to align
        return t
    return t if address % 64 == 0 else t.clone(memory_format=torch.contiguous_format)


def _twins(a: Tensor, b: Tensor) -> Tensor:
    """Rows ``a[0], b[0], a[1], b[1], ...``: mirrored twins adjacent (cheaper than ``repeat_interleave(2, 0)``)."""
    return torch.stack((a, b), dim=1).flatten(0, 1)


def _stack(parts: list[Tensor]) -> Tensor:
    return parts[0].unsqueeze(0) if len(parts) == 1 else torch.stack(parts)


def _cat(parts: list[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)
