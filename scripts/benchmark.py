"""Population forward passes side by side: plain MLP, Flipout, and per-member weights (vmap, bmm).

For each tanh MLP and population size N, times one forward of the whole population:

    (a) plain       the unperturbed torch MLP on x of shape (N, in)
    (b) flipout     flipes Flipout forward, signs sampled once per generation (population entered once)
    (c) fresh       sampling + Flipout forward, fresh noise every step
    (d) vmap        per-member weights through torch.func.vmap over functional_call (EvoTorch's way)
    (e) bmm         per-member weights with torch.bmm
    (f) low-rank    Flipout with low-rank noise (FlipES(noise_rank=--rank)), signs sampled once per generation
    sample+tell     one generation's overhead: sample the noise, shape a random fitness, ES gradient, Adam step
    sample          sampling alone (FlipES._sample), the last column
    (g) compiled    with --compile BACKEND: (b)'s model under torch.compile(backend=BACKEND), compiled in the warm-up

(d) and (e) share precomputed per-member weights (not timed); they are skipped ("skipped") where those
would exceed --mem-cap-gb (default 4 GB; 376-256-256-17 at N=4096 needs 2.7 GB).

Variants are interleaved round-robin (machine noise hits all alike); the table reports the median
time per call in ms, and a second table its spread: the quartiles of each variant's timed blocks and their count
(a ratio of medians is only as sure as those ranges are narrow). Usage:

    PYTHONPATH=. python scripts/benchmark.py [--device cuda] [--sizes 17-64-64-6 ...] [--popsizes 1024 4096]
    PYTHONPATH=. python scripts/benchmark.py --quick            # a smoke test, a few seconds
    PYTHONPATH=. python scripts/benchmark.py --threads 1 --sizes 64-256-256-8 --popsizes 1024 --compile inductor
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from repro_common import cpu_name
from torch import Tensor, nn
from torch.func import functional_call, vmap

import flipes
from flipes.cli import option_name, run
from flipes.config import check_device, check_threads
from flipes.errors import UsageError

# (d)/(b) speed-up targets at N=4096, by MLP
VMAP_TARGETS = {"17-64-64-6": 4.0, "376-256-256-17": 8.0}
PLAIN_TARGET = 1.6  # (b) <= 1.6x (a)
TELL_TARGET = 3.0  # sample+tell <= 3x (b)


@dataclass
class Args:
    sizes: list[str] = field(default_factory=lambda: ["17-64-64-6", "376-256-256-17"])
    """MLP widths, input first, dash-separated (several: space- or comma-separated)."""
    popsizes: list[int] = field(default_factory=lambda: [1024, 4096])
    """Population sizes N."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Torch device of the models and inputs."""
    sigma: float = 0.05
    """Perturbation scale."""
    rounds: int = 30
    """Round-robin rounds; a cheap variant runs one timed block per round."""
    warmup_rounds: int = 1
    """Untimed round-robin rounds before the timed ones."""
    min_rounds: int = 5
    """Fewest rounds (samples of the median) an expensive variant gets."""
    block_seconds: float = 0.02
    """Target duration of one timed block of calls (calls per block are calibrated)."""
    min_seconds: float = 0.6
    """Target total timed duration per variant, capped by --rounds."""
    mem_cap_gb: float = 4.0
    """Skip (d) and (e) when the per-member weights would exceed this many GB."""
    threads: int = 0
    """Torch CPU threads (0: torch's default)."""
    seed: int = 0
    """Seed of the weights, inputs and FlipES noise."""
    json: str | None = None
    """Write the raw numbers to this path."""
    rank: int = 4
    """Noise rank of the low-rank variant (f); 0 leaves it out."""
    quick: bool = False
    """Smoke test: one small MLP, N = 64, tiny repetitions."""
    compile: str | None = None
    """Also time (g): (b)'s model under torch.compile with this backend (inductor, aot_eager, eager); off by default."""


