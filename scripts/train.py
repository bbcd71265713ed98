"""Train with FlipES. Until the RL environments land, the job is the supervised toy: a Flipout MLP
student learns to imitate a random MLP teacher, fitness = -MSE on a shared minibatch.

    python scripts/train.py --popsize 256 --generations 500 --seed 0 --out runs/toy

Writes ``DIR/config.json``, ``DIR/metrics.jsonl`` (one JSON object per generation) and
``DIR/checkpoint.pt`` (FlipES state, written atomically).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import flipes


@dataclass
class Args:
    popsize: int = 256
    generations: int = 500
    sigma: float = 0.02
    lr: float = 0.005
    seed: int = 0
    groups: int = 1
    batch: int = 128  # examples per generation, shared by all members
    hidden: int = 32
    device: str = "cpu"
    out: str = "runs/toy"


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Args):
        parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    return Args(**vars(parser.parse_args()))


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers += [nn.Linear(a, b)] + ([nn.Tanh()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


def params_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_atomic(obj: object, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash leaves the previous checkpoint intact


def main(args: Args) -> float:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(args), indent=2))
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    sizes = [8, args.hidden, args.hidden, 2]
    teacher = mlp(sizes).to(device).requires_grad_(False)
    model = flipes.flipout(mlp(sizes)).to(device)
    es = flipes.FlipES(model, popsize=args.popsize, sigma=args.sigma, lr=args.lr, seed=args.seed, groups=args.groups)
    data = torch.Generator(device=device).manual_seed(args.seed + 1)
    x_test = torch.randn(4096, sizes[0], device=device, generator=data)

    def fitness(model: nn.Module, pop: flipes.Population) -> torch.Tensor:
        x = torch.randn(args.batch, sizes[0], device=device, generator=data)
        pred = model(x.expand(pop.size, *x.shape))  # members first: (N, batch, features)
        return -(pred - teacher(x)).square().mean((1, 2))

    start = time.perf_counter()
    with open(out / "metrics.jsonl", "w") as log:
        for gen in range(args.generations):
            stats = es.step(fitness)
            test_mse = (model(x_test) - teacher(x_test)).square().mean().item()
            row = {
                "generation": gen,
                "fitness_mean": stats["fitness_mean"],
                "fitness_max": stats["fitness_max"],
                "test_mse": test_mse,
                "seconds": time.perf_counter() - start,
                "timesteps": 0,
                "params_sha256": params_sha256(model),
            }
            log.write(json.dumps(row) + "\n")
            if gen % 25 == 0 or gen == args.generations - 1:
                print(
                    f"gen {gen:4d}  fitness mean {stats['fitness_mean']:9.5f}  max {stats['fitness_max']:9.5f}  "
                    f"test mse {test_mse:.5f}  {row['seconds']:6.1f}s",
                    flush=True,
                )
    save_atomic(es.state_dict(), out / "checkpoint.pt")
    base = (teacher(x_test) - teacher(x_test).mean(0)).square().mean().item()
    print(f"done: test mse {test_mse:.5f} (predicting the mean: {base:.5f}); run directory {out}")
    return test_mse


if __name__ == "__main__":
    main(parse_args())
