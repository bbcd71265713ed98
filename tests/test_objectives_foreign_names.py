"""EvoTorch's and evosax's names for several objectives, per-member data and shaping functions, given to ``FlipES`` or
``flipes.train``: refused naming flipes' way (one number per member, ``shaping=``), not with Python's bare
"unexpected keyword argument" or a list of every option."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import flipes

ONE_NUMBER = r"one number per member: combine .*flipes.shaping.feasible_first.*Several objectives and constraints"


@pytest.mark.parametrize(
    "keyword,message",
    [
        ({"objective_sense": ["max", "min"]}, r"EvoTorch's name; .*for a list of senses \(several objectives\) tell takes "),
        ({"eval_data_length": 2}, r"EvoTorch's Problem's name; FlipES takes no argument: tell takes "),
        ({"fitness_shaping_fn": flipes.shaping.z_score}, r"evosax's name; FlipES takes shaping=.*any function fitness"),
    ],
)
def test_flipes_refuses_other_libraries_objective_names_naming_its_way(keyword: dict, message: str) -> None:
    """``FlipES(..., objective_sense=[...])``, ``eval_data_length=`` and evosax 0.2's ``fitness_shaping_fn=`` are
    TypeErrors naming one number per member or ``shaping=``."""
    x = flipes.flipout(flipes.nn.Vector(torch.zeros(3)))
    expected = message + (ONE_NUMBER if "tell takes" in message else "")
    with pytest.raises(TypeError, match=expected):
        flipes.FlipES(x, popsize=4, sigma=0.1, **keyword)


def test_train_says_several_objectives_for_a_list_of_senses(tmp_path: Path) -> None:
    """``flipes.train(objective_sense=["max", "min"])`` says how to minimize and, for the list, that a fitness returns one
    number per member of several objectives; evosax's ``fitness_shaping_fn`` is named ``shaping``, EvoTorch's
    ``eval_data_length`` the fitness's one number per member."""
    common = {"env": "none", "out": str(tmp_path / "run")}
    with pytest.raises(flipes.UsageError, match=r"training maximizes .*; several objectives: return one number per member"):
        flipes.train(objective_sense=["max", "min"], **common)
    with pytest.raises(flipes.UsageError, match=r"evosax's fitness_shaping_fn is shaping here"):
        flipes.train(fitness_shaping_fn=flipes.shaping.z_score, **common)
    with pytest.raises(flipes.UsageError, match=r"EvoTorch's Problem's eval_data_length is fitness here \(one number per"):
        flipes.train(eval_data_length=2, **common)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "keyword,message",
    [
        ("norm_range", r"evosax's FitnessShaper's name; FlipES takes shaping=lambda f: \(f - f.min\(\)\)"),
        ("weights", r"no argument for objectives' weights: tell one number per member.*weight_decay= is an L2"),
        ("bounds", r"EvoTorch's Problem's name; FlipES takes no argument for box bounds: .*clamp\(lo, hi\)"),
        ("initial_bounds", r"EvoTorch's Problem's name; .*Vector\(torch.empty\(n\).uniform_\(lo, hi\)\)"),
    ],
)
def test_names_whose_closest_spelling_misleads_get_flipes_way(keyword: str, message: str) -> None:
    """evosax's ``norm_range`` (difflib offered ``noise_rank=``), objective ``weights`` (``weight_decay=``) and
    EvoTorch's ``bounds`` and ``initial_bounds`` (Python's bare error) name flipes' way instead."""
    x = flipes.flipout(flipes.nn.Vector(torch.zeros(3)))
    with pytest.raises(TypeError, match=message) as refused:
        flipes.FlipES(x, popsize=4, sigma=0.1, **{keyword: 1})
    assert "did you mean" not in str(refused.value)
