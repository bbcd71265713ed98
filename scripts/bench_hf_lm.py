"""A Hugging Face causal LM's population against its plain batched inference: speed and memory.

ES fine-tuning of a language model (Qiu et al., "Evolution Strategies at Scale: LLM Fine-Tuning Beyond
Reinforcement Learning", 2025, arXiv:2509.24372) evaluates every member on prompts: a teacher-forced forward
(a log-likelihood fitness) or greedy decoding (a reward on generated answers). Here a ``transformers`` model built
from a config (Llama or GPT-2; nothing downloaded), one prompt per member, under ``torch.no_grad()``:

Part 1, speed, for each N in --popsizes:

    plain           the model on N prompts, as transformers runs it (the baseline: no perturbation at all)
    flipout         ``flipes.flipout(model)``, ``FlipES(popsize=N)``, inside ``es.population()`` (noise sampled
                    once, on entry)
    low-rank r=R    the same with ``FlipES(noise_rank=R)``, for each R in --ranks

each timed on ``forward`` (all logits of --prompt-len tokens per member) and ``generate`` (greedy, --new-tokens
tokens, the KV cache on), interleaved round-robin (``benchmark.measure``), median. Before timing: outside a
population each Flipout model's logits are the plain model's, inside two members given the same prompt differ.

Part 2, memory: a larger model (--mem-hidden × --mem-layers, --mem-vocab: ~58 M parameters by default), one
fresh process per variant: the resident set after building the model, its peak after one population forward of
--mem-popsize members, and its peak after ``tell`` (plain SGD: no optimizer state), beside the parameters' own
size. Variants: plain (the forward alone), flipout (one ε group, held), low-rank r=--mem-rank, and "one group
per member, parts of 1, noise per part" (``groups=N``, ``hold_noise=False``, ``pop.split(1)``: each member's noise
sampled in turn, as the paper's seeds regenerate it).

    PYTHONPATH=. python scripts/bench_hf_lm.py [--threads 1] [--arch gpt2]
    PYTHONPATH=. python scripts/bench_hf_lm.py --quick        # smoke test, tiny sizes, < 60 s
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import multiprocessing
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from bench_transformer import memory_bytes
from benchmark import measure
from repro_common import machine, markdown_table, write_outputs
from torch import Tensor, nn

import flipes
from flipes.cli import option_name, run
from flipes.config import check_threads
from flipes.errors import UsageError


@dataclass
class Args:
    arch: Literal["llama", "gpt2"] = "llama"
    """The model family: Llama (RMSNorm, SwiGLU, rotary positions) or GPT-2 (LayerNorm, Conv1D, learned positions)."""
    vocab: int = 8000
    """Vocabulary of the speed table's model."""
    hidden: int = 256
    """Width of the speed table's model."""
    layers: int = 4
    """Decoder layers of the speed table's model."""
    heads: int = 8
    """Attention heads (must divide the widths)."""
    popsizes: list[int] = field(default_factory=lambda: [8, 32])
    """Population sizes N of the speed table (one prompt per member)."""
    prompt_len: int = 32
    """Tokens per prompt."""
    new_tokens: int = 16
    """Tokens generate decodes per prompt."""
    ranks: list[int] = field(default_factory=lambda: [1, 4])
    """Noise ranks of the low-rank variants."""
    sigma: float = 1e-3
    """Perturbation scale (Qiu et al.'s)."""
    rounds: int = 7
    """Round-robin rounds; a cheap variant runs one timed block per round."""
    warmup_rounds: int = 1
    """Untimed round-robin rounds before the timed ones."""
    min_rounds: int = 5
    """Fewest rounds (samples of the median) an expensive variant gets."""
    block_seconds: float = 0.05
    """Target duration of one timed block of calls (calls per block are calibrated)."""
    min_seconds: float = 0.5
    """Target total timed duration per variant, capped by --rounds."""
    memory: bool = True
    """Run part 2, peak memory of a ~58 M-parameter model."""
    mem_vocab: int = 32000
    """Vocabulary of the memory table's model."""
    mem_hidden: int = 512
    """Width of the memory table's model."""
    mem_layers: int = 8
    """Decoder layers of the memory table's model."""
    mem_popsize: int = 8
    """Members of the memory table's population."""
    mem_rank: int = 4
    """Noise rank of the memory table's low-rank variant."""
    threads: int = 0
    """Torch CPU threads, here and in the memory subprocesses (0: torch's default)."""
    seed: int = 0
    """Seed of the weights, prompts and noise."""
    out: str = "scripts/results"
    """Directory of bench_hf_lm.{json,md} (bench_hf_lm_quick.* with --quick)."""
    quick: bool = False
    """Smoke test: a 2-layer width-32 model, N = 4 and 8, a few tokens, every variant."""


