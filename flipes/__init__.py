"""flipes: evolution strategies on PyTorch with Flipout perturbations.

One batched forward pass evaluates a whole population, every member with its own
pseudo-independent weight perturbation (Wen et al., ICLR 2018, arXiv:1803.04386).
"""

from flipes import dist, nn, noise
from flipes.es import FlipES, Population, shaping
from flipes.nn import flipout, kl_divergence

__all__ = ["FlipES", "Population", "dist", "flipout", "kl_divergence", "nn", "noise", "shaping"]
__version__ = "0.1.0"
