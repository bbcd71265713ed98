"""ClipUp's parameter groups with their own momentum and max_speed apply them to their part of the velocity, while
‖g‖ and ‖v‖ stay those of the whole vector (as its docstring says)."""

from __future__ import annotations

import torch

from flipes.optim import ClipUp


def test_groups_with_their_own_momentum_and_max_speed_follow_a_float64_hand_computation() -> None:
    """Groups (lr 0.3, momentum 0.5, max_speed 0.2) and (lr 0.1, momentum 0.9, max_speed 1.0): v_g ← m_g·v_g +
    lr_g·g_g/‖g‖, then v_g ← v_g·min(1, max_speed_g/‖v‖) with ‖g‖, ‖v‖ over both groups, by hand over three steps
    (the first group is clipped, the second is not)."""
    a = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.5, 0.0, 3.0], dtype=torch.float64, requires_grad=True)
    ga, gb = torch.tensor([3.0, 4.0], dtype=torch.float64), torch.tensor([0.0, 12.0, 0.0], dtype=torch.float64)
    groups = [
        {"params": [a], "lr": 0.3, "momentum": 0.5, "max_speed": 0.2},
        {"params": [b], "lr": 0.1, "momentum": 0.9, "max_speed": 1.0},
    ]
    opt = ClipUp(groups, lr=0.3, momentum=0.5, max_speed=0.2)
    ref_a, ref_b = a.detach().clone(), b.detach().clone()
    va, vb = torch.zeros(2, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    n = torch.cat([ga, gb]).norm()  # 13
    clipped = []
    for _ in range(3):
        a.grad, b.grad = ga.clone(), gb.clone()
        opt.step()
        va, vb = 0.5 * va + 0.3 * ga / n, 0.9 * vb + 0.1 * gb / n
        speed = float(torch.cat([va, vb]).norm())
        clipped.append((0.2 / speed < 1, 1.0 / speed < 1))
        va, vb = va * min(1.0, 0.2 / speed), vb * min(1.0, 1.0 / speed)
        ref_a, ref_b = ref_a - va, ref_b - vb
    assert clipped[-1] == (True, False)  # the scenario exercises both group's own max_speed
    torch.testing.assert_close(a.detach(), ref_a, rtol=1e-14, atol=0)
    torch.testing.assert_close(b.detach(), ref_b, rtol=1e-14, atol=0)
