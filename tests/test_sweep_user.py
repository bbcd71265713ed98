"""What a hyperparameter sweep of many ``flipes.train`` calls in one Python process meets: a run leaves the process's
global state as it found it, trials do not change each other's results, and a Ctrl-C skips a trial promptly."""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import flipes
from flipes.train_state import TrainResult

QUIET: dict[str, Any] = {"progress": False, "plot": False, "tensorboard": False}


def make_model(env: object) -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def fitness(model: nn.Module, pop: flipes.Population) -> torch.Tensor:
    return model(torch.ones(pop.size, 3)).sum(1)


def test_a_second_train_in_another_thread_is_refused_while_one_runs(tmp_path: Path) -> None:
    """Two ``flipes.train`` at once in threads of one process (Optuna's ``n_jobs=2``) would reseed the process's global
    random generators and torch's thread count under each other, their results depending on timing: the second is
    refused in one line naming the fix, and the first one's run ends untouched."""
    entered, release = threading.Event(), threading.Event()

    def waiting(model: nn.Module, pop: flipes.Population) -> torch.Tensor:
        entered.set()
        assert release.wait(60)
        return fitness(model, pop)

    results: list[Any] = []

    def first() -> None:
        try:
            results.append(flipes.train(env="none", model=make_model, fitness=waiting, popsize=4, generations=1,
                                        out=str(tmp_path / "first"), **QUIET))  # fmt: skip
        except BaseException as e:
            results.append(e)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert entered.wait(60)
        with pytest.raises(flipes.UsageError, match=r"another flipes\.train is running in this process.*one at a time"):
            flipes.train(env="none", model=make_model, fitness=fitness, popsize=4, generations=1,
                         out=str(tmp_path / "second"), **QUIET)  # fmt: skip
    finally:
        release.set()
        thread.join(60)
    assert len(results) == 1 and isinstance(results[0], TrainResult), results
    assert results[0].reason == "generations"
    assert not (tmp_path / "second").exists()
    # once it has ended, the next trial runs, in this thread as in any other
    flipes.train(env="none", model=make_model, fitness=fitness, popsize=4, generations=1, out=str(tmp_path / "next"), **QUIET)


def test_a_train_inside_a_callback_of_another_runs(tmp_path: Path) -> None:
    """A run started from a callback of another, in the same thread, is one after the other, not at once: it runs, and
    the outer run goes on."""
    inner: list[str] = []

    class Nested(flipes.Callback):
        def on_train_start(self, state: Any) -> None:
            inner.append(flipes.train(env="none", model=make_model, fitness=fitness, popsize=4, generations=1,
                                      out=str(tmp_path / "inner"), **QUIET).reason)  # fmt: skip

    result = flipes.train(env="none", model=make_model, fitness=fitness, popsize=4, generations=2, out=str(tmp_path / "outer"),
                          callbacks=[Nested()], **QUIET)  # fmt: skip
    assert inner == ["generations"] and result.reason == "generations" and len(result.metrics) == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
