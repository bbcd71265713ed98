"""FlipES's arguments, its optimizer and the evolved set: misuse is a clear error, not a silent no-op."""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import Mpi4pyLike
from torch import nn

import flipes
from flipes.es.population import Population
from flipes.search import SigmaDecay


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return flipes.flipout(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)))


def fitness(model: nn.Module, pop: Population) -> torch.Tensor:
    return -(model(torch.ones(pop.size, 4)) - 1).square().sum(1)


def test_changing_requires_grad_after_construction_is_an_error_naming_the_parameters() -> None:
    """The evolved set is fixed when a FlipES is built: unfreezing a part later would perturb it per
    member but never update it, and freezing one would break tell. Both raise a ValueError naming the
    parameters at the next population, tell or report; restoring the flags, or a new FlipES, works."""
    model = mlp()
    model[0].requires_grad_(False)
    es = flipes.FlipES(model, popsize=8, seed=0)
    es.step(fitness)
    model[0].requires_grad_(True)  # unfreezing
    with pytest.raises(ValueError, match=r"requires_grad of 0\.weight, 0\.bias changed after this FlipES was built"):
        es.step(fitness)
    with pytest.raises(ValueError, match="build a new FlipES"):
        es.report()
    encoder = model[0].weight.detach().clone()
    es = flipes.FlipES(model, popsize=8, seed=0)  # a new one evolves the unfrozen part
    es.step(fitness)
    assert not torch.equal(encoder, model[0].weight)

    with es.population() as pop:
        f = fitness(model, pop)
    model[2].weight.requires_grad_(False)  # freezing between population and tell
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"requires_grad of 2\.weight changed"):
        es.tell(f)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    model[2].weight.requires_grad_(True)  # set back: the same generation is accepted
    assert es.tell(f)["generation"] == 1


def test_the_optimizer_is_built_over_exactly_the_evolved_parameters_at_its_lr() -> None:
    """An optimizer class runs at FlipES's lr (not the class's default), a factory at its own; an lr given beside a
    factory that sets another, an optimizer instance, or a factory whose optimizer leaves out evolved parameters or
    holds others, is an error saying how to write it."""
    es = flipes.FlipES(mlp(), popsize=8, lr=0.5, optimizer=torch.optim.Adam)
    assert type(es.optimizer) is torch.optim.Adam and [g["lr"] for g in es.optimizer.param_groups] == [0.5]
    es = flipes.FlipES(mlp(), popsize=8, optimizer=lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9))
    assert [g["lr"] for g in es.optimizer.param_groups] == [0.2]
    es = flipes.FlipES(mlp(), popsize=8, lr=0.2, optimizer=lambda p: torch.optim.SGD(p, lr=0.2))  # the same lr: no conflict
    assert [g["lr"] for g in es.optimizer.param_groups] == [0.2]
    # an lr beside a factory that sets another would be ignored: said, with the class as the way to build at lr
    with pytest.raises(ValueError, match=r"lr=0.5 and an optimizer factory that sets lr 0.2 \(SGD\).*drop lr= and set it in "
                       r"the factory, or pass the class \(optimizer=torch.optim.SGD\) to build it at lr=0.5"):  # fmt: skip
        flipes.FlipES(mlp(), popsize=8, lr=0.5, optimizer=lambda p: torch.optim.SGD(p, lr=0.2))
    with pytest.raises(ValueError, match=r"sets lr 0.05 \(ClipUp\).*set it in the factory$"):
        flipes.FlipES(mlp(), popsize=8, lr=0.5, optimizer=lambda p: flipes.optim.ClipUp(p, lr=0.05, max_speed=0.1))

    model = mlp()
    with pytest.raises(TypeError, match=r"got an instance of SGD.*optimizer=lambda params: torch\.optim\.SGD\(params"):
        flipes.FlipES(model, popsize=8, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    stray = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=r"exactly the parameters it is given.*it adds 1: a parameter of shape \(3,\)"):
        flipes.FlipES(mlp(), popsize=8, optimizer=lambda p: torch.optim.SGD([*p, stray], lr=0.1))
    with pytest.raises(ValueError, match=r"it leaves out 4: 0\.weight, 0\.bias, 2\.weight, 2\.bias"):
        flipes.FlipES(mlp(), popsize=8, optimizer=lambda p: torch.optim.SGD([stray], lr=0.1))
    with pytest.raises(ValueError, match=r"it leaves out 1: 2\.bias"):
        flipes.FlipES(mlp(), popsize=8, optimizer=lambda p: torch.optim.SGD(p[:-1], lr=0.1))
    with pytest.raises(TypeError, match=r"returned list, not a torch\.optim\.Optimizer"):
        flipes.FlipES(mlp(), popsize=8, optimizer=lambda p: list(p))
    with pytest.raises(TypeError, match="optimizer must be a function"):
        flipes.FlipES(mlp(), popsize=8, optimizer="adam")


BAD_ARGUMENTS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"popsize": 8.0}, TypeError, r"popsize must be an integer, got 8\.0 \(float\)"),
    ({"popsize": "8"}, TypeError, r"popsize must be an integer, got '8' \(str\)"),
    ({"popsize": True}, TypeError, "popsize must be an integer"),
    ({"seed": 1.5}, TypeError, r"seed must be an integer, got 1\.5"),
    ({"seed": None}, TypeError, "seed must be an integer, got None"),
    ({"groups": 2.0}, TypeError, "groups must be an integer"),
    ({"weight_decay": -1}, ValueError, "weight_decay must be a finite number >= 0, got -1"),
    ({"weight_decay": "0.1"}, TypeError, "weight_decay must be a number"),
    ({"lr": float("nan")}, ValueError, "lr must be a finite number >= 0, got nan"),
    ({"lr": -0.1}, ValueError, "lr must be a finite number >= 0"),
    ({"lr": float("inf")}, ValueError, "lr must be a finite number >= 0, got inf"),
    ({"sigma_lr": -0.1}, ValueError, "sigma_lr must be a finite number >= 0, got -0.1"),
    ({"shaping": "centered_ranks"}, TypeError, "shaping must be a function fitness"),
    ({"mirrored": "False"}, TypeError, "mirrored must be True or False"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD_ARGUMENTS, ids=[repr(kw)[1:-1] for kw, _, _ in BAD_ARGUMENTS])
