"""The population of one generation, as the fitness function sees it, and the ``with`` block that gives it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from flipes.es.checks import as_index


def seeded_generator(key: str, device: torch.device | str) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded by a hash of ``key`` alone (no process or global state)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8)
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest.digest(), "little") % 2**63)


class EpochShuffles:
    """Each (stream, examples)'s shuffle of the current epoch, held by a FlipES for :meth:`Population.minibatch`,
    which would otherwise draw it in every generation and part (``torch.randperm`` of 1.28 M examples: ~36 ms)."""

    def __init__(self) -> None:
        self.held: dict[tuple[str, int], tuple[str, torch.Tensor]] = {}

    def order(self, stream: str, key: str, examples: int) -> torch.Tensor:
        """The permutation of ``range(examples)`` seeded by ``key``: drawn where ``stream``'s held one has another key."""
        held = self.held.get((stream, examples))
        if held is None or held[0] != key:
            held = self.held[(stream, examples)] = key, torch.randperm(examples, generator=seeded_generator(key, "cpu"))
        return held[1]


@dataclass(frozen=True)
class Population:
    """Members evaluated by this process in one generation.

    Attributes:
        size: members this process evaluates: the first dimension of every model input.
        popsize: members of the whole population (all processes).
        generation: index of the generation (0-based).
        sigma: perturbation scale used in this generation; with ``sigma_lr > 0`` the layers' σ averaged by their sizes
            (``es.sigma``; each layer's own in ``es.sigmas()``).
        members: global indices of the local members, in input order.
        groups: global indices of the ε groups the local members belong to.
        seed: the FlipES's seed (with ``generation``, it seeds :meth:`generator`).

    A population too large for one forward pass (activations of N members × a batch) is evaluated in
    parts, each its own smaller population of the same members' perturbations::

        with es.population() as pop:
            fitness = torch.cat([my_fitness(model, part) for part in pop.split(1024)])
        es.tell(fitness)
    """

    size: int
    popsize: int
    generation: int
    sigma: float
    members: range
    groups: range
    seed: int = 0
    enter_part: Callable[[int, int], AbstractContextManager[Population]] | None = field(default=None, repr=False, compare=False)
    """Set by ``FlipES.population()``: how :meth:`part` narrows the layers to some members."""
    superseded: Callable[[], bool] | None = field(default=None, repr=False, compare=False)
    """Set by ``FlipES.population()``: whether a later generation's population is being evaluated now."""
    shuffles: EpochShuffles | None = field(default=None, repr=False, compare=False)
    """Set by ``FlipES.population()``: the FlipES's held epoch shuffles (else :meth:`minibatch` draws its own)."""

    def __getstate__(self) -> dict:
        """Pickled (sent to a worker process) without the way back into this process's layers."""
        return {**self.__dict__, "enter_part": None, "superseded": None, "shuffles": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def generator(self, stream: str = "fitness", device: torch.device | str = "cpu") -> torch.Generator:
        """A ``torch.Generator`` for this generation's fitness (minibatches, episode seeds), seeded by
        ``(seed, generation, stream)`` alone: the same on every process and on a resume, another for
        every run seed (``manual_seed(pop.generation)`` would give every seed the same draws).

        Args:
            stream: names an independent stream of draws within the generation (``"fitness"``, ``f"sample/{step}"``).
            device: where the generator draws: ``"cpu"`` (default) even with a model on a GPU (draw, then
                ``.to(x.device)``); a ``"cuda"`` one draws other numbers from the same seed.

        Raises:
            RuntimeError: called on an earlier generation's ``pop`` inside a later generation's population
                (its draws would repeat that generation's).
        """
        self._refuse_if_superseded("generator")
        return seeded_generator(f"flipes/population/{self.seed}/{self.generation}/{stream}", device)

    def minibatch(self, examples: int, batch: int, stream: str = "minibatch") -> torch.Tensor:
        """Indices of this generation's minibatch of ``batch`` among ``examples``, epoch by epoch: a shuffling
        ``DataLoader(..., drop_last=True)`` of which generation ``g`` takes the next batch, as a pure function of
        ``(seed, g, stream)``. Each epoch, ``examples // batch`` generations long, is a permutation of its own
        (seeded by ``(seed, epoch, stream)``) whose batches are disjoint and cover all but ``examples % batch`` of
        the examples; every member, process and part gets the same batch, and a run resumed mid-epoch continues
        the epoch, where a ``DataLoader`` iterator kept across generations would start over.

        Args:
            examples: size of the data set (``len(dataset)``).
            batch: examples per generation, ``1 ≤ batch ≤ examples``.
            stream: names an independent shuffle (a second data set).

        Returns:
            A CPU int64 tensor of ``batch`` distinct indices: ``x[pop.minibatch(len(x), 64)]``.

        Raises:
            ValueError: ``examples`` or ``batch`` not a positive integer, or ``batch > examples``.
            RuntimeError: as :meth:`generator`, on an earlier generation's ``pop``.
        """
        n, b = as_index(examples), as_index(batch)
        if n is None or b is None or not 1 <= b <= n:
            raise ValueError(
                f"pop.minibatch(examples, batch): examples and batch must be integers with 1 <= batch <= examples, got "
                f"examples={examples!r}, batch={batch!r}; pass len(dataset) and the examples per generation"
            )
        self._refuse_if_superseded("minibatch")
        epoch, step = divmod(self.generation, n // b)
        order = (self.shuffles or EpochShuffles()).order(stream, f"flipes/minibatch/{self.seed}/{epoch}/{stream}", n)
        return order[step * b : (step + 1) * b].clone()  # a copy: editing it in place must not edit the held shuffle

    def _refuse_if_superseded(self, method: str) -> None:
        """A kept ``pop`` of an earlier generation would draw that generation's numbers again: an error."""
        if self.superseded is not None and self.superseded():
            raise RuntimeError(
                f"pop.{method}() of generation {self.generation}, inside a later generation's population: its draws "
                "would be that old generation's again; use the `pop` of this generation's `with es.population() as pop:`"
            )

    def part(self, start: int, stop: int) -> AbstractContextManager[Population]:
        """Inside ``with pop.part(start, stop) as part:``, the model evaluates this population's members
        ``start:stop`` (local input order) alone: inputs are ``part.size`` members first, and each member
        has exactly the perturbation it has in the whole population. ``part.members`` are their global
        indices. A part lies within one ε group or is whole groups; :meth:`split` makes such parts.

        Raises:
            RuntimeError: outside ``es.population()``, after ``tell``, or inside another part.
            ValueError: ``start:stop`` empty, out of range, or straddling ε groups.
        """
        if self.enter_part is None:
            raise RuntimeError(
                "pop.part(): this Population has no way into the layers (not made by FlipES.population(), or a "
                "pickled copy of one); take parts of the `pop` of `with es.population() as pop:`"
            )
        return self.enter_part(start, stop)

    def split(self, size: int) -> Iterator[Population]:
        """This population in consecutive parts of at most ``size`` members (:meth:`part`), each entered
        while the loop body runs: ``torch.cat([f(model, part) for part in pop.split(size)])`` is the
        fitness of all members in order. A part never straddles ε groups: with groups of ``m`` members,
        ``size < m`` splits each group (the last piece of a group may be smaller) and ``size >= m``
        takes ``size // m`` whole groups at a time."""
        index = as_index(size)  # numpy's integers too, not a bool or float
        if index is None or index < 1:
            raise ValueError(f"pop.split(size): size must be a positive integer (members per part), got {size!r}")
        size = index
        group = self.size // max(len(self.groups), 1)
        bounds: list[tuple[int, int]] = []
        if size >= group:
            step = size // group * group
            bounds = [(a, min(a + step, self.size)) for a in range(0, self.size, step)]
        else:
            for g in range(0, self.size, group):
                bounds += [(a, min(a + size, g + group)) for a in range(g, g + group, size)]
        for start, stop in bounds:
            with self.part(start, stop) as part:
                yield part


class PopulationBlock(AbstractContextManager[Population]):
    """What ``es.population()`` returns: a ``with`` block whose ``as`` target is the :class:`Population`.
    Reading a population's attribute from the block itself (``pop = es.population(); pop.size``) is an
    error that shows the ``with`` form; so is entering one block twice (each ``with`` calls
    ``es.population()`` anew)."""

    def __init__(self, block: AbstractContextManager[Population], ended: Callable[[], None] = lambda: None) -> None:
        self._block, self._ended = block, ended  # ended: called after a block that raised nothing
        self._entered = False

    def __enter__(self) -> Population:
        if self._entered:
            raise RuntimeError(
                "this es.population() block was entered before: a block is entered once; write `with es.population() "
                "as pop:` again for another pass (it evaluates the same members until es.tell)"
            )
        self._entered = True
        return self._block.__enter__()

    def __exit__(self, *exc: Any) -> bool | None:
        suppressed = self._block.__exit__(*exc)
        if exc[0] is None:
            self._ended()
        return suppressed

    # hidden from type checkers, which then flag es.population().size as Python does, instead of typing it Any
    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            raise AttributeError(
                f"es.population() is a `with` block, not the population: write `with es.population() as pop:` and use "
                f"pop.{name} inside it (then es.tell(fitness) after it)"
            )