def prepare(args: Args) -> Args:
    """``args`` with ``--quick``'s sizes applied; UsageError for options that cannot be run."""
    for name in ("popsizes", "ranks"):
        if not getattr(args, name) or any(v < 1 for v in getattr(args, name)):
            raise UsageError(option_name(name), f"must be values of at least 1, got {getattr(args, name)}")
    for name in ("popsizes",):
        if any(v % 2 for v in getattr(args, name)):  # FlipES pairs mirrored members
            raise UsageError(option_name(name), f"must be even (mirrored pairs), got {getattr(args, name)}")
    for name, low in (("vocab", 2), ("hidden", 1), ("layers", 1), ("heads", 1), ("prompt_len", 1), ("new_tokens", 1),
                      ("rounds", 1), ("min_rounds", 1), ("warmup_rounds", 0), ("mem_vocab", 2), ("mem_hidden", 1),
                      ("mem_layers", 1), ("mem_popsize", 2), ("mem_rank", 1), ("threads", 0)):  # fmt: skip
        if getattr(args, name) < low:
            raise UsageError(option_name(name), f"must be at least {low}, got {getattr(args, name)}")
    check_threads("--threads", args.threads)
    for name in ("hidden", "mem_hidden"):
        if getattr(args, name) % args.heads:
            raise UsageError("--heads", f"must divide {option_name(name)} {getattr(args, name)}, got {args.heads}")
    if args.mem_popsize % 2:
        raise UsageError("--mem-popsize", f"must be even (mirrored pairs), got {args.mem_popsize}")
    if not args.sigma > 0:
        raise UsageError("--sigma", f"must be > 0, got {args.sigma}")
    if args.quick:
        args = dataclasses.replace(
            args, vocab=64, hidden=32, layers=2, heads=4, popsizes=[4, 8], prompt_len=4, new_tokens=3, rounds=3,
            warmup_rounds=0, min_rounds=1, block_seconds=0.002, min_seconds=0.0, mem_vocab=64, mem_hidden=32,
            mem_layers=2, mem_popsize=4,
        )  # fmt: skip
    return args


