"""Instrumenting flipes.train with callbacks of one's own: what they add to a row reaches metrics.jsonl as strict JSON,
and the rows, hooks and sinks agree with what the loop computed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import flipes

DATA = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))


def bowl(model: torch.nn.Module, pop: Any) -> torch.Tensor:
    return -(model(DATA.expand(pop.size, *DATA.shape)) - 1).pow(2).mean((1, 2))


def linear(env: Any) -> torch.nn.Module:
    return torch.nn.Linear(4, 1)


class PerLayer(flipes.Callback):
    """A per-layer statistic as a list and a dict, one entry of each not finite (a layer whose norm overflowed)."""

    def on_generation(self, state: Any, row: dict[str, Any]) -> None:
        row["per_layer"] = [float("nan"), 1.0, (float("inf"), 2.0)]
        row["by_name"] = {"weight": float("-inf"), "bias": 0.5}


def test_non_finite_numbers_inside_a_callbacks_lists_and_dicts_are_written_as_null(tmp_path: Path) -> None:
    """A callback's list or dict entry holding NaN or ±inf is written as null, as a top-level one is: every line of
    metrics.jsonl stays strict JSON (json.loads with no NaN extension reads it) and the run trains to its end."""
    from flipes.callbacks import json_safe

    assert json.dumps(json_safe({"a": [float("nan"), {"b": float("inf")}], "c": 1.5}), allow_nan=False) == (
        '{"a": [null, {"b": null}], "c": 1.5}'
    )
    result = flipes.train(
        env="none", model=linear, fitness=bowl, popsize=8, generations=2, seed=1, out=str(tmp_path / "run"),
        progress=False, plot=False, tensorboard=False, callbacks=[PerLayer()],
    )  # fmt: skip
    assert result.reason == "generations"

    def strict(token: str) -> None:
        raise AssertionError(f"non-JSON constant {token} in metrics.jsonl")

    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line, parse_constant=strict) for line in lines]
    assert [row["generation"] for row in rows] == [0, 1]
    assert all(row["per_layer"] == [None, 1.0, [None, 2.0]] and row["by_name"] == {"weight": None, "bias": 0.5} for row in rows)


class RaiseAt(flipes.Callback):
    def __init__(self, generation: int) -> None:
        self.generation = generation

    def on_generation(self, state: Any, row: dict[str, Any]) -> None:
        if row["generation"] == self.generation:
            raise RuntimeError("a callback's own error")


def test_a_run_ended_by_an_exception_leaves_no_active_wandb_run_for_the_next(tmp_path: Path, monkeypatch: Any) -> None:
    """After a callback's exception ends a run logging to W&B, no W&B run is left active: the next flipes.train of the
    process (a sweep that catches the error) logs into a W&B run of its own, not the failed run's."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    options = dict(env="none", model=linear, fitness=bowl, popsize=8, generations=2, seed=1, progress=False, plot=False,
                   tensorboard=False, wandb=True)  # fmt: skip
    with pytest.raises(RuntimeError, match="a callback's own error"):
        flipes.train(out=str(tmp_path / "a"), callbacks=[RaiseAt(1)], **options)
    assert wandb.run is None
    flipes.train(out=str(tmp_path / "b"), **options)
    first, second = ((tmp_path / run / "wandb" / "flipes-run-id").read_text() for run in ("a", "b"))
    assert first != second
    assert [row["generation"] for row in flipes.read_metrics(tmp_path / "a")] == [0]


