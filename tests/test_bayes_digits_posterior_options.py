"""scripts/bayes_digits.py refuses a posterior σ that GaussianPosterior cannot take (an infinite KL term in float32, or
not a finite number > 0) with the scripts' one-line usage error and exit status 2, before any training."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_script_in_process

TINY = ("--epochs", "1", "--betas", "1", "--select-seeds", "0", "--seeds", "0", "--samples", "1", "--hidden", "2")


@pytest.mark.parametrize(
    ("options", "line"),
    [
        (
            ("--init-sigma", "1e30"),
            "flipes: error: --init-sigma: 1e+30 with --prior-sigma 1 gives an infinite KL term in float32; "
            "choose values nearer 1, e.g. --init-sigma 0.001 --prior-sigma 1",
        ),
        (
            ("--init-sigma", "1e10", "--prior-sigma", "1e-12"),
            "flipes: error: --init-sigma: 1e+10 with --prior-sigma 1e-12 gives an infinite KL term in float32; "
            "choose values nearer 1, e.g. --init-sigma 0.001 --prior-sigma 1",
        ),
        (("--init-sigma", "0"), "flipes: error: --init-sigma: must be at least 1e-12, got 0.0; give a value >= 1e-12"),
        (("--init-sigma", "-1"), "flipes: error: --init-sigma: must be at least 1e-12, got -1.0; give a value >= 1e-12"),
        (("--init-sigma", "nan"), "flipes: error: --init-sigma: must be at least 1e-12, got nan; give a value >= 1e-12"),
        (("--init-sigma", "inf"), "flipes: error: --init-sigma: must be finite, got inf"),
    ],
    ids=["1e30", "1e10_with_tiny_prior", "0", "-1", "nan", "inf"],
)
def test_a_posterior_sigma_out_of_range_is_a_usage_error(
    options: tuple[str, ...], line: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit status 2 and one stderr line naming the option and the fix; nothing trained (no results written)."""
    with pytest.raises(SystemExit) as caught:
        run_script_in_process("bayes_digits", *TINY, "--out", tmp_path, *options)
    err = capsys.readouterr().err.strip().splitlines()
    assert caught.value.code == 2 and err == [line]
    assert not any(tmp_path.iterdir())
