"""Fig. 5 of Wen et al. (ICLR 2018, arXiv:1803.04386): the time of one ES update with Flipout
against classic ES with per-member weights, at 5,000 samples per update; and low-rank Flipout's
population forward against plain batch inference (EGGROLL's claim, Sarkar et al., 2025).

    python scripts/repro_timing.py                        # this machine's CPU, all cores
    python scripts/repro_timing.py --device cuda          # a GPU (writes repro_timing_cuda.*)
    python scripts/repro_timing.py --tiny true            # seconds: a smoke test

One update = sample the noise + forward of all N members (one digits example each) + fitness
(−cross-entropy) + gradient + Adam step. Both methods use mirrored pairs and z-scored fitness, so
they compute the same estimator ĝ = 1/(Nσ) Σ F̂_n u_n:

- FlipES: ``flipes.FlipES(groups=1)``: one ε, per-member signs, two GEMMs per layer;
- classic: every member's weights θ̄ ± σε_k materialized (fresh ``randn`` per pair, as EvoTorch
  does), run through ``torch.func.vmap`` (batched GEMMs / grouped convs), in chunks that fit
  memory, the gradient accumulated as Σ_k (F_k⁺ − F_k⁻) ε_k in the same pass (z-scoring needs
  only the std at the end) — the fastest single-process classic ES we know how to write here.

Networks: FC 64-h-h-10 (two tanh hidden layers) for ``--hidden``; the ConvNet of
``repro_common.conv_net`` (32·s and 64·s 3×3 filters) for ``--scales``.

Low-rank section: one 1024→1024 Linear, N = 4,096 members with one example each, the median time
of one population forward (noise sampled once per generation, as in a rollout) for full-rank and
rank-r Flipout, against plain batch inference ``F.linear(x, W, b)`` on x (4096, 1024); throughput
is plain time / variant time. Writes ``repro_timing.{png,md,json}`` (``repro_timing_cuda.*`` on a
GPU) to ``--out``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from benchmark import spread
from repro_common import (
    MemberWeights,
    check_at_least,
    check_even_popsizes,
    chunk_members,
    data,
    inputs,
    machine,
    make_es,
    make_net,
    markdown_table,
    median_time,
    member_loss,
    panels,
    setup,
    write_outputs,
)
from torch import Tensor, nn

import flipes
from flipes.cli import run
from flipes.es.shaping import z_score


@dataclass
class Args:
    sections: list[Literal["fc", "conv", "lowrank"]] = field(default_factory=lambda: ["fc", "conv", "lowrank"])
    """Which tables to make."""
    popsize: int = 5000
    """Samples per update for the fc and conv tables."""
    hidden: list[int] = field(default_factory=lambda: [32, 128, 512, 2048])
    """Hidden widths h of the FC 64-h-h-10 networks of the fc table."""
    scales: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0, 1.25, 1.5])
    """Filter scales s of the ConvNets (32·s and 64·s filters) of the conv table."""
    update_ranks: list[int] = field(default_factory=lambda: [4])
    """Low-rank FlipES columns in the fc and conv tables (empty: none)."""
    repeats: int = 3
    """Timed updates per method (median)."""
    min_seconds: float = 1.0
    """Short updates are repeated for at least this long (up to 50 runs)."""
    classic_max_seconds: float = 15.0
    """A classic update slower than this is timed once (its first run)."""
    lowrank_n: int = 4096
    """Members (one example each) of the low-rank section."""
    lowrank_dim: int = 1024
    """Input and output width of the low-rank section's Linear layer."""
    ranks: list[int] = field(default_factory=lambda: [1, 2, 4])
    """Noise ranks of the low-rank section (full rank is always timed)."""
    lowrank_rounds: int = 15
    """Interleaved timed rounds of the low-rank section (median)."""
    chunk_mb: float = 0
    """Memory for one chunk of classic members' weights (0: 384 MB on CPU, 16 GB on CUDA)."""
    sigma: float = 0.05
    """Perturbation scale σ."""
    lr: float = 0.01
    """Adam learning rate of both methods' update."""
    seed: int = 0
    """Seed of the networks' weights and of the noise."""
    device: str = "cpu"
    """Torch device: cpu, cuda, cuda:N."""
    threads: int = 0
    """Torch CPU threads (0: all cores)."""
    out: str = "scripts/results"
    """Directory of repro_timing.{png,md,json} (repro_timing_cuda.* on a GPU; a _tiny suffix with --tiny)."""
    tiny: bool = False
    """Smoke test: N = 64, hidden 16/32, scales 0.25, a 64→64 layer."""


