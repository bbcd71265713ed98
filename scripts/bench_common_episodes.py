"""Common random numbers: does letting every member play the same episodes (``--common-episodes``) help ES?

    python scripts/bench_common_episodes.py               # the whole benchmark: scripts/results/bench_common_episodes.*
    python scripts/bench_common_episodes.py --quick true  # smoke test, seconds (bench_common_episodes_quick.*)

With independent episodes (flipes' default), member m's fitness is F(θ + σu_m, ξ_m): its own episode ξ_m (start state,
physics drawn at the reset). Two members' fitness then differ by their episodes' luck as much as by their
parameters, and on envs whose return depends strongly on the start that luck can swamp the signal. With common
episodes every member plays the same ξ (EvoJAX's training rollouts do so), so mirrored pairs F(θ + σu, ξ) and
F(θ - σu, ξ) differ by the parameters alone. The price: one generation sees ``episodes`` starts instead of
``popsize × episodes``, so its update fits those starts.

Two measurements per env and number of episodes per member (``--episodes``), each with and without common
episodes, with the env's preset row otherwise (popsize, σ, lr, hidden; OpenAI-ES: centered ranks, Adam, mirrored
pairs):

1. **The update's noise at fixed parameters.** ``--estimates`` ES gradient estimates ĝ, each from its own generation
   (fresh noise and episodes), by ``FlipES.tell`` with the training's shaping, the parameters put back after each: at
   the first seed's initial policy (``start``), and at that policy after ``--warmup`` generations of the preset's
   training (``trained``). ``cos`` is the mean cosine between two estimates of the same mode (1: every estimate points
   the same way; 0: no agreement), with its jackknife standard error over the estimates (``cos_se``); ``snr`` is
   ``|mean ĝ| / sqrt(trace Cov ĝ)``, whose floor is about ``1 / sqrt(estimates)`` (0.16 for 40) where the estimates
   hold no signal at all (the mean of pure noise is not 0). The modes estimate the same gradient
   only in expectation over the shaping, so these are the fair comparisons: how consistently each mode's updates
   point one way. ``tied``: (nearly) every generation's members all scored alike, so that no update is left to measure
   (CartPole once solved: every episode lasts its 500 steps).
2. **Training.** ``flipes.train`` with the preset (its target and evaluations: CartPole ≥ 475 and Pendulum ≥ −200 on
   the center's 100-episode evaluation every 2 generations) for up to ``--max-generations``; generations, env steps
   and wall seconds to the target, per seed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from repro_common import machine

import flipes
from flipes.cli import run
from flipes.config import check_threads
from flipes.errors import UsageError
from flipes.rl import MLPPolicy, RolloutFitness, make_vector_env
from flipes.rl.presets import preset_for

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    envs: list[str] = field(default_factory=lambda: ["flipes/Pendulum-v1", "flipes/CartPole-v1"])
    """Env ids, each with its preset row."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds of the training runs; the gradient estimates use the first."""
    episodes: list[int] = field(default_factory=lambda: [1, 4])
    """Episodes per member to compare at (each with and without common episodes)."""
    estimates: int = 40
    """Gradient estimates per mode (each a generation of its own) for the noise measurement."""
    warmup: int = 100
    """Generations of the preset's training (independent episodes) before the second noise measurement."""
    max_generations: int = 400
    """Budget of one training run: it stops at the env's target or here."""
    threads: int = 1
    """Torch threads (0: torch's default)."""
    quick: bool = False
    """Smoke test: popsize 8, 4 estimates, 2 generations, one seed, 1 episode; writes bench_common_episodes_quick.*."""
    out: str = "scripts/results"
    """Directory of bench_common_episodes.{json,md}."""


def preset(env_id: str, args: Args) -> dict[str, Any]:
    row = preset_for(env_id)
    s = {k: row[k] for k in ("popsize", "sigma", "lr", "hidden")}
    if args.quick:
        s["popsize"] = 8
    return s


def policies(env_id: str, args: Args) -> dict[str, torch.nn.Module]:
    """A fresh policy of the preset's widths, torch seeded with the first seed (``start``), and the policy of the
    preset's training with independent episodes after ``args.warmup`` generations (``trained``)."""
    env = make_vector_env(env_id, 1, note=None)
    torch.manual_seed(args.seeds[0])
    start = flipes.flipout(
        MLPPolicy(env.single_observation_space, env.single_action_space, hidden=preset(env_id, args)["hidden"])
    )
    env.close()
    with tempfile.TemporaryDirectory() as tmp:
        trained = flipes.train(
            env=env_id, seed=args.seeds[0], generations=args.warmup, out=tmp, progress=False,
            plot=False, tensorboard=False, target=None, eval_every=10**6, **({"popsize": 8} if args.quick else {}),
        ).model  # fmt: skip
    return {"start": start, "trained": trained}


