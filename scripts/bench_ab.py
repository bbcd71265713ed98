"""The working tree against an earlier commit, side by side: wall time of the same training runs.

    python scripts/bench_ab.py --base 07726d8                  # CartPole and Pendulum, 5 rounds
    python scripts/bench_ab.py --base HEAD --quick true        # smoke test, a few seconds
    python scripts/bench_ab.py --base 07726d8 --device cuda --popsize 16384   # on a GPU, a large population

The commit is exported with ``git archive`` into a temporary folder; each run is a fresh Python
process that imports flipes (and ``envs``) from one of the two trees and times ``flipes.train``
(imports excluded, also torch._dynamo, matplotlib and TensorBoard, which a run would import on first
use: ~2 s of every run) with the env's preset defaults, ``--generations`` generations and no early
stop, one torch thread. Rounds alternate the two trees (A, B, A, B, ...), so that a noisy machine's drift
falls on both, and the median per tree is reported with the ratio this/base. Both trees must train
to the same parameters bit for bit (the SHA-256 of the last generation): a speed-up that changes
the arithmetic is reported as ``differs`` and the script exits non-zero.

``--loops vector mlp mlp8`` times the fixed cost of a generation instead, where a cheap fitness makes it the cost
users compare: a bare ``with es.population(): ...; es.tell(f)`` loop, ``--loop-generations`` generations after 20
untimed ones, in µs per generation, with the same parameters check. ``vector``: black-box search, a
``flipes.nn.Vector`` of 100 on Rastrigin (README "Black-box search over a vector"); ``mlp``: CartPole's 4-64-64-2 tanh
MLP, one forward of one observation per member, 1 noise group; ``mlp8``: the same in 8 groups; popsize 256 each.

    python scripts/bench_ab.py --base 23b46b6 --loops vector mlp mlp8 --rounds 5
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flipes.cli import option_name, run
from flipes.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import contextlib, io, json, sys, time
import torch
torch.set_num_threads(1)
import flipes
import torch._dynamo  # imported by torch's optimizers on first use (~1.3 s): outside the clock, as the rest
for optional in ("matplotlib.pyplot", "torch.utils.tensorboard"):  # curves.png and TensorBoard, when installed
    with contextlib.suppress(ImportError):
        __import__(optional)
kw = json.loads(sys.argv[1])
t0 = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    result = flipes.train(**kw)
seconds = time.perf_counter() - t0
print(json.dumps({"file": flipes.__file__, "seconds": seconds, "generations": len(result.metrics),
                  "sha": result.metrics[-1]["params_sha256"]}))
"""

LOOP_CHILD = """
import hashlib, json, math, sys, time
import torch
torch.set_num_threads(1)
import flipes
kw = json.loads(sys.argv[1])
torch.manual_seed(0)
if kw["loop"] == "vector":
    model = x = flipes.flipout(flipes.nn.Vector(torch.full((100,), 3.0)))
    es = flipes.FlipES(x, popsize=256, sigma=0.5, lr=0.05, seed=0, maximize=False)
    def fitness():
        v = x()
        return 1000 + (v.square() - 10 * torch.cos(2 * math.pi * v)).sum(1)
else:
    net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                              torch.nn.Linear(64, 2))
    model = flipes.flipout(net)
    es = flipes.FlipES(model, popsize=256, sigma=0.05, lr=0.03, seed=0, groups=8 if kw["loop"] == "mlp8" else 1)
    obs = torch.randn(256, 4)
    def fitness():
        return model(obs)[:, 0]
def generation():
    with es.population():
        f = fitness()
    es.tell(f)
for _ in range(20):
    generation()
t0 = time.perf_counter()
for _ in range(kw["generations"]):
    generation()
seconds = time.perf_counter() - t0
sha = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
print(json.dumps({"file": flipes.__file__, "seconds": seconds, "generations": kw["generations"], "sha": sha}))
"""

LOOPS = ("vector", "mlp", "mlp8")


