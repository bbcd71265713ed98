"""Edges of ``feasible_first`` and of the several-objectives errors: a feasible fitness that is infinite, violations at
the ends of float64's range, the float64 result, and errors that name objectives or gathering only where they apply."""

from __future__ import annotations

import re

import pytest
import torch

import flipes
from flipes.shaping import centered_ranks, feasible_first


@pytest.mark.parametrize("maximize,fitness", [(True, torch.inf), (False, -torch.inf)])
def test_an_infinite_feasible_fitness_is_refused(maximize: bool, fitness: float) -> None:
    """A feasible member whose fitness is infinite on the good side (+inf to maximize, -inf for a loss) is refused as
    a NaN is: its score would not be finite, and tell refuses it."""
    with pytest.raises(ValueError, match=r"1 feasible member\(s\) have a fitness .* or not finite \(0="):
        feasible_first(torch.tensor([fitness, 1.0]), torch.tensor([0.0, 0.0]), 0.0 if maximize else 5.0, maximize)


@pytest.mark.parametrize("maximize", [True, False])
def test_a_violation_past_float64s_range_from_worst_scores_finite_and_last(maximize: bool) -> None:
    """worst ∓ violation beyond float64's largest number scores a finite value, below (above, for a loss) every
    feasible member and every smaller violation: it overflowed to ∓inf, which tell refuses."""
    sign = 1.0 if maximize else -1.0
    fitness = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64) * sign
    violation = torch.tensor([0.0, 0.0, 1.0, 1e308], dtype=torch.float64)
    score = feasible_first(fitness, violation, -1e308 * sign, maximize)
    assert bool(score.isfinite().all())
    assert (sign * score).argsort().tolist() == [3, 2, 0, 1]


@pytest.mark.parametrize("maximize", [True, False])
def test_a_tiny_violation_ranks_below_a_feasible_member_at_worst(maximize: bool) -> None:
    """An infeasible member whose violation is under worst's rounding step (a cost over its budget by 1e-15) still
    ranks below a feasible member whose fitness is exactly worst: worst - violation rounded to worst, a tie."""
    sign = 1.0 if maximize else -1.0
    fitness = torch.tensor([-100.0, 3.0, 0.0], dtype=torch.float64) * sign
    violation = torch.tensor([0.0, 1e-15, 0.0], dtype=torch.float64)
    ranks = centered_ranks(sign * feasible_first(fitness, violation, -100.0 * sign, maximize))
    assert ranks.tolist() == [0.0, -0.5, 0.5]


def test_float32_values_score_in_float64() -> None:
    """float32 fitness and violations give float64 scores, so violations 1 and 2 below worst = -1e9 stay apart (in
    float32, -1e9 - 1 and -1e9 - 2 both round to -1e9)."""
    score = feasible_first(torch.tensor([0.0, 5.0, 5.0]), torch.tensor([0.0, 1.0, 2.0]), -1e9)
    assert score.dtype == torch.float64
    assert score.tolist() == [0.0, -1e9 - 1, -1e9 - 2]


def _tell_error(value: object) -> str:
    x = flipes.flipout(flipes.nn.Vector(torch.zeros(3)))
    es = flipes.FlipES(x, popsize=4, sigma=0.1, seed=0)
    with es.population():
        x()
    with pytest.raises((TypeError, ValueError)) as info:
        es.tell(value)
    return str(info.value)


@pytest.mark.parametrize("value", [torch.zeros(4, 4), {}, [torch.zeros(4)]], ids=["square", "empty dict", "one part"])
def test_what_is_not_several_objectives_is_not_called_so(value: object) -> None:
    """A square (N, N) table (which axis is the member's is unknown), an empty dict and a list of one tensor of N values
    (a single part: torch.cat is right) get no 'objectives' hint."""
    message = _tell_error(value)
    assert "Several objectives" not in message and "values per member" not in message


def test_too_many_weights_name_no_gathering() -> None:
    """A shaping that returns more weights than members (2N) is refused without the hint for too few (gathering values
    a fitness kept per process), which could not be its cause."""
    x = flipes.flipout(flipes.nn.Vector(torch.zeros(3)))
    es = flipes.FlipES(x, popsize=4, sigma=0.1, seed=0, shaping=lambda f: torch.cat([f, f]))
    with es.population():
        f = x().sum(1)
    with pytest.raises(ValueError, match=r"got shape \(8,\)") as info:
        es.tell(f)
    assert "gather" not in str(info.value)


@pytest.mark.parametrize("mode", ["seeds", "allreduce"])
def test_readmes_gathered_mean_rank_block_runs_on_two_ranks_as_on_one(mode: str) -> None:
    """README's gathered mean-rank loop, with the arguments its comment says to add for K processes (K = 2 ranks played
    by threads), ends on the parameters of one process with the same groups: bit for bit with ``seeds``, to float32
    rounding (1e-5) with ``allreduce``, whose summed update rounds apart."""
    from helpers import run_thread_ranks
    from test_readme import readme_blocks

    (source,) = [b for _, b in readme_blocks() if b.startswith("import flipes, torch\nfrom flipes.shaping import centered_ranks")]
    (added,) = re.findall(r"# K processes: add (groups=K, comm=flipes\.dist\.world\(\))", source)
    assert source.count("seed=0)") == 1

    def run(comm: object | None) -> torch.Tensor:
        extra = added.replace("groups=K", "groups=2").replace("flipes.dist.world()", "comm") + f", comm_mode={mode!r}"
        code = source.replace("seed=0)", "seed=0, groups=2)" if comm is None else f"seed=0, {extra})")
        ns: dict = {"__name__": "readme_gather", "comm": comm}
        exec(compile(code, "README.md", "exec"), ns)
        return ns["x"].value.detach().clone()

    one = run(None)
    for got in run_thread_ranks(run, 2):
        assert isinstance(got, torch.Tensor), got
        if mode == "seeds":
            assert torch.equal(got, one)
        else:
            torch.testing.assert_close(got, one, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "fitness,violation,shapes",
    [
        (torch.zeros(4), 0.0, r"fitness \(4,\) and violation \(\)"),
        (torch.zeros(4, 1), torch.zeros(4, 1), r"fitness \(4, 1\) and violation \(4, 1\)"),
        (torch.zeros(4), torch.zeros(4, 1), r"fitness \(4,\) and violation \(4, 1\)"),
    ],
    ids=["scalar violation", "columns", "one column"],
)
def test_values_not_one_per_member_are_named_as_feasible_firsts(fitness: object, violation: object, shapes: str) -> None:
    """A vector fitness with one number as violation, or columns (N, 1), is refused naming feasible_first, both shapes
    and the fix, not as a shaping function's fitness (which feasible_first is not, and which named neither argument)."""
    with pytest.raises(ValueError, match=rf"^feasible_first: {shapes} need one value each per member.*full_like") as info:
        feasible_first(fitness, violation, -10.0)
    assert "shaping function" not in str(info.value)
