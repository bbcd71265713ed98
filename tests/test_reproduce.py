"""The paper-reproduction scripts (scripts/repro_*.py) run end to end at a tiny size."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import run_script_in_process

PNG = b"\x89PNG\r\n\x1a\n"


def run_repro(name: str, out: Path) -> dict:
    """Runs scripts/NAME.py --tiny, which writes NAME_tiny.{png,md,json} (never the full run's NAME.*), and reads them."""
    run_script_in_process(name, "--tiny", "true", "--threads", "1", "--out", out)
    assert not list(out.glob(f"{name}.*")), "a smoke test must not overwrite the full run's results"
    assert (out / f"{name}_tiny.png").read_bytes()[:8] == PNG
    assert "|---|" in (out / f"{name}_tiny.md").read_text()
    return json.loads((out / f"{name}_tiny.json").read_text())


def finite(values: list[float]) -> bool:
    return bool(values) and all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("repro")


def test_variance(out: Path) -> None:
    """scripts/repro_variance.py --tiny writes its PNG, Markdown table and JSON, with N = 1 ... 16, a positive finite
    variance per N for (at least) shared, Flipout and independent perturbations of each net, finite slopes, and
    Flipout's log-log slope below -0.5 even at this size."""
    r = run_repro("repro_variance", out)
    assert r["ns"] == [1, 2, 4, 8, 16]
    for net in r["nets"].values():
        assert {"shared", "flipout", "independent"} <= set(net["variance"])
        for curve in net["variance"].values():
            assert len(curve) == len(r["ns"]) and finite(curve)
        assert net["slope"]["flipout"] < -0.5  # falls with N even at this size
        assert all(math.isfinite(s) for s in net["slope"].values())


def test_learning(out: Path) -> None:
    """scripts/repro_learning.py --tiny writes its PNG, Markdown table and JSON, whose summary holds FlipES N=64,
    independent ES N=64 and backprop, each with a mean in [0, 100] and a finite time per generation, and a finite
    FlipES - independent difference at N = 64."""
    r = run_repro("repro_learning", out)
    assert {"FlipES N=64", "independent ES N=64", "backprop"} <= set(r["summary"])
    for s in r["summary"].values():
        assert 0 <= s["mean"] <= 100 and math.isfinite(s["seconds_per_generation"])
    assert math.isfinite(r["flipes_minus_independent"]["64"])


def test_timing(out: Path) -> None:
    """scripts/repro_timing.py --tiny writes its PNG, Markdown table and JSON, with positive finite Flipout and
    classic times in every fc and conv row, and positive finite throughputs for (at least) the plain and Flipout
    low-rank variants."""
    r = run_repro("repro_timing", out)
    for kind in ("fc", "conv"):
        for row in r[kind]:
            assert {"flipout", "classic"} <= set(row["ms"]) and finite(list(row["ms"].values()))
    lowrank = {row["variant"]: row for row in r["lowrank"]}
    assert {"plain", "flipout"} <= set(lowrank)
    assert finite([row["throughput_pct"] for row in lowrank.values()])
