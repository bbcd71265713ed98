"""``--max-timesteps``: a budget in env steps (the rows' ``timesteps``), as papers compare ES methods at; it ends the
generation that reaches it, is a total over resumes, and is refused where the fitness counts no steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import metrics, once_per_session

import flipes
from flipes.commands import main

RUN = ["train", "--env", "flipes/CartPole-v1", "--popsize", "8", "--eval-episodes", "3", "--eval-every", "5", "--target",
       "none", "--tensorboard", "false", "--plot", "false", "--progress", "false", "--seed", "2"]  # fmt: skip


@pytest.fixture
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The rows of 6 generations of ``RUN`` without a budget (made once per session)."""

    def make(out: Path) -> None:
        assert main([*RUN, "--generations", "6", "--out", str(out / "run")]) == 0

    return metrics(once_per_session(tmp_path_factory, "max_timesteps_reference", make) / "run")


def test_the_run_stops_at_the_end_of_the_generation_that_reaches_the_budget(
    reference: list[dict], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """With a budget one step above generation 1's timesteps, training ends after generation 2 (the first whose
    timesteps reach it) on the reference's parameters, bit for bit, that generation evaluated (--eval-every 5 would not
    evaluate it); the last line says why; config.json records the budget."""
    steps = [r["timesteps"] for r in reference]
    assert steps == sorted(set(steps)) and steps[0] > 0
    budget = steps[1] + 1
    out = tmp_path / "run"
    capsys.readouterr()
    assert main([*RUN, "--generations", "6", "--max-timesteps", str(budget), "--out", str(out)]) == 0
    rows = metrics(out)
    assert [r["generation"] for r in rows] == [0, 1, 2]
    assert [(r["timesteps"], r["params_sha256"]) for r in rows] == [(r["timesteps"], r["params_sha256"]) for r in reference[:3]]
    assert "eval_return" in rows[2] and "eval_return" not in rows[1]
    assert capsys.readouterr().out.splitlines() == [
        f"timestep budget reached: {steps[2]:,} timesteps >= --max-timesteps {budget:,}; 3 generations in all, "
        f"run directory {out}"
    ]
    assert json.loads((out / "config.json").read_text())["max_timesteps"] == budget


def test_the_budget_is_a_total_over_resumes(reference: list[dict], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A run stopped by a budget of generation 1's timesteps and resumed with generation 3's ends where the straight
    run does, bit for bit, with its rows; resumed again with that budget, it trains nothing and says why."""
    out = tmp_path / "run"
    assert main([*RUN, "--generations", "6", "--max-timesteps", str(reference[1]["timesteps"]), "--out", str(out)]) == 0
    assert len(metrics(out)) == 2
    budget = reference[3]["timesteps"]
    assert main(["train", "--resume", str(out), "--max-timesteps", str(budget), "--progress", "false"]) == 0
    assert [r["params_sha256"] for r in metrics(out)] == [r["params_sha256"] for r in reference[:4]]
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--progress", "false"]) == 0
    assert capsys.readouterr().out.startswith(
        f"nothing trained: the run is at {budget:,} timesteps, past --max-timesteps {budget:,}, which counts all of the "
        "run's timesteps, not more of them (raise it to train on); 4 generations in all"
    )
    assert len(metrics(out)) == 4


def test_when_generations_end_the_run_first_the_line_says_how_far_the_budget_got(
    reference: list[dict], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A budget --generations ends the run before is named in the last line, with the timesteps reached."""
    out = tmp_path / "run"
    capsys.readouterr()
    assert main([*RUN, "--generations", "2", "--max-timesteps", "10000000", "--out", str(out)]) == 0
    assert (
        capsys.readouterr()
        .out.strip()
        .endswith(
            f"; {reference[1]['timesteps']:,} of --max-timesteps 10,000,000 timesteps (--generations ended it: raise it to go on)"
        )
    )


BUILT: list[object] = []  # the envs make_model was called with


def make_model(env: object) -> torch.nn.Module:
    BUILT.append(env)
    return torch.nn.Linear(3, 1)


def sum_fitness(model: torch.nn.Module, pop: flipes.Population) -> torch.Tensor:
    return model(torch.ones(pop.size, 3)).sum(1)


def test_a_fitness_that_counts_no_env_steps_is_refused_and_a_rollout_fitness_counts_them(tmp_path: Path) -> None:
    """--max-timesteps beside a fitness of one's own that counts no steps is a one-line error naming the option, the
    fitness and the fix (a RolloutFitness given as the fitness itself), before the model is built (a --model may load for
    minutes) and anything is written; a RolloutFitness given as the fitness counts them, and the budget ends it."""
    BUILT.clear()
    with pytest.raises(flipes.UsageError, match=r"^--max-timesteps: 100 with --fitness .*sum_fitness, which counts no env") as e:
        flipes.train(env="none", model=make_model, fitness=sum_fitness, max_timesteps=100, out=str(tmp_path / "a"))
    assert "flipes.train(fitness=RolloutFitness(env)), which counts them (one called inside a function" in str(e.value)
    assert not (tmp_path / "a").exists() and not BUILT
    venv = flipes.rl.make_vector_env("flipes/CartPole-v1", 8, note=None)
    policy = flipes.rl.MLPPolicy(venv.single_observation_space, venv.single_action_space, hidden=[8])
    rollouts = flipes.rl.RolloutFitness(venv, episodes=1, seed=0)
    result = flipes.train(env="none", model=policy, fitness=rollouts, popsize=8, generations=50, max_timesteps=500,
                          out=str(tmp_path / "b"), progress=False, tensorboard=False, plot=False)  # fmt: skip
    steps = [r["timesteps"] for r in result.metrics]
    assert result.reason.startswith("timestep budget reached") and steps[-1] >= 500 > (steps[-2] if len(steps) > 1 else 0)


def test_a_negative_budget_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--max-timesteps -1 is refused, saying that 0 means no limit."""
    with pytest.raises(SystemExit):
        main([*RUN, "--max-timesteps", "-1", "--out", str(tmp_path / "run")])
    assert capsys.readouterr().err.strip() == "flipes: error: --max-timesteps: must be 0 or positive, got -1; 0 means no limit"


def test_the_progress_eta_is_that_of_the_sooner_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a budget of 1,000 steps and 100 steps a generation, the progress line's ETA after generation 1 (2 s in, one
    generation a second) is the 8 generations the budget leaves, 0:00:08, not the 98 of --generations 100."""
    import io

    import flipes.progress

    clock = iter([0.0, 1.0, 2.0])
    monkeypatch.setattr(flipes.progress.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    progress = flipes.progress.Progress(100, out, max_timesteps=1000)
    for gen in (0, 1):
        progress.update(
            {"generation": gen, "fitness_mean": 0.0, "fitness_max": 0.0, "seconds": 0.0, "timesteps": 100 * (gen + 1)}
        )
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("eta 0:01:39") and lines[1].endswith("eta 0:00:08"), lines
