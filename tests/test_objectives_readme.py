"""README's "Several objectives and constraints": its blocks, run as written (with the seed varied), end where their
comments say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from test_readme import readme_blocks

SECTION = "from flipes.shaping import"


def _block(start: str) -> str:
    (source,) = [block for _, block in readme_blocks() if block.startswith(start)]
    return source


def _run(source: str, seed: int | None = None, **names: Any) -> dict[str, Any]:
    """``source`` run in a namespace of its own (with ``names``), its ``seed=0`` made ``seed`` where given."""
    if seed is not None:
        assert source.count("seed=0") == 1
        source = source.replace("seed=0", f"seed={seed}")
    ns: dict[str, Any] = {"__name__": "readme_objectives", **names}
    exec(compile(source, "README.md", "exec"), ns)
    return ns


@pytest.mark.parametrize("seed", range(4))
def test_feasible_first_ends_at_the_constrained_optimum(seed: int) -> None:
    """The constrained Vector search ends within 0.1 of 0.5 in every coordinate (the optimum of -‖x - 1‖² under
    ‖x‖₁ <= 5), not near reward's own optimum at 1, for seeds 0-3."""
    x = _run(_block("import flipes, torch\nfrom flipes.shaping import feasible_first\n\nx"), seed)["x"].value.detach()
    assert (x - 0.5).abs().max() < 0.1, x


@pytest.mark.parametrize("seed", range(4))
def test_mean_ranks_of_two_objectives_end_on_the_pareto_set(seed: int) -> None:
    """The gathered mean-rank loop of two objectives (near 1 and near -1) ends within 0.05 of the Pareto set, the
    segment ``t·(1, ..., 1)`` for t in [-1, 1], from a start 3.3 away from it, for seeds 0-3."""
    x = _run(_block("import flipes, torch\nfrom flipes.shaping import centered_ranks"), seed)["x"].value.detach()
    t = x.mean().clamp(-1, 1)
    assert (x - t).norm() < 0.05, x


def test_the_callback_logs_the_members_cost_beside_the_fitness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Safety callback's ``cost_mean`` reaches metrics.jsonl every generation, equal to the mean ‖v‖₁ of that
    generation's members as the same search in a loop of its own computes it (the first block's, whose rows are these
    run's: one seed, one model); it ends near the budget 5."""
    monkeypatch.chdir(tmp_path)
    _run(_block("import flipes, torch\nfrom flipes.shaping import feasible_first\n\n\nclass Safety"))
    rows = [json.loads(line) for line in (tmp_path / "runs" / "safe" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 100 and all("cost_mean" in row for row in rows)
    source = _block("import flipes, torch\nfrom flipes.shaping import feasible_first\n\nx")
    costs: list[float] = []
    traced = source.replace("    es.tell(", "    costs.append(cost.mean().item())\n    es.tell(")
    _run(traced, costs=costs)
    torch.testing.assert_close([row["cost_mean"] for row in rows], costs, rtol=1e-6, atol=0)
    assert 4.5 < rows[-1]["cost_mean"] < 5.5
