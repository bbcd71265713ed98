"""Population forward of a transformer block: plain batch, Flipout, low-rank Flipout, per-member weights.

Flipout: Wen, Vicol, Ba, Grosse & Tran, "Flipout: Efficient Pseudo-Independent Weight Perturbations
on Mini-Batches", ICLR 2018 (arXiv:1803.04386). Low-rank perturbations as in EGGROLL (Sarkar et al.,
2025): each weight's noise is ``A Bᵀ/√r``, sign-flipped per member.

Part 1, speed. ONE ``nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=0,
batch_first=True, norm_first=True)``, one sequence of --seq-len tokens per member (input
``(N, L, d_model)``), under ``torch.no_grad()``; for each N:

    plain           the unperturbed block in eval mode, as torch runs it (its fused fast path,
                    ``torch._transformer_encoder_layer_fwd``, when its conditions hold; the table says
                    which path ran)
    plain (python)  the same block with the fast path switched off (the Python-level modules)
    flipout         ``flipes.flipout(block)``, ``FlipES(popsize=N)``, the forward inside
                    ``es.population()`` (noise sampled once, on the first entry, as in a rollout)
    low-rank r=R    the same with ``FlipES(noise_rank=R)``, for each R in --ranks
    vmap            N explicit weight copies through ``torch.func.vmap`` over ``functional_call``
                    (how EvoTorch evaluates a population); "skipped (memory)" above --mem-cap-gb
    sample ...      ``es._sample()``: one generation's noise of each FlipES (not part of the forward)

Variants are interleaved round-robin (machine noise hits all alike; ``benchmark.measure``); the
tables report the median as tokens/s (N·L / time) and as a ratio to plain. Before timing, each
variant is checked: outside a population the Flipout block is the plain block; inside, two members
fed the same sequence get different outputs (the perturbation is applied); vmap's member 0 is the
block with member 0's weights.

Part 2, memory. A stack of --mem-blocks such blocks (12 × d=256: ~9.5 M parameters, nothing else),
--mem-seq-len tokens per member, one population forward per fresh subprocess per (variant, N): the
resident set before the forward and its peak after (``VmHWM``; ``ru_maxrss`` off Linux), beside
what N explicit weight copies alone would take (N × params × 4 bytes). "parts of P": the full-rank
population evaluated P members at a time (``pop.split(P)``), as a population too large for memory is;
"noise per part": also with N / P ε groups and ``hold_noise=False``, each part's noise sampled in turn.

    PYTHONPATH=. python scripts/bench_transformer.py [--threads 2] [--popsizes 256 1024 4096]
    PYTHONPATH=. python scripts/bench_transformer.py --quick        # smoke test, tiny sizes, < 30 s
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import math
import multiprocessing
import os
import platform
import resource
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from benchmark import measure
from repro_common import machine, markdown_table, write_outputs
from torch import Tensor, nn
from torch.func import functional_call, vmap

import flipes
from flipes.cli import option_name, run
from flipes.config import check_threads
from flipes.errors import UsageError

TARGET = 0.70  # low-rank tokens/s >= 70% of plain inference
# torch's fused inference kernels (its "fast path") and how the table names them
FUSED = {"_transformer_encoder_layer_fwd": "fused layer", "_native_multi_head_attention": "fused attention"}


@dataclass
class Args:
    popsizes: list[int] = field(default_factory=lambda: [256, 1024, 4096])
    """Population sizes N of the speed table (one sequence per member)."""
    d_model: int = 256
    """Width of the transformer block."""
    nhead: int = 8
    """Attention heads (even, or torch's fast path is off for the plain block)."""
    dim_feedforward: int = 1024
    """Hidden width of the block's feed-forward part."""
    seq_len: int = 32
    """Tokens per member's sequence in the speed table."""
    ranks: list[int] = field(default_factory=lambda: [1, 4])
    """Noise ranks of the low-rank variants."""
    sigma: float = 0.01
    """Perturbation scale."""
    rounds: int = 9
    """Round-robin rounds; a cheap variant runs one timed block per round."""
    warmup_rounds: int = 1
    """Untimed round-robin rounds before the timed ones."""
    min_rounds: int = 5
    """Fewest rounds (samples of the median) an expensive variant gets."""
    block_seconds: float = 0.05
    """Target duration of one timed block of calls (calls per block are calibrated)."""
    min_seconds: float = 0.5
    """Target total timed duration per variant, capped by --rounds."""
    mem_cap_gb: float = 4.0
    """Skip the vmap variant when its N weight copies would exceed this many GB."""
    memory: bool = True
    """Run part 2, the peak memory of a ~10 M-parameter stack against N."""
    mem_popsizes: list[int] = field(default_factory=lambda: [256, 1024, 2048, 4096])
    """Population sizes N of the memory table."""
    mem_blocks: int = 12
    """Transformer blocks in the memory table's stack (12 × d=256: ~9.5 M parameters)."""
    mem_seq_len: int = 16
    """Tokens per member's sequence in the memory table (short, so that N = 4096 runs on 2 cores)."""
    mem_rank: int = 4
    """Noise rank of the memory table's low-rank variant."""
    mem_part: int = 512
    """Members per pass of the memory table's full-rank Flipout in parts (``pop.split``; 0: no such column)."""
    threads: int = 0
    """Torch CPU threads, here and in the memory subprocesses (0: torch's default)."""
    seed: int = 0
    """Seed of the weights, inputs and noise."""
    out: str = "scripts/results"
    """Directory of bench_transformer.{json,md} (bench_transformer_quick.* with --quick)."""
    quick: bool = False
    """Smoke test: a d=32 block, N = 8 and 16, 4 tokens, tiny repetitions, every variant; memory cells forked from a
    server that imported torch, not spawned (seconds less each; on another RSS baseline)."""


def prepare(args: Args) -> Args:
    """``args`` with ``--quick``'s sizes applied; UsageError for options that cannot be run."""
    for name in ("popsizes", "mem_popsizes", "ranks"):
        values = getattr(args, name)
        if any(v < 1 for v in values):
            raise UsageError(option_name(name), f"must all be at least 1, got {values}")
    if not args.popsizes:
        raise UsageError("--popsizes", "is empty", "give at least one value")
    for name in ("popsizes", "mem_popsizes"):
        if any(v % 2 for v in getattr(args, name)):  # FlipES pairs mirrored members
            raise UsageError(option_name(name), f"must be even (mirrored pairs), got {getattr(args, name)}")
    for name, low in (("d_model", 1), ("nhead", 1), ("dim_feedforward", 1), ("seq_len", 1), ("rounds", 1),
                      ("min_rounds", 1), ("warmup_rounds", 0), ("mem_blocks", 1), ("mem_seq_len", 1),
                      ("mem_rank", 1), ("mem_part", 0), ("threads", 0)):  # fmt: skip
        if getattr(args, name) < low:
            raise UsageError(option_name(name), f"must be at least {low}, got {getattr(args, name)}")
    check_threads("--threads", args.threads)
    if args.d_model % args.nhead:
        raise UsageError("--nhead", f"must divide --d-model {args.d_model}, got {args.nhead}")
    if not (args.sigma > 0 and math.isfinite(args.sigma)):
        raise UsageError("--sigma", f"must be a finite number > 0, got {args.sigma}")
    if args.quick:
        args = dataclasses.replace(
            args, popsizes=[8, 16], d_model=32, nhead=2, dim_feedforward=64, seq_len=4, rounds=3, warmup_rounds=0,
            min_rounds=1, block_seconds=0.002, min_seconds=0.0, mem_popsizes=[8], mem_blocks=2, mem_seq_len=4,
            mem_part=min(args.mem_part, 4),
        )  # fmt: skip
    return args


def block(args: Args) -> nn.TransformerEncoderLayer:
    """The block under test, in eval mode (inference; dropout is 0 anyway)."""
    return nn.TransformerEncoderLayer(
        d_model=args.d_model, nhead=args.nhead, dim_feedforward=args.dim_feedforward, dropout=0.0,
        batch_first=True, norm_first=True,
    ).eval()  # fmt: skip


@contextmanager
def fast_path(enabled: bool) -> Iterator[None]:
    """torch's fused transformer/MHA inference path on or off (a global switch), restored after."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def path_of(fn: Callable[[], object]) -> str:
    """Which path one call of ``fn`` ran: torch's fused encoder-layer kernel, its fused attention
    kernel (MHA's own fast path), or the Python-level modules. Counted by wrapping the two kernels,
    which torch's modules look up on ``torch`` at each call."""
    calls = dict.fromkeys(FUSED, 0)
    originals = {name: getattr(torch, name) for name in FUSED}

    def counting(name: str) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            calls[name] += 1
            return originals[name](*a, **kw)

        return wrapper

    try:
        for name in FUSED:
            setattr(torch, name, counting(name))
        fn()
    finally:
        for name, original in originals.items():
            setattr(torch, name, original)
    used = [label for name, label in FUSED.items() if calls[name]]
    return ", ".join(used) if used else "python"


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def fmt_rate(tokens_per_s: float) -> str:
    return f"{tokens_per_s / 1e6:.3f} M" if tokens_per_s >= 1e5 else f"{tokens_per_s / 1e3:.1f} k"


# ---------------------------------------------------------------------------------------------
# part 1: speed


def bench(n: int, args: Args) -> dict[str, Any]:
    """Every variant for one population size N."""
    torch.manual_seed(args.seed)
    plain = block(args)
    x = torch.randn(n, args.seq_len, args.d_model)
    total = num_params(plain)

    @torch.no_grad()
    def plain_forward() -> Tensor:
        return plain(x)

    @torch.no_grad()
    def plain_python() -> Tensor:
        with fast_path(False):
            return plain(x)

    # one Flipout copy per FlipES: a model belongs to one FlipES
    flip: dict[str, tuple[nn.Module, flipes.FlipES]] = {}
    for rank in (None, *args.ranks):
        model = flipes.flipout(copy.deepcopy(plain))
        es = flipes.FlipES(model, popsize=n, sigma=args.sigma, seed=args.seed, noise_rank=rank)
        flip["flipout" if rank is None else f"low-rank r={rank}"] = (model, es)

    variants: dict[str, Callable[[], object]] = {"plain": plain_forward, "plain (python)": plain_python}
    for name, (model, _) in flip.items():
        variants[name] = functools.partial(model, x)
    for name, (_, es) in flip.items():
        variants[f"sample {name}"] = es._sample

    # (e) per-member weights W̄ + σε_n; their creation is not timed
    params = {k: p.detach() for k, p in plain.named_parameters()}
    member_gb = n * total * 4 / 1e9
    members: dict[str, Tensor] | None = None
    if member_gb <= args.mem_cap_gb:
        members = {k: p.expand(n, *p.shape) + args.sigma * torch.randn(n, *p.shape) for k, p in params.items()}
        per_member = vmap(lambda p, xi: functional_call(plain, p, (xi,)))
        xm = x.unsqueeze(1)  # (N, 1, L, d): each member sees its own batch of one sequence

        @torch.no_grad()
        def vmap_forward() -> Tensor:
            with fast_path(False):  # the fused kernel has no vmap rule; the Python path is what vmap runs
                return per_member(members, xm)

        variants["vmap"] = vmap_forward

    checks = check_variants(plain, flip, x, variants, members)
    paths = {}
    with torch.no_grad():
        for name in ("plain", "plain (python)"):
            paths[name] = path_of(variants[name])
        with ExitStack() as populations:
            for _, es in flip.values():
                populations.enter_context(es.population())
            for name in flip:
                paths[name] = path_of(variants[name])
            # flipout and low-rank: populations entered ONCE, noise sampled once as in a rollout
            results = measure(variants, args, lambda: None)  # type: ignore[arg-type]  # duck-typed Args
    if "vmap" in variants:
        paths["vmap"] = "python (vmap)"

    tokens = n * args.seq_len
    plain_s, python_s = results["plain"]["ms"] / 1e3, results["plain (python)"]["ms"] / 1e3
    rows = []
    for name in ("plain", "plain (python)", *flip, "vmap"):
        if name not in results:
            reason = f"skipped (memory): N copies of the weights need {member_gb:.3g} GB > --mem-cap-gb {args.mem_cap_gb:g}"
            rows.append({"variant": name, "skipped": reason})
            continue
        seconds = results[name]["ms"] / 1e3
        rows.append({
            "variant": name, "path": paths[name], "ms": results[name]["ms"], "tokens_per_s": tokens / seconds,
            "vs_plain": plain_s / seconds, "vs_plain_python": python_s / seconds,
            "perturbed_params": flip[name][1].num_params if name in flip else None,
        })  # fmt: skip
    sampling = {name: results[f"sample {name}"]["ms"] for name in flip}
    return {"n": n, "tokens": tokens, "params": total, "member_weights_gb": member_gb, "rows": rows,
            "sample_ms": sampling, "checks": checks, "raw": results}  # fmt: skip


@torch.no_grad()
def check_variants(
    plain: nn.Module,
    flip: dict[str, tuple[nn.Module, flipes.FlipES]],
    x: Tensor,
    variants: dict[str, Callable[[], object]],
    members: dict[str, Tensor] | None,
) -> dict[str, Any]:
    """Refuse to time a variant that does not compute what it claims (e.g. a fused kernel that
    silently bypasses the perturbation). Returns what was checked, for the JSON."""
    ref = plain(x)
    with fast_path(False):
        torch.testing.assert_close(plain(x), ref, rtol=1e-4, atol=1e-4)  # both plain paths agree
    same = x[:1].expand_as(x).contiguous()  # every member the same sequence
    checked: dict[str, Any] = {}
    for name, (model, es) in flip.items():
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)  # outside a population: plain
        with es.population():
            y = model(same)
        spread = (y[1] - y[0]).abs().max().item()  # members 0 and 1: mirrored, opposite perturbations
        if not spread > 0:
            raise RuntimeError(f"{name}: members fed the same sequence got identical outputs; the perturbation was not applied")
        checked[name] = {"member_spread": spread, "perturbed_params": es.num_params, "params": num_params(plain)}
    if members is not None:
        y = variants["vmap"]()
        with fast_path(False):
            y0 = functional_call(plain, {k: v[0] for k, v in members.items()}, (x[:1],))
        torch.testing.assert_close(y[0], y0, rtol=1e-4, atol=1e-4)
        checked["vmap"] = {"member0_matches": True}
    return checked


# ---------------------------------------------------------------------------------------------
# part 2: memory


def stack(args: Args) -> nn.Sequential:
    return nn.Sequential(*[block(args) for _ in range(args.mem_blocks)]).eval()


def memory_bytes() -> tuple[int, int]:
    """(resident set now, peak resident set so far) of this process.

    On Linux from /proc/self/status (VmRSS, VmHWM: the high-water mark of this process's own
    address space). Not getrusage's ``ru_maxrss`` there: a spawned child inherits the parent's
    high-water mark (fork copies it, exec keeps it), so every child read the parent's peak."""
    status = Path("/proc/self/status")
    if status.exists():
        kib = {line.split(":")[0]: int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("Vm")}
        return kib["VmRSS"] * 1024, kib["VmHWM"] * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # elsewhere: KiB, but bytes on macOS
    peak = peak if sys.platform == "darwin" else peak * 1024
    return peak, peak


def in_fresh_process(fn: Callable[..., Any], *args: Any, forked: bool = False) -> Any:
    """``fn(*args)`` in a new process of its own, whose peak resident set (``VmHWM``) is that call's alone: spawned (a
    new interpreter that imports torch and the script, seconds per call), or with ``forked`` (where the platform has
    multiprocessing's forkserver) forked from a server that imported them once. A fork resets the high-water mark to
    the child's resident set: the same forward on another baseline than spawned (the server's imports, torch._dynamo
    among them, and of the shared libraries only the pages a cell runs)."""
    forked = forked and "forkserver" in multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if forked else "spawn")
    if forked:  # before the server starts, what every cell imports, by name: Python 3.11's server neither loads
        # "__main__" nor puts the script's folder on its path (the script loads there only from PYTHONPATH); torch.optim
        # (FlipES) imports torch._dynamo on first use, a second
        context.set_forkserver_preload(["__main__", "torch", "torch._dynamo", "flipes", Path(inspect.getfile(fn)).stem])
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def memory_child(args: Args, variant: str, n: int) -> dict[str, Any]:
    """One population forward of the stack in THIS (fresh) process: peak RSS before and after."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = stack(args)
    params = num_params(model)
    x = torch.randn(n, args.mem_seq_len, args.d_model)
    run_forward: Callable[[], Tensor]
    if variant == "plain":
        run_forward = torch.no_grad()(lambda: model(x))
    else:
        model = flipes.flipout(model)
        per_part = variant.startswith("parts") and "noise" in variant  # each part's groups' noise, sampled in turn
        es = flipes.FlipES(model, popsize=n, sigma=args.sigma, seed=args.seed,
                           noise_rank=args.mem_rank if variant.startswith("low-rank") else None,
                           groups=n // args.mem_part if per_part else 1, hold_noise=not per_part)  # fmt: skip

        def run_forward() -> Tensor:
            with es.population() as pop:  # the generation's noise is sampled here, on entry: counted
                if not variant.startswith("parts"):
                    return model(x)
                return torch.cat([model(x[part.members.start : part.members.stop]) for part in pop.split(args.mem_part)])

    before, _ = memory_bytes()
    start = time.perf_counter()
    y = run_forward()
    seconds = time.perf_counter() - start
    _, after = memory_bytes()
    assert y.shape == x.shape and bool(torch.isfinite(y).all())
    return {"variant": variant, "n": n, "params": params, "rss_before_gb": before / 1e9, "peak_rss_gb": after / 1e9,
            "forward_gb": (after - before) / 1e9, "seconds": seconds, "copies_gb": n * params * 4 / 1e9}  # fmt: skip


def memory_table(args: Args) -> list[dict[str, Any]]:
    """Each (N, variant) in a fresh process (``in_fresh_process``): the peak is a high-water mark per process."""
    parts = [f"parts of {args.mem_part}", f"parts of {args.mem_part}, noise per part"] if args.mem_part else []
    variants = ["plain", "flipout", f"low-rank r={args.mem_rank}", *parts]
    rows = []
    for n in args.mem_popsizes:
        for variant in variants:
            if variant.startswith("parts") and n <= args.mem_part:
                continue  # one part: the flipout cell
            row = in_fresh_process(memory_child, args, variant, n, forked=args.quick)
            print(f"  memory N={n} {variant}: peak {row['peak_rss_gb']:.2f} GB, {row['seconds']:.1f} s", flush=True)
            rows.append(row)
    return rows


def ram_gb() -> float | None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return None
    kib = next(int(line.split()[1]) for line in meminfo.read_text().splitlines() if line.startswith("MemTotal"))
    return kib * 1024 / 1e9


# ---------------------------------------------------------------------------------------------
# report


def speed_markdown(results: list[dict[str, Any]], args: Args) -> str:
    header = ["N", "variant", "path", "ms / forward", "tokens/s", "vs plain", "vs plain (python)", "perturbed params / note"]
    rows = []
    for r in results:
        for row in r["rows"]:
            if "skipped" in row:
                rows.append([f"{r['n']:,}", row["variant"], "", "", "skipped", "", "", row["skipped"]])
                continue
            perturbed = "" if row["perturbed_params"] is None else f"{row['perturbed_params']:,} of {r['params']:,}"
            rows.append([f"{r['n']:,}", row["variant"], row["path"], f"{row['ms']:.2f}", fmt_rate(row["tokens_per_s"]),
                         f"{row['vs_plain']:.0%}", f"{row['vs_plain_python']:.0%}", perturbed])  # fmt: skip
    sample_header = ["N", *[f"sample {name} ms" for name in results[0]["sample_ms"]]]
    sample_rows = [[f"{r['n']:,}", *[f"{ms:.2f}" for ms in r["sample_ms"].values()]] for r in results]
    return "\n".join([
        f"Population forward of one TransformerEncoderLayer(d_model={args.d_model}, nhead={args.nhead}, "
        f"dim_feedforward={args.dim_feedforward}, dropout=0, batch_first, norm_first; {results[0]['params']:,} "
        f"parameters), one sequence of {args.seq_len} tokens per member, no_grad, median of interleaved rounds; "
        "tokens/s = N·L / time, ratios are tokens/s against the plain batch:\n",
        markdown_table(header, rows),
        "\nSampling one generation's noise (`es._sample()`, once per generation, not in the forward):\n",
        markdown_table(sample_header, sample_rows),
    ])  # fmt: skip


def target_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in results:
        for row in r["rows"]:
            if row["variant"].startswith("low-rank") and "skipped" not in row:
                ok = row["vs_plain"] >= TARGET
                lines.append(f"- [{'PASS' if ok else 'FAIL'}] {row['variant']} >= {TARGET:.0%} of plain tokens/s at "
                             f"N={r['n']:,}: {row['vs_plain']:.0%} ({row['vs_plain_python']:.0%} of the python-path "
                             "plain)")  # fmt: skip
    return lines


def memory_markdown(rows: list[dict[str, Any]], args: Args, ram: float | None) -> str:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    header = ["N", *[f"{v} peak RSS GB" for v in variants], *[f"{v} s" for v in variants], "N weight copies GB"]
    out = []
    for n in args.mem_popsizes:
        by = {r["variant"]: r for r in rows if r["n"] == n}
        copies = by[variants[0]]["copies_gb"]
        fits = "" if ram is None else (" (fits in RAM)" if copies < ram else " (> this machine's RAM)")
        copies_text = (f"{copies:,.1f}" if copies >= 1 else f"{copies:.3g}") + fits
        out.append([f"{n:,}", *[f"{by[v]['peak_rss_gb']:.2f}" if v in by else "(one pass)" for v in variants],
                    *[f"{by[v]['seconds']:.1f}" if v in by else "" for v in variants], copies_text])  # fmt: skip
    params = rows[0]["params"]
    ram_text = f"{ram:.0f} GB" if ram else "unknown"
    forked = " forked from a server (--quick)" if args.quick else ""
    return "\n".join([
        f"Peak resident memory of one population forward of {args.mem_blocks} blocks (d_model={args.d_model}, "
        f"nhead={args.nhead}, dim_feedforward={args.dim_feedforward}; {params:,} parameters, nothing else), "
        f"{args.mem_seq_len} tokens per member, each cell a fresh process{forked} (peak RSS, `VmHWM`, torch and "
        f"the model included; RSS before the forward: {rows[0]['rss_before_gb']:.2f}–{max(r['rss_before_gb'] for r in rows):.2f} "
        f"GB), beside what N weight copies alone (N × params × 4 B) would need; this machine's RAM: {ram_text}:\n",
        markdown_table(header, out),
    ])  # fmt: skip


def main(args: Args) -> None:
    args = prepare(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    # vmap's attention falls back to a per-member loop (no batching rule for the CPU flash kernel);
    # that IS the vmap cost (the math backend measured the same), so the warning is not repeated
    warnings.filterwarnings("ignore", message=".*batching rule for aten::_scaled_dot_product")
    command = "PYTHONPATH=. python " + shlex.join(["scripts/bench_transformer.py", *sys.argv[1:]])
    info = machine(torch.device("cpu"))
    info["platform"] = platform.platform()
    print(f"machine: {info}\ncommand: {command}", flush=True)

    started = time.perf_counter()
    speed = []
    for n in args.popsizes:
        speed.append(bench(n, args))
        print(f"  speed N={n} done ({time.perf_counter() - started:.0f} s)", flush=True)
    memory = memory_table(args) if args.memory else []
    seconds = time.perf_counter() - started
    load_after = os.getloadavg()[0]

    ram = ram_gb()
    md = [
        "# Transformer-block population forward (`scripts/bench_transformer.py`)\n",
        f"`{command}`\n",
        f"{info['cpu']}, {info['cores']} cores, {info['threads']} torch threads, torch {info['torch']}, "
        f"{info['platform']}; load average {info['load_avg_1min']:.2f} before, {load_after:.2f} after; "
        f"{seconds:.0f} s in all. The machine was shared with other work while this ran: timings are noisy "
        "(the interleaved rounds put that noise on every variant alike, so the ratios are steadier than the "
        "absolute numbers).\n",
        speed_markdown(speed, args),
        "\nTarget (issue): low-rank Flipout at >= 70% of plain inference tokens/s:\n",
        *target_lines(speed),
    ]
    if memory:
        md += ["", memory_markdown(memory, args, ram)]
    markdown = "\n".join(md)
    print("\n" + markdown)
    payload = {"command": command, "machine": info, "ram_gb": ram, "args": asdict(args), "seconds": seconds,
               "load_avg_1min_after": load_after, "speed": speed, "memory": memory}  # fmt: skip
    write_outputs(args.out, "bench_transformer_quick" if args.quick else "bench_transformer", payload, markdown)


if __name__ == "__main__":
    run(main, Args, description=__doc__)
