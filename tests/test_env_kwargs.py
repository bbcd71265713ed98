"""The env's constructor options (``--env-kwargs``, ``flipes.train(env_kwargs=...)``, ``make_vector_env(**kwargs)``):
read from flags and config files, checked against what each engine's env takes, and given to every env a run builds
(training, evaluation, the CNN's reference frames, ``flipes evaluate``, ``--render``, ``flipes export``)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from helpers import NEEDS_TOMLLIB, metrics

import flipes
from flipes.cli import parse_config
from flipes.commands import main
from flipes.config import TrainConfig
from flipes.rl import make_vector_env
from flipes.rl.envpool_vec import envpool_ids
from flipes.rl.envs import EnvOptionError, NumpyToTorch

NEEDS_ENVPOOL = pytest.mark.skipif(not envpool_ids(), reason="EnvPool is not installed")
QUIET = {"tensorboard": False, "plot": False, "progress": False, "target": None}


def test_the_flag_reads_a_json_object_and_config_files_a_table(tmp_path: Path) -> None:
    """``--env-kwargs`` takes a JSON object (nested values as JSON has them), a JSON config file an object and a TOML
    one a table; the flag replaces the file's object; tuples given from Python are recorded as the lists JSON reads
    back."""
    parse = lambda *argv: parse_config(TrainConfig, list(argv))  # noqa: E731
    assert parse().env_kwargs == {}
    given = parse("--env-kwargs", '{"continuous": true, "gravity": -9.5, "map": ["SF", "HG"], "x": null}').env_kwargs
    assert given == {"continuous": True, "gravity": -9.5, "map": ["SF", "HG"], "x": None}
    (tmp_path / "run.json").write_text(json.dumps({"env_kwargs": {"g": 9.81}}))
    assert parse("--config", str(tmp_path / "run.json")).env_kwargs == {"g": 9.81}
    assert parse("--config", str(tmp_path / "run.json"), "--env-kwargs", '{"g": 3}').env_kwargs == {"g": 3}
    assert TrainConfig(env_kwargs={"healthy_z_range": (0.2, 1.0)}).env_kwargs == {"healthy_z_range": [0.2, 1.0]}


@NEEDS_TOMLLIB
def test_a_toml_table_is_the_envs_options(tmp_path: Path) -> None:
    """A TOML config file's ``[env_kwargs]`` table, and an inline one, are the env's options."""
    (tmp_path / "a.toml").write_text('env = "flipes/Pendulum-v1"\n[env_kwargs]\ng = 9.81\n')
    (tmp_path / "b.toml").write_text("env_kwargs = {sutton_barto_reward = true}\n")
    assert parse_config(TrainConfig, ["--config", str(tmp_path / "a.toml")]).env_kwargs == {"g": 9.81}
    assert parse_config(TrainConfig, ["--config", str(tmp_path / "b.toml")]).env_kwargs == {"sutton_barto_reward": True}


@NEEDS_TOMLLIB
def test_training_options_below_the_env_kwargs_header_are_named_with_tomls_table_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """TOML puts every key below an ``[env_kwargs]`` header into that table: ``popsize`` written there reaches the env,
    which refuses it. The one-line error names popsize as a training option and the fix, the table last; an unknown
    option that is no training option gets no such hint."""
    (tmp_path / "run.toml").write_text('env = "flipes/Pendulum-v1"\n[env_kwargs]\ng = 9.81\n\npopsize = 8\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "out")])
    line = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in line and not (tmp_path / "out").exists()
    assert "takes no option 'popsize'" in line and line.endswith(
        "; popsize is an option of flipes train, not of the env: in a TOML --config file every key below the "
        "[env_kwargs] header belongs to that table, so put [env_kwargs] last (or write env_kwargs = {...} inline)"
    )
    with pytest.raises(flipes.UsageError) as e:
        flipes.train(env="flipes/Pendulum-v1", env_kwargs={"gg": 1.0, "popsize": 8}, out=str(tmp_path / "b"), **QUIET)
    assert "takes no option 'gg'" in str(e.value) and e.value.fix == ""


MISTAKES = [
    (["--env-kwargs", "{continuous: true}"], "--env-kwargs", "is not JSON"),
    (["--env-kwargs", "[1, 2]"], "--env-kwargs", "expected a JSON object"),
    (["--env-kwargs", '{"g": NaN}'], "--env-kwargs", "not a finite number"),
    (["--env-kwargs", '{"map_name": "8x8", "map_name": "4x4"}'], "--env-kwargs", "gives the key 'map_name' twice"),
    (["--env", "flipes/Pendulum-v1", "--env-kwargs", '{"gg": 9.8}'], "--env-kwargs", "takes no option 'gg'; did you mean g?"),
    (["--env-kwargs", '{"seed": 1}'], "--env-kwargs", "option 'seed' is flipes' own (every episode's seed comes from --seed)"),
    (["--env-kwargs", '{"num_envs": 4}'], "--env-kwargs", "'num_envs' is flipes' own"),
    (["--env-kwargs", '{"max_episode_steps": 9}'], "--env-kwargs", "--max-episode-steps cuts every episode"),
    (["--env", "gymnasium:CartPole-v1", "--env-kwargs", '{"sutton": 1}'], "--env-kwargs", "CartPole-v1 (gymnasium) takes"),
    (["--env", "gymnasium-sync:FrozenLake-v1", "--env-kwargs", '{"map_name": "9x9"}'], "--env-kwargs", "(KeyError: '9x9')"),
    (["--env", "gymnasium:Pendulum-v1", "--env-kwargs", '{"g": "9.8"}'], "--env-kwargs", "failed in its first step"),
    (["--env", "gymnasium-async:Pendulum-v1", "--env-kwargs", '{"g": "9.8"}'], "--env-kwargs", "(TypeError: unsupported"),
    pytest.param(
        ["--env", "gymnasium-sync:HalfCheetah-v5", "--env-kwargs", '{"xml_file": "/nonexistent.xml"}'],
        "--env-kwargs",
        'failed with the options {"xml_file": "/nonexistent.xml"} (OSError: ',
        marks=pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason="MuJoCo is not installed"),
    ),
    pytest.param(
        ["--env", "gymnasium-sync:HalfCheetah-v5", "--env-kwargs", '{"frame_skip": 0}'],
        "--env-kwargs",
        'failed with the options {"frame_skip": 0} (ZeroDivisionError: ',
        marks=pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason="MuJoCo is not installed"),
    ),
    pytest.param(
        ["--env", "envpool:HalfCheetah-v5", "--env-kwargs", '{"xml_file": "/nonexistent.xml"}'],
        "--env-kwargs",
        'failed with the options {"xml_file": "/nonexistent.xml"} (RuntimeError: ',
        marks=NEEDS_ENVPOOL,
    ),
]


@pytest.mark.parametrize(
    ("argv", "option", "message"), MISTAKES, ids=[" ".join(m.values[0] if hasattr(m, "values") else m[0]) for m in MISTAKES]
)
def test_mistakes_in_the_options_are_one_line_errors(
    argv: list[str], option: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Each mistake exits with status 2 and one line ``flipes: error: --env-kwargs: ...`` naming the option and what to
    do, before anything is written."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv, "--generations", "1", "--tensorboard", "false", "--plot", "false", "--out", str(out)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"flipes: error: {option}: ") and message in lines[0], lines[0]
    assert ";" in lines[0] and not out.exists()


def test_a_config_file_value_that_is_no_table_is_named_in_its_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``env_kwargs = 3`` in a config file is refused naming the file and the value."""
    (tmp_path / "run.json").write_text('{"env_kwargs": 3}')
    with pytest.raises(SystemExit):
        main(["train", "--config", str(tmp_path / "run.json"), "--out", str(tmp_path / "out")])
    assert capsys.readouterr().err.startswith(f"flipes: error: --config {tmp_path / 'run.json'}: env_kwargs = 3 is not an object")