def make_model(args: Args, vocab: int, hidden: int, layers: int) -> nn.Module:
    """A causal LM from a config, in eval mode (a config's model starts in training mode: GPT-2's dropout)."""
    import transformers

    torch.manual_seed(args.seed)
    positions = args.prompt_len + args.new_tokens
    if args.arch == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=args.heads,
                                      n_positions=max(positions, 64), eos_token_id=None, bos_token_id=None)  # fmt: skip
        return transformers.GPT2LMHeadModel(cfg).eval()
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 8 * 8,
                                   num_hidden_layers=layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
                                   max_position_embeddings=max(positions, 64), eos_token_id=None, bos_token_id=None)  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def bench(n: int, args: Args) -> dict[str, Any]:
    """Every variant for one population size N: forward and generate."""
    plain = make_model(args, args.vocab, args.hidden, args.layers)
    ids = torch.randint(0, args.vocab, (n, args.prompt_len), generator=torch.Generator().manual_seed(args.seed))
    mask = torch.ones_like(ids)
    models: dict[str, tuple[nn.Module, flipes.FlipES | None]] = {"plain": (plain, None)}
    for rank in (None, *args.ranks):
        model = flipes.flipout(copy.deepcopy(plain))
        es = flipes.FlipES(model, popsize=n, sigma=args.sigma, seed=args.seed, noise_rank=rank)
        models["flipout" if rank is None else f"low-rank r={rank}"] = (model, es)
    settings = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False, "pad_token_id": 0}

    def forward(model: nn.Module) -> Tensor:
        return model(input_ids=ids, attention_mask=mask).logits

    def generate(model: nn.Module) -> Tensor:
        return model.generate(ids, attention_mask=mask, **settings)

    checks = {}
    with torch.no_grad():
        expect = forward(plain)
        for name, (model, es) in models.items():
            if es is None:
                continue
            outside = (forward(model) - expect).abs().max().item()  # the mean network: plain's logits
            with es.population():
                same = model(input_ids=ids[:1].expand(n, -1)).logits
            checks[name] = {"outside_max_abs_diff": outside, "member_spread": (same[0] - same[1]).abs().max().item()}
            assert outside == 0 and checks[name]["member_spread"] > 0, (name, checks[name])
        results = {}
        with ExitStack() as populations:
            for _, es in models.values():
                if es is not None:
                    populations.enter_context(es.population())  # entered once: noise sampled once, as in a generation
            for what, fn in (("forward", forward), ("generate", generate)):
                variants: dict[str, Callable[[], object]] = {name: functools.partial(fn, m) for name, (m, _) in models.items()}
                results[what] = measure(variants, args, lambda: None)  # type: ignore[arg-type]  # duck-typed Args
    tokens = {"forward": n * args.prompt_len, "generate": n * args.new_tokens}
    rows = []
    for what, res in results.items():
        for name in models:
            seconds = res[name]["ms"] / 1e3
            rows.append({"what": what, "variant": name, "ms": res[name]["ms"], "tokens_per_s": tokens[what] / seconds,
                         "vs_plain": res["plain"]["ms"] / res[name]["ms"]})  # fmt: skip
    return {"n": n, "params": num_params(plain), "rows": rows, "checks": checks, "raw": results}


MEMORY_VARIANTS = ("plain", "flipout", "low-rank", "one group per member, parts of 1, noise per part")


def memory_child(args: Args, variant: str) -> dict[str, Any]:
    """In THIS (fresh) process: the model, one population forward of ``--mem-popsize`` prompts, then tell."""
    if args.threads:
        torch.set_num_threads(args.threads)
    model = make_model(args, args.mem_vocab, args.mem_hidden, args.mem_layers)
    n = args.mem_popsize
    ids = torch.randint(0, args.mem_vocab, (n, args.prompt_len), generator=torch.Generator().manual_seed(args.seed))
    built, _ = memory_bytes()
    start = time.perf_counter()
    with torch.no_grad():
        if variant == "plain":
            model(input_ids=ids)
            _, forward_peak = memory_bytes()
            tell_peak = forward_peak
        else:
            model = flipes.flipout(model)
            per_member = variant.startswith("one group per member")
            es = flipes.FlipES(model, popsize=n, sigma=args.sigma, seed=args.seed, mirrored=False,
                               groups=n if per_member else 1, hold_noise=not per_member,
                               noise_rank=args.mem_rank if variant == "low-rank" else None,
                               optimizer=lambda params: torch.optim.SGD(params, lr=1e-6))  # fmt: skip
            with es.population() as pop:
                if per_member:
                    for part in pop.split(1):
                        model(input_ids=ids[part.members.start : part.members.stop])
                else:
                    model(input_ids=ids)
            _, forward_peak = memory_bytes()
            es.tell(torch.randn(n, generator=torch.Generator().manual_seed(args.seed)))
            _, tell_peak = memory_bytes()
    params = num_params(model)
    return {"variant": variant, "n": n, "params": params, "params_gb": params * 4 / 1e9, "built_gb": built / 1e9,
            "forward_peak_gb": forward_peak / 1e9, "tell_peak_gb": tell_peak / 1e9,
            "seconds": time.perf_counter() - start}  # fmt: skip


