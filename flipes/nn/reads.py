"""Reads of an evolved module's parameters by other code, noted inside a population until the module's first call.

A Flipout layer or a per-member module read as plain tensors (``x @ layer.weight``, ``self.log_std.value`` of a
``flipes.nn.Vector``) and never called gives every member the mean value there, silently: FlipES notes such reads
(``_flipes_reads`` in the module's ``__dict__``, set at the population's start, dropped at its first call) and refuses
them at the block's end (``flipes.es.refusals.refuse_direct_reads``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from flipes.noise import compiling


class NotesReads:
    """Mixin of the modules FlipES evolves (Flipout layers, per-member modules): while ``_flipes_reads`` is in the
    instance's ``__dict__``, the names of its parameters that other code reads are added to it."""

    _flipes_getattr: Callable[[nn.Module, str], Any]  # the next class's __getattr__, set per class (__init_subclass__)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # the __getattr__ after this one (nn.Module's, unless a class between has its own), called directly: a super()
        # call would cost as much again as the lookup, at every read of a parameter in every forward
        after = cls.__mro__[cls.__mro__.index(NotesReads) + 1 :]
        later = next((k.__dict__["__getattr__"] for k in after if "__getattr__" in k.__dict__), None)
        if later is not None:  # None: a base such as _FlipoutConvNd, not yet an nn.Module
            cls._flipes_getattr = staticmethod(later)

    def __getattr__(self, name: str) -> Any:
        # in a population, until the module is first called: its parameters read by other code (x @ layer.weight) are
        # noted. Not the module's own reads (its forward called as layer.forward(x), its repr, flipes'
        # perturbed_weights()): only then is the caller's frame looked at; nor a member's value that the forward of a
        # per-member module above it swapped in (not a Parameter), nor in a graph being compiled (Dynamo traces no frames)
        if (
            "_flipes_reads" in self.__dict__
            and name in self._parameters  # type: ignore[attr-defined]
            and not _swapped_in(dict.__getitem__(self._parameters, name))  # type: ignore[attr-defined]
            and not compiling()
            and sys._getframe(1).f_locals.get("self") is not self
        ):
            self.__dict__["_flipes_reads"].add(name)
        return self._flipes_getattr(self, name)  # type: ignore[arg-type]


def _swapped_in(value: object) -> bool:
    """Whether a parameter slot holds a tensor put in for a member's forward, not the Parameter (or ``None``) itself."""
    return isinstance(value, Tensor) and not isinstance(value, nn.Parameter)
