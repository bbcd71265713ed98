"""``torch.compile`` of a converted model: a population forward traces as one graph (no graph break in the
layers) and computes what the eager population computes, generation after generation without recompiling."""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import flipes

N = 8
DT = torch.float64
# torch 2.2 (flipes' fallback tells Dynamo's tracing apart there too) still fails these compiles inside torch itself
needs_is_compiling = pytest.mark.skipif(torch.__version__ < (2, 3), reason="torch < 2.3 fails these compiles")


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(1), nn.Linear(4 * 4 * 4, 6), nn.Tanh(), nn.Linear(6, 3)
    ).to(DT)


def decoder() -> nn.Module:
    """Transposed convs: one with output padding (low-rank noise runs factored), one grouped (its noise put in the
    kernel's (in, out // groups, ...) shape)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1), nn.ReLU(), nn.ConvTranspose2d(4, 4, 3, groups=2),
        nn.Flatten(1), nn.Linear(4 * 18 * 18, 3),
    ).to(DT)  # fmt: skip


def eager_then_compiled(compiled: nn.Module, model: nn.Module, es: flipes.FlipES, x: torch.Tensor) -> list[tuple]:
    """(eager, compiled) outputs of three generations; the eager call comes first (it removes the
    population's hooks, which Dynamo cannot trace: a graph break of es.population() itself)."""
    outs = []
    for _ in range(3):
        with es.population():
            eager = model(x)
            outs.append((eager, compiled(x)))
        es.tell(eager.sum(1))
    return outs


@needs_is_compiling
@pytest.mark.parametrize("options", [{}, {"groups": 2}, {"noise_rank": 2}, {"groups": 2, "noise_rank": 2, "mirrored": True}])
@pytest.mark.parametrize("make", [cnn, decoder])
def test_a_population_forward_compiles_to_one_graph_with_the_eager_bits(make: Callable[[], nn.Module], options: dict) -> None:
    """fullgraph=True: the layers read no state Dynamo cannot trace (the per-generation workspace keyed by
    inference mode broke the graph in every layer); the same operations give the same bits, for a CNN and a decoder
    of transposed convs."""
    torch._dynamo.reset()
    model = flipes.flipout(make())
    es = flipes.FlipES(model, popsize=N, sigma=0.1, lr=0.01, seed=0, **options)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(N, 3, 8, 8, dtype=DT)
    for eager, out in eager_then_compiled(compiled, model, es, x):
        assert torch.equal(out, eager)
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))  # outside a population: the mean network


@needs_is_compiling
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="inductor needs a C compiler")
def test_inductor_compiles_a_cnn_population_once_for_all_generations() -> None:
    """With the graph breaks, each conv layer's forward was its own frame, recompiled with dynamic sizes
    for the second layer, and inductor failed there (``ValueRangeError: Invalid ranges``)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = flipes.flipout(cnn())
    es = flipes.FlipES(model, popsize=N, sigma=0.1, lr=0.01, seed=0)
    compiled = torch.compile(model)
    x = torch.randn(N, 3, 8, 8, dtype=DT)
    outs = eager_then_compiled(compiled, model, es, x)
    for eager, out in outs:
        torch.testing.assert_close(out, eager, rtol=0, atol=1e-12)  # float64; inductor may sum in another order
    assert outs[1][0].sub(outs[0][0]).abs().max() > 1e-3  # new noise each generation, and the compiled graph follows it
    assert counters["frames"]["total"] == 1 and not counters["graph_break"]


@needs_is_compiling
def test_a_generation_may_begin_with_a_fullgraph_compiled_forward() -> None:
    """With fullgraph=True the compiled model may be a generation's first forward (the population's
    hooks noting that the model ran are left for later instead of removed inside the graph): tell sees
    that it ran, and the outputs equal the eager ones, generation after generation."""
    torch._dynamo.reset()
    model = flipes.flipout(cnn())
    es = flipes.FlipES(model, popsize=N, sigma=0.1, lr=0.01, seed=0)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(N, 3, 8, 8, dtype=DT)
    for _ in range(3):
        with es.population():
            out = compiled(x)
            assert torch.equal(out, model(x))
        with warnings.catch_warnings():
            warnings.simplefilter("error", flipes.OutsidePopulationWarning)
            es.tell(out.sum(1))


class ArgmaxPolicy(nn.Module):
    """A CartPole policy of the user's own: logits' argmax."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.body(obs).argmax(-1)