def prepare(args: Args) -> Args:
    """``args`` with comma-separated sizes split and ``--quick``'s budget applied; UsageError for
    options that cannot be run."""
    sizes = [s for token in args.sizes for s in token.split(",") if s]  # also accept 17-64-64-6,376-256-256-17
    for size in sizes:
        widths = size.split("-")
        if len(widths) < 2 or not all(w.isdigit() and int(w) > 0 for w in widths):
            raise UsageError("--sizes", f"{size!r} is not an MLP's widths", "write them input first, dash-separated: 17-64-64-6")
    if not sizes or not args.popsizes:
        raise UsageError("--sizes" if not sizes else "--popsizes", "is empty", "give at least one value")
    if any(n < 1 for n in args.popsizes):
        raise UsageError("--popsizes", f"must be at least 1, got {args.popsizes}", "e.g. --popsizes 1024 4096")
    for name, low in (("rounds", 1), ("min_rounds", 1), ("warmup_rounds", 0), ("threads", 0), ("rank", 0)):
        if getattr(args, name) < low:
            raise UsageError(option_name(name), f"must be at least {low}, got {getattr(args, name)}")
    check_threads("--threads", args.threads)
    check_device(args.device)
    args = dataclasses.replace(args, sizes=sizes)
    if args.quick:
        args = dataclasses.replace(
            args, sizes=sizes[:1], popsizes=[64], rounds=5, min_rounds=1, block_seconds=0.002, min_seconds=0.0
        )
    return args


