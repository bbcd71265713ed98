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


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_a_yaml_config_file_is_named_as_yaml_not_as_broken_toml(suffix: str, tmp_path: Path) -> None:
    """A YAML file of options is refused as YAML, naming the formats read (not as TOML to be fixed)."""
    path = tmp_path / f"run{suffix}"
    path.write_text("popsize: 8\n")
    with pytest.raises(UsageError) as e:
        parse_train_config(["--config", str(path)])
    assert "YAML" in e.value.problem and "TOML" not in e.value.problem
    assert ".toml" in e.value.fix and ".json" in e.value.fix


def test_a_json_suffix_in_capitals_is_read_as_json(tmp_path: Path) -> None:
    """run.JSON holds JSON: its options are read as such, not parsed (and refused) as TOML."""
    path = tmp_path / "run.JSON"
    path.write_text('{"popsize": 8, "env_kwargs": {"gravity": 12.0}}')
    config = parse_train_config(["--config", str(path)])
    assert (config.popsize, config.env_kwargs) == (8, {"gravity": 12.0})


def test_a_key_given_twice_inside_a_json_table_is_refused_as_on_the_command_line(tmp_path: Path) -> None:
    """A JSON config file whose env_kwargs gives one key twice is refused, naming the key and the table, as
    --env-kwargs with that object is (JSON would keep the last value silently)."""
    twice = '{"gravity": 1.0, "gravity": 30.0}'
    path = tmp_path / "run.json"
    path.write_text(f'{{"popsize": 8, "env_kwargs": {twice}}}')
    with pytest.raises(UsageError) as e:
        parse_train_config(["--config", str(path)])
    assert e.value.option == f"--config {path}"
    assert e.value.problem == "gives 'gravity' in env_kwargs twice"
    with pytest.raises(UsageError, match="gravity' twice"):
        parse_train_config(["--env-kwargs", twice])


def _own_fitness(**options: object) -> TrainConfig:
    return TrainConfig.for_env(env="none", fitness="mymod:fitness", model="mymod:model", **options)


@pytest.mark.parametrize(
    ("name", "value", "flag", "spelt"),
    [
        ("episodes", 3, "--episodes", "episodes=..."),
        ("reward_shift", 1.0, "--reward-shift", "reward_shift=..."),
        ("max_episode_steps", 10, "--max-episode-steps", "max_steps=..."),
    ],
)
def test_an_option_of_flipes_rollouts_beside_a_fitness_of_ones_own_is_refused(
    name: str, value: float, flag: str, spelt: str
) -> None:
    """--episodes, --reward-shift and --max-episode-steps set flipes' rollouts, which a --fitness replaces: given
    beside one they would be ignored, so they are refused, naming the option and RolloutFitness's own keyword."""
    validate(_own_fitness())  # each at its unset value is fine
    with pytest.raises(UsageError) as e:
        validate(_own_fitness(**{name: value}))
    assert e.value.option == flag
    assert "--fitness mymod:fitness computes the fitness itself" in e.value.problem
    assert e.value.fix == f"drop {flag}, or roll out with flipes.rl.RolloutFitness(env, {spelt}) in that fitness"


def test_a_rollout_option_set_by_the_envs_preset_row_or_a_resume_is_not_refused_beside_a_fitness() -> None:
    """Hopper-v5's row sets --reward-shift 1, which a --fitness run on it did not ask for; a resume keeps the options
    its run recorded. Another shift on that env is refused."""
    hopper = TrainConfig.for_env("Hopper-v5", algo="openai-es", fitness="mymod:fitness", model="mymod:model")
    assert hopper.reward_shift == 1.0
    validate(hopper)
    with pytest.raises(UsageError, match="--reward-shift"):
        validate(hopper.replace(reward_shift=2.0))
    validate(_own_fitness(episodes=3).replace(resume="runs/mine"))


@pytest.mark.parametrize(
    ("name", "text", "fix"),
    [
        ("run.json", '{"popsize": "64"}', 'write e.g. "popsize": 64'),
        ("run.JSON", '{"hidden": 32}', 'write e.g. "hidden": [32]'),
        ("run.toml", 'popsize = "64"', "write e.g. popsize = 64"),
    ],
)
def test_a_value_of_the_wrong_type_is_offered_in_the_files_own_syntax(name: str, text: str, fix: str, tmp_path: Path) -> None:
    """The value a config file's type error offers is written as that file writes it: "key": value in JSON (a TOML
    line pasted there would break the file), key = value in TOML."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UsageError) as e:
        parse_train_config(["--config", str(path)])
    assert e.value.fix == fix


@pytest.mark.parametrize("given", ["64,64", "[64, 64]", "64, 64"])
def test_a_list_given_as_one_word_is_refused_naming_the_flag_with_one_value_a_word(given: str) -> None:
    """--hidden 64,64 (another command line's list syntax) is refused, naming the flag as it is written here."""
    with pytest.raises(UsageError) as e:
        parse_train_config(["--hidden", given])
    assert e.value.option == "--hidden"
    assert e.value.problem == f"expected an integer, got {given!r} (one value a word: --hidden 64 64)"


def test_a_word_that_is_no_value_of_a_list_option_is_refused_as_before() -> None:
    """A word that no splitting makes into values is refused without a suggestion of words."""
    with pytest.raises(UsageError) as e:
        parse_train_config(["--hidden", "6a"])
    assert e.value.problem == "expected an integer, got '6a'"