def gradient_noise(env_id: str, policy: torch.nn.Module, episodes: int, common: bool, args: Args) -> dict[str, float]:
    """``args.estimates`` ES gradient estimates at ``policy``'s parameters: their mean pairwise cosine, its jackknife
    standard error (leaving one estimate out at a time) and their SNR."""
    s = preset(env_id, args)
    policy = copy.deepcopy(policy)
    env = make_vector_env(env_id, s["popsize"] * episodes, note=None)
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    es = flipes.FlipES(policy, popsize=s["popsize"], sigma=s["sigma"], lr=s["lr"], seed=args.seeds[0])
    fitness = RolloutFitness(env, episodes, args.seeds[0], common_episodes=common)
    grads = []
    for _ in range(args.estimates):
        with es.population() as pop:
            values = fitness(policy, pop)
        es.tell(values)
        grads.append(-torch.cat([p.grad.flatten() for p in policy.parameters()]).double())  # .grad holds -ĝ
        policy.load_state_dict(start)  # every estimate at the same parameters and observation statistics
        policy.obs_norm.pending = None  # the rollout's observations, never merged
    env.close()
    g = torch.stack(grads)
    tied = int((g.norm(dim=1) == 0).sum())  # generations whose members all scored alike (a solved CartPole): no update
    if tied > args.estimates - 2:
        return {"cos": None, "cos_se": None, "snr": None, "estimates": args.estimates, "tied": tied}
    g = g[g.norm(dim=1) > 0]
    unit = g / g.norm(dim=1, keepdim=True)
    cos = unit @ unit.T
    r = len(g)
    total = cos.sum() - cos.diagonal().sum()
    pairwise = total / (r * (r - 1))
    # leave-one-out means of the pairs (each estimate is a generation of its own: independent draws)
    left_out = (total - 2 * (cos.sum(1) - cos.diagonal())) / ((r - 1) * (r - 2))
    se = ((r - 1) / r * (left_out - left_out.mean()).pow(2).sum()).sqrt() if r > 2 else torch.tensor(float("nan"))
    spread = (g - g.mean(0)).pow(2).sum(1).mean().sqrt()
    snr = (g.mean(0).norm() / spread).item()
    return {"cos": pairwise.item(), "cos_se": se.item(), "snr": snr, "estimates": args.estimates, "tied": tied}


