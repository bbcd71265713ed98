"""Train a policy with FlipES on a vector environment.

    python scripts/train.py --env flipes/CartPole-v1 --popsize 64 --generations 100 --seed 0 --out runs/cartpole

The population of ``popsize`` members runs ``episodes`` episodes each in ONE vector env of
``popsize × episodes`` copies, the policy forward for all of them one Flipout pass per step. Every
``eval_every`` generations the center (mean) policy is evaluated on ``eval_episodes`` episodes;
training stops once that mean reaches ``target`` (the env's "solved" return by default).

The run directory holds ``config.json``, ``metrics.jsonl`` (one JSON object per generation) and
``checkpoint.pt`` (written atomically; ``--resume DIR`` continues from it).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import flipes
from flipes.rl import MLPPolicy, RolloutFitness, episode_seed, make_vector_env, run_episodes

SOLVED = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0, "Pendulum-v1": -200.0, "MountainCarContinuous-v0": 90.0}


@dataclass
class Args:
    env: str = "flipes/CartPole-v1"
    popsize: int = 64
    generations: int = 100
    sigma: float = 0.1
    lr: float = 0.05
    seed: int = 0
    groups: int = 1
    episodes: int = 1  # per member and generation
    hidden: list[int] = field(default_factory=lambda: [32, 32])
    eval_every: int = 2
    eval_episodes: int = 100
    target: float | None = None  # stop once the center policy's eval return reaches it; default: solved
    max_seconds: float = 0.0  # stop after this much wall time (0: no limit)
    device: str = "cpu"
    out: str = "runs/cartpole"
    resume: str = ""  # a run directory to continue


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Args):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        names = dict.fromkeys([f"--{f.name.replace('_', '-')}", f"--{f.name}"])  # --eval-episodes or --eval_episodes
        if isinstance(default, list):
            parser.add_argument(*names, dest=f.name, type=int, nargs="+", default=default)
        elif f.name == "target":
            parser.add_argument(*names, dest=f.name, type=float, default=None)
        else:
            parser.add_argument(*names, dest=f.name, type=type(default), default=default)
    return Args(**vars(parser.parse_args(argv)))


def params_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_atomic(obj: object, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact


def main(args: Args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(args), indent=2))
    target = args.target if args.target is not None else SOLVED.get(args.env.split("/")[-1])
    torch.manual_seed(args.seed)

    env = make_vector_env(args.env, args.popsize * args.episodes, args.device)
    eval_env = make_vector_env(args.env, args.eval_episodes, args.device)
    policy = MLPPolicy(env.single_observation_space, env.single_action_space, hidden=args.hidden).to(args.device)
    es = flipes.FlipES(policy, popsize=args.popsize, sigma=args.sigma, lr=args.lr, seed=args.seed, groups=args.groups)
    fitness = RolloutFitness(env, args.episodes, args.seed, policy.obs_norm)
    elapsed = 0.0
    if args.resume:
        state = torch.load(Path(args.resume) / "checkpoint.pt", map_location=args.device, weights_only=True)
        es.load_state_dict(state["es"])
        fitness.timesteps, elapsed = state["timesteps"], state["seconds"]

    log = open(out / "metrics.jsonl", "a" if args.resume else "w")
    start = time.perf_counter() - elapsed
    row: dict = {}
    while es.generation < args.generations:
        gen = es.generation
        stats = es.step(fitness)
        if policy.obs_norm is not None:
            policy.obs_norm.update()  # frozen during the generation, merged after it
        row = {
            "generation": gen,
            "fitness_mean": stats["fitness_mean"],
            "fitness_max": stats["fitness_max"],
            "grad_norm": stats["grad_norm"],
            "seconds": time.perf_counter() - start,
            "timesteps": fitness.timesteps,
            "params_sha256": params_sha256(policy),
        }
        if gen % args.eval_every == 0 or gen == args.generations - 1:
            episodes = run_episodes(eval_env, policy, episode_seed(args.seed, gen, "eval"))
            row["eval_return"] = episodes.returns.mean().item()
            row["eval_std"] = episodes.returns.std().item()
        log.write(json.dumps(row) + "\n")
        log.flush()
        print(
            f"gen {gen:4d}  fitness mean {row['fitness_mean']:9.2f} max {row['fitness_max']:9.2f}  "
            + (f"eval {row['eval_return']:9.2f}  " if "eval_return" in row else " " * 16)
            + f"steps {row['timesteps']:>9d}  {row['seconds']:6.1f}s",
            flush=True,
        )
        solved = target is not None and row.get("eval_return", -float("inf")) >= target
        out_of_time = 0 < args.max_seconds <= row["seconds"]
        if solved or out_of_time or es.generation == args.generations:
            save_atomic({"es": es.state_dict(), "timesteps": fitness.timesteps, "seconds": row["seconds"]}, out / "checkpoint.pt")
        if solved:
            print(f"solved: center policy mean return {row['eval_return']:.1f} >= {target} over {args.eval_episodes} episodes")
            break
        if out_of_time:
            print(f"stopped after {row['seconds']:.0f} s (--max-seconds)")
            break
    log.close()
    return row


if __name__ == "__main__":
    main(parse_args())
