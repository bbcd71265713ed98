"""Reading a long run's metrics.jsonl (flipes plot, curves.png at a run's end, flipes.read_metrics): each line is
parsed once, so a file of a million rows (~400 MB) costs one pass of JSON decoding, not two."""

from __future__ import annotations

import json
from pathlib import Path

import flipes.callbacks
from flipes.runs import read_metrics


def test_read_metrics_parses_each_line_once(tmp_path: Path, monkeypatch) -> None:
    """read_metrics of a file of 3 rows and a torn last line returns exactly the 3 rows, decoding JSON 4 times: once a
    line (it decoded each row twice, once to check it and once to return it)."""
    rows = [{"generation": g, "fitness_mean": g / 4} for g in range(3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"generation": 3, "fit')
    calls = []
    loads = json.loads

    def counted(text: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(text)
        return loads(text, *args, **kwargs)

    monkeypatch.setattr(flipes.callbacks.json, "loads", counted)  # the json module itself: any caller's decoding counts
    assert read_metrics(tmp_path) == rows
    assert len(calls) == 4
