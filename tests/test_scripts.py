"""Subprocess smoke tests of the command-line jobs, with tiny budgets."""

from __future__ import annotations

import contextlib
import io
import json
import re
import runpy
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, load_script, once_per_session, script_in_this_process, script_state_kept
from helpers import run_script as run

from flipes.errors import EqualFitnessWarning


def run_main(script: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], **options: Any) -> str:
    """``scripts/SCRIPT.py``'s ``main(Args(**options))`` in this process, its stdout: a process of the script's own
    would cost seconds of imports, and the processes it starts itself (its subjects, where it has any) still start.
    What it sets for the whole process is put back for the tests after it (script_state_kept)."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # for what main imports of its siblings as it runs
    module = load_script(ROOT / "scripts" / f"{script}.py")
    capsys.readouterr()
    with script_state_kept():
        module.main(module.Args(**options))
    return capsys.readouterr().out


def test_benchmark_quick_prints_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """scripts/benchmark.py --quick prints the table (the 17-64-64-6 network at N = 64, the (b)/(a) ratio) and writes
    a JSON file with results and machine information, making its folder (run in this process: tests/test_gpu_check.py
    starts the script with these options as its own process)."""
    out = run_main("benchmark", monkeypatch, capsys, quick=True, json=str(tmp_path / "new" / "b.json"))
    assert "| 17-64-64-6 | 64 |" in out and "(b)/(a)" in out
    rows = json.loads((tmp_path / "new" / "b.json").read_text())
    assert rows["results"] and rows["machine"]  # raw numbers written


def test_bench_atari_quick_times_vmap_beside_flipout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """scripts/bench_atari.py --quick times the CNN's per-member-weights variant (vmap) after checking it gives
    Flipout's logits, reports vmap / Flipout, and reports the variant as skipped under --mem-cap-gb 0 (with no
    low-rank columns under --rank 0, and without the env steps part; both run in this process: a start of the
    script's own costs seconds)."""
    pytest.importorskip("envpool", reason="pip install 'flipes[envpool]' (Linux)")
    out = run_main("bench_atari", monkeypatch, capsys, quick=True, json=str(tmp_path / "a.json"))
    assert "vmap/flipout" in out and "| cnn |" in out
    (row,) = json.loads((tmp_path / "a.json").read_text())["forward"]
    assert row["n"] == 8 and row["vmap/flipout"] > 0 and "vmap" in row["variants"]
    out = run_main("bench_atari", monkeypatch, capsys, quick=True, rank=0, mem_cap_gb=0.0, env_steps=False)
    assert "| 8 |" in out and "| skipped | skipped |" in out and "low rank" not in out and "(2)" not in out


def test_bench_decoder_quick_times_flipout_beside_dense_noise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """scripts/bench_decoder.py --quick checks both converted decoders (Flipout and dense) against the plain one outside
    a population, then writes a row with the forward and generation times of each and prints the dense / flipout
    ratios."""
    out = run_main("bench_decoder", monkeypatch, capsys, quick=True, out=str(tmp_path))
    assert "| 8 |" in out and "dense / flipout" in out
    (row,) = json.loads((tmp_path / "bench_decoder_quick.json").read_text())["rows"]
    timed = ("plain", "flipout", "dense", "flipout generation", "dense generation")
    assert row["popsize"] == 8 and all(row[k] > 0 for k in timed)


def test_digits_fitness_plugs_into_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """scripts/digits.py's supervised fitness and model train through flipes.train: test accuracy climbs from chance
    (below 20% at generation 0) above 60% in 30 generations (seed 0: 10% to 80.6%; seeds 0-3 end at 76.9-81.4%)."""
    import flipes

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    result = flipes.train(env="none", model="digits:make_model", fitness="digits:fitness", popsize=64, generations=30,
                          lr=0.05, out=str(tmp_path), tensorboard=False, plot=False, progress=False)  # fmt: skip
    rows = result.metrics
    assert rows[0]["eval_return"] < 20 and rows[-1]["eval_return"] > 60, (rows[0]["eval_return"], rows[-1]["eval_return"])