def mlp(widths: list[int]) -> nn.Sequential:
    """Linear layers with tanh between them (and after the last, as a policy's squashed output)."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(widths):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    return nn.Sequential(*layers)


def machine(device: torch.device) -> dict[str, str | int]:
    info: dict[str, str | int] = {
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    info["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return info


def measure(variants: dict[str, Callable[[], object]], args: Args, sync: Callable[[], None]) -> dict[str, dict]:
    """Median seconds per call of each variant, the variants interleaved round-robin."""

    def block(fn: Callable[[], object], calls: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        return (time.perf_counter() - start) / calls

    # warm up, then calibrate the calls per block and the rounds each variant takes part in
    plan = {}
    for name, fn in variants.items():
        block(fn, 2)
        once = min(block(fn, 1) for _ in range(3))
        calls = max(1, int(args.block_seconds / once))
        wanted = math.ceil(args.min_seconds / (calls * once))
        plan[name] = (calls, min(args.rounds, max(args.min_rounds, wanted)))

    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for i in range(-args.warmup_rounds, args.rounds):  # rounds < 0 warm up (caches, allocator, threads) untimed
        for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate the order each round
            calls, reps = plan[name]
            if i < 0:
                block(variants[name], calls)
            elif i * reps // args.rounds != (i + 1) * reps // args.rounds:  # `reps` of the rounds, spread evenly
                samples[name].append(block(variants[name], calls))
    return {
        name: {"ms": 1e3 * statistics.median(s), "calls_per_block": plan[name][0], "blocks_ms": [1e3 * t for t in s]}
        for name, s in samples.items()
    }


def bench(size: str, n: int, args: Args, device: torch.device, sync: Callable[[], None]) -> dict:
    """All variants for one MLP and one population size."""
    torch.manual_seed(args.seed)
    widths = [int(w) for w in size.split("-")]
    plain = mlp(widths).to(device)
    x = torch.randn(n, widths[0], device=device)

    # (b) and (c)/(sample+tell) each get their own copy: (b) keeps one generation's noise throughout
    model_b = flipes.flipout(copy.deepcopy(plain))
    es_b = flipes.FlipES(model_b, popsize=n, sigma=args.sigma, seed=args.seed)
    model_c = flipes.flipout(copy.deepcopy(plain))
    es_c = flipes.FlipES(model_c, popsize=n, sigma=args.sigma, seed=args.seed)
    fitness = torch.randn(n, device=device)  # where a rollout's returns are: no copy to the device inside the timing
    model_f = flipes.flipout(copy.deepcopy(plain))
    es_f = flipes.FlipES(model_f, popsize=n, sigma=args.sigma, seed=args.seed, noise_rank=args.rank or None)

    @torch.no_grad()
    def plain_forward() -> Tensor:
        return plain(x)

    def fresh_forward() -> Tensor:
        es_c._noise = None  # force a fresh sample on entry
        with es_c.population():
            return model_c(x)

    def sample_and_tell() -> dict[str, float]:
        es_c._noise = None
        with warnings.catch_warnings():  # no forward on purpose: this times the generation's overhead alone
            warnings.simplefilter("ignore", flipes.OutsidePopulationWarning)
            with es_c.population():
                pass
            return es_c.tell(fitness)

    variants: dict[str, Callable[[], object]] = {
        "plain": plain_forward,
        "flipout": lambda: model_b(x),
        **({"lowrank": lambda: model_f(x)} if args.rank else {}),
        "fresh": fresh_forward,
        "sample": es_c._sample,
        "sample_tell": sample_and_tell,
    }

    # per-member weights W̄ + σε_n, shared by (d) and (e); their creation is not timed
    params = dict(plain.named_parameters())
    member_bytes = n * sum(p.numel() * p.element_size() for p in params.values())
    if member_bytes <= args.mem_cap_gb * 1e9:
        with torch.no_grad():
            members = {k: p.expand(n, *p.shape) + args.sigma * torch.randn(n, *p.shape, device=device) for k, p in params.items()}
        xm = x.unsqueeze(1)  # (N, 1, in): each member sees its own batch of one
        per_member = vmap(lambda p, xi: functional_call(plain, p, (xi,)))
        linears = [(members[f"{i}.weight"], members[f"{i}.bias"].unsqueeze(1)) for i in range(0, 2 * (len(widths) - 1), 2)]

        @torch.no_grad()
        def vmap_forward() -> Tensor:
            return per_member(members, xm)

        @torch.no_grad()
        def bmm_forward() -> Tensor:
            h = xm
            for w, b in linears:  # w: (N, out, in), b: (N, 1, out)
                h = torch.tanh(torch.baddbmm(b, h, w.mT))
            return h

        # check once that (d) and (e) compute the same per-member outputs
        torch.testing.assert_close(vmap_forward(), bmm_forward(), rtol=1e-4, atol=1e-5)
        variants |= {"vmap": vmap_forward, "bmm": bmm_forward}

    if args.compile:
        compiled_b = torch.compile(model_b, backend=args.compile)
        variants["compiled"] = lambda: compiled_b(x)
    with es_b.population(), es_f.population():  # (b), (f): entered ONCE, noise sampled once as in a rollout
        if args.compile:  # float32: inductor may fuse and sum in another order
            torch.testing.assert_close(compiled_b(x), model_b(x), rtol=1e-4, atol=1e-5)
        results = measure(variants, args, sync)
    num_params = sum(p.numel() for p in params.values())
    return {"mlp": size, "n": n, "params": num_params, "member_weights_gb": member_bytes / 1e9, "variants": results}


def fmt(v: float | None, ratio: bool = False) -> str:
    if v is None:
        return "skipped"
    return f"{v:.2f}x" if ratio else f"{v:.3f}"


def spread(blocks: list[float] | None) -> str:
    """``q1–q3 (k)``: the inclusive quartiles of a variant's k timed blocks, in their unit ("skipped": not run)."""
    if blocks is None:
        return "skipped"
    q1, _, q3 = statistics.quantiles(blocks, n=4, method="inclusive") if len(blocks) > 1 else blocks * 3
    return f"{q1:.3f}–{q3:.3f} ({len(blocks)})"


