"""The flags other tools take for a log's volume (--quiet, --silent, --verbose) name --progress, not their closest
spellings (--out, and --overwrite, which replaces a run)."""

from __future__ import annotations

import pytest

from flipes.command_options import parse_train_config
from flipes.config import TrainConfig
from flipes.errors import UsageError


@pytest.mark.parametrize(("flag", "says"), [("--quiet", "--progress false"), ("--silent", "--progress false"),
                                            ("--verbose", "--progress here, on by default")])  # fmt: skip
def test_a_volume_flag_names_progress(flag: str, says: str) -> None:
    """``flipes train --quiet`` is refused naming ``--progress false``; ``--verbose`` says progress is on already; none
    of them suggests --overwrite or --out."""
    with pytest.raises(UsageError) as e:
        parse_train_config([flag])
    assert e.value.option == flag and says in e.value.fix
    assert "--overwrite" not in e.value.fix and "--out" not in e.value.fix


def test_quiet_as_a_keyword_names_progress() -> None:
    """``TrainConfig(quiet=True)`` (or a config file's ``quiet = true``) names the option as a keyword: progress."""
    with pytest.raises(UsageError) as e:
        TrainConfig(quiet=True)  # type: ignore[call-arg]
    assert e.value.fix.startswith("quiet is progress here, off: progress false")
