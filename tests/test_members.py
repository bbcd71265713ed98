"""One member's explicit parameters: ``es.member_parameters(i)`` and ``es.member_state_dict(i)``.

Checked against tests/reference.py, which builds every member's weights by index arithmetic from the
sampled noise, and against the population forward itself through a plain torch copy of the model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from reference import member_parameters
from test_layers import Scale  # bare parameters used elementwise: dense per-member noise
from torch import Tensor, nn

import flipes

DT = torch.float64
N = 8
# FlipES options: mirrored twins, several ε groups, low-rank ε, adaptive σ (one σ per slot)
SETTINGS = [
    dict(mirrored=False, groups=1),
    dict(mirrored=True, groups=1),
    dict(mirrored=True, groups=2),
    dict(mirrored=False, groups=4),
    dict(mirrored=True, groups=2, noise_rank=2),
    dict(mirrored=False, groups=1, noise_rank=1),
    dict(mirrored=True, groups=4, sigma_lr=0.1),
]


def ids(setting: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in setting.items())


class Zoo(nn.Module):
    """A parameter of every kind (only its parameters matter, it has no forward): an embedding with a
    padding row tied to a head with a bias of its own, a grouped conv, a linear whose bias rides in its
    weight's noise, a LayerNorm and bare parameters (dense noise), an LSTM cell (two weights), a bias
    shared by two linears (dense), a frozen linear and a linear with a frozen weight."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 6, padding_idx=0)
        self.head = nn.Linear(6, 11)
        self.head.weight = self.emb.weight
        self.conv = nn.Conv2d(4, 6, 3, groups=2)
        self.fc = nn.Linear(6, 5)
        self.norm = nn.LayerNorm(5)
        self.cell = nn.LSTMCell(5, 3)
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
        self.b.bias = self.a.bias
        self.scale = Scale(3)
        self.frozen = nn.Linear(3, 3).requires_grad_(False)
        self.half_frozen = nn.Linear(3, 2)
        self.half_frozen.weight.requires_grad_(False)


def make_es(model: nn.Module, setting: dict, seed: int = 3, **kw) -> flipes.FlipES:
    es = flipes.FlipES(model, popsize=N, sigma=0.2, seed=seed, **setting, **kw)
    if es.log_sigma is not None:  # a different σ for every slot
        es.log_sigma += torch.linspace(-0.4, 0.4, len(es.log_sigma), dtype=torch.float64)
    return es


def assert_members_equal_reference(es: flipes.FlipES, model: nn.Module, exact: bool) -> float:
    """Every member's ``member_parameters`` against the reference (the frozen parameters: their values);
    returns the largest difference."""
    expected = member_parameters(es, model)
    names = [name for name, _ in model.named_parameters()]
    plain = dict(model.named_parameters())
    worst = 0.0
    for i in range(N):
        got = es.member_parameters(i)
        assert list(got) == names
        for name, value in got.items():
            p = plain[name]
            assert value.dtype == p.dtype and value.device == p.device and not value.requires_grad
            want = expected[i].get(name, p)  # the reference leaves frozen parameters out
            assert name in expected[i] or not p.requires_grad
            worst = max(worst, (value - want).abs().max().item())
            if exact:
                assert torch.equal(value, want), (i, name)
    assert worst <= 1e-12
    return worst


@pytest.mark.parametrize("setting", SETTINGS, ids=ids)
def test_every_member_equals_the_reference_bit_for_bit(setting: dict, device: torch.device) -> None:
    """Every member's parameters equal θ̄ + σu_n built by index arithmetic from the sampled noise, for
    every parameter kind (tied, shared bias, dense, conv, LSTM, padding row, frozen), mirrored twins,
    several groups and per-slot σ: bit for bit with full-rank noise, within 1e-12 with low-rank ε."""
    torch.manual_seed(0)
    model = flipes.flipout(Zoo().to(device, DT))
    es = make_es(model, setting)
    with es.population():
        assert_members_equal_reference(es, model, exact=setting.get("noise_rank") is None)
    assert es.member_parameters(N - 1).keys() == dict(model.named_parameters()).keys()  # after the block, before tell


def test_a_transposed_weight_equals_the_reference() -> None:
    """A weight stored (in, out) (transformers' Conv1D) gets its member's perturbation in its own layout."""
    conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(conv1d(5, 4), nn.Tanh(), conv1d(3, 5)).to(DT))
    es = make_es(model, dict(mirrored=True, groups=2))
    with es.population():
        assert_members_equal_reference(es, model, exact=True)


