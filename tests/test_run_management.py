"""Run management without training: which directory a run is written to and resumed from, which options a resume
takes from the run, the bounds of the options, and how a run's files are read back."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import types
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from helpers import FAST_KW, flip_a_byte

import flipes
from flipes.cli import COMMON, build_parser, option_name, parse_config
from flipes.commands import EvaluateConfig, evaluate_command, main, parse_train_config, plot_command
from flipes.config import LIMITS, TrainConfig, resolve_groups, resolve_target, saved_options, validate
from flipes.errors import UsageError
from flipes.progress import Progress


def _saved_run(run_dir: Path, **options: object) -> Path:
    """A run directory holding only the config.json a run with ``options`` writes (what a resume reads first)."""
    run_dir.mkdir(parents=True)
    config = dataclasses.asdict(TrainConfig(**options))  # type: ignore[arg-type]
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def test_resume_auto_resumes_only_a_directory_that_holds_a_checkpoint(tmp_path: Path) -> None:
    """``resume="auto"`` continues ``out`` once it holds checkpoint.pt; a directory whose setup stopped after
    config.json (before its first checkpoint) or an empty one is started, not resumed."""
    here = tmp_path / "run"
    assert TrainConfig(out=str(here), resume="auto").resolve_auto_resume() == TrainConfig(out=str(here), resume="")
    _saved_run(here)
    assert TrainConfig(out=str(here), resume="auto").resolve_auto_resume().resume == ""
    (here / "checkpoint.pt").write_bytes(b"")
    assert TrainConfig(out=str(here), resume="auto").resolve_auto_resume().resume == str(here)


def test_a_resume_takes_the_runs_options_but_not_how_or_where_the_last_invocation_wrote(tmp_path: Path) -> None:
    """``--resume DIR`` takes the options recorded in DIR/config.json, except ``out`` (a run copied elsewhere is
    continued where it now is, not in the directory it was first written to), ``progress`` (how this invocation
    prints), ``overwrite`` and ``resume``; flags still win over the recorded options."""
    moved = _saved_run(tmp_path / "copy", out=str(tmp_path / "original"), progress=False, popsize=16, seed=7)
    for config in (parse_train_config(["--resume", str(moved)]), TrainConfig.for_env(resume=str(moved))):
        assert (config.popsize, config.seed) == (16, 7)
        assert config.progress is True
        assert config.out == ""
        assert config.run_dir() == moved
    assert parse_train_config(["--resume", str(moved), "--seed", "3"]).seed == 3


@pytest.mark.parametrize(
    ("name", "limit"), [("popsize", 2**24), ("eval_episodes", 2**20), ("episodes", 2**16), ("seed", 2**32 - 1)]
)
def test_each_limited_option_takes_its_limit_and_refuses_one_more(name: str, limit: int) -> None:
    """The bounds past which a value is a typo are inclusive: the limit itself passes ``validate``, one more is
    refused naming the option (a seed is at most the largest 32-bit unsigned integer)."""
    assert set(LIMITS) == {"popsize", "eval_episodes", "episodes", "seed"}
    validate(TrainConfig(**{name: limit}))
    with pytest.raises(UsageError) as e:
        validate(TrainConfig(**{name: limit + 1}))
    assert (e.value.option, e.value.problem) == (option_name(name), f"{limit + 1} is beyond any use (at most {limit:,})")


@pytest.mark.parametrize("shaping", ["auto", "centered-ranks", "z-score", "flipes.shaping:z_score", "flipes.es.shaping:z_score"])
def test_two_members_are_the_fewest_a_centering_shaping_takes(shaping: str) -> None:
    """Two members already have distinct centered ranks or z-scores (±1/2, ±1), so --popsize 2 passes ``validate``
    under any spelling of a centering rule, mirrored or not; one member is refused naming --popsize and that rule's
    score (always 0)."""
    for mirrored in (True, False):
        validate(TrainConfig(popsize=2, mirrored=mirrored, shaping=shaping))
    with pytest.raises(UsageError) as e:
        validate(TrainConfig(popsize=1, mirrored=False, shaping=shaping))
    score = "z-score" if "z" in shaping else "centered rank"
    assert (e.value.option, e.value.problem) == (
        "--popsize",
        f"1 member: its {score} is always 0, so no generation would move the parameters",
    )


@pytest.mark.parametrize(
    "name", ["popsize", "generations", "episodes", "eval_every", "eval_episodes", "checkpoint_every", "check_every"]
)
def test_counts_of_at_least_one_take_one_and_refuse_zero(name: str) -> None:
    """Every count of generations, members or episodes is at least 1 (--checkpoint-every 0 would divide by zero,
    --eval-every 0 never evaluate): 1 passes ``validate``, 0 is refused naming the option. (One member needs raw
    shaping: its centered rank would always be 0.)"""
    validate(TrainConfig(**{name: 1}, mirrored=False, shaping="raw"))
    with pytest.raises(UsageError) as e:
        validate(TrainConfig(**{name: 0}))
    assert (e.value.option, e.value.problem) == (option_name(name), "must be at least 1, got 0")


def test_thread_and_width_bounds_are_inclusive() -> None:
    """--threads up to the machine's cores, --env-threads up to four times them (worker processes wait on their
    envs), --hidden widths up to 2**16: each bound passes ``validate``, one more is refused naming the option."""
    cores = os.cpu_count() or 1
    for name, bound in (("threads", cores), ("env_threads", 4 * cores), ("hidden", [2**16])):
        validate(TrainConfig(**{name: bound}))
        over = [bound[0] + 1] if isinstance(bound, list) else bound + 1
        with pytest.raises(UsageError) as e:
            validate(TrainConfig(**{name: over}))
        assert e.value.option == option_name(name)


def test_ars_top_takes_every_mirrored_pair_and_no_more() -> None:
    """--ars-top counts mirrored pairs: popsize / 2 of them (all kept, as 0 does) passes, one more is refused."""
    validate(TrainConfig(algo="ars", popsize=8, ars_top=4))
    with pytest.raises(UsageError) as e:
        validate(TrainConfig(algo="ars", popsize=8, ars_top=5))
    assert (e.value.option, e.value.problem) == ("--ars-top", "5 of 4 mirrored pairs")


def test_max_speed_and_ars_top_are_refused_where_their_search_would_ignore_them() -> None:
    """--max-speed is read by --algo pgpe's ClipUp alone and --ars-top by --algo ars alone: given to another search, or
    --max-speed beside an --optimizer of one's own (which replaces ClipUp), each is refused naming the option, not
    ignored; with their own search both pass. An --ars-top too large for the population as well is named as an option of
    another search first (the fix that works). A resume's values may be the saved run's own: a change of search is
    refused against the saved run, naming --algo (below)."""
    validate(TrainConfig(algo="pgpe", groups=8, max_speed=0.3))
    validate(TrainConfig(algo="ars", popsize=8, ars_top=2))
    for config, option in (
        (TrainConfig(max_speed=0.3), "--max-speed"),
        (TrainConfig(algo="ars", max_speed=0.3), "--max-speed"),
        (TrainConfig(algo="pgpe", groups=8, max_speed=0.3, optimizer="torch.optim:SGD"), "--max-speed"),
        (TrainConfig(ars_top=2), "--ars-top"),
        (TrainConfig(algo="pgpe", groups=8, ars_top=2), "--ars-top"),
        (TrainConfig(popsize=8, ars_top=8), "--ars-top"),
    ):
        with pytest.raises(UsageError) as e:
            validate(config)
        assert e.value.option == option and "drop " + option in e.value.fix, config


def test_resume_auto_on_a_run_directory_without_a_checkpoint_checks_options_as_a_new_run(tmp_path: Path) -> None:
    """--resume auto where the run directory holds no checkpoint starts a new run, so --max-speed or --ars-top beside
    another search is refused as without --resume; with a checkpoint there, the values may be the saved run's (restore
    compares them) and validate lets them pass."""
    out = tmp_path / "run"
    for config, option in (
        (TrainConfig(max_speed=0.3, resume="auto", out=str(out)), "--max-speed"),
        (TrainConfig(ars_top=2, resume="auto", out=str(out)), "--ars-top"),
    ):
        with pytest.raises(UsageError) as e:
            validate(config)
        assert e.value.option == option and "drop " + option in e.value.fix, config
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"a saved run")
    validate(TrainConfig(max_speed=0.3, resume="auto", out=str(out)))


def test_a_resume_that_changes_the_search_names_algo_not_the_saved_runs_options(tmp_path: Path) -> None:
    """Resuming a run of --algo pgpe (max_speed saved) or ars (ars_top saved) with another --algo is refused as a change
    of the run's options naming --algo, not as --max-speed / --ars-top given to another search: those are the saved
    run's, never given, and dropping them would only be refused again."""
    kw = {**FAST_KW, "popsize": 16, "hidden": [4], "eval_every": 100, "generations": 1}  # pgpe's 8 groups of 2
    for algo, saved in (("pgpe", {"max_speed": 0.5}), ("ars", {"ars_top": 2})):
        run = tmp_path / algo
        flipes.train(**kw, algo=algo, **saved, out=str(run))
        with pytest.raises(UsageError, match=r"^--resume: the run was trained with other options \(--algo: saved"):
            flipes.train(**{**kw, "generations": 2}, algo="openai-es", resume=str(run))


