"""Fig. 1 of Wen et al. (ICLR 2018, arXiv:1803.04386), for the ES gradient: the variance of the
ES gradient estimator against the population size N, for shared, Flipout and independent
perturbations (and low-rank Flipout), on scikit-learn's digits.

    python scripts/repro_variance.py                     # FC 64-512-512-10 and a small ConvNet, N = 1 … 4096
    python scripts/repro_variance.py --tiny true         # seconds: a smoke test

The estimator (Theorem 2's setting): member n evaluates its own training example (drawn with
replacement) with its own perturbation, F_n = -cross-entropy, raw fitness, no mirroring,

    ĝ = 1/(Nσ) Σ_n F_n u_n.

- shared: one u ~ N(0, I) for all members (by hand);
- Flipout: ``flipes.FlipES(groups=1)``, u_n = ε ∘ r_n s_nᵀ (``--ranks``: ε = A Bᵀ/√r, low rank);
- independent: a fresh u_n per member. N × P normals do not fit at N = 4,096 (1.2 G for the FC
  net), so a pool of ``indep_blocks × max_n`` iid members is evaluated in chunks and every N's
  realizations are disjoint blocks of N pool members (all N from the same pool).

"Total variance" is the sum over parameters of the per-parameter variance across realizations
(noise and data both redrawn); it sums ~300 k coordinates, so a few realizations pin it down.
Writes ``repro_variance.{png,md,json}`` to ``--out`` (``repro_variance_tiny.*`` with ``--tiny``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field

import torch
from repro_common import (
    MemberWeights,
    check_at_least,
    chunk_members,
    data,
    inputs,
    loglog_slope,
    machine,
    make_es,
    make_net,
    markdown_table,
    member_loss,
    panels,
    setup,
    write_outputs,
)
from torch import Tensor, nn

import flipes
from flipes.cli import run
from flipes.errors import UsageError
from flipes.es.shaping import raw


@dataclass
class Args:
    nets: list[str] = field(default_factory=lambda: ["fc:512", "conv:0.5"])
    """Networks, kind:size: fc:HIDDEN (64-H-H-10 tanh MLP) or conv:SCALE (ConvNet, 0.5 = 16/32 filters)."""
    max_n: int = 4096
    """Largest population; N runs over the powers of two 1 … max_n."""
    repeats: int = 16
    """Fewest realizations (generations) per N for shared and Flipout."""
    min_members: int = 2048
    """Shared and Flipout: realizations × N >= this (more draws at small N)."""
    indep_blocks: int = 4
    """Independent: realizations at N = max_n (the pool holds indep_blocks × max_n members)."""
    ranks: list[int] = field(default_factory=lambda: [1, 4])
    """Low-rank Flipout ranks to add (empty: none)."""
    sigma: float = 0.05
    """Perturbation scale σ."""
    pretrain_steps: int = 100
    """Backprop Adam steps (batch 64) before measuring: the variance at a partly trained network."""
    chunk_mb: float = 256
    """Memory for one chunk of independent members' noise (float32)."""
    seed: int = 0
    """Seed of the pretraining, the noise and the examples drawn."""
    device: str = "cpu"
    """Torch device: cpu, cuda, cuda:N."""
    threads: int = 0
    """Torch CPU threads (0: torch's default)."""
    out: str = "scripts/results"
    """Directory of repro_variance.{png,md,json} (repro_variance_tiny.* with --tiny)."""
    tiny: bool = False
    """Smoke test: small nets, N up to 16, 3 realizations."""


def parse_net(spec: str) -> tuple[str, float]:
    """``"fc:512"`` -> ``("fc", 512.0)``.

    Raises:
        UsageError: not ``fc:HIDDEN`` or ``conv:SCALE``.
    """
    kind, _, size = spec.partition(":")
    try:
        value = float(size)
    except ValueError:
        value = float("nan")
    if kind not in ("fc", "conv") or not value > 0 or (kind == "fc" and not value.is_integer()):
        raise UsageError("--nets", f"{spec!r} is not fc:HIDDEN or conv:SCALE", "e.g. --nets fc:512 conv:0.5")
    return kind, value


