"""RunningNorm's cached scale follows statistics written by hand, as a port of another library's normalizer writes
them (OpenAI's ES starter's ``ob_mean`` and ``ob_std``)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from flipes.rl import MLPPolicy, RunningNorm


def _expected(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float = 1e-8, clip: float = 5.0) -> torch.Tensor:
    """``clip((x - mean)/√(var + eps), ±clip)``, the division as the norm computes it: times the reciprocal root."""
    return ((x - mean.to(x.dtype)) * (var + eps).rsqrt().to(x.dtype)).clamp(-clip, clip)


def test_in_place_writes_after_a_forward_reach_the_next_forward() -> None:
    """Statistics written in place after a forward (copy_, fill_, +=) normalize the next one, exactly as a fresh norm
    holding them would: the cache made at the first forward is not kept."""
    norm = RunningNorm(3)
    x = torch.tensor([[3.0, -4.0, 20.0], [0.5, 1.0, -2.0]], dtype=torch.float64)
    assert torch.equal(norm(x), x)  # no statistics yet: unchanged, and cached so
    mean, var = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), torch.tensor([4.0, 0.25, 1.0], dtype=torch.float64)
    norm.mean.copy_(mean)
    norm.var.copy_(var)
    norm.count.fill_(10)
    assert torch.equal(norm(x), _expected(x, mean, var))
    norm.mean += 1.0  # a second write after the cache was made again
    assert torch.equal(norm(x), _expected(x, mean + 1.0, var))


def test_assigned_statistics_reach_the_next_forward() -> None:
    """A statistics buffer assigned anew (``norm.mean = tensor``) normalizes the next forward."""
    norm = RunningNorm(2)
    norm.record(torch.tensor([[[1.0, 2.0], [3.0, 6.0]]]))
    norm.update()
    x = torch.tensor([[2.0, 4.0]])
    norm(x)
    mean = torch.tensor([0.0, 1.0], dtype=torch.float64)
    norm.mean = mean.clone()
    assert torch.equal(norm(x), _expected(x, mean, norm.var))


def test_policy_with_imported_starter_statistics_matches_its_formula() -> None:
    """An MLPPolicy that acted once, given OpenAI's ES starter's ``ob_mean`` and ``ob_std`` (var = std²), acts on
    ``clip((o - ob_mean) / ob_std, ±5)`` (to the 1e-8 in the root) from its next step on."""
    space = gym.spaces.Box(-10.0, 10.0, (3,), dtype=np.float64)
    policy = MLPPolicy(space, gym.spaces.Box(-1.0, 1.0, (1,)), hidden=(4,)).double()
    obs = torch.tensor([[1.0, 2.0, -7.0]], dtype=torch.float64)
    policy(obs)
    ob_mean, ob_std = torch.tensor([0.5, 1.0, -1.0], dtype=torch.float64), torch.tensor([2.0, 0.1, 1.0], dtype=torch.float64)
    policy.obs_norm.mean.copy_(ob_mean)
    policy.obs_norm.var.copy_(ob_std.square())
    policy.obs_norm.count.fill_(1e4)
    fresh = MLPPolicy(space, gym.spaces.Box(-1.0, 1.0, (1,)), hidden=(4,)).double()
    fresh.load_state_dict(policy.state_dict())
    assert torch.equal(policy(obs), fresh(obs))
    torch.testing.assert_close(policy.obs_norm(obs), ((obs - ob_mean) / ob_std).clamp(-5, 5), rtol=1e-7, atol=0)


def test_inference_mode_statistics_still_normalize() -> None:
    """A norm built under torch.inference_mode (no write counts) still normalizes, and follows an update."""
    with torch.inference_mode():
        norm = RunningNorm(2)
        x = torch.tensor([[1.0, 3.0], [3.0, 7.0]])
        assert torch.equal(norm(x), x)
        norm.record(x.unsqueeze(0))
        norm.update()
        assert torch.equal(norm(x), _expected(x, norm.mean, norm.var))


def test_count_written_alone_or_buffers_assigned_unwritten_reach_the_next_forward() -> None:
    """The count written alone ends the pass-through of a norm that had none; all three buffers assigned anew as
    never-written tensors (write counts all 0, as the ones they replace) reach the next forward too."""
    x = torch.tensor([[3.0, -4.0]], dtype=torch.float64)
    mean, var = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([4.0, 0.25], dtype=torch.float64)
    norm = RunningNorm(2)
    norm.mean.copy_(mean)
    norm.var.copy_(var)
    assert torch.equal(norm(x), x)  # count 0: unchanged
    norm.count.fill_(1)
    assert torch.equal(norm(x), _expected(x, mean, var))
    fresh = RunningNorm(2)
    assert torch.equal(fresh(x), x)
    fresh.mean, fresh.var, fresh.count = mean.clone(), var.clone(), torch.tensor(1.0, dtype=torch.float64)
    assert torch.equal(fresh(x), _expected(x, mean, var))


def test_buffers_assigned_twice_between_forwards_reach_the_next_forward() -> None:
    """A buffer assigned anew twice between two forwards (the second tensor may take the memory, and so the id, of
    the one the cache was made from) still reaches the next forward: 100 tries, each exact."""
    x = torch.tensor([[3.0, -4.0]], dtype=torch.float64)
    mean, var = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([4.0, 0.25], dtype=torch.float64)
    for _ in range(100):
        norm = RunningNorm(2)
        norm.mean.copy_(mean)
        norm.var.copy_(var)
        assert torch.equal(norm(x), x)
        norm.count = torch.tensor(1.0, dtype=torch.float64)
        norm.count = torch.tensor(2.0, dtype=torch.float64)
        assert torch.equal(norm(x), _expected(x, mean, var))
