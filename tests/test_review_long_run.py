"""A resume's rewrite of metrics.jsonl at its edges: the missing generations it names (none past the file's, none
negative, the '...' only past 5 spans), and its atomicity: the kept rows synced before they replace the file, and the
file unchanged, no temporary left, where the rewrite fails or is interrupted."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

import flipes.callbacks as callbacks
from flipes.callbacks import JSONLLogger
from flipes.errors import StorageError


def resume(path: Path, generation: int) -> None:
    """Resume ``path``'s JSONLLogger at ``generation`` as flipes.train's resume does."""
    logger = JSONLLogger(path)
    try:
        logger.on_train_start(SimpleNamespace(resumed=True, es=SimpleNamespace(generation=generation)))  # type: ignore[arg-type]
    finally:
        logger.close()


def rows(*generations: int) -> str:
    return "".join(json.dumps({"generation": g}) + "\n" for g in generations)


@pytest.mark.parametrize(
    "text,generation,kept,note",
    [
        ("", 3, [], "no row of generation(s) 0-2 before"),
        ('{"generation": 0, "fit', 2, [], "no row of generation(s) 0-1 before"),
        (rows(0, 1, 2, 3, 4, 5), 3, [0, 1, 2], None),
        (rows(0, 1, 1, 2), 3, [0, 1, 1, 2], None),
        (rows(-2, 0, 1), 2, [-2, 0, 1], None),
        (rows(0, -(10**20), 1), 2, [0, -(10**20), 1], None),
        (rows(1, 3, 5, 7, 9), 10, [1, 3, 5, 7, 9], "no row of generation(s) 0, 2, 4, 6, 8 before"),
        (rows(1, 3, 5, 7, 9), 11, [1, 3, 5, 7, 9], "no row of generation(s) 0, 2, 4, 6, 8, ... (6 in all) before"),
    ],
    ids=["empty", "only torn", "rows past", "duplicate", "negative", "past int64", "5 spans", "6 spans"],
)
def test_a_resume_names_exactly_the_missing_generations(
    tmp_path: Path, capsys: pytest.CaptureFixture, text: str, generation: int, kept: list[int], note: str | None
) -> None:
    """An empty file or one torn line names every generation before the resumed one; rows past it are dropped without a
    note; a duplicate or a negative generation (edited by hand, past int64's range too) names nothing; 5 spans are all
    shown, 6 end in '...' and the count."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(text)
    resume(path, generation)
    assert [json.loads(line)["generation"] for line in path.read_text().splitlines()] == kept
    err = capsys.readouterr().err
    if note is None:
        assert "no row of generation" not in err
    else:
        assert note in err and (", ..." in note or ", ..." not in err)


def test_the_kept_rows_are_synced_before_they_replace_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The resume's new file is fsynced holding all its rows, and only then renamed onto metrics.jsonl: a crash of the
    machine after the rename cannot leave an empty or partial file in place of the rows."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(rows(0, 1, 2, 3))
    events: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("fsync", Path(name).name, Path(name).read_text()))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(("replace", Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(callbacks.os, "fsync", fsync)
    monkeypatch.setattr(callbacks.os, "replace", replace)
    resume(path, 3)
    assert events[:2] == [("fsync", "metrics.jsonl.tmp", rows(0, 1, 2)), ("replace", "metrics.jsonl.tmp", "metrics.jsonl")]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()], ids=["disk full", "ctrl-c"])
def test_a_rewrite_cut_short_leaves_the_file_unchanged_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    """A rewrite that fails midway (a full disk: a StorageError saying the file is unchanged) or is interrupted
    (Ctrl-C, raised again) leaves metrics.jsonl byte for byte as it was and no metrics.jsonl.tmp beside it."""
    path = tmp_path / "metrics.jsonl"
    before = rows(0, 1, 2, 3) + '{"generation": 4, "fit'
    path.write_text(before)
    real_rows = callbacks.jsonl_rows

    def failing(p: Path):  # type: ignore[no-untyped-def]
        for i, item in enumerate(real_rows(p)):
            if i == 2:  # two rows already written to the temporary file
                raise error
            yield item

    monkeypatch.setattr(callbacks, "jsonl_rows", failing)
    with pytest.raises(StorageError if isinstance(error, OSError) else KeyboardInterrupt) as info:
        resume(path, 3)
    assert isinstance(error, KeyboardInterrupt) or "it is unchanged" in str(info.value)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
