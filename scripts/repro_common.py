"""What the reproduction scripts (scripts/repro_*.py) share: the networks, per-member weights,
timing and output files.

Wen, Vicol, Ba, Grosse & Tran, "Flipout: Efficient Pseudo-Independent Weight Perturbations on
Mini-Batches", ICLR 2018 (arXiv:1803.04386).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from digits import data  # noqa: F401  (re-exported: the same 80/20 split as scripts/digits.py)
from torch import Tensor, nn
from torch.func import functional_call, vmap

import flipes
from flipes.cli import option_name
from flipes.config import check_device, check_threads
from flipes.errors import UsageError


def fc_net(hidden: int, depth: int = 2) -> nn.Sequential:
    """64-h-…-h-10 tanh MLP for 8×8 digits (``depth`` hidden layers)."""
    widths = [64, *[hidden] * depth]
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(widths):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], 10))


def conv_net(scale: float = 0.5) -> nn.Sequential:
    """conv 3×3 (1→32s) – ReLU – conv 3×3 (32s→64s) – ReLU – avg-pool 2 – linear → 10, for
    ``(members, 1, 8, 8)`` inputs; ``scale`` multiplies the filter counts (0.5: 16 and 32 filters)."""
    c1, c2 = max(1, round(32 * scale)), max(1, round(64 * scale))
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 16, 10),
    )


def make_net(kind: str, size: float) -> nn.Sequential:
    """``("fc", hidden)`` or ``("conv", scale)``."""
    if kind == "fc":
        return fc_net(int(size))
    if kind == "conv":
        return conv_net(float(size))
    raise ValueError(f"unknown network {kind!r}: fc or conv")


def inputs(kind: str, x: Tensor) -> Tensor:
    """Digits rows ``(M, 64)`` shaped for the network: conv nets take ``(M, 1, 8, 8)``."""
    return x.view(-1, 1, 8, 8) if kind == "conv" else x


def make_es(model: nn.Module, rank: int | None = None, **kwargs: Any) -> flipes.FlipES:
    """``flipes.FlipES`` with noise rank ``rank`` (None: full rank)."""
    return flipes.FlipES(model, noise_rank=rank, **kwargs)


class MemberWeights:
    """Classic ES: every member's own materialized parameters ``θ̄ + σε_n`` as one flat row.

    ``forward(flat, x)`` runs member ``n`` (row ``n`` of ``flat`` ``(C, P)``) on ``x[n]``
    (one example each) through ``torch.func.vmap`` — batched GEMMs / grouped convolutions.
    """

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.names = [k for k, _ in net.named_parameters()]
        self.shapes = [p.shape for _, p in net.named_parameters()]
        self.sizes = [p.numel() for _, p in net.named_parameters()]
        self.per_member = vmap(lambda p, xi: functional_call(self.net, p, (xi.unsqueeze(0),)).squeeze(0))

    @property
    def num_params(self) -> int:
        return sum(self.sizes)

    def mean(self) -> Tensor:
        return torch.cat([p.detach().flatten() for p in self.net.parameters()])

    def forward(self, flat: Tensor, x: Tensor) -> Tensor:
        parts = flat.split(self.sizes, dim=1)
        params = {k: v.view(flat.shape[0], *s) for k, v, s in zip(self.names, parts, self.shapes, strict=True)}
        return self.per_member(params, x)

    def add_to_grad(self, flat: Tensor) -> None:
        """Write ``flat`` (P,) into the parameters' ``.grad``."""
        for p, g in zip(self.net.parameters(), flat.split(self.sizes), strict=True):
            p.grad = g.view_as(p).clone()


def member_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-row cross-entropy (the fitness is its negation)."""
    return F.cross_entropy(logits, y, reduction="none")


def chunk_members(num_params: int, chunk_mb: float, cap: int) -> int:
    """Members per chunk: the largest power of two whose ``(C, P)`` float32 block fits ``chunk_mb``."""
    c = max(1, int(chunk_mb * 2**20 / (4 * num_params)))
    return max(1, min(cap, 2 ** int(math.log2(c))))


def check_at_least(args: Any, least: dict[str, float]) -> None:
    """A UsageError (one line) for the first option of ``least`` whose value, or any item of a list value, is below
    its least value or NaN, or is an empty list; so a bad size stops the run before anything is measured."""
    for name, low in least.items():
        value = getattr(args, name)
        items = value if isinstance(value, list) else [value]
        if not items:
            raise UsageError(option_name(name), "is empty", "give at least one value")
        if any(not v >= low for v in items):  # NaN too: it compares below nothing
            raise UsageError(
                option_name(name),
                f"must be at least {low:g}, got {value}",
                f"give {'values' if isinstance(value, list) else 'a value'} >= {low:g}",
            )


def check_even_popsizes(option: str, popsizes: list[int]) -> None:
    """A UsageError unless every population size is even: both ES pair their members (mirrored sampling)."""
    odd = [n for n in popsizes if n % 2]
    if odd:
        raise UsageError(option, f"mirrored pairs need even population sizes, got {odd}", "use an even size, e.g. 64")


def require_matplotlib() -> None:
    """Refuse a machine without matplotlib before a script that draws its figure once its run ends measures anything."""
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError(
            "matplotlib",
            "is not installed; this script draws its figure with it once the run ends",
            "pip install 'flipes[examples]'",
        )


def setup(device: str, threads: int) -> tuple[torch.device, Callable[[], None]]:
    """The device and its synchronize (a no-op on CPU); ``threads > 0`` sets torch's CPU threads. Refuses a machine
    without matplotlib before anything runs."""
    check_device(device)  # a UsageError naming --device for one torch does not know or this machine lacks
    require_matplotlib()
    check_threads("--threads", threads)
    if threads > 0:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    return dev, sync


def cpu_name() -> str:
    """The CPU's model name, which a benchmark's numbers belong to: Linux's ``platform.processor()`` is empty and
    ``platform.machine()`` only says x86_64, so /proc/cpuinfo's first "model name" where there is one."""
    cpu = platform.processor()
    if not cpu and Path("/proc/cpuinfo").exists():
        names = [
            ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")
        ]
        cpu = names[0] if names else ""
    return cpu or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "load_avg_1min": os.getloadavg()[0],
    }


def median_time(fn: Callable[[], object], sync: Callable[[], None], repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loglog_slope(ns: list[int], vs: list[float]) -> float:
    """Least-squares slope of log v against log n."""
    lx = [math.log(n) for n in ns]
    ly = [math.log(v) for v in vs]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def write_outputs(out: str | Path, name: str, payload: dict[str, Any], markdown: str, fig: Any = None) -> list[Path]:
    """``OUT/name.json`` (raw numbers), ``OUT/name.md`` (the tables) and, given a figure,
    ``OUT/name.png``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.json", out / f"{name}.md"]
    paths[0].write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    paths[1].write_text(markdown.rstrip() + "\n", encoding="utf-8")
    if fig is not None:
        paths.append(out / f"{name}.png")
        fig.savefig(paths[-1], dpi=120)
    for p in paths:
        print(f"wrote {p}")
    return paths


def panels(count: int) -> tuple[Any, Any]:
    """A figure with ``count`` side-by-side axes (a row of ``axes[0]``)."""
    return pyplot().subplots(1, count, figsize=(5.5 * count, 4.2), constrained_layout=True, squeeze=False)


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    return plt
