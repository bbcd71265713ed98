"""How the speed benchmarks time their sides: warm-up kept out of the medians, the same work on both sides of a ratio.

Fake envs and a fake clock stand in for the real ones, so each property is exact and costs no env steps."""

from __future__ import annotations

import json
import statistics
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from gymnasium.spaces import Box
from helpers import ROOT, load_script, script_state_kept


class FakeEnv:
    """A vector env whose reset costs 1 clock unit and whose step costs 0.01: what time_random's clock sees."""

    single_observation_space = Box(-1.0, 1.0, (3,))
    single_action_space = Box(-1.0, 1.0, (2,))

    def __init__(self, clock: list[float] | None = None, num_envs: int = 4) -> None:
        self.clock, self.num_envs = clock if clock is not None else [0.0], num_envs

    def reset(self, seed: int | None = None) -> None:
        self.clock[0] += 1.0

    def step(self, action: Any) -> None:
        self.clock[0] += 0.01

    def close(self) -> None:
        pass


def test_bench_rollout_baseline_rate_counts_its_reset_as_the_policy_engines_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sync random``'s rate is timed from its reset to its last step, as every engine with the policy in the loop is
    (``time_policy`` starts its clock before ``reset_episodes``): N·steps / (reset + steps), here 40 / 1.1, not 40 / 0.1."""
    module = load_script(ROOT / "scripts" / "bench_rollout.py")
    clock = [0.0]
    monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    rate = module.time_random(FakeEnv(clock), n=4, steps=10, seed=0)
    assert rate == pytest.approx(40 / 1.1)


def test_bench_rollout_first_round_is_an_untimed_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each engine's first rollout (cold: EnvPool's threads, worker processes, first allocations) is run but left out
    of the median: with one timed repeat, every engine reports its second rollout's rate."""
    module = load_script(ROOT / "scripts" / "bench_rollout.py")
    calls: dict[int, int] = {}

    def rate(env: FakeEnv, *args: Any, **kwargs: Any) -> float:
        calls[id(env)] = calls.get(id(env), 0) + 1
        return 1.0 if calls[id(env)] == 1 else 100.0  # cold first call, warm after

    monkeypatch.setattr(module, "make_engine", lambda engine, env_id, n, threads: (FakeEnv(), False))
    monkeypatch.setattr(module, "time_random", rate)
    monkeypatch.setattr(module, "time_policy", rate)
    rates = module.bench("HalfCheetah-v5", 4, module.Args(repeats=1))
    assert set(rates) == set(module.ENGINES)
    assert all(r == 100.0 for r in rates.values()), rates
    assert all(c == 2 for c in calls.values()) and len(calls) == len(module.ENGINES)