def main(args: Args) -> None:
    args = prepare(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    info = machine(device)
    print(f"machine: cpu={info['cpu']!r} threads={info['threads']} torch={info['torch']} device={info['device']}")
    print(f"load average (1 min) before: {os.getloadavg()[0]:.2f}  (other processes on the machine skew the timings)")
    print(f"per-member weights for (d), (e) capped at {args.mem_cap_gb:g} GB; median ms per call\n")

    started = time.perf_counter()
    rows = [bench(size, n, args, device, sync) for size in args.sizes for n in args.popsizes]
    elapsed = time.perf_counter() - started

    # the table
    cols = ["MLP", "N", "(a) plain ms", "(b) flipout ms", "(b)/(a)", "(c) fresh ms", "(d) vmap ms", "(d)/(b)"]
    cols += ["(e) bmm ms", "(e)/(b)", "sample+tell ms", "(sample+tell)/(b)", "sample ms"]
    cols += [f"(f) low-rank r={args.rank} ms", "(f)/(a)"] if args.rank else []
    cols += [f"(g) compiled ({args.compile}) ms", "(g)/(b)"] if args.compile else []
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for row in rows:
        ms = {k: v["ms"] for k, v in row["variants"].items()}
        b, d, e = ms["flipout"], ms.get("vmap"), ms.get("bmm")
        row["ratios"] = {
            "flipout/plain": b / ms["plain"],
            "vmap/flipout": d / b if d else None,
            "bmm/flipout": e / b if e else None,
            "sample_tell/flipout": ms["sample_tell"] / b,
            "lowrank/plain": ms["lowrank"] / ms["plain"] if "lowrank" in ms else None,
            "compiled/flipout": ms["compiled"] / b if "compiled" in ms else None,
        }
        r = row["ratios"]
        cells = [row["mlp"], str(row["n"]), fmt(ms["plain"]), fmt(b), fmt(r["flipout/plain"], True), fmt(ms["fresh"])]
        cells += [fmt(d), fmt(r["vmap/flipout"], True), fmt(e), fmt(r["bmm/flipout"], True)]
        cells += [fmt(ms["sample_tell"]), fmt(r["sample_tell/flipout"], True), fmt(ms["sample"])]
        cells += [fmt(ms["lowrank"]), fmt(r["lowrank/plain"], True)] if args.rank else []
        cells += [fmt(ms["compiled"]), fmt(r["compiled/flipout"], True)] if args.compile else []
        print("| " + " | ".join(cells) + " |")

    # the spread behind each median
    shown = {"plain": "(a) plain", "flipout": "(b) flipout", "fresh": "(c) fresh", "vmap": "(d) vmap", "bmm": "(e) bmm"}
    shown |= {"sample_tell": "sample+tell", "sample": "sample"}
    shown |= {"lowrank": f"(f) low-rank r={args.rank}"} if args.rank else {}
    shown |= {"compiled": f"(g) compiled ({args.compile})"} if args.compile else {}
    print("\nspread: quartiles of the timed blocks, ms per call (blocks)\n")
    print("| " + " | ".join(["MLP", "N", *shown.values()]) + " |")
    print("|" + "|".join("---" for _ in range(len(shown) + 2)) + "|")
    for row in rows:
        cells = [spread(row["variants"][k]["blocks_ms"] if k in row["variants"] else None) for k in shown]
        print("| " + " | ".join([row["mlp"], str(row["n"]), *cells]) + " |")

    # the targets
    print("\ntargets:")
    for row in rows:
        r, tag = row["ratios"], f"{row['mlp']} N={row['n']}"
        checks = [(f"(b) <= {PLAIN_TARGET}x (a)", r["flipout/plain"], r["flipout/plain"] <= PLAIN_TARGET)]
        checks.append((f"sample+tell <= {TELL_TARGET}x (b)", r["sample_tell/flipout"], r["sample_tell/flipout"] <= TELL_TARGET))
        if row["n"] == 4096 and row["mlp"] in VMAP_TARGETS:
            target, ratio = VMAP_TARGETS[row["mlp"]], r["vmap/flipout"]
            checks.append((f"(b) >= {target:g}x faster than (d)", ratio, ratio is not None and ratio >= target))
        for what, ratio, ok in checks:
            print(f"  [{'PASS' if ok else 'FAIL'}] {what}: {tag}: {fmt(ratio, True)}")
    print(f"\ntook {elapsed:.1f} s; load average (1 min) after: {os.getloadavg()[0]:.2f}")

    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)  # not lost to a folder that is not there yet
        Path(args.json).write_text(
            json.dumps({"machine": info, "args": asdict(args), "seconds": elapsed, "results": rows}, indent=1), encoding="utf-8"
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    run(main, Args, description=__doc__)
