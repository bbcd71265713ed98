"""Fig. 2b–d of Wen et al. (ICLR 2018, arXiv:1803.04386), on scikit-learn's digits: FlipES learns
as well as ES with fully independent perturbations at the same samples per update, beside backprop.

    python scripts/repro_learning.py                      # popsize 1,600 and 5,000, 5 seeds
    python scripts/repro_learning.py --tiny true          # seconds: a smoke test

All methods train the same 64-64-10 tanh MLP (scripts/digits.py) from the same initial weights per
seed, on the same minibatch per generation (``batch`` training examples shared by all members, a
pure function of seed and generation), with Adam:

- FlipES: ``flipes.FlipES(groups=1)`` — one ε, per-member signs;
- independent ES ("IdealES"): classic ES, every member's own Gaussian perturbation materialized
  (θ̄ ± σε_k for antithetic pairs with ``--mirrored true``), all members run through
  ``torch.func.vmap``, the same shaping, estimator and Adam. (``flipes.FlipES(groups=popsize)``
  computes the same thing but samples group by group, ~7× slower at these sizes.)
- backprop: one Adam step per generation on the same minibatch.

Both ES use centered ranks and (by default) mirrored sampling. Writes
``repro_learning.{png,md,json}`` to ``--out`` (``repro_learning_tiny.*`` with ``--tiny``).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from repro_common import (
    check_at_least,
    check_even_popsizes,
    data,
    fc_net,
    machine,
    make_es,
    markdown_table,
    member_loss,
    panels,
    setup,
    write_outputs,
)
from torch import Tensor, nn
from torch.func import functional_call, vmap

import flipes
from flipes.cli import run
from flipes.es.optimizer import default_optimizer
from flipes.es.shaping import centered_ranks


@dataclass
class Args:
    popsizes: list[int] = field(default_factory=lambda: [1600, 5000])
    """Samples per update (population sizes)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """Seeds of every method: the initial weights, the minibatches and the noise."""
    generations: int = 200
    """Updates of every method."""
    batch: int = 32
    """Training examples per generation, shared by all members."""
    hidden: int = 64
    """Hidden units of the 64-hidden-10 tanh MLP."""
    sigma: float = 0.05
    """Perturbation scale σ of both ES."""
    lr: float = 0.03
    """Adam learning rate of both ES."""
    backprop_lr: float = 0.03
    """Adam learning rate of backprop."""
    cosine: bool = True
    """Cosine decay of every learning rate to 0 over the run (a stable final accuracy to compare)."""
    mirrored: bool = True
    """Antithetic pairs in both ES."""
    rank: int | None = None
    """Also train low-rank FlipES (ε = A Bᵀ/√r) of this rank (none: not)."""
    eval_every: int = 10
    """Generations between test-accuracy evaluations (and at the last)."""
    device: str = "cpu"
    """Torch device: cpu, cuda, cuda:N."""
    threads: int = 0
    """Torch CPU threads (0: torch's default)."""
    out: str = "scripts/results"
    """Directory of repro_learning.{png,md,json} (repro_learning_tiny.* with --tiny)."""
    tiny: bool = False
    """Smoke test: popsize 64, one seed, 4 generations."""


def minibatch(args: Args, seed: int, generation: int, dev: torch.device) -> tuple[Tensor, Tensor]:
    x, y, _, _ = data()
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(1_000_003 * seed + generation))[: args.batch]
    return x[idx].to(dev), y[idx].to(dev)


@torch.no_grad()
def accuracy(model: nn.Module, dev: torch.device) -> float:
    _, _, x, y = data()
    return (model(x.to(dev)).argmax(1) == y.to(dev)).float().mean().item() * 100


def initial(args: Args, seed: int, dev: torch.device) -> nn.Module:
    torch.manual_seed(seed)
    return fc_net(args.hidden, depth=1).to(dev)


