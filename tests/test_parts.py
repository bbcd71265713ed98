"""A population evaluated in parts (``pop.part``, ``pop.split``): each part's members keep exactly
their perturbation of the whole population, so a population too large for one forward pass gives the
same fitness in pieces.

Checked member by member against a plain torch copy loaded with ``es.member_state_dict(i)``, the
explicit reference of tests/test_members.py.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
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


@pytest.mark.parametrize("setting", [SETTINGS[1], SETTINGS[3], SETTINGS[4], SETTINGS[6]], ids=ids)
@pytest.mark.parametrize("name,make,inputs", MODELS, ids=[m[0] for m in MODELS])
def test_every_part_computes_its_members_outputs(
    name: str, make: Callable[[], nn.Module], inputs: Callable[[int], Tensor], setting: dict
) -> None:
    """In parts of 1, 2, 3 and 4 members (mirrored twins split, several ε groups, low-rank ε, one σ per
    slot), row j of a part is the output of a plain copy of the model loaded with member
    ``part.members[j]``'s parameters (float64, within 1e-11), and after the parts the layers evaluate
    the whole population again, as before."""
    torch.manual_seed(1)
    original = make().to(DT)
    model = flipes.flipout(copy.deepcopy(original))
    es = make_es(model, setting)
    x = inputs(N)
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


def test_split_never_straddles_a_group() -> None:
    """Parts hold at most ``size`` members: pieces of one ε group when ``size`` is smaller than a group
    (the last piece of each group smaller), else as many whole groups as fit."""
    model = flipes.flipout(nn.Linear(3, 2))
    es = flipes.FlipES(model, popsize=12, sigma=0.1, groups=3, mirrored=False)  # groups of 4
    with es.population() as pop:
        bounds = {size: [(p.members.start, p.members.stop, p.groups) for p in pop.split(size)] for size in (1, 3, 4, 9, 12, 50)}
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
    five generations computed in one pass (bit for bit: each row's GEMM is the same)."""
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
            with pytest.raises(RuntimeError, match="a part of a part"):
                part.part(0, 2)
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