def test_a_forked_childs_train_runs_and_holds_the_guard_while_its_parent_thread_runs_one(tmp_path: Path) -> None:
    """A child forked while another thread of its parent runs ``flipes.train`` has no such thread (threading marks it
    ended): its own run is no run at once with another, so it runs, and while it runs it holds the one-run guard: a
    second thread of the child is refused. Exit codes: 0 as said, 3 the child's run refused, 4 its thread not refused."""
    entered, release = threading.Event(), threading.Event()

    def waiting(model: nn.Module, pop: flipes.Population) -> torch.Tensor:
        entered.set()
        assert release.wait(60)
        return fitness(model, pop)

    parent = {"env": "none", "model": make_model, "fitness": waiting, "popsize": 4, "generations": 1, **QUIET}
    thread = threading.Thread(target=lambda: flipes.train(**parent, out=str(tmp_path / "parent")))
    thread.start()
    try:
        assert entered.wait(60)
        with warnings.catch_warnings():  # Python 3.12's note on forking a threaded process: the point of the test
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: report by exit code alone, never return into pytest
            code = 5
            try:
                refused: list[bool] = []

                def second() -> None:
                    try:
                        flipes.train(env="none", model=make_model, fitness=fitness, popsize=4, generations=1,
                                     out=str(tmp_path / "second"), **QUIET)  # fmt: skip
                        refused.append(False)
                    except flipes.UsageError:
                        refused.append(True)

                class Meanwhile(flipes.Callback):
                    def on_train_start(self, state: Any) -> None:
                        other = threading.Thread(target=second)
                        other.start()
                        other.join(60)

                try:
                    flipes.train(env="none", model=make_model, fitness=fitness, popsize=4, generations=1,
                                 out=str(tmp_path / "child"), callbacks=[Meanwhile()], **QUIET)  # fmt: skip
                except flipes.UsageError:
                    code = 3
                else:
                    code = 0 if refused == [True] else 4
            finally:
                os._exit(code)
        deadline = time.monotonic() + 120
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if done[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child's flipes.train did not end in 120 s")
        assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        release.set()
        thread.join(60)


@pytest.mark.parametrize("during", ["callback", "evaluation"])
def test_a_ctrl_c_after_the_fitness_stops_after_that_generation(tmp_path: Path, during: str) -> None:
    """A Ctrl-C during a generation's evaluation or its callbacks (after its fitness) stops the run after that generation,
    as said at once, not after one more: 2 of 6 generations when it comes in generation 1; the checkpoint holds both,
    the signal handlers are the caller's again, and the next trial runs all its generations."""
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    def evaluate(model: nn.Module) -> float:
        if during == "evaluation" and len(calls) == 1:
            signal.raise_signal(signal.SIGINT)
        calls.append(1)
        return 0.0

    class CtrlC(flipes.Callback):
        def on_generation(self, state: Any, row: dict) -> None:
            if during == "callback" and row["generation"] == 1:
                signal.raise_signal(signal.SIGINT)

    calls: list[int] = []
    options = {"env": "none", "model": make_model, "fitness": fitness, "evaluate": evaluate, "popsize": 4, "eval_every": 1,
               "checkpoint_every": 1, **QUIET}  # fmt: skip
    result = flipes.train(generations=6, out=str(tmp_path / "a"), callbacks=[CtrlC()], **options)
    assert result.reason == "interrupted" and [row["generation"] for row in result.metrics] == [0, 1]
    assert flipes.load_checkpoint(tmp_path / "a")["es"]["generation"] == 2
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == previous
    calls.clear()
    during = "never"
    assert flipes.train(generations=3, out=str(tmp_path / "b"), **options).reason == "generations"


def test_max_seconds_counts_the_calls_set_up_too(tmp_path: Path) -> None:
    """``max_seconds`` is the wall time of the call, as a sweep's time box or a cluster job's limit needs: a model that
    takes 1 s to build leaves nothing of 0.5 s, so the run stops after its first generation (the loop's own time alone
    would have trained ~0.5 s of generations), and its reason's seconds are at least the second of set-up."""
    slept: list[float] = []

    def slow_model(env: object) -> nn.Module:
        slept.append(time.perf_counter())
        time.sleep(1.0)
        return make_model(env)

    result = flipes.train(env="none", model=slow_model, fitness=fitness, popsize=4, generations=1000, max_seconds=0.5,
                          out=str(tmp_path), **QUIET)  # fmt: skip
    assert len(slept) == 1 and result.reason.startswith("stopped after") and len(result.metrics) == 1, result.reason
    assert float(result.reason.split()[2]) >= 1.0


def test_a_warning_of_ones_fitness_is_shown_once_as_python_shows_it(tmp_path: Path) -> None:
    """Python shows a warning once per place (the "default" action): a fitness warning the same way every generation is
    shown once over 4 generations, not once a generation (a run reset the registry by changing the filters each
    generation); a run on an env before it, whose every member has one return (a tie of the task's, which an env run
    does not warn of), changes nothing of that."""

    def warning_fitness(model: nn.Module, pop: flipes.Population) -> torch.Tensor:
        warnings.warn("the fitness's own note", UserWarning, stacklevel=1)
        return fitness(model, pop)

    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()
        warnings.simplefilter("default")
        tied = flipes.train(env="flipes/CartPole-v1", hidden=[4], popsize=4, generations=2, eval_episodes=1, target=None,
                            max_episode_steps=1, out=str(tmp_path / "b"), **QUIET)  # fmt: skip
        assert all(row["fitness_max"] == row["fitness_min"] for row in tied.metrics)
        flipes.train(env="none", model=make_model, fitness=warning_fitness, popsize=4, generations=4, out=str(tmp_path / "a"),
                     **QUIET)  # fmt: skip
    assert [str(w.message) for w in seen] == ["the fitness's own note"]


@pytest.mark.filterwarnings("ignore::flipes.EqualFitnessWarning")  # 5-step CartPole episodes: every member scores 5
def test_a_rollout_fitness_keyed_by_another_seed_than_the_runs_is_warned(tmp_path: Path) -> None:
    """``flipes.train(seed=s, fitness=RolloutFitness(venv, seed=t))`` with t != s warns once, naming both seeds and the
    fix (every run seed of a sweep would replay t's episodes); with t == s it does not."""
    venv = flipes.rl.make_vector_env("CartPole-v1", 4)
    policy = flipes.rl.MLPPolicy(venv.single_observation_space, venv.single_action_space, hidden=(4,))
    run = {**QUIET, "env": "none", "model": policy, "popsize": 4, "generations": 1}
    with pytest.warns(UserWarning, match=r"RolloutFitness\(\.\.\., seed=0\) .* not the run's seed 3: .*build it with seed=3$"):
        flipes.train(**run, seed=3, fitness=flipes.rl.RolloutFitness(venv, max_steps=5), out=str(tmp_path / "a"))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*RolloutFitness")
        flipes.train(**run, seed=3, fitness=flipes.rl.RolloutFitness(venv, max_steps=5, seed=3), out=str(tmp_path / "b"))
