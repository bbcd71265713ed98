"""The commands' output in an encoding without Greek letters (a latin-1 or ASCII locale, Windows' cp1252 redirected
to a file): spelt in ASCII, not a UnicodeEncodeError."""

from __future__ import annotations

import io
import sys

import pytest

from flipes.commands import main


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_train_help_writes_to_a_stream_without_greek_letters(encoding: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``flipes train --help`` (whose texts hold σ) on a stdout in ``encoding`` ends with status 0, σ spelt
    ``sigma``; what the encoding has (latin-1's ±) stays as it is."""
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding=encoding)
    monkeypatch.setattr(sys, "stdout", out)
    with pytest.raises(SystemExit) as ended:
        main(["train", "--help"])
    assert ended.value.code == 0
    out.flush()
    text = raw.getvalue().decode(encoding)
    assert "--sigma-decay" in text and "σ" not in text and "sigma" in text
    assert "\\u03c3" not in text  # spelt, not escaped


def test_the_plain_spelling_of_characters_an_encoding_lacks() -> None:
    """The error handler flipes' streams use spells the characters of its output in ASCII, and any other as Python's
    ``backslashreplace`` does."""
    import flipes.cli  # noqa: F401 (registers the handler)

    assert "return 1.50 ± 0.25, σ·√D ≥ ξ".encode("ascii", "flipes.plain") == b"return 1.50 +- 0.25, sigma*sqrtD >= \\u03be"
    assert "± σ".encode("latin-1", "flipes.plain") == "± sigma".encode("latin-1")


def test_a_utf8_stdout_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a UTF-8 stdout the command changes nothing: its error handler stays the stream's own."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    monkeypatch.setattr(sys, "stdout", out)
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert out.errors == "strict"