def memory_table(args: Args) -> list[dict[str, Any]]:
    """Each variant in a fresh spawned process: the peak is a high-water mark per process."""
    rows = []
    for variant in MEMORY_VARIANTS:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            row = pool.submit(memory_child, args, variant).result()
        print(f"  memory {variant}: forward peak {row['forward_peak_gb']:.2f} GB, tell peak {row['tell_peak_gb']:.2f} GB")
        rows.append(row)
    return rows


def speed_markdown(speed: list[dict[str, Any]]) -> str:
    rows = [
        [str(r["n"]), row["what"], row["variant"], f"{row['ms']:.1f}", f"{row['tokens_per_s'] / 1e3:.1f} k",
         f"{row['vs_plain']:.0%}"]
        for r in speed
        for row in r["rows"]
    ]  # fmt: skip
    return markdown_table(["N", "what", "variant", "ms", "tokens/s", "vs plain"], rows)


def memory_markdown(rows: list[dict[str, Any]], args: Args) -> str:
    plain = next(r for r in rows if r["variant"] == "plain")
    table = [
        [r["variant"].replace("low-rank", f"low-rank r={args.mem_rank}"), f"{r['built_gb']:.2f}", f"{r['forward_peak_gb']:.2f}",
         f"{r['tell_peak_gb']:.2f}", f"{(r['tell_peak_gb'] - plain['forward_peak_gb']) / r['params_gb']:.1f}"]
        for r in rows
    ]  # fmt: skip
    return (
        f"Peak resident memory, {plain['params']:,} parameters ({plain['params_gb']:.2f} GB in float32), N = "
        f"{args.mem_popsize}, {args.prompt_len} tokens per member, one fresh process per row; the last column is the "
        "peak beyond plain inference's, in copies of the parameters:\n\n"
        + markdown_table(["variant", "model built GB", "forward peak GB", "tell peak GB", "extra / params"], table)
    )


def import_transformers() -> Any:
    """The ``transformers`` module; where it is not installed, the one line naming the extra that installs it (as the
    README promises), before any timing starts."""
    try:
        import transformers
    except ModuleNotFoundError as e:  # another missing module is transformers' own
        if (e.name or "").partition(".")[0] != "transformers":
            raise
        missing = "the models need transformers, which is not installed"
        raise UsageError("bench_hf_lm", missing, "pip install 'flipes[transformers]'") from None
    return transformers


def main(args: Args) -> None:
    args = prepare(args)  # a bad option refused before transformers' import (~2 s)
    transformers = import_transformers()
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "PYTHONPATH=. python " + shlex.join(["scripts/bench_hf_lm.py", *sys.argv[1:]])
    info = machine(torch.device("cpu"))
    info["platform"] = platform.platform()
    info["transformers"] = transformers.__version__
    print(f"machine: {info}\ncommand: {command}", flush=True)
    started = time.perf_counter()
    speed = []
    for n in args.popsizes:
        speed.append(bench(n, args))
        print(f"  speed N={n} done ({time.perf_counter() - started:.0f} s)", flush=True)
    memory = memory_table(args) if args.memory else []
    seconds = time.perf_counter() - started
    load_after = os.getloadavg()[0]
    md = [
        "# A Hugging Face LM's population against its plain inference (`scripts/bench_hf_lm.py`)\n",
        f"`{command}`\n",
        f"{args.arch}, {speed[0]['params']:,} parameters; {info['cpu']}, {info['cores']} cores, {info['threads']} torch "
        f"threads, torch {info['torch']}, transformers {info['transformers']}; load average "
        f"{info['load_avg_1min']:.2f} before, {load_after:.2f} after; {seconds:.0f} s in all. Variants interleaved: read "
        "the ratios.\n",
        speed_markdown(speed),
    ]
    if memory:
        md += ["", memory_markdown(memory, args)]
    markdown = "\n".join(md)
    print("\n" + markdown)
    payload = {"command": command, "machine": info, "args": asdict(args), "seconds": seconds,
               "load_avg_1min_after": load_after, "speed": speed, "memory": memory}  # fmt: skip
    write_outputs(args.out, "bench_hf_lm_quick" if args.quick else "bench_hf_lm", payload, markdown)


if __name__ == "__main__":
    run(main, Args, description=__doc__)
