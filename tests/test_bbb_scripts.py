"""The Flipout-for-backprop scripts (scripts/backprop_variance.py, scripts/bayes_digits.py) refuse bad options in one
line before they train anything."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from helpers import run_script_in_process
from torch import Tensor


@pytest.mark.parametrize("sigma", ["0", "-0.05", "nan", "inf"])
def test_backprop_variance_refuses_a_posterior_sigma_that_is_not_a_finite_positive_number(
    sigma: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--sigma`` 0, negative, NaN or infinite: exit status 2 with the one line ``flipes: error: --sigma: must be a
    finite number > 0, got ...`` and nothing measured or written (it was GaussianPosterior's ValueError traceback,
    naming ``init_sigma``, after the FC network's pretraining)."""
    with pytest.raises(SystemExit) as exited:
        run_script_in_process("backprop_variance", "--sigma", sigma, "--pretrain-epochs", "1", "--out", tmp_path)
    out, err = capsys.readouterr()
    assert exited.value.code == 2, err
    assert err.strip() == f"flipes: error: --sigma: must be a finite number > 0, got {float(sigma)}; e.g. 0.05"
    assert "FC:" not in out and not list(tmp_path.iterdir())


@pytest.mark.parametrize("sizes", [["4"], ["2", "2"]])
def test_backprop_variance_refuses_sizes_that_give_no_slope(
    sizes: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--sizes`` with fewer than two different batch sizes: exit status 2 with the one line naming ``--sizes`` and
    nothing written (it measured everything, then printed slopes fitted through one point, with numpy's
    RankWarning)."""
    with pytest.raises(SystemExit) as exited:
        run_script_in_process(
            "backprop_variance", "--sizes", *sizes, "--repeats", "2", "--hidden", "4", "--pretrain-epochs", "0", "--out", tmp_path
        )
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert err.startswith("flipes: error: --sizes: needs two different batch sizes or more to fit a slope")
    assert not list(tmp_path.iterdir())


def test_backprop_variances_large_batch_slope_always_fits_two_sizes_or_more() -> None:
    """The table's second slope (``large_sizes``) fits the batch sizes >= 64 where two or more are, else the largest
    two: with one size >= 64 (1, 4, 64) it was a fit through that one point."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from backprop_variance import large_sizes

    assert large_sizes([1, 4, 16, 64, 256, 1024]) == [64, 256, 1024]
    assert large_sizes([1, 4, 64]) == [4, 64]
    assert large_sizes([1, 4, 16]) == [4, 16]
    assert large_sizes([64, 128]) == [64, 128]


@pytest.mark.parametrize(("fraction", "held_out", "left"), [("0.0003", 0, 1437), ("0.9999", 1437, 0)])
def test_bayes_digits_refuses_a_validation_fraction_that_empties_a_split(
    fraction: str,
    held_out: int,
    left: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--val-fraction`` inside (0, 1) but rounding to an empty validation or training split of the 1,437 training
    images: exit status 2 with one line naming ``--val-fraction`` and both counts, nothing trained or written (it
    trained, printed NaN validation NLLs and "selected" the first β). The digits are stand-ins of the real splits'
    sizes (loading scikit-learn costs ~1.5 s of CPU)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    import digits

    monkeypatch.setattr(
        digits,
        "data",
        lambda: (
            torch.zeros(1437, 64),
            torch.zeros(1437, dtype=torch.long),
            torch.zeros(360, 64),
            torch.zeros(360, dtype=torch.long),
        ),
    )
    args = ["--epochs", "1", "--betas", "1", "0.1", "--select-seeds", "0", "--seeds", "0", "--samples", "1"]
    with pytest.raises(SystemExit) as exited:
        run_script_in_process("bayes_digits", *args, "--val-fraction", fraction, "--out", tmp_path)
    out, err = capsys.readouterr()
    assert exited.value.code == 2, err
    assert err.strip() == (
        f"flipes: error: --val-fraction: {float(fraction):g} of the 1437 training examples holds out {held_out} for "
        f"validation and leaves {left} to train on; give a fraction that leaves at least one example to each, e.g. 0.2"
    )
    assert "| 1 | 0 |" not in out and not list(tmp_path.iterdir())


def test_bayes_digits_weights_the_kl_by_beta_over_the_training_set_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss of every minibatch is mean cross-entropy + β · KL / N with N the training examples: the negative ELBO
    per example for β = 1 (Blundell et al., 2015, Sec. 3.4, weigh the KL by 1/M per minibatch of a summed likelihood,
    M minibatches; over a minibatch mean that is 1/N). On 10 examples in minibatches of 4, 4 and 2, the gradient of
    each step's loss w.r.t. its KL term (a spy on ``flipes.kl_divergence``) is β/10 to float32 rounding, not β/4 or
    β/2 (a KL scaled by the minibatch's size)."""
    from helpers import ROOT, load_script

    import flipes

    script = load_script(ROOT / "scripts" / "bayes_digits.py")
    seen: list[Tensor] = []
    real = flipes.kl_divergence

    def spy(model: torch.nn.Module) -> Tensor:
        kl = real(model).clone()
        kl.register_hook(lambda g: seen.append(g))
        return kl

    monkeypatch.setattr(flipes, "kl_divergence", spy)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(10, 64, generator=gen), torch.randint(10, (10,), generator=gen)
    with torch.random.fork_rng(devices=[]):
        script.train(script.Args(hidden=8, epochs=1, batch=4), 0, 0.3, x, y)
    assert len(seen) == 3
    assert all(g.dtype == torch.float32 and g.item() == pytest.approx(0.3 / 10, rel=1e-6) for g in seen), seen
