"""A compiled model used the way a rollout uses it: called only compiled, several times a generation, for recurrent
policies and a transformer layer too; each member equals the plain module with that member's parameters."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import flipes

N = 8
DT = torch.float64
# torch 2.2 (flipes' fallback tells Dynamo's tracing apart there too) still fails these compiles inside torch itself
needs_is_compiling = pytest.mark.skipif(torch.__version__ < (2, 3), reason="torch < 2.3 fails these compiles")


class Recurrent(nn.Module):
    """A recurrent policy stepped one observation at a time, its state carried by the caller."""

    def __init__(self, cell: type[nn.RNNBase]) -> None:
        super().__init__()
        self.rnn, self.head = cell(4, 6, batch_first=True), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor, state: object = None) -> tuple[torch.Tensor, object]:
        y, state = self.rnn(x, state)
        return self.head(y[:, -1]), state


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x).mean(1)


def graphs() -> int:
    """Graphs Dynamo made since :func:`fresh_dynamo`."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def fresh_dynamo() -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # leaves the counters as they were
    counters.clear()


@needs_is_compiling
@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
def test_a_compiled_recurrent_policy_steps_each_member_as_its_plain_module(cell: type[nn.RNNBase]) -> None:
    """Stepped 3 times a generation with its state, only compiled (backend="eager"; Dynamo breaks the graph at the
    recurrent layer, as the README says): each member's outputs equal the plain module's with that member's parameters
    (es.member_state_dict) to float64 rounding, and generations after the first compile nothing new."""
    fresh_dynamo()
    torch.manual_seed(0)
    plain = Recurrent(cell).to(DT)
    model = flipes.flipout(copy.deepcopy(plain))
    es = flipes.FlipES(model, popsize=N, sigma=0.1, lr=0.01, seed=0, groups=2)
    compiled = torch.compile(model, backend="eager")
    xs = torch.randn(3, N, 1, 4, dtype=DT)
    for generation in range(3):
        with es.population() as pop:
            state, outs = None, []
            for x in xs:
                out, state = compiled(x, state)
                outs.append(out)
            members = [es.member_state_dict(m) for m in pop.members]
        es.tell(outs[-1].sum(1))
        if generation == 0:
            first = graphs()
        for i, member in enumerate(members):
            plain.load_state_dict(member)
            state = None
            for x, out in zip(xs, outs, strict=True):
                ref, state = plain(x[i : i + 1], state)
                torch.testing.assert_close(out[i], ref[0], rtol=0, atol=1e-12)
    assert graphs() == first


@needs_is_compiling
@pytest.mark.parametrize("options", [{}, {"noise_rank": 2, "groups": 2}])
def test_a_compiled_transformer_layer_is_one_graph_with_each_members_outputs(options: dict) -> None:
    """fullgraph=True (backend="eager") traces a population forward of nn.TransformerEncoderLayer (attention, norms,
    feed-forward) without a break, and each member's output equals the plain layer's with its parameters."""
    fresh_dynamo()
    torch.manual_seed(0)
    plain = Block().to(DT).eval()
    model = flipes.flipout(copy.deepcopy(plain))
    es = flipes.FlipES(model, popsize=N, sigma=0.1, lr=0.01, seed=0, **options)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(N, 4, 8, dtype=DT)
    with es.population() as pop:
        out = compiled(x)
        members = [es.member_state_dict(m) for m in pop.members]
    es.tell(out.sum(1))
    with torch.no_grad():
        for i, member in enumerate(members):
            plain.load_state_dict(member)
            torch.testing.assert_close(out[i], plain(x[i : i + 1])[0], rtol=0, atol=1e-12)


@needs_is_compiling
def test_a_rollout_of_only_compiled_calls_compiles_one_graph() -> None:
    """README: a converted model compiles as one graph inside a population, once. A rollout calls the compiled model
    several times a generation and never the eager one."""
    fresh_dynamo()
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).to(DT))
    es = flipes.FlipES(model, popsize=N, sigma=0.1, lr=0.01, seed=0)
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(N, 5, dtype=DT)
    for _ in range(2):
        with es.population():
            fitness = compiled(x).sum(1) + compiled(x).sum(1)
        es.tell(fitness)
    assert graphs() == 1


@needs_is_compiling
def test_benchmark_times_the_compiled_flipout_model_beside_the_eager_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """scripts/benchmark.py --compile BACKEND adds (g): (b)'s model under torch.compile, checked against (b)'s outputs
    first, and its time over (b)'s; without --compile the table has no such column."""
    from helpers import ROOT, load_script, script_state_kept

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    module = load_script(ROOT / "scripts" / "benchmark.py")
    capsys.readouterr()
    with script_state_kept():
        module.main(module.Args(quick=True, rank=0, mem_cap_gb=0.0, compile="eager"))
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| MLP"))
    row = next(line for line in out.splitlines() if line.startswith("| 17-64-64-6 | 64 |"))
    assert header.endswith("| (g) compiled (eager) ms | (g)/(b) |")
    assert row.endswith("x |") and row.count("|") == header.count("|")
