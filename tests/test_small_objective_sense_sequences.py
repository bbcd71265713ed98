"""EvoTorch's ``objective_sense`` given as a tuple is refused as a list is, by ``FlipES`` and by ``flipes.train``: the
same message, naming one number per member for several senses; a single sense (a string) gets how to minimize alone.
Its content is not read: a wrong length or an unknown sense gets the same message, since flipes has no such option."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import flipes

SENSES = [["max", "min"], ("max", "min"), ("max", "min", "max"), ["maxx", 3]]


def _flipes_es_error(value: object) -> str:
    x = flipes.flipout(flipes.nn.Vector(torch.zeros(3)))
    with pytest.raises(TypeError) as refused:
        flipes.FlipES(x, popsize=4, sigma=0.1, objective_sense=value)
    return str(refused.value)


def _train_error(value: object, tmp_path: Path) -> str:
    with pytest.raises(flipes.UsageError) as refused:
        flipes.train(env="none", out=str(tmp_path / "run"), objective_sense=value)
    assert not (tmp_path / "run").exists()
    return str(refused.value)


def test_flipes_es_refuses_a_tuple_of_senses_as_a_list() -> None:
    """FlipES(objective_sense=...) raises the same TypeError for a list, a tuple, another length and unknown senses,
    naming maximize=False and one number per member."""
    messages = {_flipes_es_error(value) for value in SENSES}
    assert len(messages) == 1
    (message,) = messages
    assert 'maximize=False for "min"' in message and "for a list of senses (several objectives)" in message


def test_train_refuses_a_tuple_of_senses_as_a_list(tmp_path: Path) -> None:
    """flipes.train(objective_sense=...) raises the same UsageError for a list, a tuple, another length and unknown
    senses, naming several objectives; for one sense as a string, how to minimize without the objectives' part."""
    messages = {_train_error(value, tmp_path) for value in SENSES}
    assert len(messages) == 1
    (message,) = messages
    assert "training maximizes the fitness" in message
    assert message.endswith(
        "several objectives: return one number per member of them (README: 'Several objectives and constraints')"
    )
    for sense in ("min", "bogus"):
        one = _train_error(sense, tmp_path)
        assert "training maximizes the fitness" in one and "several objectives" not in one
