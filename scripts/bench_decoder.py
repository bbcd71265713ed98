"""A transposed-conv decoder in an ES population: its Flipout form against the dense per-member noise it had before.

Flipout: Wen, Vicol, Ba, Grosse & Tran, "Flipout: Efficient Pseudo-Independent Weight Perturbations on Mini-Batches",
ICLR 2018 (arXiv:1803.04386). The decoder (DCGAN-like, one code per member, ``(N, --channels, 4, 4)`` to
``(N, 3, 32, 32)``) is three ``nn.ConvTranspose2d(·, ·, 4, stride=2, padding=1)`` with ReLUs between. For each N:

    plain            the decoder outside a population: one set of weights for all N codes
    flipout          ``flipes.flipout(decoder)``: FlipoutConvTranspose2d, one forward inside ``es.population()``
                     (noise sampled once, on the first entry, as in a rollout)
    dense            the same decoder whose layers are a ConvTranspose2d subclass with a forward of its own (no Flipout
                     form): dense per-member noise, each member's forward through ``torch.func.vmap``, which is what
                     ``flipes.flipout`` gave every ConvTranspose before it had a Flipout form
    ... generation   one whole generation: entering the population (sampling its noise), the forward, ``tell``

Variants are interleaved round-robin (``benchmark.measure``); the table reports the median ms per call and the ratio
dense / flipout. Before timing: outside a population both converted decoders are the plain decoder, bit for bit.

    PYTHONPATH=. python scripts/bench_decoder.py [--popsizes 64 256 1024] [--threads 2]
    PYTHONPATH=. python scripts/bench_decoder.py --quick true      # smoke test, a few seconds
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from benchmark import measure
from repro_common import machine, markdown_table, write_outputs
from torch import Tensor, nn

import flipes
from flipes.cli import option_name, run
from flipes.config import check_threads
from flipes.errors import UsageError


@dataclass
class Args:
    popsizes: list[int] = field(default_factory=lambda: [64, 256, 1024])
    """Population sizes N (one code per member; even: mirrored pairs)."""
    channels: int = 64
    """Channels of the code and the first layer; the next layer has half as many, then 3 (an RGB image)."""
    sigma: float = 0.02
    """Perturbation scale."""
    rounds: int = 7
    """Round-robin rounds; a cheap variant runs one timed block per round."""
    warmup_rounds: int = 1
    """Untimed round-robin rounds before the timed ones."""
    min_rounds: int = 3
    """Fewest rounds (samples of the median) an expensive variant gets."""
    block_seconds: float = 0.05
    """Target duration of one timed block of calls (calls per block are calibrated)."""
    min_seconds: float = 0.3
    """Target total timed duration per variant, capped by --rounds."""
    threads: int = 0
    """Torch CPU threads (0: torch's default)."""
    seed: int = 0
    """Seed of the weights, codes and noise."""
    out: str = "scripts/results"
    """Directory of bench_decoder.{json,md} (bench_decoder_quick.* with --quick)."""
    quick: bool = False
    """Smoke test: 8 channels, N = 8, tiny repetitions, every variant."""


def prepare(args: Args) -> Args:
    """``args`` with ``--quick``'s sizes applied; UsageError for options that cannot be run."""
    if not args.popsizes or any(n < 2 or n % 2 for n in args.popsizes):
        raise UsageError("--popsizes", f"must be even numbers of at least 2 (mirrored pairs), got {args.popsizes}")
    for name, low in (("channels", 2), ("rounds", 1), ("min_rounds", 1), ("warmup_rounds", 0), ("threads", 0)):
        if getattr(args, name) < low:
            raise UsageError(option_name(name), f"must be at least {low}, got {getattr(args, name)}")
    check_threads("--threads", args.threads)
    if not args.sigma > 0:
        raise UsageError("--sigma", f"must be a number > 0, got {args.sigma}")
    if args.quick:
        args = dataclasses.replace(
            args, popsizes=[8], channels=8, rounds=2, warmup_rounds=0, min_rounds=1, block_seconds=0.002, min_seconds=0.0
        )
    return args


class OwnForwardConvTranspose2d(nn.ConvTranspose2d):
    """A ConvTranspose2d with a forward of its own: flipes cannot know what it computes, so it gets dense noise."""

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        return super().forward(input, output_size)


def decoder(channels: int, layer: type[nn.ConvTranspose2d] = nn.ConvTranspose2d) -> nn.Sequential:
    """``(N, channels, 4, 4) -> (N, 3, 32, 32)``."""
    widths = [channels, channels, channels // 2, 3]
    layers: list[nn.Module] = []
    for cin, cout in itertools.pairwise(widths):
        layers += [layer(cin, cout, 4, stride=2, padding=1), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def generation(es: flipes.FlipES, model: nn.Module, z: Tensor) -> Callable[[], None]:
    """One generation: the population entered (its noise sampled), the forward, ``tell`` with a made-up fitness."""

    def step() -> None:
        with es.population():
            out = model(z)
        es.tell(-out.square().flatten(1).mean(1))

    return step


def bench(n: int, args: Args) -> dict:
    torch.manual_seed(args.seed)
    plain = decoder(args.channels)
    dense_plain = decoder(args.channels, OwnForwardConvTranspose2d)
    dense_plain.load_state_dict(plain.state_dict())
    z = torch.randn(n, args.channels, 4, 4)
    models = {"flipout": flipes.flipout(copy.deepcopy(plain)), "dense": flipes.flipout(dense_plain)}
    with torch.no_grad():
        expected = plain(z)
        for name, model in models.items():  # the mean network outside a population
            assert torch.equal(model(z), expected), name
    assert isinstance(models["flipout"][0], flipes.nn.FlipoutConvTranspose2d)
    assert isinstance(models["dense"][0], flipes.nn.PerMember)

    def make_es(model: nn.Module) -> flipes.FlipES:
        return flipes.FlipES(model, popsize=n, sigma=args.sigma, seed=args.seed, optimizer=lambda p: torch.optim.SGD(p, lr=0.0))

    es = {name: make_es(model) for name, model in models.items()}
    variants: dict[str, Callable[[], object]] = {"plain": lambda: plain(z)}
    variants.update({name: lambda model=model: model(z) for name, model in models.items()})
    with torch.no_grad(), es["flipout"].population(), es["dense"].population():  # each holds its own model's noise
        forwards = measure(variants, args, lambda: None)
    with torch.no_grad():
        gens = measure({f"{name} generation": generation(es[name], models[name], z) for name in models}, args, lambda: None)
    times = {**forwards, **gens}
    return {"popsize": n, "params": sum(p.numel() for p in plain.parameters()), **{k: v["ms"] for k, v in times.items()}}


def main(args: Args) -> None:
    args = prepare(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "PYTHONPATH=. python " + shlex.join(["scripts/bench_decoder.py", *sys.argv[1:]])
    rows = [bench(n, args) for n in args.popsizes]
    header = ["N", "plain ms", "flipout ms", "dense ms", "dense / flipout", "flipout gen ms", "dense gen ms", "dense / flipout"]
    table = [
        [
            str(r["popsize"]),
            f"{r['plain']:.2f}",
            f"{r['flipout']:.2f}",
            f"{r['dense']:.2f}",
            f"{r['dense'] / r['flipout']:.1f}x",
            f"{r['flipout generation']:.2f}",
            f"{r['dense generation']:.2f}",
            f"{r['dense generation'] / r['flipout generation']:.1f}x",
        ]
        for r in rows
    ]
    info = machine(torch.device("cpu"))
    markdown = (
        f"# Transposed-conv decoder: Flipout vs dense per-member noise\n\n`{command}`\n\n"
        f"{info['cpu']}, {info['threads']} threads, torch {info['torch']}; {rows[0]['params']:,} parameters; "
        "median ms per call\n\n" + markdown_table(header, table)
    )
    print(markdown)
    name = "bench_decoder_quick" if args.quick else "bench_decoder"
    write_outputs(args.out, name, {"command": command, "machine": info, "args": dataclasses.asdict(args), "rows": rows}, markdown)


if __name__ == "__main__":
    run(main, Args, description=__doc__)