def schedule(opt: torch.optim.Optimizer, args: Args) -> torch.optim.lr_scheduler.LRScheduler:
    if args.cosine:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.generations)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def train_es(args: Args, seed: int, popsize: int, groups: int, rank: int | None, dev: torch.device) -> dict:
    model = flipes.flipout(initial(args, seed, dev))
    es = make_es(model, rank, popsize=popsize, sigma=args.sigma, lr=args.lr, seed=seed, groups=groups, mirrored=args.mirrored)
    sched = schedule(es.optimizer, args)

    def fitness(m: nn.Module, pop: flipes.Population) -> Tensor:
        xb, yb = minibatch(args, seed, pop.generation, dev)
        logits = m(xb.expand(pop.size, *xb.shape))  # (N, batch, 10)
        return -member_loss(logits.flatten(0, 1), yb.repeat(pop.size)).view(pop.size, -1).mean(1)

    curve, start = [], time.perf_counter()
    for gen in range(args.generations):
        es.step(fitness)
        sched.step()
        if (gen + 1) % args.eval_every == 0 or gen + 1 == args.generations:
            curve.append((gen + 1, accuracy(model, dev)))
    return {"curve": curve, "final": curve[-1][1], "seconds": time.perf_counter() - start}


def train_independent(args: Args, seed: int, popsize: int, dev: torch.device) -> dict:
    """ES with an independent Gaussian perturbation per member (per antithetic pair if mirrored)."""
    model = initial(args, seed, dev)
    names = [k for k, _ in model.named_parameters()]
    params = list(model.parameters())
    sizes = [q.numel() for q in params]
    opt = default_optimizer(params, args.lr)  # FlipES's own default: Adam
    sched = schedule(opt, args)
    gen = torch.Generator(device=dev).manual_seed(seed)
    distinct = popsize // 2 if args.mirrored else popsize

    def members_logits(flat: Tensor, xb: Tensor) -> Tensor:
        def one(row: Tensor) -> Tensor:
            ps = {k: v.view_as(q) for k, v, q in zip(names, row.split(sizes), params, strict=True)}
            return functional_call(model, ps, (xb,))

        return vmap(one)(flat)  # (N, batch, 10)

    curve, start = [], time.perf_counter()
    for gen_i in range(args.generations):
        with torch.no_grad():
            theta = torch.cat([q.detach().flatten() for q in params])
            eps = torch.randn(distinct, theta.numel(), generator=gen, device=dev)
            u = torch.stack((eps, -eps), 1).flatten(0, 1) if args.mirrored else eps  # member 2k+1 = -u_2k
            xb, yb = minibatch(args, seed, gen_i, dev)
            logits = members_logits(theta + args.sigma * u, xb)
            fitness = -member_loss(logits.flatten(0, 1), yb.repeat(popsize)).view(popsize, -1).mean(1)
            g = centered_ranks(fitness.cpu().double()).to(dev, eps.dtype) @ u / (popsize * args.sigma)  # ĝ
        for q, gq in zip(params, (-g).split(sizes), strict=True):
            q.grad = gq.view_as(q).clone()
        opt.step()
        sched.step()
        if (gen_i + 1) % args.eval_every == 0 or gen_i + 1 == args.generations:
            curve.append((gen_i + 1, accuracy(model, dev)))
    return {"curve": curve, "final": curve[-1][1], "seconds": time.perf_counter() - start}


def train_backprop(args: Args, seed: int, dev: torch.device) -> dict:
    model = initial(args, seed, dev)
    opt = torch.optim.Adam(model.parameters(), lr=args.backprop_lr)
    sched = schedule(opt, args)
    curve, start = [], time.perf_counter()
    for gen in range(args.generations):
        xb, yb = minibatch(args, seed, gen, dev)
        opt.zero_grad()
        member_loss(model(xb), yb).mean().backward()
        opt.step()
        sched.step()
        if (gen + 1) % args.eval_every == 0 or gen + 1 == args.generations:
            curve.append((gen + 1, accuracy(model, dev)))
    return {"curve": curve, "final": curve[-1][1], "seconds": time.perf_counter() - start}


