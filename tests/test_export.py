"""A run's center policy exported with torch.export runs without flipes and gives the policy's actions."""

from __future__ import annotations

import copy
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import FAST_KW, once_per_session

import flipes
from flipes.commands import main

pytestmark = pytest.mark.skipif(torch.__version__ < (2, 4), reason="flipes export needs torch >= 2.4")

LOAD_WITHOUT_FLIPES = """
import sys
for name in ("flipes", "envs", "gymnasium"):  # any import of flipes, its envs or gymnasium fails: the program needs
    sys.modules[name] = None  # torch alone
import torch
torch.set_num_threads(int(sys.argv[1]))  # as the reference's: a GEMM's rounding may depend on the thread count
for directory in sys.argv[2:]:  # each DIR/policy.pt2 on the inputs DIR/inputs.pt, its outputs to DIR/out.pt
    program = torch.export.load(directory + "/policy.pt2").module()
    inputs = torch.load(directory + "/inputs.pt")
    outs = [program(*args) for args in inputs]
    torch.save(outs, directory + "/out.pt")
    tensors = [t for out in outs for t in (out if isinstance(out, tuple) else (out,))]
    print(directory, "requires grad:", any(t.requires_grad for t in tensors), [t.numpy().shape for t in tensors])  # as is
"""
CASES = [("flipes/CartPole-v1", "mlp"), ("flipes/Pendulum-v1", "mlp"), ("flipes/CartPole-v1", "gru")]


def export_a_run(env: str, policy: str, run: Path) -> list:
    """Train a tiny run of ``policy`` on ``env`` into ``run``, ``flipes export`` it, check the program's declared inputs
    and write run/inputs.pt, batches of 1 and 7 observations (two steps from a zero state for a GRU); what
    ``flipes.load_policy``'s policy gives on them."""
    flipes.train(**{**FAST_KW, "env": env}, policy=policy, hidden=[8, 8], generations=2, out=str(run))
    assert main(["export", str(run)]) == 0 and (run / "policy.pt2").is_file()
    declared = flipes.export.program_inputs(run / "policy.pt2")
    reference = flipes.load_policy(run)
    assert declared == [(torch.float32, (reference.obs_dim,))] + ([(torch.float32, (8,))] if policy == "gru" else [])
    assert reference.obs_norm.count.item() > 0  # the statistics in the program are real ones
    gen = torch.Generator().manual_seed(0)
    obs = [3 * torch.randn(b, reference.obs_dim, generator=gen) for b in (1, 7)]
    reference.requires_grad_(False)  # its state as an input with no graph, as a deployment passes it
    if policy == "gru":  # two steps from a zero state: the second takes the first's state
        first = reference(obs[1], torch.zeros(7, 8))
        inputs = [(obs[1], torch.zeros(7, 8)), (obs[1], first[1])]
        expect = [first, reference(obs[1], first[1])]
    else:
        inputs, expect = [(o,) for o in obs], [reference(o) for o in obs]
    torch.save(inputs, run / "inputs.pt")
    return expect


def case_dir(env: str, policy: str) -> str:
    return f"{env.split('/')[-1]}-{policy}"