def pretrained(kind: str, size: float, args: Args, dev: torch.device) -> nn.Module:
    torch.manual_seed(args.seed)
    net = make_net(kind, size).to(dev)
    x, y, _, _ = data()
    x, y = inputs(kind, x).to(dev), y.to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(args.seed)
    for _ in range(args.pretrain_steps):
        idx = torch.randint(0, len(x), (64,), generator=gen).to(dev)
        opt.zero_grad()
        member_loss(net(x[idx]), y[idx]).mean().backward()
        opt.step()
    return net


def draw(n: int, gen: torch.Generator, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    idx = torch.randint(0, len(x), (n,), generator=gen).to(x.device)
    return x[idx], y[idx]


class VarianceMeter:
    """Total variance of a stream of gradient estimates, without keeping them (thousands of
    realizations at small N): per-parameter sums in float64 for the estimate, and the spread of
    ‖g_a − g_b‖²/2 over disjoint consecutive pairs for its standard error."""

    def __init__(self) -> None:
        self.count, self.s1, self.s2 = 0, 0.0, 0.0
        self.held: Tensor | None = None
        self.pairs: list[float] = []

    def add(self, g: Tensor) -> None:
        g = g.double()
        self.count += 1
        self.s1 = self.s1 + g
        self.s2 = self.s2 + g.square().sum().item()
        if self.held is None:
            self.held = g
        else:
            self.pairs.append((g - self.held).square().sum().item() / 2)
            self.held = None

    def result(self) -> tuple[float, float, int]:
        """(total variance, its standard error, realizations)."""
        var = (self.s2 - self.s1.square().sum().item() / self.count) / (self.count - 1)
        se = torch.tensor(self.pairs).std().item() / len(self.pairs) ** 0.5 if len(self.pairs) > 1 else float("nan")
        return var, se, self.count


def realizations(n: int, args: Args) -> int:
    """Realizations at N: at least ``repeats``, and at least ``min_members`` members in all — at a
    trained network the per-example loss is heavy-tailed, so small N needs many draws."""
    return max(args.repeats, -(-args.min_members // n))


def flipout_variance(net: nn.Module, n: int, rank: int | None, args: Args, x: Tensor, y: Tensor) -> tuple[float, float, int]:
    import copy

    model = flipes.flipout(copy.deepcopy(net))
    es = make_es(
        model,
        rank,
        popsize=n,
        sigma=args.sigma,
        seed=args.seed + 1,
        groups=1,
        mirrored=False,
        shaping=raw,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
    )
    gen = torch.Generator().manual_seed(args.seed * 7919 + n)
    meter = VarianceMeter()
    with warnings.catch_warnings():
        if n == 1:  # one member's fitness is always "all equal"; with raw shaping its gradient F·ε/σ is the one measured
            warnings.simplefilter("ignore", flipes.EqualFitnessWarning)
        for _ in range(realizations(n, args)):  # each generation: fresh ε and signs; fresh examples too
            xb, yb = draw(n, gen, x, y)
            es.step(lambda m, pop, xb=xb, yb=yb: -member_loss(m(xb), yb))
            meter.add(-torch.cat([p.grad.flatten() for p in es.params]))
    return meter.result()


@torch.no_grad()
def shared_variance(net: nn.Module, n: int, args: Args, x: Tensor, y: Tensor) -> tuple[float, float, int]:
    import copy

    net = copy.deepcopy(net)
    params = list(net.parameters())
    mean = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(args.seed * 7919 + n + 1)
    meter = VarianceMeter()
    for _ in range(realizations(n, args)):
        xb, yb = draw(n, gen, x, y)
        u = [torch.randn(p.shape, generator=gen).to(p.device) for p in params]
        for p, m, e in zip(params, mean, u, strict=True):
            p.copy_(m + args.sigma * e)
        f = -member_loss(net(xb), yb)
        meter.add(torch.cat([e.flatten() for e in u]) * (f.mean() / args.sigma))
    return meter.result()


@torch.no_grad()
def independent_variance(net: nn.Module, ns: list[int], args: Args, x: Tensor, y: Tensor) -> dict[int, tuple[float, int]]:
    """Total variance of the mean of N iid members' v_n = F_n u_n / σ, for every N, from one pool:
    ``{N: (variance, realizations)}``. Chunks of C members; block sums of N ≤ C members come from
    pairwise sums inside a chunk, larger blocks from running sums across chunks."""
    members = MemberWeights(net)
    theta, p = members.mean(), members.num_params
    pool = args.indep_blocks * max(ns)
    c = chunk_members(p, args.chunk_mb, pool)
    if pool % c or any(n > c and n % c for n in ns):  # the block sums below assume whole chunks
        raise ValueError(f"independent pool of {pool} members in chunks of {c}: use powers of two for N and --indep-blocks")
    gen = torch.Generator(device=theta.device).manual_seed(args.seed * 7919 + 2)
    data_gen = torch.Generator().manual_seed(args.seed * 7919 + 3)
    sq = dict.fromkeys(ns, 0.0)  # Σ_blocks ‖block sum‖²
    running = {n: torch.zeros(p, dtype=torch.float64, device=theta.device) for n in ns if n > c}
    total = torch.zeros(p, dtype=torch.float64, device=theta.device)
    for start in range(0, pool, c):
        u = torch.randn(c, p, generator=gen, device=theta.device)
        xb, yb = draw(c, data_gen, x, y)
        f = -member_loss(members.forward(theta + args.sigma * u, xb), yb)
        v = u.mul_((f / args.sigma).unsqueeze(1))  # (C, P): each member's F_n u_n / σ
        level, width = v, 1
        while width <= min(c, max(ns)):  # level holds the sums of blocks of `width` members
            if width in sq:
                sq[width] += level.double().square().sum().item()
            if level.shape[0] == 1:
                break
            level, width = level.view(-1, 2, p).sum(1), width * 2
        chunk_sum = level[0].double() if level.shape[0] == 1 else level.double().sum(0)
        total += chunk_sum
        for n, acc in running.items():
            acc += chunk_sum
            if (start + c) % n == 0:
                sq[n] += acc.square().sum().item()
                acc.zero_()
    out = {}
    mean_sq = (total / pool).square().sum().item()
    for n in ns:
        blocks = pool // n
        # unbiased: Σ_b ‖m_b − m̄‖² / (B − 1), with m_b = block sum / N and m̄ the pool mean
        out[n] = ((sq[n] / n**2 - blocks * mean_sq) / (blocks - 1), blocks)
    return out


def main(args: Args) -> dict:
    if args.tiny:
        args.nets = ["fc:32", "conv:0.25"]
        args.max_n, args.repeats, args.min_members, args.indep_blocks, args.pretrain_steps = 16, 3, 8, 2, 5
        args.ranks = args.ranks[:1]
    least = {"max_n": 1, "repeats": 2, "min_members": 0, "indep_blocks": 2, "pretrain_steps": 0, "chunk_mb": 1e-3}
    check_at_least(args, least | ({"ranks": 1} if args.ranks else {}))
    nets = [parse_net(spec) for spec in args.nets]  # all checked before the first is measured
    dev, _ = setup(args.device, args.threads)
    ranks = list(args.ranks)
    ns = [2**k for k in range(args.max_n.bit_length()) if 2**k <= args.max_n]
    x_all, y_all, _, _ = data()
    results: dict = {"args": asdict(args), "machine": machine(dev), "ns": ns, "nets": {}}
    started = time.perf_counter()
    for spec, (kind, size) in zip(args.nets, nets, strict=True):
        net = pretrained(kind, size, args, dev)
        x, y = inputs(kind, x_all).to(dev), y_all.to(dev)
        with torch.no_grad():
            train_loss = member_loss(net(x), y).mean().item()
        p = sum(q.numel() for q in net.parameters())
        print(f"{spec}: {p:,} parameters, train loss {train_loss:.3f} after {args.pretrain_steps} backprop steps", flush=True)
        measured: dict[str, list[tuple[float, float, int]]] = {}
        t = time.perf_counter()
        measured["shared"] = [shared_variance(net, n, args, x, y) for n in ns]
        measured["flipout"] = [flipout_variance(net, n, None, args, x, y) for n in ns]
        for r in ranks:
            measured[f"low-rank r={r}"] = [flipout_variance(net, n, r, args, x, y) for n in ns]
        print(f"  shared + Flipout: {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        indep = independent_variance(net, ns, args, x, y)
        measured["independent"] = [(indep[n][0], float("nan"), indep[n][1]) for n in ns]
        print(f"  independent (pool of {args.indep_blocks * args.max_n:,}): {time.perf_counter() - t:.1f} s", flush=True)
        curves = {k: [v for v, _, _ in m] for k, m in measured.items()}
        big = [i for i, n in enumerate(ns) if n >= 64] or list(range(len(ns)))
        results["nets"][spec] = {
            "params": p,
            "train_loss": train_loss,
            "variance": curves,
            "stderr": {k: [se for _, se, _ in m] for k, m in measured.items()},
            "realizations": {k: [c for _, _, c in m] for k, m in measured.items()},
            "slope": {k: loglog_slope(ns, v) for k, v in curves.items()},
            "slope_n_ge_64": {k: loglog_slope([ns[i] for i in big], [v[i] for i in big]) for k, v in curves.items()},
            "ratio_to_independent": {
                k: [a / b for a, b in zip(v, curves["independent"], strict=True)] for k, v in curves.items()
            },
        }
    results["seconds"] = time.perf_counter() - started

    # the tables
    md = [
        f"Total variance of the ES gradient (raw fitness, σ = {args.sigma}, one example per member), "
        f"realizations per N: max({args.repeats}, {args.min_members}/N) for shared and Flipout; independent: disjoint "
        f"blocks of one pool of {args.indep_blocks * args.max_n:,} iid members ({args.indep_blocks} at N = {args.max_n}). "
        "Ratios to independent at the same N.\n"
    ]
    for spec, r in results["nets"].items():
        kinds = list(r["variance"])
        header = ["N", *kinds, *[f"{k} / indep." for k in kinds if k != "independent"]]
        rows = []
        for i, n in enumerate(ns):
            cells = [f"{r['variance'][k][i]:.4g}" for k in kinds]
            cells += [f"{r['ratio_to_independent'][k][i]:.2f}" for k in kinds if k != "independent"]
            rows.append([str(n), *cells])
        rows.append(["slope (all N)", *[f"{r['slope'][k]:.3f}" for k in kinds], *["" for k in kinds if k != "independent"]])
        rows.append(
            ["slope (N ≥ 64)", *[f"{r['slope_n_ge_64'][k]:.3f}" for k in kinds], *["" for k in kinds if k != "independent"]]
        )
        md.append(f"\n**{spec}** ({r['params']:,} parameters, train loss {r['train_loss']:.3f})\n")
        md.append(markdown_table(header, rows))
        big = [i for i, n in enumerate(ns) if n >= 64]
        if big:
            worst = max(r["ratio_to_independent"]["flipout"][i] for i in big)
            md.append(
                f"\nFlipout / independent at N ≥ 64: at most {worst:.2f}×; Flipout slope {r['slope']['flipout']:.3f}; "
                f"shared slope at N ≥ 64 {r['slope_n_ge_64']['shared']:.3f}."
            )
    markdown = "\n".join(md)
    print("\n" + markdown)

    fig, axes = panels(len(results["nets"]))
    styles = {"shared": ("tab:red", "-"), "flipout": ("tab:blue", "-"), "independent": ("black", "--")}
    for ax, (spec, r) in zip(axes[0], results["nets"].items(), strict=True):
        extra = ["tab:orange", "tab:purple", "tab:green", "tab:brown"]  # low-rank curves
        for k, v in r["variance"].items():
            color, ls = styles.get(k) or (extra.pop(0) if extra else None, ":")
            se = [0.0 if e != e else e for e in r["stderr"][k]]  # NaN (independent): no bar
            ax.errorbar(ns, v, yerr=se, marker="o", ms=3, capsize=2, color=color, ls=ls, label=f"{k} (slope {r['slope'][k]:.2f})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{spec} ({r['params']:,} params)")
        ax.set_xlabel("population size N")
        ax.set_ylabel("total variance of ĝ")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("ES gradient variance vs N (cf. Wen et al. 2018, Fig. 1)")
    write_outputs(args.out, "repro_variance_tiny" if args.tiny else "repro_variance", results, markdown, fig)
    return results


if __name__ == "__main__":
    run(main, Args, description=__doc__)
