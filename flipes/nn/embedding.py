"""Flipout embedding (Wen et al., ICLR 2018, arXiv:1803.04386), derived from the linear layer.

A lookup of token ``t`` is the one-hot row ``e_t`` times the table ``W`` (V × d). Member ``n``'s
table is ``W̄ + σε ∘ (r_n s_nᵀ)`` with ``r_n ∈ {±1}^V`` (one sign per token) and ``s_n ∈ {±1}^d``, so

    emb_n(t) = e_t W_n = W̄[t] + σ ε[t] · r_n[t] ∘ s_n

two lookups and a gather of ``r_n`` at the tokens, whatever N. Low rank ``σε = A B``: a lookup of
``A``'s rows (r wide) and one thin GEMM. The padding row (``padding_idx``) is never perturbed, as
torch never updates it.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flipes.nn.base import FlipoutMixin, PerturbedWeight
from flipes.nn.functional import check_members
from flipes.nn.inputs import refuse_non_tensor
from flipes.noise import SlotNoise


def flipout_embedding(
    idx: Tensor, weight: Tensor, noise: SlotNoise, padding_idx: int | None, layer: str, population: int | None = None
) -> Tensor:
    """``idx``: ``(N, *B)`` or ``(N·k, *B)`` token ids -> ``(*idx.shape, d)``, member ``n`` through its own table.
    Ids shared by every member, ``(1, *B)`` (position ids), or 1-D ids whose length is no multiple of N
    (nanoGPT's ``wpe(torch.arange(T))``; ``(1,)`` is T = 1, ``(N, 1, d)``, where N > 1), are looked up in every
    member's table: ``(N, *B, d)``. 1-D ids
    of a length that is a multiple of N could be either and are refused, naming both layouts. In a part of
    a population, N is the part's members and ``population`` the whole one's: a part reads 1-D ids as the
    whole population does (shared, or refused), whatever its own size."""
    shared_row = idx.dim() > 1 or (idx.dim() == 1 and (population or noise.size) == 1)
    if shared_row and idx.shape[0] == 1:  # (1, *B); not 1-D (1,) of more members: one position, below
        idx = idx.expand(noise.size, *idx.shape[1:])
    elif idx.dim() == 1:
        n, length = noise.size, idx.shape[0]
        if length % (population or n) == 0:
            k = f"{length // n}" if length % n == 0 else "k"
            raise ValueError(
                f"{layer}: 1-D ids of length {length} inside a population of {population or n} members"
                + (f" (a part of {n} here)" if population and population != n else "")
                + f" read as tokens per member or as ids every member shares (positions): pass ({n}, {k}) for {k} "
                f"token(s) per member, or (1, {length}) for shared ids (torch.arange(T)[None])"
            )
        idx = idx.expand(n, length)
    check_members(layer, idx, noise.size, 1)
    n, g = noise.size, noise.groups
    vocab, dim = weight.shape
    flat = idx.reshape(n, -1)  # (N, M): member-major
    if g > 1:  # member n looks up its group's ε: offset the ids into the stacked (G·V) table
        group_of = torch.arange(n, device=idx.device) // (n // g)
        flat_g = flat + (group_of * vocab).unsqueeze(1)
    else:
        flat_g = flat
    if noise.factors is None:
        pert = F.embedding(flat_g, noise.eps.reshape(g * vocab, dim))  # (N, M, d)
    else:
        a, b = noise.factors  # (G, V, r), (G, r, d)
        t = F.embedding(flat_g, a.reshape(g * vocab, -1))  # (N, M, r)
        pert = torch.matmul(t.view(g, -1, t.shape[-1]), b).view(n, flat.shape[1], dim)
    pert = pert * noise.r.gather(1, flat).unsqueeze(-1) * noise.s.unsqueeze(1)
    out = F.embedding(idx, weight, padding_idx)
    return out + pert.view(out.shape)


class FlipoutEmbedding(FlipoutMixin, nn.Embedding):
    r"""A ``torch.nn.Embedding`` whose table is perturbed per member inside an ES population.

    Member :math:`n` looks up :math:`\bar W[t] + \sigma\,\varepsilon[t]\, r_n[t]\, s_n`: one sign per
    token and one per embedding dimension, the Flipout form of a one-hot linear layer. Outside a
    population it is exactly ``nn.Embedding``.

    Args: as ``nn.Embedding``; ``max_norm`` (which renormalizes rows of the table in place) is not
    supported.

    Shape:
        - Outside a population: as ``nn.Embedding``.
        - Inside a population of N members: ``(N, *B) -> (N, *B, embedding_dim)`` (or ``N·k`` rows,
          member-major); ids shared by all members, ``(1, *B)`` or 1-D ``(T,)`` with T no multiple of N
          (e.g. position ids; ``(1,)`` is one position, T = 1), give ``(N, *B, d)``; 1-D ids whose length is a
          multiple of N are refused as ambiguous (per member: ``(N, k)``; shared: ``(1, T)``).

    Examples::

        >>> emb = FlipoutEmbedding(100, 16)
        >>> es = flipes.FlipES(emb, popsize=8, sigma=0.1)
        >>> with es.population() as pop:
        ...     h = emb(torch.randint(100, (pop.size, 12)))   # (8, 12, 16)
    """

    def perturbed_weights(self) -> list[PerturbedWeight]:
        fixed = () if self.padding_idx is None else (self.padding_idx,)
        return [PerturbedWeight(self.weight, None, self.embedding_dim, self.num_embeddings, fixed_rows=fixed)]

    def forward(self, input: Tensor) -> Tensor:
        if self.noise is None:
            return super().forward(input)
        check_embedding_supported(self)
        refuse_non_tensor(type(self).__name__, input, torch.empty((), dtype=torch.long, device=self.weight.device))
        n, population = self.noise[0].size, self.flipes_population or self.noise[0].size
        if (input.dim() > 1 and input.shape[0] == 1 and n > 1) or (input.dim() == 1 and input.shape[0] % population):
            # for the hint of shared_ids_fix: the members looking up, and the ids (their values read only for an error)
            self._flipes_shared_ids = (tuple(input.shape), n, input)
        return flipout_embedding(input, self.weight, self.noise[0], self.padding_idx, type(self).__name__, population)


def check_embedding_supported(emb: nn.Embedding) -> None:
    if emb.max_norm is not None:
        raise ValueError(
            f"{type(emb).__name__}(max_norm={emb.max_norm}) renormalizes rows of the table in place, which has no "
            "per-member form; build the embedding without max_norm (or freeze it: flipes.flipout(model, frozen=[...]))"
        )


def first_position(ids: Tensor) -> int | None:
    """``ids[..., 0]`` where one row of shared ids ``(1, T)`` or ``(T,)`` counts up by one from it (positions), else
    ``None``."""
    row = ids.flatten()
    if ids.dim() > 2 or (ids.dim() == 2 and ids.shape[0] != 1) or row.numel() == 0 or ids.is_floating_point():
        return None
    start = int(row[0])
    return start if torch.equal(row, torch.arange(start, start + row.numel(), device=row.device, dtype=row.dtype)) else None


def one_row_fix(shape: tuple[int, ...], members: int, error: str) -> str | None:
    """What to do when ids of one row, ``shape`` ``(1, T)``, were looked up as ids every member shares (one row per
    member) and those ``members`` rows then met the one-row input in a concatenation (``generate`` appending each
    member's next token to a prompt given once); ``None`` where ``error`` is no such clash."""
    match = re.search(r"Expected size (\d+) but got size (\d+)", error)
    if match is None or len(shape) != 2 or shape[0] != 1 or members < 2:
        return None
    if {int(match.group(1)), int(match.group(2))} != {1, members}:
        return None
    return (
        f"flipes: ids of one row, shape {shape}, were looked up as ids every member shares (one row per member, "
        f"{members} rows), and those rows met the one-row input again (generate appends each member's token to the "
        f"prompt); give every member its rows, members first: input_ids.repeat(pop.size, 1) ({members} here) and its "
        "attention mask likewise (k prompts per member: prompts.repeat(pop.size, 1), member-major)"
    )


def shared_ids_fix(
    shape: tuple[int, ...], members: int, error: str, name: str | None = None, start: int | None = 0
) -> str | None:
    """What to do when ids shared by every member, ``shape`` ``(1, *B)`` or ``(T,)``, gave one lookup per
    member and met inputs with several examples per member (position ids a model made itself) in the embedding
    ``name`` of the model; ``None`` where ``error`` is no clash of the N lookups with a multiple of N rows (another
    mistake). ``start``: the first of those ids where they count up by one (a decoding step after a KV cache of
    ``start`` tokens), ``None`` where they do not."""
    match = re.search(r"size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\)", error)
    if match is None:
        return None
    a, b = int(match.group(1)), int(match.group(2))
    rows = a if b == members else b if a == members else None
    if rows is None or rows <= members or rows % members:
        return None
    per_row = shape[1:] if len(shape) > 1 else shape  # (1, T) or (T,): the ids of one row
    tail = ", ".join(str(d) for d in per_row)
    if len(per_row) > 1 or start is None:
        ids = f"ids.expand({rows}, {tail})"
    else:  # the values the model made: after a KV cache they start at its length, not at 0
        ids = f"torch.arange({f'{start}, {start + per_row[0]}' if start else per_row[0]}).expand({rows}, {tail})"
    cached = (
        f" (these start at {start}: with a KV cache positions continue from its length, so each decoding step passes "
        f"its own, torch.arange(past, past + {per_row[0]}) with past = the cache's get_seq_length())"
        if start
        else ""
    )
    return (
        f"flipes: an embedding looked up ids shared by every member, shape {shape} (position ids a model made itself), "
        f"which gives one lookup per member ({members} rows), while the other inputs have {rows} rows "
        f"(several examples per member); pass those ids for every row, e.g. position_ids={ids} to a Hugging Face "
        f"model{cached}, or the same in a model of your own"
        + (
            f"; where the model takes no such ids (a vision model's patch positions), freeze the embedding: "
            f"flipes.flipout(model, frozen=[{name!r}])"
            if name
            else ""
        )
    )