def test_a_run_of_a_compiled_model_is_the_run_of_the_model_itself(tmp_path: Path) -> None:
    """``flipes.train(model=torch.compile(net))`` records net's name and state-dict keys (no ``_orig_mod.``),
    and trains net's parameters bit for bit as ``model=net`` does (backend="eager"); its run resumes with
    the plain net to the same parameters, ``load_policy(model=net)`` loads it, and a FlipES of the compiled
    model gives ``member_state_dict``s that a plain net loads."""
    from tests.helpers import FAST_KW, metrics

    def model(compiled: bool) -> nn.Module:
        torch.manual_seed(0)  # the same initial parameters
        net = ArgmaxPolicy()
        return torch.compile(net, backend="eager") if compiled else net

    kw = {**FAST_KW, "generations": 3, "checkpoint_every": 1}
    plain = [r["params_sha256"] for r in flipes.train(**kw, model=model(False), out=str(tmp_path / "plain")).metrics]
    run = tmp_path / "compiled"
    flipes.train(**{**kw, "generations": 2}, model=model(True), out=str(run))
    assert json.loads((run / "config.json").read_text())["model"] == f"{__name__}:<ArgmaxPolicy object>"
    saved = flipes.load_checkpoint(run)["es"]["model"]
    assert list(saved) == list(ArgmaxPolicy().state_dict())
    flipes.train(resume=str(run), generations=3, model=model(False))
    assert [r["params_sha256"] for r in metrics(run)] == plain
    loaded, saved = flipes.load_policy(run, model=ArgmaxPolicy()).state_dict(), flipes.load_checkpoint(run)["es"]["model"]
    assert list(loaded) == list(saved) and all(torch.equal(loaded[k], saved[k]) for k in saved)

    compiled = flipes.flipout(model(True))
    es = flipes.FlipES(compiled, popsize=4, sigma=0.1, lr=0.1, seed=0)
    x = torch.randn(4, 4)
    with es.population():
        logits = flipes.nn.uncompiled(compiled).body(x)
    member = ArgmaxPolicy()
    member.load_state_dict(es.member_state_dict(2))
    assert torch.allclose(member.body(x[2]), logits[2], atol=1e-6)


def test_a_compiled_recurrent_policy_rolls_out_with_its_state(tmp_path: Path) -> None:
    """``flipes.train(model=torch.compile(GRUPolicy(...)))`` rolls the policy out carrying its state, as the plain
    policy does: every row's parameters, fitness and evaluation equal those of the plain policy's run (in parts
    with noise sampled per part too); the wrapper hid that it is a RecurrentPolicy, and the run stopped with an
    error asking to subclass it."""
    from tests.helpers import FAST_KW

    def make(compiled: bool):
        def model(env: object) -> nn.Module:
            torch.manual_seed(0)
            net = flipes.rl.GRUPolicy(env.single_observation_space, env.single_action_space, hidden=[8])
            return torch.compile(net, backend="eager") if compiled else net

        return model

    def rows(result: flipes.TrainResult) -> list[tuple]:
        return [(r["params_sha256"], r["fitness_mean"], r.get("eval_return")) for r in result.metrics]

    kw = {**FAST_KW, "groups": 4, "generations": 2, "eval_every": 1}
    for parts in ({}, {"members_per_pass": 2, "hold_noise": False}):
        plain = flipes.train(**kw, **parts, model=make(False), out=str(tmp_path / f"plain{len(parts)}"))
        compiled = flipes.train(**kw, **parts, model=make(True), out=str(tmp_path / f"compiled{len(parts)}"))
        assert rows(compiled) == rows(plain) and plain.metrics[-1]["eval_return"] is not None