def train(env_id: str, episodes: int, common: bool, seed: int, args: Args) -> dict[str, Any]:
    """One ``flipes.train`` run with the preset, to the target or ``args.max_generations``."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generations = 2 if args.quick else args.max_generations
        extra = {"popsize": 8} if args.quick else {}
        result = flipes.train(
            env=env_id, seed=seed, generations=generations, episodes=episodes, common_episodes=common, out=tmp,
            progress=False, plot=False, tensorboard=False, **extra,
        )  # fmt: skip
        wall = time.perf_counter() - t0
    last = result.metrics[-1]
    return {
        "solved": result.reason.startswith("solved"),
        "reason": result.reason,  # an interrupted run (Ctrl-C, SIGTERM) ends early and says so here
        "generations": last["generation"] + 1,
        "env_steps": last["timesteps"],
        "wall_s": wall,
        "best": result.best,
    }


def per_seed(rs: list[dict[str, Any]], key: str, fmt: str = ".0f") -> str:
    return " / ".join(format(r[key], fmt) if r["solved"] or key != "generations" else f">{r[key]}" for r in rs)


def fmt(value: float | None, digits: int) -> str:
    return "tied" if value is None else f"{value:.{digits}f}"


def mode(common: bool) -> str:
    return "common" if common else "independent"


def tables(noise: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    lines = ["| env | episodes | at | cos, independent | cos, common | snr, independent | snr, common |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    pairs: dict[tuple[str, int, str], dict[bool, dict[str, Any]]] = {}
    for r in noise:
        pairs.setdefault((r["env"], r["episodes"], r["at"]), {})[r["common"]] = r
    for (env_id, k, where), m in pairs.items():
        cells = [fmt(m[c]["cos"], 3) + ("" if m[c]["cos"] is None else f" ± {m[c]['cos_se']:.3f}") for c in (False, True)]
        cells += [fmt(m[c]["snr"], 2) for c in (False, True)]
        lines.append(f"| {env_id} | {k} | {where} | {' | '.join(cells)} |")
    lines += ["", "| env | episodes | mode | solved | generations, per seed | median | env steps, per seed | wall s, per seed |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    groups: dict[tuple[str, int, bool], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["env"], r["episodes"], r["common"]), []).append(r)
    for (env_id, k, common), rs in groups.items():
        solved = sum(r["solved"] for r in rs)
        median = statistics.median(r["generations"] if r["solved"] else float("inf") for r in rs)
        steps = " / ".join(f"{r['env_steps'] / 1e6:.2f} M" for r in rs)
        lines.append(
            f"| {env_id} | {k} | {mode(common)} | {solved} / {len(rs)} | {per_seed(rs, 'generations')} | {median:g} "
            f"| {steps} | {per_seed(rs, 'wall_s', '.1f')} |"
        )
    return "\n".join(lines)


def main(args: Args) -> dict[str, Any]:
    if not args.envs or not args.seeds:
        raise UsageError("--envs" if not args.envs else "--seeds", "is empty", "give at least one")
    for option, value in (("--estimates", args.estimates), ("--max-generations", args.max_generations)):
        if value < 2:
            raise UsageError(option, f"must be at least 2, got {value}")
    if not args.episodes or min(args.episodes) < 1:
        raise UsageError("--episodes", f"got {args.episodes}", "give one or more counts of at least 1, e.g. --episodes 1 4")
    if args.quick:
        args = dataclasses.replace(args, seeds=args.seeds[:1], estimates=4, episodes=args.episodes[:1], warmup=2)
    check_threads("--threads", args.threads)  # a negative count torch.set_num_threads below would skip silently
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    command = "python " + shlex.join(["scripts/bench_common_episodes.py", *sys.argv[1:]])
    print(f"command: {command}", flush=True)
    load_start, t_start = os.getloadavg(), time.perf_counter()
    noise, runs = [], []
    for env_id in args.envs:
        at = policies(env_id, args)
        for k in args.episodes:
            for where, policy in at.items():
                for common in (False, True):
                    r = {"env": env_id, "episodes": k, "at": where, "common": common, "settings": preset(env_id, args),
                         **gradient_noise(env_id, policy, k, common, args)}  # fmt: skip
                    print(f"{env_id} K={k} {where} {mode(common)}: cos {fmt(r['cos'], 3)}, snr {fmt(r['snr'], 2)}", flush=True)
                    noise.append(r)
            for seed in args.seeds:
                for common in (False, True):  # side by side: a change in the machine's load hits both alike
                    r = {"env": env_id, "episodes": k, "common": common, "seed": seed, **train(env_id, k, common, seed, args)}
                    print(
                        f"{env_id} K={k} {mode(common)} seed {seed}: {'solved' if r['solved'] else 'not solved'} in "
                        f"{r['generations']} generations, {r['wall_s']:.1f} s",
                        flush=True,
                    )
                    runs.append(r)
    load_end, total = os.getloadavg(), time.perf_counter() - t_start
    host = machine(torch.device("cpu"))
    meta = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": host["cpu"], "cores": host["cores"],
            "torch": host["torch"], "torch_threads": host["threads"], "python": platform.python_version(),
            "args": dataclasses.asdict(args), "load_before": load_start, "load_after": load_end, "wall_s": total}  # fmt: skip
    text = tables(noise, runs)
    footer = (
        f"{meta['date']}, {meta['machine']}, {meta['cores']} cores, torch {meta['torch']} ({meta['torch_threads']} "
        f"thread); load average (1, 5, 15 min) before {load_start}, after {load_end}; whole run {total / 60:.1f} min. "
        f"Gradient noise: {args.estimates} estimates per mode, at a fresh policy (start) and after {args.warmup} "
        f"generations of training (trained), seed {args.seeds[0]}; cos ± its jackknife standard error; snr's floor "
        f"(estimates of pure noise) is about 1/√{args.estimates} = {args.estimates**-0.5:.2f}. Training: up to "
        f"{args.max_generations} generations (>G: not solved in G)."
    )
    print(f"\n{text}\n\n{footer}")
    name = "bench_common_episodes_quick" if args.quick else "bench_common_episodes"
    out = Path(args.out)
    out = out if out.is_absolute() else ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    result = {"meta": meta, "noise": noise, "runs": runs}
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / f"{name}.md").write_text(
        f"# Common episodes (`scripts/bench_common_episodes.py`)\n\n`{command}`\n\n{text}\n\n{footer}\n", encoding="utf-8"
    )
    print(f"wrote {out / name}.json and .md")
    return result


if __name__ == "__main__":
    run(main, Args, description=__doc__)