def test_members_keep_the_parameters_dtype_and_are_snapshots() -> None:
    """A bfloat16 model's members are bfloat16 and equal the reference; they are new tensors (a frozen parameter's
    too: none shares a parameter's storage) that a later update of the model does not change."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 2)).to(torch.bfloat16)
    plain[1].bias.requires_grad_(False)  # frozen: its member value is its plain value, still a copy
    model = flipes.flipout(plain)
    es = make_es(model, dict(mirrored=True, groups=2))
    with es.population():
        assert_members_equal_reference(es, model, exact=True)
        first = es.member_parameters(0)
    params = dict(model.named_parameters())
    assert all(v.untyped_storage().data_ptr() != params[k].untyped_storage().data_ptr() for k, v in first.items())
    kept = {k: v.clone() for k, v in first.items()}
    es.tell(torch.randn(N))
    assert all(torch.equal(first[k], kept[k]) for k in kept)


class MLP(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Linear(5, 16), nn.Tanh(), nn.LayerNorm(16), nn.Linear(16, 3))


class CNN(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, groups=2), nn.Flatten(), nn.Linear(6 * 4 * 4, 2)
        )


class Decoder(nn.Sequential):
    """Transposed convs, their kernels stored (in, out // groups, ...): one with output padding, one grouped."""

    def __init__(self) -> None:
        super().__init__(
            nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(4, 6, 2, groups=2),
            nn.Flatten(),
            nn.Linear(6 * 7 * 7, 2),
        )


class LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 6, num_layers=2, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.lstm(x)[0][:, -1])


MODELS: list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]] = [
    ("mlp", MLP, (5,)),
    ("cnn", CNN, (3, 6, 6)),
    ("decoder", Decoder, (3, 3, 3)),
    ("lstm", LSTMNet, (7, 4)),
]


@pytest.mark.parametrize("setting", [SETTINGS[1], SETTINGS[3], SETTINGS[4], SETTINGS[6]], ids=ids)
@pytest.mark.parametrize("name,make,shape", MODELS, ids=[m[0] for m in MODELS])
def test_a_plain_copy_loaded_with_a_member_computes_that_members_outputs(
    name: str, make: Callable[[], nn.Module], shape: tuple[int, ...], setting: dict, device: torch.device
) -> None:
    """``plain.load_state_dict(es.member_state_dict(i))`` makes the unconverted torch model compute row i
    of the population forward (float64, within 1e-11), for an MLP, a CNN, a transposed-conv decoder and an LSTM."""
    torch.manual_seed(1)
    original = make().to(device, DT)
    model = flipes.flipout(copy.deepcopy(original))
    es = make_es(model, setting)
    x = torch.randn(N, *shape, dtype=DT, device=device)
    with es.population():
        out = model(x)
    plain = copy.deepcopy(original)
    for i in range(N):
        plain.load_state_dict(es.member_state_dict(i))
        with torch.no_grad():
            torch.testing.assert_close(plain(x[i : i + 1]), out[i : i + 1], atol=1e-11, rtol=0)
    mean = model.state_dict()  # the model itself keeps its mean parameters
    assert all(torch.equal(value, mean[key]) for key, value in original.state_dict().items())


def test_a_state_dict_holds_a_tied_parameter_under_each_name_and_copies_the_buffers() -> None:
    """member_state_dict puts the member's value under every name of a tied parameter and copies the
    buffers unchanged (a BatchNorm's running statistics)."""
    torch.manual_seed(0)
    model = flipes.flipout(Zoo().to(DT))
    model.bn = nn.BatchNorm1d(3).to(DT)
    model.bn.requires_grad_(False)
    model.bn.running_mean.normal_()
    es = flipes.FlipES(model, popsize=N, sigma=0.2, seed=1)
    with es.population():
        state, params = es.member_state_dict(5), es.member_parameters(5)
    assert state.keys() == model.state_dict().keys()
    assert torch.equal(state["head.weight"], params["emb.weight"]) and torch.equal(state["b.bias"], params["a.bias"])
    assert not torch.equal(state["head.weight"], model.emb.weight)
    assert torch.equal(state["bn.running_mean"], model.bn.running_mean)
    assert state["bn.running_mean"].data_ptr() != model.bn.running_mean.data_ptr()


class FakeComm:
    """Process ``rank`` of ``size``, for the group split alone: the test calls no collective."""

    local_rank, local_size, bytes_sent = 0, 1, 0

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size

    def __getattr__(self, name: str) -> None:
        raise AssertionError(f"member_parameters called the collective {name}")


@pytest.mark.parametrize("comm_mode", ["seeds", "allreduce"])
@pytest.mark.parametrize("setting", [SETTINGS[2], SETTINGS[3], SETTINGS[4], SETTINGS[6]], ids=ids)
def test_a_member_of_another_process_equals_the_one_that_process_evaluates(setting: dict, comm_mode: str) -> None:
    """Process 1 of 2 computes the parameters of every member, those of process 0's groups included,
    bit for bit as one process holding all groups does (the reference on its noise)."""
    torch.manual_seed(0)
    whole = flipes.flipout(Zoo().to(DT))
    part = copy.deepcopy(whole)
    es_whole = make_es(whole, setting)
    es_part = make_es(part, setting, comm=FakeComm(1, 2), comm_mode=comm_mode)
    assert es_part.members.start > 0  # process 0's members are not evaluated here
    with es_whole.population():
        expected = member_parameters(es_whole, whole)
    names = {id(p): name for name, p in part.named_parameters()}
    with es_part.population():
        for i in range(N):
            got = es_part.member_parameters(i)
            for name in expected[i]:
                assert torch.equal(got[name], expected[i][name]), (i, name)
        assert set(got) == set(names.values())


