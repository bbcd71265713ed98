"""A convnet classifier on images, as a computer-vision user trains one: BatchNorm, pooling, a residual block and
channels_last inputs per member, and minibatches that walk epochs across a resumed run."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flipes

DT = torch.float64


class ResBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU (a ResNet basic block)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


def small_cnn() -> nn.Sequential:
    """1×8×8 images to 10 logits: conv-BN-ReLU, a residual block, max pooling, conv-BN-ReLU, average pooling, linear."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), ResBlock(8), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_each_member_of_a_cnn_with_batchnorm_and_a_skip_connection_is_its_plain_copy(mode: str, channels_last: bool) -> None:
    """Member n of a converted CNN (BatchNorm, a residual block, max and average pooling), given its B images among
    N·B rows, computes what the plain model with es.member_state_dict(n) computes on those B images (float64, to
    1e-12), in training mode (batch statistics over the member's own B images) and eval mode (running statistics),
    contiguous or channels_last; over two generations the populations leave every running statistic as it was."""
    torch.manual_seed(0)
    plain = small_cnn().to(DT)
    for m in plain.modules():  # running statistics of their own, so that eval mode reads something other than 0 and 1
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    model = flipes.flipout(copy.deepcopy(plain).train(mode == "train"))
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    N, B = 8, 5
    es = flipes.FlipES(model, popsize=N, sigma=0.1, groups=2, seed=0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for _ in range(2):
        x = torch.randn(B, 1, 8, 8, dtype=DT).contiguous(memory_format=layout)
        with es.population():
            rows = x.expand(N, B, 1, 8, 8).flatten(0, 1).contiguous(memory_format=layout)  # (N·B, C, H, W)
            out = model(rows).view(N, B, 10)
            for n in range(N):
                member = copy.deepcopy(plain).train(mode == "train")
                member.load_state_dict(es.member_state_dict(n))
                torch.testing.assert_close(out[n], member(x), rtol=0, atol=1e-12)
        es.tell(out.logsumexp(-1).mean(1))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in buffers.items())


def test_a_cnn_trained_on_epoch_minibatches_resumes_mid_epoch_bit_for_bit(tmp_path: Path) -> None:
    """flipes.train on images with BatchNorm, each generation's minibatch from pop.minibatch (2 generations an
    epoch): 3 generations resumed to 7 log the parameters of 7 run at once, row for row, the resume starting in the
    middle of epoch 1."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g)

    def fitness(model: nn.Module, pop: flipes.Population) -> torch.Tensor:
        idx = pop.minibatch(len(x), 16)
        logits = model(x[idx].expand(pop.size, 16, 1, 8, 8).flatten(0, 1))
        return -F.cross_entropy(logits, y[idx].repeat(pop.size), reduction="none").view(pop.size, 16).mean(1)

    kw = {"env": "none", "model": lambda env: small_cnn(), "fitness": fitness, "popsize": 8, "tensorboard": False, "plot": False,
          "progress": False, "eval_every": 100}  # fmt: skip
    whole = [r["params_sha256"] for r in flipes.train(**kw, generations=7, out=str(tmp_path / "whole")).metrics]
    first = [r["params_sha256"] for r in flipes.train(**kw, generations=3, out=str(tmp_path / "resumed")).metrics]
    rest = [r["params_sha256"] for r in flipes.train(**kw, generations=7, resume=str(tmp_path / "resumed")).metrics]
    assert len(set(whole)) == 7 and first + rest == whole
