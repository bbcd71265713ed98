"""The repro_* scripts draw their figure after minutes of measuring: without matplotlib they say so in one line before
measuring anything, not with a traceback at the end."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["repro_variance", "repro_timing", "repro_learning"])
def test_a_repro_script_without_matplotlib_stops_before_measuring(
    script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without matplotlib each script exits with status 2 and one line naming the extra, before its first measurement
    (nothing written to its output folder)."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # its import raises ImportError, installed or not
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--tiny", "true", "--out", str(out)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(ROOT / "scripts" / f"{script}.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err, err
    assert "matplotlib: is not installed" in err and "pip install 'flipes[examples]'" in err, err
    assert not out.exists()


def test_backprop_variance_without_matplotlib_stops_before_measuring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """scripts/backprop_variance.py (the README's Fig. 1 for backprop, minutes long) draws its figure at the end too:
    without matplotlib it exits with status 2 and the same one line before measuring (no network trained, no figure)."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(sys, "argv", ["backprop_variance.py", "--quick", "true", "--out", str(tmp_path / "out")])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(ROOT / "scripts" / "backprop_variance.py"), run_name="__main__")
    captured = capsys.readouterr()
    assert exited.value.code == 2 and "Traceback" not in captured.err, captured.err
    assert "matplotlib: is not installed" in captured.err and "pip install 'flipes[examples]'" in captured.err
    assert "FC:" not in captured.out, captured.out  # no net measured
