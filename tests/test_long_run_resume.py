"""Resuming a run of many generations: what a resume reads of its history costs memory by the rows it keeps, not by
the size of metrics.jsonl nor by the generation it resumes at."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

from flipes.callbacks import JSONLLogger


def resume_log(path: Path, generation: int) -> int:
    """Resume ``path``'s JSONLLogger at ``generation`` (as flipes.train's resume does) and return the peak of the Python
    memory that took, in bytes."""
    logger = JSONLLogger(path)
    state = SimpleNamespace(resumed=True, es=SimpleNamespace(generation=generation))
    tracemalloc.start()
    try:
        logger.on_train_start(state)  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        logger.close()
    return peak


def test_resume_at_a_huge_generation_holds_no_number_per_generation(tmp_path: Path, capsys) -> None:
    """A run resumed at generation 10**6 whose metrics.jsonl holds 3 rows keeps them and names the 999,997 missing
    generations as one span, in under 1 MB of memory (holding every generation below the resumed one took ~100 MB
    here, and a state at generation 2**31 ran out of memory)."""
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"generation": g, "fitness_mean": 0.5}) + "\n" for g in range(3)))
    peak = resume_log(path, 10**6)
    assert peak < 2**20
    assert [json.loads(line)["generation"] for line in path.read_text().splitlines()] == [0, 1, 2]
    assert "no row of generation(s) 3-999999 before the resumed generation 1000000" in capsys.readouterr().err


def test_resume_reads_a_long_metrics_file_line_by_line(tmp_path: Path, capsys) -> None:
    """Resuming at generation 4,000 a metrics.jsonl of 5,000 rows (2 MB, the rows of a crash past the checkpoint
    included) keeps exactly the rows before it, in order, and takes under 0.5 MB of memory: the file is not held whole
    (its text and lines were, ~5 MB, and a run of a million generations has ~400 MB)."""
    path = tmp_path / "metrics.jsonl"
    pad = "x" * 400  # a row's size in a real run
    path.write_text("".join(json.dumps({"generation": g, "note": pad}) + "\n" for g in range(5_000)) + '{"generation": 50')
    peak = resume_log(path, 4_000)
    assert peak < 2**19
    lines = path.read_text().splitlines()
    assert [json.loads(line)["generation"] for line in lines] == list(range(4_000))
    err = capsys.readouterr().err
    assert "no row of generation" not in err and "dropped 1 torn" in err  # the torn last line is said to be dropped


def test_resume_names_gaps_of_rows_out_of_order(tmp_path: Path, capsys) -> None:
    """Rows edited out of order or repeated still give the missing generations exactly, the first 5 spans and the count
    of all: present 9, 0, 2, 2, 4, 6, 8, 11 of 14 -> missing 1, 3, 5, 7, 10, 12-13 (7 in all)."""
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"generation": g}) + "\n" for g in (9, 0, 2, 2, 4, 6, 8, 11)))
    resume_log(path, 14)
    assert "no row of generation(s) 1, 3, 5, 7, 10, ... (7 in all) before the resumed generation 14" in capsys.readouterr().err
    assert [json.loads(line)["generation"] for line in path.read_text().splitlines()] == [9, 0, 2, 2, 4, 6, 8, 11]
