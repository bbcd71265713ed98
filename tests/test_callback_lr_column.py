"""The rows' ``lr`` column logs a step size a callback set (a schedule of one's own, a warm-up in ``on_train_start``), as
it logs ``--lr-decay``'s: the lr each generation's step took, from the first step that took another lr than the
optimizer was built with; a run whose lr nobody changed has no such column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_callbacks_es_settings_ranks import _fitness, _model

import flipes

KW = dict(env="none", popsize=8, seed=0, progress=False, tensorboard=False, plot=False, model=_model, fitness=_fitness, lr=0.1)


class Halve(flipes.Callback):
    """The lr halved after every generation; from ``start`` in on_train_start where given."""

    def __init__(self, start: float | None = None) -> None:
        self.start = start

    def on_train_start(self, state: Any) -> None:
        if self.start is not None:
            state.es.optimizer.param_groups[0]["lr"] = self.start

    def on_generation(self, state: Any, row: dict[str, Any]) -> None:
        for group in state.es.optimizer.param_groups:
            group["lr"] *= 0.5


def test_the_rows_log_the_lr_a_callbacks_schedule_set(tmp_path: Path) -> None:
    """lr 0.1 halved by a callback after each generation: generation 0 stepped at the built lr (no column), then every
    row logs the lr its step took, 0.05, 0.025, 0.0125; a warm-up set in on_train_start (0.4) is logged from row 0; a
    resume of the first run logs the lr it restored; a run without a callback logs none."""
    rows = flipes.train(out=str(tmp_path / "halved"), generations=4, callbacks=[Halve()], **KW).metrics
    assert [r.get("lr") for r in rows] == [None, 0.05, 0.025, 0.0125]
    warm = flipes.train(out=str(tmp_path / "warm"), generations=3, callbacks=[Halve(0.4)], **KW).metrics
    assert [r.get("lr") for r in warm] == [0.4, 0.2, 0.1]
    resumed = flipes.train(resume=str(tmp_path / "halved"), generations=5, callbacks=[Halve()], **KW).metrics
    assert [r.get("lr") for r in resumed] == [0.1 / 2**4]
    plain = flipes.train(out=str(tmp_path / "plain"), generations=2, **KW).metrics
    assert all("lr" not in r for r in plain)
