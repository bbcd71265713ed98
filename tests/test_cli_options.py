"""flipes train's options as a shell user gives them: flags, config files and the options flipes' rollouts alone read."""

from __future__ import annotations

from pathlib import Path

import pytest

from flipes.command_options import parse_train_config
from flipes.config import TrainConfig, validate
from flipes.errors import UsageError


@pytest.mark.parametrize("flag", ["--config", "--algo", "--policy"])
def test_a_flag_missing_its_value_names_flipes_train_help(flag: str) -> None:
    """--config, --algo and --policy are read before the other flags (they pick the presets); a missing value is
    named with flipes train's --help, not with the name of the Python script that runs the command."""
    with pytest.raises(UsageError) as e:
        parse_train_config([flag])
    assert e.value.option == flag
    assert e.value.fix == "flipes train --help describes it"
