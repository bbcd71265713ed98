"""The command line's answers to slips a user makes: a misspelt command, a stray space in an env id, an option word in
another case, a device written as a number; options a run would not use; the stop line of a short --max-seconds; the
resume advice on EnvPool's sticky Atari; the --seed docs; and a resume from a checkpoint file beside another run."""

from __future__ import annotations

import importlib.util
import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, FAST_KW

import flipes
from flipes.cli import check_options
from flipes.commands import main, parse_train_config
from flipes.config import TrainConfig


def usage_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """The one stderr line of a flipes command that ends with exit status 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    return err[0]


def test_a_misspelt_command_is_answered_with_the_command_meant(capsys: pytest.CaptureFixture) -> None:
    """``flipes trian`` and ``flipes Train`` name train as the command meant; a word close to none lists them all."""
    assert usage_error(capsys, "trian") == (
        "flipes: error: trian: unknown command; did you mean train? use one of train, evaluate, export, plot"
    )
    assert "did you mean train?" in usage_error(capsys, "Train")
    assert usage_error(capsys, "xyz") == "flipes: error: xyz: unknown command; use one of train, evaluate, export, plot"


@pytest.mark.parametrize(("env_id", "where"), [("CartPole-v1 ", "before or after"), (" flipes/CartPole-v1", "before or after"),
                                               ("Cart Pole-v1", "inside")])  # fmt: skip
def test_an_env_id_with_a_space_is_refused_naming_the_space_and_the_id_without_it(env_id: str, where: str) -> None:
    """An env id holding a space is refused by the space, not by gymnasium's "Malformed environment ID", with the id
    as it reads without it."""
    from flipes.rl import make_vector_env
    from flipes.rl.envs import EnvError

    fixed = "".join(env_id.split())
    with pytest.raises(EnvError, match=rf"^env id '{env_id}' has a space {where} it; use '{fixed}'$"):
        make_vector_env(env_id, 1)


def test_option_words_are_taken_in_any_case_as_true_false_and_none_are(tmp_path: Path) -> None:
    """``--target AUTO`` is ``auto`` as ``--target NONE`` is none (and ``--plot FALSE`` false): every word an option
    names is taken in any case, on the command line, in a config file and from Python, and picks the same rows."""
    config = parse_train_config(["--target", "AUTO", "--algo", "PGPE", "--shaping", "Centered-Ranks", "--plot", "FALSE"])
    assert (config.target, config.algo, config.shaping, config.plot) == ("auto", "pgpe", "centered-ranks", False)
    assert parse_train_config(["--target", "NONE"]).target is None
    in_file = check_options(TrainConfig, {"target": "Auto", "policy": "MLP"}, "--config run.toml")
    assert in_file == {"target": "auto", "policy": "mlp"}
    assert TrainConfig.for_env("flipes/CartPole-v1", algo="PGPE") == TrainConfig.for_env("flipes/CartPole-v1", algo="pgpe")
    with pytest.raises(flipes.UsageError, match="expected 'openai-es' or 'pgpe' or 'ars', got 'es'"):
        parse_train_config(["--algo", "es"])


@pytest.mark.parametrize(("name", "text", "written"), [
    ("run.json", '{"device": 0}', '"device": "cuda:0" or "cpu"'),
    ("run.toml", "device = 1", 'device = "cuda:1" or "cpu"'),
    ("run.toml", "device = true", 'device = "cuda:0" or "cpu"'),
])  # fmt: skip
def test_a_device_given_as_a_number_in_a_config_file_is_told_the_names_of_devices(
    tmp_path: Path, capsys: pytest.CaptureFixture, name: str, text: str, written: str
) -> None:
    """A device written as a number is told to write a device torch takes (its CUDA index, or cpu), not the number
    as a string, which names no device either."""
    (tmp_path / name).write_text(text)
    line = usage_error(capsys, "train", "--config", str(tmp_path / name), "--out", str(tmp_path / "out"))
    assert line.endswith(f"is not a string; write e.g. {written}"), line


def test_a_numpy_integer_device_from_python_is_told_its_cuda_index() -> None:
    """flipes.train(device=np.int64(1)) is refused naming "cuda:1", the index it gave, as a Python int would be."""
    with pytest.raises(flipes.UsageError, match=r'is not a string; write e.g. device = "cuda:1" or "cpu"'):
        flipes.train(env="none", device=np.int64(1))


def test_options_a_run_would_not_use_are_said_in_a_note() -> None:
    """``--eval-episodes`` beside a ``--fitness`` (its evaluate() evaluates) and ``--env-threads`` with a flipes/ torch
    env (no engine threads) are not used: each gets a note, and neither is noted where it is used, at its default or
    preset value, or on a resume (whose options are the run's)."""
    from flipes.training import unused_option_notes

    custom = TrainConfig(env="none", fitness="m:f", model="m:g", eval_episodes=3)
    (note,) = unused_option_notes(custom)
    assert note.startswith("--eval-episodes 3 is not used: --fitness m:f replaces flipes' evaluation by the evaluate()")
    (note,) = unused_option_notes(TrainConfig(env="flipes/CartPole-v1", env_threads=2))
    assert note.startswith("--env-threads 2 is not used: flipes/CartPole-v1 is a torch env")
    assert unused_option_notes(TrainConfig(env="CartPole-v1", env_threads=2, eval_episodes=3)) == []  # EnvPool's threads
    assert unused_option_notes(TrainConfig(env="none", fitness="m:f", model="m:g")) == []
    assert unused_option_notes(TrainConfig(env="HalfCheetah-v5", fitness="m:f", eval_episodes=5)) == []  # its preset's
    assert unused_option_notes(custom.replace(resume="runs/x")) == []


def test_an_unused_env_threads_note_is_printed_once_with_the_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A run of a flipes/ env given --env-threads prints the note once among its notes and trains as asked."""
    argv = ["train", *FAST, "--env", "flipes/CartPole-v1", "--env-threads", "2", "--generations", "1", "--progress", "true"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert err.count("flipes: --env-threads 2 is not used: flipes/CartPole-v1 is a torch env") == 1, err


@pytest.mark.parametrize(("seconds", "said"), [(0.31, "0.31"), (0.012, "0.012"), (4.25, "4.2"), (6.0, "6"), (37.4, "37")])
def test_the_max_seconds_stop_line_says_the_seconds_to_two_digits_below_ten(seconds: float, said: str) -> None:
    """A call stopped by --max-seconds says how long it ran to two significant digits below 10 s (not "0 s" for a
    limit under a second), in whole seconds above."""
    from flipes.stopping import stop_reason

    state = types.SimpleNamespace(target=None, config=TrainConfig(max_seconds=0.3))
    row = {"timesteps": 0}
    assert stop_reason(state, row, False, False, seconds) == f"stopped after {said} s of this call (--max-seconds 0.3)"  # type: ignore[arg-type]


@pytest.mark.skipif(importlib.util.find_spec("envpool") is None, reason="needs EnvPool")
def test_a_sticky_atari_resume_advises_options_of_that_env_not_a_gymnasium_id() -> None:
    """Resumed on EnvPool's Pong-v5 with sticky actions, the caution advises --common-episodes or
    repeat_action_probability 0, not gymnasium:Pong-v5 (no such id: gymnasium's ALE/Pong-v5 is another env)."""
    from flipes.rl import EnvPoolVectorEnv
    from flipes.training import resumed_streams_caution

    env = EnvPoolVectorEnv("Pong-v5", 1, repeat_action_probability=0.25)
    try:
        config = TrainConfig(env="Pong-v5", env_kwargs={"repeat_action_probability": 0.25})
        caution = resumed_streams_caution(config, env)
        assert caution is not None and caution.startswith("resumed on EnvPool's Pong-v5 (its sticky actions)")
        assert "--common-episodes" in caution and '"repeat_action_probability": 0' in caution
        assert "gymnasium:" not in caution
        assert resumed_streams_caution(config.replace(common_episodes=True), env) is None
    finally:
        env.close()


def test_the_seed_docs_say_it_seeds_the_model_build_and_each_tell(capsys: pytest.CaptureFixture) -> None:
    """--seed's help says what the seed keys and seeds: the noise and episodes, the global generators while the model
    is built, and around each generation's fitness, evaluation and tell (training.py seeds all of them)."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    doc = text[text.rindex("--seed") :][:600]  # its help, below the usage line
    for said in ("noise and episodes", "while the model is built", "fitness, evaluation and tell"):
        assert said in doc, doc


def test_a_checkpoint_file_resumes_with_the_options_it_records_not_its_directorys(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--resume b/x.pt`` of a checkpoint copied beside another run's config.json continues the run that file
    records (its options, hidden [4]), into --out, bit for bit: its parameters are those of that run resumed itself;
    b's metrics rows, another run's history, stay behind (said in a note)."""
    a, b, e = tmp_path / "a", tmp_path / "b", tmp_path / "e"
    flipes.train(**FAST_KW, generations=2, hidden=[4], out=str(a))
    flipes.train(**FAST_KW, generations=2, hidden=[5], out=str(b))
    shutil.copy(a / "checkpoint.pt", b / "x.pt")
    capsys.readouterr()
    assert main(["train", "--resume", str(b / "x.pt"), "--out", str(e), "--generations", "3"]) == 0
    assert f"flipes: {b / 'x.pt'} is not a checkpoint of the run in {str(b)!r} (trained with other options, --hidden: " \
        "[4] in the file, [5] in the run): its history stays there" in capsys.readouterr().err  # fmt: skip
    assert main(["train", "--resume", str(a), "--generations", "3"]) == 0
    assert json.loads((e / "config.json").read_text())["hidden"] == [4]
    rows = [json.loads(line) for line in (e / "metrics.jsonl").read_text().splitlines()]
    same = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()][-1]
    assert [r["generation"] for r in rows] == [2] and rows[0]["params_sha256"] == same["params_sha256"]