@pytest.mark.parametrize("where", ["top", "nested"])
def test_a_compiled_layer_converts_to_the_layer_its_wrapper_calls(where: str) -> None:
    """``flipes.flipout(torch.compile(nn.Linear(...)))``, or a compiled Linear inside a Sequential: inside a population
    the compiled wrapper computes each member's outputs as the eager Flipout layer does (backend="eager": bit for
    bit), not the mean network's (a wrapper whose forward still called the replaced ``nn.Linear`` would run every
    member as the mean, silently, and ES would follow noise)."""
    torch.manual_seed(0)
    plain = nn.Linear(4, 3).to(DT)
    compiled = torch.compile(copy.deepcopy(plain), backend="eager")
    model = flipes.flipout(compiled if where == "top" else nn.Sequential(compiled, nn.Tanh()))
    reference = flipes.flipout(copy.deepcopy(plain) if where == "top" else nn.Sequential(copy.deepcopy(plain), nn.Tanh()))
    es = flipes.FlipES(model, popsize=N, sigma=0.5, seed=1)
    es_reference = flipes.FlipES(reference, popsize=N, sigma=0.5, seed=1)
    x = torch.randn(N, 4, dtype=DT)
    with es.population():
        members = model(x)
    with es_reference.population():
        want = reference(x)
    with torch.no_grad():
        mean = model(x)
    assert torch.equal(members, want) and not torch.equal(members, mean)


class ShiftHeld(nn.Module):
    """Holds the Flipout bias of its Linear under a name of its own and reads it in its forward (every member would
    read the mean bias there)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.shift = self.fc.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + self.shift


@needs_is_compiling
def test_a_compiled_plain_module_reading_an_evolved_parameter_it_holds_is_refused_as_eagerly() -> None:
    """Compiled (backend="eager"), a plain module's read of an evolved parameter it also holds is still noted while
    Dynamo traces the population's forward (it traces no watched alias: the read itself is noted), so the population
    ends in the eager model's ValueError naming the parameter, not in every member silently reading the mean."""
    model = flipes.flipout(ShiftHeld())
    compiled = torch.compile(model, backend="eager")
    es = flipes.FlipES(compiled, popsize=N)
    with pytest.raises(ValueError, match=r"read 1 evolved parameter\(s\) .*: shift \(held by ShiftHeld, also fc.bias\)"):
        with es.population():
            compiled(torch.randn(N, 3))


def test_a_compiled_models_parameters_are_named_as_the_models_own() -> None:
    """``flipes.flipout(torch.compile(net), frozen=[...])`` takes net's parameter names, and
    ``flipes.nn.parameter_report`` of the compiled model lists them, as ``es.report()`` and the ES state dict's model
    entry do (no ``_orig_mod.``): the frozen names given are net's own, not the wrapper's."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 2))
    plain_rows = flipes.nn.parameter_report(flipes.flipout(copy.deepcopy(net), frozen=["0.weight", "1"])).rows
    compiled = flipes.flipout(torch.compile(net, backend="eager"), frozen=["0.weight", "1"])
    assert flipes.nn.parameter_report(compiled).rows == plain_rows
    assert [r.how for r in plain_rows] == ["frozen", "flipout", "frozen", "frozen", "flipout", "flipout"]
    es = flipes.FlipES(compiled, popsize=N)
    assert es.report().rows == plain_rows
    assert list(es.state_dict()["model"]) == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]


def test_a_compiled_mlp_policy_is_pipelined_as_the_policy_itself() -> None:
    """EnvPool pipelines the rollouts of ``torch.compile(MLPPolicy(...))`` as of the plain policy: the wrapper is no
    MLPPolicy subclass, so a compiled policy lost the overlap of env steps and forwards (same returns, slower)."""
    import gymnasium as gym

    from flipes.rl.rollout import PIPELINE_MIN_ENVS, can_pipeline

    class PoolLike:  # what can_pipeline reads of an EnvPool vector env
        num_envs = PIPELINE_MIN_ENVS

        def send(self) -> None: ...

        def recv(self) -> None: ...

    box = gym.spaces.Box(-1.0, 1.0, (3,))
    policy = flipes.rl.MLPPolicy(box, gym.spaces.Discrete(2), hidden=[4])
    assert can_pipeline(PoolLike(), policy) and can_pipeline(PoolLike(), torch.compile(policy, backend="eager"))
