"""Flipout layers with a backprop noise model: an input with too FEW features or channels gets the plain layer's
error (not a population's), and every valid input shape (unbatched, extra batch dims, grouped, channels-last, circular
padding, transposed) still gets per-example weight noise in training mode and the plain layer's output in eval mode."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
from torch import nn

import flipes
from flipes.nn import GaussianPosterior, attach_noise

NOISE = functools.partial(GaussianPosterior, init_sigma=0.1)


def noisy(bare: nn.Module) -> nn.Module:
    return attach_noise(flipes.flipout(bare), NOISE)


FEWER = [
    ("Linear, fewer features", lambda: nn.Linear(3, 2), (4, 2)),
    ("Linear, fewer features, unbatched", lambda: nn.Linear(3, 2), (1,)),
    ("Conv2d, fewer channels", lambda: nn.Conv2d(3, 4, 3), (2, 2, 8, 8)),
    ("Conv1d, fewer channels, unbatched", lambda: nn.Conv1d(3, 4, 3), (2, 8)),
    ("ConvTranspose2d, fewer channels", lambda: nn.ConvTranspose2d(3, 4, 3), (2, 2, 8, 8)),
]


@pytest.mark.parametrize(("make", "shape"), [case[1:] for case in FEWER], ids=[case[0] for case in FEWER])
def test_an_input_with_fewer_features_gets_the_plain_layers_error(make: Callable[[], nn.Module], shape: tuple) -> None:
    """Too few features/channels raise the plain torch layer's exception and message in training and eval mode."""
    torch.manual_seed(0)
    bare = make()
    layer, x = noisy(bare), torch.randn(shape)
    with pytest.raises(Exception) as plain:
        bare(x)
    for training in (True, False):
        with pytest.raises(type(plain.value)) as got:
            layer.train(training)(x)
        assert str(got.value) == str(plain.value), training


VALID = [
    ("Linear, unbatched", lambda: nn.Linear(3, 2), (3,), False),
    ("Linear, extra batch dims", lambda: nn.Linear(3, 2), (4, 5, 3), False),
    ("Conv1d, unbatched", lambda: nn.Conv1d(3, 4, 3), (3, 10), False),
    ("Conv2d, grouped", lambda: nn.Conv2d(4, 6, 3, groups=2), (4, 4, 8, 8), False),
    ("Conv2d, channels-last", lambda: nn.Conv2d(3, 4, 3), (4, 3, 8, 8), True),
    ("Conv2d, circular padding", lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), (4, 3, 8, 8), False),
    ("Conv2d, unbatched", lambda: nn.Conv2d(3, 4, 3), (3, 8, 8), False),
    ("ConvTranspose2d, grouped", lambda: nn.ConvTranspose2d(4, 6, 3, groups=2), (4, 4, 6, 6), False),
    ("ConvTranspose1d, unbatched", lambda: nn.ConvTranspose1d(3, 4, 3), (3, 10), False),
    ("Conv3d", lambda: nn.Conv3d(2, 3, 2), (4, 2, 4, 4, 4), False),
]


@pytest.mark.parametrize(("make", "shape", "last"), [case[1:] for case in VALID], ids=[case[0] for case in VALID])
def test_a_valid_input_gets_per_example_noise_in_training_and_the_plain_output_in_eval(
    make: Callable[[], nn.Module], shape: tuple, last: bool
) -> None:
    """Eval mode: the plain layer's output (1e-6). Training mode (posterior σ = 0.1): same shape, an output at least
    1e-3 from the plain one, and, for a batch of one example repeated, examples that differ by 1e-3 or more (each its
    own weight sample); a shape check refusing these inputs would fall back to the plain forward and fail this."""
    torch.manual_seed(0)
    bare = make()
    layer = noisy(bare)
    batched = len(shape) > {nn.Linear: 1, nn.Conv1d: 2, nn.ConvTranspose1d: 2, nn.Conv2d: 3, nn.ConvTranspose2d: 3}.get(
        type(bare), 4
    )
    x = torch.randn(shape[1:]).expand(shape).contiguous() if batched else torch.randn(shape)
    if last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        plain = bare(x)
        torch.testing.assert_close(layer.eval()(x), plain, rtol=1e-6, atol=1e-6)
        sampled = layer.train()(x)
    assert sampled.shape == plain.shape
    assert (sampled - plain).abs().amax() > 1e-3
    if batched:
        assert (sampled[1:] - sampled[:1]).flatten(1).abs().amax(1).min() > 1e-3


def test_backprop_variance_measures_and_fits_its_batch_sizes_smallest_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--sizes 16 1 4 4`` is measured at 1, 4, 16 in that order (each once), and the table's slopes run over
    N = 1..16: a variance measured as ``1/N`` (stubbed, so nothing trains) gives each method ``[1, 1/4, 1/16]`` and
    slope -1; unsorted, the first and last sizes named 16 and 4 and the slopes came from a fit of shuffled points."""
    from helpers import ROOT, load_script, script_state_kept

    script = load_script(ROOT / "scripts" / "backprop_variance.py")
    monkeypatch.setattr(script, "total_variance", lambda model, params, x, y, n, repeats, seed: 1.0 / n)
    monkeypatch.setattr(script, "plot", lambda results, sizes, path: None)
    monkeypatch.setattr(script, "data", lambda: (torch.zeros(4, 64), torch.zeros(4, dtype=torch.long), None, None))
    with script_state_kept():  # main sets torch's thread count
        results = script.main(script.Args(sizes=[16, 1, 4, 4], repeats=2, hidden=1, pretrain_epochs=0, out=str(tmp_path)))
    assert all(v == [1.0, 0.25, 0.0625] for rows in results.values() for v in rows.values()), results
    out = capsys.readouterr().out
    assert "| slope, N = 1..16 | slope, N = 4..16 |" in out
    assert "| FC | Flipout | -1.00 | -1.00 | 1 | 0.0625 |" in out