def test_each_engine_names_the_option_its_env_does_not_take_and_the_ones_it_does() -> None:
    """An option the env's constructor does not take is an EnvOptionError naming the env, the engine, the option, the
    closest option and all of them, on flipes' torch envs, gymnasium's envs in this process and in workers (before a
    worker starts), and an env of one's own registered with a vector_entry_point; one it takes makes the env."""
    cases = [
        ("flipes/Pendulum-v1", "flipes' torch env", "g"),
        ("gymnasium-sync:CartPole-v1", "gymnasium", "sutton_barto_reward"),
        ("gymnasium-async:CartPole-v1", "gymnasium", "sutton_barto_reward"),
        ("image_env:cnntest/BrightSpot-v0", "its vector_entry_point", "channels_last"),
    ]
    for env_id, engine, option in cases:
        with pytest.raises(
            EnvOptionError, match=rf"\({engine}\) takes no option '{option}x'; did you mean {option}\? its options: "
        ):
            make_vector_env(env_id, 2, note=None, **{f"{option}x": True})
        env = make_vector_env(env_id, 2, note=None, **{option: option != "g" or 9.0})
        env.close()


@NEEDS_ENVPOOL
def test_envpool_names_its_options_and_the_auto_engine_takes_gymnasiums_env_where_envpools_lacks_one() -> None:
    """EnvPool's env refuses an option it lacks, naming its own (``envpool:``); without a prefix, an option gymnasium's
    env of the id takes and EnvPool's lacks makes gymnasium's env, in a note saying why (FrozenLake's map_name:
    Discrete(64) states on 8x8); one that neither takes names both engines' options."""
    with pytest.raises(EnvOptionError, match=r"FrozenLake-v1 \(EnvPool\) takes no option 'map_name'; its options: .*size"):
        make_vector_env("envpool:FrozenLake-v1", 2, note=None, map_name="8x8")
    notes: list[str] = []
    env = make_vector_env("FrozenLake-v1", 2, note=notes.append, map_name="8x8")
    assert isinstance(env, NumpyToTorch) and env.single_observation_space.n == 64
    assert notes == ["FrozenLake-v1 steps in gymnasium's SyncVectorEnv: EnvPool's FrozenLake-v1 takes no option 'map_name'"]
    env.close()
    with pytest.raises(EnvOptionError, match=r"\(gymnasium\) takes no option 'map';.*; and FrozenLake-v1 \(EnvPool\) takes no "):
        make_vector_env("FrozenLake-v1", 2, note=None, map="8x8")
    with pytest.raises(EnvOptionError, match=r"'num_threads' is flipes' own \(EnvPool's threads: --env-threads\)"):
        make_vector_env("FrozenLake-v1", 2, note=None, num_threads=2)


