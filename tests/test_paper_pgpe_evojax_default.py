"""PGPE's centre update with symmetric sampling (Sehnke et al., Neural Networks 2010, Sec. 2.3: pairs θ ± ε_k and the
step along Σ_k ε_k (r⁺_k − r⁻_k)/2), as EvoJAX's ``PGPE`` takes it at its default ``optimizer=None``: plain gradient
ascent at ``center_learning_rate`` c on ``g = mean_k n_k (F̂⁺_k − F̂⁻_k)/2``, ``n_k = σ z_k`` its scaled noise and F̂
its centered ranks. That g is ``σ²`` times FlipES's ĝ, so the port is SGD at ``c·σ²``."""

from __future__ import annotations

import torch

import flipes


def test_evojax_pgpe_default_centre_step_is_sgd_at_c_sigma_squared() -> None:
    """The centre written out from those formulas (ranks ``rank/(N − 1) − 1/2`` by position, distinct fitness here),
    on flipes' member noises (rows ``2k``, ``2k+1`` = centre ± ``n_k``), moves as ``FlipES(sigma=σ,
    optimizer=SGD(lr=c·σ²))``: 1e-12 in float64 over three generations of a 6-dimensional vector."""
    dt, n, sigma, c = torch.float64, 8, 0.1, 0.15
    x = flipes.flipout(flipes.nn.Vector(torch.linspace(-1, 1, 6, dtype=dt)))
    es = flipes.FlipES(x, popsize=n, sigma=sigma, seed=4, optimizer=lambda p: torch.optim.SGD(p, lr=c * sigma**2))
    centre = x.value.detach().clone()
    target = torch.arange(6, dtype=dt)
    for _ in range(3):
        with es.population():
            fitness = -(x() - target).square().sum(1)
            noise = torch.stack([es.member_noise(i)["value"] for i in range(n)])
        directions = noise[0::2]
        assert torch.equal(noise[1::2], -directions)
        ranks = torch.empty_like(fitness)
        ranks[fitness.argsort()] = torch.arange(n, dtype=dt)
        scores = (ranks / (n - 1) - 0.5).view(-1, 2)
        grad = (directions * (scores[:, 0] - scores[:, 1])[:, None] * 0.5).mean(0)
        centre = centre + c * grad  # its sgd steps along -(-grad)
        es.tell(fitness)
        torch.testing.assert_close(x.value.detach(), centre, rtol=0, atol=1e-12)
