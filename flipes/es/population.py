"""The population of one generation, as the fitness function sees it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


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
        seed: the FlipES's seed (with ``generation``, it seeds :meth:`generator`).
    """

    size: int
    popsize: int
    generation: int
    sigma: float
    members: range
    groups: range
    seed: int = 0

    def generator(self, stream: str = "fitness", device: torch.device | str = "cpu") -> torch.Generator:
        """A ``torch.Generator`` for this generation's fitness (minibatches, episode seeds), seeded by
        ``(seed, generation, stream)`` alone: the same on every process and on a resume, another for
        every run seed (``manual_seed(pop.generation)`` would give every seed the same draws)."""
        digest = hashlib.blake2b(f"flipes/population/{self.seed}/{self.generation}/{stream}".encode(), digest_size=8)
        return torch.Generator(device=device).manual_seed(int.from_bytes(digest.digest(), "little") % 2**63)