def batch(kind: str, n: int, dev: torch.device) -> tuple[Tensor, Tensor]:
    x, y, _, _ = data()
    idx = torch.randint(0, len(x), (n,), generator=torch.Generator().manual_seed(0))
    return inputs(kind, x[idx]).to(dev), y[idx].to(dev)


def flipes_update(net: nn.Module, rank: int | None, args: Args, x: Tensor, y: Tensor) -> Callable[[], object]:
    model = flipes.flipout(copy.deepcopy(net))
    es = make_es(model, rank, popsize=args.popsize, sigma=args.sigma, lr=args.lr, seed=args.seed, shaping=z_score)
    return lambda: es.step(lambda m, pop: -member_loss(m(x), y))


def classic_update(net: nn.Module, args: Args, x: Tensor, y: Tensor, chunk_mb: float) -> Callable[[], object]:
    net = copy.deepcopy(net)
    members = MemberWeights(net)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    pairs, p, sigma = args.popsize // 2, members.num_params, args.sigma
    chunk = chunk_members(p, chunk_mb / 3, pairs)  # ε (C, P) and the 2C members' weights
    gen = torch.Generator(device=x.device).manual_seed(args.seed)

    @torch.no_grad()
    def update() -> None:
        theta = members.mean()
        acc = torch.zeros(p, device=x.device)
        fitness = []
        for start in range(0, pairs, chunk):
            c = min(chunk, pairs - start)
            eps = torch.randn(c, p, generator=gen, device=x.device)
            w = torch.cat((theta + sigma * eps, theta - sigma * eps))  # members k and k + c: ±ε_k
            f = -member_loss(members.forward(w, x[2 * start : 2 * start + 2 * c]), y[2 * start : 2 * start + 2 * c])
            fitness.append(f)
            acc.addmv_(eps.T, f[:c] - f[c:])  # Σ_k (F_k⁺ − F_k⁻) ε_k; the mean of F cancels in each pair
        std = torch.cat(fitness).std(unbiased=False)
        members.add_to_grad(acc / (-std * args.popsize * sigma))  # −ĝ, as FlipES writes it
        opt.step()

    return update


def time_update(fn: Callable[[], object], sync: Callable[[], None], args: Args, cap: float | None = None) -> tuple[float, int]:
    """(median seconds, timed runs): the first run warms up, unless it took longer than ``cap``.
    Short updates run for ≥ ``min_seconds`` (up to 50 runs): a median of many resists other load."""
    start = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - start
    if cap is not None and first > cap:
        return first, 1
    runs = max(args.repeats, min(50, int(args.min_seconds / max(first, 1e-6))))
    return median_time(fn, sync, runs, warmup=0), runs