def tensorboard_steps(log_dir: Path) -> dict[str, dict[int, float]]:
    """Each scalar's value by step, as TensorBoard reads the events under ``log_dir`` (purged steps left out)."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_tensorboard_holds_every_row_of_metrics_jsonl_after_a_branch_or_a_resume_turning_it_on(tmp_path: Path) -> None:
    """TensorBoard's scalars are metrics.jsonl's numbers at the same generations (to float32) in a run resumed in place
    (the steps after its checkpoint purged), in a branch (--resume A --out B, which carries A's rows) and in a run
    resumed with TensorBoard turned on: the rows from before the resume are logged too."""
    pytest.importorskip("torch.utils.tensorboard")
    options = dict(env="none", model=linear, fitness=bowl, popsize=8, seed=1, progress=False, plot=False)
    flipes.train(generations=3, out=str(tmp_path / "a"), **options)
    flipes.train(generations=5, resume=str(tmp_path / "a"), out=str(tmp_path / "b"), **options)
    flipes.train(generations=2, out=str(tmp_path / "c"), tensorboard=False, **options)
    flipes.train(generations=4, resume=str(tmp_path / "c"), tensorboard=True, **options)
    flipes.train(generations=6, resume=str(tmp_path / "c"), **options)
    for run, generations in (("a", 3), ("b", 5), ("c", 6)):
        rows = flipes.read_metrics(tmp_path / run)
        assert [row["generation"] for row in rows] == list(range(generations))
        scalars = tensorboard_steps(tmp_path / run / "tensorboard")
        assert set(scalars) == {k for k, v in rows[0].items() if isinstance(v, int | float) and k != "generation"}
        for key, steps in scalars.items():
            assert steps == pytest.approx({row["generation"]: row[key] for row in rows}, rel=1e-6), (run, key)


class Boom(flipes.Callback):
    """Raises in the hook named ``where`` (at generation ``at`` for on_generation)."""

    def __init__(self, where: str, at: int = -1) -> None:
        self.where, self.at = where, at

    def on_train_start(self, state: Any) -> None:
        if self.where == "start":
            raise RuntimeError("boom")

    def on_generation(self, state: Any, row: dict[str, Any]) -> None:
        if self.where == "generation" and row["generation"] == self.at:
            raise RuntimeError("boom")

    def on_train_end(self, state: Any, reason: str) -> None:
        if self.where == "end":
            raise RuntimeError("boom")


@pytest.mark.parametrize(
    ("where", "note"),
    [("generation", "Boom.on_generation of generation 3; the last checkpoint (after generation 1) stays"),
     ("start", "Boom.on_train_start; the last checkpoint (before any generation) stays"),
     ("end", "Boom.on_train_end, once the run had ended (stopped: generations); the last checkpoint (after generation 3) stays")],
)  # fmt: skip
def test_a_callbacks_exception_is_noted_with_its_hook_generation_and_the_kept_checkpoint(
    tmp_path: Path, where: str, note: str
) -> None:
    """A user callback raising in on_train_start, on_generation or on_train_end ends the run with its own exception,
    to which a note names the callback's hook, the generation and the checkpoint that stays with the way to resume;
    the checkpoint is the one the note names."""
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match=r"^boom") as e:
        flipes.train(env="none", model=linear, fitness=bowl, popsize=8, generations=4, checkpoint_every=2, out=str(run),
                     callbacks=[Boom(where, at=3)], progress=False, plot=False, tensorboard=False)  # fmt: skip
    assert e.value.__notes__ == [f"flipes: raised in {note}: --resume {run} continues from it"]
    kept = {"generation": 2, "start": 0, "end": 4}[where]
    assert flipes.load_checkpoint(run)["es"]["generation"] == kept


class SetSigma(flipes.Callback):
    def on_generation(self, state: Any, row: dict[str, Any]) -> None:
        state.es.sigma = 0.01


def test_setting_sigma_from_a_callback_names_flipes_trains_sigma_options(tmp_path: Path) -> None:
    """es.sigma set from a flipes.train callback is refused naming the options that schedule σ there (--sigma-decay,
    --sigma-min, --sigma-lr), not FlipES(sigma=...), which flipes.train builds itself."""
    with pytest.raises(AttributeError, match=r"in flipes.train it is --sigma with --sigma-decay and --sigma-min .*--sigma-lr"):
        flipes.train(env="none", model=linear, fitness=bowl, popsize=8, generations=2, out=str(tmp_path / "run"),
                     callbacks=[SetSigma()], progress=False, plot=False, tensorboard=False)  # fmt: skip


class FakeClock:
    """A wall clock that stands still but for sleep(), which moves it on: two runs inside one second, whatever the
    machine's speed."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_resume_in_the_same_second_as_the_last_event_file_is_read_by_tensorboard_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorBoard orders a run's event files by name: the second, host, pid and an unpadded counter. A resume made
    in the second of the last event file, with the counter going from 9 to 10, still gets scalars of each generation
    once, the resumed run's after its checkpoint (without the wait for the next second the resume's file sorted first
    and the first run's generation 2 was kept beside the resumed one)."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    writer = pytest.importorskip("tensorboard.summary.writer.event_file_writer")
    clock = FakeClock(1_800_000_000.25)
    monkeypatch.setattr(writer, "time", clock)
    monkeypatch.setattr(flipes.callbacks, "time", clock, raising=False)
    monkeypatch.setattr(writer, "_global_uid", writer.AtomicCounter(9))
    kw = {"env": "none", "model": linear, "fitness": bowl, "popsize": 8, "out": str(tmp_path), "tensorboard": True,
          "progress": False, "plot": False}  # fmt: skip
    flipes.train(**kw, generations=3, checkpoint_every=2)
    flipes.train(**kw, generations=4, resume=str(tmp_path / "previous.pt"))
    names = sorted(p.name for p in (tmp_path / "tensorboard").iterdir())
    assert [name.rsplit(".", 1)[-1] for name in names] == ["9", "10"]  # made in that order, read in that order
    events = accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    rows = flipes.read_metrics(tmp_path)
    assert [(e.step, e.value) for e in events.Scalars("fitness_mean")] == [
        (r["generation"], pytest.approx(r["fitness_mean"], rel=1e-6)) for r in rows
    ]
    assert [r["generation"] for r in rows] == [0, 1, 2, 3]
