"""Review tests of the MPI error exchange, the callbacks' es_settings in checkpoints and the backprop-step hook: each
property here was left unchecked by the tests beside them (a hand mutation of the library went unnoticed)."""

from __future__ import annotations

import contextlib
import gc
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import run_thread_ranks
from test_callback_es_settings_resume import KW, OnceAtOne
from test_callbacks_es_settings_ranks import _model
from test_framework_steps_stale_grad import _generation, _setup
from test_mpi_fitness_error_one_rank import _failing, _sweep

import flipes
import flipes.training
from flipes.checkpoint import load_checkpoint


def test_the_backward_hooks_of_a_flipes_that_is_gone_are_removed() -> None:
    """A model told by one FlipES after another (a sweep's trials, restarts in a notebook) keeps one backward hook per
    parameter for a FlipES that is alive, not one more per FlipES ever built: a hook of a FlipES that is gone would
    run at every backward of the model, forever."""
    model, es, x = _setup()
    _generation(model, es, x)
    for seed in range(5):
        es = flipes.FlipES(model, popsize=8, sigma=0.1, seed=seed, optimizer=lambda p: torch.optim.SGD(p, lr=0.05))
        _generation(model, es, x)
    gc.collect()
    assert [len(p._backward_hooks or {}) for p in model.parameters()] == [1] * 4
    del es
    gc.collect()
    assert [len(p._backward_hooks or {}) for p in model.parameters()] == [0] * 4


def test_a_step_after_zeroing_only_some_of_tells_gradients_is_refused() -> None:
    """tell, zero_grad(set_to_none=False) of the last layer alone, a backward through the whole model: the first layer's
    .grad is still tell's -ĝ (plus the backward's), so a step would apply -ĝ to it twice; it is refused, and moves
    nothing."""
    model, es, x = _setup()
    _generation(model, es, x)
    model[2].zero_grad(set_to_none=False)
    model(x).pow(2).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="twice"):
        es.optimizer.step()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_a_backprop_step_is_allowed_for_its_generation_alone() -> None:
    """After a hybrid loop's backprop step (zero_grad(set_to_none=False), backward, step), the next generation's tell
    writes .grad again: a step right after it is refused again, not allowed by the last generation's backward."""
    model, es, x = _setup(momentum=0.9)
    _generation(model, es, x)
    model.zero_grad(set_to_none=False)
    model(x).pow(2).sum().backward()
    es.optimizer.step()
    _generation(model, es, x)
    with pytest.raises(RuntimeError, match="twice"):
        es.optimizer.step()


class StartDecay(flipes.Callback):
    """A weight decay of 0.05 set in on_train_start."""

    def on_train_start(self, state: Any) -> None:
        state.es.weight_decay = 0.05


def test_on_train_start_overrides_the_settings_a_checkpoint_records(tmp_path: Path) -> None:
    """A checkpoint records the weight decay (0.3) and shaping (z-score) a callback set; a resume takes them back before
    the callbacks' on_train_start, so a weight decay set there (0.05) is the one the resumed run trains with, beside the
    recorded shaping."""
    flipes.train(out=str(tmp_path / "run"), generations=3, callbacks=[OnceAtOne()], **KW)
    resumed = flipes.train(resume=str(tmp_path / "run"), generations=4, callbacks=[StartDecay()], **KW)
    assert resumed.es.weight_decay == 0.05 and resumed.es.shaping is flipes.shaping.z_score


def test_a_checkpoint_records_es_settings_only_where_a_callback_changed_them(tmp_path: Path) -> None:
    """A run whose callbacks set nothing on the FlipES writes a checkpoint without the entry es_settings (an older
    flipes, which refuses entries it does not know, still reads it); one whose callback set them records exactly those."""
    flipes.train(out=str(tmp_path / "plain"), generations=2, **KW)
    flipes.train(out=str(tmp_path / "set"), generations=3, callbacks=[OnceAtOne()], **KW)
    plain = load_checkpoint(tmp_path / "plain" / "checkpoint.pt")
    changed = load_checkpoint(tmp_path / "set" / "checkpoint.pt")
    assert "es_settings" not in plain
    assert changed["es_settings"] == {"weight_decay": 0.3, "shaping": "flipes.es.shaping:z_score"}


def test_a_fitness_error_on_rank_0_alone_is_raised_on_rank_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ValueError of rank 0's fitness at generation 1 (rank 1's is fine): rank 0 raises it, rank 1 a RuntimeError
    naming rank 0, the generation and the error, rather than waiting in the fitness exchange; both then train the next
    trial to the same parameters."""
    error = ValueError("rank 0's trial")
    (raised_0, params_0), (raised_1, params_1) = _sweep(tmp_path, monkeypatch, _failing(error, (0,)))
    assert raised_0 is error
    assert isinstance(raised_1, RuntimeError) and not isinstance(raised_1, threading.BrokenBarrierError), raised_1
    assert str(raised_1).startswith("rank 0 failed in generation 1's fitness (ValueError: rank 0's trial)"), raised_1
    assert torch.equal(params_0, params_1)


def test_a_usage_error_of_rank_0s_fitness_names_rank_0_on_rank_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A UsageError of rank 0's fitness reaches rank 1 as the same UsageError saying "(on rank 0 of 2)", as another
    rank's does: the cause is in rank 0's data or env, and rank 1's line must not read as its own mistake."""
    error = flipes.UsageError("--fitness", "rank 0's data is empty", "give every rank data")
    (raised_0, _), (raised_1, _) = _sweep(tmp_path, monkeypatch, _failing(error, (0,)))
    assert raised_0 is error
    assert isinstance(raised_1, flipes.UsageError) and str(raised_1) == f"{error} (on rank 0 of 2)", raised_1


def test_a_keyboard_interrupt_in_one_ranks_fitness_is_not_sent_to_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt of rank 1's fitness is raised by rank 1 at once, not sent on the fitness exchange (an
    interrupted rank must not wait in a collective the others, interrupted too, may never enter): rank 0 is left
    waiting (here: BrokenBarrierError once rank 1 has ended), not told of rank 1's failure."""
    monkeypatch.setattr(flipes.training, "_one_run_at_a_time", contextlib.nullcontext)  # two "processes" in threads
    kw = dict(env="none", popsize=8, groups=2, generations=3, progress=False, tensorboard=False, plot=False, model=_model)
    fitness = _failing(KeyboardInterrupt(), (1,))
    raised_0, raised_1 = run_thread_ranks(
        lambda comm: flipes.train(comm=comm, out=str(tmp_path / "run"), fitness=fitness, **kw), 2, timeout=20, release=0.2
    )
    assert isinstance(raised_1, KeyboardInterrupt), raised_1
    assert isinstance(raised_0, threading.BrokenBarrierError), raised_0
