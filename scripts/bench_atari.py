"""The CNN policy on Atari (EnvPool's Pong-v5): its population forward and the env steps a generation makes.

(1) Forward: one call of ``flipes.rl.CNNPolicy`` (Nature torso, 512 wide) on N frame stacks (4, 84, 84),

    plain    outside a population: the same CNN, one set of weights for all N (nn.Conv2d, nn.Linear)
    flipout  inside an ES population of N members, each with its own perturbed kernels (noise sampled once)
    lowrank  the same with rank --rank noise (FlipES(noise_rank=...), --noise-rank): the perturbation's
             convolutions go into r channels, then a 1x1 mixing
    vmap     per-member weights, as EvoTorch evaluates a population: each member's full parameter set
             materialized (es.member_parameters(i), flipout's members; not timed) and the same CNN run on them
             through torch.func.vmap over functional_call; skipped ("skipped") where the N weight copies would
             exceed --mem-cap-gb (the CNN's 1.7 M parameters: 1.7 GB at N = 256). Checked once, untimed, to give
             flipout's logits for a few members to float32 tolerance: the same computation.

interleaved round-robin as scripts/benchmark.py times its variants (median ms per call).

(2) Env steps per second of ES generations on Pong-v5 (popsize N, one episode each, cut at --max-steps
steps): RolloutFitness through EnvPool (not pipelined: it pipelines only an MLP, and from 128 envs, so neither
policy at the default popsize 64), the FlipES update and, for the MLP, its observation statistics, with

    cnn      --policy cnn: the CNN above
    mlp      --policy mlp: flipes' MLP (32-32) on the 28,224 pixels flattened, normalized per pixel
    env      a constant action: what EnvPool alone steps on this machine

the policies alternating generation by generation (median of --generations each). ``--full true`` also times
one generation of the CNN with uncut episodes: what a generation of ``flipes train --env Pong-v5`` costs;
``--env-steps false`` leaves (2) out.

    PYTHONPATH=. python scripts/bench_atari.py --json scripts/results/bench_atari.json
    PYTHONPATH=. python scripts/bench_atari.py --quick true       # a smoke test, a few seconds
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from benchmark import machine, measure
from torch import Tensor, nn
from torch.func import functional_call, vmap

import flipes
from flipes.cli import option_name, run
from flipes.config import check_threads
from flipes.errors import UsageError
from flipes.rl import CNNPolicy, MLPPolicy, RolloutFitness, make_vector_env
from flipes.rl.envpool_vec import envpool_ids

ENV = "Pong-v5"


@dataclass
class Args:
    popsizes: list[int] = field(default_factory=lambda: [64, 256])
    """Population sizes N of the forward comparison (1)."""
    popsize: int = 64
    """Population of the env-steps comparison (2)."""
    max_steps: int = 200
    """Steps each episode of (2) is cut at (Pong's episodes last about a thousand)."""
    generations: int = 3
    """Generations of each policy in (2), alternating (the median is reported)."""
    env_steps: bool = True
    """Run (2); false: the forward comparison (1) alone."""
    full: bool = False
    """Also time one generation of the CNN with uncut episodes."""
    rank: int = 4
    """Noise rank of a third variant of (1), --noise-rank's low-rank Flipout; 0 leaves it out."""
    sigma: float = 0.02
    """Perturbation scale (the Atari row's)."""
    mem_cap_gb: float = 4.0
    """Skip the vmap variant of (1) when its N per-member weight copies would exceed this many GB (0: always)."""
    rounds: int = 10
    """Round-robin rounds of (1)."""
    warmup_rounds: int = 1
    """Untimed round-robin rounds of (1) before the timed ones."""
    min_rounds: int = 3
    """Fewest rounds (samples of the median) a variant of (1) gets."""
    block_seconds: float = 0.02
    """Target duration of one timed block of calls in (1)."""
    min_seconds: float = 0.5
    """Target total timed duration per variant of (1), capped by --rounds."""
    threads: int = 0
    """Torch CPU threads (0: torch's default)."""
    seed: int = 0
    """Seed of the weights, frames, noise and episodes."""
    json: str | None = None
    """Write the raw numbers to this path."""
    quick: bool = False
    """Smoke test: N = 8 in (1), popsize 4 and 10 steps in (2), no --full."""


def prepare(args: Args) -> Args:
    """``args`` with ``--quick``'s budget applied; UsageError for options that cannot be run."""
    for name in ("popsize", "max_steps", "generations", "rounds", "min_rounds"):
        if getattr(args, name) < 1:
            raise UsageError(option_name(name), f"must be at least 1, got {getattr(args, name)}")
    check_threads("--threads", args.threads)
    if not 0 <= args.rank <= 32:  # the first convolution's 32 output channels bound any rank
        raise UsageError("--rank", f"must be 0 ... 32, got {args.rank}", "e.g. --rank 4, or 0 to leave it out")
    if not args.mem_cap_gb >= 0:  # also NaN
        raise UsageError("--mem-cap-gb", f"must be at least 0, got {args.mem_cap_gb}", "e.g. --mem-cap-gb 4, or 0 to skip vmap")
    if not args.popsizes or min(args.popsizes) < 1:
        raise UsageError("--popsizes", f"must be at least 1 each, got {args.popsizes}", "e.g. --popsizes 64 256")
    if ENV not in envpool_ids():
        raise UsageError("--env", f"{ENV} needs EnvPool, which is not installed", "pip install 'flipes[envpool]' (Linux)")
    if args.quick:
        args = dataclasses.replace(
            args, popsizes=[8], popsize=4, max_steps=10, generations=1, full=False, rounds=2, min_rounds=1, min_seconds=0.0
        )
    return args


class Logits(nn.Module):
    """The CNN's action logits (its outputs before the argmax): what the vmap check compares."""

    def __init__(self, policy: CNNPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: Tensor) -> Tensor:
        p = self.policy
        return p.fc(p.torso(p.pixels(obs)).flatten(-3))


def per_member(es: flipes.FlipES, model: CNNPolicy, members: Tensor, population: CNNPolicy) -> Callable[[], Tensor]:
    """(1)'s vmap variant: the N members' explicit weights stacked (not timed), run through vmap over functional_call
    of ``model`` (outside any population); checked once against ``population``'s Flipout logits for a few members."""
    n = es.popsize
    weights = {k: torch.empty(n, *v.shape, dtype=v.dtype) for k, v in es.member_parameters(0).items()}
    for i in range(n):  # filled member by member: no second copy of all N
        for k, v in es.member_parameters(i).items():
            weights[k][i] = v
    call = vmap(lambda w, x: functional_call(model, w, (x,)))

    few = sorted({0, 1, n // 2, n - 1})
    logits = vmap(lambda w, x: functional_call(Logits(model), {f"policy.{k}": v for k, v in w.items()}, (x,)))
    got = logits({k: v[few] for k, v in weights.items()}, members[few])
    torch.testing.assert_close(got, Logits(population)(members)[few], rtol=1e-4, atol=1e-5)
    return lambda: call(weights, members)


def forward(n: int, args: Args, space: object, actions: object) -> dict:
    """(1): the CNN's forward over N frame stacks, plain, as an ES population and with per-member weights, interleaved."""
    torch.manual_seed(args.seed)
    policy = flipes.flipout(CNNPolicy(space, actions))
    plain = copy.deepcopy(policy)  # in no population: exactly nn.Conv2d and nn.Linear, the mean weights for all N
    lowrank = copy.deepcopy(policy)
    functional = copy.deepcopy(policy)  # in no population either: vmap's module, its parameters given per call
    es = flipes.FlipES(policy, popsize=n, sigma=args.sigma, seed=args.seed)
    variants = {"plain": lambda: plain(frames), "flipout": lambda: policy(members)}
    blocks = [es.population()]  # entered once, as in a rollout: the noise is sampled once
    if args.rank:
        es_low = flipes.FlipES(lowrank, popsize=n, sigma=args.sigma, seed=args.seed, noise_rank=args.rank)
        variants["lowrank"] = lambda: lowrank(members)
        blocks.append(es_low.population())
    frames = torch.randint(0, 256, (n, 4, 84, 84), dtype=torch.uint8)
    members = frames.view(n, 1, 4, 84, 84)  # one episode per member, members first
    weights_gb = n * sum(p.numel() * p.element_size() for p in policy.parameters()) / 1e9
    with torch.no_grad(), contextlib.ExitStack() as stack:
        for block in blocks:
            stack.enter_context(block)
        if weights_gb <= args.mem_cap_gb:  # the same members' weights as flipout's, in the same generation
            variants["vmap"] = per_member(es, functional, members, policy)
        results = measure(variants, args, lambda: None)
    ratios = {f"{k}/plain": v["ms"] / results["plain"]["ms"] for k, v in results.items() if k not in ("plain", "vmap")}
    vmap_ms = results["vmap"]["ms"] if "vmap" in results else None
    ratios["vmap/flipout"] = vmap_ms / results["flipout"]["ms"] if vmap_ms is not None else None
    return {"n": n, "member_weights_gb": weights_gb, "variants": results, **ratios}


class Constant(nn.Module):
    """Action 0 (NOOP) for every env: EnvPool's own pace. One parameter, for FlipES."""

    def __init__(self) -> None:
        super().__init__()
        self.net = flipes.nn.FlipoutLinear(1, 1)

    def forward(self, obs: Tensor) -> Tensor:  # its one layer called, so FlipES sees the members run
        out = self.net(torch.zeros(*obs.shape[:-3], 1, device=obs.device))
        return torch.zeros_like(out[..., 0], dtype=torch.int64)


def generation_runner(kind: str, args: Args, max_steps: int | None) -> Callable[[], tuple[float, int]]:
    """One ES generation of ``kind`` on Pong-v5: (seconds, env steps)."""
    env = make_vector_env(ENV, args.popsize, note=None)
    space, actions = env.single_observation_space, env.single_action_space
    torch.manual_seed(args.seed)
    policy = {
        "cnn": lambda: CNNPolicy(space, actions),
        "mlp": lambda: MLPPolicy(space, actions, hidden=(32, 32)),
        "env": Constant,
    }[kind]()
    policy = flipes.flipout(policy)
    es = flipes.FlipES(policy, popsize=args.popsize, sigma=args.sigma, lr=0.01, seed=args.seed)
    fitness = RolloutFitness(env, 1, args.seed, max_steps=max_steps)

    def one() -> tuple[float, int]:
        before, start = fitness.timesteps, time.perf_counter()
        with es.population() as pop:
            values = fitness(policy, pop)
        with warnings.catch_warnings():  # the constant policy's members tie, and a cut Pong episode often scores 0
            warnings.simplefilter("ignore", flipes.EqualFitnessWarning)
            es.tell(values)
        if getattr(policy, "obs_norm", None) is not None:
            policy.obs_norm.update()
        return time.perf_counter() - start, fitness.timesteps - before

    return one


def env_steps(args: Args) -> dict[str, dict]:
    """(2): env steps per second of a generation of each policy, alternating, with the table printed."""
    runners = {kind: generation_runner(kind, args, args.max_steps) for kind in ("cnn", "mlp", "env")}
    samples: dict[str, list[tuple[float, int]]] = {kind: [] for kind in runners}
    for kind in runners:  # untimed: allocator, threads, EnvPool's first reset
        runners[kind]()
    for _ in range(args.generations):
        for kind, one in runners.items():
            samples[kind].append(one())
    steps = {}
    print(f"\n(2) {ENV}, popsize {args.popsize}, episodes cut at {args.max_steps} steps: env steps per second of a generation")
    print("| policy | s per generation | env steps | steps/s |\n|---|---|---|---|")
    for kind, s in samples.items():
        seconds, count = statistics.median(t for t, _ in s), s[0][1]
        steps[kind] = {"seconds": seconds, "steps": count, "steps_per_s": count / seconds, "all": s}
        print(f"| {kind} | {seconds:.2f} | {count:,} | {count / seconds:,.0f} |")
    return steps


def main(args: Args) -> None:
    args = prepare(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine(torch.device("cpu"))
    print(f"machine: cpu={info['cpu']!r} threads={info['threads']} torch={info['torch']} device={info['device']}")
    print(f"load average (1 min) before: {os.getloadavg()[0]:.2f}  (other processes on the machine skew the timings)\n")
    started = time.perf_counter()
    env = make_vector_env(ENV, 1, note=None)
    env.close()

    rows = [forward(n, args, env.single_observation_space, env.single_action_space) for n in args.popsizes]
    print(f"(1) CNN forward over N frame stacks (4, 84, 84), median ms per call; vmap's weights capped at {args.mem_cap_gb:g} GB")
    cols = ["N", "plain ms", "flipout ms", "flipout/plain"]
    cols += [f"low rank r={args.rank} ms", "low rank/plain"] if args.rank else []
    cols += ["vmap ms", "vmap/flipout"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        v, vm = row["variants"], row["vmap/flipout"]
        cells = [str(row["n"]), f"{v['plain']['ms']:.1f}", f"{v['flipout']['ms']:.1f}", f"{row['flipout/plain']:.2f}x"]
        cells += [f"{v['lowrank']['ms']:.1f}", f"{row['lowrank/plain']:.2f}x"] if args.rank else []
        cells += [f"{v['vmap']['ms']:.1f}", f"{vm:.2f}x"] if vm is not None else ["skipped", "skipped"]
        print("| " + " | ".join(cells) + " |")

    steps = env_steps(args) if args.env_steps else {}
    full = None
    if args.full:
        seconds, count = generation_runner("cnn", args, None)()
        full = {"seconds": seconds, "steps": count}
        print(f"\none generation of the CNN, popsize {args.popsize}, uncut episodes: {seconds:.1f} s, {count:,} env steps")
    elapsed = time.perf_counter() - started
    print(f"\ntook {elapsed:.1f} s; load average (1 min) after: {os.getloadavg()[0]:.2f}")
    if args.json:
        out = {"machine": info, "args": asdict(args), "seconds": elapsed, "forward": rows, "generations": steps, "full": full}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)  # not lost to a folder that is not there yet
        Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    run(main, Args, description=__doc__)