def update_table(
    kind: str, sizes: list[float], args: Args, dev: torch.device, sync: Callable[[], None], chunk_mb: float
) -> list[dict]:
    x, y = batch(kind, args.popsize, dev)
    rows = []
    for size in sizes:
        torch.manual_seed(args.seed)
        net = make_net(kind, size).to(dev)
        p = sum(q.numel() for q in net.parameters())
        row: dict = {"size": size, "params": p, "ms": {}, "runs": {}}
        variants: dict[str, Callable[[], object]] = {"flipout": flipes_update(net, None, args, x, y)}
        for r in args.update_ranks:
            variants[f"low-rank r={r}"] = flipes_update(net, r, args, x, y)
        variants["classic"] = classic_update(net, args, x, y, chunk_mb)
        for name, fn in variants.items():
            t, runs = time_update(fn, sync, args, args.classic_max_seconds if name == "classic" else None)
            row["ms"][name], row["runs"][name] = 1e3 * t, runs
        row["classic/flipout"] = row["ms"]["classic"] / row["ms"]["flipout"]
        rows.append(row)
        cells = ", ".join(f"{k} {v:.1f} ms" for k, v in row["ms"].items())
        print(f"{kind} {size:g} ({p:,} params): {cells}; classic/flipout {row['classic/flipout']:.1f}x", flush=True)
    return rows


def lowrank_table(args: Args, dev: torch.device, sync: Callable[[], None]) -> list[dict]:
    """Population forward of one Linear layer: plain batch, full-rank and low-rank Flipout, interleaved."""
    torch.manual_seed(args.seed)
    layer = nn.Linear(args.lowrank_dim, args.lowrank_dim).to(dev)
    x = torch.randn(args.lowrank_n, args.lowrank_dim, device=dev)
    ranks: list[int | None] = [None, *args.ranks]
    variants: dict[str, Callable[[], object]] = {}
    samplers: dict[str, Callable[[], object]] = {}
    # no_grad outermost: the populations' own no_grad, entered inside it, restore "off" when the stack closes them
    with torch.no_grad(), contextlib.ExitStack() as stack:
        variants["plain"] = lambda: F.linear(x, layer.weight, layer.bias)
        for r in ranks:
            name = "flipout" if r is None else f"low-rank r={r}"
            model = flipes.flipout(copy.deepcopy(layer))
            es = make_es(model, r, popsize=args.lowrank_n, sigma=args.sigma, seed=args.seed)
            stack.enter_context(es.population())  # signs and ε sampled once, as in a rollout
            variants[name] = lambda model=model: model(x)
            samplers[name] = es._sample
        torch.testing.assert_close(variants["flipout"]().mean(), variants["plain"]().mean(), atol=0.05, rtol=0)  # sane
        calls = {}
        for name, fn in variants.items():  # calls per timed block: ≥ ~20 ms of work (GPU calls are short)
            once = median_time(fn, sync, 3, warmup=2)
            calls[name] = max(1, int(0.02 / max(once, 1e-6)))
        samples: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for i in range(args.lowrank_rounds):  # interleaved, the order rotated: machine noise hits all alike
            for name in names[i % len(names) :] + names[: i % len(names)]:
                sync()
                start = time.perf_counter()
                for _ in range(calls[name]):
                    variants[name]()
                sync()
                samples[name].append((time.perf_counter() - start) / calls[name])
        sample_ms = {k: 1e3 * median_time(fn, sync, 5) for k, fn in samplers.items()}
    plain = statistics.median(samples["plain"])
    rows = []
    for name, s in samples.items():
        t = statistics.median(s)
        rows.append({"variant": name, "ms": 1e3 * t, "throughput_pct": 100 * plain / t, "sample_ms": sample_ms.get(name),
                     "rounds_ms": [1e3 * v for v in s]})  # fmt: skip
        print(f"lowrank {name}: {1e3 * t:.3f} ms, {100 * plain / t:.1f}% of plain", flush=True)
    return rows


