"""Properties the recent small fixes claim and their own tests left unguarded: the float16 gradient check counts weight
decay and leaves bfloat16 alone, finite_norm scales a list of tensors together, flipes train's --env-threads limit is
4 per core and its refusal says so, and each of train's notes reaches a stand-in sys.stderr of write alone."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
import torch
from helpers import FAST_KW, WriteOnly
from torch import nn

import flipes
from flipes.callbacks import OutcomePrinter
from flipes.config import TrainConfig, validate
from flipes.errors import UsageError
from flipes.optim import finite_norm
from flipes.rl.envs import print_note


def _half_es(dtype: torch.dtype, weight_decay: float, fill: float | None = None) -> tuple[flipes.FlipES, torch.Tensor]:
    """A FlipES over a Linear(3, 2) of ``dtype`` (its parameters all ``fill`` if given) with SGD, after its first
    population under raw shaping, and that population's fitness."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Linear(3, 2)).to(dtype)
    if fill is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(fill)
    es = flipes.FlipES(
        model, popsize=8, sigma=0.1, seed=0, shaping=flipes.shaping.raw, weight_decay=weight_decay,
        optimizer=lambda p: torch.optim.SGD(p, lr=1e-3),
    )  # fmt: skip
    with es.population():
        fitness = model(torch.randn(8, 3, generator=torch.Generator().manual_seed(1)).to(dtype)).float().sum(-1)
    return es, fitness


def test_float16_weight_decay_that_overflows_the_grad_is_refused() -> None:
    """A float16 ĝ in range (largest entry ~4.8e4: without weight decay the step is finite) whose weight decay term
    (1e3 · 60) takes ``.grad`` past 65504 raises OverflowError with the parameters unchanged, rather than stepping them
    to inf."""
    es, fitness = _half_es(torch.float16, 0.0, fill=60.0)
    es.tell(fitness * 31)
    assert all(bool(p.isfinite().all()) for p in es.params)  # ĝ alone fits float16
    es, fitness = _half_es(torch.float16, 1e3, fill=60.0)
    before = [p.detach().clone() for p in es.params]
    with pytest.raises(OverflowError, match="past float16's largest number 65504"):
        es.tell(fitness * 31)
    assert all(torch.equal(p, b) for p, b in zip(es.params, before, strict=True))
    assert all(p.grad is None for p in es.params) and es.generation == 0


def test_bfloat16_gradient_past_65504_steps() -> None:
    """bfloat16 has float32's range: a gradient of ~1e5 (raw shaping, fitness scale 1e5), which a float16 model
    refuses, steps a bfloat16 model's parameters to finite values without an error."""
    es, fitness = _half_es(torch.bfloat16, 0.0)
    es.tell(fitness * 1e5)
    assert es.generation == 1 and all(bool(p.isfinite().all()) for p in es.params)
    assert float(max(p.grad.float().abs().max() for p in es.params)) > 65504  # the gradient was past float16's range


def test_train_takes_four_env_threads_per_core_and_its_refusal_names_that_limit() -> None:
    """flipes train's --env-threads allows 4 threads per core (EnvPool threads), as the scripts' do: 4 × cores passes
    validation, one more is refused with a fix naming 4 × cores, not the core count that would itself pass."""
    cores = os.cpu_count() or 1
    validate(TrainConfig(env_threads=4 * cores))
    with pytest.raises(UsageError, match=rf"--env-threads: {4 * cores + 1} threads .*; use {4 * cores} or fewer \(0:"):
        validate(TrainConfig(env_threads=4 * cores + 1))


class _BrokenPipe:
    """A stream whose reader has ended: every write fails."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_the_note_of_a_lost_progress_stream_reaches_a_write_only_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The outcome printer whose stream breaks says so on sys.stderr, a write-only stand-in here, in one line (no
    AttributeError for its missing flush)."""
    stderr = WriteOnly()
    monkeypatch.setattr(sys, "stderr", stderr)
    state = types.SimpleNamespace(config=TrainConfig(generations=1), run_dir=tmp_path, timesteps=0,
                                  es=types.SimpleNamespace(generation=1))  # fmt: skip
    OutcomePrinter(_BrokenPipe()).on_train_end(state, "generations")  # type: ignore[arg-type]
    assert stderr.text.startswith("flipes: cannot write the progress lines (Broken pipe)") and stderr.text.count("\n") == 1


def test_print_note_writes_to_a_write_only_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """flipes.rl.envs.print_note, which train's notes and cautions go through, writes its one line to a write-only
    sys.stderr."""
    stderr = WriteOnly()
    monkeypatch.setattr(sys, "stderr", stderr)
    print_note("a note")
    assert stderr.text == "flipes: a note\n"


def test_a_resume_and_a_branch_write_their_notes_to_a_write_only_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With sys.stderr a write-only stand-in, a resume into a run directory with a killed write's temporary file
    writes its note of the removal there, and a branch from another run's checkpoint its history's note: both train."""
    run, other = tmp_path / "run", tmp_path / "other"
    flipes.train(**FAST_KW, generations=1, out=str(run))
    flipes.train(**{**FAST_KW, "popsize": 4}, generations=1, out=str(other))
    (run / "checkpoint.pt.tmp").write_bytes(b"x")
    (run / "other.pt").write_bytes((other / "checkpoint.pt").read_bytes())  # another run's, dropped here
    stderr = WriteOnly()
    monkeypatch.setattr(sys, "stderr", stderr)
    shown = {**FAST_KW, "progress": True}  # the branch's note is said with progress lines only
    flipes.train(**FAST_KW, generations=2, resume=str(run))
    flipes.train(**{**shown, "popsize": 4}, generations=2, resume=str(run / "other.pt"), out=str(tmp_path / "branch"))
    assert f"flipes: removed the temporary files checkpoint.pt.tmp in {run}" in stderr.text
    assert f"{run / 'other.pt'} is not a checkpoint of the run in" in stderr.text
    assert "the branch's metrics start" in stderr.text
    assert [flipes.load_checkpoint(d)["es"]["generation"] for d in (run, tmp_path / "branch")] == [2, 2]


def test_a_damaged_checkpoint_replaced_says_so_on_a_write_only_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With sys.stderr a write-only stand-in, a resume of previous.pt beside a damaged checkpoint.pt writes its note of
    the replacement there and trains to its end."""
    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=2, out=str(run))
    (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:100])
    stderr = WriteOnly()
    monkeypatch.setattr(sys, "stderr", stderr)
    flipes.train(**FAST_KW, generations=3, resume=str(run / "previous.pt"))
    assert stderr.text == (
        f"flipes: {run / 'checkpoint.pt'} is damaged: replaced by the state resumed from {run / 'previous.pt'}, which "
        "stays as it is\n"
    )
    assert flipes.load_checkpoint(run)["es"]["generation"] == 3


def test_finite_norm_of_tensors_of_far_apart_magnitudes_scales_them_together() -> None:
    """finite_norm of parameters one of which alone leaves float32's range (a bias of 3 beside a weight of 4e30): their
    joint norm, the float64 one within float32 rounding, whichever tensor comes first."""
    for parts in ([torch.tensor([3.0]), torch.tensor([4e30])], [torch.tensor([4e30]), torch.tensor([3.0])]):
        assert finite_norm(parts, float("inf")) == pytest.approx(4e30, rel=1e-6, abs=0)