def test_bad_constructor_arguments_are_rejected_up_front_naming_the_argument(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    """A wrong type or range is an error at construction naming the argument, never truncated
    (seed 1.5 is not seed 1) or failing later inside tell."""
    with pytest.raises(error, match=match):
        flipes.FlipES(mlp(), **{"popsize": 8, **kwargs})


def test_numpy_integers_are_accepted_and_act_as_python_ints() -> None:
    """popsize, seed and groups may be numpy integers (a config read from arrays): the run is bitwise
    that of the same Python ints."""
    runs = []
    for kind in (int, np.int64):
        model = mlp()
        es = flipes.FlipES(model, popsize=kind(8), seed=kind(3), groups=kind(2))
        assert all(type(v) is int for v in (es.popsize, es.seed, es.groups))
        es.step(fitness)
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(p, q) for p, q in zip(*runs, strict=True))


def test_tell_inside_inference_mode_leaves_an_optimizer_that_steps_outside_it() -> None:
    """A generation run inside torch.inference_mode() updates as one outside it (bitwise), and the
    optimizer's state stays usable by later generations outside inference mode."""
    runs = []
    for inside in (False, True):
        model = mlp()
        es = flipes.FlipES(model, popsize=8, seed=0)
        with torch.inference_mode(inside):
            es.step(fitness)
        es.step(fitness)  # Adam updates its state in place: it must not be an inference tensor
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(p, q) for p, q in zip(*runs, strict=True))