def main(args: Args) -> dict:
    if args.tiny:
        args.popsize, args.hidden, args.scales, args.repeats, args.min_seconds = 64, [16, 32], [0.25], 1, 0.0
        args.lowrank_n, args.lowrank_dim, args.lowrank_rounds = 64, 64, 3
    least = {"popsize": 2, "hidden": 1, "scales": 1e-3, "repeats": 1, "min_seconds": 0, "classic_max_seconds": 0}
    least |= {"lowrank_n": 1, "lowrank_dim": 1, "lowrank_rounds": 1, "chunk_mb": 0}
    # empty rank lists are fine: --ranks with none times full rank alone, --update-ranks none skips the update section
    check_at_least(args, least | {k: 1 for k in ("ranks", "update_ranks") if getattr(args, k)})
    check_even_popsizes("--popsize", [args.popsize])
    dev, sync = setup(args.device, args.threads or (os.cpu_count() or 1))
    chunk_mb = args.chunk_mb or (16384 if dev.type == "cuda" else 384)
    results: dict = {"args": asdict(args), "machine": machine(dev)}
    print(f"machine: {results['machine']}", flush=True)
    started = time.perf_counter()
    if "fc" in args.sections:
        results["fc"] = update_table("fc", args.hidden, args, dev, sync, chunk_mb)
    if "conv" in args.sections:
        results["conv"] = update_table("conv", args.scales, args, dev, sync, chunk_mb)
    if "lowrank" in args.sections:
        results["lowrank"] = lowrank_table(args, dev, sync)
    results["seconds"] = time.perf_counter() - started
    results["load_avg_1min_after"] = os.getloadavg()[0]

    m = results["machine"]
    md = [
        f"{m['device'] if dev.type == 'cuda' else m['cpu']}, {m['threads']} threads, torch {m['torch']}; "
        f"load average {m['load_avg_1min']:.2f} before, {results['load_avg_1min_after']:.2f} after.\n"
    ]
    for kind, label in (("fc", "FC 64-h-h-10, hidden h"), ("conv", "ConvNet, filter scale s")):
        if kind not in results:
            continue
        names = list(results[kind][0]["ms"])
        header = [label, "params", *[f"{n} ms" for n in names], "classic / flipout"]
        rows = [
            [f"{r['size']:g}", f"{r['params']:,}", *[f"{r['ms'][n]:.1f}" for n in names], f"{r['classic/flipout']:.1f}x"]
            for r in results[kind]
        ]
        md += [
            f"\nPer-update time at N = {args.popsize:,} samples ({label}; classic timed once where it took > "
            f"{args.classic_max_seconds:g} s):\n",
            markdown_table(header, rows),
        ]
    if "lowrank" in results:
        rows = [
            [
                r["variant"],
                f"{r['ms']:.3f}",
                spread(r["rounds_ms"]),
                f"{r['throughput_pct']:.1f}%",
                "" if r["sample_ms"] is None else f"{r['sample_ms']:.2f}",
            ]
            for r in results["lowrank"]
        ]
        md += [
            f"\nPopulation forward of one {args.lowrank_dim}→{args.lowrank_dim} Linear, N = {args.lowrank_n:,} "
            f"(one example each), median of {args.lowrank_rounds} interleaved rounds:\n",
            markdown_table(
                ["variant", "ms / forward", "quartiles (rounds)", "throughput vs plain", "sampling ms / generation"], rows
            ),
        ]
    markdown = "\n".join(md)
    print("\n" + markdown)
    stem = ("repro_timing_cuda" if dev.type == "cuda" else "repro_timing") + ("_tiny" if args.tiny else "")
    tables = [k for k in ("fc", "conv") if k in results]
    fig = None
    if tables:
        fig, axes = panels(len(tables))
        for ax, kind in zip(axes[0], tables, strict=True):
            sizes = [r["size"] for r in results[kind]]
            for name in results[kind][0]["ms"]:
                ax.plot(sizes, [r["ms"][name] / 1e3 for r in results[kind]], marker="o", label=name)
            ax.set_yscale("log")
            if kind == "fc":
                ax.set_xscale("log", base=2)
            ax.set_xlabel("hidden units" if kind == "fc" else "filter scale")
            ax.set_ylabel("seconds per update")
            ax.set_title(f"{kind.upper()}, N = {args.popsize:,} ({m['device'] if dev.type == 'cuda' else 'CPU'})")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("Per-update time: FlipES vs per-member weights (cf. Wen et al. 2018, Fig. 5)")
    write_outputs(args.out, stem, results, markdown, fig)
    return results


if __name__ == "__main__":
    run(main, Args, description=__doc__)