def _frozen_lake_8x8(tmp_path: Path, env: str, **kw: object) -> Path:
    """3 generations on FrozenLake 8x8, episodes cut at 100 steps, 0.01 less per step (so that the members' fitness
    differs: most episodes end in a hole, without reward); the run directory."""
    out = tmp_path / env.split(":")[-1]
    flipes.train(env=env, popsize=16, generations=3, eval_every=1, eval_episodes=4, max_episode_steps=100, seed=1,
                 reward_shift=0.01, out=str(out), **QUIET, **kw)  # fmt: skip
    return out


def test_a_run_with_the_options_is_the_run_of_the_id_registered_with_them(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """gymnasium registers FrozenLake8x8-v1 as FrozenLake-v1 with map_name 8x8: training FrozenLake-v1 with that option
    logs the same rows bit for bit (each generation changed the parameters), evaluations included; config.json records the
    options; ``flipes evaluate`` and ``flipes export`` rebuild the 8x8 env from them (the policy's 64 one-hot inputs
    load), giving what they give for the registered id's run; ``--render`` plays gymnasium's env made with them."""
    with_options = _frozen_lake_8x8(tmp_path, "gymnasium:FrozenLake-v1", env_kwargs={"map_name": "8x8"})
    registered = _frozen_lake_8x8(tmp_path, "gymnasium:FrozenLake8x8-v1")
    ours, theirs = metrics(with_options), metrics(registered)
    assert len({r["params_sha256"] for r in ours}) == 3
    drop = ("seconds", "steps_per_second", "eval_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in ours] == [
        {k: v for k, v in r.items() if k not in drop} for r in theirs
    ]
    assert json.loads((with_options / "config.json").read_text())["env_kwargs"] == {"map_name": "8x8"}
    capsys.readouterr()
    printed = []
    for run in (with_options, registered):
        assert main(["evaluate", str(run), "--episodes", "5"]) == 0  # main returns an exit status: 0 is success
        printed.append(capsys.readouterr().out.split(": ", 1)[1].split(" (")[0])  # "center policy return ... episodes"
        program = torch.export.load(str(flipes.export_policy(run))).module()
        assert program(torch.arange(64)).shape == (64,)  # every one of the 64 states
    assert printed[0] == printed[1], printed
    if importlib.util.find_spec("pygame") is not None:
        render = ["--render", str(tmp_path / "fl.gif"), "--max-frames", "3"]
        assert main(["evaluate", str(with_options), "--episodes", "1", *render]) == 0
        assert "wrote" in capsys.readouterr().out


def test_the_cnns_reference_frames_come_from_the_env_made_with_the_options(tmp_path: Path) -> None:
    """BrightSpot with channels_last true is the registered BrightSpotLast-v0: the CNN trained on it (its
    data-dependent initialization fitted to frames of the env's own reference copies, then 2 generations with
    evaluations) ends on the same parameters, bit for bit, as on the registered id."""
    run = dict(policy="cnn", hidden=[16], popsize=8, episodes=2, generations=2, eval_every=1, eval_episodes=8, **QUIET)
    a = flipes.train(env="image_env:cnntest/BrightSpot-v0", env_kwargs={"channels_last": True}, out=str(tmp_path / "a"), **run)
    b = flipes.train(env="image_env:cnntest/BrightSpotLast-v0", out=str(tmp_path / "b"), **run)
    assert [r["params_sha256"] for r in a.metrics] == [r["params_sha256"] for r in b.metrics]
    assert [r["eval_return"] for r in a.metrics] == [r["eval_return"] for r in b.metrics]
    assert a.model.channels_last


def test_a_resume_keeps_the_options_and_refuses_others(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A resume without the flag continues with the recorded options (Sutton and Barto's CartPole reward: 0 a step, -1
    at a fall, so every fitness is at most 0, where the default reward gives at least 1); other options are refused,
    naming the saved and the given ones; a run recorded before the option existed (no env_kwargs in config.json)
    resumes with none."""
    out = tmp_path / "run"
    run = ["train", "--env", "flipes/CartPole-v1", "--popsize", "8", "--eval-episodes", "3", "--target", "none",
           "--tensorboard", "false", "--plot", "false", "--progress", "false", "--out", str(out)]  # fmt: skip
    assert main([*run, "--generations", "2", "--env-kwargs", '{"sutton_barto_reward": true}']) == 0
    assert main(["train", "--resume", str(out), "--generations", "3", "--progress", "false"]) == 0
    rows = metrics(out)
    assert len(rows) == 3 and all(r["fitness_max"] <= 0 and -1 <= r["fitness_min"] for r in rows), rows
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(out), "--generations", "4", "--env-kwargs", "{}"])
    assert capsys.readouterr().err.strip() == (
        "flipes: error: --resume: the run was trained with other options (--env-kwargs: saved "
        '{"sutton_barto_reward": true}, now {}); pass the saved ones to continue it'
    )
    plain = tmp_path / "plain"
    flipes.train(env="flipes/CartPole-v1", popsize=8, generations=1, eval_episodes=3, out=str(plain), **QUIET)
    config = json.loads((plain / "config.json").read_text())
    del config["env_kwargs"]
    (plain / "config.json").write_text(json.dumps(config))
    assert flipes.train(resume=str(plain), generations=2, progress=False).config.env_kwargs == {}


def test_make_vector_env_still_takes_a_time_limit_on_every_engine() -> None:
    """``make_vector_env(..., max_episode_steps=3)`` (gymnasium.make's own option, not the env class's; a flipes/
    env's and EnvPool's constructor option) truncates every CartPole episode after 3 steps, on each engine at hand."""
    engines = ["flipes/CartPole-v1", "gymnasium-sync:CartPole-v1", *(["envpool:CartPole-v1"] * bool(envpool_ids()))]
    for env_id in engines:
        env = make_vector_env(env_id, 2, note=None, max_episode_steps=3)
        env.reset(seed=0)
        flags = [env.step(torch.zeros(2, dtype=torch.int64))[3].tolist() for _ in range(3)]
        assert flags == [[False, False], [False, False], [True, True]], (env_id, flags)
        env.close()


def test_flipes_torch_envs_check_their_options_values_when_made() -> None:
    """A ``flipes/`` env given an option value it cannot step with (a string for Pendulum's ``g`` or MountainCar's
    ``goal_velocity``, a ``num_threads`` that is no positive integer) is an EnvOptionError when made, naming the
    option, not an error in the first ``step()``; ``dtype`` takes its name, as JSON gives it."""
    bad = [
        ("flipes/Pendulum-v1", {"g": "x"}, "g must be a number"),
        ("flipes/MountainCarContinuous-v0", {"goal_velocity": True}, "goal_velocity must be a number"),
        ("flipes/CartPole-v1", {"num_threads": 0}, "num_threads must be a positive integer"),
        ("flipes/CartPole-v1", {"num_threads": "2"}, "num_threads must be a positive integer"),
        ("flipes/CartPole-v1", {"dtype": "float16"}, "dtype must be torch.float32 or torch.float64"),
    ]
    for env_id, options, message in bad:
        with pytest.raises(EnvOptionError, match=message):
            make_vector_env(env_id, 2, note=None, **options)
    for name in ("float32", "torch.float32"):
        env = make_vector_env("flipes/Pendulum-v1", 2, note=None, dtype=name, g=9)
        assert env.unwrapped.dtype == torch.float32 and env.unwrapped.g == 9.0
        env.reset(seed=0)
        env.step(torch.zeros(2, 1))
        env.close()


def test_mujoco_warp_envs_check_their_options_values_when_made() -> None:
    """flipes' MuJoCo Warp envs refuse, when made, a weight that is no number and a frame_skip that is no positive
    integer (0 would divide the velocity by a zero dt), as EnvOptionErrors naming the option."""
    pytest.importorskip("mujoco_warp", reason="the MuJoCo Warp envs need pip install 'flipes[warp]'")
    for options, message in [
        ({"ctrl_cost_weight": "a"}, "ctrl_cost_weight must be a number, got 'a'"),
        ({"frame_skip": 0}, "frame_skip must be a positive integer, got 0"),
        ({"reset_noise_scale": None}, "reset_noise_scale must be a number, got None"),
    ]:
        with pytest.raises(EnvOptionError, match=re.escape(message)):
            make_vector_env("flipes/HalfCheetah-v5", 2, note=None, **options)
    for env_id in ("flipes/Hopper-v5", "flipes/Ant-v5"):
        with pytest.raises(EnvOptionError, match="healthy_reward must be a number"):
            make_vector_env(env_id, 2, note=None, healthy_reward="1")


@NEEDS_ENVPOOL
def test_non_finite_returns_name_the_env_options_the_run_was_given(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A run whose returns are not finite, with env options given (EnvPool's HalfCheetah at frame_skip 0, whose dt is
    0), is refused naming those options beside --sigma and --lr, the suspects of a run without them."""
    argv = ["train", "--env", "envpool:HalfCheetah-v5", "--env-kwargs", '{"frame_skip": 0}', "--popsize", "4"]
    with pytest.raises(SystemExit):
        main(
            [
                *argv,
                "--max-episode-steps",
                "5",
                "--generations",
                "1",
                "--tensorboard",
                "false",
                "--plot",
                "false",
                "--out",
                str(tmp_path / "o"),
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "returns are not finite" in err and err.endswith('or check the env and its --env-kwargs {"frame_skip": 0}'), err


@pytest.mark.skipif(importlib.util.find_spec("pygame") is None, reason="renders with pygame")
def test_a_run_with_hidden_velocities_renders_its_episode_on_the_observed_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``flipes evaluate --render`` of a ``hide_velocities`` run: gymnasium's CartPole, which renders and takes no such
    option, is made without it and the policy observes its kept columns (x, θ), so the rendered episode is the
    evaluated one: as many frames as its return (one a step) plus the reset's, from the same seed."""
    run = tmp_path / "run"
    flipes.train(env="flipes/CartPole-v1", env_kwargs={"hide_velocities": True}, popsize=8, generations=2, hidden=[4],
                 target=None, progress=False, tensorboard=False, plot=False, out=str(run))  # fmt: skip
    capsys.readouterr()
    gif = tmp_path / "hidden.gif"
    assert main(["evaluate", str(run), "--episodes", "1", "--render", str(gif), "--max-frames", "600"]) == 0
    out = capsys.readouterr().out
    episode_return = float(re.search(r"return (\d+\.\d+) ± 0\.00 over 1 episode", out).group(1))
    frames = int(re.search(r"wrote .* \((\d+) frames\)", out).group(1))
    assert frames == episode_return + 1 and gif.exists(), out


def test_evaluate_replaces_the_runs_options_with_its_own(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``flipes evaluate RUN --env-kwargs`` makes the run's env with each option given replacing the run's of the same
    name, the others kept: a Pendulum run trained with ``g_range`` and ``hide_velocities`` (its policy takes 2 inputs, not
    3) returns, with ``{"g_range": null, "g": 15}``, exactly evaluate_policy's returns on the env made with
    ``hide_velocities``, ``g_range`` None and g 15 (and not those of its own env); the printed line names the options
    the return is of; an option the env does not take, or one that changes the observations the policy takes, is the
    one-line error naming --env-kwargs."""
    run = tmp_path / "pendulum"
    own = {"g_range": [8.0, 12.0], "hide_velocities": True}
    flipes.train(env="flipes/Pendulum-v1", env_kwargs=own, popsize=8, generations=1, hidden=[4], out=str(run), **QUIET)
    policy = flipes.load_policy(run)
    held_out = {"hide_velocities": True, "g_range": None, "g": 15.0}
    expected = flipes.evaluate_policy(policy, "flipes/Pendulum-v1", 6, env_kwargs=held_out)
    trained_on = flipes.evaluate_policy(policy, "flipes/Pendulum-v1", 6, env_kwargs=own)
    assert expected.mean().item() != trained_on.mean().item()
    capsys.readouterr()
    assert main(["evaluate", str(run), "--episodes", "6", "--env-kwargs", '{"g_range": null, "g": 15}']) == 0
    out = capsys.readouterr().out
    shown = 'flipes/Pendulum-v1 {"g_range": null, "hide_velocities": true, "g": 15}: center policy return'
    assert out.startswith(f"{shown} {expected.mean():.2f}"), out
    assert main(["evaluate", str(run), "--episodes", "6"]) == 0
    assert capsys.readouterr().out.startswith(f"flipes/Pendulum-v1: center policy return {trained_on.mean():.2f}")
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(run), "--episodes", "6", "--env-kwargs", '{"gravity": 15}'])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    said = "flipes: error: --env-kwargs: flipes/Pendulum-v1 (flipes' torch env) takes no option 'gravity'; its options:"
    assert err.startswith(said) and len(err.strip().splitlines()) == 1, err  # the env's own line, not wrapped in another
    with pytest.raises(SystemExit) as exit_:  # 3 observations where the policy takes 2: one line, no traceback
        main(["evaluate", str(run), "--episodes", "6", "--env-kwargs", '{"hide_velocities": false}'])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("flipes: error: --env-kwargs") and "(..., 2)" in err and len(err.strip().splitlines()) == 1, err


def test_render_refusals_name_whose_env_kwargs_gymnasium_does_not_take(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``flipes evaluate --render`` plays gymnasium's own CartPole, which takes no ``length``: refused before any
    episode, as one line naming the option and whose ``--env-kwargs`` gave it: the run's (trained with it, also when
    the command gives another, valid option), or this command's (a run trained without it)."""
    kw = dict(env="flipes/CartPole-v1", popsize=4, generations=1, eval_episodes=2, **QUIET)
    flipes.train(**kw, env_kwargs={"length": 0.6}, out=str(tmp_path / "with_length"))
    flipes.train(**kw, out=str(tmp_path / "plain"))
    render = ["--episodes", "1", "--render", str(tmp_path / "x.gif")]
    cases = [
        ([str(tmp_path / "with_length")], "the run's"),
        ([str(tmp_path / "with_length"), "--env-kwargs", '{"sutton_barto_reward": true}'], "the run's"),
        ([str(tmp_path / "plain"), "--env-kwargs", '{"length": 0.6}'], "this command's"),
    ]
    for argv, whose in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main(["evaluate", *argv, *render])
        assert exit_.value.code == 2
        said = capsys.readouterr().err
        assert re.fullmatch(
            rf"flipes: error: --render: CartPole-v1 \(gymnasium, which renders it\) takes no option 'length'; .*"
            rf"\({whose} --env-kwargs\); evaluate without --render\n",
            said,
        ), said
    assert not (tmp_path / "x.gif").exists()


@pytest.mark.skipif(importlib.util.find_spec("pygame") is None, reason="renders with pygame")
def test_an_option_set_to_null_is_left_out_of_the_rendered_env(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A Pendulum run trained with g_range renders with ``--env-kwargs '{"g_range": null, "g": 15}'``: gymnasium's
    Pendulum takes no g_range, and set to null (its default) it is left out: the rendered env is gymnasium's Pendulum
    made with g = 15. Without the null the option is refused as the run's."""
    from flipes.recording import render_env

    shown = render_env("flipes/Pendulum-v1", {"g_range": None, "g": 15.0}, ["g_range", "g"])
    assert shown.unwrapped.g == 15.0
    shown.close()
    run = tmp_path / "g_range"
    flipes.train(env="flipes/Pendulum-v1", env_kwargs={"g_range": [8, 12]}, popsize=4, generations=1, eval_episodes=2,
                 max_episode_steps=20, out=str(run), **QUIET)  # fmt: skip
    gif = tmp_path / "g15.gif"
    render = ["--episodes", "1", "--render", str(gif), "--max-frames", "3"]
    assert main(["evaluate", str(run), "--env-kwargs", '{"g_range": null, "g": 15}', *render]) == 0
    assert gif.exists() and "g_range" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", str(run), *render])
    said = capsys.readouterr().err
    assert "takes no option 'g_range'" in said and "(the run's --env-kwargs)" in said, said