def test_wrong_calls_are_errors_that_name_the_fix() -> None:
    """An index out of 0..popsize-1 is an IndexError, a non-integer a TypeError, and a call before the
    first population or after tell a RuntimeError saying when to call; numpy and tensor integers work."""
    model = flipes.flipout(nn.Linear(3, 2).to(DT))
    es = flipes.FlipES(model, popsize=N, seed=0)
    with pytest.raises(RuntimeError, match=r"before the first population: call it inside `with es.population\(\)`"):
        es.member_parameters(0)
    with es.population():
        for bad in (-1, N):
            with pytest.raises(IndexError, match=rf"member index {bad} is out of range: members are 0 .. popsize - 1 = 7"):
                es.member_parameters(bad)
        with pytest.raises(TypeError, match="index must be an integer"):
            es.member_state_dict(1.0)
        fitness = torch.randn(N)
        best = es.member_state_dict(fitness.argmax())
        assert torch.equal(es.member_parameters(np.int64(int(fitness.argmax())))["weight"], best["weight"])
    es.tell(fitness)
    with pytest.raises(RuntimeError, match=r"after tell\(\) ended generation 0 .* before es.tell\(\)"):
        es.member_state_dict(0)


def test_track_best_keeps_the_fittest_member_of_all_generations_and_resumes_with_it() -> None:
    """With ``track_best``, ``es.best`` is after every tell the member of highest fitness over all
    generations so far: its fitness, generation, index and exactly the state
    dict ``member_state_dict`` gave for it in its generation; ``state_dict()`` carries it, so a
    resumed FlipES continues with it, and one that does not track it has none."""
    target = torch.linspace(-1, 1, 6, dtype=DT)

    def make() -> flipes.FlipES:
        torch.manual_seed(0)
        model = flipes.flipout(nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6)).to(DT))
        return flipes.FlipES(model, popsize=N, sigma=0.3, lr=0.05, groups=2, track_best=True)

    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=DT)
    es, expect = make(), None
    for generation in range(8):
        with es.population() as pop:
            fitness = -(es.model(x.expand(pop.size, *x.shape)) - target).square().mean((1, 2))
            i = int(fitness.argmax())
            if expect is None or fitness[i] > expect[0]:
                expect = (fitness[i].item(), generation, i, es.member_state_dict(i))
        es.tell(fitness)
        best = es.best
        assert (best.fitness, best.generation, best.index) == expect[:3]
        assert best.state_dict.keys() == expect[3].keys()
        assert all(torch.equal(best.state_dict[k], expect[3][k]) for k in best.state_dict)
        if generation == 3:
            saved = copy.deepcopy(es.state_dict())
    assert expect[1] > 0  # a later generation beat the first
    resumed = make()
    resumed.load_state_dict(saved)
    for _ in range(4):
        resumed.step(lambda model, pop: -(model(x.expand(pop.size, *x.shape)) - target).square().mean((1, 2)))
    assert (resumed.best.fitness, resumed.best.generation, resumed.best.index) == (best.fitness, best.generation, best.index)
    untracked = flipes.FlipES(flipes.flipout(nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6)).to(DT)), popsize=N, groups=2)
    untracked.load_state_dict(saved)
    assert untracked.best is None and "best" not in untracked.state_dict()
    with pytest.raises(TypeError, match="track_best must be True or False"):
        flipes.FlipES(untracked.model, popsize=N, track_best="yes")


@pytest.mark.parametrize("maximize", [True, False])
def test_track_best_keeps_the_earliest_of_tied_members(maximize: bool) -> None:
    """On ties ``es.best`` is the earliest member: the lower index within a generation, and a later generation that
    only equals the best fitness leaves it in place (maximizing and minimizing alike)."""
    model = flipes.flipout(nn.Linear(3, 2).to(DT))
    es = flipes.FlipES(model, popsize=N, sigma=0.1, track_best=True, maximize=maximize)
    sign = 1.0 if maximize else -1.0
    for fitness in ([0, 1, 3, 2, 3, 0, 1, 2], [3, 0, 0, 3, 1, 1, 2, 2]):  # best 3 at members 2 and 4, then at 0 and 3
        with es.population() as pop:
            model(torch.zeros(pop.size, 3, dtype=DT))  # the members run; their fitness is made up
        es.tell(sign * torch.tensor(fitness, dtype=DT))
        assert (es.best.fitness, es.best.generation, es.best.index) == (sign * 3.0, 0, 2)