def test_digits_without_scikit_learn_names_the_extra_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without scikit-learn, scripts/digits.py (and every script reading its data set) says in one line which extra
    to install, ``pip install 'flipes[examples]'`` as the README promises, and exits with status 2: no traceback. Run
    as ``__main__`` in this process (a new one costs seconds of imports): any other exception than that exit fails the
    test, as a traceback would."""
    import runpy
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    for name in ("sklearn", "sklearn.datasets"):  # their import raises ImportError, installed or imported before or not
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(sys, "argv", ["digits.py", "--generations", "1"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(ROOT / "scripts" / "digits.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err, err
    assert err.strip() == (
        "flipes: error: digits: the data set needs scikit-learn, which is not installed; pip install 'flipes[examples]'"
    )


def test_bench_hf_lm_without_transformers_names_the_extra_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without transformers, scripts/bench_hf_lm.py says in one line which extra to install, ``pip install
    'flipes[transformers]'`` as the README promises (it named none: an ImportError's traceback), and exits with
    status 2 before timing anything. Run as ``__main__`` in this process (a new one costs seconds of imports): any
    other exception than that exit fails the test, as a traceback would."""
    import runpy
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    monkeypatch.setitem(sys.modules, "transformers", None)  # its import raises ImportError, installed or not
    monkeypatch.setattr(sys, "argv", ["bench_hf_lm.py", "--quick"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(ROOT / "scripts" / "bench_hf_lm.py"), run_name="__main__")
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and out == "", err
    assert err.strip() == (
        "flipes: error: bench_hf_lm: the models need transformers, which is not installed; pip install 'flipes[transformers]'"
    )


def test_bench_solve_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """scripts/bench_solve.py --quick --no-gym-check runs and prints a flipes row for flipes/CartPole-v1 (the row's
    numbers are not checked), and evosax's rows where a Python with JAX, evosax and gymnax is found (.venv-jax),
    else says it skips them."""
    out = run_main("bench_solve", monkeypatch, capsys, quick=True, gym_check=False, out=str(tmp_path))
    assert "| flipes" in out and "flipes/CartPole-v1" in out
    evosax_rows = "| gymnax/CartPole-v1 | evosax OpenAI-ES | 10 ep | 0 |" in out
    assert evosax_rows != ("evosax is not found" in out), out


@pytest.mark.parametrize(
    ("argv", "says"),
    [(["--help"], "evosax's OpenAI-ES"), (["seed=0"], "not JSON"), (["[0]"], "JSON object"), (["{}", "{}"], "one argument")],
)
def test_bench_solve_evosax_explains_its_one_json_argument(argv: list[str], says: str) -> None:
    """scripts/bench_solve_evosax.py (no JAX needed to parse) prints its docstring for --help with status 0, and
    refuses an argument that is not one JSON object in one line, with no traceback."""
    r = run("scripts/bench_solve_evosax.py", *argv, check=False)
    assert (r.returncode == 0) == (argv == ["--help"]) and "Traceback" not in r.stderr, r.stderr
    assert says in (r.stdout if argv == ["--help"] else r.stderr) and (argv == ["--help"] or len(r.stderr.splitlines()) == 1)


def test_bench_solve_refuses_an_evosax_python_without_jax(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--evosax-python naming a Python that cannot import JAX, evosax or gymnax is refused by a UsageError naming the
    option (the command line's one line and status 2), before any run; checked in this process (a start costs
    seconds)."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import bench_solve

    from flipes.errors import UsageError

    with pytest.raises(UsageError, match=r"^--evosax-python: /nonexistent/python cannot import jax"):
        bench_solve.main(bench_solve.Args(quick=True, evosax_python="/nonexistent/python"))
    assert "===" not in capsys.readouterr().out  # no run started


def test_bench_algos_quick_runs_every_flipes_search_rule_on_every_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The search-rule benchmark trains each flipes variant on each task, each with the options its
    --algo row sets, and reports finite evaluations within the budget."""
    import math

    run_main("bench_algos", monkeypatch, capsys, quick=True, evotorch=False, out=str(tmp_path / "runs"),
             json=str(tmp_path / "a.json"), markdown=str(tmp_path / "a.md"))  # fmt: skip
    results = json.loads((tmp_path / "a.json").read_text())["results"]
    rules = ("openai-es", "adaptive-sigma", "pgpe", "ars", "fixed-sigma-x10", "adaptive-sigma-x10")
    tasks = ("pendulum", "halfcheetah", "digits")
    by = {(r["task"], r["method"]): r for r in results}
    assert sorted(by) == sorted((t, m) for t in tasks for m in rules) and len(results) == 18  # one seed each
    for r in results:
        assert r["generations"] >= 1 and r["train_s"] >= r["budget_s"] and r["evals"], r
        assert all(math.isfinite(x) for e in r["evals"] for x in e), r["evals"]
        assert r["evals"][-1][3] == r["generations"]  # the final value is the last generation's
    for t in tasks:
        assert by[(t, "openai-es")]["settings"]["sigma_lr"] == 0 and by[(t, "openai-es")]["settings"]["algo"] == "openai-es"
        assert by[(t, "adaptive-sigma")]["settings"] | {"sigma_lr": 0.2, "groups": 8} == by[(t, "adaptive-sigma")]["settings"]
        assert by[(t, "pgpe")]["settings"]["algo"] == "pgpe" and by[(t, "pgpe")]["settings"]["sigma_lr"] == 0.2
        assert by[(t, "ars")]["settings"]["sigma"] == 0.03 and by[(t, "ars")]["sigma_end"] == 0.03  # fixed σ
        row_sigma = by[(t, "openai-es")]["settings"]["sigma"]
        for m in ("fixed-sigma-x10", "adaptive-sigma-x10"):  # σ started 10x the row's
            assert by[(t, m)]["sigma_start"] == pytest.approx(10 * row_sigma), (t, m)
        assert by[(t, "adaptive-sigma-x10")]["settings"]["sigma_lr"] == 0.2
    assert by[("pendulum", "ars")]["settings"]["hidden"] == []  # ARS's linear policy
    table = (tmp_path / "a.md").read_text()
    assert all(f"| {t} | {m} | 0 |" in table for t in tasks for m in rules)


def test_bench_rollout_quick_measures_every_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The engine benchmark runs every engine with the policy in the loop and writes its rates."""
    run_main("bench_rollout", monkeypatch, capsys, quick=True, json=str(tmp_path / "r.json"))
    (row,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert set(row["rates"]) == {"sync random", "sync", "async", "envpool 1 thread", "envpool 2 threads",
                                 "envpool 2 threads pipelined"}  # fmt: skip
    assert all(rate > 0 for rate in row["rates"].values())


def test_bench_ab_quick_trains_both_trees_to_the_same_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The A/B benchmark against HEAD imports flipes from the exported commit and from the working tree, and
    reports both trainings' parameters equal (they are the same code when the tree is clean; a tree that
    changes the arithmetic fails this test, as the benchmark itself would); a bad revision is named, in the
    SystemExit that ends the script with status 1. Its main runs in this process (each training is its own fresh
    process, as ever: a start of the script's own would cost seconds of imports)."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import bench_ab

    bench_ab.main(bench_ab.Args(base="HEAD", quick=True, json=str(tmp_path / "ab.json")))
    result = json.loads((tmp_path / "ab.json").read_text())
    (row,) = result["results"]
    assert row["env"] == "flipes/CartPole-v1" and row["same_params"] and row["base_s"] > 0 and row["this_s"] > 0
    assert len(result["base"]) == 40
    with pytest.raises(SystemExit, match="--base 'no-such-rev' is not a commit"):
        bench_ab.main(bench_ab.Args(base="no-such-rev", quick=True))


def test_bench_ab_loops_time_a_generation_of_both_trees_to_the_same_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--loops`` times bare population/tell loops from both trees instead of training runs: µs per generation of
    each tree, the same parameters (the same code: the tree is HEAD's; its JSON goes to a folder it makes), and a loop
    it does not know is named (in the SystemExit that ends the script). Its main runs in this process, each loop in a
    fresh one."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import bench_ab

    bench_ab.main(bench_ab.Args(base="HEAD", loops=["vector"], quick=True, json=str(tmp_path / "new" / "l.json")))
    (row,) = json.loads((tmp_path / "new" / "l.json").read_text())["results"]
    assert row["env"] == "vector" and row["same_params"] and row["base_us"] > 0 and row["this_us"] > 0
    with pytest.raises(SystemExit, match="--loops cnn: no such loop; pick from vector, mlp, mlp8"):
        bench_ab.main(bench_ab.Args(base="HEAD", loops=["cnn"]))


def test_profile_rollout_quick_splits_a_step_into_sections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rollout profile times a generation of a torch env serially and splits it into disjoint sections: each
    timed, none inside another (what is left of the total, ``rest``, is neither negative nor all of it)."""
    run_main("profile_rollout", monkeypatch, capsys, quick=True, json=str(tmp_path / "p.json"))
    result = json.loads((tmp_path / "p.json").read_text())["results"]
    assert set(result) == {"serial"}  # a torch env has no send/recv to pipeline with
    row = result["serial"]
    assert all(row[k] > 0 for k in ("env", "policy", "of it Flipout MLP", "record", "total"))
    assert 0 < row["rest"] < row["total"] and row["of it Flipout MLP"] < row["policy"]


def test_bench_warp_quick_times_every_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The MuJoCo Warp benchmark steps flipes' env, EnvPool and gymnasium side by side and writes
    their rates and the machine's load."""
    pytest.importorskip("mujoco_warp", reason="pip install 'flipes[warp]'")
    run_main("bench_warp", monkeypatch, capsys, quick=True, json=str(tmp_path / "w.json"))
    result = json.loads((tmp_path / "w.json").read_text())
    (row,) = result["results"]
    assert row["env"] == "HalfCheetah-v5" and set(row["rates"]) == {"flipes", "envpool-1", "envpool-2", "gymnasium-sync"}
    assert all(rate > 0 for rate in row["rates"].values()) and len(result["meta"]["load_after"]) == 3


def test_bench_mujoco_quick_reads_the_runs_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The MuJoCo benchmark starts train.py as a user does (``python scripts/train.py`` with its options, in the
    repository root) and tabulates the evaluations of the runs it started: a threshold run and a curve run. Its main
    and the train.py runs it starts run in this process, each run as train.py's ``__main__`` with the command line the
    benchmark gives it (a fresh process per run costs seconds of imports)."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    module = load_script(ROOT / "scripts" / "bench_mujoco.py")
    started: list[list[str]] = []

    def run(cmd: list[str], cwd: Path, timeout: float, stdout: int) -> subprocess.CompletedProcess:
        assert cwd == ROOT and timeout > 0 and stdout == subprocess.DEVNULL
        assert cmd[:2] == [sys.executable, str(ROOT / "scripts" / "train.py")], cmd
        started.append(cmd)
        return script_in_this_process(cmd)

    monkeypatch.setattr(module, "subprocess", type("Subprocess", (), {"run": staticmethod(run), "DEVNULL": subprocess.DEVNULL}))
    capsys.readouterr()
    with script_state_kept():
        module.main(module.Args(quick=True, out=str(tmp_path)))
    out = capsys.readouterr().out
    assert "| HalfCheetah-v5 seed |" in out and "| Hopper-v5 |" in out
    assert [cmd[cmd.index("--env") + 1] for cmd in started] == ["HalfCheetah-v5", "Hopper-v5"]
    assert (tmp_path / "threshold-s0" / "metrics.jsonl").exists() and (tmp_path / "curve-Hopper-v5" / "metrics.jsonl").exists()


def test_bench_transformer_quick_times_every_variant_and_measures_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The transformer-block benchmark times every variant (or marks vmap skipped for memory),
    checks that Flipout perturbs the block, and measures peak memory in fresh processes, a population
    in parts (noise held or sampled per part) among them. Its main runs in this process, imported by
    its own name as the cells' server imports it (a start of the script's own costs seconds of
    imports); each memory cell is still a process of its own, forked from that server."""
    # d=32 block: 8,544 parameters, so N=8's copies (0.27 MB) fit under the cap and N=16's (0.55 MB) do not
    argv = ["--quick", "--mem-cap-gb", "0.0004", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["scripts/bench_transformer.py", *argv])  # the command line the script records
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # the cells' server imports the script by name from this path
    import bench_transformer

    capsys.readouterr()
    with script_state_kept(), warnings.catch_warnings():  # main filters a warning of vmap's for the whole process
        bench_transformer.main(bench_transformer.Args(quick=True, mem_cap_gb=0.0004, out=str(tmp_path)))
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "bench_transformer_quick.json").read_text())
    assert result["command"].startswith("PYTHONPATH=. python scripts/bench_transformer.py --quick")
    assert result["machine"]["torch"] and result["machine"]["threads"] >= 1 and result["machine"]["platform"]
    assert [r["n"] for r in result["speed"]] == [8, 16]
    for r in result["speed"]:
        rows = {row["variant"]: row for row in r["rows"]}
        assert set(rows) == {"plain", "plain (python)", "flipout", "low-rank r=1", "low-rank r=4", "vmap"}
        for name, row in rows.items():
            if "skipped" in row:
                assert name == "vmap" and row["skipped"].startswith("skipped (memory)")
            else:
                assert row["tokens_per_s"] > 0 and row["ms"] > 0 and row["path"]
        assert ("skipped" in rows["vmap"]) == (r["n"] == 16)  # the cap decides, nothing else
        assert rows["plain (python)"]["path"] == "python"
        for name in ("flipout", "low-rank r=1", "low-rank r=4"):
            assert r["checks"][name]["member_spread"] > 0  # the perturbation reached the outputs
            assert 0 < rows[name]["perturbed_params"] <= r["params"]
            assert r["sample_ms"][name] > 0
    memory = {(row["n"], row["variant"]): row for row in result["memory"]}
    parts = {(8, "parts of 4"), (8, "parts of 4, noise per part")}  # --quick: N = 8 in parts of 4 (2 groups)
    assert set(memory) == {(8, "plain"), (8, "flipout"), (8, "low-rank r=4")} | parts
    for (n, _), row in memory.items():
        assert row["peak_rss_gb"] >= row["rss_before_gb"] > 0 and row["seconds"] > 0
        assert row["copies_gb"] == pytest.approx(n * row["params"] * 4 / 1e9)
    markdown = (tmp_path / "bench_transformer_quick.md").read_text()
    assert "skipped (memory)" in markdown and "N weight copies GB" in markdown and "low-rank r=4" in markdown
    assert "| 8 | low-rank r=1 |" in out and "| 16 | vmap |" in out  # the tables are printed too


@pytest.fixture
def es_finetune_quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``scripts/es_finetune.py --quick`` in one process (this one, run as ``__main__``: a fresh one would
    cost seconds of imports; its 2-process run is test_es_finetune_under_mpiexec_matches_one_process's), run once per
    session: its --out directory and stdout."""

    def make(out: Path) -> None:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()) as stdout, script_state_kept():
            mp.syspath_prepend(str(ROOT / "scripts"))
            mp.setattr(sys, "argv", ["scripts/es_finetune.py", "--quick", "--out", str(out)])
            with warnings.catch_warnings():  # what the script's own process prints on its stderr, not the test's
                warnings.simplefilter("ignore", EqualFitnessWarning)
                runpy.run_path(str(ROOT / "scripts" / "es_finetune.py"), run_name="__main__")
        (out / "stdout.txt").write_text(stdout.getvalue())

    out = once_per_session(tmp_path_factory, "es_finetune_quick", make)
    return out, (out / "stdout.txt").read_text()


def test_es_finetune_quick_writes_a_row_per_method(es_finetune_quick: tuple[Path, str]) -> None:
    """The LM fine-tuning script pretrains, fine-tunes by FlipES and by backprop from the same
    checkpoint, and writes a row per method with exact matches in [0, 1]."""
    tmp_path, out = es_finetune_quick
    rows = json.loads((tmp_path / "es_finetune_quick.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["pretrained", "ES", "backprop"]  # --quick: one seed
    for r in rows:
        assert 0 <= r["em_before"] <= 1 and 0 <= r["em_after"] <= 1 and r["seconds"] > 0 and r["machine"]
    pretrained, es, backprop = rows
    assert es["em_before"] == backprop["em_before"] == pretrained["em_after"]  # the same starting point
    assert es["members_per_s"] > 0 and es["detail"]["curve"][-1]["heldout_em"] == es["em_after"]
    assert backprop["seconds"] >= es["seconds"]  # the baseline gets ES's wall time
    md = (tmp_path / "es_finetune_quick.md").read_text()
    assert all(f"| {m} |" in md for m in ("pretrained", "ES", "backprop")) and "| ES |" in out


def test_es_finetune_one_forward_scores_greedy_exact_match(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ES fitness scores greedy decoding's exact match with one teacher-forced forward: the same
    verdict, problem by problem, on a partly trained model (right on some problems, wrong on others)."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import es_finetune as ft
    import torch

    args = ft.Args(digits=2, d_model=32, ff=64, layers=1, pretrain_lr=3e-3, pretrain_batch=64, pretrain_max_steps=600)
    task = ft.make_task(2, train_size=2000, test_size=300, data_seed=0)
    assert not set(map(tuple, task.train.tolist())) & set(map(tuple, task.test.tolist()))  # disjoint problem sets
    model = ft.make_model(task, args, seed=0)
    ft.pretrain(model, task, args, seed=0)
    greedy = (ft.greedy_decode(model, task.test[:, : task.prompt_len], task.answer_len) == task.test[:, task.prompt_len :]).all(1)
    exact, _ = ft.forced_scores(model, task.test, task)
    assert 0 < greedy.float().mean() < 1  # some right, some wrong: the comparison is not vacuous
    assert torch.equal(exact.bool(), greedy)


def test_es_finetune_under_mpiexec_matches_one_process(tmp_path: Path, es_finetune_quick: tuple[Path, str]) -> None:
    """Under mpiexec -n 2 with --comm seeds, each rank evaluates its groups and the ES run is the
    one-process run: the same population fitness and held-out exact match at every evaluation."""
    import os
    import subprocess
    import sys

    mpiexec = Path(sys.executable).parent / "mpiexec"
    assert mpiexec.exists(), f"no mpiexec beside {sys.executable}: install the dev extras (they bring mpich)"
    script = ["scripts/es_finetune.py", "--quick", "--comm", "seeds", "--out", str(tmp_path / "two")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [str(mpiexec), "-n", "2", sys.executable, *script], cwd=ROOT, env=env, capture_output=True, timeout=120, check=True
    )
    one, two = (json.loads((d / "es_finetune_quick.json").read_text()) for d in (es_finetune_quick[0], tmp_path / "two"))
    assert (one["processes"], two["processes"]) == (1, 2)
    (es1,), (es2,) = ([r for r in result["rows"] if r["method"] == "ES"] for result in (one, two))
    keys = ("generation", "fitness_mean", "heldout_em")
    assert [[c[k] for k in keys] for c in es1["detail"]["curve"]] == [[c[k] for k in keys] for c in es2["detail"]["curve"]]


def test_bench_hf_lm_quick_times_forward_and_generate_and_measures_the_memory_of_each_noise_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Hugging Face LM benchmark checks that each Flipout model is the plain one outside a population and perturbs
    it inside, and times forward and generate for every variant beside plain inference, recording its command line;
    its memory child measures the forward's and tell's peak for held, low-rank and per-part noise. Both run in this
    process (a fresh process per run costs seconds of imports each)."""
    import sys

    pytest.importorskip("transformers")
    argv = ["--quick", "--threads", "1", "--memory", "false", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["scripts/bench_hf_lm.py", *argv])  # the command line the script records
    out = run_main("bench_hf_lm", monkeypatch, capsys, quick=True, threads=1, memory=False, out=str(tmp_path))
    result = json.loads((tmp_path / "bench_hf_lm_quick.json").read_text())
    assert result["command"].startswith("PYTHONPATH=. python scripts/bench_hf_lm.py --quick")
    assert result["machine"]["transformers"] and [r["n"] for r in result["speed"]] == [4, 8]
    for r in result["speed"]:
        cells = {(row["what"], row["variant"]): row for row in r["rows"]}
        variants = {"plain", "flipout", "low-rank r=1", "low-rank r=4"}
        assert set(cells) == {(what, v) for what in ("forward", "generate") for v in variants}
        assert all(row["ms"] > 0 and row["vs_plain"] > 0 for row in cells.values())
        assert all(c["outside_max_abs_diff"] == 0 and c["member_spread"] > 0 for c in r["checks"].values())
    assert "| 8 | generate | low-rank r=4 |" in out
    import bench_hf_lm as bench

    quick = bench.prepare(bench.Args(quick=True))
    memory = [bench.memory_child(quick, variant) for variant in bench.MEMORY_VARIANTS]
    assert [row["variant"] for row in memory] == [
        "plain",
        "flipout",
        "low-rank",
        "one group per member, parts of 1, noise per part",
    ]
    assert all(row["tell_peak_gb"] >= row["forward_peak_gb"] >= row["built_gb"] > 0 for row in memory)
    assert "tell peak GB" in bench.memory_markdown(memory, quick)


def test_bench_memory_quick_trains_mlp_and_gru_on_full_and_hidden_observations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The memory benchmark trains both policies on CartPole and Pendulum, fully observed and with the
    velocities hidden by its column wrapper, and writes a table row and finite returns for each."""
    import math

    out = run_main("bench_memory", monkeypatch, capsys, quick=True, out=str(tmp_path))
    for env, seen in (("CartPole-v1", "hidden: x, θ (no ẋ, θ̇)"), ("Pendulum-v1", "hidden: cos θ, sin θ (no θ̇)")):
        for policy in ("mlp", "gru"):
            assert f"| flipes/{env} | {seen} | {policy} |" in out
    result = json.loads((tmp_path / "bench_memory_quick.json").read_text())
    rows = result["results"]
    assert {(r["name"], r["observation"], r["policy"]) for r in rows} == {
        (e, o, p) for e in ("cartpole", "pendulum") for o in ("full", "hidden") for p in ("mlp", "gru")
    } and len(rows) == 8  # --quick: one seed
    for r in rows:
        assert r["generations"] == 2 and r["env_steps"] > 0 and r["evals"], r
        assert all(math.isfinite(x) for x in (r["final"], r["best"], r["wall_s"])) and r["best"] >= r["final"], r
    assert result["meta"]["command"] and result["meta"]["date"] and result["meta"]["machine"]
    assert "| flipes/Pendulum-v1 | full: cos θ, sin θ, θ̇ | gru |" in (tmp_path / "bench_memory_quick.md").read_text()


def test_bench_common_episodes_quick_measures_both_modes_at_both_points_and_trains_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The common-episodes benchmark measures the gradient estimates' agreement of independent and common episodes at a
    fresh and a trained policy, trains both modes on each env, and writes a table row and finite numbers for each."""
    import math

    run_main("bench_common_episodes", monkeypatch, capsys, quick=True, out=str(tmp_path), envs=["flipes/CartPole-v1"])
    result = json.loads((tmp_path / "bench_common_episodes_quick.json").read_text())
    noise, runs = result["noise"], result["runs"]
    assert {(r["at"], r["common"]) for r in noise} == {(a, c) for a in ("start", "trained") for c in (False, True)}
    assert all(-1 <= r["cos"] <= 1 and 0 <= r["cos_se"] < 2 and r["snr"] > 0 and r["estimates"] == 4 for r in noise), noise
    assert len({r["cos"] for r in noise}) == 4  # four measurements, not one repeated
    assert [(r["common"], r["generations"]) for r in runs] == [(False, 2), (True, 2)]
    assert all(r["env_steps"] > 0 and math.isfinite(r["wall_s"]) for r in runs), runs
    text = (tmp_path / "bench_common_episodes_quick.md").read_text()
    assert "| flipes/CartPole-v1 | 1 | trained |" in text and "| flipes/CartPole-v1 | 1 | common | 0 / 1 | >2 |" in text


def test_count_rollout_ops_counts_a_training_step_and_an_evaluation_step(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The op count runs a small CartPole population's training rollout and an evaluation under the profiler and
    prints, for each, the steps and a plausible count per step: some ops (a Flipout MLP step alone is a dozen), fewer
    than 200, and no more top-level ops than aten events."""
    out = run_main("count_rollout_ops", monkeypatch, capsys, envs=["flipes/CartPole-v1"], n=8, generations=1, eval_episodes=4)
    counts = [line for line in out.splitlines() if "per step:" in line]
    assert len(counts) == 2, out
    for line in counts:
        top, events = (float(v) for v in re.findall(r"([\d.]+) (?:top-level aten ops|aten events)", line))
        assert 12 < top <= events and top < 200, line


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target", ["bench-solve", "bench-rollout", "bench-mujoco", "bench-warp"])
def test_make_bench_smoke_runs_write_beside_the_committed_results(target: str, tmp_path: Path) -> None:
    """``make bench-NAME`` writes scripts/results/NAME.{json,md}, and with ``ARGS="--quick true"`` NAME_quick.* (ignored
    by git) instead, never the committed results (``make -n``: the commands printed, none run)."""

    def written(args: str) -> set[str]:
        venvs = [f"{v}={tmp_path / v}" for v in ("VENV", "BENCH_VENV", "JAX_VENV")]
        r = subprocess.run(["make", "-n", "-C", str(ROOT), target, f"ARGS={args}", *venvs], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return set(re.findall(r"scripts/results/(\w+)\.(?:json|md)", r.stdout))

    name = target.replace("-", "_")
    assert written("") == {name}
    assert written("--quick true") == {f"{name}_quick"}
