"""MPI scaling: generation time with K ranks of T env threads each, and the bytes each comm mode sends.

    python scripts/bench_mpi.py                    # HalfCheetah-v5 (needs pip install 'flipes[mujoco]')
    python scripts/bench_mpi.py --env CartPole-v1 --ranks 1 2 --env-threads 1

Runs scripts/train.py under the mpiexec beside this Python (pip's mpich) for a few generations per
setting (every pair of ``--ranks`` and ``--env-threads``: ranks × EnvPool threads per rank), and
reads its metrics.jsonl: the median ``seconds`` per generation (the first generation, with its
start-up, is left out, and so is the time of the center-policy evaluation at the last one) and
``bytes_sent`` per generation by rank 0. For comparison, the
bytes of shipping the full parameter vector (what estool-style workers send): every rank sends its
members' parameter vectors or receives all of them, at least N·P·4 bytes a generation in total.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from flipes.cli import run
from flipes.config import check_threads
from flipes.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    env: str = "HalfCheetah-v5"
    """Env of the timing runs."""
    ranks: list[int] = field(default_factory=lambda: [1, 2])
    """MPI process counts of the timing runs."""
    env_threads: list[int] = field(default_factory=lambda: [1, 2])
    """EnvPool threads (or worker processes) per rank of the timing runs."""
    popsize: int = 128
    """Population size of the timing runs (HalfCheetah-v5's default)."""
    groups: int = 8
    """ε groups of the timing runs (at least the largest of --ranks)."""
    generations: int = 6
    """Generations of each timing run (the first is left out of the median)."""
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer widths of the policy, in every run."""
    bytes_popsizes: list[int] = field(default_factory=lambda: [1024, 10000])
    """Population sizes of the bytes runs (2 ranks, each comm mode)."""
    bytes_env: str = "flipes/CartPole-v1"
    """Cheap env of the bytes runs (bytes do not depend on the env's cost)."""
    json: str = ""
    """Write the results here too."""


def train(k: int, out: Path, *args: str) -> list[dict]:
    """The metrics rows of one train.py run under ``mpiexec -n k`` (its output shown only if it fails)."""
    mpiexec = Path(sys.executable).parent / "mpiexec"
    script = str(ROOT / "scripts" / "train.py")
    cmd = [str(mpiexec), "-n", str(k), sys.executable, script, *args, "--out", str(out), "--overwrite"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        lines = (r.stdout + r.stderr).strip().splitlines()
        if lines and lines[-1].startswith("flipes: error: "):  # an option train.py refused: its one line says which
            raise SystemExit(lines[-1])
        tail = "\n".join(lines[-15:])
        raise RuntimeError(f"{' '.join(cmd)} exited with status {r.returncode}:\n{tail}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def num_params(env_id: str, hidden: list[int]) -> int:
    from flipes.rl import MLPPolicy, make_vector_env

    env = make_vector_env(env_id, 1)
    return sum(p.numel() for p in MLPPolicy(env.single_observation_space, env.single_action_space, hidden).parameters())


def per_generation(rows: list[dict]) -> float:
    """Median seconds of a generation after the first, its center-policy evaluation (if any) left out."""
    times = [b["seconds"] - a["seconds"] - b.get("eval_seconds", 0.0) for a, b in itertools.pairwise(rows)]
    return statistics.median(times)


def main(args: Args) -> dict:
    if args.generations < 2:
        raise UsageError("--generations", f"must be at least 2, got {args.generations}", "the first generation is left out")
    if any(k < 1 for k in args.ranks) or not args.ranks:
        raise UsageError("--ranks", f"must be positive process counts, got {args.ranks}", "e.g. --ranks 1 2 4")
    if not args.env_threads:
        raise UsageError("--env-threads", "names no thread count: nothing to time", "e.g. --env-threads 1 2")
    for threads in args.env_threads:  # refused before the first timing run, not by one of them
        check_threads("--env-threads", threads, "this process's share", per_core=4)
    if args.groups < max(args.ranks):
        raise UsageError("--groups", f"{args.groups} cannot be shared by {max(args.ranks)} ranks", "use at least max(--ranks)")
    common = ["--target", "none", "--tensorboard", "false", "--eval-every", "1000000", "--eval-episodes", "1"]
    results: dict = {"timing": [], "bytes": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k, t in itertools.product(args.ranks, args.env_threads):
            rows = train(
                k,
                Path(tmp) / f"time{k}x{t}",
                "--env", args.env, "--popsize", str(args.popsize), "--groups", str(args.groups), "--env-threads", str(t),
                "--generations", str(args.generations), "--hidden", *map(str, args.hidden), *common,
            )  # fmt: skip
            seconds = rows[-1]["seconds"] - rows[0]["seconds"] - sum(r.get("eval_seconds", 0.0) for r in rows[1:])
            steps = (rows[-1]["timesteps"] - rows[0]["timesteps"]) / seconds
            results["timing"].append({"ranks": k, "env_threads": t, "seconds_per_generation": per_generation(rows),
                                      "steps_per_second": steps})  # fmt: skip
        for n in args.bytes_popsizes:
            for mode in ("allreduce", "seeds"):
                rows = train(
                    2,
                    Path(tmp) / f"bytes{n}{mode}",
                    "--env", args.bytes_env, "--popsize", str(n), "--groups", "2", "--generations", "2",
                    "--comm", mode, "--hidden", *map(str, args.hidden), *common,
                )  # fmt: skip
                results["bytes"].append({"popsize": n, "mode": mode, "bytes_per_generation": rows[-1]["bytes_sent"]})
        params = num_params(args.bytes_env, args.hidden)
        for n in args.bytes_popsizes:  # estool-style: every member's parameter vector crosses the network
            results["bytes"].append({"popsize": n, "mode": "full parameter vectors", "bytes_per_generation": n * params * 4})

    base = results["timing"][0]["seconds_per_generation"]
    print(f"generation time, {args.env}, popsize {args.popsize}, hidden {args.hidden}\n")
    print("| ranks × env threads | s / generation | env steps/s | speed-up |\n|---|---|---|---|")
    for r in results["timing"]:
        print(
            f"| {r['ranks']} × {r['env_threads']} | {r['seconds_per_generation']:.3f} | {r['steps_per_second']:,.0f} "
            f"| {base / r['seconds_per_generation']:.2f}x |"
        )
    params = num_params(args.bytes_env, args.hidden)
    print(f"\nbytes per generation, {args.bytes_env}, hidden {args.hidden} ({params:,} parameters), 2 ranks")
    print("\n| popsize | comm | bytes sent by rank 0 per generation |\n|---|---|---|")
    for r in results["bytes"]:
        print(f"| {r['popsize']} | {r['mode']} | {r['bytes_per_generation']:,} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)  # not lost to a folder that is not there yet
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


if __name__ == "__main__":
    run(main, Args, description=__doc__)
