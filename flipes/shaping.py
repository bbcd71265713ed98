"""Fitness shaping functions, ``fitness (N,) -> weights (N,)``, and ``feasible_first``, the fitness of constrained
members for them to rank: those of :mod:`flipes.es.shaping` under the name the README and ``--shaping
flipes.shaping:z_score`` use. A module file of its own, so that type checkers and IDEs resolve ``from flipes.shaping
import z_score`` too (an alias put in ``sys.modules`` exists at run time alone)."""

from flipes.es.shaping import ars, centered_ranks, feasible_first, raw, z_score

__all__ = ["ars", "centered_ranks", "feasible_first", "raw", "z_score"]
