"""MPI scaling: generation time with K ranks of T env threads each, and the bytes each comm mode sends.

    python scripts/bench_mpi.py                    # HalfCheetah-v5 (needs pip install 'flipes[mujoco]')
    python scripts/bench_mpi.py --env CartPole-v1 --ranks 1 2 --env-threads 1

Runs scripts/train.py under the mpiexec beside this Python (pip's mpich) for a few generations per
setting (every pair of ``--ranks`` and ``--env-threads``: ranks × EnvPool threads per rank), and
reads its metrics.jsonl: the median ``seconds`` per generation (the first generation, with its
start-up, is left out) and ``bytes_sent`` per generation by rank 0. For comparison, the
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

from flipes.cli import parse_config

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    env: str = "HalfCheetah-v5"
    ranks: list[int] = field(default_factory=lambda: [1, 2])
    env_threads: list[int] = field(default_factory=lambda: [1, 2])  # EnvPool threads (or worker processes) per rank
    popsize: int = 128  # for the timing runs (HalfCheetah-v5's default)
    groups: int = 8
    generations: int = 6
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    bytes_popsizes: list[int] = field(default_factory=lambda: [1024, 10000])
    bytes_env: str = "flipes/CartPole-v1"  # cheap env for the bytes runs (bytes do not depend on the env's cost)
    json: str = ""


def train(k: int, out: Path, *args: str) -> list[dict]:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    cmd = [str(mpiexec), "-n", str(k), sys.executable, str(ROOT / "scripts" / "train.py"), *args, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=3600)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def num_params(env_id: str, hidden: list[int]) -> int:
    from flipes.rl import MLPPolicy, make_vector_env

    env = make_vector_env(env_id, 1)
    return sum(p.numel() for p in MLPPolicy(env.single_observation_space, env.single_action_space, hidden).parameters())


def per_generation(rows: list[dict]) -> float:
    times = [b["seconds"] - a["seconds"] for a, b in itertools.pairwise(rows)]
    return statistics.median(times)


def main(args: Args) -> dict:
    common = ["--target", "1e12", "--tensorboard", "false", "--eval-every", "1000000", "--eval-episodes", "1"]
    results: dict = {"timing": [], "bytes": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k, t in itertools.product(args.ranks, args.env_threads):
            rows = train(
                k,
                Path(tmp) / f"time{k}x{t}",
                "--env", args.env, "--popsize", str(args.popsize), "--groups", str(args.groups), "--env-threads", str(t),
                "--generations", str(args.generations), "--hidden", *map(str, args.hidden), *common,
            )  # fmt: skip
            steps = (rows[-1]["timesteps"] - rows[0]["timesteps"]) / (rows[-1]["seconds"] - rows[0]["seconds"])
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
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(parse_config(Args, description=__doc__))
