"""Training as a library function (``flipes.train``) and as the ``flipes train`` command: solving,
metrics, callbacks, stop rules, resume, checkpoints and signals."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import (
    ENDLESS_FITNESS,
    FAST,
    FAST_KW,
    GLOBAL_DRAWS_FITNESS,
    MADE_UP_FITNESS,
    NEEDS_TOMLLIB,
    ROOT,
    Mpi4pyLike,
    main_block,
    metrics,
    once_per_session,
    sigterm_twice,
)

import flipes
from flipes.callbacks import Callback
from flipes.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from flipes.commands import main, parse_train_config
from flipes.config import TrainConfig, default_target
from flipes.rl import make_vector_env, run_episodes
from flipes.rl.presets import preset_for
from flipes.train_state import TrainState

# FAST_KW with CartPole episodes cut at 20 steps: for the tests of how runs resume, refuse and log, where the returns
# only need to be those of the same run (a trained CartPole policy otherwise plays 500 steps per member and episode)
SHORT_KW = {**FAST_KW, "max_episode_steps": 20}


@pytest.fixture(scope="module")
def solved_cartpole(tmp_path_factory: pytest.TempPathFactory) -> flipes.TrainResult:
    """flipes/CartPole-v1 trained with the defaults (seed 0) until it stops at its registered target, for the tests
    that read that run; its directory is theirs to read, never to write."""
    out = tmp_path_factory.mktemp("solved") / "cartpole"
    return flipes.train(env="flipes/CartPole-v1", seed=0, out=str(out), tensorboard=False, plot=False, progress=False)


def test_train_in_process_solves_cartpole_and_its_rows_are_the_jsonl_rows(solved_cartpole: flipes.TrainResult) -> None:
    """``flipes.train`` with the defaults solves flipes/CartPole-v1 (center policy >= 475 over 100
    episodes, seed 0), returns exactly the rows it wrote to metrics.jsonl, and the saved policy
    passes an independent 100-episode check through ``flipes.load_policy``."""
    result = solved_cartpole
    assert result.reason.startswith("solved") and result.metrics[-1]["eval_return"] >= 475, result.reason
    assert result.metrics == metrics(result.run_dir)
    assert [r["generation"] for r in result.metrics] == list(range(len(result.metrics)))
    assert result.run_dir.name == "cartpole" and result.es.generation == len(result.metrics)
    policy = flipes.load_policy(result.run_dir)
    returns = run_episodes(make_vector_env("flipes/CartPole-v1", 100), policy, seed=987_654).returns
    assert returns.mean() >= 475, returns.mean()
    # the returned model is the trained center network
    assert all(torch.equal(a, b) for a, b in zip(policy.state_dict().values(), result.model.state_dict().values(), strict=True))


def test_callbacks_see_every_row_and_can_stop_training(tmp_path: Path) -> None:
    """A user callback gets the start, every row (the same dicts as ``result.metrics``) and the end,
    and returning True from ``on_generation`` stops after that generation with a checkpoint of it."""

    class StopAtThree(Callback):
        def __init__(self) -> None:
            self.events: list = []

        def on_train_start(self, state) -> None:
            self.events.append(("start", state.es.generation))

        def on_generation(self, state, row) -> bool:
            self.events.append(("row", row["generation"]))
            return row["generation"] == 3

        def on_train_end(self, state, reason) -> None:
            self.events.append(("end", reason))

    cb = StopAtThree()
    result = flipes.train(**FAST_KW, generations=50, out=str(tmp_path), callbacks=[cb])
    assert cb.events == [("start", 0), *[("row", g) for g in range(4)], ("end", "stopped by a callback")]
    assert result.reason == "stopped by a callback" and load_checkpoint(tmp_path)["es"]["generation"] == 4


def test_a_callback_returning_other_than_a_stop_flag_is_refused_not_taken_as_stop(tmp_path: Path) -> None:
    """``on_generation`` returning the row (as other loggers' hooks do) would read as True and stop after one
    generation: it is refused in one line naming the callback and what to return; a numpy or 0-d torch bool
    answer is a stop flag like True and False, and so is an integer (0 goes on, 1 stops)."""

    class ReturnsRow(Callback):
        def on_generation(self, state, row):
            row["double"] = 2 * row["fitness_mean"]
            return row

    expected = r"^callbacks: ReturnsRow.on_generation returned a dict, not True \(stop\), False or None; return True to stop"
    with pytest.raises(flipes.UsageError, match=expected):
        flipes.train(**FAST_KW, generations=5, out=str(tmp_path / "row"), callbacks=[ReturnsRow()])

    class Flags(Callback):
        def on_generation(self, state, row):
            return np.bool_(False) if row["generation"] == 0 else torch.tensor(row["generation"] == 2)

    result = flipes.train(**FAST_KW, generations=5, out=str(tmp_path / "flags"), callbacks=[Flags()])
    assert result.reason == "stopped by a callback" and [r["generation"] for r in result.metrics] == [0, 1, 2]

    class Counts(Callback):  # an integer flag, as bool() reads it
        def on_generation(self, state, row):
            return int(row["generation"] == 1)

    result = flipes.train(**FAST_KW, generations=5, out=str(tmp_path / "ints"), callbacks=[Counts()])
    assert result.reason == "stopped by a callback" and [r["generation"] for r in result.metrics] == [0, 1]


def test_the_optimizer_settings_sent_to_other_ranks_are_plain_values_that_set_an_optimizer_alike() -> None:
    """What rank 0 sends of its optimizer after the callbacks (flipes.training.optimizer_settings) pickles even where a
    group holds a function (another library's optimizer), which stays out, holds a tensor lr as a copy on the CPU, and
    sets another optimizer's lr, betas and a tensor lr (written in place) to rank 0's."""
    import pickle

    from flipes.es.optimizer import optimizer_settings
    from flipes.rank_zero import set_optimizer_settings

    def adam(lr: float | torch.Tensor) -> torch.optim.Optimizer:
        optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=lr)
        optimizer.param_groups[0]["schedule"] = lambda step: 0.5**step
        return optimizer

    rank0, other = adam(torch.tensor(0.1)), adam(torch.tensor(0.2))
    rank0.param_groups[0]["betas"] = (0.8, 0.99)
    tensor_lr = other.param_groups[0]["lr"]
    kept = optimizer_settings(rank0)[0]["lr"]  # a copy on the CPU: a cuda:0 tensor would reach every rank's GPU 0
    assert kept is not rank0.param_groups[0]["lr"] and kept.device.type == "cpu" and kept.item() == pytest.approx(0.1)
    sent = pickle.loads(pickle.dumps(optimizer_settings(rank0)))
    assert "schedule" not in sent[0] and "params" not in sent[0]
    set_optimizer_settings(other, sent)
    assert other.param_groups[0]["lr"] is tensor_lr and tensor_lr.item() == pytest.approx(0.1)
    assert other.param_groups[0]["betas"] == (0.8, 0.99) and callable(other.param_groups[0]["schedule"])


def test_registered_reward_threshold_stops_training_and_target_none_does_not(
    tmp_path: Path, solved_cartpole: flipes.TrainResult
) -> None:
    """With no target given, InvertedPendulum-v5 stops at gymnasium's registered reward_threshold
    (950; the env's preset row sets none), and CartPole runs every generation with --target none
    although its center policy passes the registered 475 on the way: the solved run, resumed with
    --target none, evaluates 500 and trains on to its last generation."""
    assert "target" not in preset_for("InvertedPendulum-v5") and default_target("InvertedPendulum-v5") == 950.0
    solved = flipes.train(
        env="InvertedPendulum-v5", seed=0, out=str(tmp_path / "ip"), tensorboard=False, plot=False, progress=False
    )
    assert solved.reason.startswith("solved") and "950" in solved.reason
    assert solved.metrics[-1]["eval_return"] >= 950 > max(r.get("eval_return", 0) for r in solved.metrics[:-1])
    assert len(solved.metrics) < solved.config.generations

    auto = solved_cartpole  # flipes/CartPole-v1, seed 0, no target given: stopped at the registered 475
    shutil.copytree(auto.run_dir, tmp_path / "auto")  # the requeue below must leave it as it is: a copy of its own
    before = (tmp_path / "auto" / "metrics.jsonl").read_bytes(), (tmp_path / "auto" / "checkpoint.pt").read_bytes()
    again = flipes.train(env="flipes/CartPole-v1", out=str(tmp_path / "auto"), resume="auto", progress=False)  # a requeue
    assert again.reason.startswith("solved") and "before this resume" in again.reason and again.metrics == []
    assert before == ((tmp_path / "auto" / "metrics.jsonl").read_bytes(), (tmp_path / "auto" / "checkpoint.pt").read_bytes())
    # the solved run goes on with --target none (a run of its own: training it afresh took as long as the fixture); a
    # generation with no evaluation, one evaluated (500, past 475) and one after it: the stop rule never fires
    n = len(auto.metrics) + 3
    shutil.copytree(auto.run_dir, tmp_path / "none")
    free = flipes.train(env="flipes/CartPole-v1", target=None, generations=n, resume=str(tmp_path / "none"), progress=False)
    assert free.reason == "generations" and [r["generation"] for r in metrics(tmp_path / "none")] == list(range(n))
    assert [r["generation"] for r in free.metrics] == list(range(len(auto.metrics), n))
    assert [r.get("eval_return", 0) >= 475 for r in free.metrics] == [False, True, True], free.metrics


def test_a_run_stopped_at_its_target_resumed_without_one_ends_as_a_run_never_stopped(tmp_path: Path) -> None:
    """The target stops a run (after an evaluated row, with a checkpoint); resumed with --target none (or a higher
    one) it trains on to the parameters, rows and timesteps of a run that never had a target."""
    kw = {**FAST_KW, "eval_every": 1, "eval_episodes": 1, "max_episode_steps": 50}
    solved = flipes.train(**{**kw, "target": 40.0}, generations=20, out=str(tmp_path / "run"))
    assert solved.reason.startswith("solved") and len(solved.metrics) < 20
    n = len(solved.metrics) + 2
    free = flipes.train(**kw, generations=n, out=str(tmp_path / "free"))
    assert flipes.train(resume=str(tmp_path / "run"), target=None, generations=n, progress=False).reason == "generations"
    keys = ("generation", "params_sha256", "timesteps", "eval_return")
    assert [[r[k] for k in keys] for r in metrics(tmp_path / "run")] == [[r[k] for k in keys] for r in free.metrics]


@NEEDS_TOMLLIB
def test_config_file_sets_options_and_flags_override_it(tmp_path: Path) -> None:
    """A TOML file sets options, flags override it, and the resolved options land in config.json."""
    cfg = tmp_path / "run.toml"
    cfg.write_text('popsize = 12\ngenerations = 2\nhidden = [8]\nsigma = 0.2\nenv = "CartPole-v1"\nmirrored = false\n')
    config = parse_train_config(["--config", str(cfg), "--sigma", "0.3", "--eval-episodes", "3", "--out", str(tmp_path / "run")])
    assert (config.popsize, config.hidden, config.sigma, config.generations, config.mirrored) == (12, [8], 0.3, 2, False)
    flipes.train(config, progress=False, tensorboard=False, plot=False)
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (resolved["popsize"], resolved["hidden"], resolved["sigma"], resolved["generations"]) == (12, [8], 0.3, 2)


@NEEDS_TOMLLIB
def test_the_preset_rows_are_what_the_readme_says_they_are() -> None:
    """README's "Per-env defaults" holds for the rows as each trains (its own search): MuJoCo rows evaluate 5 episodes
    every 2 generations, InvertedPendulum-v5 every generation, Hopper-v5 every 10 and Walker2d-v5 every 5 with ARS at
    popsizes 16 and 32; their OpenAI-ES rows are 64-64 MLPs at popsize 128; Pendulum-v1 stops at -200."""
    from flipes.rl.presets import defaults

    every = {"HalfCheetah-v5": 2, "Hopper-v5": 10, "Walker2d-v5": 5, "Ant-v5": 2, "Humanoid-v5": 2, "Swimmer-v5": 2,
             "InvertedPendulum-v5": 1}  # fmt: skip
    for env_id, generations in every.items():
        row = defaults(env_id)
        assert (row["eval_episodes"], row["eval_every"]) == (5, generations), env_id
    assert (defaults("Hopper-v5")["algo"], defaults("Hopper-v5")["popsize"]) == ("ars", 16)
    assert (defaults("Walker2d-v5")["algo"], defaults("Walker2d-v5")["popsize"]) == ("ars", 32)
    for env_id in ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5"):
        row = defaults(env_id, "openai-es")
        assert (row["hidden"], row["popsize"]) == ([64, 64], 128), env_id
    assert preset_for("flipes/Pendulum-v1")["target"] == -200.0


def test_per_env_defaults_sit_under_config_files_and_flags(tmp_path: Path) -> None:
    """An env's preset row fills the options nobody set; a config file and flags override it, an
    engine prefix keeps the row, and an env without a row keeps the TrainConfig defaults."""
    a = parse_train_config(["--env", "HalfCheetah-v5"])
    assert (a.popsize, a.sigma, a.lr, a.hidden, a.eval_episodes, a.generations) == (128, 0.03, 0.04, [64, 64], 5, 2000)
    b = parse_train_config(["--env", "envpool:HalfCheetah-v5", "--popsize", "32"])
    assert (b.popsize, b.sigma) == (32, 0.03)
    cfg = tmp_path / "run.toml"
    cfg.write_text('env = "Humanoid-v5"\nlr = 0.5\n')
    c = parse_train_config(["--config", str(cfg)])
    assert (c.lr, c.reward_shift, c.popsize) == (0.5, 5.0, 256)
    assert parse_train_config(["--config", str(cfg), "--env", "Pendulum-v1"]).target == -200.0  # the flag's env picks the row
    plain = TrainConfig()
    d = parse_train_config(["--env", "MountainCar-v0"])
    assert (d.popsize, d.sigma, d.hidden, d.target) == (plain.popsize, plain.sigma, plain.hidden, "auto")
    assert TrainConfig.for_env("HalfCheetah-v5", popsize=32).sigma == 0.03  # the library layers them alike


def state_at(generation: int) -> dict:
    """The least a checkpoint holds: every entry flipes reads of one, at ``generation``."""
    es = {"generation": generation, "config": {}, "model": {}, "optimizer": {}}
    return {"es": es, "config": {}, "timesteps": 0, "seconds": 0.0, "best": float("-inf")}


def test_checkpoints_are_atomic_and_a_broken_one_leaves_the_previous(tmp_path: Path) -> None:
    """A checkpoint replaces the last one whole, keeps it as previous.pt, and a truncated or
    foreign file is an error that names previous.pt where that one loads, and says so where it is broken too; an own
    loop's file given to load_checkpoint names read_checkpoint."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(state_at(1), path)
    save_checkpoint(state_at(2), path)
    assert load_checkpoint(tmp_path)["es"]["generation"] == 2
    assert load_checkpoint(tmp_path / "previous.pt")["es"]["generation"] == 1
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a full disk or a cut copy
    with pytest.raises(CheckpointError, match=r"truncated or not a checkpoint.*previous.pt can be resumed instead"):
        load_checkpoint(tmp_path)
    assert load_checkpoint(tmp_path / "previous.pt")["es"]["generation"] == 1
    torch.save({"something": "else"}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a flipes training checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    save_checkpoint({"es": state_at(1)["es"], "rng": 0}, tmp_path / "own.pt")  # an own loop's: read_checkpoint's
    own = r"own.pt is not a flipes training checkpoint: it holds no run's entries \(only 'es', 'rng'\); "
    with pytest.raises(CheckpointError, match=own + r".*flipes.read_checkpoint\('.*own.pt'\) a file of flipes.save_checkpoint"):
        load_checkpoint(tmp_path / "own.pt")
    previous = tmp_path / "previous.pt"
    previous.write_bytes(previous.read_bytes()[:-8])  # previous.pt broken too: not offered as the way out
    with pytest.raises(CheckpointError, match=r"truncated.*previous.pt is damaged too: start the run again with --overwrite$"):
        load_checkpoint(tmp_path)


def test_writing_best_pt_leaves_previous_pt_the_checkpoint_before_the_latest(tmp_path: Path) -> None:
    """With checkpoint_every 3 and an evaluation every generation, previous.pt holds, after every generation, the
    checkpoint.pt that the latest checkpoint replaced (generation 0, then 3), though best.pt is rewritten in between
    (eval_return rises at generations 2, 3 and 4)."""

    class PreviousPt(Callback):
        def __init__(self) -> None:
            self.seen: list[tuple[int | None, float]] = []

        def on_generation(self, state, row) -> None:  # before the Checkpointer: what the last generation left
            previous = state.run_dir / "previous.pt"
            self.seen.append((load_checkpoint(previous)["es"]["generation"] if previous.exists() else None, row["eval_return"]))

    watch = PreviousPt()
    flipes.train(**FAST_KW, generations=8, eval_every=1, checkpoint_every=3, seed=1, out=str(tmp_path), callbacks=[watch])
    evals = [e for _, e in watch.seen]
    assert evals[1] < evals[2] < evals[3] < evals[4]  # best.pt written at generations 2, 3 and 4
    assert [g for g, _ in watch.seen] == [None] * 3 + [0] * 3 + [3] * 2


def test_best_pt_is_kept_over_a_resume_whose_evaluations_stay_below_the_saved_best(tmp_path: Path) -> None:
    """A resumed run replaces best.pt only with an eval_return above the best the run had before the resume: evaluations
    3, 1, then 2 and 2.5 after the resume leave best.pt the checkpoint taken after generation 0 (es.generation 1, best 3);
    a 4 after a second resume replaces it."""
    returns = [3.0, 1.0, 2.0, 2.5, 4.0]

    def fitness(model, pop):
        return -(model(torch.ones(pop.size, 3)) - 0.5).square().sum(1)

    def evaluate(model):
        return returns.pop(0)

    kw = dict(env="none", model=lambda env: torch.nn.Linear(3, 1), fitness=fitness, evaluate=evaluate, popsize=8, eval_every=1,
              tensorboard=False, plot=False, progress=False, out=str(tmp_path))  # fmt: skip
    flipes.train(**kw, generations=2)
    flipes.train(**kw, generations=4, resume=str(tmp_path))
    best = load_checkpoint(tmp_path / "best.pt")
    assert (best["es"]["generation"], best["best"]) == (1, 3.0)
    assert [r["eval_return"] for r in metrics(tmp_path)] == [3.0, 1.0, 2.0, 2.5]
    flipes.train(**kw, generations=5, resume=str(tmp_path))
    best = load_checkpoint(tmp_path / "best.pt")
    assert (best["es"]["generation"], best["best"]) == (5, 4.0) and not returns


def test_an_empty_checkpoint_is_named_as_such(tmp_path: Path) -> None:
    """A checkpoint emptied by a full disk or a cut copy says 'empty file', not torch's empty 'EOFError: '."""
    save_checkpoint(state_at(1), tmp_path / "checkpoint.pt")
    save_checkpoint(state_at(2), tmp_path / "checkpoint.pt")
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"checkpoint.pt is truncated or not a checkpoint \(empty file\); .*previous.pt"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("algo", ["openai-es", "pgpe", "ars"])
def test_resume_continues_bit_for_bit(tmp_path: Path, algo: str) -> None:
    """4 generations, then a resume to 6, give the parameters (hash per generation) of 6 in one go,
    for each search rule (pgpe: adaptive σ and ClipUp's velocity are part of the state)."""
    kw = {**FAST_KW, "popsize": 16, "eval_episodes": 5, "seed": 3, "algo": algo}
    full = flipes.train(**kw, generations=6, out=str(tmp_path / "full"))
    flipes.train(**kw, generations=4, out=str(tmp_path / "part"))
    rest = flipes.train(**kw, generations=6, resume=str(tmp_path / "part"))
    assert rest.run_dir == tmp_path / "part" and [r["generation"] for r in rest.metrics] == [4, 5]
    assert [r["params_sha256"] for r in metrics(tmp_path / "part")] == [r["params_sha256"] for r in full.metrics]
    assert [r["sigma"] for r in metrics(tmp_path / "part")] == [r["sigma"] for r in full.metrics]
    if algo == "pgpe":
        assert len({r["sigma"] for r in full.metrics}) == 6  # σ moves every generation
    rows = full.metrics
    assert all(k in r for r in rows for k in ("fitness_mean", "fitness_max", "seconds", "timesteps", "params_sha256"))
    assert all("eval_return" in r and r["eval_seconds"] > 0 and r["eval_steps"] > 0 for r in rows[::2])
    assert rows[-1]["timesteps"] > rows[0]["timesteps"] > 0


class HalveLr(Callback):
    """A step-size schedule as the README writes one: the optimizer's lr, halved after every generation (no state of
    its own: the optimizer's param_groups, saved in the checkpoint, hold it)."""

    def on_generation(self, state, row) -> None:
        for group in state.es.optimizer.param_groups:
            group["lr"] *= 0.5
        row["lr"] = state.es.optimizer.param_groups[0]["lr"]


# options whose state or draws a resume must continue, beside the search rules above (their own tests: action noise,
# σ schedules, the CNN, callbacks' own state, --max-timesteps, fitness plug-ins, a process count)
RESUMED_FEATURES = {
    "noise-rank": {"noise_rank": 1},
    "groups-unmirrored": {"groups": 2, "mirrored": False},
    "shaping-weight-decay": {"shaping": "z-score", "weight_decay": 0.01, "track_best": True},
    "episodes-shift-cut": {"episodes": 2, "reward_shift": 0.5, "max_episode_steps": 30},
    "gru": {"policy": "gru"},
    "adaptive-sigma-parts": {"sigma_lr": 0.1, "groups": 4, "members_per_pass": 2, "hold_noise": False},
    "clipup-lr-schedule": {"algo": "pgpe", "groups": 2, "callbacks": [HalveLr()]},
}


@pytest.mark.parametrize("feature", RESUMED_FEATURES)
def test_each_feature_resumes_to_the_rows_of_a_run_never_stopped(tmp_path: Path, feature: str) -> None:
    """2 generations, then a resume to 4, log every column of 4 in one go but the wall times (params_sha256, fitness,
    evaluation, timesteps, σ, return_mean, best member), once per generation, with seconds going on from the
    checkpoint's: for low-rank noise, groups without mirroring, shaping with weight decay and --track-best, episodes
    with a shift and a cut, the GRU policy, adaptive σ over parts with their own noise, a callback's lr schedule
    on ClipUp."""
    kw = {**FAST_KW, "hidden": [4], "eval_every": 1, **RESUMED_FEATURES[feature]}
    full = flipes.train(**kw, generations=4, out=str(tmp_path / "full"))
    flipes.train(**kw, generations=2, out=str(tmp_path / "part"))
    flipes.train(**kw, generations=4, resume=str(tmp_path / "part"))
    timed = ("seconds", "steps_per_second", "eval_seconds")
    rows = metrics(tmp_path / "part")
    assert [{k: v for k, v in r.items() if k not in timed} for r in rows] == [
        {k: v for k, v in r.items() if k not in timed} for r in full.metrics
    ]
    assert [r["generation"] for r in rows] == [0, 1, 2, 3] and rows[1]["seconds"] < rows[2]["seconds"]
    assert all(r["eval_return"] is not None and r["timesteps"] > 0 for r in rows)


def test_a_resume_changing_how_the_update_rounds_says_it_is_not_bit_for_bit(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A resume may change --hold-noise, but the update then sums the noise part by part (or no longer), which rounds
    otherwise: the resume says in a note that it equals a run never stopped only to rounding; one keeping the
    run's setting, or changing only --members-per-pass or --threads (the same bits), says nothing of it, nor does
    --hold-noise without parts. Another device type is named alike (a CUDA index is the same device type); a run saved
    before either option existed is one of held noise, on no device to compare."""
    from flipes.resume import rounding_changes

    kw = {**FAST_KW, "hidden": [4], "groups": 4, "eval_every": 100, "progress": True, "out": str(tmp_path)}
    flipes.train(**kw, generations=1)
    notes = []
    for generations, changed in ((2, {"members_per_pass": 2, "threads": 2}), (3, {"members_per_pass": 2, "hold_noise": False}),
                                 (4, {"members_per_pass": 2, "hold_noise": False}), (5, {"hold_noise": True})):  # fmt: skip
        capsys.readouterr()
        flipes.train(**kw, **changed, generations=generations, resume=str(tmp_path))
        notes.append([line for line in capsys.readouterr().err.splitlines() if "only to rounding" in line])
    assert notes[0] == notes[2] == [] and len(notes[1]) == len(notes[3]) == 1
    assert "resumed with --hold-noise false (the update now samples the noise part by part" in notes[1][0]
    assert "resumed with --hold-noise true (the update now samples the noise for the whole population" in notes[3][0]
    assert [r["generation"] for r in metrics(tmp_path)] == [0, 1, 2, 3, 4]
    cpu = dataclasses.asdict(TrainConfig())
    assert (
        rounding_changes(cpu, {**cpu, "device": "cpu:0"}) == []
        and rounding_changes({**cpu, "device": "cuda"}, {**cpu, "device": "cuda:1"}) == []
    )
    (note,) = rounding_changes(cpu, {**cpu, "device": "cuda"})
    assert note.startswith("resumed with --device cuda (trained on cpu: another device rounds otherwise): the run goes on")
    # without parts the whole population's noise is sampled at once either way; a run saved before --hold-noise and
    # --device existed held its noise, on a device it did not record
    assert rounding_changes(cpu, {**cpu, "hold_noise": False}) == []
    old = {k: v for k, v in cpu.items() if k not in ("hold_noise", "device")} | {"members_per_pass": 2}
    assert rounding_changes(old, {**cpu, "members_per_pass": 2, "hold_noise": True}) == []
    assert len(rounding_changes(old, {**cpu, "members_per_pass": 2, "hold_noise": False})) == 1


def mirrored_halves(records: list[torch.Tensor]):
    """A fitness recording, per generation, half the difference of each mirrored pair's outputs at input 0:
    σ_g·e_k of a Linear(1, 1)'s bias (e_k: the pair's noise, a function of the seed and generation alone)."""

    def fitness(model, pop):
        out = model(torch.zeros(pop.size, 1, dtype=torch.float64)).squeeze(1)
        records.append((out[0::2] - out[1::2]) / 2)
        return -out.square()

    return fitness


def test_a_decaying_sigma_perturbs_generation_g_at_sigma_times_decay_to_the_g_floored_at_sigma_min(tmp_path: Path) -> None:
    """--sigma-decay 0.5 --sigma-min 0.02 from σ 0.1: the rows' sigma of generation g is exactly max(0.1·0.5^g, 0.02),
    the noise each generation perturbs with is that σ (the mirrored half-differences of a float64 bias are σ_g/0.1
    times those of a fixed-σ run of the same seed, to 1e-9), and sigma=SigmaDecay(0.1, 0.5, 0.02) is the same run."""
    from flipes.search import SigmaDecay

    def model(env):
        return torch.nn.Linear(1, 1).double()

    kw = {"env": "none", "model": model, "popsize": 8, "generations": 6, "tensorboard": False, "plot": False, "progress": False}
    fixed, decayed = [], []
    flipes.train(**kw, fitness=mirrored_halves(fixed), out=str(tmp_path / "fixed"))
    rows = flipes.train(**kw, fitness=mirrored_halves(decayed), sigma_decay=0.5, sigma_min=0.02, out=str(tmp_path / "d")).metrics
    expected = [max(0.1 * 0.5**g, 0.02) for g in range(6)]
    assert [r["sigma"] for r in rows] == expected and expected[2:] == [0.025, 0.02, 0.02, 0.02]
    for g, (a, b) in enumerate(zip(decayed, fixed, strict=True)):
        torch.testing.assert_close(a, b * (expected[g] / 0.1), rtol=1e-9, atol=0)
    again = flipes.train(**kw, fitness=mirrored_halves([]), sigma=SigmaDecay(0.1, 0.5, 0.02), out=str(tmp_path / "object"))
    assert (again.config.sigma, again.config.sigma_decay, again.config.sigma_min) == (0.1, 0.5, 0.02)
    assert [r["params_sha256"] for r in again.metrics] == [r["params_sha256"] for r in rows]


def test_a_run_on_a_sigma_schedule_resumes_bit_for_bit_and_refuses_another_schedule(tmp_path: Path) -> None:
    """4 generations on --sigma-decay 0.7 --sigma-min 0.03, then a resume to 7, log the σ and parameters (hash per
    generation) of 7 in one go, the floor reached on the way; a resume with another decay or floor is refused."""
    kw = {**FAST_KW, "hidden": [4], "eval_every": 100, "sigma_decay": 0.7, "sigma_min": 0.03}
    full = flipes.train(**kw, generations=7, out=str(tmp_path / "full"))
    flipes.train(**kw, generations=4, out=str(tmp_path / "part"))
    for changed in ({"sigma_decay": 0.8}, {"sigma_min": 0.02}):
        option = "--" + next(iter(changed)).replace("_", "-")
        with pytest.raises(flipes.UsageError, match=rf"--resume: the run was trained with other options \({option}: saved "):
            flipes.train(**{**kw, **changed}, generations=7, resume=str(tmp_path / "part"))
    flipes.train(**kw, generations=7, resume=str(tmp_path / "part"))
    rows = metrics(tmp_path / "part")
    assert [r["params_sha256"] for r in rows] == [r["params_sha256"] for r in full.metrics]
    assert [r["sigma"] for r in rows] == [r["sigma"] for r in full.metrics] == [max(0.1 * 0.7**g, 0.03) for g in range(7)]
    assert rows[-1]["sigma"] == 0.03 < rows[3]["sigma"]


class StepSettings(Callback):
    """Records each generation's step settings of the optimizer's first group (those its tell stepped at)."""

    def __init__(self, then: Callable[[int, torch.optim.Optimizer], None] | None = None) -> None:
        self.rows: list[dict[str, float]] = []
        self.then = then

    def on_generation(self, state: TrainState, row: dict[str, Any]) -> None:
        group = state.es.optimizer.param_groups[0]
        self.rows.append({k: float(group[k]) for k in ("lr", "max_speed") if k in group})
        if self.then is not None:
            self.then(row["generation"], state.es.optimizer)


def test_an_lr_decay_steps_generation_g_at_lr_times_decay_to_the_g_floored_at_lr_min(tmp_path: Path) -> None:
    """--lr-decay 0.5 --lr-min 0.01 from lr 0.05: generation g steps at max(0.05·0.5^g, 0.01), logged as the rows' lr,
    and the parameters are bit for bit those of a fixed-lr run whose callback sets that lr for the next generation;
    ClipUp (--algo pgpe) scales its step and its max speed alike, ARS's SGD its lr·σ, by the same factor."""
    kw = {**FAST_KW, "popsize": 16, "hidden": [4], "eval_every": 100, "generations": 6}
    lrs = [max(0.05 * 0.5**g, 0.01) for g in range(6)]
    factors = [lr / 0.05 for lr in lrs]
    seen = StepSettings()
    rows = flipes.train(**kw, lr_decay=0.5, lr_min=0.01, callbacks=[seen], out=str(tmp_path / "decayed")).metrics
    assert [r["lr"] for r in rows] == lrs and lrs[2:] == [0.0125, 0.01, 0.01, 0.01]
    assert [s["lr"] for s in seen.rows] == [0.05 * f for f in factors]

    def by_hand(gen: int, optimizer: torch.optim.Optimizer) -> None:
        optimizer.param_groups[0]["lr"] = 0.05 * (max(0.05 * 0.5 ** (gen + 1), 0.01) / 0.05)

    hand = flipes.train(**kw, callbacks=[StepSettings(by_hand)], out=str(tmp_path / "by-hand")).metrics
    assert [r["params_sha256"] for r in hand] == [r["params_sha256"] for r in rows] and "lr" not in hand[0]
    for algo, settings in (("pgpe", ("lr", "max_speed")), ("ars", ("lr",))):
        first, decayed = StepSettings(), StepSettings()
        flipes.train(**kw, algo=algo, callbacks=[first], out=str(tmp_path / f"{algo}-fixed"))
        run = flipes.train(**kw, algo=algo, lr_decay=0.5, lr_min=0.01, callbacks=[decayed], out=str(tmp_path / algo))
        lr, base = run.config.lr, first.rows[0]  # ars's preset lr is 0.02
        assert set(base) == set(settings) and all(row == base for row in first.rows)
        assert decayed.rows == [{k: base[k] * (max(lr * 0.5**g, 0.01) / lr) for k in settings} for g in range(6)]


def test_a_run_on_an_lr_schedule_resumes_bit_for_bit_and_refuses_another_schedule(tmp_path: Path) -> None:
    """3 generations of --algo pgpe on --lr-decay 0.6 --lr-min 0.02, then a resume to 6, log the lr and parameters of 6
    in one go (ClipUp's first step and speed ride in the checkpoint); a resume with another decay or floor is refused."""
    kw = {**FAST_KW, "popsize": 16, "hidden": [4], "eval_every": 100, "algo": "pgpe", "lr_decay": 0.6, "lr_min": 0.02}
    full = flipes.train(**kw, generations=6, out=str(tmp_path / "full"))
    flipes.train(**kw, generations=3, out=str(tmp_path / "part"))
    for changed in ({"lr_decay": 0.7}, {"lr_min": 0.01}):
        option = "--" + next(iter(changed)).replace("_", "-")
        with pytest.raises(flipes.UsageError, match=rf"--resume: the run was trained with other options \({option}: saved "):
            flipes.train(**{**kw, **changed}, generations=6, resume=str(tmp_path / "part"))
    flipes.train(**kw, generations=6, resume=str(tmp_path / "part"))
    rows = metrics(tmp_path / "part")
    assert [(r["lr"], r["params_sha256"]) for r in rows] == [(r["lr"], r["params_sha256"]) for r in full.metrics]
    assert [r["lr"] for r in rows] == [max(0.05 * 0.6**g, 0.02) for g in range(6)] and rows[-1]["lr"] == 0.02


def test_scale_steps_sets_each_step_setting_from_its_first_and_an_lr_tensor_in_place() -> None:
    """flipes.search.scale_steps(optimizer, f) sets each group's lr and max_speed to f times the group's first value
    (kept as initial_lr, initial_max_speed), not times the last one; an lr held as a tensor (which a capturable
    optimizer reads where it is) keeps its identity and takes the value in place."""
    from flipes.search import scale_steps

    weight, bias = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    lr = torch.tensor(0.5)
    sgd = torch.optim.SGD([{"params": [weight], "lr": lr}, {"params": [bias], "lr": 0.25}])
    clipup = flipes.optim.ClipUp([weight], lr=0.5, momentum=0.9, max_speed=1.0)
    for factor in (0.5, 0.25):
        scale_steps(sgd, factor)
        scale_steps(clipup, factor)
    first, second = sgd.param_groups
    assert first["lr"] is lr and lr.item() == 0.125 and first["initial_lr"] == 0.5
    assert (second["lr"], second["initial_lr"]) == (0.0625, 0.25)
    assert (clipup.param_groups[0]["lr"], clipup.param_groups[0]["max_speed"]) == (0.125, 0.25)
    assert clipup.param_groups[0]["initial_max_speed"] == 1.0


def test_a_callback_setting_lr_under_an_lr_decay_is_overridden_and_told_once(tmp_path: Path) -> None:
    """Under --lr-decay, a callback that sets lr every generation changes no step: the parameters are bit for bit
    those of the run without it, as the schedule sets each group's lr before every step; one warning says so, naming
    initial_lr as what moves the schedule, and a callback setting initial_lr moves it without a word. The run without
    the callback warns of nothing."""
    kw = {**FAST_KW, "popsize": 16, "hidden": [4], "eval_every": 100, "generations": 4, "lr_decay": 0.5}

    def halve(gen: int, optimizer: torch.optim.Optimizer) -> None:
        optimizer.param_groups[0]["lr"] /= 2

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = flipes.train(**kw, out=str(tmp_path / "plain")).metrics
        assert [str(w.message) for w in caught] == []
        set_lr = flipes.train(**kw, callbacks=[StepSettings(halve)], out=str(tmp_path / "set")).metrics
    assert [r["params_sha256"] for r in set_lr] == [r["params_sha256"] for r in plain]
    assert [str(w.message) for w in caught] == [
        "flipes.train: the optimizer's lr was changed after generation 0 (by a callback?), and --lr-decay sets each "
        "param group's lr (and max_speed) before every step from its first value: the change is overridden; set the "
        "group's initial_lr to move the schedule, or drop --lr-decay and schedule lr in the callback"
    ]
    assert caught[0].filename == __file__

    def rebase(gen: int, optimizer: torch.optim.Optimizer) -> None:
        optimizer.param_groups[0]["initial_lr"] = 0.01

    seen = StepSettings(rebase)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flipes.train(**kw, callbacks=[seen], out=str(tmp_path / "rebased"))
    assert [row["lr"] for row in seen.rows] == [0.05, 0.01 * 0.5, 0.01 * 0.25, 0.01 * 0.125] and caught == []


def test_an_lr_decay_is_refused_for_an_optimizer_with_no_lr_to_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--lr-decay scales each param group's lr (or ClipUp's max_speed): an --optimizer of one's own with a group of
    neither (a step size under another name) is refused naming the groups, before any generation, where it stepped
    at its first size while the rows' lr decayed; the same optimizer without a decay trains."""
    (tmp_path / "own_rules.py").write_text(
        "import torch\n\n"
        "class NoLr(torch.optim.Optimizer):\n"
        "    def __init__(self, params):\n"
        "        super().__init__(params, {'step_size': 0.01})\n\n"
        "    def step(self, closure=None):\n"
        "        pass\n\n"
        "def no_lr(params):\n"
        "    return NoLr(params)\n\n"
        "def half(params):\n"
        "    return NoLr([{'params': params[:1], 'lr': 0.05}, {'params': params[1:]}])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    kw = {**FAST_KW, "hidden": [4], "eval_every": 100, "generations": 2}
    for name, where in (("no_lr", "its param groups"), ("half", "param group(s) 1")):
        with pytest.raises(flipes.UsageError) as error:
            flipes.train(**kw, optimizer=f"own_rules:{name}", lr_decay=0.5, out=str(tmp_path / name))
        assert str(error.value) == (
            f"--lr-decay: 0.5 scales each param group's lr, and --optimizer own_rules:{name} builds NoLr with no lr in "
            f"{where}; keep its step size in each group's lr, or drop --lr-decay and schedule the step in a callback"
        )
        assert not (tmp_path / name / "metrics.jsonl").exists()
    assert len(flipes.train(**kw, optimizer="own_rules:no_lr", out=str(tmp_path / "fixed")).metrics) == 2


def test_a_sigma_function_is_refused_naming_the_decay_options(tmp_path: Path) -> None:
    """flipes.train(sigma=fn), given as a keyword or in a TrainConfig, is one UsageError naming sigma_decay and
    sigma_min (and FlipES for other schedules); a SigmaDecay with sigma_decay or sigma_min beside it, given as a
    keyword or in a TrainConfig with the SigmaDecay, is refused too."""
    from flipes.search import SigmaDecay

    for given in ({"sigma": lambda g: 0.1}, {"config": TrainConfig(sigma=lambda g: 0.1)}):  # type: ignore[arg-type]
        with pytest.raises(
            flipes.UsageError, match=r"^sigma: is a function \(.*<lambda>\).*; pass sigma_decay=d and sigma_min=m"
        ):
            flipes.train(**FAST_KW, **given, out=str(tmp_path / "run"))
    in_config = TrainConfig(sigma=SigmaDecay(0.1, 0.9))  # type: ignore[arg-type]
    only_min = {"config": in_config, "sigma_decay": 1.0, "sigma_min": 0.01}
    for given in ({"sigma": SigmaDecay(0.1, 0.9)}, {"config": in_config}, only_min):
        with pytest.raises(flipes.UsageError, match=r"^sigma: a SigmaDecay with sigma_(decay|min) beside it; give the schedule"):
            flipes.train(**FAST_KW, **{"sigma_decay": 0.5, **given}, out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_resume_into_another_directory_starts_it_with_the_saved_counters(tmp_path: Path) -> None:
    """Resumed into a new --out with no generation left to run, the new directory's checkpoint is the
    saved state, its env-step count included (a resume of it would otherwise count from 0)."""
    flipes.train(**FAST_KW, generations=2, out=str(tmp_path / "a"))
    flipes.train(**FAST_KW, generations=2, resume=str(tmp_path / "a"), out=str(tmp_path / "b"))
    saved, copy = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert copy["es"]["generation"] == 2 and copy["timesteps"] == saved["timesteps"] > 0


def test_a_shifted_fitness_is_logged_beside_the_populations_plain_return(tmp_path: Path) -> None:
    """With reward_shift s on Pendulum (every episode 200 steps, 2 per member), each row's return_mean is the
    population's mean unshifted return: fitness_mean + 200·s; without a shift the row has no such column."""
    kw = {**FAST_KW, "env": "flipes/Pendulum-v1", "generations": 2, "episodes": 2}
    rows = flipes.train(**kw, reward_shift=1.5, out=str(tmp_path / "shifted")).metrics
    for row in rows:
        assert row["return_mean"] == pytest.approx(row["fitness_mean"] + 200 * 1.5, abs=1e-9)
    assert all("return_mean" not in row for row in flipes.train(**kw, out=str(tmp_path / "plain")).metrics)


def test_a_callback_class_or_another_object_is_refused_before_training(tmp_path: Path) -> None:
    """``callbacks=[Stop]`` (the class) is a UsageError naming ``Stop()``, an object that is no Callback one naming
    the base class, one callback (or its class, or a number) not in a list one saying to pass a list, all before anything
    is written (not a TypeError at the first hook, nor Python's "object is not iterable")."""

    class Stop(Callback):
        pass

    with pytest.raises(flipes.UsageError, match=r"callbacks: Stop is a class; pass an instance, callbacks=\[Stop\(\)\]"):
        flipes.train(**FAST_KW, generations=1, out=str(tmp_path / "a"), callbacks=[Stop])
    with pytest.raises(flipes.UsageError, match=r"callbacks: dict is not a Callback; subclass flipes.callbacks.Callback"):
        flipes.train(**FAST_KW, generations=1, out=str(tmp_path / "a"), callbacks=[{}])
    with pytest.raises(
        flipes.UsageError, match=r"^callbacks: is a Stop, not a list of callbacks; pass a list, callbacks=\[callback\]$"
    ):
        flipes.train(**FAST_KW, generations=1, out=str(tmp_path / "a"), callbacks=Stop())  # one, given bare
    with pytest.raises(flipes.UsageError, match=r"^callbacks: is the class Stop, not a list of callbacks; .*=\[Stop\(\)\]$"):
        flipes.train(**FAST_KW, generations=1, out=str(tmp_path / "a"), callbacks=Stop)
    with pytest.raises(flipes.UsageError, match=r"^callbacks: is an int, not a list"):
        flipes.train(**FAST_KW, generations=1, out=str(tmp_path / "a"), callbacks=3)
    assert not (tmp_path / "a").exists()


def test_a_callback_hook_of_another_signature_is_refused_before_training(tmp_path: Path) -> None:
    """A callback whose hooks take other arguments than flipes passes (Keras' ``on_generation(self, row)``,
    ``on_train_end(self, state)``, a ``load_state_dict(self)``) is a UsageError naming the hook, how flipes calls it and
    the definition to write, before anything is written; hooks with defaults or ``*args`` beyond those are taken. A
    method named as another library's hook (Keras' ``on_epoch_end``, ``on_train_begin``), which flipes would never
    call, is refused likewise (also one a base class of one's own defines), naming flipes' hook for that point."""

    class RowOnly(Callback):
        def on_generation(self, row):
            return None

    class EndWithoutReason(Callback):
        def on_train_end(self, state):
            pass

    class Loose(Callback):
        def on_generation(self, state, row, *rest, verbose=False):
            return None

        def on_train_end(self, *args):
            pass

    fix = r"callbacks: RowOnly.on_generation takes other arguments \(.*\); flipes calls on_generation\(state, row\); "
    with pytest.raises(flipes.UsageError, match=fix + r"define it as def on_generation\(self, state, row\)$"):
        flipes.train(**FAST_KW, generations=1, out=str(tmp_path / "a"), callbacks=[RowOnly()])
    with pytest.raises(flipes.UsageError, match=r"EndWithoutReason.on_train_end .* on_train_end\(state, reason\)"):
        flipes.train(**FAST_KW, generations=1, out=str(tmp_path / "a"), callbacks=[Loose(), EndWithoutReason()])
    assert not (tmp_path / "a").exists()
    assert len(flipes.train(**FAST_KW, generations=1, out=str(tmp_path / "b"), callbacks=[Loose()]).metrics) == 1

    class KerasStop(Callback):  # Keras' names: never called by flipes.train, so the stop would never come
        def on_epoch_end(self, state, row):
            return True

    class Begin(Loose):
        def on_train_begin(self, state):
            pass

    with pytest.raises(flipes.UsageError) as e:
        flipes.train(**FAST_KW, generations=1, out=str(tmp_path / "c"), callbacks=[KerasStop()])
    assert str(e.value) == (
        "callbacks: KerasStop.on_epoch_end is no hook of flipes.train, which would never call it; define it as def "
        "on_generation(self, state, row) (flipes' hooks: on_train_start(state), on_generation(state, row) after each "
        "generation, on_train_end(state, reason))"
    )
    with pytest.raises(
        flipes.UsageError, match=r"^callbacks: Begin.on_train_begin is no hook .* def on_train_start\(self, state\)"
    ):
        flipes.train(**FAST_KW, generations=1, out=str(tmp_path / "c"), callbacks=[Begin()])

    class Inherits(KerasStop):  # the method defined in a base class of one's own
        pass

    with pytest.raises(flipes.UsageError, match=r"^callbacks: Inherits.on_epoch_end is no hook of flipes.train"):
        flipes.train(**FAST_KW, generations=1, out=str(tmp_path / "c"), callbacks=[Inherits()])
    assert not (tmp_path / "c").exists()


def test_a_config_that_is_no_train_config_is_refused_in_one_line(tmp_path: Path) -> None:
    """``flipes.train(config)`` given something other than a TrainConfig (a dict of options, a file name, the
    ``...`` of a sketch copied as written) is a UsageError naming what it got and how to pass options, before
    anything is written (not an AttributeError from inside ``train``)."""
    fix = r", not a flipes.TrainConfig; pass options as keywords, flipes.train\(env=\.\.\., popsize=\.\.\.\), or a flipes.Train"
    for given, what in [({"env": "flipes/CartPole-v1"}, "a dict"), ("run.toml", "a str"), (..., r"Ellipsis \(\.\.\.\)")]:
        with pytest.raises(flipes.UsageError, match=f"^config: is {what}{fix}"):
            flipes.train(given, generations=1, out=str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()


def test_a_comm_that_is_no_flipes_communicator_is_refused_naming_the_fix(tmp_path: Path) -> None:
    """``flipes.train(comm=...)`` given an mpi4py communicator (``MPI.COMM_WORLD``, which lacks local_size and the
    tensor collectives) or any other object is a TypeError naming what it lacks and the fix (wrap it in
    flipes.dist.MPIComm; flipes.dist.world()), before anything is written; not an AttributeError from building the
    env. A string is still the --comm option, and a flipes communicator trains."""

    mpi = r"an mpi4py communicator \(no local_rank, local_size, bytes_sent\); wrap it: flipes.dist.MPIComm\(comm\)$"
    for comm, named in ((Mpi4pyLike(), mpi), (3, r"an int \(no rank, size, local_rank\); pass flipes.dist.world\(\)")):
        with pytest.raises(TypeError, match=rf"^flipes.train\(comm=\.\.\.\) takes a flipes.dist communicator, got {named}"):
            flipes.train(**FAST_KW, generations=1, out=str(tmp_path / "a"), comm=comm)
    assert not (tmp_path / "a").exists()
    assert flipes.train(**FAST_KW, generations=1, out=str(tmp_path / "b"), comm=flipes.dist.SerialComm()).metrics


def test_an_env_class_or_object_is_refused_with_how_to_register_it(tmp_path: Path) -> None:
    """``env=`` (or a TrainConfig's env) given a vector env class, a vector env or a factory instead of an id is a
    UsageError saying how to register it under an id of one's own (or roll it out with RolloutFitness), before
    anything is written."""
    fix = r"not an env id; register it in a module of yours, gymnasium.register\('mine/Name-v0', .*RolloutFitness"
    env = make_vector_env("flipes/CartPole-v1", 2)
    for given, what in [
        (type(env), f"the class {type(env).__name__}"),
        (env, f"a {type(env).__name__}"),
        (lambda: 0, "a function"),
    ]:
        with pytest.raises(flipes.UsageError, match=f"^env: is {what}, {fix}"):
            flipes.train(**{**FAST_KW, "env": given}, generations=1, out=str(tmp_path / "a"))
        with pytest.raises(flipes.UsageError, match=f"^env: is {what}, {fix}"):  # in a TrainConfig
            flipes.train(
                TrainConfig(env=given, generations=1, out=str(tmp_path / "a"), progress=False, tensorboard=False, plot=False)
            )
    assert not (tmp_path / "a").exists()


def test_a_resume_into_another_directory_takes_the_runs_history_along(tmp_path: Path) -> None:
    """Resumed into a new --out, a run keeps its history there: metrics.jsonl holds the earlier rows, then the new
    ones (those of one run trained in one directory), and best.pt is the earlier run's best, so `flipes evaluate
    --checkpoint best` works on the new directory; resumed from a run's previous.pt, the rows stop at its
    generation and a best.pt evaluated after it stays behind."""
    kw = {**FAST_KW, "popsize": 16, "eval_episodes": 5, "seed": 3, "eval_every": 1, "checkpoint_every": 1}
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    flipes.train(**kw, generations=4, out=str(a))
    full = flipes.train(**kw, generations=6, out=str(tmp_path / "full"))
    flipes.train(**kw, generations=4, resume=str(a), out=str(b))  # nothing left to train: only the copy
    assert metrics(b) == metrics(a) and (b / "best.pt").read_bytes() == (a / "best.pt").read_bytes()
    flipes.train(**kw, generations=6, resume=str(b))
    assert [r["params_sha256"] for r in metrics(b)] == [r["params_sha256"] for r in full.metrics]
    assert load_checkpoint(b / "best.pt")["best"] == max(r["eval_return"] for r in full.metrics)
    assert flipes.load_policy(b, checkpoint="best") is not None

    d = tmp_path / "d"  # 3 generations: previous.pt (generation 2) is worse than the best.pt of generation 2's evaluation
    flipes.train(**kw, generations=3, out=str(d))
    previous = load_checkpoint(d / "previous.pt")
    assert previous["es"]["generation"] == 2 and previous["best"] < load_checkpoint(d / "best.pt")["best"]  # seed 3
    flipes.train(**kw, generations=2, resume=str(d / "previous.pt"), out=str(c))
    assert metrics(c) == metrics(d)[:2] and not (c / "best.pt").exists()


def test_a_run_saved_before_newer_options_existed_resumes_with_their_defaults(tmp_path: Path) -> None:
    """A checkpoint and config.json without the options added since (reward_shift, mirrored, policy, shaping,
    weight_decay, sigma_decay, sigma_min, action_noise, lr_decay, lr_min; noise_rank under its old name rank) resume
    as runs of their defaults: the resumed rows equal an uninterrupted run's, bit for bit."""
    kw = {**FAST_KW, "hidden": [4]}
    whole = flipes.train(**kw, generations=3, out=str(tmp_path / "whole"))
    flipes.train(**kw, generations=2, out=str(tmp_path / "old"))
    newer = ("reward_shift", "mirrored", "policy", "shaping", "weight_decay", "noise_rank", "sigma_decay", "sigma_min",
             "action_noise", "lr_decay", "lr_min")  # fmt: skip
    for path in (tmp_path / "old" / "checkpoint.pt", tmp_path / "old" / "previous.pt"):
        state = load_checkpoint(path)
        state["config"] = {k: v for k, v in state["config"].items() if k not in newer} | {"rank": None}
        save_checkpoint(state, path, keep_previous=False)
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    (tmp_path / "old" / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in newer}))
    rest = flipes.train(resume=str(tmp_path / "old"), generations=3, progress=False)
    assert [r["params_sha256"] for r in metrics(tmp_path / "old")] == [r["params_sha256"] for r in whole.metrics]
    assert (rest.config.shaping, rest.config.weight_decay, rest.config.policy, rest.config.noise_rank) == ("auto", 0.0, "mlp", 0)
    assert (rest.config.sigma_decay, rest.config.sigma_min, rest.config.action_noise) == (1.0, 0.0, 0.0)
    assert (rest.config.lr_decay, rest.config.lr_min) == (1.0, 0.0)
    state = load_checkpoint(tmp_path / "old")  # an option every run has, missing: a damaged file, said so
    state["config"].pop("env")
    save_checkpoint(state, tmp_path / "old" / "checkpoint.pt")
    with pytest.raises(flipes.UsageError, match=r"--resume: .*'s config lacks env; resume a checkpoint flipes train wrote"):
        flipes.train(resume=str(tmp_path / "old" / "checkpoint.pt"), env="flipes/CartPole-v1", generations=4, progress=False)


def test_resume_refuses_other_options_and_broken_checkpoints(tmp_path: Path) -> None:
    """A resume with other training options, or from a broken checkpoint, is a UsageError naming
    the difference or the previous checkpoint; rows past the checkpoint resumed are dropped."""
    run = tmp_path / "run"
    flipes.train(**SHORT_KW, generations=5, checkpoint_every=2, out=str(run))
    with pytest.raises(flipes.UsageError, match=r"--resume: .*--sigma: saved 0.1, now 0.3"):
        flipes.train(**SHORT_KW, generations=6, sigma=0.3, resume=str(run))
    flipes.train(**SHORT_KW, generations=6, resume=str(run / "previous.pt"))  # back to generation 4
    assert [r["generation"] for r in metrics(run)] == list(range(6))  # rows past the checkpoint dropped, not duplicated
    (run / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(flipes.UsageError, match=r"--resume: .*is truncated or not a checkpoint.*previous.pt"):
        flipes.train(**SHORT_KW, generations=8, resume=str(run))
    again = flipes.train(**SHORT_KW, generations=8, out=str(tmp_path / "again"), resume=str(run / "previous.pt"))
    assert again.metrics[0]["generation"] == 5  # previous.pt: the checkpoint the last resume replaced


def test_a_resume_in_another_default_dtype_is_refused_and_resumes_bit_for_bit_in_the_runs_own(tmp_path: Path) -> None:
    """A run begun under ``torch.set_default_dtype(torch.float64)`` (a notebook's setting) resumed in a process
    building in float32 is a UsageError naming both dtypes and set_default_dtype, where the load would cast the
    checkpoint and go on with other numbers; resumed under float64 again, its rows' parameter hashes are those of a
    float64 run never stopped."""
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        whole = flipes.train(**FAST_KW, generations=3, out=str(tmp_path / "whole"))
        flipes.train(**FAST_KW, generations=2, out=str(tmp_path / "run"))
        torch.set_default_dtype(torch.float32)
        with pytest.raises(flipes.UsageError, match=r"--resume: .* holds the model in torch\.float64 \(.*\), the model "
                           r"built now is torch\.float32; .*torch\.set_default_dtype\(torch\.float64\)"):  # fmt: skip
            flipes.train(**FAST_KW, generations=3, resume=str(tmp_path / "run"))
        torch.set_default_dtype(torch.float64)
        flipes.train(**FAST_KW, generations=3, resume=str(tmp_path / "run"))
    finally:
        torch.set_default_dtype(default)
    assert [r["params_sha256"] for r in metrics(tmp_path / "run")] == [r["params_sha256"] for r in whole.metrics]


@pytest.mark.filterwarnings("ignore:sigma_lr > 0 with groups=1")  # the refused resume builds its FlipES first
def test_resume_refuses_another_search_rule_and_leaves_the_run_resumable(tmp_path: Path) -> None:
    """--algo, --sigma-lr, --max-speed and --ars-top change the optimizer or the step, so a resume with
    another value is refused like --sigma (Adam's saved state does not fit ClipUp or SGD), and so is one with
    another value of each other option that fixes the run (the env, population, noise, model and fitness
    options of RESUME_KEYS); a refused resume leaves the run's config.json untouched (another algo written there
    would break every later resume) and the plain resume continues it."""
    run = tmp_path / "run"
    kw = {**FAST_KW, "hidden": [4], "eval_every": 100}
    flipes.train(**kw, generations=1, out=str(run))
    config = (run / "config.json").read_text()
    others = ({"env": "flipes/CartPole-v1"}, {"popsize": 16}, {"groups": 2}, {"mirrored": False}, {"noise_rank": 1},
              {"seed": 1}, {"lr": 0.5}, {"hidden": [5]}, {"policy": "gru"}, {"episodes": 2}, {"reward_shift": 1.0})  # fmt: skip
    rules = ({"algo": "pgpe"}, {"algo": "ars"}, {"sigma_lr": 0.2}, {"max_speed": 0.5}, {"ars_top": 2}, {"sigma_decay": 0.9})
    for changed in (*rules, *others):
        option = "--" + next(iter(changed)).replace("_", "-")
        with pytest.raises(flipes.UsageError, match=rf"--resume: the run was trained with other options \({option}: "):
            flipes.train(**{**kw, **changed}, generations=2, resume=str(run))
        assert (run / "config.json").read_text() == config, changed
    assert [r["generation"] for r in flipes.train(**kw, generations=2, resume=str(run)).metrics] == [1]


def test_the_center_is_evaluated_in_eval_mode_and_each_modules_mode_is_set_back(tmp_path: Path) -> None:
    """The evaluation that picks best.pt and meets --target sees the model in eval mode, as load_policy
    returns it (dropout off: two forwards agree); the fitness runs in the model's own mode, and after
    each evaluation every module has its mode back (one the user put in eval mode stays there)."""
    seen = {"fitness": set(), "evaluate": set(), "agree": set()}

    def make_model(env):
        model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1), torch.nn.Dropout(0.5))
        model[3].eval()  # the user's own choice for one module
        return model

    def fitness(model, pop):
        seen["fitness"].add((model.training, model[1].training, model[3].training))
        return -model(torch.ones(pop.size, 3)).square().sum(1)

    def evaluate(model):
        seen["evaluate"].add(any(m.training for m in model.modules()))
        x = torch.ones(64, 3)
        seen["agree"].add(torch.equal(model(x), model(x)))
        return -model(x[:1]).square().sum().item()

    flipes.train(env="none", model=make_model, fitness=fitness, evaluate=evaluate, popsize=8, generations=4, eval_every=1,
                 out=str(tmp_path), tensorboard=False, plot=False, progress=False)  # fmt: skip
    assert seen == {"fitness": {(True, True, False)}, "evaluate": {False}, "agree": {True}}


def test_dropout_in_training_mode_is_noted_before_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A model with active dropout gets a note naming its dropout modules (they add noise of their own to
    every member's fitness) and the fix, by their names in the model under torch.compile too; the same model
    in eval mode, or with p = 0, trains without it."""

    def fitness(model, pop):
        return -model(torch.ones(pop.size, 3)).square().sum(1)

    def make(p: float, train: bool, compiled: bool = False):
        net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(p), torch.nn.Linear(4, 1)).train(train)
        return lambda env: torch.compile(net, backend="eager") if compiled else net

    kw = dict(env="none", fitness=fitness, popsize=8, generations=1, tensorboard=False, plot=False, eval_every=100)
    for i, args in enumerate(((0.3, True), (0.3, False), (0.0, True), (0.3, True, True))):
        flipes.train(**kw, model=make(*args), out=str(tmp_path / str(i)))
        err = capsys.readouterr().err
        noted = "has dropout in training mode (1): it adds noise of its own to every member's fitness; return model.eval()"
        assert (noted in err) == (i in (0, 3)), err  # torch.compile(net): net's module names


def test_a_batch_norm_without_running_statistics_is_evaluated_by_batch_statistics(tmp_path: Path) -> None:
    """A population leaves running statistics alone, so the evaluation normalizes a BatchNorm whose running
    statistics were never updated by the batch's statistics (training mode) without updating them, where
    eval mode would use the initial ones; one whose statistics were filled before training is evaluated
    in eval mode; afterwards every BatchNorm is as it was."""
    seen = set()
    filled_stats = {}

    def make_model(env):
        filled = torch.nn.BatchNorm1d(4)
        filled(torch.randn(16, 4) * 3 + 1)  # running statistics of its own
        filled_stats.update({k: v.clone() for k, v in filled.state_dict().items()})
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), filled)

    def fitness(model, pop):
        return (
            -model(torch.randn(pop.size * 4, 3, generator=torch.Generator().manual_seed(0))).square().mean(1).view(-1, 4).sum(1)
        )

    def evaluate(model):
        seen.add((model.training, model[1].training, model[2].training))
        return -model(torch.randn(8, 3)).square().mean().item()

    run = flipes.train(env="none", model=make_model, fitness=fitness, evaluate=evaluate, popsize=8, generations=3,
                       eval_every=1, out=str(tmp_path), tensorboard=False, plot=False, progress=False)  # fmt: skip
    assert seen == {(False, True, False)}
    fresh = run.model[1]
    assert fresh.training and fresh.track_running_stats and int(fresh.num_batches_tracked) == 0  # left as it was
    assert torch.equal(fresh.running_mean, torch.zeros(4)) and torch.equal(fresh.running_var, torch.ones(4))
    filled = run.model[2]  # its own statistics, in training mode as it was given: not updated by the populations either
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert filled.training and all(torch.equal(filled.state_dict()[k], filled_stats[k]) for k in buffers)


def test_evaluate_may_return_named_numbers_logged_beside_eval_return(tmp_path: Path) -> None:
    """An ``evaluate`` returning a dict logs every entry in the evaluated rows (metrics.jsonl too), its
    ``eval_return`` deciding best.pt and --target as a plain number does; a dict without eval_return, with
    a key the row already has, or with a value that is not a number is a one-line error naming it."""
    calls = []

    def fitness(model, pop):
        return -(model(torch.ones(pop.size, 3)) - 0.5).square().sum(1)

    def evaluate(model):
        loss = (model(torch.ones(1, 3)) - 0.5).square().sum().item()
        calls.append(loss)
        return {"eval_return": -loss, "loss": loss, "accuracy": np.float32(0.25), "calls": torch.tensor(len(calls))}

    kw = dict(env="none", model=lambda env: torch.nn.Linear(3, 1), fitness=fitness, popsize=8, generations=4, eval_every=1,
              tensorboard=False, plot=False, progress=False)  # fmt: skip
    run = flipes.train(**kw, evaluate=evaluate, out=str(tmp_path / "run"))
    rows = metrics(tmp_path / "run")
    assert [(r["eval_return"], r["loss"], r["accuracy"], r["calls"]) for r in rows] == [
        (-x, x, 0.25, float(i + 1)) for i, x in enumerate(calls)
    ]
    best = max(-x for x in calls)
    assert run.best == best and load_checkpoint(tmp_path / "run" / "best.pt")["best"] == best
    target = rows[1]["eval_return"]  # the same run again, stopped by --target on the dict's eval_return
    first = next(i for i, r in enumerate(rows) if r["eval_return"] >= target)
    solved = flipes.train(**kw, evaluate=evaluate, target=target, out=str(tmp_path / "target"))
    assert solved.reason.startswith("solved") and len(solved.metrics) == first + 1
    for returned, message in (
        ({"loss": 1.0}, r"evaluate: returned a dict without an eval_return \(keys \['loss'\]\)"),
        ({"eval_return": 1.0, "sigma": 2.0}, "evaluate: returned sigma, which the row has already"),
        ({"eval_return": 1.0, "note": "ok"}, "evaluate: returned 'note' as str 'ok'"),
        ({"eval_return": float("nan")}, "evaluate: returned eval_return nan"),
    ):
        with pytest.raises(flipes.UsageError, match=message):
            flipes.train(**kw, evaluate=lambda model, r=returned: r, out=str(tmp_path / "bad"), overwrite=True)


def test_a_resume_given_a_lambda_says_that_it_cannot_check_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Every lambda is recorded under one name, so a resume cannot tell the run's lambda from another:
    it says so (naming the option) where a named function is checked silently; a resume given other code
    in place of a lambda is refused with how such code is matched (module and name alone)."""
    kw = dict(env="none", model=lambda env: torch.nn.Linear(3, 1), popsize=8, tensorboard=False, plot=False, eval_every=100)
    flipes.train(**kw, fitness=lambda model, pop: -model(torch.ones(pop.size, 3)).square().sum(1), generations=1,
                 out=str(tmp_path), progress=False)  # fmt: skip
    capsys.readouterr()
    flipes.train(**kw, fitness=lambda model, pop: model(torch.ones(pop.size, 3)).sum(1), generations=2, resume=str(tmp_path))
    err = capsys.readouterr().err
    assert "resumed with fitness " in err and "model " in err and "one lambda cannot be told from another" in err

    def other_model(env):
        return torch.nn.Linear(3, 1)

    with pytest.raises(flipes.UsageError, match="a lambda, a local function or an object, is known by its module and name"):
        flipes.train(**{**kw, "model": other_model}, fitness=lambda model, pop: model(torch.ones(pop.size, 3)).sum(1),
                     generations=3, resume=str(tmp_path))  # fmt: skip
    named = dict(
        env="none", model=linear_model, fitness=negative_square, popsize=8, tensorboard=False, plot=False, eval_every=100
    )
    flipes.train(**named, generations=1, out=str(tmp_path / "named"), progress=False)
    capsys.readouterr()
    flipes.train(**named, generations=2, resume=str(tmp_path / "named"))
    assert "cannot be told" not in capsys.readouterr().err


def linear_model(env):
    return torch.nn.Linear(3, 1)


def negative_square(model, pop):
    return -model(torch.ones(pop.size, 3)).square().sum(1)


FITNESS_MODULE = """
import torch

def good(model, pop):
    return torch.arange(pop.size, dtype=torch.float32)

def make_model(env):
    return torch.nn.Sequential(torch.nn.Linear(3, 2))

def evaluate(model):
    return 7.0
"""


@MADE_UP_FITNESS
def test_plugged_in_fitness_and_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--fitness and --model plug user functions in; evaluate() beside the fitness gives eval_return."""
    (tmp_path / "user_fitness.py").write_text(FITNESS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = flipes.train(env="none", model="user_fitness:make_model", fitness="user_fitness:good", popsize=8, generations=3,
                          out=str(tmp_path / "ok"), tensorboard=False, plot=False, progress=False)  # fmt: skip
    assert len(result.metrics) == 3 and result.metrics[0]["eval_return"] == 7.0 and result.metrics[0]["timesteps"] == 0
    assert result.metrics == metrics(tmp_path / "ok")


def test_a_user_evaluate_runs_without_autograd_like_the_fitness(tmp_path: Path) -> None:
    """``evaluate=`` is called under ``torch.no_grad()``, as the fitness and the env evaluation are: its
    forward builds no graph, and ``float(loss)`` of it gives no requires_grad warning."""
    grad = {}

    def fitness(model, pop):
        grad["fitness"] = torch.is_grad_enabled()
        return -model(torch.ones(pop.size, 3)).square().sum(1)

    def evaluate(model):
        out = model(torch.ones(1, 3))
        grad["evaluate"], grad["graph"] = torch.is_grad_enabled(), out.grad_fn is not None
        return float(out.sum())

    flipes.train(env="none", model=lambda env: torch.nn.Linear(3, 2), fitness=fitness, evaluate=evaluate, popsize=8,
                 generations=1, out=str(tmp_path), tensorboard=False, plot=False, progress=False)  # fmt: skip
    assert grad == {"fitness": False, "evaluate": False, "graph": False}


QUADRATIC_MODULE = """
import torch

def make_model(env):
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))

def fitness(model, pop):
    return -(model(torch.ones(pop.size, 3)) - 0.5).square().sum(1)

def evaluate(model):
    return -(model(torch.ones(1, 3)) - 0.5).square().sum().item()
"""


def test_python_objects_plug_in_like_their_names_and_resume_needs_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``flipes.train(fitness=fn, model=fn, evaluate=fn)`` with Python objects trains exactly as the same
    functions named module:function (every row's parameter hash and eval_return equal); resuming with
    the objects given again continues bit for bit, and without them is one error that says to give them."""
    (tmp_path / "quadratic.py").write_text(QUADRATIC_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import quadratic

    kw = {"env": "none", "popsize": 8, "tensorboard": False, "plot": False, "progress": False}
    by_name = flipes.train(
        model="quadratic:make_model", fitness="quadratic:fitness", generations=6, out=str(tmp_path / "a"), **kw
    )

    def make_model(env):  # a local function: not importable by its recorded name
        return quadratic.make_model(env)

    objects = dict(model=make_model, fitness=quadratic.fitness, evaluate=quadratic.evaluate)
    first = flipes.train(**objects, generations=3, out=str(tmp_path / "b"), **kw)
    assert first.config.model.endswith("make_model") and "<locals>" in first.config.model
    with pytest.raises(flipes.UsageError, match="give it again"):
        flipes.train(resume=str(tmp_path / "b"), generations=6, progress=False)
    rest = flipes.train(**objects, resume=str(tmp_path / "b"), generations=6, progress=False)
    rows = first.metrics + rest.metrics
    key = [(r["params_sha256"], r.get("eval_return")) for r in by_name.metrics]
    assert [(r["params_sha256"], r.get("eval_return")) for r in rows] == key and key[-1][1] is not None
    assert rest.eval_return == by_name.eval_return == by_name.metrics[-1]["eval_return"]
    policy = flipes.load_policy(tmp_path / "b", model=make_model)
    assert torch.equal(policy[0].weight, rest.model[0].weight)
    named = flipes.train(**objects | {"evaluate": "quadratic:evaluate"}, generations=1, out=str(tmp_path / "c"), **kw)
    assert named.eval_return == by_name.metrics[0]["eval_return"]  # evaluate= by name too


def test_a_fitness_drawing_from_the_global_generators_draws_alike_in_every_run_part_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugged-in fitness that draws its minibatch from torch's, NumPy's and Python's global generators gets draws
    that are a function of (seed, generation) alone, and so does an evaluate() drawing a validation batch: two runs
    of one seed log the same rows (parameters and eval_return) and draws, another seed other draws; evaluated in
    parts (members_per_pass), every part of a generation draws what the whole population drew; 2 + 2 generations
    resumed end on the rows of 4; the caller's generators are as they were."""
    (tmp_path / "global_draws.py").write_text(GLOBAL_DRAWS_FITNESS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import global_draws

    kw = {"env": "none", "model": global_draws.make_model, "fitness": global_draws.fitness, "popsize": 8,
          "evaluate": global_draws.evaluate, "eval_every": 1, "tensorboard": False, "plot": False, "progress": False}  # fmt: skip

    def run(name: str, **options) -> tuple[list[tuple[str, float]], list[tuple]]:
        global_draws.DRAWS.clear()
        result = flipes.train(**kw | options, out=str(tmp_path / name))
        rows = [(r["params_sha256"], r["eval_return"]) for r in result.metrics]
        return rows, [d[:1] + d[2:] for d in global_draws.DRAWS]

    def reseed() -> None:
        torch.manual_seed(123), np.random.seed(123), random.seed(123)

    reseed()
    rows, draws = run("a", generations=4)
    after = (torch.rand(1).item(), np.random.rand(), random.random())
    reseed()
    assert after == (torch.rand(1).item(), np.random.rand(), random.random())  # train() left them as they were
    assert len(draws) == 4 and len({str(d[1:]) for d in draws}) == 4  # a minibatch of its own per generation
    assert run("b", generations=4) == (rows, draws)
    assert run("other-seed", generations=4, seed=1)[1][0] != draws[0]
    _, parts = run("parts", generations=4, members_per_pass=4)
    assert parts == [d for d in draws for _ in range(2)]  # both parts of a generation draw what one pass drew
    first, _ = run("resumed", generations=2)
    rest, later = run("resumed", generations=4, resume=str(tmp_path / "resumed"))
    assert first + rest == rows and later == draws[2:]


@pytest.mark.parametrize(
    "device, available, full",
    [("cuda", True, True), ("cuda", False, False), (None, False, False), ("privateuseone", False, True)],
    ids=["cuda", "no-cuda-device", "cpu-build", "privateuse1"],
)
def test_seeded_global_rngs_draw_what_the_global_seeds_draw_and_put_them_back(
    device: str | None, available: bool, full: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside ``seeded_global_rngs(s)`` torch's, NumPy's and Python's global generators draw exactly what they draw after
    ``torch.manual_seed(s)``, ``np.random.seed(s % 2**32)`` and ``random.seed(s)`` (the reference), whatever accelerator
    torch reports; after it they continue as if it had not run. ``torch.manual_seed`` itself seeds torch where an
    accelerator is available, or is one (a PrivateUse1 backend, which torch names before CUDA) whose availability says
    nothing of CUDA's; else the CPU generator alone is seeded."""
    from flipes.builders import seeded_global_rngs

    if not hasattr(torch, "accelerator"):
        pytest.skip("torch < 2.6 has no torch.accelerator: seeded_global_rngs calls torch.manual_seed")
    if torch.accelerator.is_available():
        pytest.skip("an accelerator is present: fork_rng would fork the reported one's generators")
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: None if device is None else torch.device(device))
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: available)
    custom: list[int] = []  # a PrivateUse1 backend's module, as torch.fork_rng and torch.manual_seed reach it
    backend = types.SimpleNamespace(_is_in_bad_fork=lambda: False, manual_seed_all=custom.append)
    monkeypatch.setattr(torch, torch._C._get_privateuse1_backend_name(), backend, raising=False)
    seed = 2**62 + 12345  # a global_seed is below 2**63

    def draws() -> tuple:
        return torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)]

    torch.manual_seed(seed), np.random.seed(seed % 2**32), random.seed(seed)
    reference = draws()
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    expected_after = draws()
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    seeded, manual_seed = [], torch.manual_seed
    monkeypatch.setattr(torch, "manual_seed", lambda s: seeded.append(s) or manual_seed(s))
    custom.clear()
    with seeded_global_rngs(seed):
        inside = draws()
    assert inside == reference and draws() == expected_after
    assert seeded == ([seed] if full else []) and custom == seeded


class SamplingPolicy(torch.nn.Module):
    """A Gaussian policy of one's own for Pendulum: its actions sampled with torch.randn_like, the global generator."""

    def __init__(self, env: object = None) -> None:
        super().__init__()
        self.mu = torch.nn.Linear(3, 1)
        self.log_std = flipes.nn.Vector(torch.full((1,), -1.0))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        mu = self.mu(obs.float())
        return (mu + self.log_std(mu).exp() * torch.randn_like(mu)).clamp(-2, 2)


def test_a_policy_that_samples_its_actions_trains_and_evaluates_alike_in_every_run_of_a_seed(tmp_path: Path) -> None:
    """flipes.train's own rollouts and evaluation run a policy that samples its actions from torch's global generator
    with that generator seeded by (seed, generation): two runs of one seed log the same parameters and eval_return in
    every row, another seed other ones."""
    kw = {"env": "flipes/Pendulum-v1", "model": SamplingPolicy, "popsize": 8, "generations": 2, "eval_every": 1,
          "eval_episodes": 2, "max_episode_steps": 20, "target": None, "tensorboard": False, "plot": False,
          "progress": False}  # fmt: skip
    rows = [
        [(r["params_sha256"], r["eval_return"]) for r in flipes.train(**kw, seed=seed, out=str(tmp_path / name)).metrics]
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    ]
    assert len(rows[0]) == 2 and rows[1] == rows[0] and rows[2][0] != rows[0][0]


SEARCH_MODULE = """
import torch

def sgd(params):
    return torch.optim.SGD(params, lr=0.02, momentum=0.9)

def top_half(fitness):
    order = fitness.argsort().argsort().to(fitness.dtype)
    return (order >= len(fitness) // 2).to(fitness.dtype) - 0.5
"""


def test_an_optimizer_and_a_shaping_of_ones_own_train_as_by_hand_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``flipes.train(optimizer=, shaping=)`` steps exactly as a FlipES built by hand with the same
    optimizer factory and shaping function (bit-identical parameters after every generation); the same
    functions by module:function name (``--optimizer``, ``--shaping``) train identically; a resume continues
    bit for bit, with the names from the run or the objects given again, and refuses another optimizer;
    flipes' own shaping functions are recorded by their ``--shaping`` names; a torch.optim class is built at ``lr``;
    ``flipes.read_metrics`` gives the rows of both calls."""
    for name, text in (("quadratic", QUADRATIC_MODULE), ("search_rules", SEARCH_MODULE)):
        (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    import quadratic
    import search_rules

    kw = {"env": "none", "popsize": 8, "tensorboard": False, "plot": False, "progress": False, "eval_every": 100}
    objects = dict(
        model=quadratic.make_model, fitness=quadratic.fitness, optimizer=search_rules.sgd, shaping=search_rules.top_half
    )
    run = flipes.train(**objects, generations=6, out=str(tmp_path / "objects"), **kw)
    assert (run.config.optimizer, run.config.shaping) == ("search_rules:sgd", "search_rules:top_half")
    c = run.config
    torch.manual_seed(c.seed)
    model = flipes.flipout(quadratic.make_model(None))
    es = flipes.FlipES(model, popsize=8, sigma=c.sigma, groups=c.groups, optimizer=search_rules.sgd,
                       shaping=search_rules.top_half)  # fmt: skip
    hashes = []
    for _ in range(6):
        es.step(quadratic.fitness)
        hashes.append(flipes.checkpoint.tensors_sha256(model.parameters()))
    assert [r["params_sha256"] for r in run.metrics] == hashes
    assert isinstance(run.es.optimizer, torch.optim.SGD)

    names = {k: f"{v.__module__}:{v.__name__}" for k, v in objects.items()}
    first = flipes.train(**names, generations=3, out=str(tmp_path / "names"), **kw)
    rest = flipes.train(resume=str(tmp_path / "names"), generations=6, progress=False)  # the run's names
    assert [r["params_sha256"] for r in first.metrics + rest.metrics] == hashes
    assert flipes.read_metrics(tmp_path / "names") == first.metrics + rest.metrics  # the run's rows across the resume
    first = flipes.train(**objects, generations=3, out=str(tmp_path / "again"), **kw)
    rest = flipes.train(**objects, resume=str(tmp_path / "again"), generations=6, progress=False)  # the objects again
    assert [r["params_sha256"] for r in first.metrics + rest.metrics] == hashes
    with pytest.raises(flipes.UsageError, match=r"--optimizer: saved 'search_rules:sgd', now 'torch.optim.adam:Adam'"):
        flipes.train(resume=str(tmp_path / "names"), optimizer=torch.optim.Adam, generations=7, progress=False)

    own = flipes.train(**{**objects, "shaping": flipes.shaping.z_score, "optimizer": torch.optim.SGD}, generations=1,
                       out=str(tmp_path / "own"), **kw)  # fmt: skip
    assert own.config.shaping == "z-score" and own.config.optimizer == "torch.optim.sgd:SGD"
    assert own.es.optimizer.defaults["lr"] == own.config.lr
    with pytest.raises(flipes.UsageError, match=r"--shaping: 'zscore' is none of auto, centered-ranks, z-score, raw"):
        flipes.train(**{**objects, "shaping": "zscore"}, generations=1, out=str(tmp_path / "bad"), **kw)
    with pytest.raises(flipes.UsageError, match=r"--optimizer: .* takes other arguments"):
        flipes.train(**{**objects, "optimizer": lambda: None}, generations=1, out=str(tmp_path / "bad"), **kw)


class NoLr(torch.optim.Optimizer):
    """An optimizer of one's own whose parameter groups hold no lr (a fixed rule)."""

    def __init__(self, params: object) -> None:
        super().__init__(params, {"momentum": 0.5})


def test_an_optimizer_function_with_its_own_lr_is_said_to_leave_lr_unused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--optimizer FN`` builds its optimizer with its own settings: where its lr is not ``--lr``, the start-of-run note
    (of a run of flipes.train too) says that ``--lr`` is not used and that a torch.optim class is built at it, naming
    every group's lr, or that it has none; with --lr-decay, that ``--lr`` is the scale of the decay's factor, which
    scales that lr; nothing where they agree or none is given."""
    from flipes.training import own_lr_note

    params = [torch.nn.Parameter(torch.zeros(2))]
    config = TrainConfig(optimizer="search_rules:sgd", lr=0.05)
    assert own_lr_note(config, torch.optim.SGD(params, lr=0.02, momentum=0.9)) == (
        "--optimizer search_rules:sgd builds SGD at lr 0.02, its own: --lr 0.05 is not used (a torch.optim class, such "
        "as torch.optim.sgd:SGD, is built at --lr)"
    )
    assert own_lr_note(config, torch.optim.SGD(params, lr=0.05)) == ""
    assert own_lr_note(TrainConfig(lr=0.05), torch.optim.SGD(params, lr=0.02)) == ""  # --algo ars's own SGD at lr·σ
    groups = [{"params": params}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1}]
    assert "builds SGD at lr 0.02, 0.1, its own: --lr 0.05 is not used" in own_lr_note(config, torch.optim.SGD(groups, lr=0.02))
    assert "builds NoLr with no lr, its own: --lr 0.05 is not used" in own_lr_note(config, NoLr(params))
    assert own_lr_note(config.replace(lr_decay=0.9), torch.optim.SGD(params, lr=0.02)) == (
        "--optimizer search_rules:sgd builds SGD at lr 0.02, its own, which --lr-decay scales by max(lr·d^g, --lr-min)/lr "
        "of --lr 0.05, --lr-min on --lr's scale (a torch.optim class, such as torch.optim.sgd:SGD, is built at --lr)"
    )

    def model(env: object) -> torch.nn.Module:
        return torch.nn.Linear(2, 1)

    def fitness(model: torch.nn.Module, pop: object) -> torch.Tensor:
        return model(torch.ones(pop.size, 2)).sum(1)

    def sgd(params: list) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.02)

    capsys.readouterr()
    kw = {"env": "none", "popsize": 4, "generations": 1, "tensorboard": False, "plot": False, "out": str(tmp_path)}
    flipes.train(model=model, fitness=fitness, optimizer=sgd, lr=0.05, **kw)
    assert "builds SGD at lr 0.02, its own: --lr 0.05 is not used" in capsys.readouterr().err


def test_a_run_started_by_a_script_resumes_from_another_that_imports_its_functions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python quadscript.py`` records its functions as ``__main__[quadscript]:...`` and, resuming the run without
    giving them, finds them (a lookup in the running script, the same in the process that started the run as in
    another); another program that imports that script and gives the same functions continues the run bit for bit
    (recording their importable names), the script, resuming again without giving them, continues it (importing
    quadscript as the name now recorded: a module the script's own process had not imported), and a function of
    another name, or of the same name in another module, is refused. Resumed without them, the error names them as
    that program gives them (``model=quadscript.make_model``)."""
    script = QUADRATIC_MODULE + (
        "\ndef other_model(env):\n    return make_model(env)\n\nif __name__ == '__main__':\n    import flipes, sys\n"
        "    for generations, how in zip(sys.argv[2::2], sys.argv[3::2]):  # (generations, new|resume|wait) pairs\n"
        "        if how == 'wait':  # until a line on stdin: another program goes on with the run meanwhile\n"
        "            print('waiting', flush=True)\n            sys.stdin.readline()\n            continue\n"
        "        given = {'model': make_model, 'fitness': fitness} if how == 'new' else {'resume': sys.argv[1]}\n"
        "        flipes.train(**given, env='none', popsize=8, generations=int(generations), out=sys.argv[1],"
        " progress=False, tensorboard=False, plot=False)\n"
        "    assert 'quadscript' in sys.modules  # the last resume imported it by its recorded name\n"
    )
    (tmp_path / "quadscript.py").write_text(script)
    (tmp_path / "othertask.py").write_text(QUADRATIC_MODULE)
    # one process of the script (each start costs seconds of imports): new, resume, then a resume after this program's
    command = [sys.executable, "quadscript.py", str(tmp_path / "b"), "3", "new", "4", "resume", "-", "wait", "8", "resume"]
    proc = subprocess.Popen(command, cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        while (line := proc.stdout.readline()) not in ("waiting\n", ""):
            pass
        assert line == "waiting\n" and proc.poll() is None, proc.communicate(timeout=60)
        assert json.loads((tmp_path / "b" / "config.json").read_text())["model"] == "__main__[quadscript]:make_model"
        assert len(metrics(tmp_path / "b")) == 4
        monkeypatch.syspath_prepend(str(tmp_path))
        import othertask
        import quadscript

        kw = {"env": "none", "popsize": 8, "tensorboard": False, "plot": False, "progress": False}
        by_name = flipes.train(
            model="quadscript:make_model", fitness="quadscript:fitness", generations=8, out=str(tmp_path / "a"), **kw
        )
        for other, named in ((quadscript.other_model, "quadscript:other_model"), (othertask.make_model, "othertask:make_model")):
            with pytest.raises(flipes.UsageError, match=rf"--model: saved '__main__\[quadscript\]:make_model', now '{named}'"):
                flipes.train(model=other, fitness=quadscript.fitness, resume=str(tmp_path / "b"), generations=6, progress=False)
        # here, quadscript is not the running script: the error names the function to give, as this program imports it
        with pytest.raises(flipes.UsageError, match=r"give it again from Python \(model=quadscript\.make_model of flipes\.train"):
            flipes.train(resume=str(tmp_path / "b"), generations=6, progress=False)
        rest = flipes.train(
            model=quadscript.make_model, fitness=quadscript.fitness, resume=str(tmp_path / "b"), generations=6, progress=False
        )
        assert rest.config.model == "quadscript:make_model" == json.loads((tmp_path / "b" / "config.json").read_text())["model"]
        proc.stdin.write("go\n")  # the script resumes to 8 generations: it names quadscript:... now
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert [r["params_sha256"] for r in metrics(tmp_path / "b")] == [r["params_sha256"] for r in by_name.metrics]


def test_track_best_keeps_the_fittest_member_for_evaluate_and_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--track-best`` keeps the fittest member of all generations in the checkpoint: its fitness is
    the largest fitness_max logged, ``load_policy(checkpoint="best-member")`` loads exactly its state
    dict, and a run without it says how to get one."""
    (tmp_path / "quadratic.py").write_text(QUADRATIC_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    kw = {"env": "none", "model": "quadratic:make_model", "fitness": "quadratic:fitness", "popsize": 8, "generations": 6}
    result = flipes.train(**kw, track_best=True, out=str(tmp_path / "a"), progress=False, tensorboard=False, plot=False)
    best = result.es.best
    assert best.fitness == max(r["fitness_max"] for r in result.metrics)
    running = [max(r["fitness_max"] for r in result.metrics[: i + 1]) for i in range(len(result.metrics))]
    assert [r["best_member_fitness"] for r in metrics(tmp_path / "a")] == running  # logged every generation
    assert metrics(tmp_path / "a")[-1]["best_member_generation"] == best.generation
    assert result.metrics[best.generation]["fitness_max"] == best.fitness
    policy = flipes.load_policy(tmp_path / "a", checkpoint="best-member")
    assert all(torch.equal(v, best.state_dict[k]) for k, v in policy.state_dict().items())
    assert not torch.equal(policy[0].weight, result.model[0].weight)  # a member, not the center
    flipes.train(**kw, out=str(tmp_path / "b"), progress=False, tensorboard=False, plot=False)
    with pytest.raises(flipes.UsageError, match=r"--checkpoint: .* kept no best member; train it with --track-best"):
        flipes.load_policy(tmp_path / "b", checkpoint="best-member")

    def failing(model, pop):
        raise RuntimeError("a fitness being debugged")

    with pytest.raises(RuntimeError, match="being debugged"):  # leaves the starting checkpoint
        flipes.train(
            **{**kw, "fitness": failing}, track_best=True, out=str(tmp_path / "c"), progress=False, tensorboard=False, plot=False
        )
    with pytest.raises(flipes.UsageError, match=r"has no best member yet: no generation was checkpointed; train on"):
        flipes.load_policy(tmp_path / "c", checkpoint="best-member")


def test_objects_without_an_importable_name_say_to_give_them_again(tmp_path: Path) -> None:
    """A module instance, a functools.partial or a bound method given to flipes.train is recorded under a
    name no import loads back, so loading the run without it says to give it again (it does not load
    some other object of that name); a module given as such is the one trained; objects set in a
    TrainConfig are taken like those given to flipes.train."""
    import functools

    class Zeros:
        def fitness(self, model, pop):
            return -model(torch.ones(pop.size, 3)).square().sum(1)

    def fitness(model, pop, scale=1.0):
        return -scale * model(torch.ones(pop.size, 3)).square().sum(1)

    kw = {"env": "none", "popsize": 8, "generations": 2, "progress": False, "tensorboard": False, "plot": False}
    net = torch.nn.Linear(3, 1)
    cases = {"module": dict(model=net, fitness=fitness), "partial": dict(model=lambda env: torch.nn.Linear(3, 1),
             fitness=functools.partial(fitness, scale=2.0)), "method": dict(model=lambda env: torch.nn.Linear(3, 1),
             fitness=Zeros().fitness)}  # fmt: skip
    recorded = {"module": ("model", ":<Linear object>"), "partial": ("fitness", ".fitness<partial>"),
                "method": ("fitness", ":<bound method")}  # fmt: skip
    for name, objects in cases.items():
        result = flipes.train(**kw, **objects, out=str(tmp_path / name))
        key, part = recorded[name]
        assert part in getattr(result.config, key), getattr(result.config, key)
        with pytest.raises(flipes.UsageError, match="give it again"):
            flipes.train(resume=str(tmp_path / name), generations=3, progress=False)
    assert flipes.load_policy(tmp_path / "module", model=torch.nn.Linear(3, 1)).weight.equal(net.weight)  # trained in place
    config = flipes.TrainConfig(env="none", model=lambda env: torch.nn.Linear(3, 1), fitness=fitness, popsize=8, generations=1)
    assert (
        flipes.train(config, out=str(tmp_path / "config"), progress=False, tensorboard=False, plot=False).reason == "generations"
    )


class ArgmaxPolicy(torch.nn.Module):
    """A CartPole policy of the user's own: logits' argmax."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.body(obs).argmax(-1)


@pytest.mark.skipif(torch.__version__ < (2, 4), reason="flipes export needs torch >= 2.4")
def test_loading_a_run_of_a_module_given_as_such_leaves_that_module_alone(tmp_path: Path) -> None:
    """``load_policy(run, model=net)`` and ``export_policy(run, model=net)`` for a run trained with ``model=net`` load
    a copy: ``latest`` and ``best`` are two modules holding their own checkpoint's weights, and ``net`` keeps its
    parameters, their ``requires_grad`` and its training mode, so the same ``net`` resumes the run (export froze it
    in place, and the resume was refused as a model with "no trainable parameter")."""
    torch.manual_seed(0)
    net = ArgmaxPolicy()
    kw = {**FAST_KW, "env": "flipes/CartPole-v1", "eval_every": 1, "checkpoint_every": 1}
    flipes.train(**kw, model=net, generations=4, out=str(tmp_path / "run"))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    latest = flipes.load_policy(tmp_path / "run", model=net)
    best = flipes.load_policy(tmp_path / "run", checkpoint="best", model=net)
    flipes.export_policy(tmp_path / "run", model=net)
    assert latest is not net and best is not net and latest is not best
    for policy, checkpoint in ((latest, "checkpoint.pt"), (best, "best.pt")):
        saved = load_checkpoint(tmp_path / "run" / checkpoint)["es"]["model"]
        assert all(torch.equal(policy.state_dict()[k], v) for k, v in saved.items())
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
    assert flipes.train(resume=str(tmp_path / "run"), generations=5, model=net, progress=False).metrics[-1]["generation"] == 4


def test_loading_a_run_into_a_module_that_cannot_be_copied_loads_it_in_place_with_a_warning(tmp_path: Path) -> None:
    """``load_policy(run, model=net)`` where ``net`` cannot be deep-copied (it holds a lock) warns that the checkpoint
    is loaded into ``net`` itself, and returns ``net`` holding the checkpoint's weights."""
    torch.manual_seed(0)
    net = ArgmaxPolicy()
    flipes.train(**{**FAST_KW, "env": "flipes/CartPole-v1"}, model=net, generations=2, out=str(tmp_path / "run"))
    net.lock = threading.Lock()
    with torch.no_grad():
        next(net.parameters()).zero_()
    with pytest.warns(
        UserWarning, match=r"the module cannot be copied \(TypeError: .*lock.*\); the checkpoint is loaded into it"
    ):
        policy = flipes.load_policy(tmp_path / "run", model=net)
    saved = load_checkpoint(tmp_path / "run")["es"]["model"]
    assert policy is net and all(torch.equal(net.state_dict()[k], v) for k, v in saved.items())


def test_what_callbacks_add_to_rows_is_logged_as_plain_numbers_or_named(tmp_path: Path) -> None:
    """numpy scalars and one-element tensors a callback adds to a row are logged as numbers, also inside lists
    and dicts; a value metrics.jsonl cannot hold is a one-line error naming the entry."""

    class Add(Callback):
        def __init__(self, value) -> None:
            self.value = value

        def on_generation(self, state, row) -> None:
            row["numpy"], row["tensor"], row["other"] = np.float32(0.5), torch.tensor(2.0), self.value

    flipes.train(**FAST_KW, generations=2, out=str(tmp_path / "ok"), callbacks=[Add([np.int64(1), "a", {"t": torch.tensor(3)}])])
    assert [(r["numpy"], r["tensor"], r["other"]) for r in metrics(tmp_path / "ok")] == [(0.5, 2.0, [1, "a", {"t": 3}])] * 2
    with pytest.raises(flipes.UsageError, match=r"callbacks: row\['other'\] is a object"):
        flipes.train(**FAST_KW, generations=2, out=str(tmp_path / "bad"), callbacks=[Add(object())])


def test_plug_ins_with_the_wrong_signature_are_one_line_errors(tmp_path: Path) -> None:
    """A fitness, model or evaluate function that cannot take the arguments flipes passes is refused
    before training, naming it and the signature to use; evaluate= needs a fitness function."""
    model = lambda env: torch.nn.Linear(3, 1)  # noqa: E731
    fitness = lambda model, pop: torch.zeros(pop.size)  # noqa: E731
    kw = {"env": "none", "popsize": 8, "generations": 1, "progress": False, "tensorboard": False, "plot": False}
    cases = [
        (
            dict(model=model, fitness=lambda model, pop, generation: 0),
            r"--fitness: .* takes other arguments .*fitness\(model, pop\)",
        ),
        (dict(model=lambda: None, fitness=fitness), r"--model: .* takes other arguments .*model\(env\)"),
        (dict(model=model, fitness=fitness, evaluate=lambda: 1.0), r"evaluate: .* takes other arguments .*evaluate\(model\)"),
        (dict(model=model, fitness=3), "--fitness: int is neither a function nor module:function"),
        (dict(env="CartPole-v1", evaluate=lambda model: 1.0), "evaluate: is given without a custom fitness"),
    ]
    for i, (given, message) in enumerate(cases):
        with pytest.raises(flipes.UsageError, match=message):
            flipes.train(**{**kw, **given, "out": str(tmp_path / str(i))})


def test_hidden_widths_beside_a_model_of_ones_own_are_refused_not_recorded(tmp_path: Path) -> None:
    """``hidden=`` sizes the policy flipes builds; given beside ``model=`` (which it would not change) it is a UsageError
    naming both, before anything is written, by the command too; the widths a preset sets (ARS's none) are no
    mistake, and the run trains."""
    from flipes.commands import parse_train_config

    kw = {
        "env": "none",
        "model": lambda env: torch.nn.Linear(3, 1),
        "fitness": lambda model, pop: model(torch.ones(pop.size, 3))[:, 0],
    }
    kw |= {"popsize": 8, "generations": 1, "progress": False, "tensorboard": False, "plot": False}
    with pytest.raises(flipes.UsageError, match=r"^--hidden: \[4\] sizes the policy flipes builds .*--model builds the model"):
        flipes.train(**kw, hidden=[4], out=str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()
    config = parse_train_config(["--env", "none", "--model", "m:f", "--fitness", "m:g", "--hidden", "4"])
    with pytest.raises(flipes.UsageError, match=r"^--hidden: \[4\] sizes the policy .*--model builds the model; drop --hidden"):
        flipes.config.validate(config)
    for algo in ("openai-es", "ars"):  # the widths of the preset: [32, 32], and ARS's linear policy []
        assert flipes.train(**kw, algo=algo, out=str(tmp_path / algo)).reason == "generations"


class HallOfFame(Callback):
    """Keeps every generation's fitness_mean, and saves it with the checkpoints (the mean, not fitness_max: with SHORT_KW's
    20-step episodes the max is 20 in every generation, and a resumed run that went elsewhere would keep the same list)."""

    def __init__(self) -> None:
        self.best: list[float] = []

    def on_generation(self, state, row) -> None:
        self.best.append(row["fitness_mean"])

    def state_dict(self) -> dict:
        return {"best": torch.tensor(self.best, dtype=torch.float64)}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"].tolist()


def test_a_callbacks_state_is_saved_with_the_checkpoint_and_given_back_on_resume(tmp_path: Path) -> None:
    """A callback's state_dict() rides in every checkpoint: resumed with the same callbacks, it
    continues as if the run had never stopped; state a checkpoint cannot hold is a one-line error."""
    whole = HallOfFame()
    flipes.train(**SHORT_KW, generations=5, out=str(tmp_path / "whole"), callbacks=[whole])
    first, rest = HallOfFame(), HallOfFame()
    flipes.train(**SHORT_KW, generations=3, checkpoint_every=1, out=str(tmp_path / "split"), callbacks=[first])
    flipes.train(resume=str(tmp_path / "split"), generations=5, progress=False, callbacks=[rest])
    assert len(whole.best) == 5 and rest.best == whole.best
    assert all(r["fitness_min"] <= r["fitness_mean"] <= r["fitness_max"] for r in metrics(tmp_path / "whole"))

    class Unsaveable(Callback):
        def state_dict(self) -> dict:
            return {"array": np.zeros(3)}

    with pytest.raises(flipes.UsageError, match=r"callbacks: 0:.*Unsaveable\.state_dict\(\) holds a ndarray"):
        flipes.train(**SHORT_KW, generations=2, out=str(tmp_path / "bad"), callbacks=[Unsaveable()])


def test_a_callbacks_numpy_float_is_refused_as_state_a_checkpoint_cannot_hold() -> None:
    """np.float64 is a Python float subclass, yet torch.load(weights_only=True) refuses it: a callback's state holding
    one is the callbacks' one-line UsageError naming where it is and float(x), as np.int64 and arrays are."""
    from flipes.train_state import callback_states

    class NumpyNumber(Callback):
        def state_dict(self) -> dict:
            return {"best": [1.0, np.float64(0.5)]}

    with pytest.raises(flipes.UsageError, match=r"0:.*NumpyNumber\.state_dict\(\) holds a float64, .*float\(x\) for a numpy"):
        callback_states([NumpyNumber()])


def test_a_branch_starts_with_the_callbacks_states_of_the_checkpoint_it_continues(tmp_path: Path) -> None:
    """A resume into another --out (a branch) writes the resumed checkpoint's callback states into its first
    checkpoint: a branch with nothing left to train (or one killed before its next checkpoint) resumed with the
    same callbacks continues their state as the run never stopped, and the states reach the next checkpoint."""
    whole = HallOfFame()
    flipes.train(**SHORT_KW, generations=4, out=str(tmp_path / "whole"), callbacks=[whole])
    flipes.train(**SHORT_KW, generations=2, out=str(tmp_path / "a"), callbacks=[HallOfFame()])
    flipes.train(resume=str(tmp_path / "a"), out=str(tmp_path / "b"), generations=2, progress=False, callbacks=[HallOfFame()])
    saved = [load_checkpoint(tmp_path / run)["callbacks"]["0:HallOfFame"]["best"].tolist() for run in ("a", "b")]
    assert saved[1] == saved[0] == whole.best[:2]
    rest = HallOfFame()
    flipes.train(resume=str(tmp_path / "b"), generations=4, progress=False, callbacks=[rest])
    assert len(whole.best) == 4 and rest.best == whole.best


def test_a_resume_without_a_saved_callback_says_its_state_is_dropped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A resume whose callbacks do not take a state the checkpoint holds (the callback left out, or at another
    position) prints a note naming that state's key and the given callbacks' keys (with progress off, a UserWarning
    at the caller's line says it); a resume with the same callbacks prints none and continues the state."""
    flipes.train(**FAST_KW, generations=2, checkpoint_every=1, out=str(tmp_path / "run"), callbacks=[HallOfFame()])
    capsys.readouterr()

    class Before(Callback):
        pass

    for given, keys in (([], "none given"), ([Before(), HallOfFame()], f"0:{Before.__qualname__}, 1:HallOfFame")):
        flipes.train(resume=str(tmp_path / "run"), generations=2, callbacks=given)
        err = capsys.readouterr().err
        assert f"callback(s) 0:HallOfFame (position:class), which no callback of this call takes ({keys})" in err, err
    again = HallOfFame()
    flipes.train(resume=str(tmp_path / "run"), generations=3, callbacks=[again])
    assert "no callback of this call takes" not in capsys.readouterr().err and len(again.best) == 3
    with pytest.warns(UserWarning, match="no callback of this call takes") as seen:  # quiet: a warning, at this line
        flipes.train(resume=str(tmp_path / "run"), generations=4, progress=False)
    (dropped,) = [w for w in seen if "no callback of this call takes" in str(w.message)]
    assert dropped.filename == __file__ and "no callback" not in capsys.readouterr().err


def test_rows_a_callback_adds_reach_metrics_jsonl(tmp_path: Path) -> None:
    """What a user callback adds to a row in on_generation is in every row of metrics.jsonl."""

    class AddMetric(Callback):
        def on_generation(self, state, row) -> None:
            row["twice_the_generation"] = 2 * row["generation"]

    flipes.train(**FAST_KW, generations=3, out=str(tmp_path), callbacks=[AddMetric()])
    assert [row["twice_the_generation"] for row in metrics(tmp_path)] == [0, 2, 4]


def test_a_run_ended_by_max_seconds_evaluates_its_last_generation(tmp_path: Path) -> None:
    """--max-seconds ends a run with an evaluation of its last generation even between the
    --eval-every ones, so ``result.eval_return`` is that generation's; ``best`` is the run's best."""
    flipes.train(**FAST_KW, generations=2, eval_every=1000, out=str(tmp_path))
    result = flipes.train(resume=str(tmp_path), generations=50, max_seconds=1e-6, progress=False)  # at once: at generation 2
    assert result.reason.startswith("stopped after") and [r["generation"] for r in result.metrics] == [2]
    rows = metrics(tmp_path)
    assert result.eval_return == rows[-1]["eval_return"] and result.best == max(r["eval_return"] for r in rows)


def test_max_seconds_counts_the_wall_time_of_this_call_not_of_the_run(tmp_path: Path) -> None:
    """--max-seconds is a per-invocation limit (a cluster job's, with --resume auto): a run that has already
    trained for longer than it is resumed for all its generations, where counting the run's earlier seconds
    stopped every requeue after one generation; the rows' seconds still count over resumes."""
    flipes.train(**FAST_KW, generations=2, eval_every=1000, out=str(tmp_path))
    state = load_checkpoint(tmp_path)
    state["seconds"] = 1e6  # as if the earlier jobs had trained for 11 days
    save_checkpoint(state, tmp_path / "checkpoint.pt")
    result = flipes.train(resume=str(tmp_path), generations=4, max_seconds=600.0, progress=False)
    assert result.reason == "generations" and [r["generation"] for r in result.metrics] == [2, 3]
    assert all(r["seconds"] > 1e6 for r in result.metrics)


@MADE_UP_FITNESS
def test_best_checkpoint_of_a_run_without_evaluation_names_latest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that never evaluated (a custom fitness without evaluate()) has no best.pt: asking for it
    says so and names --checkpoint latest."""
    (tmp_path / "arange.py").write_text("import torch\ndef fitness(model, pop):\n    return torch.arange(pop.size) * 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    flipes.train(env="none", model=lambda env: torch.nn.Linear(3, 1), fitness="arange:fitness", popsize=8, generations=2,
                 out=str(tmp_path / "run"), progress=False, tensorboard=False, plot=False)  # fmt: skip
    with pytest.raises(flipes.UsageError, match=r"no best\.pt.*use --checkpoint latest"):
        flipes.load_policy(tmp_path / "run", checkpoint="best", model=lambda env: torch.nn.Linear(3, 1))


def test_a_target_that_no_evaluation_can_reach_is_refused_naming_evaluate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --target number beside a fitness without evaluate() (which logs no eval_return, with --env none or an env, so it
    could never stop the run) is a one-line error naming the fix, before anything is written: an evaluate() beside the
    module's fitness, or evaluate= beside a fitness given as a Python object; with an evaluate the same target stops the run,
    and a resume that drops the evaluate is refused unless it drops the target too. An env's preset target beside
    such a fitness, not asked for, is no error."""
    code = "import torch\ndef fitness(model, pop):\n    return model(torch.ones(pop.size, 3))[:, 0]\n"
    (tmp_path / "target_fitness.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    import target_fitness

    kw = dict(
        env="none",
        model=lambda env: torch.nn.Linear(3, 1),
        popsize=8,
        generations=3,
        progress=False,
        tensorboard=False,
        plot=False,
    )
    fix = {
        "target_fitness:fitness": "define evaluate(model) -> float in the fitness's module",
        target_fitness.fitness: "pass flipes.train(evaluate=...)",
    }
    for fitness, named in fix.items():
        with pytest.raises(flipes.UsageError) as e:
            flipes.train(**kw, fitness=fitness, target=0.5, out=str(tmp_path / "none"))
        assert str(e.value) == (
            f"--target: 0.5 with --fitness target_fitness:fitness and no evaluate(): the run logs no eval_return, so the target "
            f"would never stop it; {named} to give eval_return, or use --target none"
        )
    assert not (tmp_path / "none").exists()
    # with an env the fitness replaces its rollouts and their evaluation: a target asked for is refused alike
    pendulum = {**kw, "env": "flipes/Pendulum-v1", "generations": 1}
    for env, target in (("flipes/CartPole-v1", 400.0), ("flipes/Pendulum-v1", -150.0)):
        with pytest.raises(flipes.UsageError, match=rf"^--target: {target:g} with --fitness target_fitness:fitness and no eval"):
            flipes.train(**{**pendulum, "env": env}, fitness=target_fitness.fitness, target=target, out=str(tmp_path / "env"))
    assert not (tmp_path / "env").exists()
    # an env's preset target (Pendulum's row sets one) beside such a fitness was not asked for: that run trains
    assert flipes.train(**pendulum, fitness=target_fitness.fitness, out=str(tmp_path / "preset")).config.target == -200.0
    run = flipes.train(**kw, fitness=target_fitness.fitness, evaluate=lambda model: 1.0, target=0.5, out=str(tmp_path / "run"))
    assert run.reason.startswith("solved") and len(run.metrics) == 1
    with pytest.raises(flipes.UsageError, match=r"^--target: 0.5 with --fitness target_fitness:fitness and no evaluate"):
        flipes.train(resume=str(tmp_path / "run"), generations=2, model=kw["model"], progress=False)
    resumed = flipes.train(resume=str(tmp_path / "run"), generations=2, model=kw["model"], target=None, progress=False)
    assert [r["generation"] for r in resumed.metrics] == [1]


def test_user_code_exceptions_keep_their_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception raised inside a user's fitness propagates unchanged, not as a UsageError."""
    (tmp_path / "raising.py").write_text(
        "import torch\ndef make_model(env):\n    return torch.nn.Linear(3, 2)\n"
        "def fitness(model, pop):\n    raise KeyError('inside user code')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(KeyError, match="inside user code"):
        flipes.train(env="none", model="raising:make_model", fitness="raising:fitness", popsize=8, generations=2,
                     out=str(tmp_path / "run"), tensorboard=False, plot=False, progress=False)  # fmt: skip


def wandb_history_steps(record: Path) -> list[int]:
    """The steps of the history rows in a W&B run file (a LevelDB-style log of protobuf records: a 7-byte file header,
    then in 32 KiB blocks records of a 7-byte header, crc32, length and type 1 full, 2 first, 3 middle or 4 last)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, chunk, steps = record.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        chunk, pos = chunk + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(chunk)
            chunk = b""
            if rec.WhichOneof("record_type") == "history":
                steps.append(rec.history.step.num)
    return steps


def written_history_steps(run: Path, expected: list[list[int]]) -> list[list[int]]:
    """The history steps of each of ``run``'s W&B run files once they are ``expected``, or as they are after 30 s: W&B's
    service process writes the files, on a loaded machine the last records a moment after ``finish()`` returns."""
    deadline = time.monotonic() + 30
    while True:
        try:
            steps = [wandb_history_steps(r) for r in sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))]
        except Exception:  # a record still being written
            steps = []
        if steps == expected or time.monotonic() > deadline:
            return steps
        time.sleep(0.1)


def test_a_resumed_run_logs_into_its_own_wandb_run_at_the_steps_it_goes_on_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --wandb in offline mode (no account, no network) the run's W&B files are written under the run directory,
    and its record file holds every generation's fitness_mean and the config (W&B's service process writes that file:
    on a loaded machine its last records land a moment after ``finish()`` returns). --resume DIR with --wandb continues
    the W&B run DIR recorded (its id in DIR/wandb/flipes-run-id), logging the generations after the resumed one at
    their own steps; a branch (--resume A --out B) gets a W&B run of its own."""
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run, branch = tmp_path / "run", tmp_path / "branch"
    result = flipes.train(**FAST_KW, generations=2, out=str(run), wandb=True, wandb_project="flipes-test")
    (record,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    wanted = [b"fitness_mean", b"flipes-test", b"CartPole-v1"] + [json.dumps(r["fitness_mean"]).encode() for r in result.metrics]
    deadline = time.monotonic() + 30
    while not all(w in (data := record.read_bytes()) for w in wanted) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(result.metrics) == 2 and b"fitness_mean" in data and b"flipes-test" in data
    for row in result.metrics:
        assert json.dumps(row["fitness_mean"]).encode() in data, row["fitness_mean"]
    assert b"CartPole-v1" in data  # the run's config
    flipes.train(resume=str(run), generations=4)  # the run's own options: --wandb among them
    run_id = (run / "wandb/flipes-run-id").read_text()
    records = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert [r.stem for r in records] == [f"run-{run_id}"] * 2  # its directory: offline-run-<time>-<id>[-1]
    assert written_history_steps(run, [[0, 1], [2, 3]]) == [[0, 1], [2, 3]]
    flipes.train(resume=str(run), out=str(branch), generations=5)
    assert (branch / "wandb/flipes-run-id").read_text() not in ("", run_id)


def test_an_offline_wandb_run_resumed_behind_its_last_row_logs_no_step_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Offline (where W&B knows no step of a run it resumes), a resume in place from a checkpoint behind the W&B run's
    last row (previous.pt here; after a crash, the checkpoint before the rows logged since) logs only the steps after
    those it has, as online W&B would take them, and says so in a note; before, steps 2 and 3 went into the W&B run
    twice. A torn last line of the list of steps (a crash mid-write) is not taken for a step."""
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=4, checkpoint_every=2, out=str(run), wandb=True, wandb_project="flipes-test")
    assert load_checkpoint(run / "previous.pt")["es"]["generation"] == 2
    with open(run / "wandb/flipes-run-steps", "a") as f:
        f.write("9")  # torn: no newline
    capsys.readouterr()
    flipes.train(resume=str(run / "previous.pt"), out=str(run), generations=6)
    assert "generations 2 to 3 are not logged to it again" in capsys.readouterr().err
    assert written_history_steps(run, [[0, 1, 2, 3], [4, 5]]) == [[0, 1, 2, 3], [4, 5]]


def wait_for_rows(run: Path, count: int, timeout: float = 60) -> Path:
    """Wait until ``run``'s metrics.jsonl holds ``count`` rows (at most ``timeout`` s); its path."""
    rows, deadline = run / "metrics.jsonl", time.time() + timeout
    while time.time() < deadline and (not rows.exists() or len(rows.read_text().splitlines()) < count):
        time.sleep(0.05)
    return rows


SLOW_FITNESS = """
import time, torch

def make_model(env):
    return torch.nn.Linear(3, 1)

def fitness(model, pop):
    time.sleep(0.5)
    return -model(torch.ones(pop.size, 3)).square().sum(1)
"""

# scripts/train.py's ``sys.exit(main(["train", *argv]))`` for each case in turn, in one process (each start costs seconds
# of imports): a case's stdout and stderr go, at the file-descriptor level, to CASE.out and CASE.err, what main returned
# to CASE.code; the process exits with the last case's status
TRAINS_IN_TURN = """
import json, os, sys
from flipes.commands import main

for name, argv in json.loads(sys.argv[1]):
    sys.stdout.flush(), sys.stderr.flush()
    kept = os.dup(1), os.dup(2)
    with open(name + ".out", "w") as out, open(name + ".err", "w") as err:
        os.dup2(out.fileno(), 1), os.dup2(err.fileno(), 2)
        try:
            code = main(["train", *argv])
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(kept[0], 1), os.dup2(kept[1], 2)
    with open(name + ".code", "w") as f:
        f.write(str(code))
sys.exit(code)
"""

SIGNAL_ARGS = ["--env", "none", "--popsize", "8", "--tensorboard", "false", "--plot", "false", "--generations", "1000"]


@pytest.fixture(scope="module")
def signalled_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process trains four runs in turn (TRAINS_IN_TURN), each signalled as a user or a batch system would: "term",
    FAST CartPole given one SIGTERM after 3 rows; "ctrl_c", SLOW_FITNESS given two SIGINTs 0.05 s apart after a row;
    "at_once", SLOW_FITNESS given two SIGTERMs 0.05 s apart after a row; last "endless", ENDLESS_FITNESS (generation 2
    never ends) given two SIGTERMs more than REPEAT_SECONDS apart (sigterm_twice: the process, on its last case, must
    still run between them). The directory holding each case's run directory (CASE/), CASE.out, CASE.err, CASE.code
    and ``exit``, the process's status. Read it, never write to it."""

    def make(out: Path) -> None:
        (out / "slow.py").write_text(SLOW_FITNESS)
        (out / "endless.py").write_text(ENDLESS_FITNESS)
        (out / "driver").mkdir()  # not the working directory: slow.py is found there as scripts/train.py finds it
        (out / "driver" / "in_turn.py").write_text(TRAINS_IN_TURN)
        slow = ["--model", "slow:make_model", "--fitness", "slow:fitness", *SIGNAL_ARGS]
        cases = [
            ("term", [*FAST, "--generations", "100000", "--checkpoint-every", "1000"]),
            ("ctrl_c", slow),
            ("at_once", [*slow, "--progress", "false", "--checkpoint-every", "1000"]),
            ("endless", ["--model", "endless:make_model", "--fitness", "endless:fitness", *SIGNAL_ARGS, "--progress", "false",
                         "--checkpoint-every", "1"]),
        ]  # fmt: skip
        cases = [(name, [*argv, "--out", str(out / name)]) for name, argv in cases]
        paths = [str(ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]  # "" would add cwd
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        command = [sys.executable, str(out / "driver" / "in_turn.py"), json.dumps(cases)]
        proc = subprocess.Popen(command, cwd=out, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        err = ""
        try:
            wait_for_rows(out / "term", 3)
            proc.send_signal(signal.SIGTERM)
            for name, sig in (("ctrl_c", signal.SIGINT), ("at_once", signal.SIGTERM)):
                wait_for_rows(out / name, 1)  # its case runs: the ones before it have returned
                proc.send_signal(sig)
                time.sleep(0.05)
                proc.send_signal(sig)
            err = sigterm_twice(proc, out / "endless" / "metrics.jsonl", 2)  # the process's stderr, once it has ended
        finally:
            if proc.poll() is None:  # a wait above failed; sigterm_twice ends the process where it fails
                proc.kill()
                proc.communicate()
        (out / "exit").write_text(f"{proc.returncode}\n{err}")

    return once_per_session(tmp_path_factory, "signalled_runs", make)


def signalled(runs: Path, name: str) -> tuple[int, str, str]:
    """What main returned for case ``name`` of ``signalled_runs``, and its stdout and stderr."""
    code = runs / f"{name}.code"
    assert code.exists(), (runs / "exit").read_text()[-3000:]  # main raised, or the case never ended
    return int(code.read_text()), (runs / f"{name}.out").read_text(), (runs / f"{name}.err").read_text()


def test_sigterm_during_training_leaves_a_loadable_checkpoint(signalled_runs: Path) -> None:
    """scripts/train.py stopped by SIGTERM exits 130 with every logged generation in the checkpoint."""
    code, _, err = signalled(signalled_runs, "term")
    assert code == 130, err
    rows = (signalled_runs / "term" / "metrics.jsonl").read_text().splitlines()
    state = load_checkpoint(signalled_runs / "term")
    assert state["es"]["generation"] == len(rows) >= 3  # every generation logged is in it


def test_a_second_ctrl_c_stops_training_at_once_in_one_line_keeping_the_last_checkpoint(
    signalled_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two Ctrl-Cs within one generation: the first asks for a stop after it, the second stops at once.
    The command exits 130 with one line that says so (no traceback), and the run resumes from its last
    checkpoint (``flipes train --resume``, what scripts/train.py runs, here in-process on a copy: it reads only the
    disk)."""
    code, _, err = signalled(signalled_runs, "ctrl_c")
    assert code == 130, err
    assert "Traceback" not in err and "flipes: interrupted: train stopped at once" in err, err
    run = tmp_path / "run"
    shutil.copytree(signalled_runs / "ctrl_c", run)
    generation = load_checkpoint(run)["es"]["generation"]
    monkeypatch.syspath_prepend(str(signalled_runs))  # slow.py, as from the directory the command ran in
    assert main(["train", "--resume", str(run), "--generations", str(generation + 1)]) == 0
    assert load_checkpoint(run)["es"]["generation"] == generation + 1


def test_a_second_sigterm_ends_a_generation_that_never_ends_in_one_line_keeping_the_last_checkpoint(
    signalled_runs: Path,
) -> None:
    """A generation that never ends, then SIGTERM: the first says at once that training stops after the generation and
    that another signal stops at once; a second SIGTERM (later than REPEAT_SECONDS) ends the command with status 130
    (the process's own exit status) and one line naming it and the last checkpoint with its last generation, which
    loads (before, it sat forever)."""
    code, _, err = signalled(signalled_runs, "endless")
    run = signalled_runs / "endless"
    lines = err.strip().splitlines()
    first = "flipes: SIGTERM: stopping after the generation under way, with a checkpoint; another Ctrl-C or SIGTERM stops "
    assert code == 130 and (signalled_runs / "exit").read_text().startswith("130\n") and len(lines) == 2, err
    assert lines[0] == first + "at once, keeping the last checkpoint (after generation 1)", err
    assert lines[1] == "flipes: interrupted: train stopped at once by a second SIGTERM; the last checkpoint " \
                       f"(after generation 1) stays: --resume {run} continues from it", err  # fmt: skip
    assert load_checkpoint(run)["es"]["generation"] == 2


def test_sigterm_twice_at_once_as_a_batch_system_and_its_launcher_send_it_stops_after_the_generation(
    signalled_runs: Path,
) -> None:
    """Two SIGTERMs a moment apart (Slurm signals every process of a job, and mpiexec or srun forwards its own copy to
    the ranks) are one request: training stops after the generation under way, with a checkpoint of every generation
    logged, status 130, and the outcome line."""
    code, out, err = signalled(signalled_runs, "at_once")
    assert code == 130 and "interrupted;" in out and "stopped at once" not in err, (out, err)
    rows = (signalled_runs / "at_once" / "metrics.jsonl").read_text().splitlines()
    assert load_checkpoint(signalled_runs / "at_once")["es"]["generation"] == len(rows) >= 1


def test_evaluate_and_plot_commands_on_a_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """scripts/evaluate.py rebuilds the policy, prints its return over 5 episodes and renders a GIF of at most 6
    frames at CartPole's 600x400; scripts/plot.py (``flipes plot``) writes a PNG for two runs (a smoke test: what is
    drawn is read back in test_plot_draws_each_runs_curves_against_the_chosen_x). Both run here as their ``__main__``
    blocks do, ``script(COMMAND)``: flipes.commands.main of the command line (test_cli's warnings test runs
    scripts/train.py's ``script("train")`` from a real command line)."""
    for name in ("a", "b"):
        flipes.train(**{**FAST_KW, "plot": True}, generations=2, out=str(tmp_path / name))
    for name in ("evaluate", "plot"):
        assert main_block(ROOT / "scripts" / f"{name}.py") == f"script('{name}')"
    gif = tmp_path / "policy.gif"
    assert main(["evaluate", str(tmp_path / "a"), "--episodes", "5", "--render", str(gif), "--max-frames", "6"]) == 0
    out = capsys.readouterr().out
    assert "center policy return" in out and "over 5 episodes" in out and "(6 frames)" in out
    from PIL import Image

    with Image.open(gif) as im:  # CartPole's episodes last 8 steps at least: cut at 6 frames (PIL merges equal ones)
        assert 1 < im.n_frames <= 6 and im.size == (600, 400)
    png = tmp_path / "curves.png"
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--x", "timesteps", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert (tmp_path / "a" / "curves.png").exists()  # training's own


def test_resume_takes_the_saved_options(tmp_path: Path) -> None:
    """``flipes train --resume DIR --generations N`` continues a run trained with other than the
    default options without retyping them (its config.json sits under the flags), and so does
    ``flipes.train(resume=DIR)``."""
    run = tmp_path / "run"
    flipes.train(**{**FAST_KW, "popsize": 12}, sigma=0.2, hidden=[8], mirrored=False, generations=2, out=str(run))
    config = parse_train_config(["--resume", str(run), "--generations", "3"])
    assert (config.popsize, config.sigma, config.hidden, config.mirrored, config.generations) == (12, 0.2, [8], False, 3)
    assert [r["generation"] for r in flipes.train(config).metrics] == [2]
    assert [r["generation"] for r in flipes.train(resume=str(run), generations=4).metrics] == [3]
    assert [r["generation"] for r in metrics(run)] == [0, 1, 2, 3]
    assert parse_train_config(["--resume", str(run)]).progress  # how a run printed is not one of its options
    fewer = flipes.train(resume=str(run), generations=2)  # a total, not "2 more": nothing to train, said so
    assert fewer.metrics == [] and fewer.reason.startswith("nothing trained: the run is at generation 4, past --generations 2")
    assert parse_train_config(["--resume", str(run)]).generations == 4  # the run's own budget stays on disk
    assert load_checkpoint(run)["config"]["generations"] == 4


def test_algo_presets_set_their_options_and_flags_override_them(tmp_path: Path) -> None:
    """--algo pgpe sets sigma_lr 0.2 and 8 groups on top of the env's row (popsize kept), which an explicit groups
    overrides; --algo ars sets a linear policy and σ 0.03, and --lr overrides its lr; pgpe's FlipES uses ClipUp with
    max_speed = lr·√D/2 (D = 10 parameters), half of that as its step size and momentum 0.9, or max_speed 0.3 and step
    size 0.15 when max_speed is given; ars's shaping keeps the --ars-top best directions (0: all of them)."""
    pgpe = TrainConfig.for_env("flipes/CartPole-v1", algo="pgpe")
    assert (pgpe.sigma_lr, pgpe.groups, pgpe.popsize) == (0.2, 8, preset_for("CartPole-v1")["popsize"])
    assert TrainConfig.for_env("flipes/CartPole-v1", algo="pgpe", groups=4).groups == 4
    ars = parse_train_config(["--algo", "ars", "--lr", "0.3"])
    assert (ars.hidden, ars.lr, ars.sigma) == ([], 0.3, 0.03)
    es = flipes.builders.build_es(pgpe, flipes.flipout(torch.nn.Linear(4, 2)), flipes.dist.SerialComm())
    assert isinstance(es.optimizer, flipes.optim.ClipUp) and es.sigma_lr == 0.2
    group = es.optimizer.param_groups[0]  # max speed lr·√D/2 for D = 10 parameters, step size half of it
    assert group["max_speed"] == pytest.approx(pgpe.lr * math.sqrt(10) / 2) and group["lr"] == group["max_speed"] / 2
    assert group["momentum"] == 0.9
    fast = flipes.builders.build_es(pgpe.replace(max_speed=0.3), flipes.flipout(torch.nn.Linear(4, 2)), flipes.dist.SerialComm())
    assert (fast.optimizer.param_groups[0]["max_speed"], fast.optimizer.param_groups[0]["lr"]) == (0.3, 0.15)
    f = torch.randn(ars.popsize, generator=torch.Generator().manual_seed(0))
    for top, expect in ((2, flipes.shaping.ars(f, top=2)), (0, flipes.shaping.ars(f))):
        es = flipes.builders.build_es(ars.replace(ars_top=top), flipes.flipout(torch.nn.Linear(4, 2)), flipes.dist.SerialComm())
        assert torch.equal(es.shaping(f), expect), top
    assert not torch.equal(flipes.shaping.ars(f, top=2), flipes.shaping.ars(f))


def test_the_default_shaping_of_openai_es_and_pgpe_is_centered_ranks() -> None:
    """With --shaping auto (the default), openai-es and pgpe weight members by their centered ranks: rank/(N - 1) - 1/2
    of 16 distinct fitness values, computed by argsort; the same for a monotone transform of the fitness (exp), as
    Salimans et al. (2017) rank them. A z-score or the raw fitness would change under it."""
    from reference import centered_ranks_distinct

    f = torch.randn(16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for algo in ("openai-es", "pgpe"):
        config = parse_train_config(["--algo", algo, "--popsize", "16", "--groups", "8"])
        assert config.shaping == "auto"
        es = flipes.builders.build_es(config, flipes.flipout(torch.nn.Linear(4, 2)), flipes.dist.SerialComm())
        for fitness in (f, f.exp()):
            torch.testing.assert_close(es.shaping(fitness.clone()), centered_ranks_distinct(f), rtol=0, atol=1e-15)


@NEEDS_TOMLLIB
def test_an_env_row_names_its_search_and_an_explicit_algo_picks_another(tmp_path: Path) -> None:
    """Hopper's row (and Walker2d's) trains with ARS at the row's own ARS options (over --algo ars's, which other envs get) unless
    --algo names another search, by flag, config file or the resumed run: openai-es then gets the row's shared
    options (its OpenAI-ES row, a 64-64 MLP) and pgpe those with PGPE's layer; the notes say which row set what."""
    from flipes.commands import preset_lines

    ars = {"popsize": 16, "ars_top": 4, "lr": 0.01, "sigma": 0.025, "hidden": [], "reward_shift": 1.0, "eval_every": 10}
    for config in (
        parse_train_config(["--env", "Hopper-v5"]),
        parse_train_config(["--env", "envpool:Hopper-v5", "--algo", "ars"]),
        TrainConfig.for_env("Hopper-v5"),
        TrainConfig.for_env("Hopper-v5", algo="ars"),
    ):
        assert config.algo == "ars" and {k: getattr(config, k) for k in ars} == ars
    es = {"popsize": 128, "sigma": 0.02, "lr": 0.02, "hidden": [64, 64], "ars_top": 0, "reward_shift": 1.0, "eval_every": 2}
    (tmp_path / "es.toml").write_text('env = "Hopper-v5"\nalgo = "openai-es"\n')
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"env": "Hopper-v5", "algo": "openai-es"}))
    for config in (
        parse_train_config(["--env", "Hopper-v5", "--algo", "openai-es"]),
        parse_train_config(["--env", "Hopper-v5", "--algo=openai-es"]),
        parse_train_config(["--config", str(tmp_path / "es.toml")]),
        parse_train_config(["--resume", str(tmp_path / "run")]),
        TrainConfig.for_env("Hopper-v5", algo="openai-es"),
    ):
        assert config.algo == "openai-es" and {k: getattr(config, k) for k in es} == es
    w = parse_train_config(["--env", "Walker2d-v5"])
    assert (w.algo, w.popsize, w.ars_top, w.lr, w.sigma, w.hidden) == ("ars", 32, 8, 0.025, 0.02, [])
    assert TrainConfig.for_env("Walker2d-v5", algo="openai-es").hidden == [64, 64]
    pgpe = parse_train_config(["--env", "Hopper-v5", "--algo", "pgpe"])
    assert (pgpe.popsize, pgpe.sigma, pgpe.sigma_lr, pgpe.groups, pgpe.hidden) == (128, 0.02, 0.2, 8, [64, 64])
    cheetah = parse_train_config(["--env", "HalfCheetah-v5", "--algo", "ars"])
    assert (cheetah.popsize, cheetah.lr, cheetah.sigma, cheetah.hidden, cheetah.ars_top) == (128, 0.02, 0.03, [], 0)
    assert parse_train_config(["--env", "Hopper-v5", "--sigma", "0.05"]).sigma == 0.05  # flags still win
    env, algo = preset_lines(parse_train_config(["--env", "Hopper-v5", "--popsize", "32"]))
    assert env == "per-env defaults of Hopper-v5 (flipes.rl.presets): sigma 0.025, lr 0.01, episodes 1, eval_every 10, " \
        "eval_episodes 5, generations 2000, reward_shift 1.0, algo ars, ars_top 4; flags and --config override them"  # fmt: skip
    assert algo == "--algo ars sets (flipes.rl.presets): hidden [] (a linear policy); flags and --config override them"


def test_shaping_and_weight_decay_reach_the_es_and_a_resume_must_keep_them(tmp_path: Path) -> None:
    """--shaping picks the shaping function (auto: the search's own; refused with ARS's own weighting),
    --weight-decay is FlipES's: a generation of flipes.train steps exactly as FlipES.tell with the
    same shaped fitness and decay, and resuming with another value of either is refused (a rule of flipes' own is
    the same rule by its name or its module:function)."""
    from flipes.config import SHAPING_NAMES
    from flipes.search import SHAPINGS

    assert set(SHAPINGS) == set(SHAPING_NAMES)  # every choice has a rule
    serial = flipes.dist.SerialComm()
    config = TrainConfig.for_env("flipes/CartPole-v1", shaping="z-score", weight_decay=0.5)
    es = flipes.builders.build_es(config, flipes.flipout(torch.nn.Linear(4, 2)), serial)
    assert es.shaping is flipes.shaping.z_score and es.weight_decay == 0.5
    auto = flipes.builders.build_es(config.replace(shaping="auto", algo="pgpe"), flipes.flipout(torch.nn.Linear(4, 2)), serial)
    assert auto.shaping is flipes.shaping.centered_ranks and auto.weight_decay == 0.5
    with pytest.raises(flipes.UsageError, match="--shaping: raw with --algo ars"):
        flipes.train(algo="ars", shaping="raw", **FAST_KW, out=str(tmp_path / "ars"))
    with pytest.raises(flipes.UsageError, match="--weight-decay: must be a finite number >= 0"):
        flipes.train(weight_decay=-1.0, **FAST_KW, out=str(tmp_path / "neg"))
    kw = {**FAST_KW, "shaping": "raw", "weight_decay": 0.5, "generations": 1, "hidden": [3], "eval_every": 100}
    run = flipes.train(**kw, out=str(tmp_path / "run"))
    c = run.config  # the same initial weights and rollout fitness, by hand
    torch.manual_seed(c.seed)
    policy = flipes.flipout(flipes.builders.build_model(c, make_vector_env(c.env, 1)))
    hand = flipes.FlipES(policy, popsize=c.popsize, sigma=c.sigma, lr=c.lr, groups=c.groups, shaping=flipes.shaping.raw,
                         weight_decay=0.5)  # fmt: skip
    envs = make_vector_env(c.env, c.popsize * c.episodes)
    hand.step(flipes.rl.RolloutFitness(envs, c.episodes, seed=c.seed, obs_norm=policy.obs_norm))
    assert all(torch.equal(p, q) for p, q in zip(policy.parameters(), run.model.parameters(), strict=True))
    for changed in ({"weight_decay": 0.1}, {"shaping": "z-score"}):
        with pytest.raises(flipes.UsageError, match="the run was trained with other options"):
            flipes.train(**{**kw, **changed, "generations": 2}, resume=str(tmp_path / "run"))
    auto = {**kw, "shaping": "auto", "weight_decay": 0.0}  # auto is centered ranks here: the same rule by name
    flipes.train(**auto, out=str(tmp_path / "auto"))
    named = flipes.train(**{**auto, "shaping": "centered-ranks", "generations": 2}, resume=str(tmp_path / "auto"))
    assert [r["generation"] for r in named.metrics] == [1]
    spelt = flipes.train(**{**auto, "shaping": "flipes.shaping:centered_ranks", "generations": 3}, resume=str(tmp_path / "auto"))
    assert [r["generation"] for r in spelt.metrics] == [2]  # flipes' own rule by module:function is that rule too
    with pytest.raises(flipes.UsageError, match="the run was trained with other options"):
        flipes.train(**{**auto, "shaping": "flipes.es.shaping:z_score", "generations": 4}, resume=str(tmp_path / "auto"))


def test_pgpe_and_ars_solve_cartpole(tmp_path: Path) -> None:
    """Seed 0: PGPE (adaptive σ, ClipUp) with the CartPole row, and ARS's linear policy at α = 0.3,
    reach gymnasium's threshold (475 over 100 episodes of the center policy) within 60 generations. The center is
    evaluated every 4th (PGPE) or 5th (ARS) generation, not every 2nd: each evaluation of a center that balances
    plays up to 50,000 steps, as many as a generation's training, and the runs train alike between them."""
    for algo, extra in (("pgpe", {"eval_every": 4}), ("ars", {"lr": 0.3, "eval_every": 5})):
        result = flipes.train(
            env="flipes/CartPole-v1",
            algo=algo,
            generations=60,
            out=str(tmp_path / algo),
            tensorboard=False,
            plot=False,
            progress=False,
            **extra,
        )
        # the return itself, not only the reason: a lower target would stop the run "solved" below 475
        assert result.reason.startswith("solved") and result.eval_return >= 475, (algo, result.reason, result.eval_return)
        assert result.metrics[-1]["eval_return"] == result.eval_return and result.config.eval_episodes == 100


def test_params_sha256_is_the_hash_of_the_mean_parameters_after_each_update(tmp_path: Path) -> None:
    """Every resume, MPI and kill test compares params_sha256 lists: this anchors the field to the
    parameters. The last row's hash is tensors_sha256 of the returned (mean) model, the checkpoint
    of generation g holds parameters whose hash is row g - 1's, and every generation's hash differs
    from the previous one's (each update moves the mean)."""
    from flipes.checkpoint import tensors_sha256

    result = flipes.train(**FAST_KW, generations=3, checkpoint_every=1, out=str(tmp_path))
    rows = result.metrics
    assert rows[-1]["params_sha256"] == tensors_sha256(result.model.parameters())
    # and tensors_sha256 is SHA-256 of every parameter's bytes in order, computed here with hashlib alone
    every_byte = b"".join(p.detach().contiguous().numpy().tobytes() for p in result.model.parameters())
    assert rows[-1]["params_sha256"] == hashlib.sha256(every_byte).hexdigest()
    previous = load_checkpoint(tmp_path / "previous.pt")  # generation 2's state: after row 1's update
    assert previous["es"]["generation"] == 2
    names = [name for name, _ in result.model.named_parameters()]
    assert rows[1]["params_sha256"] == tensors_sha256(previous["es"]["model"][name] for name in names)
    hashes = [r["params_sha256"] for r in rows]
    assert len(set(hashes)) == len(hashes), hashes


def test_evaluate_command_reports_the_mean_and_std_of_the_chosen_checkpoint(tmp_path: Path) -> None:
    """``flipes evaluate DIR --checkpoint C`` returns (and prints) the mean and std of exactly the returns
    that evaluate_policy gives for load_policy(DIR, C) at the same seed, for latest and best alike."""
    from flipes.commands import evaluate_command
    from flipes.runs import evaluate_policy

    kw = {**FAST_KW, "env": "flipes/Pendulum-v1"}  # returns that vary by episode: mean, max and std differ
    flipes.train(**kw, generations=4, eval_every=1, seed=1, out=str(tmp_path))
    assert load_checkpoint(tmp_path / "best.pt")["es"]["generation"] == 1  # seed 1: best and latest are other policies
    assert load_checkpoint(tmp_path)["es"]["generation"] == 4
    for which in ("latest", "best"):
        returns = evaluate_policy(flipes.load_policy(tmp_path, which), "flipes/Pendulum-v1", 7, seed=5)
        mean, std = evaluate_command([str(tmp_path), "--episodes", "7", "--seed", "5", "--checkpoint", which])
        assert (mean, std) == (returns.mean().item(), returns.std().item()), which


def test_a_runs_evaluation_is_the_mean_and_sample_std_of_the_centers_returns_on_its_generations_episodes() -> None:
    """eval_return, eval_std and eval_steps of generation g are the mean, the sample standard deviation (n - 1, as
    ``flipes evaluate`` prints it) and the summed lengths of the center policy's episodes reset from (seed, "eval", g),
    computed here with Python's statistics module; generation g + 1 plays other episodes."""
    import statistics

    from flipes.builders import Evaluator
    from flipes.rl import MLPPolicy, reset_episodes

    env = make_vector_env("flipes/Pendulum-v1", 5)
    torch.manual_seed(0)
    policy = MLPPolicy(env.single_observation_space, env.single_action_space, hidden=(4,))
    got = Evaluator(env, seed=3)(policy, 2)
    episodes = run_episodes(env, policy, obs=reset_episodes(env, 3, "eval", 2))
    returns = episodes.returns.tolist()
    assert got["eval_return"] == pytest.approx(statistics.fmean(returns), rel=1e-12)
    assert got["eval_std"] == pytest.approx(statistics.stdev(returns), rel=1e-12) and got["eval_std"] > 0
    assert got["eval_steps"] == 5 * 200
    assert Evaluator(env, seed=3)(policy, 3)["eval_return"] != got["eval_return"]


def test_plot_draws_each_runs_curves_against_the_chosen_x(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """plot_runs draws, for every run, its fitness_mean and fitness_max (and best_member_fitness of a
    --track-best run) against the chosen x column, and its eval_return on the second axes: the lines'
    labels and data are read back from the figure as it is saved. Rows edited by hand are drawn where they
    hold both as numbers, a null y (a non-finite value) kept as a gap; a row without x or with a null x, or with a
    string or a bool as y, is left out of that line."""
    from flipes.plotting import plot_runs

    flipes.train(**FAST_KW, generations=2, eval_every=1, out=str(tmp_path / "a"))
    flipes.train(**FAST_KW, generations=3, eval_every=1, track_best=True, out=str(tmp_path / "b"))
    trained = metrics(tmp_path / "a")
    edited = [{"generation": 2, "timesteps": 999, "fitness_mean": None, "fitness_max": 3.0},
              {"generation": 3, "fitness_mean": 1.0, "fitness_max": 4.0},
              {"generation": 3, "timesteps": None, "fitness_mean": 1.0, "fitness_max": 4.0},
              {"generation": 4, "timesteps": 1001, "fitness_mean": "high", "fitness_max": True}]  # fmt: skip
    with open(tmp_path / "a" / "metrics.jsonl", "a") as f:
        f.writelines(json.dumps(row) + "\n" for row in edited)
    figures = []
    save = flipes.plotting._save
    monkeypatch.setattr(flipes.plotting, "_save", lambda fig, out: (figures.append(fig), save(fig, out))[1])
    plot_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "c.png", x="timesteps")
    (fig,) = figures
    fitness, evals = ({line.get_label(): line for line in ax.get_lines()} for ax in fig.axes)
    assert set(fitness) == {"a mean", "a max", "b mean", "b max", "b best member"}
    assert set(evals) == {"a", "b"}
    for name, rows in (("a", trained), ("b", metrics(tmp_path / "b"))):
        xs = [r["timesteps"] for r in rows]
        extra = name == "a"  # the edited rows: a gap in the mean at 999, a max of 3 there
        assert list(fitness[f"{name} mean"].get_xdata()) == xs + [999] * extra
        assert list(fitness[f"{name} mean"].get_ydata()) == [r["fitness_mean"] for r in rows] + [None] * extra
        assert list(fitness[f"{name} max"].get_xdata()) == xs + [999] * extra
        assert list(fitness[f"{name} max"].get_ydata()) == [r["fitness_max"] for r in rows] + [3.0] * extra
        assert list(evals[name].get_ydata()) == [r["eval_return"] for r in rows if "eval_return" in r]
    assert list(fitness["b best member"].get_ydata()) == [r["best_member_fitness"] for r in metrics(tmp_path / "b")]


def test_plot_labels_runs_of_one_name_by_the_directories_that_tell_them_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs in directories of one name (the default ``runs/<env name>`` under two parents) get legend labels that
    differ, the fewest trailing path parts (as many for every run) that tell them apart; runs of different names keep
    just their names."""
    from flipes.plotting import plot_runs
    from flipes.runs import run_labels

    assert run_labels([Path("a/s0/CartPole-v1"), Path("a/s1/CartPole-v1")]) == ["s0/CartPole-v1", "s1/CartPole-v1"]
    assert run_labels([Path("x/runs/cp"), Path("y/runs/cp"), Path("y/runs/pend")]) == ["x/runs/cp", "y/runs/cp", "y/runs/pend"]
    assert run_labels([Path("runs/cp"), Path("runs/pend")]) == ["cp", "pend"]
    row = {"generation": 0, "timesteps": 10, "fitness_mean": 1.0, "fitness_max": 2.0, "eval_return": 3.0}
    for seed in ("s0", "s1"):
        (tmp_path / seed / "CartPole-v1").mkdir(parents=True)
        (tmp_path / seed / "CartPole-v1" / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    figures = []
    save = flipes.plotting._save
    monkeypatch.setattr(flipes.plotting, "_save", lambda fig, out: (figures.append(fig), save(fig, out))[1])
    plot_runs([tmp_path / "s0" / "CartPole-v1", tmp_path / "s1" / "CartPole-v1"], tmp_path / "c.png")
    (fig,) = figures
    assert [line.get_label() for line in fig.axes[1].get_lines()] == ["s0/CartPole-v1", "s1/CartPole-v1"]


@pytest.mark.parametrize("last", [192_000, 3_000_000, 45_000_000])
def test_plot_tick_labels_of_timesteps_do_not_overlap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, last: int) -> None:
    """Against timesteps (six to eight digits), the drawn x tick labels of both axes lie apart: no two labels' boxes
    on the rendered figure intersect, and each label is at most five characters (200k, 1.5M, 40M)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from flipes.plotting import plot_runs

    (tmp_path / "run").mkdir()
    rows = [{"generation": g, "timesteps": last * (g + 1) // 30, "fitness_mean": -g, "fitness_max": g, "eval_return": g}
            for g in range(30)]  # fmt: skip
    (tmp_path / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures = []
    save = flipes.plotting._save
    monkeypatch.setattr(flipes.plotting, "_save", lambda fig, out: (figures.append(fig), save(fig, out))[1])
    plot_runs([tmp_path / "run"], tmp_path / "c.png", x="timesteps")
    (fig,) = figures
    canvas = FigureCanvasAgg(fig)  # a bare Figure: a canvas of its own to render the labels
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        labels = [t for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
        assert len(labels) >= 3 and all(len(t.get_text()) <= 5 for t in labels), [t.get_text() for t in labels]
        boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
        assert all(a.x1 < b.x0 for a, b in itertools.pairwise(boxes)), [t.get_text() for t in labels]


def test_a_train_result_and_a_best_member_print_as_one_line_summaries(tmp_path: Path) -> None:
    """What a notebook shows for ``result`` and ``result.es.best``: one line each, the rows counted with the last
    one's fitness and the state dict counted, equal to the reference strings built here from their fields, where
    the dataclass reprs printed every row, the layers and every tensor."""
    result = flipes.train(**FAST_KW, generations=3, track_best=True, out=str(tmp_path / "a"))
    last, best = result.metrics[-1], result.es.best
    assert repr(result) == (
        f"TrainResult(reason='generations', metrics=[3 rows, fitness_mean={last['fitness_mean']:.6g}, "
        f"fitness_max={last['fitness_max']:.6g}], eval_return={result.eval_return!r}, best={result.best!r}, "
        f"run_dir={str(tmp_path / 'a')!r}, model={type(result.model).__name__}, es={result.es!r})"
    )
    values = sum(p.numel() for p in result.model.state_dict().values())
    assert repr(best) == (
        f"BestMember(fitness={best.fitness!r}, generation={best.generation}, index={best.index}, "
        f"state_dict=<{len(result.model.state_dict())} entries, {values:,} values>)"
    )
    assert "\n" not in repr(result) + repr(best)


def test_plotting_leaves_the_callers_matplotlib_backend_and_figures_as_they_were(tmp_path: Path) -> None:
    """A notebook's matplotlib stays its own across training and plotting: flipes.train (which draws curves.png) and
    plot_runs leave the backend as the caller set it (an inline one stays inline, so plt.show() still shows), pyplot's
    open figures exactly the caller's and its current figure the caller's; curves.png is written all the same."""
    matplotlib = pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from flipes.plotting import plot_runs

    backend = matplotlib.get_backend()
    try:
        plt.switch_backend("svg")  # a backend of the caller's choosing, not flipes' Agg
        mine = plt.figure()
        open_before = plt.get_fignums()  # the caller's (another test's in this process may be open too)
        flipes.train(**{**FAST_KW, "plot": True}, generations=2, out=str(tmp_path / "a"))
        plot_runs([tmp_path / "a"], tmp_path / "c.png")
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == open_before and mine.number in open_before and plt.gcf() is mine
        assert (tmp_path / "a" / "curves.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "c.png").exists()
    finally:
        plt.close("all")
        plt.switch_backend(backend)


def test_tensorboard_scalars_are_the_rows_of_every_generation_across_a_resume(tmp_path: Path) -> None:
    """With tensorboard installed, <run>/tensorboard holds every numeric column of metrics.jsonl as a
    scalar at step = generation (float32, as TensorBoard stores them), each generation once, also when
    the run is resumed (the resumed process appends an event file of its own) from a checkpoint behind
    the last row (previous.pt, as a crash leaves one): the scalars logged after it are the resumed run's."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    kw = {**SHORT_KW, "tensorboard": True, "eval_every": 2, "out": str(tmp_path)}
    flipes.train(**kw, generations=3, checkpoint_every=2)
    assert load_checkpoint(tmp_path / "previous.pt")["es"]["generation"] == 2
    flipes.train(**kw, generations=4, resume=str(tmp_path / "previous.pt"))
    events = accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    rows = metrics(tmp_path)
    assert [r["generation"] for r in rows] == [0, 1, 2, 3]
    for key in ("fitness_mean", "fitness_max", "timesteps", "eval_return", "seconds"):
        expected = [(r["generation"], np.float32(r[key])) for r in rows if key in r]
        assert [(e.step, np.float32(e.value)) for e in events.Scalars(key)] == expected, key
    assert "generation" not in events.Tags()["scalars"]


def test_a_callbacks_error_taking_its_state_back_reaches_the_caller_with_tensorboard_on(tmp_path: Path) -> None:
    """A resume whose callback raises in ``load_state_dict`` (before training starts) ends in that very error, with
    TensorBoard on too: closing the TensorBoard writer that never opened (it opens at the start of training) is no
    AttributeError of its own in its place."""
    pytest.importorskip("torch.utils.tensorboard")

    class Kept(Callback):
        def state_dict(self) -> dict:
            return {"x": 1}

        def load_state_dict(self, state: dict) -> None:
            raise RuntimeError("cannot take it back")

    def fitness(model: torch.nn.Module, pop: flipes.Population) -> torch.Tensor:
        return model(torch.ones(pop.size, 2)).sum(1)

    kw = {"env": "none", "model": lambda env: torch.nn.Linear(2, 1), "fitness": fitness, "popsize": 4, "progress": False}
    flipes.train(**kw, tensorboard=False, plot=False, generations=1, out=str(tmp_path), callbacks=[Kept()])
    with pytest.raises(RuntimeError, match=r"^cannot take it back$"):
        flipes.train(**kw, tensorboard=True, generations=2, resume=str(tmp_path), callbacks=[Kept()])


def test_the_comm_option_can_be_given_to_train_by_its_name(tmp_path: Path) -> None:
    """``flipes.train(comm="seeds")`` sets the option ``comm`` (the keyword is shared with the communicator
    argument): the run records it, and a string that is no mode is refused as ``--comm`` would be."""
    result = flipes.train(**FAST_KW, generations=1, comm="seeds", out=str(tmp_path / "seeds"))
    assert result.config.comm == "seeds"
    assert json.loads((tmp_path / "seeds" / "config.json").read_text())["comm"] == "seeds"
    with pytest.raises(flipes.UsageError, match=r"comm = 'gossip' is not 'allreduce' or 'seeds'"):
        flipes.train(**FAST_KW, generations=1, comm="gossip", out=str(tmp_path / "gossip"))
    assert not (tmp_path / "gossip").exists()


class _MixedModel(torch.nn.Module):
    """Token ids through every kind of layer flipes perturbs: embedding, conv, norm and a Vector (dense
    noise), attention, LSTM, batch norm, linear."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.emb, self.conv, self.norm = nn.Embedding(11, 8, padding_idx=0), nn.Conv1d(8, 8, 3, padding=1), nn.LayerNorm(8)
        self.gain = flipes.nn.Vector(torch.ones(8))
        self.attn, self.lstm = nn.MultiheadAttention(8, 2, batch_first=True), nn.LSTM(8, 8, batch_first=True)
        self.bn, self.head = nn.BatchNorm1d(8), nn.Linear(8, 2)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.emb(idx).transpose(1, 2)).transpose(1, 2)
        gain = self.gain()
        h = self.norm(h) * (gain.unsqueeze(1) if gain.dim() == 2 else gain)
        h, _ = self.lstm(self.attn(h, h, h, need_weights=False)[0])
        return self.head(self.bn(h[:, -1]))


def test_every_tensor_a_run_makes_is_on_its_device(tmp_path: Path) -> None:
    """Every tensor that training generations (adaptive σ, ClipUp, observation normalization, action noise, evaluation,
    best member, checkpoints), a resume and FlipES steps on a mixed model (low-rank and dense noise, a
    fitness list, member weights) make is on the run's device: under the meta default device, with the
    device given as "cpu", a torch factory called without device= makes a meta tensor, which fails where
    it meets the run's tensors (on a GPU: a device mismatch, or a copy from the host on every call).
    The models alone are built on the host, as flipes.train builds them before moving them."""

    def policy(env):
        with torch.device("cpu"):
            return flipes.rl.GRUPolicy(env.single_observation_space, env.single_action_space, hidden=[8])

    kw = dict(env="flipes/Pendulum-v1", algo="pgpe", popsize=16, eval_every=1, eval_episodes=2, track_best=True,
              target=None, model=policy, device="cpu", checkpoint_every=1, tensorboard=False, plot=False, progress=False,
              action_noise=0.1)  # fmt: skip
    with torch.device("cpu"):
        torch.manual_seed(0)
        model, tokens = flipes.flipout(_MixedModel()).eval(), torch.randint(1, 11, (8, 5))
    torch.set_default_device("meta")
    try:
        assert torch.empty(1).is_meta  # the check is in force
        flipes.train(**kw, generations=2, out=str(tmp_path))
        resumed = flipes.train(**kw, generations=3, resume=str(tmp_path))
        es = flipes.FlipES(model, popsize=8, groups=2, noise_rank=2, track_best=True)
        for fitness in (lambda out: out[:, 0], lambda out: out[:, 1].tolist()):
            with es.population():
                out = model(tokens)
            es.member_state_dict(3)
            es.tell(fitness(out))
    finally:
        torch.set_default_device(None)
    assert [r["generation"] for r in metrics(tmp_path)] == [0, 1, 2] and "eval_return" in resumed.metrics[-1]
    assert es.generation == 2 and es.best is not None


def _data_fitness(model: torch.nn.Module, pop: flipes.Population) -> torch.Tensor:
    """A supervised fitness of the README's kind: a minibatch drawn from ``pop.generator()`` (a CPU generator) for the
    whole population and indexed by the members, moved to the model's device."""
    device = next(model.parameters()).device
    x = torch.randn(pop.popsize, 3, 4, generator=pop.generator("data"), device="cpu")[pop.members].to(device)
    return -model(x).square().mean((1, 2))


def _data_model(env: None) -> torch.nn.Module:
    with torch.device("cpu"):  # built on the host, as a --model is before flipes.train moves it
        return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


# the cheapest run that reaches each training path the Pendulum run above misses; "after": the deployment functions
# run on it too (load_policy of the center or best member, evaluate_policy, export_policy); "resume": a third
# generation resumed from the checkpoint (Adam's state, the σ schedule)
DEVICE_PATHS = {
    # EnvPool (numpy, moved to the device by the engine), pipelined (>= 128 envs, an MLP), ARS, reward_shift, a cut
    "ars-envpool-pipelined": dict(env="CartPole-v1", algo="ars", popsize=128, ars_top=32, hidden=[], reward_shift=1.0,
                                  max_episode_steps=20),
    # openai-es (Adam), members in parts sampled anew (hold_noise false), low-rank noise, groups, a σ schedule, z-score
    "openai-es-parts-low-rank": dict(env="flipes/Pendulum-v1", popsize=16, members_per_pass=4, hold_noise=False,
                                     noise_rank=2, groups=4, sigma_decay=0.9, sigma_min=0.05, weight_decay=0.01,
                                     episodes=2, track_best=True, shaping="z-score", max_episode_steps=10, after=True,
                                     resume=True),
    # gymnasium's worker processes (numpy, NumpyToTorch-like copies), action noise on their Box actions
    "gymnasium-workers": dict(env="gymnasium-async:Pendulum-v1", env_threads=2, hidden=[4], action_noise=0.1,
                              max_episode_steps=10),
    # gymnasium's SyncVectorEnv through NumpyToTorch, a GRU policy, Discrete actions; its export wraps the state
    "gymnasium-sync-gru": dict(env="gymnasium-sync:CartPole-v1", policy="gru", hidden=[4], max_episode_steps=10,
                               after=True),
    # flipes' own torch envs other than Pendulum, the MLP policy with members in held parts
    "own-envs-parts": dict(env="flipes/Acrobot-v1", popsize=16, members_per_pass=8, max_episode_steps=10, after=True),
    # the CNN policy on images (its training is test_cnn_policy's): deployment
    "cnn": dict(env="image_env:cnntest/BrightSpot-v0", policy="cnn", hidden=[8], after=True),
    # env none: a supervised fitness drawing from pop.generator(), in parts with the noise sampled anew
    "fitness": dict(env="none", fitness=_data_fitness, model=_data_model, members_per_pass=4, hold_noise=False,
                    groups=2),
}  # fmt: skip


@pytest.mark.parametrize("path", list(DEVICE_PATHS))
def test_every_tensor_of_each_training_path_is_on_its_device(tmp_path: Path, path: str, monkeypatch) -> None:
    """As test_every_tensor_a_run_makes_is_on_its_device, for the training paths its Pendulum run misses (engines,
    searches, policies, noise, parts, a fitness of one's own), a resume and the deployment functions on their runs:
    under the meta default device, with the device given as "cpu", every tensor training, load_policy,
    evaluate_policy and export_policy make is a real one (a factory without device= would make a meta tensor, which
    fails where it meets the run's). flipes' policies alone are built on the host, as flipes.train and load_policy
    build them before moving them."""
    case = dict(DEVICE_PATHS[path])
    after, resume = case.pop("after", False), case.pop("resume", False)
    if case["env"] == "CartPole-v1":
        pytest.importorskip("envpool")

    def on_host(kind: type[torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        def build(*args: Any, **kwargs: Any) -> torch.nn.Module:
            with torch.device("cpu"):
                return kind(*args, **kwargs)

        return build

    from flipes import builders, runs

    host_policies = {name: on_host(kind) for name, kind in runs.POLICIES.items()}
    monkeypatch.setattr(builders, "POLICIES", host_policies)
    monkeypatch.setattr(runs, "POLICIES", host_policies)
    kw = dict(popsize=8, eval_every=1, eval_episodes=2, target=None, device="cpu", checkpoint_every=1, tensorboard=False,
              plot=False, progress=False, out=str(tmp_path))  # fmt: skip
    torch.set_default_device("meta")
    try:
        assert torch.empty(1).is_meta  # the check is in force
        flipes.train(**{**kw, **case}, generations=2)
        if resume:
            flipes.train(**{**kw, **case}, generations=3, resume=str(tmp_path))
        if after:
            policy = flipes.load_policy(tmp_path, "best-member" if case.get("track_best") else "latest")
            returns = flipes.evaluate_policy(policy, case["env"], 2, max_steps=5)
            program = flipes.export_policy(tmp_path)
    finally:
        torch.set_default_device(None)
    assert [r["generation"] for r in metrics(tmp_path)] == [0, 1, 2][: 3 if resume else 2]
    if after:
        assert returns.device == torch.device("cpu") and returns.shape == (2,) and program.exists()


def test_evaluate_policy_refuses_no_episodes_and_a_bad_env_id_in_one_line() -> None:
    """``evaluate_policy`` given 0 (or 2.5) episodes is a UsageError naming the episodes (not EnvPool's bare
    AssertionError), an unknown id one naming the env; numpy's integers are counts."""
    from flipes.runs import evaluate_policy

    class Left(torch.nn.Module):
        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return torch.zeros(len(obs), dtype=torch.long)

    policy = Left()
    for episodes in (0, 2.5, True):
        with pytest.raises(
            flipes.UsageError, match=rf"^--episodes: must be an integer of at least 1, got {episodes!r}; e.g. --episodes 100$"
        ):
            evaluate_policy(policy, "CartPole-v1", episodes)
    with pytest.raises(flipes.UsageError, match=r"^--env: unknown env id 'CartPol-v1'"):
        evaluate_policy(policy, "CartPol-v1", 2)
    assert evaluate_policy(policy, "flipes/CartPole-v1", np.int64(3)).shape == (3,)


def test_evaluate_policy_runs_the_policy_in_eval_mode_and_sets_each_module_back() -> None:
    """evaluate_policy judges a policy as load_policy deploys it: dropout off, so a policy left in training
    mode returns exactly what the same policy in eval mode does; each module's own mode is restored afterwards."""
    from flipes.runs import evaluate_policy

    class Dropping(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop, self.kept = torch.nn.Dropout(0.5), torch.nn.Identity()

        def forward(self, obs: torch.Tensor) -> torch.Tensor:  # CartPole: push toward the side the pole leans to
            return (self.kept(self.drop(obs))[:, 2] > 0).long()

    policy = Dropping()
    policy.kept.eval()  # a mode of the user's own, to be kept
    torch.manual_seed(0)
    trained_mode = evaluate_policy(policy, "flipes/CartPole-v1", 20, seed=3)
    assert policy.training and policy.drop.training and not policy.kept.training
    expected = evaluate_policy(Dropping().eval(), "flipes/CartPole-v1", 20, seed=3)
    assert torch.equal(trained_mode, expected) and len(set(expected.tolist())) > 1


def _open_files_under(directory: Path) -> list[str]:
    """The files under ``directory`` that this process holds open (Linux: /proc/self/fd)."""
    fds = Path("/proc/self/fd")
    held = []
    for fd in fds.iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith(str(directory)):
            held.append(target)
    return held


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads the process's open files from /proc")
@pytest.mark.parametrize("tensorboard", [False, True])
def test_a_run_that_raises_leaves_no_file_of_its_directory_open(tmp_path: Path, tensorboard: bool) -> None:
    """A fitness that raises in the second generation ends flipes.train with its own exception, and the run's
    metrics.jsonl (and TensorBoard's event file) are closed by then, not left open until garbage collection."""
    if tensorboard:
        pytest.importorskip("tensorboard")

    def fitness(model: torch.nn.Module, pop: flipes.Population) -> torch.Tensor:
        if pop.generation == 1:
            raise RuntimeError("a bug in the fitness")
        return model(torch.ones(pop.size, 4)).sum(-1)

    with pytest.raises(RuntimeError, match="a bug in the fitness"):
        try:
            flipes.train(env="none", fitness=fitness, model=lambda env: torch.nn.Linear(4, 2), popsize=8, generations=3,
                         out=str(tmp_path), tensorboard=tensorboard, progress=False)  # fmt: skip
        except RuntimeError:
            assert _open_files_under(tmp_path) == []  # while the traceback still holds every frame
            raise
    assert [json.loads(line)["generation"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0]


def test_a_resume_without_a_group_count_keeps_the_count_the_run_recorded(tmp_path: Path) -> None:
    """A run whose group count was chosen for it (groups=0: 4 here, one per part with its own noise) continues when
    resumed from a TrainConfig that leaves groups at 0, given a directory or "auto", with the run's 4 groups, and ends
    on the parameters of an uninterrupted run with them (to rounding: the first generation's update summed part by part);
    a count given that differs is still refused. Episodes are cut at 50 steps: the group count a resume takes does not
    depend on their length."""
    parts = {"members_per_pass": 2, "hold_noise": False}
    run, whole = tmp_path / "run", tmp_path / "whole"
    kw = {**FAST_KW, "max_episode_steps": 50}
    first = flipes.train(flipes.TrainConfig(**kw, **parts, generations=1, out=str(run)))
    assert first.config.groups == 4
    resumed = flipes.train(flipes.TrainConfig(**kw, generations=2, resume=str(run)))
    assert resumed.config.groups == 4 and resumed.es.generation == 2
    again = flipes.train(flipes.TrainConfig(**kw, generations=3, resume="auto", out=str(run)))
    assert again.config.groups == 4 and again.es.generation == 3
    reference = flipes.train(flipes.TrainConfig(**kw, groups=4, generations=3, out=str(whole)))
    expected = reference.es.model.state_dict()
    for name, value in again.es.model.state_dict().items():
        torch.testing.assert_close(value, expected[name])
    with pytest.raises(flipes.UsageError, match="--groups: saved 4, now 2"):
        flipes.train(flipes.TrainConfig(**kw, groups=2, generations=4, resume=str(run)))


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are Python 3.11's")
def test_an_error_raised_in_a_generations_fitness_or_evaluation_names_the_generation_and_the_kept_checkpoint(
    tmp_path: Path,
) -> None:
    """An exception from code of one's own (an env's step, a fitness, an evaluate) propagates as it was raised, its
    message unchanged, with one note naming the generation whose fitness or evaluation raised it, the checkpoint the
    run keeps (written every 2 generations: after generation 1) and the --resume that continues from it; a UsageError
    (flipes' one-line mistakes) gets no note."""

    def fitness(model, pop):
        if pop.generation == 3:
            raise RuntimeError("env broke")
        return model(torch.ones(pop.size, 3)).sum(1)

    def evaluate(model):
        if len(calls) == 1:
            raise KeyError("eval broke")
        calls.append(1)
        return 0.0

    calls: list[int] = []
    kw = dict(env="none", model=lambda env: torch.nn.Linear(3, 1), popsize=8, generations=5, checkpoint_every=2,
              tensorboard=False, plot=False, progress=False)  # fmt: skip
    with pytest.raises(RuntimeError, match=r"^env broke") as raised:
        flipes.train(**kw, fitness=fitness, out=str(tmp_path / "fit"))
    kept = f"the last checkpoint (after generation 1) stays: --resume {tmp_path / 'fit'} continues from it"
    assert raised.value.__notes__ == [f"flipes: raised in generation 3's fitness; {kept}"]
    with pytest.raises(KeyError) as raised:
        flipes.train(**kw, fitness=lambda model, pop: model(torch.ones(pop.size, 3)).sum(1), evaluate=evaluate, eval_every=1,
                     out=str(tmp_path / "eval"))  # fmt: skip
    kept = f"the last checkpoint (before any generation) stays: --resume {tmp_path / 'eval'} continues from it"
    assert raised.value.__notes__ == [f"flipes: raised in the evaluation of generation 1; {kept}"]
    with pytest.raises(flipes.UsageError) as refused:
        flipes.train(**kw, fitness=lambda model, pop: torch.zeros(3), out=str(tmp_path / "shape"))
    assert not hasattr(refused.value, "__notes__")
