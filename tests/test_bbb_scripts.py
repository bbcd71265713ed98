"""The Flipout-for-backprop scripts (scripts/backprop_variance.py, scripts/bayes_digits.py) refuse bad options in one
line before they train anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_script_in_process


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