def export_and_load(root: Path) -> None:
    """Each case's run exported under ``root``, with the policy's actions (expect.pt); then every case's program loaded
    in ONE process where flipes cannot be imported (each process costs seconds of imports), which writes each out.pt
    and prints a line per program (stdout.txt)."""
    runs = [root / case_dir(*case) for case in CASES]
    for case, run in zip(CASES, runs, strict=True):
        torch.save(export_a_run(*case, run), run / "expect.pt")
    cmd = [sys.executable, "-c", LOAD_WITHOUT_FLIPES, str(torch.get_num_threads()), *map(str, runs)]
    r = subprocess.run(cmd, timeout=120, cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    (root / "stdout.txt").write_text(r.stdout)


@pytest.fixture
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory export_and_load filled, once for the session (shared by pytest-xdist's workers)."""
    return once_per_session(tmp_path_factory, "exported-policies", export_and_load)


@pytest.mark.parametrize("env,policy", CASES)
def test_an_exported_policy_runs_without_flipes_and_acts_as_the_policy(env: str, policy: str, exported: Path) -> None:
    """``flipes export DIR`` writes DIR/policy.pt2; loaded in a process where flipes, its envs and gymnasium cannot be
    imported,
    it maps batches of 1 and 7 observations (normalized by the run's statistics) to exactly the actions
    of ``flipes.load_policy``'s policy at the same thread count: argmax for Discrete, tanh into the bounds for Box; a GRU
    policy's program takes and returns its state, zeros at the start; the actions need no torch.no_grad()
    (no autograd graph: .numpy() works on them as returned)."""
    run, stdout = exported / case_dir(env, policy), (exported / "stdout.txt").read_text()
    printed = [line for line in stdout.splitlines() if line.split(" ", 1)[0] == str(run)]
    assert len(printed) == 1 and "requires grad: False" in printed[0], stdout
    got, expect = torch.load(run / "out.pt"), torch.load(run / "expect.pt")
    for g, e in zip(got, expect, strict=True):
        for a, b in zip(*((x if isinstance(x, tuple) else (x,)) for x in (g, e)), strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b)


def test_export_refuses_what_it_cannot_trace_or_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run without an env, a path that is not .pt2 and an unwritable path are one-line errors; a run
    directory trained again with --overwrite loses the old run's program."""
    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=1, out=str(run))
    assert main(["export", str(run)]) == 0 and (run / "policy.pt2").is_file()
    flipes.train(**FAST_KW, generations=1, out=str(run), overwrite=True)
    assert not (run / "policy.pt2").exists()  # --overwrite takes the old run's program away too
    with pytest.raises(flipes.UsageError, match=r"--out: .*policy.pt: torch.export programs are .pt2 files"):
        flipes.export_policy(run, tmp_path / "policy.pt")
    with pytest.raises(flipes.UsageError, match="--out: cannot write"):
        flipes.export_policy(run, tmp_path / "missing" / "policy.pt2")
    (tmp_path / "fitness.py").write_text(
        "import torch\ndef model(env):\n    return torch.nn.Linear(2, 1)\n"
        "def fitness(model, pop):\n    return -model(torch.ones(pop.size, 2)).square().sum(1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    flipes.train(env="none", model="fitness:model", fitness="fitness:fitness", popsize=8, generations=1,
                 out=str(tmp_path / "custom"), progress=False, tensorboard=False, plot=False)  # fmt: skip
    with pytest.raises(flipes.UsageError, match=r"custom fitness \(--env none\): there are no observations to trace"):
        flipes.export_policy(tmp_path / "custom")


class _Memory(flipes.rl.RecurrentPolicy):
    """A recurrent policy of one's own: its state's shape is its own business."""

    def __init__(self, env: object) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 2)

    def forward(self, obs: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.net(obs).argmax(-1), state


class _Branchy(torch.nn.Module):
    """A policy whose Python branch reads its output's values: torch.export cannot trace it."""

    def __init__(self, env: object) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.net(obs)
        return out.argmax(-1) if out.sum() > 0 else out.argmin(-1)


def test_export_refuses_policies_it_cannot_shape_or_trace_and_a_program_that_acts_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recurrent policy other than GRUPolicy (its state's shape unknown) and a policy with a data-dependent branch are
    UsageErrors naming the run, the problem and what to do, and write nothing; a traced program that acts otherwise
    than the policy on the checked observations (here: torch.export made to trace a copy with the head negated) is a
    RuntimeError calling it a flipes bug, and writes nothing either; so is one that acts otherwise only beyond the
    normalization's clip (a copy that does not clip), which the wide observations of the check reach."""
    for cls, problem in (
        (_Memory, "_Memory is a recurrent policy whose state flipes cannot shape; export it with torch.export yourself"),
        (_Branchy, r"torch.export cannot trace its policy \(.*\); a policy of your own must trace without data-dependent"),
    ):
        run = tmp_path / cls.__name__
        flipes.train(**FAST_KW, generations=1, model=cls, out=str(run))
        with pytest.raises(flipes.UsageError, match=f"^{re.escape(str(run))}: {problem}"):
            flipes.export_policy(run, model=cls)
        assert not (run / "policy.pt2").exists()
    run = tmp_path / "mlp"
    flipes.train(**FAST_KW, generations=1, out=str(run))
    export = torch.export.export

    def negated(module: torch.nn.Module, args: tuple, **kwargs: object) -> torch.export.ExportedProgram:
        other = copy.deepcopy(module)
        with torch.no_grad():
            other.net[-1].weight.neg_()
            other.net[-1].bias.neg_()  # the other action wherever the logits differ
        return export(other, args, **kwargs)

    def unclipped(module: torch.nn.Module, args: tuple, **kwargs: object) -> torch.export.ExportedProgram:
        other = copy.deepcopy(module)
        other.obs_norm.clip = math.inf  # acts as the policy wherever the normalized observations lie within ±5
        return export(other, args, **kwargs)

    for wrong in (negated, unclipped):  # the second differs only on observations beyond the reset's
        monkeypatch.setattr(torch.export, "export", wrong)
        with pytest.raises(RuntimeError, match=f"^the exported program of {re.escape(str(run))} acts otherwise than its policy"):
            flipes.export_policy(run)
        assert not (run / "policy.pt2").exists()
