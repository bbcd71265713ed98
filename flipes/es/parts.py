"""A population evaluated in parts (``pop.part``, ``pop.split``): each part a ``with`` block in which the layers
evaluate local members ``start:stop`` alone, within one ε group or whole groups.

With ``hold_noise=False`` a part's groups are sampled when it is entered (``flipes.es.install.Deferred``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

from flipes.es.checks import as_index
from flipes.es.install import Deferred, HeldNoise, install, uninstall
from flipes.es.population import Population

if TYPE_CHECKING:
    from flipes.es.engine import FlipES


def part(es: FlipES, noise: HeldNoise | Deferred | None, start: int, stop: int) -> AbstractContextManager[Population]:
    """Inside, the layers evaluate local members ``start:stop`` alone (``Population.part``); checked
    when called, so a wrong part is an error even before its ``with``."""
    check_part(es, noise)
    n, local = len(es.members), len(es.local_groups)
    size = n // local  # members per ε group
    a, b = as_index(start), as_index(stop)  # numpy's integers too (np.array_split's bounds), not a bool or float
    if a is None or b is None or not 0 <= a < b <= n:
        raise ValueError(f"a part is local members start:stop: integers, 0 <= start < stop <= {n}; got {start!r}:{stop!r}")
    start, stop = a, b
    first, last = start // size, (stop - 1) // size
    if first != last and (start % size or stop % size):
        raise ValueError(
            f"part {start}:{stop} straddles ε groups of {size} members: a part lies within one group or is whole "
            f"groups (start and stop multiples of {size}); pop.split(k) makes such parts"
        )
    return narrow(es, noise, slice(first, last + 1), slice(start, stop))


def check_part(es: FlipES, noise: HeldNoise | Deferred | None) -> None:
    if noise is None or es._noise is not noise or es._inside is None:
        raise RuntimeError(
            "a part of a population that has ended: tell() (or the end of its `with` block) came first; "
            "evaluate every part inside `with es.population() as pop:`, then tell"
        )
    if es._in_part:
        raise RuntimeError("pop.part() inside another part: leave the part's `with` block (or split loop) first")


@contextmanager
def narrow(es: FlipES, noise: HeldNoise | Deferred, groups: slice, rows: slice) -> Iterator[Population]:
    check_part(es, noise)  # again: the part may be entered later than made
    inside = es._inside  # this population's: a part closed after it ended must leave later ones alone
    size = rows.stop - rows.start
    if isinstance(noise, Deferred):  # this part's groups, sampled now unless the block held has them
        noise.whole = False
        first = es.local_groups.start
        held = noise.held(es, range(first + groups.start, first + groups.stop))
        at = noise.groups.start - first  # the held block's first group, as a local index
        per = len(es.members) // len(es.local_groups)
        in_held = slice(groups.start - at, groups.stop - at), slice(rows.start - at * per, rows.stop - at * per)
    else:
        held, in_held = noise, (groups, rows)
    slot_noise, dense_noise = held
    install(es, [nz.rows(*in_held) for nz in slot_noise], [nz.rows(in_held[1]) for nz in dense_noise], size)
    es._in_part = True
    try:
        yield Population(
            size=size,
            popsize=es.popsize,
            generation=es.generation,
            sigma=es.mean_sigma(),
            members=es.members[rows],
            groups=es.local_groups[groups],
            seed=es.seed,
            enter_part=part_of_part(es.members[rows]),
            superseded=es._superseded_check(),
            shuffles=es._shuffles,
        )
    finally:
        # else its population ended with this part open (a split generator left suspended and closed later):
        # that population's end uninstalled the part, and the layers may be evaluating another population now
        if es._inside is inside:
            es._in_part = False
            if isinstance(noise, Deferred) or es._noise is not noise:
                uninstall(es, forget_shared_ids=False)  # kept for the population's error hint
            else:  # still in the population: all its members again
                install(es, *noise, len(es.members))


def part_of_part(members: range) -> Callable[[int, int], AbstractContextManager[Population]]:
    """``enter_part`` of a part: a fitness that splits the ``pop`` it is given meets this where ``flipes.train``'s
    ``members_per_pass`` already gave it a part."""

    def refuse(start: int, stop: int) -> AbstractContextManager[Population]:
        raise RuntimeError(
            f"part.part() or part.split(): a part of a part; this pop is already members {members.start}..{members.stop - 1} "
            "of the population (a part of pop.split(), or flipes.train's members_per_pass calling the fitness once per "
            "part): evaluate its pop.size members in one pass (for a simulator that is not vectorized: one instance per "
            "member, the model called once per step on their (pop.size, ...) observations), or take every part of the "
            "whole population (`pop.part` or `pop.split`)"
        )

    return refuse