@dataclass
class Args:
    base: str = "HEAD"
    """Git revision to compare the working tree against, or a folder holding another tree (``git archive REV | tar -x
    -C DIR``: the way to carry a base to a machine without the repository's history)."""
    envs: list[str] = field(default_factory=lambda: ["flipes/CartPole-v1", "flipes/Pendulum-v1"])
    """Env ids to train on (each with its preset defaults)."""
    generations: int = 20
    """Generations per run (no early stop at the target)."""
    algo: str = "openai-es"
    """Search rule of every run (``flipes train --algo``; pgpe uses 8 noise groups)."""
    eval_every: int = 0
    """Evaluate the center policy every this many generations (0: the env's preset)."""
    rounds: int = 5
    """Runs per tree and env, alternating trees; the median is reported."""
    seed: int = 0
    """Training seed, the same for both trees."""
    device: str = "cpu"
    """Device of every run (``flipes train --device``), e.g. cuda; the table names the GPU."""
    popsize: int = 0
    """Population size of every run (0: the env's preset); a GPU is launch-bound below a few thousand."""
    loops: list[str] = field(default_factory=list)
    """Instead of training runs: bare generation loops of a cheap fitness, the fixed cost of a generation (vector, mlp,
    mlp8; see above), on the CPU."""
    loop_generations: int = 1000
    """Timed generations per run of a loop (after 20 untimed ones)."""
    quick: bool = False
    """Smoke test: the first env (or loop), 2 generations, 1 round."""
    json: str = ""
    """Write the results here too."""
    markdown: str = ""
    """Write the table here too."""


def check(args: Args) -> None:
    """Raise a UsageError for options that leave nothing to time or that every run would refuse, before a tree is
    exported (a run's own refusal would come back from its process as a traceback, once per tree)."""
    for name in ("rounds", "generations", "loop_generations"):
        if getattr(args, name) < 1:
            raise UsageError(option_name(name), f"must be at least 1, got {getattr(args, name)}", "pass a positive count")
    for name in ("popsize", "eval_every"):
        if getattr(args, name) < 0:
            raise UsageError(option_name(name), f"must be 0 or positive, got {getattr(args, name)}", "0 means the env's preset")
    if not args.loops and not args.envs:
        raise UsageError("--envs", "names no env: nothing to time", "e.g. --envs flipes/CartPole-v1")
    if args.device != "cpu":
        from flipes.config import check_device  # imports torch: only for a device that needs checking

        check_device(args.device)


