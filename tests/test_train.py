"""scripts/train.py as a user meets it: config files, plug-in fitness, checkpoints, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flipes.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--env", "CartPole-v1", "--popsize", "8", "--eval-episodes", "3", "--target", "1e9", "--tensorboard", "false"]


def train(*args: str, extra_path: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    path = os.pathsep.join(str(p) for p in (ROOT, extra_path) if p)
    return subprocess.run(
        [sys.executable, "scripts/train.py", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


def hashes(run: Path) -> list[str]:
    return [json.loads(line)["params_sha256"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_config_file_sets_options_and_flags_override_it(tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text('popsize = 12\ngenerations = 2\nhidden = [8]\nsigma = 0.2\nenv = "CartPole-v1"\n')
    train("--config", str(cfg), "--sigma", "0.3", "--eval-episodes", "3", "--out", str(tmp_path / "run"))
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (resolved["popsize"], resolved["hidden"], resolved["sigma"], resolved["generations"]) == (12, [8], 0.3, 2)
    bad = tmp_path / "bad.toml"
    bad.write_text("popsize = 12\npopsiz = 3\n")
    r = train("--config", str(bad), check=False)
    assert r.returncode != 0 and "unknown option(s) ['popsiz']" in r.stderr


def test_checkpoints_are_atomic_and_a_broken_one_leaves_the_previous(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"es": {"generation": 1}}, path)
    save_checkpoint({"es": {"generation": 2}}, path)
    assert load_checkpoint(tmp_path)["es"]["generation"] == 2
    assert load_checkpoint(tmp_path / "previous.pt")["es"]["generation"] == 1
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a full disk or a cut copy
    with pytest.raises(CheckpointError, match=r"truncated or not a checkpoint.*previous.pt can be resumed instead"):
        load_checkpoint(tmp_path)
    assert load_checkpoint(tmp_path / "previous.pt")["es"]["generation"] == 1
    torch.save({"something": "else"}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a flipes training checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_resume_from_a_broken_checkpoint_is_a_clear_error_and_previous_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(*FAST, "--generations", "4", "--checkpoint-every", "2", "--out", str(run))
    (run / "checkpoint.pt").write_bytes(b"garbage")
    r = train(*FAST, "--generations", "6", "--out", str(run), "--resume", str(run), check=False)
    assert r.returncode != 0 and "is truncated or not a checkpoint" in r.stderr and "previous.pt" in r.stderr
    train(*FAST, "--generations", "6", "--out", str(tmp_path / "again"), "--resume", str(run / "previous.pt"))
    assert json.loads((tmp_path / "again" / "metrics.jsonl").read_text().splitlines()[0])["generation"] == 2


def test_sigterm_during_training_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "scripts/train.py", *FAST, "--generations", "100000", "--checkpoint-every", "1000", "--out", str(run)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    state = load_checkpoint(run)
    done = len(metrics.read_text().splitlines())
    assert state["es"]["generation"] == done >= 3  # every generation logged is in the checkpoint


FITNESS_MODULE = """
import torch

def good(model, pop):
    return torch.arange(pop.size, dtype=torch.float32)

def wrong_shape(model, pop):
    return torch.zeros(pop.size + 1)

def nan(model, pop):
    f = torch.zeros(pop.size)
    f[1] = float("nan")
    return f

def make_model(env):
    return torch.nn.Sequential(torch.nn.Linear(3, 2))

def evaluate(model):
    return 7.0
"""


def test_plugged_in_fitness_and_its_errors(tmp_path: Path) -> None:
    (tmp_path / "user_fitness.py").write_text(FITNESS_MODULE)
    base = [
        "--env",
        "none",
        "--model",
        "user_fitness:make_model",
        "--popsize",
        "8",
        "--generations",
        "3",
        "--tensorboard",
        "false",
    ]
    train(*base, "--fitness", "user_fitness:good", "--out", str(tmp_path / "ok"), extra_path=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["eval_return"] == 7.0 and rows[0]["timesteps"] == 0
    cases = [
        ("user_fitness:wrong_shape", "fitness has shape (9,), but this process evaluates 8 members"),
        ("user_fitness:nan", "fitness of 1 member(s) is not finite (1=nan)"),
        ("user_fitness:missing", "module 'user_fitness' has no function 'missing'"),
        ("no_such_module:f", "cannot import 'no_such_module'"),
        ("user_fitness", "expected module:function"),
    ]
    for spec, message in cases:
        r = train(*base, "--fitness", spec, "--out", str(tmp_path / "bad"), extra_path=tmp_path, check=False)
        assert r.returncode != 0 and message in r.stderr, (spec, r.stderr[-500:])


def test_evaluate_and_render_a_tiny_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(*FAST, "--generations", "2", "--out", str(run))
    gif = tmp_path / "policy.gif"
    r = subprocess.run(
        [sys.executable, "scripts/evaluate.py", str(run), "--episodes", "5", "--render", str(gif), "--max-frames", "30"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "SDL_VIDEODRIVER": "dummy"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "center policy return" in r.stdout and "over 5 episodes" in r.stdout
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames > 1 and im.size == (600, 400)
    assert (run / "curves.png").exists()


def test_resume_refuses_other_training_options_and_keeps_metrics_consistent(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(*FAST, "--generations", "5", "--checkpoint-every", "2", "--out", str(run))
    r = train(*FAST, "--generations", "6", "--sigma", "0.3", "--out", str(run), "--resume", str(run), check=False)
    assert r.returncode != 0 and "--sigma: saved 0.1, now 0.3" in r.stderr
    train(*FAST, "--generations", "6", "--out", str(run), "--resume", str(run / "previous.pt"))  # back to generation 4
    gens = [json.loads(line)["generation"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert gens == list(range(6))  # rows past the checkpoint were dropped, not duplicated


def test_per_env_defaults_sit_under_config_files_and_flags(tmp_path: Path) -> None:
    """An env's preset row fills the options nobody set; a config file and flags override it, an
    engine prefix keeps the row, and an env without a row keeps train.py's defaults."""
    import importlib.util

    from flipes.cli import parse_config
    from flipes.rl.presets import preset_for

    spec = importlib.util.spec_from_file_location("flipes_train_presets", ROOT / "scripts" / "train.py")
    train_module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = train_module  # dataclasses look their module up there
    spec.loader.exec_module(train_module)

    def parse(*argv: str):
        return parse_config(train_module.Args, list(argv), presets=lambda values: preset_for(values["env"]))

    a = parse("--env", "HalfCheetah-v5")
    assert (a.popsize, a.sigma, a.lr, a.hidden, a.eval_episodes, a.generations) == (128, 0.03, 0.04, [64, 64], 5, 2000)
    b = parse("--env", "envpool:HalfCheetah-v5", "--popsize", "32")
    assert (b.popsize, b.sigma) == (32, 0.03)
    cfg = tmp_path / "run.toml"
    cfg.write_text('env = "Hopper-v5"\nlr = 0.5\n')
    c = parse("--config", str(cfg))
    assert (c.lr, c.reward_shift, c.popsize) == (0.5, 1.0, 128)
    assert parse("--config", str(cfg), "--env", "CartPole-v1").target == 475.0  # the flag's env picks the row
    plain = train_module.Args()
    d = parse("--env", "MountainCar-v0")
    assert (d.popsize, d.sigma, d.hidden, d.target) == (plain.popsize, plain.sigma, plain.hidden, None)