def test_sigma_min_may_equal_sigma_and_not_exceed_it() -> None:
    """--sigma-min is at most --sigma: a floor at σ itself passes (σ stays where it starts), one above is refused."""
    validate(TrainConfig(sigma=0.1, sigma_decay=0.99, sigma_min=0.1))
    with pytest.raises(UsageError) as e:
        validate(TrainConfig(sigma=0.1, sigma_decay=0.99, sigma_min=0.2))
    assert e.value.option == "--sigma-min" and "above --sigma" in e.value.problem


def test_adaptive_sigma_takes_at_least_eight_groups_where_popsize_has_them() -> None:
    """With --sigma-lr > 0 the default --groups 0 takes at least 8 groups (σ learns from the variation between
    groups), the largest count below 8 where --popsize has none that large; under MPI the count that gives every
    process as many groups comes first, and the note gives both reasons and no other."""
    cases = [(64, 1, 8), (12, 1, 6), (96, 3, 12)]
    for popsize, processes, groups in cases:
        config, note = resolve_groups(TrainConfig(popsize=popsize, sigma_lr=0.2), processes)
        assert config.groups == groups
        assert note.startswith(f"--groups {groups}: ") and "--sigma-lr 0.2 learns" in note
        assert ("each of the 3 processes" in note) == (processes == 3) and "--members-per-pass" not in note
    assert resolve_groups(TrainConfig(popsize=64), 1)[0].groups == 1


def test_a_resume_keeps_the_group_count_its_run_recorded_even_one(tmp_path: Path) -> None:
    """A resumed run's --groups 0 is the count it recorded, 1 included: a one-group run resumed on 2 processes is
    refused as such (a count chosen anew would be another run's)."""
    run = _saved_run(tmp_path / "run", popsize=8, groups=1)
    resumed = TrainConfig(popsize=8, resume=str(run))
    assert resolve_groups(resumed, 2) == (dataclasses.replace(resumed, groups=1), "")
    with pytest.raises(UsageError) as e:
        validate(resumed, 2)
    assert e.value.option == "--groups" and "resume the run on at most 1 process(es)" in e.value.fix


def test_a_target_is_its_number_the_envs_for_auto_and_none_for_none() -> None:
    """--target: a number (zero and negative returns included) stops there; auto is the preset row's target where it
    has one (Pendulum-v1: -200, gymnasium registers none), else gymnasium's reward_threshold; none never stops."""
    assert resolve_target(TrainConfig(target=-150.0)) == -150.0
    assert resolve_target(TrainConfig(target=0.0)) == 0.0
    assert resolve_target(TrainConfig(env="Pendulum-v1")) == -200.0
    assert resolve_target(TrainConfig(env="CartPole-v1")) == 475.0
    assert resolve_target(TrainConfig(env="CartPole-v1", target=None)) is None


def test_env_none_needs_both_a_fitness_and_a_model() -> None:
    """--env none has nothing to roll out: it is refused without --fitness, and without --model, naming which."""
    with pytest.raises(UsageError, match="none needs a custom fitness"):
        validate(TrainConfig(env="none", model="m:make"))
    with pytest.raises(UsageError, match="none needs a custom model"):
        validate(TrainConfig(env="none", fitness="m:fit"))


