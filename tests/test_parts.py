"""A population evaluated in parts (``pop.part``, ``pop.split``): each part's members keep exactly
their perturbation of the whole population, so a population too large for one forward pass gives the
same fitness in pieces.

Checked member by member against a plain torch copy loaded with ``es.member_state_dict(i)``, the
explicit reference of tests/test_members.py.
"""

from __future__ import annotations

import copy
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_layers import TinyGPT
from test_members import CNN, MLP, SETTINGS, FakeComm, LSTMNet, ids, make_es
from torch import Tensor, nn

import flipes

DT = torch.float64
N = 8


class Tokens(nn.Module):
    """An embedding, a batch-first transformer block (attention, norms) and a head, over token ids."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(13, 8)
        self.block = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.block(self.emb(ids)).mean(1))


class Normed(nn.Sequential):
    """BatchNorm over each member's own examples (its batch statistics, per member)."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 2))


MODELS: list[tuple[str, Callable[[], nn.Module], Callable[[int], Tensor]]] = [
    ("mlp", MLP, lambda n: torch.randn(n, 5, dtype=DT)),
    ("cnn", CNN, lambda n: torch.randn(n, 3, 6, 6, dtype=DT)),
    ("lstm", LSTMNet, lambda n: torch.randn(n, 7, 4, dtype=DT)),
    ("transformer", Tokens, lambda n: torch.randint(0, 13, (n, 5))),
    ("batchnorm", Normed, lambda n: torch.randn(n * 3, 4, dtype=DT)),  # 3 examples per member
]


@pytest.mark.parametrize("hold_noise", [True, False], ids=["held", "per-part"])
@pytest.mark.parametrize("setting", [SETTINGS[1], SETTINGS[3], SETTINGS[4], SETTINGS[6]], ids=ids)
@pytest.mark.parametrize("name,make,inputs", MODELS, ids=[m[0] for m in MODELS])
def test_every_part_computes_its_members_outputs(
    name: str,
    make: Callable[[], nn.Module],
    inputs: Callable[[int], Tensor],
    setting: dict,
    hold_noise: bool,
    device: torch.device,
) -> None:
    """In parts of 1, 2, 3 and 4 members (mirrored twins split, several ε groups, low-rank ε, one σ per
    slot), row j of a part is the output of a plain copy of the model loaded with member
    ``part.members[j]``'s parameters (float64, within 1e-11), and after the parts the layers evaluate
    the whole population again, as before; with the noise held for the generation or sampled per part
    (``member_state_dict`` then samples each member's group afresh: an independent reference)."""
    torch.manual_seed(1)
    original = make().to(device, DT)
    model = flipes.flipout(copy.deepcopy(original))
    es = make_es(model, setting, hold_noise=hold_noise)
    x = inputs(N).to(device)
    per = x.shape[0] // N  # examples per member
    plain = copy.deepcopy(original)
    with es.population() as pop:
        whole = model(x)
        for size in (1, 2, 3, 4):
            seen = []
            for part in pop.split(size):
                rows = slice(part.members.start * per, part.members.stop * per)
                out = model(x[rows])
                assert out.shape[0] == part.size * per
                for j, member in enumerate(part.members):
                    plain.load_state_dict(es.member_state_dict(member))
                    with torch.no_grad():
                        want = plain(x[member * per : (member + 1) * per])
                    torch.testing.assert_close(out[j * per : (j + 1) * per], want, atol=1e-11, rtol=0)
                seen += part.members
            assert seen == list(range(N))
        assert torch.equal(model(x), whole)