def main(args: Args) -> dict:
    if args.tiny:
        args.popsizes, args.seeds, args.generations, args.eval_every = [64], [0], 4, 2
    least = {"popsizes": 2, "seeds": 0, "generations": 1, "batch": 1, "hidden": 1, "eval_every": 1}
    check_at_least(args, least | ({"rank": 1} if args.rank is not None else {}))
    if args.mirrored:
        check_even_popsizes("--popsizes", args.popsizes)
    dev, _ = setup(args.device, args.threads)
    methods: dict[str, tuple[int | None, bool]] = {"FlipES": (None, False), "independent ES": (None, True)}
    if args.rank is not None:
        methods[f"low-rank FlipES r={args.rank}"] = (args.rank, False)
    runs: dict = {}
    started = time.perf_counter()
    for n in args.popsizes:
        for name, (rank, independent) in methods.items():
            runs[f"{name} N={n}"] = per_seed = {}
            for seed in args.seeds:
                per_seed[seed] = train_independent(args, seed, n, dev) if independent else train_es(args, seed, n, 1, rank, dev)
                r = per_seed[seed]
                print(f"{name:>16} N={n:5d} seed {seed}: test accuracy {r['final']:.2f}%  ({r['seconds']:.1f} s)", flush=True)
    runs["backprop"] = {seed: train_backprop(args, seed, dev) for seed in args.seeds}
    for seed, r in runs["backprop"].items():
        print(f"{'backprop':>16}         seed {seed}: test accuracy {r['final']:.2f}%", flush=True)

    summary = {}
    for key, per_seed in runs.items():
        finals = [r["final"] for r in per_seed.values()]
        summary[key] = {
            "mean": statistics.fmean(finals),
            "std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "finals": finals,
            "seconds_per_generation": statistics.fmean(r["seconds"] for r in per_seed.values()) / args.generations,
        }
    gaps = {n: summary[f"FlipES N={n}"]["mean"] - summary[f"independent ES N={n}"]["mean"] for n in args.popsizes}
    results = {
        "args": asdict(args),
        "machine": machine(dev),
        "runs": runs,
        "summary": summary,
        "flipes_minus_independent": gaps,
        "seconds": time.perf_counter() - started,
    }

    rows = [
        [
            k,
            f"{s['mean']:.2f}",
            f"{s['std']:.2f}",
            " / ".join(f"{f:.2f}" for f in s["finals"]),
            f"{s['seconds_per_generation']:.3f}",
        ]
        for k, s in summary.items()
    ]
    md = [
        f"Digits, 64-{args.hidden}-10 tanh MLP, {args.generations} generations × {args.batch} examples, σ = {args.sigma}, "
        f"Adam lr {args.lr} (backprop {args.backprop_lr}){', cosine decay' if args.cosine else ''}, "
        f"mirrored={args.mirrored}, seeds {args.seeds}. "
        f"Final test accuracy (%, 360 test images):\n",
        markdown_table(["method", "mean", "std", "per seed", "s / generation"], rows),
        "",
    ]
    md += [f"FlipES − independent ES at N = {n}: {g:+.2f} percentage points (mean over seeds)." for n, g in gaps.items()]
    markdown = "\n".join(md)
    print("\n" + markdown)

    fig, axes = panels(len(args.popsizes))
    colors = {"FlipES": "tab:blue", "independent ES": "black", "backprop": "tab:green"}
    for ax, n in zip(axes[0], args.popsizes, strict=True):
        for key in [*(f"{m} N={n}" for m in methods), "backprop"]:
            per_seed = runs[key]
            gens = [g for g, _ in next(iter(per_seed.values()))["curve"]]
            accs = torch.tensor([[a for _, a in r["curve"]] for r in per_seed.values()])
            name = key.rsplit(" N=", 1)[0]
            color = colors.get(name, "tab:orange")
            ax.plot(
                gens,
                accs.mean(0),
                color=color,
                ls="--" if name == "independent ES" else "-",
                label=f"{name} ({summary[key]['mean']:.1f}%)",
            )
            ax.fill_between(gens, accs.min(0).values, accs.max(0).values, color=color, alpha=0.15)
        ax.set_title(f"{n:,} samples per update")
        ax.set_xlabel("generation (update)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(max(0.0, min(80.0, min(s["mean"] for s in summary.values()) - 5)), 100)  # the end of training matters
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Digits test accuracy, mean and min–max over {len(args.seeds)} seeds (cf. Wen et al. 2018, Fig. 2b–d)")
    write_outputs(args.out, "repro_learning_tiny" if args.tiny else "repro_learning", results, markdown, fig)
    return results


if __name__ == "__main__":
    run(main, Args, description=__doc__)