def test_a_population_with_one_fitness_value_is_warned_about_once() -> None:
    """Fitness computed outside ``es.population()`` (every member is then the mean network) makes all
    members equal and the gradient zero: tell warns once, at the user's line (through ``tell`` or
    ``step``), naming the likely cause; with warnings as errors the generation is still complete
    (stepped once, on to the next noise); fitness computed inside the population warns nothing."""
    model = mlp()
    es = flipes.FlipES(model, popsize=8, seed=0)
    expect = r"generation 0: all 8 members have the same fitness .* inside `with es.population\(\)`"
    with pytest.warns(flipes.EqualFitnessWarning, match=expect) as seen:
        for _ in range(3):
            with es.population() as pop:
                pass
            stats = es.tell(fitness(model, pop))
            assert stats["grad_norm"] == 0.0 and stats["fitness_std"] == 0.0
    assert len(seen) == 1 and seen[0].filename == __file__
    stepped = flipes.FlipES(mlp(), popsize=8, seed=0)
    with pytest.warns(flipes.EqualFitnessWarning) as seen:
        stepped.step(lambda model, pop: torch.zeros(pop.size))
    assert seen[0].filename == __file__
    strict = flipes.FlipES(mlp(), popsize=8, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(flipes.EqualFitnessWarning):
            strict.step(lambda model, pop: torch.zeros(pop.size))
        assert strict.generation == 1
        strict.step(fitness)  # the next generation runs normally, with its own noise
        other = flipes.FlipES(mlp(), popsize=8, seed=0)
        for _ in range(3):
            other.step(fitness)


def test_fitness_computed_outside_the_population_from_rows_that_differ_is_warned_about_once() -> None:
    """A custom loop that runs the model after its ``with es.population()`` block on inputs that differ per row
    (an own env's observations) gets fitness that differs between members, so EqualFitnessWarning cannot see it,
    yet every member was the mean network: tell warns once (OutsidePopulationWarning, at the user's line), last,
    so that with warnings as errors the generation is complete. The model called inside the block (also one of
    per-member modules only), or members built with es.member_parameters, warn nothing; an equal fitness gets only
    EqualFitnessWarning."""
    model = mlp()
    es = flipes.FlipES(model, popsize=8, seed=0)
    with pytest.warns(flipes.OutsidePopulationWarning, match=r"generation 0: the model ran no forward inside") as seen:
        for _ in range(3):
            with es.population() as pop:
                pass
            es.tell(-model(torch.randn(pop.size, 4)).square().sum(1))  # dedented by mistake
    assert len(seen) == 1 and seen[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            flipes.FlipES(mlp(), popsize=8, seed=0).step(fitness)
        norm = flipes.flipout(nn.LayerNorm(4))  # per-member modules only, no Flipout layer: its call is noted too
        flipes.FlipES(norm, popsize=8, seed=0).step(lambda model, pop: model(torch.randn(pop.size, 4)).sum(1))
        built = flipes.FlipES(mlp(), popsize=8, seed=0)
        with built.population() as pop:
            values = torch.stack([-sum(p.square().sum() for p in built.member_parameters(i).values()) for i in pop.members])
        built.tell(values)
        strict = flipes.FlipES(mlp(), popsize=8, seed=0)
        with pytest.raises(flipes.OutsidePopulationWarning):
            strict.step(lambda model, pop: torch.arange(pop.size, dtype=torch.float32))
        assert strict.generation == 1
        with pytest.raises(flipes.EqualFitnessWarning):
            flipes.FlipES(mlp(), popsize=8, seed=0).step(lambda model, pop: torch.zeros(pop.size))


class NormedGRU(nn.Module):
    """A policy with a LayerNorm (dense per-member noise) and a GRU: members built beside it read every kind."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.gru, self.head = (
            nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8)),
            nn.GRU(8, 8, batch_first=True),
            nn.Linear(8, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(self.enc(x))[0][:, -1])


def test_parameters_changed_between_the_population_and_tell_are_warned_about_once_by_name() -> None:
    """Loading the elite member into the model between its population and tell (to evaluate it) makes tell step from
    the elite: tell warns once (ChangedParametersWarning, at the user's line, after the step), naming the parameters
    and the plain-copy way. Members built, a state saved, the center
    run after the block, a change inside the block before the forward, or after tell warn nothing."""
    model = mlp()
    es = flipes.FlipES(model, popsize=8, seed=0)
    told = (
        r"^generation 0: the parameters 0.weight, 0.bias, 2.weight, \.\.\. changed between the end of the population "
        r"and tell\(\) .*plain.load_state_dict\(es.member_state_dict\(i\)\)"
    )
    with pytest.warns(flipes.ChangedParametersWarning, match=told) as seen:
        for _ in range(2):
            with es.population() as pop:
                values = fitness(model, pop)
            elite = es.member_state_dict(pop.members[int(values.argmax())])
            model.load_state_dict(elite)  # evaluating the elite in the model itself, by mistake
            es.tell(values)
    assert len(seen) == 1 and seen[0].filename == __file__ and es.generation == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.manual_seed(0)
        model = flipes.flipout(NormedGRU())
        es = flipes.FlipES(model, popsize=8, seed=0, track_best=True)
        x = torch.randn(8, 3, 4)
        for _ in range(2):
            with es.population() as pop:
                with torch.no_grad():
                    model.head.bias.add_(0.0)  # inside the block, before the forward: the members are around it
                values = model(x).sum(1)
            es.member_state_dict(0), es.member_parameters(3), es.state_dict()
            model(x[:1])  # the center, after the block
            es.tell(values)
            with torch.no_grad():
                model.head.bias.mul_(0.5)  # after tell: the next generation's center


def test_a_train_fitness_that_runs_a_copy_of_its_model_is_told_to_call_that_model(tmp_path: Path) -> None:
    """flipes.train runs the population block itself, so a fitness that evaluates a deepcopy of the model it is given
    (the mean network for every member) is warned of in the fitness's terms, not told to move code inside a
    ``with es.population()`` it never wrote: a fitness of equal values asks whether it comes from the outputs of the
    model it is given; one that differs by its inputs alone (OutsidePopulationWarning) is told to call that model."""
    import copy

    x = torch.randn(16, 4)

    def on_a_copy(model: nn.Module, pop: Population) -> torch.Tensor:
        return -copy.deepcopy(model)(x.expand(pop.size, 16, 4)).square().mean((1, 2))

    def by_inputs(model: nn.Module, pop: Population) -> torch.Tensor:
        copy.deepcopy(model)(x)
        return torch.arange(pop.size, dtype=torch.float32)

    kw = {"env": "none", "model": lambda env: mlp(), "popsize": 8, "generations": 1, "progress": False}
    with pytest.warns(flipes.EqualFitnessWarning) as seen:
        flipes.train(fitness=on_a_copy, out=str(tmp_path / "a"), **kw)
    assert "does the fitness come from the outputs of the model it is given (a copy of it is the mean network" in str(
        seen[0].message
    ) and "es.population" not in str(seen[0].message)
    with pytest.warns(flipes.OutsidePopulationWarning) as seen:
        flipes.train(fitness=by_inputs, out=str(tmp_path / "b"), **kw)
    message = str(seen[0].message)
    assert message.startswith("generation 0: the fitness ran no forward of the model it is given") and message.endswith(
        "call that model itself"
    )


class _FailureSent:
    """Process ``rank`` of 2 for a tell that must raise before the fitness exchange: what it sends there instead."""

    size, local_rank, local_size, bytes_sent = 2, 0, 1, 0

    def __init__(self, rank: int) -> None:
        self.rank, self.sent = rank, []

    def allgather_tensor(self, rows: torch.Tensor) -> torch.Tensor:
        self.sent.append(rows.clone())
        return torch.cat([rows, rows])

    def allgather_object(self, obj: Any) -> list[Any]:
        self.sent.append(obj)
        return [obj, obj]


def _sent_failure(comm: _FailureSent, error: str) -> bool:
    """Whether ``comm`` saw exactly the failure flag in place of this process's 4 fitness values, then ``error``."""
    from flipes.es.ranks import FAILED

    flag, shared = comm.sent
    return flag.tolist() == [0.0] * 4 + [FAILED] and error in str(shared)


def test_fitness_for_the_whole_population_on_one_of_two_processes_names_pop_size() -> None:
    """Under MPI a process evaluates pop.size members, not es.popsize: fitness of es.popsize values is
    refused, saying which size the inputs take; in the fitness exchange this process sends the failure flag and its
    error (so that the other raises it too) in place of its fitness."""
    comm = _FailureSent(0)
    es = flipes.FlipES(mlp(), popsize=8, groups=2, comm=comm)
    with es.population() as pop:
        assert pop.size == 4
    with pytest.raises(
        ValueError, match=r"shape \(8,\), but this process evaluates 4 members.*pop.size \(4 here\), not es.popsize"
    ):
        es.tell(torch.zeros(8))
    assert _sent_failure(comm, "ValueError: fitness has shape (8,), but this process evaluates 4 members"), comm.sent


def test_non_finite_fitness_on_the_second_of_two_processes_names_the_global_members() -> None:
    """Process 1 of 2 evaluates members 4..7: a NaN and an inf at its local rows 1 and 3 are named as members 5 and 7
    (their global indices, as pop.members gives them); the exchange carries the failure flag and the error instead."""

    comm = _FailureSent(1)
    es = flipes.FlipES(mlp(), popsize=8, groups=2, comm=comm)
    with es.population() as pop:
        assert pop.members == range(4, 8)
    with pytest.raises(ValueError, match=r"^fitness of 2 member\(s\) is not finite \(5=nan, 7=inf\)"):
        es.tell(torch.tensor([0.0, float("nan"), 2.0, float("inf")]))
    assert _sent_failure(comm, "NonFiniteFitness: fitness of 2 member(s) is not finite (5=nan, 7=inf)"), comm.sent


@pytest.mark.parametrize("launcher", [("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")])
def test_a_flipes_without_comm_under_mpiexec_warns_that_every_process_runs_everything(
    monkeypatch: pytest.MonkeyPatch, launcher: tuple[str, str]
) -> None:
    """In a process that MPICH or Open MPI started as rank 0 of 2, a FlipES given no comm warns that every process
    evaluates the whole population, naming comm=flipes.dist.world(); rank 1 stays quiet (one warning per job),
    and so do a FlipES given a comm and a process mpiexec did not start."""
    rank_key, size_key = launcher

    def made(**kw: Any) -> list[str]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            flipes.FlipES(mlp(), popsize=8, **kw)
        return [str(w.message) for w in seen]

    assert made() == []
    monkeypatch.setenv(size_key, "2")
    monkeypatch.setenv(rank_key, "0")
    (message,) = made()
    assert "one of 2 processes started by mpiexec" in message and "comm=flipes.dist.world()" in message
    assert made(comm=flipes.dist.SerialComm()) == []
    monkeypatch.setenv(rank_key, "1")
    assert made() == []


class RankZeroOfTwo(flipes.dist.SerialComm):
    """Rank 0 of 2 whose peer evaluated the same fitness and holds the parameters of ``other`` (a digest, or
    None for this rank's own) and this rank's FlipES settings updated by ``settings``, sending ``more_rows`` more fitness
    values than this rank's; counts the object allgathers."""

    rank, size = 0, 2

    def __init__(self, other: str | None = None, settings: dict[str, Any] | None = None, more_rows: int = 0) -> None:
        self.other, self.settings, self.more_rows, self.object_calls = other, settings or {}, more_rows, 0

    def allgather_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x, x.new_zeros(self.more_rows)])  # more rows: the peer evaluates more members

    def allgather_object(self, obj: Any) -> list[Any]:
        self.object_calls += 1
        if obj[0] == "buffers":  # the peer's buffers: this rank's
            return [obj, obj]
        settings, digest = obj
        return [obj, ({**settings, **self.settings}, digest if self.other is None else self.other)]


class PeerWithOtherEntry(flipes.dist.SerialComm):
    """Rank 0 of 2 whose peer holds the same tensors as this rank but for entry ``index``, which differs."""

    rank, size = 0, 2

    def __init__(self, index: int) -> None:
        self.index = index

    def allgather_object(self, obj: Any) -> list[Any]:
        if isinstance(obj, list):  # the digests of each entry
            return [obj, [d if i != self.index else "f" * 64 for i, d in enumerate(obj)]]
        return [obj, "f" * 64]  # the digest of them all


def test_ranks_holding_different_entries_of_a_state_dict_are_named_with_their_cause() -> None:
    """check_identical over a state dict names the entries that differ between the ranks (in its order) and appends
    the hint its function gives for those names; a list of tensors names none, as before."""
    state = {"0.weight": torch.ones(2), "0.mean": torch.zeros(2), "1.bias": torch.ones(1)}
    seen: list[list[str]] = []

    def hint(differ: list[str]) -> str:
        seen.append(differ)
        return "; the hint"

    named = r"different parameters \(rank 0: \w{12}, rank 1: f{12}\) in 0.mean; .*data; the hint$"
    with pytest.raises(RuntimeError, match=named):
        flipes.dist.check_identical(PeerWithOtherEntry(1), state, "parameters", hint=hint)
    assert seen == [["0.mean"]]
    with pytest.raises(RuntimeError, match=r"different parameters \(rank 0: \w{12}, rank 1: f{12}\); every rank"):
        flipes.dist.check_identical(PeerWithOtherEntry(1), list(state.values()), "parameters")


def test_processes_holding_different_parameters_are_an_error_at_the_first_tell() -> None:
    """A FlipES split over processes whose models were initialized differently (no common seed) refuses its
    first tell with a RuntimeError naming the ranks and the fix, before any parameter moves, instead of each
    process silently stepping its own center; processes that agree are compared once, and again after a load."""
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    es = flipes.FlipES(model, popsize=8, groups=2, seed=0, comm=RankZeroOfTwo(other="f" * 64))
    with es.population() as pop:
        f = fitness(model, pop)
    with pytest.raises(RuntimeError, match=r"different parameters \(rank 0 \w{12}, rank 1 f{12}\).*torch.manual_seed"):
        es.tell(f)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    comm = RankZeroOfTwo()
    es = flipes.FlipES(mlp(), popsize=8, groups=2, seed=0, comm=comm)
    for _ in range(2):
        es.step(fitness)
    assert comm.object_calls == 1
    es.load_state_dict(es.state_dict())
    es.step(fitness)
    assert comm.object_calls == 2


@pytest.mark.parametrize(
    ("peer", "named"),
    [
        ({"seed": 1}, r"seed: rank 0 0, rank 1 1\).*one seed for all of them"),
        ({"generation": 3}, r"generation: rank 0 0, rank 1 3\).*load the same state on every rank"),
        (
            {"sigma": 0.2, "comm_mode": "seeds"},
            r"sigma: rank 0 0\.1, rank 1 0\.2; comm_mode: rank 0 'allreduce', rank 1 'seeds'\).*one seed for all of them",
        ),
        ({"shaping": "flipes.es.shaping:z_score"}, r"shaping: rank 0 'flipes.es.shaping:centered_ranks', rank 1 'flip.*alike"),
    ],
    ids=["seed", "generation", "sigma-and-comm-mode", "shaping"],
)
def test_processes_built_with_other_settings_are_an_error_at_the_first_tell(peer: dict[str, Any], named: str) -> None:
    """A FlipES split over processes whose settings differ (a seed per rank: other noise and pop.generator() draws on
    each, so the shared step goes wrong silently although the parameters agree at first) refuses its first tell with a
    RuntimeError naming each differing setting with every rank's value, before any parameter moves; the fix named is
    to build the FlipES alike, or, where the generations differ (a state loaded on some ranks alone), to load it on
    every rank."""
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    es = flipes.FlipES(model, popsize=8, groups=2, seed=0, sigma=0.1, comm=RankZeroOfTwo(settings=peer))
    with es.population() as pop:
        f = fitness(model, pop)
    with pytest.raises(RuntimeError, match=rf"other settings \({named}"):
        es.tell(f)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


class RankZeroOfSix(flipes.dist.SerialComm):
    """Rank 0 of 6 whose peers evaluated the same fitness and hold the same parameters, rank r built with seed r."""

    rank, size = 0, 6

    def allgather_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(self.size)

    def allgather_object(self, obj: Any) -> list[Any]:
        if obj[0] == "buffers":  # the peers' buffers: this rank's
            return [obj] * self.size
        settings, digest = obj
        return [obj] + [({**settings, "seed": r}, digest) for r in range(1, self.size)]


def test_a_setting_that_differs_on_many_ranks_names_rank_0_and_three_others() -> None:
    """The error for a seed per rank of a 6-rank job names rank 0's seed, three other ranks' and how many ranks differ,
    not every rank's (a large job's error stays one short line)."""
    model = mlp()
    es = flipes.FlipES(model, popsize=12, groups=6, seed=0, comm=RankZeroOfSix())
    with es.population() as pop:
        f = fitness(model, pop)
    with pytest.raises(RuntimeError) as error:
        es.tell(f)
    assert "(seed: rank 0 0, rank 1 1, rank 2 2, rank 3 3, ... (5 ranks differ from rank 0)), so" in str(error.value)


def test_processes_built_with_another_popsize_are_an_error_naming_it_at_the_first_tell() -> None:
    """A process whose peer was built with another popsize (more members than this one's settings give it) refuses the
    tell with a RuntimeError naming the values sent, this process's popsize and groups and the fix, not torch's split
    error, before any parameter moves."""
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    es = flipes.FlipES(model, popsize=8, groups=2, comm=RankZeroOfTwo(settings={"popsize": 16}, more_rows=4))
    with es.population() as pop:
        f = fitness(model, pop)
    with pytest.raises(RuntimeError, match=r"sent 12 fitness values .*\(popsize 8, groups 2, 2 processes\) make 8: .*alike"):
        es.tell(f)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_the_settings_ranks_compare_hold_a_tensor_setting_by_value_not_by_device() -> None:
    """The settings compared across ranks read an optimizer's tensor setting (an ``lr`` tensor, on ``cuda:<rank>`` on each
    rank) as its value: a tensor lr of 0.5 compares equal to the float 0.5, and no text of a tensor (its device) is in them."""

    def settings(lr: float | torch.Tensor) -> dict[str, Any]:
        es = flipes.FlipES(mlp(), popsize=8, optimizer=lambda p: torch.optim.SGD(p, lr=lr))
        return flipes.es.ranks.rank_settings(es)

    tensor, number = settings(torch.tensor(0.5)), settings(0.5)
    assert tensor == number and "tensor(" not in repr(tensor) and "'lr': 0.5" in tensor["optimizer"]
    assert settings(0.25) != number


def test_the_shaping_ranks_compare_is_named_by_its_code_and_plain_arguments_never_an_address() -> None:
    """The shaping compared across ranks is its ``module:qualname``: two ``functools.partial`` of ``ars`` built apart (on
    two ranks) with the same ``top`` compare equal, with another ``top`` or another function they differ, and no
    ``0x`` address is in the name (it would differ on every rank), also where a partial holds an object."""

    def shaping(given: Any) -> str:
        return flipes.es.ranks.rank_settings(flipes.FlipES(mlp(), popsize=8, shaping=given))["shaping"]

    top4 = shaping(functools.partial(flipes.shaping.ars, top=4))
    assert top4 == shaping(functools.partial(flipes.shaping.ars, top=4)) == "flipes.es.shaping:ars(top=4)"
    assert top4 != shaping(functools.partial(flipes.shaping.ars, top=2))
    assert shaping(flipes.shaping.z_score) == "flipes.es.shaping:z_score" != shaping(flipes.shaping.centered_ranks)
    assert "0x" not in shaping(lambda f: f - f.mean())
    held = object()  # an argument of no plain value: its type, not its repr (which holds its address)
    assert shaping(functools.partial(flipes.shaping.ars, held)) == "flipes.es.shaping:ars(object)"
    assert shaping(functools.partial(flipes.shaping.ars, top=held)) == "flipes.es.shaping:ars(top=object)"


def test_a_forward_after_tell_inside_the_same_population_is_an_error() -> None:
    """tell() inside ``with es.population()`` ends the generation: a later forward in the same block (which would run
    the told generation's noise around the moved mean) is a RuntimeError naming a new block, for Flipout and dense
    layers alike; the next block and the mean network outside work as usual."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)))
    es = flipes.FlipES(model, popsize=8)
    x = torch.randn(8, 4)
    with es.population():
        es.tell(model(x).sum(1))
        with pytest.raises(RuntimeError, match=r"a forward after tell\(\) inside the same .*generation 1 in a new"):
            model(x)
        with pytest.raises(RuntimeError, match=r"LayerNorm.*a forward after tell\(\)"):
            model[1](torch.randn(8, 8))
    with es.population():
        fitness = model(x).sum(1)
    es.tell(fitness)
    assert model(x[:3]).shape == (3, 2) and es.generation == 2


@pytest.mark.parametrize("given", [lambda x: x.square().sum(), torch.zeros(3)], ids=["function", "tensor"])
def test_flipout_and_flipes_of_something_not_a_module_name_the_vector_way(given: Any) -> None:
    """flipout() and FlipES() given a plain function or tensor (evosax/EvoTorch habits: a function to optimize, a
    parameter vector) raise a TypeError saying they take an nn.Module and naming flipes.nn.Vector, instead of an
    AttributeError from deep inside."""
    for call, where in ((lambda: flipes.flipout(given), "flipout()"), (lambda: flipes.FlipES(given, popsize=8), "FlipES")):
        with pytest.raises(TypeError, match=rf"{re.escape(where)}.* takes a torch.nn.Module, got a .*flipes.nn.Vector"):
            call()


def test_a_population_read_without_with_names_the_with_form() -> None:
    """``pop = es.population(); pop.size`` (an ask()-style habit) raises an AttributeError that shows
    ``with es.population() as pop:``, instead of naming a contextlib class; the ``with`` form works as before."""
    es = flipes.FlipES(mlp(), popsize=8, seed=0)
    for name in ("size", "split"):
        with pytest.raises(AttributeError, match=rf"`with es.population\(\) as pop:` and use pop.{name} inside it"):
            getattr(es.population(), name)
    with es.population() as pop:
        f = fitness(es.model, pop)
    assert pop.size == 8 and es.tell(f)["generation"] == 0


def test_a_population_block_entered_twice_says_to_call_population_again() -> None:
    """Entering one ``es.population()`` object a second time raises a RuntimeError that says to write
    ``with es.population() as pop:`` again, instead of contextlib's AttributeError; a fresh block in the same
    generation evaluates the same members."""
    es = flipes.FlipES(mlp(), popsize=8, seed=0)
    block = es.population()
    with block as pop:
        first = fitness(es.model, pop)
    with pytest.raises(RuntimeError, match=r"entered before: .*`with es.population\(\) as pop:` again"):
        with block:
            pass
    with es.population() as pop:
        assert torch.equal(fitness(es.model, pop), first)
    assert es.tell(first)["generation"] == 0


def test_a_flipes_repr_shows_its_settings_and_tell_counts_generations_in_ints() -> None:
    """``repr(es)`` names the population size, groups, σ, noise rank, optimizer, mirroring, generation and
    the number of evolved parameters (here 4·8+8+8·2+2 = 58); ``tell`` and ``step`` report the generation
    just finished as an int, as ``pop.generation``."""
    es = flipes.FlipES(mlp(), popsize=16, sigma=0.05, lr=0.01, seed=0, groups=4, noise_rank=1)
    text = "popsize=16, groups=4, sigma=0.05, noise_rank=1, optimizer=Adam(lr=0.01), mirrored=True, generation={}, params=58"
    assert repr(es) == f"FlipES({text.format(0)})"
    stats = es.step(fitness)
    assert type(stats["generation"]) is int and stats["generation"] == 0 and repr(es) == f"FlipES({text.format(1)})"


def test_a_flipes_repr_shows_the_settings_a_notebook_cell_changed_since_it_was_built() -> None:
    """What a cell may change between generations (``es.shaping``, ``es.lr``, ``es.weight_decay``) shows in
    ``repr(es)``, as do a σ schedule and minimizing; the defaults (centered ranks, no decay, maximizing) stay out.
    Param groups of other step sizes show each distinct one, sorted."""
    es = flipes.FlipES(mlp(), popsize=16, sigma=0.05, seed=0)
    assert repr(es) == "FlipES(popsize=16, groups=1, sigma=0.05, optimizer=Adam(lr=0.03), mirrored=True, generation=0, params=58)"
    es.shaping, es.lr, es.weight_decay = flipes.shaping.z_score, 0.01, 0.001
    assert repr(es) == (
        "FlipES(popsize=16, groups=1, sigma=0.05, optimizer=Adam(lr=0.01), weight_decay=0.001, shaping=z_score, "
        "mirrored=True, generation=0, params=58)"
    )
    es = flipes.FlipES(mlp(), popsize=16, sigma=SigmaDecay(0.1, 0.9, 0.01), seed=0, maximize=False)
    assert repr(es) == (
        "FlipES(popsize=16, groups=1, sigma=0.1 (schedule), maximize=False, optimizer=Adam(lr=0.03), mirrored=True, "
        "generation=0, params=58)"
    )
    es = flipes.FlipES(
        mlp(),
        popsize=16,
        sigma=0.05,
        seed=0,
        optimizer=lambda p: torch.optim.SGD([{"params": p[:2], "lr": 0.1}, {"params": p[2:], "lr": 0.0}]),
    )
    assert "optimizer=SGD(lr=[0, 0.1]), " in repr(es)


def test_step_with_a_fitness_of_other_arguments_names_the_signature_it_needs() -> None:
    """``es.step(fn)`` with ``fn`` not callable as ``fn(model, pop)`` is a TypeError naming that form, before
    any population is entered (the generation is unchanged and a right step runs)."""
    es = flipes.FlipES(mlp(), popsize=8, sigma=0.1, lr=0.01, seed=0)
    with pytest.raises(TypeError, match=re.escape("define it as fitness_fn(model, pop) -> Tensor[pop.size]")):
        es.step(lambda model: model(torch.ones(8, 4)).sum(1))
    with pytest.raises(TypeError, match="got Tensor, not a function fitness_fn"):
        es.step(torch.ones(8))
    assert es.generation == 0 and es.step(fitness)["generation"] == 0


class ReadsTheWeight(nn.Module):
    """A head whose weight its parent reads as a plain tensor, ``x @ head.weight.T``, instead of calling it."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.body(x)) @ self.head.weight.T + self.head.bias


def test_a_flipout_layer_read_directly_and_never_called_is_an_error_naming_the_freeze() -> None:
    """A model that reads a Flipout layer's parameters as plain tensors and never calls the layer runs the mean weight in
    every member, silently: the population raises naming the layer and the frozen=[...] that fixes it; with it frozen
    every member is the plain model with its explicit parameters. flipes' own reads (``perturbed_weights()``, as in
    ``member_parameters``) inside a population are no such read."""
    from reference import member_parameters
    from torch.func import functional_call

    torch.manual_seed(0)
    es = flipes.FlipES(flipes.flipout(ReadsTheWeight()), popsize=8, sigma=0.1)
    x = torch.randn(8, 4)
    error = r"never called them \('head'\).*every member ran their mean weights.*" + re.escape("frozen=['head']")
    with pytest.raises(ValueError, match=error):
        with es.population():
            es._module(x)
    with es.population():
        member_parameters(es, es._module)  # flipes reading every layer's weight: no error
    model = flipes.flipout(ReadsTheWeight(), frozen=["head"])
    es = flipes.FlipES(model, popsize=8, sigma=0.1)
    with es.population():
        out = model(x)
        params = member_parameters(es, model)
    for n in range(8):
        torch.testing.assert_close(out[n], functional_call(model, params[n], (x[n],)))


class ReadsABiaslessHead(nn.Module):
    """A bias-less head its parent reads as plain tensors, guarding the bias as ``head.bias is None``."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(4, 8), nn.Linear(8, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.body(x)) @ self.head.weight.T
        return h if self.head.bias is None else h + self.head.bias


def test_a_direct_read_of_a_layers_absent_bias_still_gives_the_error_naming_the_freeze() -> None:
    """``layer.bias is None`` on a bias-less Flipout layer reads a parameter slot holding None: the population still ends
    in the ValueError naming the layer to freeze, not an AttributeError on None's ``requires_grad``."""
    es = flipes.FlipES(flipes.flipout(ReadsABiaslessHead()), popsize=8, sigma=0.1)
    with pytest.raises(ValueError, match=r"never called them \('head'\).*" + re.escape("frozen=['head']")):
        with es.population():
            es._module(torch.randn(8, 4))


class TwoHeads(nn.Module):
    """A body and two heads, of which a population's forward calls one (``head``) through ``layer.forward``, which
    runs no hooks, and leaves the other (``spare``) alone."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head, self.spare = nn.Linear(4, 8), nn.Linear(8, 2), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.forward(torch.tanh(self.body(x)))


def test_a_layers_own_reads_are_no_direct_reads_printing_the_model_or_calling_its_forward() -> None:
    """A layer run as ``layer.forward(x)`` (no hooks) reads its parameters itself, as ``print(model)`` does a layer the
    population never called (``extra_repr`` reads the bias): neither is a direct read, so the population ends without
    the error, and every member is the plain model with its explicit parameters; a read of the uncalled layer by other
    code still is one."""
    from reference import member_parameters
    from torch.func import functional_call

    torch.manual_seed(0)
    model = flipes.flipout(TwoHeads())
    es = flipes.FlipES(model, popsize=8, sigma=0.1)
    x = torch.randn(8, 4)
    with es.population():
        out = model(x)
        assert "spare" in repr(model)
        params = member_parameters(es, model)
    for n in range(8):
        torch.testing.assert_close(out[n], functional_call(model, params[n], (x[n],)))
    with pytest.raises(ValueError, match=r"never called them \('spare'\)"):
        with es.population():
            model(x)
            model.spare.weight.sum()


class ReadsBeforeAnyCall(nn.Module):
    """A linear map read as plain tensors before any layer runs, then a layer called: ``body(x @ head.weight.T)``."""

    def __init__(self) -> None:
        super().__init__()
        self.head, self.body = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x @ self.head.weight.T + self.head.bias)


def test_a_direct_read_before_any_layer_runs_is_an_error_in_the_first_forward() -> None:
    """A read of a never-called layer's weight that comes before any Flipout layer runs is noted from the population's
    start: one forward (a supervised fitness) is enough for the error naming the freeze."""
    es = flipes.FlipES(flipes.flipout(ReadsBeforeAnyCall()), popsize=8, sigma=0.1)
    with pytest.raises(ValueError, match=r"never called them \('head'\).*" + re.escape("frozen=['head']")):
        with es.population():
            es._module(torch.randn(8, 4))


def test_dropout_in_training_mode_warns_once_at_the_users_line_and_eval_mode_does_not() -> None:
    """A model with dropout in training mode (how every module starts) warns once, at the user's line, naming the module
    and model.eval(): each member's fitness would carry dropout noise of its own. Eval mode, p = 0 and flipes.train
    (which notes it instead) do not warn."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Tanh(), nn.Linear(8, 2)))
    es = flipes.FlipES(model, popsize=8)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(2):
            es.step(fitness)
    assert [str(w.message)[:72] for w in seen] == ["FlipES: the model has dropout in training mode (1 (Dropout)): it adds no"]
    assert seen[0].filename == __file__ and "model.eval()" in str(seen[0].message)
    for quiet in (lambda: model.eval(), lambda: setattr(model[1], "p", 0.0)):
        model.train()
        quiet()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            flipes.FlipES(model, popsize=8).step(fitness)


def test_dropout_in_training_mode_is_warned_of_by_rank_0_alone() -> None:
    """Of two processes only rank 0 warns of dropout in training mode (one line per job, not one per rank): rank 1's
    population block ends silently, rank 0's with the warning."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Tanh(), nn.Linear(8, 2)))
    for rank, expected in ((1, 0), (0, 1)):

        class Rank:  # process `rank` of 2; a population block calls no collective
            size, local_rank, local_size, bytes_sent = 2, 0, 1, 0

        Rank.rank = rank
        es = flipes.FlipES(model, popsize=8, groups=2, comm=Rank())
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with es.population() as pop:
                model(torch.zeros(pop.size, 4))
        assert [str(w.message)[:46] for w in seen] == ["FlipES: the model has dropout in training mode"] * expected


def test_dropout_warning_reads_the_mode_the_fitness_ran_the_model_in() -> None:
    """The dropout warning judges the mode a population block ends in: a model in training mode whose fitness calls
    model.eval() itself does not warn; one in eval mode whose fitness calls model.train() warns, at the block's line."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Tanh(), nn.Linear(8, 2)))

    def run(mode: str) -> list[warnings.WarningMessage]:
        es = flipes.FlipES(model, popsize=8)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with es.population() as pop:
                getattr(model, mode)()
                f = fitness(model, pop)
            es.tell(f)
        return seen

    model.train()
    assert run("eval") == []
    model.eval()
    seen = run("train")
    assert [str(w.message)[:48] for w in seen] == ["FlipES: the model has dropout in training mode ("]
    assert seen[0].filename == __file__


def test_training_says_dropout_in_training_mode_once_as_a_note_or_without_progress_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """flipes.train with a model in training mode with dropout says so once: a note with progress lines (FlipES adds
    no warning), one UserWarning naming the fix without them (a quiet run is not a silent one)."""

    def model_fn(env: Any) -> nn.Module:
        return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 1))

    def fit(model: nn.Module, pop: Population) -> torch.Tensor:
        return -model(torch.ones(pop.size, 4))[:, 0].square()

    kw = {"env": "none", "model": model_fn, "fitness": fit, "popsize": 8, "generations": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flipes.train(**kw, out=tmp_path / "loud", progress=True)
    err = capsys.readouterr().err
    assert err.count("has dropout in training mode (1)") == 1 and "return model.eval() from the model function" in err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flipes.train(**kw, out=tmp_path / "quiet", progress=False)
    (w,) = [w for w in caught if "dropout" in str(w.message)]
    assert w.category is UserWarning and w.filename == __file__, (w.category, w.filename)
    assert str(w.message).startswith("flipes.train: test_engine_errors:") and "has dropout in training mode (1)" in str(w.message)
    assert "dropout" not in capsys.readouterr().err


def test_dropout_beside_a_batch_norm_in_training_mode_names_the_dropout_modules_eval_not_model_eval(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Beside a BatchNorm in training mode, the dropout warning (a loop of one's own) and note (flipes.train) name
    eval() on the dropout modules alone and why, not model.eval(), which would normalize by running statistics that
    populations never update; with that BatchNorm in eval mode (or without running statistics) model.eval() stays."""

    def net(norm: nn.Module) -> nn.Module:
        return nn.Sequential(nn.Linear(4, 8), norm, nn.Dropout(0.5), nn.Linear(8, 1))

    fix = "call eval() on the dropout modules alone (1 (BatchNorm1d) in eval mode would normalize by running statistics"
    for norm, named in ((nn.BatchNorm1d(8), fix), (nn.BatchNorm1d(8).eval(), "call model.eval() before the population"),
                        (nn.BatchNorm1d(8, track_running_stats=False), "call model.eval() before the population")):  # fmt: skip
        model = flipes.flipout(net(norm))
        es = flipes.FlipES(model, popsize=8)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with es.population() as pop:
                model(torch.randn(pop.size * 4, 4))
        assert [named in str(w.message) for w in seen] == [True], [str(w.message) for w in seen]

    def fit(model: nn.Module, pop: Population) -> torch.Tensor:
        return -model(torch.randn(pop.size * 4, 4)).view(pop.size, 4).square().mean(1)

    flipes.train(env="none", model=lambda env: net(nn.BatchNorm1d(8)), fitness=fit, popsize=8, generations=1,
                 out=tmp_path, tensorboard=False, plot=False, progress=True)  # fmt: skip
    err = capsys.readouterr().err
    assert fix in err and "return model.eval()" not in err


def test_a_loss_averaged_over_the_whole_batch_is_refused_naming_the_per_member_reduction() -> None:
    """A Hugging Face model given ``labels=`` returns ``.loss``, the mean over every row of every member: one number,
    which the error names as such (with where to find the per-member form) rather than only the expected shape."""
    model = mlp()
    es = flipes.FlipES(model, popsize=8)
    with es.population() as pop:
        loss = model(torch.randn(pop.size, 4)).square().mean()  # over all members' rows
    with pytest.raises(ValueError, match=r"shape \(\), but this process evaluates 8 members.*Hugging Face model's \.loss"):
        es.tell(-loss)


def test_an_unconverted_lazy_model_is_refused_naming_the_module_and_the_fix() -> None:
    """FlipES given a lazy model that was neither run nor converted (its parameters have no shape yet) raises a
    ValueError naming the module and the parameter, and saying to run the model once before flipes.flipout, not
    torch's RuntimeError about load_state_dict from reading the shape."""
    with pytest.raises(
        ValueError, match=r"^'0' \(LazyLinear\)'s 'weight' is not initialized yet .* run the model once on an example input"
    ):
        flipes.FlipES(torch.nn.Sequential(torch.nn.LazyLinear(2)), popsize=4)


def test_a_comm_that_is_no_flipes_communicator_is_a_type_error_naming_the_fix() -> None:
    """FlipES(comm=...) given an object that is no flipes.dist communicator (a number, a string meant as comm_mode) is a
    TypeError naming what it lacks and flipes.dist.world(), not an AttributeError at ``comm.rank``; an mpi4py
    communicator (which has a rank and a size, but none of the collectives FlipES calls) is one naming
    flipes.dist.MPIComm, not an AttributeError at the first tell."""
    for comm in (3, "seeds", object()):
        with pytest.raises(
            TypeError, match=r"^FlipES\(comm=\.\.\.\) takes a flipes.dist communicator, got .*flipes.dist.world\(\)"
        ):
            flipes.FlipES(mlp(), popsize=8, comm=comm)

    with pytest.raises(TypeError, match=r"got an mpi4py communicator \(no local_rank, .*wrap it: flipes.dist.MPIComm\(comm\)$"):
        flipes.FlipES(mlp(), popsize=8, comm=Mpi4pyLike())


def test_a_sigma_that_is_no_number_is_a_type_error_naming_sigma() -> None:
    """sigma=True (float(True) is 1.0, silently), a string float() parses ('0.1'), None, a list, or a schedule returning
    a string are TypeErrors naming sigma and the value, not taken or float()'s bare message; numbers of any kind (numpy's,
    a 0-d tensor) are taken as before."""
    for sigma in (True, "0.1", None, [0.1], lambda g: "x"):
        with pytest.raises(TypeError, match=r"^sigma must be a number > 0 or a schedule generation -> σ, got "):
            flipes.FlipES(mlp(), popsize=8, sigma=sigma)
    for sigma in (np.float32(0.1), torch.tensor(0.1), 1, lambda g: np.float64(0.1)):
        assert flipes.FlipES(mlp(), popsize=8, sigma=sigma).sigma == pytest.approx(0.1 if sigma != 1 else 1.0)


def test_a_popsize_beyond_any_use_is_refused_before_sizing_anything() -> None:
    """popsize=10**30 is a ValueError naming flipes train's bound (2**24), not an OverflowError from a C size."""
    with pytest.raises(ValueError, match=r"^popsize=10{30} is beyond any use \(at most 16,777,216\); is it a typo\?$"):
        flipes.FlipES(mlp(), popsize=10**30)


def test_a_state_dict_with_a_bad_generation_or_optimizer_state_is_refused_and_changes_nothing() -> None:
    """load_state_dict refuses a generation that is no integer >= 0 (int() truncated 1.5 and parsed '3'; -1 was taken)
    and an optimizer entry that is no optimizer state dict (torch's KeyError 'param_groups', AttributeError for None),
    as ValueErrors naming the entry, before the model or the generation changes."""
    model = mlp()
    es = flipes.FlipES(model, popsize=8)
    with es.population() as pop:
        fitness = model(torch.randn(pop.size, 4))[:, 0].detach()
    es.tell(fitness)
    state, before = es.state_dict(), [p.detach().clone() for p in model.parameters()]
    other = flipes.FlipES(model := mlp(), popsize=8)
    for key, value in (
        ("generation", -1),
        ("generation", "3"),
        ("generation", 1.5),
        ("generation", None),
        ("optimizer", {}),
        ("optimizer", None),
    ):
        with pytest.raises(ValueError, match=rf"^state\['{key}'\] "):
            other.load_state_dict({**state, key: value})
        assert other.generation == 0
    other.load_state_dict(state)
    assert other.generation == 1 and all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_an_optimizer_tell_cannot_step_is_refused_where_it_is_built() -> None:
    """An optimizer whose step() needs a closure recomputing the loss (LBFGS; tell writes the ES gradient, there is no
    loss) or SparseAdam (the ES gradient is dense), given as a class or built by a factory, is a ValueError at FlipES(...)
    naming a first-order optimizer, not a traceback at the first tell; Adam and SGD are built."""
    for optimizer in (torch.optim.LBFGS, lambda params: torch.optim.LBFGS(params), lambda p: torch.optim.SparseAdam(p)):
        with pytest.raises(ValueError, match=r"^optimizer: .*; use a first-order optimizer of dense gradients"):
            flipes.FlipES(mlp(), popsize=8, optimizer=optimizer)
    for optimizer in (torch.optim.Adam, lambda params: torch.optim.SGD(params, lr=0.1)):
        assert flipes.FlipES(mlp(), popsize=8, optimizer=optimizer).step(lambda m, pop: m(torch.ones(pop.size, 4))[:, 0])