def test_benchmark_prints_the_quartiles_of_every_variants_timed_blocks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Beside each median, scripts/benchmark.py prints the spread it was taken from: the inclusive quartiles of the
    variant's timed blocks (1..5 ms: 2 and 4) and their count, "skipped" where a variant did not run (vmap and bmm
    over the memory cap)."""
    module = load_script(ROOT / "scripts" / "benchmark.py")
    blocks = [5.0, 1.0, 4.0, 2.0, 3.0]
    timed = {"ms": 3.0, "calls_per_block": 1, "blocks_ms": blocks}
    names = ("plain", "flipout", "lowrank", "fresh", "sample", "sample_tell")

    def bench(size: str, n: int, *args: Any) -> dict:
        return {"mlp": size, "n": n, "params": 1, "member_weights_gb": 9.0, "variants": {k: dict(timed) for k in names}}

    monkeypatch.setattr(module, "bench", bench)
    module.main(module.Args(sizes=["4-3-2"], popsizes=[8]))
    out = capsys.readouterr().out
    cell = "2.000–4.000 (5)"
    assert "| (a) plain | (b) flipout | (c) fresh | (d) vmap | (e) bmm | sample+tell | sample | (f) low-rank r=4 |" in out
    expected = f"| 4-3-2 | 8 | {cell} | {cell} | {cell} | skipped | skipped | {cell} | {cell} | {cell} |"
    assert expected in out.splitlines(), out


def test_repro_timing_low_rank_table_shows_the_quartiles_of_its_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The low-rank throughput table of scripts/repro_timing.py gives, beside each median, the inclusive quartiles of
    the interleaved rounds it was taken from (kept in the JSON as ``rounds_ms``, one per round)."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    module = load_script(ROOT / "scripts" / "repro_timing.py")
    with script_state_kept():
        results = module.main(module.Args(sections=["lowrank"], ranks=[2], tiny=True, out=str(tmp_path)))
    capsys.readouterr()
    markdown = (tmp_path / "repro_timing_tiny.md").read_text(encoding="utf-8")
    assert "| variant | ms / forward | quartiles (rounds) | throughput vs plain |" in markdown
    for row in results["lowrank"]:
        rounds = row["rounds_ms"]
        assert len(rounds) == 3 and row["ms"] == pytest.approx(statistics.median(rounds))
        q1, _, q3 = statistics.quantiles(rounds, n=4, method="inclusive")
        assert f"| {row['variant']} | {row['ms']:.3f} | {q1:.3f}–{q3:.3f} (3) |" in markdown


def test_bench_rollout_names_the_cpu_model_its_rates_were_measured_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The JSON's machine is the CPU's model name from /proc/cpuinfo (what tells a Xeon's rates from an EPYC's), not
    ``platform.machine()``'s bare x86_64."""
    cpuinfo = Path("/proc/cpuinfo")
    names = (
        [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        if (cpuinfo.exists())
        else []
    )
    if not names:
        pytest.skip("no CPU model name in /proc/cpuinfo here")
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    module = load_script(ROOT / "scripts" / "bench_rollout.py")
    monkeypatch.setattr(module, "bench", lambda env_id, n, args: {name: 1.0 for name in module.ENGINES})
    with script_state_kept():
        module.main(module.Args(envs=["HalfCheetah-v5"], sizes=[4], json=str(tmp_path / "r.json")))
    capsys.readouterr()
    meta = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["meta"]
    assert meta["machine"] == names[0]


def test_bench_solve_starts_evotorchs_actors_before_its_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """EvoTorch's ray actors (a process each: seconds of imports) start before its clock, as flipes' envs are built
    before flipes' clock: with start-up costing 10 clock units on first use and a generation 1, a run solved in its
    first generation reports 1 wall second and the start-up in ``setup_s``. A fake EvoTorch stands in for the real one
    (an extra, not installed for the tests)."""
    clock = [0.0]

    class Problem:
        started = False

        def start(self) -> None:  # VecGymNE starts its actors lazily, on first use
            if not self.started:
                self.started, clock[0] = True, clock[0] + 10.0

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def all_remote_problems(self) -> Any:
            self.start()
            return types.SimpleNamespace(get_observation_stats=lambda: [None])

        def make_zeros(self, num_solutions: int) -> list[None]:
            return [None] * num_solutions

        def kill_actors(self) -> None:
            pass

    class PGPE:
        def __init__(self, problem: Problem, **kwargs: Any) -> None:
            self.problem, self.status = problem, {"center": None, "total_interaction_count": 100}

        def step(self) -> None:
            self.problem.start()
            clock[0] += 1.0

    fake = {"evotorch": types.ModuleType("evotorch"), "evotorch.algorithms": types.SimpleNamespace(PGPE=PGPE),
            "evotorch.neuroevolution": types.SimpleNamespace(VecGymNE=Problem)}  # fmt: skip
    for name, module in fake.items():
        monkeypatch.setitem(sys.modules, name, module)
    module = load_script(ROOT / "scripts" / "bench_solve.py")
    monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    solved = types.SimpleNamespace(returns=torch.full((10,), 500.0), steps=5000)
    monkeypatch.setattr(module, "evaluate_center", lambda *args: solved)
    rows = module.run_evotorch(0, module.Args(evotorch_actors=2))
    assert [(r["criterion"], r["solved"], r["wall_s"], r["setup_s"]) for r in rows] == [
        ("10 ep", True, 1.0, 10.0),
        ("100 ep", True, 1.0, 10.0),
    ]
