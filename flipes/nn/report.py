"""``parameter_report(model)``: what a population does with each parameter (flipout, low-rank, dense, frozen, backprop
noise, unhandled), as rows and a table with totals."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from flipes.nn.base import FlipoutMixin
from flipes.nn.compiled import uncompiled
from flipes.nn.dense import PerMember
from flipes.nn.refusals import UNINITIALIZED, _uninitialized


@dataclass(frozen=True)
class ParameterRow:
    """What happens to one parameter in a population.

    ``how``: ``"flipout"`` (a Flipout weight or bias), ``"low-rank"`` (a Flipout weight with
    low-rank noise), ``"dense"`` (independent per-member noise), ``"frozen"``
    (``requires_grad=False``), ``"backprop noise"`` (the scale of a backprop noise model, never
    evolved) or ``"unhandled"`` (an error: nothing would perturb it). ``tied``: the parameter's other names (a
    head tied to the token embedding: ``("lm_head.weight",)``), which share its perturbation and are not rows of
    their own.
    """

    name: str
    shape: tuple[int, ...]
    how: str
    module: str
    tied: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        """The parameter's number of elements, the product of ``shape``."""
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class ParameterReport:
    """``parameter_report(model)``: one row per parameter; ``str()`` is a table with totals."""

    rows: list[ParameterRow]

    def count(self, *how: str) -> int:
        """Entries (numel) of the parameters whose ``how`` is one of ``how``, e.g. ``count("frozen")``."""
        return sum(r.numel for r in self.rows if r.how in how)

    @property
    def evolved(self) -> int:
        """How many scalars evolve: those of the flipout, low-rank and dense rows (not frozen or backprop)."""
        return self.count("flipout", "low-rank", "dense")

    def __str__(self) -> str:
        width = max([len(r.name) for r in self.rows] + [9])
        lines = [f"{'parameter':<{width}}  {'shape':<16} {'how':<15} module"]
        for r in self.rows:
            also = f" (also {', '.join(r.tied)})" if r.tied else ""
            lines.append(f"{r.name:<{width}}  {tuple(r.shape)!s:<16} {r.how:<15} {r.module}{also}")
        total = sum(r.numel for r in self.rows)
        parts = ", ".join(
            f"{h} {self.count(h):,}"
            for h in ("flipout", "low-rank", "dense", "frozen", "backprop noise", "unhandled")
            if self.count(h)
        )
        lines.append(f"evolved {self.evolved:,} of {total:,} parameters ({parts})")
        return "\n".join(lines)

    def __repr__(self) -> str:
        """The table, as a notebook shows ``es.report()``: the dataclass's would be one line of every row's fields
        (8 kB for a 6-layer transformer)."""
        return str(self)


def parameter_report(model: nn.Module, noise_rank: int | None = None) -> ParameterReport:
    """What a population does with every parameter of ``model`` (``noise_rank``: FlipES's, which
    makes Flipout weights ``"low-rank"``; biases stay ``"flipout"``). Of ``torch.compile(net)``: net's
    parameters, by their names in net (no ``_orig_mod.``)."""
    model = uncompiled(model)
    for name, m in model.named_modules():  # FlipES(model) of an unconverted lazy model: its shapes are read below
        lazy = _uninitialized(m)
        if lazy:
            where = f"{name!r} ({type(m).__name__})" if name else f"the model ({type(m).__name__})"
            raise ValueError(f"{where}'s {lazy} {UNINITIALIZED}")
    how: dict[int, tuple[str, str]] = {}
    for m in sorted(model.modules(), key=lambda m: not isinstance(m, FlipoutMixin)):  # a weight also read densely: flipout
        if isinstance(m, FlipoutMixin):
            kind = type(m).__name__
            noise_model = m._modules.get("backprop_noise")
            for p in [] if noise_model is None else noise_model.parameters():
                how.setdefault(id(p), ("backprop noise", kind))
            for pw in m.perturbed_weights():
                how.setdefault(id(pw.weight), ("flipout" if noise_rank is None else "low-rank", kind))
                if pw.bias is not None:
                    how.setdefault(id(pw.bias), ("flipout", kind))
            for p in m.dense_parameters().values():
                how.setdefault(id(p), ("dense", kind))
        elif isinstance(m, PerMember):
            for p in m.parameters():
                how.setdefault(id(p), ("dense", type(m).__name__))
    owners = dict(_owners(model))
    names: dict[int, list[str]] = {}  # every name of each parameter: named_parameters() lists a tied one once
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    rows = []
    for name, p in model.named_parameters():
        kind, module = how.get(id(p), ("unhandled", owners[name]))
        tied = tuple(n for n in names[id(p)] if n != name)
        rows.append(ParameterRow(name, tuple(p.shape), "frozen" if not p.requires_grad else kind, module, tied))
    return ParameterReport(rows)


def _owners(model: nn.Module) -> Iterator[tuple[str, str]]:
    for mname, m in model.named_modules():
        for pname in m._parameters.keys():  # a TorchScript module's dict wrapper has no __iter__
            yield (f"{mname}.{pname}" if mname else pname), type(m).__name__
