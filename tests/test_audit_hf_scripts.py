"""The supervised and fine-tuning scripts refuse a bad option in one line before any training, not with a
traceback from FlipES or torch after it (es_finetune.py pretrains for minutes before its ES starts)."""

from __future__ import annotations

import math

import pytest
from helpers import ROOT, load_script

import flipes
from flipes.dist import SerialComm


@pytest.mark.parametrize(
    ("option", "value", "flag"),
    [
        ("sigma", 0.0, "--sigma"),
        ("sigma", math.nan, "--sigma"),
        ("lr", -1.0, "--lr"),
        ("pretrain_lr", math.inf, "--pretrain-lr"),
        ("backprop_lr", math.nan, "--backprop-lr"),
        ("digit_bonus", -1.0, "--digit-bonus"),
        ("noise_rank", -1, "--noise-rank"),
        ("threads", -1, "--threads"),
        ("batch", 2001, "--batch"),
    ],
)
def test_es_finetune_check_refuses_before_pretraining(option: str, value: float, flag: str) -> None:
    """es_finetune.py's check() raises a UsageError naming the option for each value that FlipES, torch or the
    minibatch would otherwise refuse only after pretraining (a batch above --train-size 2000 included)."""
    ft = load_script(ROOT / "scripts" / "es_finetune.py")
    args = ft.Args(train_size=2000, **{option: value})
    with pytest.raises(flipes.UsageError) as caught:
        ft.check(args, SerialComm())
    assert caught.value.option == flag


def test_es_finetune_check_accepts_its_defaults_and_quick_preset() -> None:
    """The defaults and the --quick preset (and a batch equal to --train-size) pass check()."""
    ft = load_script(ROOT / "scripts" / "es_finetune.py")
    ft.check(ft.Args(), SerialComm())
    ft.check(ft.Args(**ft.QUICK), SerialComm())
    ft.check(ft.Args(train_size=16, batch=16), SerialComm())


@pytest.mark.parametrize(("option", "value"), [("sigma", math.nan), ("lr", -1.0), ("lr", math.nan), ("batch", 1438)])
def test_digits_check_refuses_in_one_line(option: str, value: float) -> None:
    """digits.py's check() raises a UsageError naming the option for a NaN or negative step size and for a
    minibatch larger than the 1,437 training images (each was a traceback from FlipES or torch's expand)."""
    pytest.importorskip("sklearn")
    digits = load_script(ROOT / "scripts" / "digits.py")
    with pytest.raises(flipes.UsageError) as caught:
        digits.check(digits.Args(**{option: value}))
    assert caught.value.option == f"--{option}"
    digits.check(digits.Args(batch=1437))  # the whole training split is a valid minibatch


@pytest.mark.parametrize(
    ("option", "value", "flag"),
    [
        ("lr", math.nan, "--lr"),
        ("lr", -1.0, "--lr"),
        ("prior_sigma", math.nan, "--prior-sigma"),
        ("init_sigma", math.inf, "--init-sigma"),
        ("betas", [1.0, math.nan], "--betas"),
    ],
)
def test_bayes_digits_check_refuses_nan_and_bad_lr(option: str, value: object, flag: str) -> None:
    """bayes_digits.py's check() raises a UsageError naming the option for a NaN or infinite σ or β (a NaN β
    trained and selected silently) and a non-positive or NaN --lr (Adam's traceback before)."""
    bayes = load_script(ROOT / "scripts" / "bayes_digits.py")
    with pytest.raises(flipes.UsageError) as caught:
        bayes.check(bayes.Args(**{option: value}))
    assert caught.value.option == flag
    bayes.check(bayes.Args())
