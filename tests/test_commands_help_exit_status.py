"""``flipes --help`` and ``flipes train --help`` tell a job script the exit statuses and which stream holds what."""

from __future__ import annotations

import re

import pytest

from flipes.commands import READER_GONE, main


def test_the_help_names_every_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    """``flipes --help`` names 0, 1, 2, 130 and 141 and the streams; ``flipes train --help`` names 0, 1, 2 and 130."""
    assert main(["--help"]) == 0
    top = " ".join(capsys.readouterr().out.split())
    assert all(re.search(rf"\b{status}\b", top) for status in (0, 1, 2, 130, READER_GONE)), top
    assert "stdout" in top and "stderr" in top
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Exit status: 0 training ended" in text and "130 stopped by Ctrl-C" in text and "2 a mistake" in text, text
