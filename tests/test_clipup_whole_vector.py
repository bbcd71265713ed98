"""``flipes.optim.ClipUp`` normalizes the gradient and clips the velocity over the whole parameter vector, all param
groups together, as Toklu et al. (2020) define it: G groups step no farther than one (not √G·max_speed)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

import flipes
from flipes.optim import ClipUp


def _trajectory(split: list[int], steps: int = 3) -> list[torch.Tensor]:
    """The parameters after ``steps`` ClipUp steps on fixed gradients, the same 4 tensors in groups of ``split``."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(n, generator=gen).requires_grad_() for n in (3, 5, 2, 4)]
    grads = [torch.randn(p.shape, generator=gen) * 10.0**k for k, p in enumerate(params)]  # unequal scales per tensor
    bounds = [sum(split[:i]) for i in range(len(split) + 1)]
    opt = ClipUp([{"params": params[a:b]} for a, b in itertools.pairwise(bounds)], lr=0.3, max_speed=0.4)
    for _ in range(steps):
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


def test_groups_of_one_setting_step_exactly_as_one_group() -> None:
    """Split into 2 or 4 groups with the same lr, momentum and max_speed, the parameters after 3 steps are bit-equal
    to those of one group (per-group norms stepped each group max_speed, √G·max_speed in all)."""
    one = _trajectory([4])
    for split in ([2, 2], [1, 1, 1, 1], [1, 3]):
        assert all(torch.equal(a, b) for a, b in zip(_trajectory(split), one, strict=True)), split


def test_groups_with_their_own_lr_share_the_whole_vectors_norms() -> None:
    """Two groups with lr 0.3 and 0.1 (momentum 0.5, max_speed 0.2): v_g ← 0.5·v_g + lr_g·g_g/‖g‖ and
    v ← v·min(1, 0.2/‖v‖), both norms over the whole vector, as computed by hand in float64 over two steps."""
    a = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.5, 0.0, 3.0], dtype=torch.float64, requires_grad=True)
    ga, gb = torch.tensor([3.0, 4.0], dtype=torch.float64), torch.tensor([0.0, 12.0, 0.0], dtype=torch.float64)
    opt = ClipUp([{"params": [a], "lr": 0.3}, {"params": [b], "lr": 0.1}], lr=0.3, momentum=0.5, max_speed=0.2)
    ref_a, ref_b, va, vb = a.detach().clone(), b.detach().clone(), torch.zeros(2, dtype=torch.float64), torch.zeros(3)
    n = torch.cat([ga, gb]).norm()  # 13
    for _ in range(2):
        a.grad, b.grad = ga.clone(), gb.clone()
        opt.step()
        va, vb = 0.5 * va + 0.3 * ga / n, 0.5 * vb + 0.1 * gb / n
        clip = min(1.0, 0.2 / float(torch.cat([va, vb]).norm()))
        va, vb = va * clip, vb * clip
        ref_a, ref_b = ref_a - va, ref_b - vb
    torch.testing.assert_close(a.detach(), ref_a, rtol=1e-14, atol=0)
    torch.testing.assert_close(b.detach(), ref_b, rtol=1e-14, atol=0)


def test_a_flipes_optimizer_factory_with_two_groups_steps_at_most_max_speed() -> None:
    """FlipES with ``optimizer=`` building ClipUp over two param groups (weights, biases): one tell moves the whole
    parameter vector by max_speed (the first step's velocity lr = 1 clipped to 0.1), within float32 rounding."""
    model = flipes.flipout(nn.Linear(6, 3))
    es = flipes.FlipES(
        model,
        popsize=8,
        sigma=0.1,
        seed=0,
        optimizer=lambda p: ClipUp([{"params": p[:1]}, {"params": p[1:]}], lr=1.0, max_speed=0.1),
    )
    before = torch.cat([p.detach().flatten() for p in es.params])
    with es.population():
        es.tell(model(torch.randn(8, 6)).sum(-1))
    step = float((torch.cat([p.detach().flatten() for p in es.params]) - before).norm())
    assert abs(step - 0.1) < 1e-6, step
