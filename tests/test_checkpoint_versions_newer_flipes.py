"""Checkpoints across flipes versions: each file records who wrote it, and one written by a newer flipes (a newer
format, or an entry this flipes does not know) is refused whole, in one line naming it and the upgrade, never
half-loaded."""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import flipes
from flipes.checkpoint import FORMAT, NewerCheckpointError
from flipes.config import TrainConfig
from flipes.errors import UsageError
from flipes.resume import restore, version_changes


def _es() -> flipes.FlipES:
    torch.manual_seed(0)
    model = flipes.flipout(torch.nn.Sequential(torch.nn.Linear(3, 2)))
    return flipes.FlipES(model, popsize=4, sigma=0.1, lr=0.05, seed=0)


def _rewrap(state: dict[str, Any], path: Path, fmt: str = FORMAT, writer: str | None = None) -> None:
    """Write ``state`` as save_checkpoint does, in the format ``fmt``, as the flipes ``writer`` would."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    header = {"format": fmt, "sha256": hashlib.sha256(data).hexdigest(), "payload": torch.tensor(list(data), dtype=torch.uint8)}
    torch.save(header | ({"flipes": writer} if writer else {}), path)


def test_a_checkpoint_records_the_flipes_and_torch_versions_that_wrote_it(tmp_path: Path) -> None:
    """The header holds plain strings (weights_only loading reads them back) naming the flipes and torch versions."""
    path = flipes.save_checkpoint({"es": _es().state_dict()}, tmp_path / "ck.pt")
    header = torch.load(path, weights_only=True)
    assert header["format"] == FORMAT
    assert (header["flipes"], header["torch"]) == (flipes.__version__, str(torch.__version__))
    assert type(header["torch"]) is str and flipes.read_checkpoint(path)["es"]["generation"] == 0


@pytest.mark.parametrize("reader", ["read_checkpoint", "load_checkpoint"])
def test_a_newer_format_is_refused_naming_its_writer_not_offering_an_older_file(tmp_path: Path, reader: str) -> None:
    """A flipes-checkpoint/3 file is refused as a newer flipes's, naming the version that wrote it and the upgrade; a
    previous file beside it that reads is not offered (it is no way on to the newer run)."""
    es = _es()
    state = {"es": es.state_dict(), "config": {}, "timesteps": 0, "seconds": 0.0, "best": 0.0}
    path = tmp_path / ("checkpoint.pt" if reader == "load_checkpoint" else "ck.pt")
    flipes.save_checkpoint(state, path)
    flipes.save_checkpoint(state, path)  # a previous file that reads
    _rewrap(state, path, "flipes-checkpoint/3", writer="9.1.0")
    with pytest.raises(NewerCheckpointError) as caught:
        getattr(flipes, reader)(path)
    message = str(caught.value)
    assert "flipes 9.1.0" in message and "flipes-checkpoint/3" in message and "pip install -U flipes" in message
    assert "previous" not in message and "\n" not in message
    assert isinstance(caught.value, flipes.CheckpointError)


def test_load_state_dict_refuses_an_entry_it_does_not_know_and_loads_nothing() -> None:
    """A state holding an entry (or a config entry) no flipes up to this one writes is refused by name; the FlipES keeps
    its own parameters and generation."""
    source, target = _es(), _es()
    with source.population() as pop:
        fitness = source.model(torch.ones(pop.size, 3)).sum(1)
    source.tell(fitness)
    before = [p.clone() for p in target.params]
    for extra in ({"noise_schedule": torch.zeros(2)}, {"config": {**source.state_dict()["config"], "antithetic": 2}}):
        state = {**source.state_dict(), **extra}
        with pytest.raises(ValueError, match="does not know; nothing was loaded") as caught:
            target.load_state_dict(state)
        assert ("noise_schedule" in str(caught.value)) or ("config['antithetic']" in str(caught.value))
        assert target.generation == 0 and all(torch.equal(a, b) for a, b in zip(before, target.params, strict=True))
    state = source.state_dict()
    state["config"] = {**state["config"], "rank": state["config"].pop("noise_rank")}  # its name before: still read
    target.load_state_dict(state)
    assert target.generation == 1


def test_a_resume_refuses_an_option_a_newer_flipes_recorded(tmp_path: Path) -> None:
    """flipes train --resume of a checkpoint whose options include one this flipes does not have is one UsageError
    naming the option and the upgrade, before anything is loaded."""
    config = TrainConfig(env="none", fitness="x:y", popsize=4)
    es = _es()
    saved = {"es": es.state_dict(), "timesteps": 0, "seconds": 0.0, "best": 0.0,
             "config": {**vars(config), "shaping_temperature": 0.5}, "obs_filter": {}}  # fmt: skip
    flipes.save_checkpoint(saved, tmp_path / "checkpoint.pt")

    class State:  # what restore reads before it loads anything
        pass

    with pytest.raises(UsageError, match="the option 'shaping_temperature'") as caught:
        restore(State(), str(tmp_path), "cpu", None)  # type: ignore[arg-type]
    assert caught.value.option == "--resume" and "pip install -U flipes" in str(caught.value)
    assert "the entry 'obs_filter'" in str(caught.value)


def test_a_resume_of_a_file_another_torch_wrote_says_it_rounds_otherwise(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """flipes.train resuming a checkpoint whose header names another torch says so in a note naming both versions; one
    this torch wrote, or one written before headers named versions, continues without it."""
    run = tmp_path / "run"
    options = dict(env="flipes/CartPole-v1", popsize=4, hidden=[2], seed=0, progress=False, plot=False, tensorboard=False)
    flipes.train(generations=1, out=str(run), **options)
    path = run / "checkpoint.pt"
    assert version_changes(path) == []
    header = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in header.items() if k not in ("flipes", "torch")}, path)  # as written before
    assert version_changes(path) == []
    torch.save(header | {"torch": "2.5.0"}, path)
    capsys.readouterr()
    flipes.train(generations=2, resume=str(run), **(options | {"progress": True}))  # notes are progress output
    said = capsys.readouterr().err
    assert f"resumed with torch {torch.__version__} ({path} was written by torch 2.5.0" in said and "not bit for bit" in said


def test_load_policy_warns_of_options_a_newer_flipes_recorded(tmp_path: Path) -> None:
    """flipes.load_policy (flipes evaluate and export) of a checkpoint whose options include one this flipes does not
    have warns, naming it: the policy is built without it, which may not be the policy trained."""
    run = tmp_path / "run"
    flipes.train(env="flipes/CartPole-v1", popsize=4, hidden=[2], generations=1, out=str(run), progress=False, plot=False,
                 tensorboard=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none for the run's own checkpoint
        flipes.load_policy(run)
    state = flipes.load_checkpoint(run)
    state["config"]["activation"] = "gelu"
    flipes.save_checkpoint(state, run / "checkpoint.pt")
    with pytest.warns(UserWarning, match=r"does not know \(activation\).*pip install -U flipes"):
        flipes.load_policy(run)


def test_load_policy_names_the_option_config_json_and_the_checkpoint_differ_in(tmp_path: Path) -> None:
    """A run whose config.json records another --hidden than its checkpoint (edited by hand, or another run's checkpoint
    put in place) is refused naming both values, not only the size mismatch they cause."""
    run = tmp_path / "run"
    flipes.train(env="flipes/CartPole-v1", popsize=4, hidden=[2], generations=1, out=str(run), progress=False, plot=False,
                 tensorboard=False)  # fmt: skip
    recorded = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(recorded | {"hidden": [3]}))
    with pytest.raises(UsageError, match=r"--hidden: \[2\] in the checkpoint, \[3\] in config\.json") as caught:
        flipes.load_policy(run)
    assert "put the run's own checkpoint back" in str(caught.value) and "\n" not in str(caught.value)
