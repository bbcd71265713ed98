"""Properties the second round of small fixes claims and its own tests left unguarded: the float16 refusal reports the
size of the .grad weight decay made, ClipUp's rescaled velocity norm spans every parameter and group and leaves its
in-range steps those of the plain formula bit for bit, the thread-count refusals let the largest allowed count
through, and train's refusal of Dict actions closes the env it made."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch
from helpers import FAST_KW
from test_review_small_fixes import _half_es
from test_small2_dict_actions import DictActions

import flipes
import flipes.builders
from envs.cartpole import CartPoleVectorEnv
from flipes.errors import UsageError
from flipes.optim import ClipUp
from flipes.rl import make_vector_env


@pytest.mark.parametrize("weight_decay", [1e3, 1e4])
def test_float16_refusal_reports_the_largest_entry_of_the_decayed_grad(weight_decay: float) -> None:
    """The OverflowError of a float16 .grad that weight decay (weight_decay · 60) takes past 65504 names that .grad's
    largest entry, ĝ + weight_decay·θ in float32 (ĝ read off the same population's step without decay), not ĝ's (~4.8e4,
    in range), nor inf where the decay term alone (6e5 at 1e4) is past float16's range, to the message's 3 digits
    (rel 5e-3)."""
    es, fitness = _half_es(torch.float16, 0.0, fill=60.0)
    es.tell(fitness * 31)
    expected = max(float((p.grad.float() + weight_decay * 60.0).abs().max()) for p in es.params)
    es, fitness = _half_es(torch.float16, weight_decay, fill=60.0)
    with pytest.raises(OverflowError) as caught:
        es.tell(fitness * 31)
    top = float(re.search(r"reaches (\S+), past float16", str(caught.value)).group(1))
    assert top == pytest.approx(expected, rel=5e-3) and top > 65504  # the message gives 3 digits


@pytest.mark.parametrize("grouped", [False, True])
def test_clipup_rescaled_speed_is_the_norm_of_every_parameters_velocity(grouped: bool) -> None:
    """At lr = 1e20, where ‖v‖ overflows float32 and is rescaled, two parameters (in one group, or one each in two)
    move by 1e20 times their moves at lr = 1 over four steps, the 3rd and 4th clipped by the joint ‖v‖ (rtol 1e-5)."""
    grads = [torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.5, 4.0])]
    moved = {}
    for lr in (1.0, 1e20):
        ps = [torch.nn.Parameter(torch.zeros(len(g))) for g in grads]
        opt = ClipUp([{"params": [p]} for p in ps] if grouped else ps, lr=lr)
        for _ in range(4):
            for p, g in zip(ps, grads, strict=True):
                p.grad = g.clone()
            opt.step()
        moved[lr] = torch.cat([p.detach().double() for p in ps])
    torch.testing.assert_close(moved[1e20] / 1e20, moved[1.0], rtol=1e-5, atol=0)


def test_clipup_in_range_float32_steps_equal_the_plain_formula_bit_for_bit() -> None:
    """Float32 steps whose ‖g‖ and ‖v‖ are in range equal, bit for bit, the paper's formula computed in float32 with the
    plain norms (v ← m·v + lr·g/‖g‖; v ← v·min(1, max_speed/‖v‖); θ ← θ − v), over 30 steps of random gradients with
    three groups of different lr, momentum and max_speed: the out-of-range path takes no part in them."""
    gen = torch.Generator().manual_seed(2)
    sizes, cfgs = (5, 7, 3), ({"lr": 0.2}, {"max_speed": 0.01}, {"lr": 0.003, "momentum": 0.0, "max_speed": 1.0})
    ps = [torch.nn.Parameter(torch.randn(n, generator=gen)) for n in sizes]
    ref = [p.detach().clone() for p in ps]
    opt = ClipUp([{"params": [p], **c} for p, c in zip(ps, cfgs, strict=True)], lr=0.05)
    full = [{"lr": 0.05, "momentum": 0.9, "max_speed": 0.1, **c} for c in cfgs]
    vs = [torch.zeros(n) for n in sizes]
    for _ in range(30):
        gs = [torch.randn(n, generator=gen) * 1e-3 for n in sizes]
        for p, g in zip(ps, gs, strict=True):
            p.grad = g.clone()
        opt.step()
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gs]))
        for v, g, c in zip(vs, gs, full, strict=True):
            v.mul_(c["momentum"]).add_(g * (c["lr"] / norm))
        speed = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v) for v in vs]))
        for v, r, c in zip(vs, ref, full, strict=True):
            v.mul_(torch.clamp(c["max_speed"] / speed, max=1.0))
            r.sub_(v)
    assert all(torch.equal(p.detach(), r) for p, r in zip(ps, ref, strict=True))


def test_make_vector_env_takes_four_threads_per_core() -> None:
    """make_vector_env's threads= allows 4 per core, the bound of --env-threads: 4 × cores makes the env (a flipes/
    one: the count is checked before the engine is chosen)."""
    env = make_vector_env("flipes/CartPole-v1", 2, threads=4 * (os.cpu_count() or 1), note=None)
    env.close()


def test_torch_env_takes_as_many_step_threads_as_cores() -> None:
    """A flipes/ torch env takes num_threads equal to the core count (the bound is inclusive, as --threads')."""
    cores = os.cpu_count() or 1
    assert CartPoleVectorEnv(num_envs=2, num_threads=cores).num_threads == cores


def test_train_closes_the_env_whose_dict_actions_it_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """flipes.train's refusal of a Dict action space closes the vector env it made for it (no worker processes or
    EnvPool threads left behind by a UsageError)."""
    made: list[gym.vector.VectorEnv] = []

    def recorded(*args: Any, **kwargs: Any) -> gym.vector.VectorEnv:
        made.append(make_vector_env(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(flipes.builders, "make_vector_env", recorded)
    assert gym.spec("small2/DictActions-v0").entry_point is DictActions
    with pytest.raises(UsageError, match=r"^--env: small2/DictActions-v0: .*Dict"):
        flipes.train(**{**FAST_KW, "env": "small2/DictActions-v0", "generations": 1}, out=str(tmp_path / "run"))
    assert len(made) == 1 and made[0].closed
