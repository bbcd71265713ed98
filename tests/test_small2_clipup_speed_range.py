"""ClipUp's steps scale with lr and max_speed over float32's whole range: its velocity norm neither overflows
(‖v‖ = inf, a clip of 0: parameters that stop) nor underflows (‖v‖ = 0, no clip: steps past max_speed)."""

import pytest
import torch

from flipes.optim import ClipUp


@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_clipup_steps_scale_with_lr_past_float32_norm_range(scale: float) -> None:
    """Four steps at lr = scale (max_speed 2·lr, so the 3rd and 4th are clipped) move float32 parameters by
    ``scale`` times the moves at lr = 1, to float32 rounding (rtol 1e-5)."""
    grad = torch.tensor([1.0, -2.0, 3.0, 0.5])
    moved = {}
    for lr in (1.0, scale):
        p = torch.nn.Parameter(torch.zeros(4))
        opt = ClipUp([p], lr=lr)
        for _ in range(4):
            p.grad = grad.clone()
            opt.step()
        moved[lr] = p.detach().double()
    torch.testing.assert_close(moved[scale] / scale, moved[1.0], rtol=1e-5, atol=0)