class MaskedGain(nn.Module):
    """A gain applied under a mask every member shares, ``(1, T)``."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.randn(4))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return x * self.gain * mask[..., None]


class MaskedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.gain = nn.Linear(4, 4), MaskedGain()

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.gain(self.fc(x), mask)


def test_a_tensor_every_member_shares_stays_shared_in_parts_of_one_member() -> None:
    """A dense module given k = 2 rows per member and a (1, T) mask every member shares computes, in parts of one
    member (where (1, T) could also read as that member's one row), exactly what the whole population does."""
    torch.manual_seed(0)
    model = flipes.flipout(MaskedNet().to(DT))
    es = flipes.FlipES(model, popsize=4, sigma=0.3, seed=1)
    x, mask = torch.randn(8, 5, 4, dtype=DT), (torch.arange(5) < 3).to(DT)[None]
    with es.population() as pop:
        whole = model(x, mask)
        parts = torch.cat([model(x[2 * part.members.start : 2 * part.members.stop], mask) for part in pop.split(1)])
    assert torch.equal(parts, whole)


def test_1d_position_ids_shared_in_the_population_are_shared_in_its_parts() -> None:
    """nanoGPT's ``wpe(torch.arange(T))`` with T = 6 and 4 members reads as positions every member shares; in parts of
    1 and 2 members (of which 6 is a multiple) it still does: the parts compute the whole population's logits (to
    1e-12, float64). With T = 8, which the whole population refuses as ambiguous, its parts refuse it too, of 2
    members (a divisor of 8) or of 3 (none)."""
    torch.manual_seed(0)
    model = flipes.flipout(TinyGPT().to(DT))
    es = flipes.FlipES(model, popsize=4, sigma=0.3, seed=1)
    ids = torch.randint(20, (4, 6))
    with es.population() as pop:
        whole = model(ids)
        for size in (1, 2):
            parts = torch.cat([model(ids[part.members.start : part.members.stop]) for part in pop.split(size)])
            # a part's head GEMM has other row counts (6 for one member, 24 for the whole): BLAS may sum its 8 products
            # in another order (1 ulp on an AVX-512 EPYC); another reading of the ids would be off by O(1)
            torch.testing.assert_close(parts, whole, atol=1e-12, rtol=0)
        for stop in (2, 3):
            refused = rf"length 8 inside a population of 4 members \(a part of {stop} here\)"
            with pop.part(0, stop), pytest.raises(ValueError, match=refused):
                model(torch.randint(20, (stop, 8)))


def test_split_never_straddles_a_group() -> None:
    """Parts hold at most ``size`` members: pieces of one ε group when ``size`` is smaller than a group
    (the last piece of each group smaller), else as many whole groups as fit; every part tells its own size and the
    population's popsize, generation, σ and seed (the values the FlipES was built with)."""
    model = flipes.flipout(nn.Linear(3, 2))
    es = flipes.FlipES(model, popsize=12, sigma=0.1, groups=3, mirrored=False, seed=5)  # groups of 4
    with es.population() as pop:
        parts = {size: list(pop.split(size)) for size in (1, 3, 4, 9, 12, 50)}
        bounds = {size: [(p.members.start, p.members.stop, p.groups) for p in ps] for size, ps in parts.items()}
    for p in (p for ps in parts.values() for p in ps):
        assert (p.size, p.popsize, p.generation, p.sigma, p.seed) == (len(p.members), 12, 0, 0.1, 5)
    assert bounds[3] == [(a, b, range(a // 4, a // 4 + 1)) for a, b in ((0, 3), (3, 4), (4, 7), (7, 8), (8, 11), (11, 12))]
    assert bounds[4] == [(0, 4, range(0, 1)), (4, 8, range(1, 2)), (8, 12, range(2, 3))]
    assert bounds[9] == [(0, 8, range(0, 2)), (8, 12, range(2, 3))]
    assert bounds[12] == bounds[50] == [(0, 12, range(0, 3))]
    assert [b[:2] for b in bounds[1]] == [(i, i + 1) for i in range(12)]


def test_a_process_takes_parts_of_its_own_members() -> None:
    """Process 1 of 2 splits the members it evaluates: global indices and groups of its own block, and
    outputs of those members as one process holding all groups computes them (bit for bit)."""
    torch.manual_seed(0)
    whole = flipes.flipout(MLP().to(DT))
    mine = copy.deepcopy(whole)
    es_whole = flipes.FlipES(whole, popsize=N, sigma=0.2, groups=4, seed=2)
    es_mine = flipes.FlipES(mine, popsize=N, sigma=0.2, groups=4, seed=2, comm=FakeComm(1, 2))
    x = torch.randn(N, 5, dtype=DT)
    with es_whole.population():
        want = whole(x)
    with es_mine.population() as pop:
        assert pop.members == range(4, 8)
        parts = [(p.members, p.groups, mine(x[p.members.start : p.members.stop])) for p in pop.split(2)]
    assert [(m, g) for m, g, _ in parts] == [(range(4, 6), range(2, 3)), (range(6, 8), range(3, 4))]
    assert torch.equal(torch.cat([out for *_, out in parts]), want[4:])


def test_a_loop_in_parts_trains_like_one_pass() -> None:
    """Five generations whose fitness is computed in parts of 4 members end on the parameters of
    five generations computed in one pass (bit for bit: each row's GEMM is the same for parts of 4 rows or more, where
    a CPU BLAS such as MKL may round parts of 1-3 rows otherwise)."""
    hashes = []
    for size in (16, 4):
        torch.manual_seed(0)
        model = flipes.flipout(MLP())
        es = flipes.FlipES(model, popsize=16, sigma=0.1, lr=0.05, groups=2, seed=4)
        x = torch.randn(16, 5)
        for _ in range(5):
            with es.population() as pop:
                fitness = torch.cat([-model(x[p.members.start : p.members.stop]).square().sum(1) for p in pop.split(size)])
            es.tell(fitness)
        hashes.append(torch.nn.utils.parameters_to_vector(model.parameters()).clone())
    assert torch.equal(hashes[0], hashes[1])


def test_wrong_parts_are_errors_that_name_the_fix() -> None:
    """A part straddling groups, out of range or empty, a part of a part, a part after tell or after
    the population, a bad split size and a Population made by hand: one clear error each, and the
    population is intact afterwards."""
    model = flipes.flipout(nn.Linear(3, 2))
    es = flipes.FlipES(model, popsize=8, sigma=0.1, groups=2)
    x = torch.randn(8, 3)
    with es.population() as pop:
        whole = model(x)
        with pytest.raises(ValueError, match=r"straddles ε groups of 4 members.*pop.split"):
            pop.part(2, 6)
        for start, stop in ((0, 9), (3, 3), (-1, 2)):
            with pytest.raises(ValueError, match="0 <= start < stop <= 8"):
                pop.part(start, stop)
        with pop.part(4, 8) as part:
            assert part.size == 4 and model(x[4:]).shape == (4, 2)
            with pytest.raises(RuntimeError, match=r"a part of a part; this pop is already members 4\.\.7 .*members_per_pass"):
                part.part(0, 2)
            with pytest.raises(RuntimeError, match=r"a part of a part; .* one instance per member"):
                next(part.split(1))
            with pytest.raises(RuntimeError, match="inside another part"), pop.part(0, 2):
                pass
            with pytest.raises(ValueError, match="population of 4 members"):
                model(x[:6])  # the part's size, not the population's (8 rows would be 2 examples per member)
        for bad in (0, -2, 2.0, True):
            with pytest.raises(ValueError, match="size must be a positive integer"):
                next(pop.split(bad))
        assert torch.equal(model(x), whole)
    with pytest.raises(RuntimeError, match="has ended"), pop.part(0, 4):
        pass
    with es.population() as pop:
        es.tell(torch.randn(8))
        with pytest.raises(RuntimeError, match="has ended"), pop.part(0, 4):
            pass
    by_hand = flipes.es.population.Population(size=8, popsize=8, generation=0, sigma=0.1, members=range(8), groups=range(1))
    with pytest.raises(RuntimeError, match=r"not made by FlipES\.population"):
        by_hand.part(0, 4)


def test_a_split_left_early_gives_the_whole_population_back() -> None:
    """Leaving a split loop with ``break`` (or an error in its body) ends the part: the layers evaluate
    the whole population, and the next generation splits again."""
    model = flipes.flipout(nn.Linear(3, 2))
    es = flipes.FlipES(model, popsize=8, sigma=0.1)
    x = torch.randn(8, 3)
    with es.population() as pop:
        for _ in pop.split(2):
            break
        assert model(x).shape == (8, 2)
        with pytest.raises(KeyError):
            for _ in pop.split(2):
                raise KeyError("in the body")
        assert model(x).shape == (8, 2)
    es.tell(torch.randn(8))
    with es.population() as pop:
        assert [p.size for p in pop.split(3)] == [3, 3, 2]


def _rows(result: flipes.TrainResult) -> list[tuple]:
    return [(r["params_sha256"], r["fitness_mean"], r["timesteps"], r.get("eval_return")) for r in result.metrics]


def test_training_in_parts_gives_the_run_of_one_pass(tmp_path: Path) -> None:
    """CartPole, 2 episodes per member, observation normalization on: with --members-per-pass 3 (an env
    of 3 × 2 copies rolled out 16 times a generation) every row's parameter hash, fitness, timesteps and
    evaluation equal those of one pass (float32 discrete control: the same bits). Two generations, both evaluated:
    the second rolls out with what the first left (parameters, optimizer, observation statistics recorded over
    the parts); later ones repeat that path with longer episodes (4 generations cost 5x as much). Episodes are cut at
    100 steps: the parts' equality does not depend on the length, and second-generation members reach the cut, so a
    part holds truncated and terminated episodes side by side."""
    kw = dict(env="flipes/CartPole-v1", popsize=48, groups=2, episodes=2, generations=2, eval_every=2, eval_episodes=4)
    kw |= dict(max_episode_steps=100, target=None, tensorboard=False, plot=False, progress=False)
    whole = flipes.train(out=str(tmp_path / "whole"), **kw)
    parts = flipes.train(out=str(tmp_path / "parts"), members_per_pass=3, **kw)
    assert _rows(parts) == _rows(whole) and whole.metrics[-1]["timesteps"] > 0
    assert parts.model.obs_norm.count.item() == whole.model.obs_norm.count.item() > 0


def test_a_fitness_of_ones_own_is_called_on_each_part(tmp_path: Path) -> None:
    """``members_per_pass`` calls a plugged-in fitness once per part, each with that part's members, and
    trains as one pass does; a wrong value in a part is a one-line error naming the part's size, and one sized by
    the whole population names pop.size against pop.popsize."""
    seen: list[range] = []

    def fitness(model: nn.Module, pop: flipes.Population) -> Tensor:
        seen.append(pop.members)
        x = torch.tensor([[0.1, -0.2, 0.3]]).expand(pop.size, 3)  # every member sees the same input
        return -(model(x) - 0.5).square().sum(1)

    def make_model(env: object) -> nn.Module:
        torch.manual_seed(0)
        return flipes.flipout(nn.Linear(3, 2))

    kw = dict(env="none", model=make_model, fitness=fitness, popsize=16, groups=2, generations=3)
    kw |= dict(tensorboard=False, plot=False, progress=False)
    whole = flipes.train(out=str(tmp_path / "whole"), **kw)
    assert seen == [range(16)] * 3
    seen.clear()
    parts = flipes.train(out=str(tmp_path / "parts"), members_per_pass=4, **kw)
    assert seen == [range(0, 4), range(4, 8), range(8, 12), range(12, 16)] * 3
    assert [r["params_sha256"] for r in parts.metrics] == [r["params_sha256"] for r in whole.metrics]

    def short(model: nn.Module, pop: flipes.Population) -> Tensor:
        return torch.zeros(pop.size + 1)

    with pytest.raises(
        flipes.UsageError, match=r"--fitness: .* shape \(5,\) for 4 members \(a part of --members-per-pass of --popsize 16\)"
    ) as e:
        flipes.train(out=str(tmp_path / "short"), **kw | {"fitness": short, "members_per_pass": 4})
    assert "pop.popsize" not in str(e.value)

    def whole_population(model: nn.Module, pop: flipes.Population) -> Tensor:
        return fitness(model, pop).new_zeros(pop.popsize)

    with pytest.raises(flipes.UsageError) as e:
        flipes.train(out=str(tmp_path / "popsize"), **kw | {"fitness": whole_population, "members_per_pass": 4})
    assert str(e.value).endswith(
        "shape (16,) for 4 members (a part of --members-per-pass of --popsize 16); return a Tensor of 4 finite real "
        "numbers, one per member (higher is better); size inputs by pop.size (4, a part of --members-per-pass), not "
        "pop.popsize (16, all members)"
    )


def test_a_rollout_fitness_given_an_env_of_one_part_rolls_the_parts_out_in_turn() -> None:
    """``RolloutFitness`` on an env of ``part × episodes`` copies returns every member's returns as one
    env of the whole population does and records the same observations, added to those already pending;
    an env that fits neither, or whose parts would straddle ε groups, is an error naming the sizes."""
    torch.manual_seed(0)
    env_whole = flipes.rl.make_vector_env("flipes/CartPole-v1", 8 * 2)
    env_part = flipes.rl.make_vector_env("flipes/CartPole-v1", 2 * 2)
    policy = flipes.rl.MLPPolicy(env_whole.single_observation_space, env_whole.single_action_space, hidden=[8])
    es = flipes.FlipES(policy, popsize=8, sigma=0.5, seed=1)
    with es.population() as pop:
        whole = flipes.rl.RolloutFitness(env_whole, episodes=2, seed=3)(policy, pop)
        pending = policy.obs_norm.pending.clone()
        policy.obs_norm.pending = None
        by_parts = flipes.rl.RolloutFitness(env_part, episodes=2, seed=3)(policy, pop)
        assert torch.equal(by_parts, whole) and torch.equal(policy.obs_norm.pending, pending)
        flipes.rl.RolloutFitness(env_part, episodes=2, seed=3)(policy, pop)  # a second fitness of the generation
        assert torch.equal(policy.obs_norm.pending, 2 * pending)
        with pytest.raises(ValueError, match=r"6 copies .* 8 × 2; make it with num_envs=16, or with parts × 2"):
            flipes.rl.RolloutFitness(flipes.rl.make_vector_env("flipes/CartPole-v1", 6), episodes=2)(policy, pop)
    grouped = flipes.FlipES(policy, popsize=12, sigma=0.5, seed=1, groups=2)  # ε groups of 6: parts of 4 would straddle them
    with grouped.population() as pop, pytest.raises(ValueError, match=r"8 copies .* 12 × 2; .* an ε group's 6 members"):
        flipes.rl.RolloutFitness(flipes.rl.make_vector_env("flipes/CartPole-v1", 4 * 2), episodes=2)(policy, pop)


def test_members_per_pass_that_cannot_split_evenly_is_refused_with_the_sizes_that_can() -> None:
    """--members-per-pass must split each process's members into equal parts within ε groups: the
    error lists the sizes that do (divisors of a group, whole groups dividing every process's block);
    --hold-noise false with a single pass, or with one group per process (its parts hold that group's noise),
    is refused too (the noise would be sampled twice for nothing)."""
    ok = dict(popsize=48, groups=4)  # groups of 12
    for good in (0, 3, 12, 24, 48, 100):
        flipes.config.validate(flipes.TrainConfig(**ok, members_per_pass=good))
    with pytest.raises(flipes.UsageError, match=r"--members-per-pass: 8 .* groups of 12.*one of \[1, 2, 3, 4, 6, 12, 24, 48\]"):
        flipes.config.validate(flipes.TrainConfig(**ok, members_per_pass=8))
    flipes.config.validate(flipes.TrainConfig(**ok, members_per_pass=24), processes=3)  # blocks of 1, 1, 2 groups: one pass
    uneven = flipes.TrainConfig(popsize=40, groups=5, members_per_pass=16)  # 2 processes of 2 and 3 groups of 8
    with pytest.raises(flipes.UsageError, match=r"16 does not split the processes' members .* one of \[1, 2, 4, 8, 24\]"):
        flipes.config.validate(uneven, processes=2)
    with pytest.raises(flipes.UsageError, match="must be 0 or positive"):
        flipes.config.validate(flipes.TrainConfig(**ok, members_per_pass=-1))
    with pytest.raises(flipes.UsageError, match=r"--hold-noise: false with --members-per-pass 48, which holds .* 48 members"):
        flipes.config.validate(flipes.TrainConfig(**ok, members_per_pass=48, hold_noise=False))
    flipes.config.validate(flipes.TrainConfig(**ok, members_per_pass=12, hold_noise=False))
    one_group = dict(popsize=48, groups=1, members_per_pass=4, hold_noise=False)  # every part inside the one group
    with pytest.raises(flipes.UsageError, match=r"--hold-noise: false with --groups 1: .* twice for nothing; .* = 12"):
        flipes.config.validate(flipes.TrainConfig(**one_group))
    with pytest.raises(flipes.UsageError, match=r"--groups 2: each process's parts lie in its one ε group of 24"):
        flipes.config.validate(flipes.TrainConfig(**one_group | {"groups": 2}), processes=2)
    flipes.config.validate(flipes.TrainConfig(**one_group | {"groups": 2}))  # one process, 2 groups: a group at a time


@pytest.mark.parametrize("setting", SETTINGS, ids=ids)
def test_noise_sampled_per_part_trains_as_noise_held_for_the_generation(setting: dict) -> None:
    """Three generations in parts of 2 and of one group, FlipES(hold_noise=False) against the default:
    the first generation's fitness bit for bit (the same members), parameters and σ within 1e-12 (tell
    sums the groups block by block: rounding alone), and the same best member (--track-best), its
    parameters within 1e-12."""
    torch.manual_seed(0)
    original = flipes.flipout(MLP().to(DT))
    x = torch.randn(N, 5, dtype=DT)
    for size in (2, N // setting["groups"]):
        runs = []
        for hold in (True, False):
            model = copy.deepcopy(original)
            es = make_es(model, setting, hold_noise=hold, lr=0.05, track_best=True)
            told = []
            for _ in range(3):
                with es.population() as pop:
                    fitness = torch.cat([model(x[p.members.start : p.members.stop]).sum(1) for p in pop.split(size)])
                told.append(fitness)
                es.tell(fitness)
            sigma = None if es.log_sigma is None else es.log_sigma.clone()
            runs.append((torch.stack(told), nn.utils.parameters_to_vector(model.parameters()), sigma, es.best))
        (f0, p0, s0, b0), (f1, p1, s1, b1) = runs
        assert torch.equal(f0[0], f1[0])  # the same members; later generations move by rounding apart
        torch.testing.assert_close(f1, f0, atol=1e-11, rtol=0)
        assert (p0 - p1).abs().max() <= 1e-12 * p0.abs().max() and not torch.equal(p0, original[0].weight.flatten())
        assert s0 is None or (s0 - s1).abs().max() <= 1e-12
        assert (b0.generation, b0.index) == (b1.generation, b1.index) and abs(b0.fitness - b1.fitness) <= 1e-11
        for key, value in b0.state_dict.items():
            torch.testing.assert_close(b1.state_dict[key], value, atol=1e-12, rtol=0)


def test_noise_sampled_per_part_holds_one_parts_groups_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """hold_noise=False samples a part's groups when it is entered, keeps them while the next parts lie
    in the same groups, and tell samples the groups again a part's worth at a time; a forward of the
    whole population samples all groups at once."""
    model = flipes.flipout(MLP().to(DT))
    es = flipes.FlipES(model, popsize=16, sigma=0.1, groups=4, hold_noise=False)  # groups of 4
    drawn: list[range] = []
    sample = es._sample
    monkeypatch.setattr(es, "_sample", lambda groups=None: drawn.append(groups) or sample(groups))
    x = torch.randn(16, 5, dtype=DT)
    with es.population() as pop:
        assert drawn == []  # nothing before a part
        for part in pop.split(2):  # two parts per group: each group drawn once
            model(x[part.members.start : part.members.stop])
            assert es._noise.groups == part.groups and model[0].noise[0].s.shape[0] == 2
        assert drawn == [range(g, g + 1) for g in range(4)]
    es.tell(torch.randn(16))
    assert drawn[4:] == [range(g, g + 1) for g in range(4)]  # one group at a time: the largest part's
    drawn.clear()
    with es.population() as pop:
        for part in pop.split(8):
            model(x[part.members.start : part.members.stop])
        model(x)  # the whole population: every group at once
        assert model[0].noise[0].s.shape[0] == 16
    es.tell(torch.randn(16))
    assert drawn == [range(0, 2), range(2, 4), range(0, 4), range(0, 4)]


def test_training_with_noise_sampled_per_part_evaluates_the_same_members(tmp_path: Path) -> None:
    """--hold-noise false with --members-per-pass 4 (12 groups of 4): CartPole logs the fitness,
    timesteps and evaluations of the run that holds the noise (float32 discrete control), and ends on
    its parameters to rounding; without --members-per-pass it is refused, saying what to add. Two generations, both
    evaluated: the second samples its parts' noise after a tell, as every later one does. Episodes are cut at 100
    steps: which members run does not depend on the episode length."""
    kw = dict(env="flipes/CartPole-v1", popsize=48, groups=12, episodes=2, generations=2, eval_every=2, eval_episodes=4)
    kw |= dict(max_episode_steps=100, target=None, tensorboard=False, plot=False, progress=False, members_per_pass=4)
    held = flipes.train(out=str(tmp_path / "held"), **kw)
    per_part = flipes.train(out=str(tmp_path / "per-part"), hold_noise=False, **kw)
    assert [r[1:] for r in _rows(per_part)] == [r[1:] for r in _rows(held)]
    a, b = (nn.utils.parameters_to_vector(r.model.parameters()) for r in (held, per_part))
    assert (a - b).abs().max() <= 1e-5 * a.abs().max() and a.abs().max() > 0
    with pytest.raises(flipes.UsageError, match=r"--hold-noise: .* add --members-per-pass \(with --groups 12: a divisor of 4"):
        flipes.train(out=str(tmp_path / "refused"), **kw | {"hold_noise": False, "members_per_pass": 0})


@pytest.mark.parametrize("hold_noise", [True, False], ids=["held", "per-part"])
def test_a_part_left_open_and_closed_in_a_later_population_leaves_that_population_alone(hold_noise: bool) -> None:
    """A split generator left suspended in a part outlives its population; closed (collected) inside the next
    generation's population, it leaves that population's noise installed: the members' outputs stay those of a plain
    copy loaded with each member's parameters (uninstalled, every member would run as the mean network, silently)."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Linear(3, 2).to(DT))
    es = flipes.FlipES(model, popsize=8, sigma=0.5, groups=4, hold_noise=hold_noise)
    x = torch.randn(8, 3, dtype=DT)
    with es.population() as pop:
        left_open = pop.split(2)
        assert next(left_open).size == 2 and model(x[:2]).shape == (2, 2)
    es.tell(torch.arange(8.0))
    plain = nn.Linear(3, 2).to(DT)
    with es.population() as pop:
        first = model(x).clone()
        del left_open  # closes the old generation's part
        out = model(x)
        with pop.part(2, 4):
            part = model(x[2:4])
    for member in range(8):
        plain.load_state_dict(es.member_state_dict(member))
        with torch.no_grad():
            torch.testing.assert_close(out[member], plain(x[member]), atol=1e-12, rtol=0)
    assert torch.equal(out, first) and torch.equal(part, out[2:4])


def test_copies_made_during_a_population_with_noise_sampled_per_part_are_the_mean_network_and_its_members() -> None:
    """hold_noise=False: a deep copy of the model made inside ``es.population()`` is the mean network (it kept the
    population's sampling hook, and its first forward perturbed it for good), and a deep copy of the FlipES made
    after a whole-population forward evaluates the same members as the original (it evaluated the mean network)."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT))
    es = flipes.FlipES(model, popsize=8, sigma=0.5, groups=4, hold_noise=False)
    x = torch.randn(8, 3, dtype=DT)
    with torch.no_grad():
        mean = model(x)
    with es.population() as pop:
        members = model(x)
        model_copy, es_copy = copy.deepcopy(model), copy.deepcopy(es)
        with pop.part(0, 2):
            assert torch.equal(model(x[:2]), members[:2])
    with torch.no_grad():
        assert torch.equal(model_copy(x), mean) and torch.equal(model_copy(x), mean)
    with es_copy.population() as pop:
        assert torch.equal(es_copy.model(x), members)
        assert torch.equal(torch.cat([es_copy.model(x[p.members.start : p.members.stop]) for p in pop.split(2)]), members)
    assert es.tell(members.sum(1))["grad_norm"] == es_copy.tell(members.sum(1))["grad_norm"]


def test_part_bounds_of_numpy_and_torch_integer_types_are_taken_and_a_bool_is_not() -> None:
    """``np.array_split``'s bounds (numpy integers) and 0-d integer tensors are integers, as everywhere else in
    FlipES; a bool (a 0-d bool tensor too) or float is an error naming the range."""
    np = pytest.importorskip("numpy")
    model = flipes.flipout(nn.Linear(3, 2))
    es = flipes.FlipES(model, popsize=8, sigma=0.1, groups=2)
    with es.population() as pop:
        with pop.part(np.int64(4), torch.tensor(8)) as part:
            assert part.members == range(4, 8) and type(part.size) is int
        assert [p.members for p in pop.split(np.int64(2))] == [range(a, a + 2) for a in range(0, 8, 2)]
        for start, stop in ((True, 2), (torch.tensor(True), 2), (0, 2.0)):
            with pytest.raises(ValueError, match=r"integers, 0 <= start < stop <= 8"):
                pop.part(start, stop)


@pytest.mark.parametrize("hold_noise", [True, False], ids=["held", "per-part"])
def test_ids_shared_by_every_member_of_a_part_get_the_hint_with_the_parts_rows(hold_noise: bool) -> None:
    """Position ids a model makes itself, ``(1, T)``, with 3 sequences per member: inside a part the error names
    the ids for the part's rows (it compared the clash with the whole population's size and gave no hint)."""

    class Positions(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok, self.pos = nn.Embedding(10, 4), nn.Embedding(5, 4)

        def forward(self, ids: Tensor) -> Tensor:
            return self.tok(ids) + self.pos(torch.arange(ids.shape[1])[None])

    model = flipes.flipout(Positions())
    es = flipes.FlipES(model, popsize=8, sigma=0.1, groups=2, hold_noise=hold_noise)
    hint = re.escape("position_ids=torch.arange(5).expand(6, 5)")
    with pytest.raises(RuntimeError, match=hint), es.population() as pop, pop.part(0, 2):
        model(torch.randint(0, 10, (6, 5)))
    with pytest.raises(RuntimeError, match=hint), es.population() as pop:
        torch.cat([model(torch.randint(0, 10, (p.size * 3, 5))) for p in pop.split(2)])


def test_a_population_pickles_for_a_worker_process_without_its_parts() -> None:
    """A Population pickles (a fitness may send it to worker processes) with every field but the way
    back into this process's layers: the copy is equal, and its part() says where parts come from."""
    es = flipes.FlipES(flipes.flipout(nn.Linear(3, 2)), popsize=8, sigma=0.1, groups=2)
    with es.population() as pop:
        copy_ = pickle.loads(pickle.dumps(pop))
        assert copy_ == pop and copy_.members == pop.members and copy_.enter_part is None
        with pytest.raises(RuntimeError, match=r"not made by FlipES\.population"):
            copy_.part(0, 4)
        with pop.part(0, 4) as part:
            assert pickle.loads(pickle.dumps(part)) == part


@pytest.mark.parametrize("hold_noise", [True, False], ids=["held", "per-part"])
def test_a_population_entered_twice_in_a_generation_evaluates_the_same_members_twice(hold_noise: bool) -> None:
    """``es.population()`` entered again in the same generation: a whole-population forward (and parts) in the second
    block computes the members of the first, bit for bit, not the mean network; with noise sampled per part too,
    where the first block's end removes the noise its whole forward installed (noise still marked installed would run
    every member of the second block as the mean network, silently)."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT))
    es = flipes.FlipES(model, popsize=N, sigma=0.5, groups=4, hold_noise=hold_noise)
    x = torch.randn(N, 3, dtype=DT)
    with es.population():
        first = model(x)
    with es.population() as pop:
        again = model(x)
        parts = torch.cat([model(x[p.members.start : p.members.stop]) for p in pop.split(2)])
        after_parts = model(x)
    with torch.no_grad():
        assert not torch.equal(first, model(x))  # the members, not the mean network
    assert torch.equal(again, first) and torch.equal(after_parts, first)
    torch.testing.assert_close(parts, first, atol=1e-12, rtol=0)


def test_tell_builds_the_best_member_after_the_old_gradient_and_the_last_parts_noise_are_freed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With track_best and hold_noise=False, tell copies the best member while neither the last generation's .grad
    (a copy of the parameters) nor the last part's noise block is held, so the copy does not add to tell's peak memory;
    the member is the one member_state_dict gives for the fittest index."""
    torch.manual_seed(0)
    model = flipes.flipout(nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)))
    es = flipes.FlipES(model, popsize=N, groups=4, sigma=0.1, seed=1, track_best=True, hold_noise=False)
    real = flipes.es.members.member_state_dict
    held: list[tuple[bool, bool]] = []

    def member_state_dict(es_: flipes.FlipES, index: int) -> dict:
        held.append((any(p.grad is not None for p in es_.params), es_._noise.noise is not None))
        return real(es_, index)

    monkeypatch.setattr(flipes.es.members, "member_state_dict", member_state_dict)
    x = torch.randn(N, 5)
    for generation in range(2):
        with es.population() as pop:
            fitness = torch.cat([model(x[p.members.start : p.members.stop]).sum(-1) for p in pop.split(2)])
        es.tell(fitness * (generation + 1))  # the second generation's best is fitter: built again
    assert held == [(False, False), (False, False)]
