"""What load_policy and evaluate_policy give back: the trained dtype, repeatable draws, the checkpoint asked for, and
errors naming their cause."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import FAST_KW

import flipes


def test_a_float64_run_loads_as_float64_in_a_float32_process(tmp_path: Path) -> None:
    """A run begun under ``torch.set_default_dtype(torch.float64)`` and loaded in a float32 process keeps its float64
    weights bit for bit (not rounded to float32), and the policy's actions equal the trained model's exactly."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        result = flipes.train(**{**FAST_KW, "env": "flipes/Pendulum-v1"}, hidden=[8], generations=1, out=str(tmp_path / "run"))
    finally:
        torch.set_default_dtype(default)
    policy = flipes.load_policy(result.run_dir)
    trained = result.model.eval().state_dict()
    for name, value in policy.state_dict().items():
        assert value.dtype == trained[name].dtype and torch.equal(value, trained[name]), name
    obs = 3 * torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(policy(obs), result.model(obs))


class _Sampling(torch.nn.Module):
    """A policy that samples its actions from torch's global generator."""

    def __init__(self, env: object) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (self.net(obs) + torch.randn(*obs.shape[:-1], 2, device=obs.device)).argmax(-1)


def test_evaluate_policy_of_a_sampling_policy_is_the_same_for_the_same_seed() -> None:
    """``evaluate_policy`` seeds the global generators from its seed, as training's evaluation does: a policy that samples
    its actions gets the same returns from the same seed however much was drawn before, in one process."""
    policy = _Sampling(None)
    first = flipes.evaluate_policy(policy, "CartPole-v1", 5, seed=3)
    torch.randn(100)  # the process's generator moved on
    assert torch.equal(flipes.evaluate_policy(policy, "CartPole-v1", 5, seed=3), first)


def test_a_checkpoint_named_by_its_file_name_is_read_from_the_run_directory(tmp_path: Path, monkeypatch) -> None:
    """``--checkpoint previous.pt`` given from another working directory loads the run's own previous.pt (the file
    ``RUN/previous.pt``, its weights exactly); a .pt name that is neither there nor in the run is one line saying
    so."""
    result = flipes.train(**FAST_KW, hidden=[4], generations=2, checkpoint_every=1, out=str(tmp_path / "run"))
    monkeypatch.chdir(tmp_path)
    by_name = flipes.load_policy(result.run_dir, checkpoint="previous.pt")
    by_path = flipes.load_policy(result.run_dir, checkpoint=str(result.run_dir / "previous.pt"))
    assert all(torch.equal(a, b) for a, b in zip(by_name.state_dict().values(), by_path.state_dict().values(), strict=True))
    with pytest.raises(flipes.UsageError, match=r"^--checkpoint: 'gone\.pt': no such file, nor in .*; check the path$"):
        flipes.load_policy(result.run_dir, checkpoint="gone.pt")


def test_an_env_of_other_spaces_given_to_load_policy_is_named_as_the_cause(tmp_path: Path) -> None:
    """``load_policy(run, env=...)`` with an env whose spaces differ from the run's (Pendulum's for a CartPole run)
    is refused in one line naming the env given and the fix, not the checkpoint as another run's."""
    result = flipes.train(**FAST_KW, hidden=[4], generations=1, out=str(tmp_path / "run"))
    other = flipes.rl.make_vector_env("Pendulum-v1", 1)
    fix = r"give env= an env with the run's observation and action spaces, or leave it out$"
    with pytest.raises(flipes.UsageError, match=r"than the one built for the env given \(.*\); " + fix):
        flipes.load_policy(result.run_dir, env=other)