def test_a_run_recorded_with_the_old_rank_option_resumes_with_its_noise_rank(tmp_path: Path) -> None:
    """Runs saved before --rank was renamed --noise-rank record ``rank``: a resume reads it as their noise rank (an
    absent or null rank is full rank, 0)."""
    run = _saved_run(tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    del config["noise_rank"]
    for rank, noise_rank in ((4, 4), (None, 0)):
        (run / "config.json").write_text(json.dumps({**config, "rank": rank}))
        assert saved_options(str(run))["noise_rank"] == noise_rank
        assert parse_train_config(["--resume", str(run)]).noise_rank == noise_rank


@pytest.mark.parametrize(("word", "value"), [*((w, True) for w in ("1", "true", "yes", "on", "TRUE")),
                                             *((w, False) for w in ("0", "false", "no", "off", "Off"))])  # fmt: skip
def test_a_flag_reads_every_spelling_of_true_and_false(word: str, value: bool) -> None:
    """A boolean flag takes 1/true/yes/on and 0/false/no/off in any case (``--mirrored`` alone is true)."""
    assert parse_train_config(["--mirrored", word]).mirrored is value


@pytest.mark.parametrize("word", ["", "2", "maybe"])
def test_a_flag_refuses_words_that_are_not_true_or_false(word: str) -> None:
    """An empty value (``--mirrored=``) or any other word is refused naming the flag, not read as false."""
    with pytest.raises(UsageError) as e:
        parse_train_config([f"--mirrored={word}"])
    assert e.value.option == "--mirrored" and f"expected true or false, got {word!r}" in e.value.problem


def test_a_number_option_refuses_a_bool_from_python_or_a_config_file(tmp_path: Path) -> None:
    """A float option given True (Python) or true (a JSON config file) is refused, not read as 1.0."""
    with pytest.raises(UsageError, match="sigma = True is not a number"):
        TrainConfig.for_env(sigma=True)
    cfg = tmp_path / "run.json"
    cfg.write_text('{"lr": true}')
    with pytest.raises(UsageError, match="lr = True is not a number"):
        parse_train_config(["--config", str(cfg)])


FOREIGN_NAMES = {
    "noise_stdev": "sigma",
    "stepsize": "lr",
    "l2coeff": "weight_decay",
    "episodes_per_batch": "popsize",
    "return_proc_mode": "shaping",
    "snapshot_freq": "checkpoint_every",
    "eval_prob": "eval_every",
    "timesteps_per_batch": "episodes",
    "calc_obstat_prob": "policy",
    "episode_cutoff_mode": "max_episode_steps",
    "stdev_init": "sigma",
    "init_stdev": "sigma",
    "center_learning_rate": "lr",
    "stdev_learning_rate": "sigma_lr",
    "symmetric": "mirrored",
    "ranking_method": "shaping",
    "sigma_init": "sigma",
    "sigma_limit": "sigma_min",
    "lrate_init": "lr",
    "lrate_decay": "lr_decay",
    "lrate_limit": "lr_min",
    "max_iter": "generations",
    "n_repeats": "episodes",
    "n_evaluations": "eval_episodes",
    "test_interval": "eval_every",
    "model_dir": "out",
    "solution_ranking": "shaping",
    "stdev_max_change": "sigma_lr",
    "maxiter": "generations",
    "sigma0": "sigma",
    "total_timesteps": "max_timesteps",
    "n_timesteps": "max_timesteps",
    "n_envs": "popsize",
    "log_folder": "out",
    "save_freq": "checkpoint_every",
    "eval_freq": "eval_every",
    "num_threads": "threads",
    "learning_rate": "lr",
    "log_dir": "out",
    "logdir": "out",
    "comm_mode": "comm",
}


@pytest.mark.parametrize(("key", "ours"), sorted(FOREIGN_NAMES.items()))
def test_every_other_libraries_name_is_refused_naming_the_flipes_option(key: str, ours: str) -> None:
    """The names OpenAI's ES starter, EvoTorch, EvoJAX, evosax, pycma, Stable-Baselines3, RL Zoo, TensorBoard and
    FlipES's own loop give these options (README's "Coming from" table and the line below it) are refused as keywords
    and as flags, naming the flipes option that means the same (not the closest spelling: --log-dir is no --lr)."""
    with pytest.raises(UsageError) as e:
        TrainConfig(**{key: 1})
    assert f" {key} is {ours} here" in e.value.fix
    with pytest.raises(UsageError) as e:
        parse_train_config([f"--{key.replace('_', '-')}", "1"])
    assert f" {key} is {option_name(ours)} here" in e.value.fix


@pytest.mark.parametrize(("key", "ours"), sorted((k, v[0]) for k, v in COMMON.items()))
def test_a_common_scripts_name_for_an_option_is_refused_naming_the_flipes_option(key: str, ours: str) -> None:
    """Names training scripts in general give options (save_dir, n_iters, gpu, pop_size, ...), none of them a flipes
    option, are refused as keywords and as flags naming the flipes option meant, where difflib's closest spelling
    misleads (--save-dir is no --seed, --n-iters no --fitness, --gpu no --groups)."""
    assert key not in {f.name for f in dataclasses.fields(TrainConfig)}
    with pytest.raises(UsageError) as e:
        TrainConfig(**{key: 1})
    assert e.value.fix.startswith(f"{key} is {ours} here")
    with pytest.raises(UsageError) as e:
        parse_train_config([f"--{key.replace('_', '-')}", "1"])
    assert e.value.fix.startswith(f"{option_name(key)} is {option_name(ours)} here")


def test_a_foreign_names_note_names_the_related_flipes_option_as_it_is_given() -> None:
    """RL Zoo's num_threads note names the env engine's threads as the caller spells options: env_threads as a
    keyword, --env-threads as a flag."""
    with pytest.raises(UsageError) as e:
        TrainConfig(num_threads=1)
    assert e.value.fix.endswith("num_threads is threads here (torch threads per process; the env engine's: env_threads)")
    with pytest.raises(UsageError) as e:
        parse_train_config(["--num-threads", "1"])
    assert e.value.fix.endswith("num_threads is --threads here (torch threads per process; the env engine's: --env-threads)")


def test_a_short_flag_is_refused_without_guesses_naming_rl_zoos_meaning_where_it_has_one() -> None:
    """flipes has no short options but ``-h``: ``-x`` gets no spelling guesses (a letter is close to nothing), and RL
    Zoo's ``-n`` and ``-f`` name the flipes options they mean there (for ``flipes train``, whose options they are;
    ``flipes evaluate -n`` is no RL Zoo habit). A long flag typed with one dash, ``-popsize 8``, is offered the flag."""
    for argv, fix in (
        (["-n", "1000"], "flipes train has no short options but -h; RL Zoo's -n is --max-timesteps here"),
        (["-n=1000"], "flipes train has no short options but -h; RL Zoo's -n is --max-timesteps here"),
        (["-f", "logs"], "flipes train has no short options but -h; RL Zoo's -f is --out here"),
        (["-x"], "flipes train has no short options but -h; --help lists the long ones"),
        (["-p=3"], "flipes train has no short options but -h; --help lists the long ones"),
    ):
        with pytest.raises(UsageError) as e:
            parse_train_config(argv)
        assert e.value.fix.startswith(fix) and "did you mean" not in e.value.fix, (argv, e.value.fix)
    with pytest.raises(UsageError) as e:
        parse_config(EvaluateConfig, ["runs/a", "-n", "3"], prog="flipes evaluate")
    assert e.value.fix == "flipes evaluate has no short options but -h; --help lists the long ones"
    with pytest.raises(UsageError) as e:
        parse_train_config(["-popsize", "8"])
    assert e.value.fix.startswith("did you mean --popsize")


def test_config_file_keys_may_be_spelt_with_dashes_as_the_flags_are(tmp_path: Path) -> None:
    """A config file's keys take ``-`` as the flags do (``eval-every``) or ``_`` as the fields do."""
    cfg = tmp_path / "run.json"
    cfg.write_text('{"eval-every": 3, "checkpoint_every": 4}')
    config = parse_train_config(["--config", str(cfg)])
    assert (config.eval_every, config.checkpoint_every) == (3, 4)


def test_help_shows_a_flags_default_as_it_is_typed() -> None:
    """--help shows a boolean's default as a user types it (true/false) and how to turn it off."""
    text = " ".join(build_parser(TrainConfig).format_help().split())
    assert "(default: true; --no-mirrored for false)" in text and "(default: false; --no-track-best for false)" in text


def test_none_is_read_in_any_case_for_an_option_that_takes_none() -> None:
    """``--target none``, ``None`` and ``NONE`` all mean no target (a number or auto otherwise)."""
    for word in ("none", "None", "NONE"):
        assert parse_train_config(["--target", word]).target is None
    assert parse_train_config(["--target", "-5"]).target == -5.0


def test_main_without_a_command_prints_the_commands_and_fails(capsys: pytest.CaptureFixture) -> None:
    """``flipes`` alone lists the commands on stderr and exits with status 2 (a script calling it without a command is
    wrong: its usage goes with the errors, as argparse's does); ``flipes --help`` lists them on stdout and succeeds."""
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("usage: flipes {train,evaluate,export,plot}")
    assert main(["--help"]) == 0
    captured2 = capsys.readouterr()
    assert captured2.err == "" and captured2.out == captured.err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--episodes", "0"], "flipes: error: --episodes: must be at least 1, got 0"),
        (["--render", "x.gif", "--max-frames", "0"], "flipes: error: --max-frames: must be at least 1, got 0"),
        (["--episodes", str(10**20)], f"flipes: error: --episodes: {10**20} is beyond any use (at most 1,048,576)"),
    ],
)
def test_evaluate_refuses_no_episodes_or_frames_before_reading_the_run(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``flipes evaluate`` checks its own options first: --episodes 0 and --max-frames 0 are refused (exit status 2)
    naming the option, even for a directory that holds no run, and so are more episodes than train's --eval-episodes
    takes (10**20 overflowed numpy's sizes in a traceback)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(tmp_path / "missing"), *extra])
    assert e.value.code == 2 and capsys.readouterr().err.startswith(message)


def test_evaluate_policy_refuses_more_episodes_than_one_vector_env_holds() -> None:
    """flipes.evaluate_policy takes at most train's --eval-episodes bound (2**20) episodes: more is a UsageError naming
    --episodes before any env is made, not numpy's OverflowError from sizing the vector env."""
    with pytest.raises(UsageError, match=r"^--episodes: 100000000000000000000 is beyond any use \(at most 1,048,576\)"):
        flipes.evaluate_policy(torch.nn.Linear(4, 2), "flipes/CartPole-v1", episodes=10**20)
    assert LIMITS["eval_episodes"] == 2**20


def test_evaluate_policy_checks_the_policy_max_steps_and_device_before_the_episodes() -> None:
    """flipes.evaluate_policy refuses, before any env is made: a policy that is no nn.Module (a TypeError naming
    load_policy, not an AttributeError), max_steps of 0 or less (every episode cut at once: returns of 0 for any
    policy) and a device torch or this machine does not have (its UsageError, not torch's list of device types); a
    max_steps of at least 1 cuts the episodes."""
    policy = flipes.rl.MLPPolicy(gym.spaces.Box(-5, 5, (4,)), gym.spaces.Discrete(2), hidden=(4,))
    with pytest.raises(
        TypeError, match=r"^evaluate_policy\(policy, \.\.\.\) takes the policy as a torch.nn.Module, got a NoneType"
    ):
        flipes.evaluate_policy(None, "flipes/CartPole-v1", episodes=2)
    for steps in (0, -1, 2.5):
        with pytest.raises(UsageError, match=rf"^max_steps: must be an integer of at least 1, got {steps}; pass None"):
            flipes.evaluate_policy(policy, "flipes/CartPole-v1", episodes=2, max_steps=steps)
    with pytest.raises(UsageError, match=r"^--device: unknown device 'gpu'"):
        flipes.evaluate_policy(policy, "flipes/CartPole-v1", episodes=2, device="gpu")
    assert flipes.evaluate_policy(policy, "flipes/CartPole-v1", episodes=2, max_steps=3).tolist() == [3.0, 3.0]


def _rows(run: Path, fitness: list[float]) -> Path:
    """A run directory whose metrics.jsonl holds one row per fitness value (what flipes plot reads)."""
    run.mkdir()
    rows = [{"generation": g, "fitness_mean": f, "fitness_max": f + 1, "timesteps": 10 * (g + 1)} for g, f in enumerate(fitness)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return run


def test_plot_refuses_a_figure_without_curves_and_names_a_run_without_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose metrics.jsonl holds no row yet (its first generation has not ended) would be an empty figure: alone
    it is refused in one line naming it (exit status 2, nothing written); beside a run with rows the figure is drawn and
    a note names the run it has no curve of."""
    empty, full, out = _rows(tmp_path / "empty", []), _rows(tmp_path / "full", [1.0, 2.0]), tmp_path / "c.png"
    with pytest.raises(SystemExit) as e:
        main(["plot", str(empty), "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == f"flipes: error: {empty}: has no row in metrics.jsonl yet (no generation has " \
        "ended); plot it once one has\n" and not out.exists()  # fmt: skip
    assert main(["plot", str(full), str(empty), "--out", str(out)]) == 0 and out.read_bytes()[:4] == b"\x89PNG"
    assert (
        f"flipes plot: {empty}: no row in metrics.jsonl yet (no generation has ended): no curve of it\n"
        in capsys.readouterr().err
    )


def test_plot_group_averages_the_seeds_with_rows_beside_one_without(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With --group, a seed whose metrics.jsonl holds no row yet (a job still queued, or one that failed at its start) is
    left out of its setting, as the note says: the setting's curve is the mean of the seeds with rows (here the one seed's
    own values), not an empty one because one seed has no points."""
    pytest.importorskip("matplotlib")
    root = tmp_path / "p64"
    root.mkdir()
    full, empty = _rows(root / "seed0", [1.0, 2.0]), _rows(root / "seed1", [])
    table, out = tmp_path / "c.csv", tmp_path / "c.png"
    assert main(["plot", str(full), str(empty), "--group", "parent", "--csv", str(table), "--out", str(out)]) == 0
    with open(table, newline="") as f:
        rows = [(r["metric"], r["generation"], r["seeds"], r["mean"]) for r in csv.DictReader(f)]
    assert rows == [("fitness_mean", "0", "1", "1.0"), ("fitness_mean", "1", "1", "2.0")]
    note = f"flipes plot: {empty}: no row in metrics.jsonl yet (no generation has ended): no curve of it\n"
    assert note in capsys.readouterr().err


def test_plot_writes_one_runs_curves_into_it_and_several_runs_curves_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --out, ``flipes plot RUN`` writes RUN/curves.png, and ``flipes plot A B`` writes ./curves.png (neither
    run's directory holds the other's curves)."""
    pytest.importorskip("matplotlib")
    a, b = _rows(tmp_path / "a", [1.0, 2.0]), _rows(tmp_path / "b", [0.5, 3.0])
    monkeypatch.chdir(tmp_path)
    assert plot_command([str(a)]) == a / "curves.png"
    assert plot_command([str(a), str(b)]) == Path("curves.png")
    assert (tmp_path / "curves.png").is_file() and not (b / "curves.png").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CartPole run of 2 generations, evaluated each, keeping its best member (seed 1: best.pt is generation 1's)."""
    import flipes

    out = tmp_path_factory.mktemp("tiny") / "run"
    flipes.train(**FAST_KW, generations=2, eval_every=1, track_best=True, seed=1, out=str(out))
    return out


def test_evaluate_says_whether_it_evaluated_the_center_or_the_best_member(tiny_run: Path, capsys: pytest.CaptureFixture) -> None:
    """``flipes evaluate --checkpoint best-member`` says it evaluated the best member, latest the center policy."""
    for which, what in (("best-member", "best member"), ("latest", "center policy")):
        evaluate_command([str(tiny_run), "--episodes", "2", "--checkpoint", which])
        assert capsys.readouterr().out.startswith(f"CartPole-v1: {what} return "), which


def test_load_policy_returns_the_chosen_checkpoints_center_in_eval_mode(tiny_run: Path) -> None:
    """load_policy gives the center of best.pt for ``best`` and of checkpoint.pt for ``latest``, every module in eval
    mode (dropout and batch norm as deployed)."""
    import flipes
    from flipes.checkpoint import load_checkpoint

    assert (load_checkpoint(tiny_run / "best.pt")["es"]["generation"], load_checkpoint(tiny_run)["es"]["generation"]) == (1, 2)
    for which, file in (("best", "best.pt"), ("latest", "checkpoint.pt")):
        policy = flipes.load_policy(tiny_run, which)
        assert not any(m.training for m in policy.modules())
        saved = load_checkpoint(tiny_run / file)["es"]["model"]
        assert all(torch.equal(v, saved[k]) for k, v in policy.state_dict().items()), which


class _Stub:
    """The parts of a TrainState that the checkpoint and logging callbacks read: a generation counter and a state."""

    def __init__(self, run_dir: Path, generation: int = 0) -> None:
        self.run_dir, self.best, self.resumed = run_dir, -math.inf, False
        self.es = types.SimpleNamespace(generation=generation)
        self.config = TrainConfig()

    def checkpoint_state(self) -> dict[str, object]:
        return {"generation": self.es.generation}


def test_the_checkpointer_saves_every_nth_generation_the_best_on_improvement_and_at_the_end(tmp_path: Path) -> None:
    """checkpoint.pt is written after generations that are multiples of ``every`` and at the end where the last one
    was not written (or checkpoint.pt is gone); best.pt only for an eval_return above every earlier one (a tie or a
    row without one writes nothing)."""
    from flipes.callbacks import Checkpointer
    from flipes.checkpoint import read_checkpoint

    state = _Stub(tmp_path)
    saver = Checkpointer(tmp_path, every=3)
    saver.on_train_start(state)  # type: ignore[arg-type]
    saved, best = [], []
    for generation, value in enumerate([1.0, None, 1.0, 0.5, 2.0, 2.0, None], start=1):
        state.es.generation = generation
        saver.on_generation(state, {"generation": generation - 1} | ({} if value is None else {"eval_return": value}))  # type: ignore[arg-type]
        saved.append(read_checkpoint(tmp_path / "checkpoint.pt")["generation"] if (tmp_path / "checkpoint.pt").exists() else None)
        best.append(read_checkpoint(tmp_path / "best.pt")["generation"])
    assert saved == [None, None, 3, 3, 3, 6, 6] and best == [1, 1, 1, 1, 5, 5, 5]
    saver.on_train_end(state, "generations")  # type: ignore[arg-type]
    assert read_checkpoint(tmp_path / "checkpoint.pt")["generation"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "checkpoint.pt", "previous.pt"]  # best.pt keeps none
    (tmp_path / "checkpoint.pt").unlink()
    saver.on_train_end(state, "generations")  # type: ignore[arg-type]
    assert read_checkpoint(tmp_path / "checkpoint.pt")["generation"] == 7


def test_wandb_gets_each_rows_numbers_at_its_generation_and_an_interruption_as_exit_code_130(tmp_path: Path) -> None:
    """WandbLogger logs a row's numbers but not its generation, which is the step; a run ended by an interruption
    finishes with exit code 130 (W&B shows it as failed), any other end with 0."""
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    from flipes.callbacks import WandbLogger

    calls: list[tuple] = []
    for reason, code in (("interrupted", 130), ("generations", 0), ("target", 0)):
        logger = WandbLogger()
        logger.run = types.SimpleNamespace(
            log=lambda values, step: calls.append((values, step)),
            finish=lambda exit_code: calls.append(("finish", exit_code)),
            summary={},
        )
        logger.on_generation(_Stub(tmp_path), {"generation": 4, "fitness_mean": 1.5, "env": "x", "timesteps": 80})  # type: ignore[arg-type]
        logger.on_train_end(_Stub(tmp_path), reason)  # type: ignore[arg-type]
        assert calls == [({"fitness_mean": 1.5, "timesteps": 80}, 4), ("finish", code)] and logger.run.summary == {
            "reason": reason
        }
        calls.clear()


def test_wandb_failing_to_start_is_one_error_naming_each_way_on(tmp_path: Path) -> None:
    """W&B refusing to start (no API key) is a UsageError on --wandb that names its message and the three ways on,
    --no-wandb among them: a resumed run keeps the --wandb it was trained with, so leaving the flag out is not one."""
    wandb = pytest.importorskip("wandb", reason="the wandb extra is not installed")
    from flipes.callbacks import WandbLogger

    def refuse(**kwargs: object) -> None:
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    logger = WandbLogger()
    logger.wandb = types.SimpleNamespace(init=refuse, errors=wandb.errors)
    with pytest.raises(UsageError) as e:
        logger.on_train_start(_Stub(tmp_path))  # type: ignore[arg-type]
    assert e.value.option == "--wandb" and "No API key configured" in e.value.problem
    assert all(way in e.value.fix for way in ("wandb login", "WANDB_MODE=offline", "--no-wandb")), e.value.fix


def test_the_eta_is_the_generations_left_at_the_rate_of_this_invocation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ETA is (generations left after this one) / (generations done since this invocation started per second):
    a run of 10 at 10 s a generation shows 1:30 after generation 0, one of 1000 2:46:30, and a run resumed at
    generation 5 shows 0:40 after generation 5 (the 5 before it were another invocation's)."""
    import flipes.progress

    for total, first, expect in ((10, 0, "0:01:30"), (1000, 0, "2:46:30"), (10, 5, "0:00:40")):
        clock = types.SimpleNamespace(perf_counter=iter([0.0, 10.0]).__next__)  # start, then the update
        monkeypatch.setattr(flipes.progress, "time", clock)
        stream = io.StringIO()
        Progress(total, stream).update({"generation": first, "fitness_mean": 0.0, "fitness_max": 0.0, "seconds": 10.0})
        assert stream.getvalue().endswith(f"eta {expect}\n"), stream.getvalue()


def test_the_progress_printer_prints_every_eval_every_th_generation_when_piped(tmp_path: Path) -> None:
    """Piped, the progress line of a run is printed for generations that are multiples of --eval-every and the last."""
    from flipes.callbacks import ProgressPrinter

    state = _Stub(tmp_path)
    state.config = TrainConfig(generations=7, eval_every=3)
    stream = io.StringIO()
    printer = ProgressPrinter(stream)
    printer.on_train_start(state)  # type: ignore[arg-type]
    for generation in range(7):
        printer.on_generation(state, {"generation": generation, "fitness_mean": 0.0, "fitness_max": 0.0, "seconds": 1.0})  # type: ignore[arg-type]
    assert [int(line.split()[1].split("/")[0]) for line in stream.getvalue().splitlines()] == [0, 3, 6]


def test_curves_are_drawn_against_timesteps_for_an_env_and_generations_for_a_fitness(tmp_path: Path) -> None:
    """curves.png of an env run has env steps on its x axis; a custom fitness (no env steps) has generations."""
    from flipes.builders import standard_callbacks
    from flipes.callbacks import CurvePlotter

    for config, x in (
        (TrainConfig(tensorboard=False), "timesteps"),
        (TrainConfig(env="none", fitness="m:f", tensorboard=False), "generation"),
    ):
        (plotter,) = [c for c in standard_callbacks(config, tmp_path) if isinstance(c, CurvePlotter)]
        assert (plotter.x, plotter.path) == (x, tmp_path / "curves.png")


def test_no_plot_trains_the_same_run_without_curves_png_and_a_resume_may_turn_it_on(tmp_path: Path) -> None:
    """--no-plot leaves curves.png out and nothing else: the run's rows and checkpoint are those of a run that draws it;
    the option may change on a resume, whose end then draws the curves of every generation."""
    import flipes

    kw = {"env": "CartPole-v1", "popsize": 8, "eval_episodes": 2, "target": None, "tensorboard": False, "progress": False}
    drawn = flipes.train(**kw, generations=2, out=str(tmp_path / "drawn"))
    bare = flipes.train(**kw, generations=2, plot=False, out=str(tmp_path / "bare"))
    assert (tmp_path / "drawn" / "curves.png").is_file() and not (tmp_path / "bare" / "curves.png").exists()
    assert [r["params_sha256"] for r in bare.metrics] == [r["params_sha256"] for r in drawn.metrics]
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == sorted(
        p.name for p in (tmp_path / "drawn").iterdir() if p.name != "curves.png"
    )
    flipes.train(generations=3, plot=True, resume=str(tmp_path / "bare"), progress=False)
    assert (tmp_path / "bare" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_policy_cuts_every_episode_after_max_steps(tiny_run: Path) -> None:
    """evaluate_policy(max_steps=3) ends each CartPole episode after 3 steps (a reward of 1 each: returns of exactly 3;
    no pole falls that fast), where the env's own limit lets them run longer."""
    import flipes
    from flipes.runs import evaluate_policy

    policy = flipes.load_policy(tiny_run)
    assert evaluate_policy(policy, "CartPole-v1", 4, max_steps=3).tolist() == [3.0] * 4
    assert evaluate_policy(policy, "CartPole-v1", 4).max().item() > 3.0


def test_only_a_run_that_ended_before_its_first_generation_counts_as_unstarted(tmp_path: Path, tiny_run: Path) -> None:
    """A directory is taken over without --overwrite only while it holds what a run writes before its first generation
    ends: a generation-0 checkpoint, config.json and an empty metrics.jsonl. A metrics row, a checkpoint past
    generation 0, or a previous.pt, best.pt or curves.png (even alone) mark a run that trained; a config.json without
    a checkpoint (nor the marker of a setup cut short) is no such run's: one's own file, or another tool's."""
    from flipes.checkpoint import read_checkpoint, save_checkpoint
    from flipes.rundir import unstarted

    state = read_checkpoint(tiny_run / "checkpoint.pt")

    def run(name: str, generation: int | None = 0, **files: str) -> Path:
        here = tmp_path / name
        here.mkdir()
        (here / "config.json").write_text("{}")
        (here / "metrics.jsonl").write_text(files.pop("metrics", ""))
        if generation is not None:
            save_checkpoint({**state, "es": {**state["es"], "generation": generation}}, here / "checkpoint.pt")
        for file, text in files.items():
            (here / file.replace("_", ".")).write_text(text)
        return here

    assert unstarted(run("fresh"))
    assert not unstarted(run("no_checkpoint", None))
    assert unstarted(run("setup_cut_short", None, _setup=""))
    assert not unstarted(run("one_row", metrics='{"generation": 0}\n'))
    assert not unstarted(run("trained", 1))
    for name in ("previous_pt", "best_pt", "curves_png"):
        assert not unstarted(run(name, **{name: "x"})), name
        assert not unstarted(run(f"{name}_alone", None, **{name: "x"})), name


def test_a_config_json_of_ones_own_in_out_is_refused_and_kept(tmp_path: Path) -> None:
    """Training into a directory that holds a config.json flipes did not write (a project's, a model's) is refused as
    a directory holding a run, and the file stays byte for byte: it is not taken over as a setup cut short."""
    out = tmp_path / "project"
    out.mkdir()
    (out / "config.json").write_text('{"hidden_size": 768}')
    with pytest.raises(UsageError, match=r"holds a run \(config\.json\)"):
        flipes.train(**FAST_KW, generations=1, out=str(out))
    assert (out / "config.json").read_text() == '{"hidden_size": 768}' and not (out / "checkpoint.pt").exists()


def test_evaluate_and_export_of_a_run_without_a_checkpoint_yet_say_so(
    tmp_path: Path, tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run directory whose setup is under way or was cut short holds config.json but no checkpoint: evaluate and export
    say that the run has written none yet, not to pass the --checkpoint value that just failed."""
    run = tmp_path / "setting_up"
    run.mkdir()
    (run / "config.json").write_bytes((tiny_run / "config.json").read_bytes())
    (run / ".setup").touch()
    for command in ("evaluate", "export"):
        with pytest.raises(SystemExit) as e:
            main([command, str(run)])
        assert e.value.code == 2 and capsys.readouterr().err == (
            f"flipes: error: --checkpoint: no checkpoint at {run / 'checkpoint.pt'}; the run has written none yet: its "
            "setup is under way, or was cut short (the same flipes train completes it)\n"
        ), command


def test_a_second_config_file_is_refused_not_dropped(tmp_path: Path) -> None:
    """Two --config files (a base and an overlay, as Hydra users layer them) are refused in one line naming both: argparse
    would read the last alone, silently dropping the first file's options. One file, with flags over it, still reads."""
    base, overlay = tmp_path / "base.toml", tmp_path / "overlay.toml"
    base.write_text("popsize = 16\n")
    overlay.write_text("sigma = 0.3\n")
    with pytest.raises(UsageError, match=rf"^--config: given 2 times \({base}, {overlay}\); one file is read; merge them"):
        parse_train_config(["--config", str(base), f"--config={overlay}"])
    config = parse_train_config(["--config", str(base), "--sigma", "0.3"])
    assert (config.popsize, config.sigma) == (16, 0.3)


def test_a_path_starting_with_a_tilde_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out or --resume from a config file (or flipes.train) that starts with "~" is refused, naming the path in full:
    only a shell expands it, and the run would go to a directory named "~" under the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "run.toml").write_text('out = "~/runs/a"\n')
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", "run.toml", "--generations", "1"])
    assert e.value.code == 2 and capsys.readouterr().err.startswith(
        f"flipes: error: --out: '~/runs/a' starts with '~', which only a shell expands; write it in full "
        f"({tmp_path / 'home' / 'runs' / 'a'})"
    )
    with pytest.raises(UsageError, match=r"^--resume: '~/runs/a' starts with '~'"):
        flipes.train(**FAST_KW, generations=1, resume="~/runs/a", out="b")
    assert list(tmp_path.iterdir()) == [tmp_path / "run.toml"]


def test_a_file_system_without_locks_trains_unlocked_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where flock fails because the file system takes no lock (ENOSYS: Lustre mounted noflock), a run starts and resumes
    with a warning that its directory is not locked, not refused as "in use" by a process that does not exist; where it
    fails because another process holds the lock (EWOULDBLOCK), it is still refused."""
    import errno
    import fcntl

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match=r"its file system takes no lock \(Function not implemented\), so the run"):
        flipes.train(**FAST_KW, generations=1, out=str(run))
    with pytest.warns(UserWarning, match=r"takes no lock"):
        assert flipes.train(**FAST_KW, generations=2, resume=str(run)).metrics[0]["generation"] == 1

    def held(fd: int, operation: int) -> None:
        raise BlockingIOError(errno.EWOULDBLOCK, "Resource temporarily unavailable")

    monkeypatch.setattr(fcntl, "flock", held)
    with pytest.raises(UsageError, match=r"^--resume: .* is in use by flipes pid"):
        flipes.train(**FAST_KW, generations=3, resume=str(run))


def test_a_damaged_best_pt_points_at_the_runs_checkpoint_not_at_previous_pt(
    tmp_path: Path, tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """previous.pt is an older checkpoint.pt, not an older best.pt: a damaged best.pt is not offered it (nor, where it is
    damaged too, told to start the run again with --overwrite, which would delete the good checkpoint.pt); evaluate
    points at --checkpoint latest and a resume of it at the run's directory."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    flip_a_byte(run / "best.pt", run / "previous.pt")
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(run), "--checkpoint", "best"])
    assert e.value.code == 2 and capsys.readouterr().err == (
        f"flipes: error: --checkpoint: {run / 'best.pt'} is corrupted: its content does not match its SHA-256; best.pt "
        "keeps no older copy: use --checkpoint latest (a resumed run writes best.pt again as it improves)\n"
    )
    with pytest.raises(UsageError) as resumed:
        flipes.train(**FAST_KW, generations=3, resume=str(run / "best.pt"), out=str(tmp_path / "branch"))
    assert str(resumed.value) == (
        f"--resume: {run / 'best.pt'} is corrupted: its content does not match its SHA-256; best.pt keeps no older copy: "
        f"--resume {run} continues from the run's checkpoint.pt"
    )


def test_damaged_checkpoints_offer_the_best_pt_that_loads_not_a_start_over(
    tmp_path: Path, tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where checkpoint.pt is damaged and previous.pt is damaged too (or missing), a best.pt that loads (a whole training
    state) is offered, to resume and to evaluate, rather than starting the run again with --overwrite (which would delete
    it); the resume it offers trains."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    flip_a_byte(run / "checkpoint.pt", run / "previous.pt")
    damaged = f"{run / 'checkpoint.pt'} is corrupted: its content does not match its SHA-256"
    best = run / "best.pt"
    with pytest.raises(UsageError) as e:
        flipes.train(resume=str(run), generations=3, progress=False)
    assert str(e.value) == f"--resume: {damaged}; the previous checkpoint {run / 'previous.pt'} is damaged too; the best " \
        f"checkpoint {best} can be resumed instead: continue from it with --resume {best}"  # fmt: skip
    with pytest.raises(SystemExit):
        main(["evaluate", str(run)])
    assert capsys.readouterr().err.endswith(f"the best checkpoint {best} can be used instead: pass --checkpoint {best}\n")
    (run / "previous.pt").unlink()
    with pytest.raises(UsageError, match=rf"SHA-256; the best checkpoint {best} can be resumed instead"):
        flipes.train(resume=str(run), generations=3, progress=False)
    assert flipes.train(resume=str(best), generations=3, progress=False).metrics[-1]["generation"] == 2


def test_overwrite_clears_the_runs_files_and_logs_and_keeps_others(tmp_path: Path) -> None:
    """--overwrite deletes what the old run wrote (checkpoints, metrics, curves, export's policy.pt2, TensorBoard and
    W&B logs) before the new run writes its config.json; a file of the user's stays."""
    from flipes.rundir import prepare_run_dir

    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    (run / "wandb").mkdir()
    (run / "tensorboard" / "events").write_text("x")
    old = ("checkpoint.pt", "previous.pt", "best.pt", "metrics.jsonl", "curves.png", "policy.pt2", "notes.txt")
    for name in old:
        (run / name).write_text("x")
    prepare_run_dir(run, TrainConfig(out=str(run), overwrite=True)).release()
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.json", "notes.txt"]
    assert json.loads((run / "config.json").read_text())["overwrite"] is True


def test_plot_writes_the_format_its_suffix_names(tmp_path: Path) -> None:
    """``flipes plot --out curves.svg`` writes SVG (XML), .pdf a PDF, .png a PNG: the format follows the suffix."""
    pytest.importorskip("matplotlib")
    run = _rows(tmp_path / "a", [1.0, 2.0])
    for suffix, start in ((".svg", b"<?xml"), (".pdf", b"%PDF"), (".png", b"\x89PNG")):
        out = plot_command([str(run), "--out", str(tmp_path / f"curves{suffix}")])
        assert out.read_bytes().startswith(start), suffix


def test_code_known_only_by_an_angle_bracket_name_is_never_the_same_code() -> None:
    """A script's function is the same code run as the main module or imported (``__main__[train]:f`` and ``train:f``);
    a lambda or local function (``<lambda>``, ``f.<locals>.g``) is not known by its name, so two never match."""
    from flipes.plugins import same_code

    assert same_code("__main__[train]:make_model", "train:make_model")
    assert not same_code("__main__[train]:make_model", "other:make_model")
    assert not same_code("__main__[train]:<lambda>", "train:<lambda>")
    assert not same_code("__main__[train]:f.<locals>.g", "train:f.<locals>.g")


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), {"eval_return": float("inf")}])
def test_an_evaluate_returning_a_non_finite_return_is_refused(value: object) -> None:
    """A user's evaluate() must give a finite eval_return (best.pt and --target compare it): inf, -inf and NaN are
    refused naming evaluate."""
    from flipes.builders import UserEvaluator

    with pytest.raises(UsageError) as e:
        UserEvaluator(lambda model: value)(torch.nn.Linear(1, 1), 0)
    assert e.value.option == "evaluate" and "returned eval_return" in e.value.problem


def test_the_evaluation_env_gets_no_more_threads_than_episodes_and_the_runs_step_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """The center's evaluation env runs --eval-episodes copies on at most that many threads (or worker processes),
    however many --env-threads are given, and its episodes are cut at --max-episode-steps as training's are (0: the
    env's own limit)."""
    import flipes.builders

    made: list[dict] = []
    monkeypatch.setattr(flipes.builders, "make_vector_env", lambda env, n, device, **kw: made.append({"n": n, **kw}))
    comm = types.SimpleNamespace(rank=0, local_size=1)
    for env_threads, threads, cut in ((8, 3, 5), (2, 2, 0)):
        config = TrainConfig(eval_episodes=3, env_threads=env_threads, max_episode_steps=cut)
        evaluator = flipes.builders.build_evaluator(config, "cpu", comm, env=object())  # type: ignore[arg-type]
        assert made.pop() == {"n": 3, "threads": threads, "note": None}
        assert evaluator.max_steps == (cut or None)  # type: ignore[union-attr]


def test_a_callbacks_stop_flag_is_read_as_bool_and_a_number_that_is_no_flag_is_refused() -> None:
    """``on_generation``'s answer stops the run for True, a nonzero integer, numpy's True and an integer or bool tensor
    of one element, goes on for None, False and 0, and is refused naming the callback for a float (a loss returned by
    mistake, which bool() would read as a stop), a float tensor and a dict."""
    import numpy as np

    from flipes.stopping import stop_asked

    class Cb(flipes.Callback):
        pass

    cb = Cb()
    stops = [True, 1, 3, np.bool_(True), np.int64(2), torch.tensor(True), torch.tensor([1])]
    goes = [None, False, 0, np.bool_(False), torch.tensor(0)]
    assert [stop_asked(cb, a) for a in stops] == [True] * len(stops)
    assert [stop_asked(cb, a) for a in goes] == [False] * len(goes)
    for answer, kind in ((0.5, "float"), (1.0, "float"), (torch.tensor(1.0), "Tensor"), ({"loss": 1.0}, "dict")):
        with pytest.raises(UsageError, match=rf"^callbacks: Cb\.on_generation returned a {kind}, not True \(stop\)"):
            stop_asked(cb, answer)


def test_the_stop_reason_is_the_first_that_holds_of_target_budget_time_callback_and_signal() -> None:
    """After a generation the loop names one reason to stop, the first that holds in this order: the target reached,
    the --max-timesteps budget spent, --max-seconds passed, a callback's request, a signal; with none it goes on."""
    from flipes.stopping import stop_reason

    config = TrainConfig(max_timesteps=100, max_seconds=5.0)
    state = types.SimpleNamespace(target=10.0, config=config)
    row = {"eval_return": 10.0, "timesteps": 100}
    below = {"eval_return": 9.0, "timesteps": 99}
    assert stop_reason(state, row, True, True, 6.0).startswith("solved: eval_return 10.00 >= 10")  # type: ignore[arg-type]
    assert stop_reason(state, {**row, "eval_return": 9.0}, True, True, 6.0).startswith("timestep budget reached")  # type: ignore[arg-type]
    assert stop_reason(state, below, True, True, 6.0) == "stopped after 6 s of this call (--max-seconds 5)"  # type: ignore[arg-type]
    assert stop_reason(state, below, True, True, 0.0) == "stopped by a callback"  # type: ignore[arg-type]
    assert stop_reason(state, below, True, False, 0.0) == "interrupted"  # type: ignore[arg-type]
    assert stop_reason(state, below, False, False, 0.0) is None  # type: ignore[arg-type]


def test_evaluate_export_and_plot_under_mpiexec_run_once_on_rank_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``flipes evaluate``, ``export`` and ``plot`` started by ``mpiexec -n 2`` (a job script's prefix; its ranks read
    from the environment MPICH sets) run once: rank 1 ends at once with status 0, writing and printing nothing, and
    rank 0 runs the command as one process does, after one line saying so; ``flipes train`` is not held back."""
    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=1, out=str(run))
    commands = [["evaluate", str(run), "--episodes", "2"], ["export", str(run)], ["plot", str(run)]]
    capsys.readouterr()
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", "1")
    for argv in commands:
        assert main(argv) == 0
    assert capsys.readouterr() == ("", "") and not (run / "policy.pt2").exists() and not (run / "curves.png").exists()
    monkeypatch.setenv("PMI_RANK", "0")
    for argv in commands:
        assert main(argv) == 0
        out, err = capsys.readouterr()
        assert err.startswith(f"flipes: {argv[0]} runs in one process: rank 0 of the 2 that mpiexec started runs it"), err
        assert out
    assert (run / "policy.pt2").is_file() and (run / "curves.png").is_file()
