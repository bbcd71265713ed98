"""The population of one generation, as the fitness function sees it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Population:
    """Members evaluated by this process in one generation.

    Attributes:
        size: members this process evaluates: the first dimension of every model input.
        popsize: members of the whole population (all processes).
        generation: index of the generation (0-based).
        sigma: perturbation scale used in this generation.
        members: global indices of the local members, in input order.
        groups: global indices of the ε groups the local members belong to.
    """

    size: int
    popsize: int
    generation: int
    sigma: float
    members: range
    groups: range
