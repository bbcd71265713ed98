"""The ES engine: population context, fitness shaping, gradient and optimizer step."""

from flipes.es.engine import FlipES
from flipes.es.members import BestMember
from flipes.es.population import Population

__all__ = ["BestMember", "FlipES", "Population"]