def export(rev: str, into: Path) -> str:
    """Extract ``rev``'s tracked files into ``into``; returns the full commit hash."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True, text=True)
    if commit.returncode != 0:
        raise SystemExit(f"bench_ab: --base {rev!r} is not a commit of {ROOT} ({commit.stderr.strip()}); pass e.g. --base HEAD~1")
    archive = into / "base.tar"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), commit.stdout.strip()], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return commit.stdout.strip()


def train_once(tree: Path, kw: dict[str, Any], out: Path) -> dict[str, Any]:
    """One run in a fresh process importing flipes from ``tree`` (a loop's where ``kw`` names one)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    child = LOOP_CHILD if "loop" in kw else CHILD
    proc = subprocess.run([sys.executable, "-c", child, json.dumps({**kw, "out": str(out)})], cwd=out.parent,
                          env=env, capture_output=True, text=True, timeout=1800)  # fmt: skip
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or [""]
        refused, _, problem = last[0].partition("flipes.errors.UsageError: ")
        if not refused and problem:  # an option the run refused (e.g. an env id): its one line says what to pass
            raise SystemExit(f"bench_ab: a run in {tree} refused its options: {problem}")
        raise SystemExit(f"bench_ab: a run in {tree} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    if not Path(row["file"]).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"bench_ab: the run imported flipes from {row['file']}, not from {tree}")
    return row


def main(args: Args) -> list[dict[str, Any]]:
    unknown = [name for name in args.loops if name not in LOOPS]
    if unknown:
        raise SystemExit(f"bench_ab: --loops {' '.join(unknown)}: no such loop; pick from {', '.join(LOOPS)}")
    if args.loops and args.device != "cpu":
        raise SystemExit(f"bench_ab: --loops runs on the CPU only, not --device {args.device}; leave --device out")
    check(args)
    loops = bool(args.loops)
    envs, generations, rounds = args.loops or args.envs, args.loop_generations if loops else args.generations, args.rounds
    if args.quick:
        envs, generations, rounds = envs[:1], 2, 1
    load_before = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="flipes-ab-") as tmp:
        tmp_path = Path(tmp)
        if (Path(args.base) / "flipes").is_dir():  # a tree exported before (a machine without the git history)
            commit, trees = "", {"base": Path(args.base).resolve(), "this": ROOT}
        else:
            commit, trees = export(args.base, tmp_path), {"base": tmp_path / "tree", "this": ROOT}
        for e, env_id in enumerate(envs):
            kw = {"env": env_id, "generations": generations, "seed": args.seed, "target": None, "progress": False}
            kw["algo"], kw["device"] = args.algo, args.device
            if loops:
                kw = {"loop": env_id, "generations": generations}
            if args.popsize:
                kw["popsize"] = args.popsize
            if args.eval_every:
                kw["eval_every"] = args.eval_every
            times: dict[str, list[float]] = {"base": [], "this": []}
            shas: dict[str, set[str]] = {"base": set(), "this": set()}
            for r in range(rounds):
                for name in ("base", "this") if r % 2 == 0 else ("this", "base"):
                    row = train_once(trees[name], kw, tmp_path / f"run-{e}-{name}-{r}")
                    times[name].append(row["seconds"])
                    shas[name].add(row["sha"])
            base_s, this_s = statistics.median(times["base"]), statistics.median(times["this"])
            same = len(shas["base"] | shas["this"]) == 1
            results.append({"env": env_id, "generations": generations, "rounds": rounds, "base_s": base_s, "this_s": this_s,
                            "ratio": this_s / base_s, "same_params": same, "times": times})  # fmt: skip
            if loops:
                results[-1].update(base_us=base_s / generations * 1e6, this_us=this_s / generations * 1e6)
            print(f"{env_id}: base {base_s:.3f} s, this {this_s:.3f} s, ratio {this_s / base_s:.2f}x, "
                  f"{'same parameters' if same else 'PARAMETERS DIFFER'}", flush=True)  # fmt: skip
    evaluations = f"evaluation every {args.eval_every}" if args.eval_every else "preset evaluations"
    if args.algo != "openai-es":
        evaluations = f"--algo {args.algo}, {evaluations}"
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1-min load {load_before:.2f} before"
    if args.device.startswith("cuda"):
        import torch

        machine = f"{args.device} ({torch.cuda.get_device_name(args.device)}), host {machine}"
    if args.popsize:
        evaluations = f"popsize {args.popsize}, {evaluations}"
    label = f" ({commit[:10]})" if commit else ""
    lines = [
        f"Working tree vs {args.base}{label}: median wall s of `flipes.train` ({generations} generations, "
        f"{evaluations}, {rounds} alternating rounds, 1 torch thread); {machine}.",
        "",
        "| env | base s | this s | this/base | same parameters |",
        "|---|---|---|---|---|",
    ]
    if loops:
        lines[0] = (f"Working tree vs {args.base}{label}: median µs per generation of a bare population/tell loop "
                    f"({generations} generations after 20, popsize 256, {rounds} alternating rounds, 1 torch thread); "
                    f"{machine}.")  # fmt: skip
        lines[2:4] = ["| loop | base µs | this µs | this/base | same parameters |", "|---|---|---|---|---|"]
    for r in results:
        same = "yes" if r["same_params"] else "differs"
        if loops:
            lines.append(f"| {r['env']} | {r['base_us']:.0f} | {r['this_us']:.0f} | {r['ratio']:.2f}x | {same} |")
        else:
            lines.append(f"| {r['env']} | {r['base_s']:.3f} | {r['this_s']:.3f} | {r['ratio']:.2f}x | {same} |")
    print("\n".join(lines))
    if args.json:
        base = commit or str(Path(args.base).resolve())
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)  # not lost to a folder that is not there yet
        Path(args.json).write_text(
            json.dumps({"base": base, "load_before": load_before, "results": results}, indent=1), encoding="utf-8"
        )
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text("\n".join(lines) + "\n", encoding="utf-8")
    if not all(r["same_params"] for r in results):
        raise SystemExit(1)
    return results


if __name__ == "__main__":
    run(main, Args, description=__doc__)
