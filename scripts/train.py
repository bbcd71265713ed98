"""Train a policy (or any model, with --fitness) with FlipES.

    python scripts/train.py --env flipes/CartPole-v1 --popsize 64 --generations 100 --seed 0 --out runs/cartpole
    python scripts/train.py --config my_run.toml --seed 3          # flags override the file
    python scripts/train.py --resume runs/cartpole --generations 200
    PYTHONPATH=scripts python scripts/train.py --env none --fitness digits:fitness --model digits:make_model
    mpiexec -n 4 python scripts/train.py --env HalfCheetah-v5 --groups 4 --comm seeds   # same result as -n 1

With an env, the population of ``popsize`` members runs ``episodes`` episodes each in ONE vector env
of ``popsize × episodes`` copies, one Flipout pass per step for all of them; every ``eval_every``
generations the center (mean) policy is evaluated on ``eval_episodes`` episodes, and training stops
once that mean reaches ``target`` (the env's "solved" return by default). ``--fitness MOD:FN`` plugs
in ``FN(model, pop) -> Tensor[pop.size]`` instead of the rollout (``--model MOD:FN`` builds the
model from the env, or from nothing with ``--env none``; an ``evaluate(model) -> float`` beside the
fitness function gives ``eval_return``).

Under ``mpiexec -n K`` every process evaluates its block of the ``groups`` (``groups >= K``) and the
result does not depend on K; rank 0 alone writes the run directory. It holds ``config.json``
(resolved options), ``metrics.jsonl`` (one JSON object per generation), ``checkpoint.pt`` (latest,
written atomically every ``checkpoint_every`` generations and on Ctrl-C/SIGTERM; the one it replaced
is ``previous.pt``), ``best.pt`` (best eval_return) and ``curves.png``.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch

import flipes
from flipes import dist
from flipes.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, tensors_sha256
from flipes.cli import load_callable, parse_config
from flipes.progress import Progress
from flipes.rl import MLPPolicy, RolloutFitness, available_cores, make_vector_env, reset_episodes, run_episodes
from flipes.rl.envs import print_note
from flipes.rl.presets import preset_for


@dataclass
class Args:
    env: str = "flipes/CartPole-v1"  # flipes/... torch env, any gymnasium id, or "none" with --fitness
    popsize: int = 64
    generations: int = 100
    sigma: float = 0.1
    lr: float = 0.05
    seed: int = 0
    groups: int = 1
    rank: int = 0  # of the noise (not the MPI rank): 0 full-rank ε; r >= 1 low-rank ε = A Bᵀ/√r, cheaper forward
    episodes: int = 1  # per member and generation
    reward_shift: float = 0.0  # subtracted from every step's reward in the fitness (an alive bonus; reported returns keep it)
    hidden: list[int] = field(default_factory=lambda: [32, 32])
    eval_every: int = 2
    eval_episodes: int = 100
    target: float | None = None  # stop once eval_return reaches it; default: the env's preset target (flipes.rl.presets)
    max_seconds: float = 0.0  # stop after this much wall time (0: no limit)
    device: str = "cpu"
    out: str = "runs/cartpole"
    resume: str = ""  # a run directory (or checkpoint file) to continue from
    fitness: str = ""  # module:function, FN(model, pop) -> Tensor[pop.size]
    model: str = ""  # module:function, FN(env or None) -> nn.Module
    checkpoint_every: int = 10
    tensorboard: bool = True  # write TensorBoard scalars when tensorboard is installed
    threads: int = 1  # torch CPU threads per process (0: torch's default); small rollout ops run best on one
    env_threads: int = 0  # EnvPool threads or gymnasium worker processes per process (0: this process's share of the cores)
    comm: str = "allreduce"  # under MPI: allreduce (sum gradients) | seeds (exchange fitness only)
    check_every: int = 10  # under MPI: verify every k generations that all ranks hold identical parameters


class StopRequest:
    """Inside ``with StopRequest() as stop``, Ctrl-C / SIGTERM ask the loop to stop after the
    current generation (and checkpoint); a second Ctrl-C stops at once. The handlers that were
    installed before are restored on exit."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> StopRequest:
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True


def tensorboard_writer(enabled: bool, out: Path) -> Any:
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _stop_now(
    row: dict, target: float | None, args: Args, stop: StopRequest, comm: dist.SerialComm | dist.MPIComm
) -> tuple[bool, str]:
    """Whether to stop after this generation, and why; every rank gets the same answer."""
    interrupted = comm.allreduce_sum_(torch.tensor([float(stop.requested)])).item() > 0  # a signal may reach one rank only
    if target is not None and row.get("eval_return", -float("inf")) >= target:
        return True, f"solved: eval_return {row['eval_return']:.2f} >= {target}"
    if 0 < args.max_seconds <= comm.bcast(row["seconds"]):
        return True, f"stopped after {row['seconds']:.0f} s (--max-seconds)"
    if interrupted:
        return True, "interrupted"
    return False, "generations"


def main(args: Args, comm: dist.SerialComm | dist.MPIComm | None = None) -> dict:
    comm = comm if comm is not None else dist.SerialComm()
    for name in (
        "popsize",
        "generations",
        "groups",
        "episodes",
        "eval_every",
        "eval_episodes",
        "checkpoint_every",
        "check_every",
    ):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.env_threads < 0:
        raise SystemExit(f"--env-threads must be 0 (this process's share of the cores) or positive, got {args.env_threads}")
    if args.rank < 0:
        raise SystemExit(f"--rank must be 0 (full-rank noise) or a positive noise rank, got {args.rank}")
    if args.resume and args.out == Args().out:
        args = dataclasses.replace(args, out=str(Path(args.resume).parent if Path(args.resume).suffix == ".pt" else args.resume))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    lead = comm.rank == 0  # rank 0 alone evaluates, logs, plots and checkpoints
    device = args.device
    if args.device == "cuda" and comm.size > 1 and torch.cuda.is_available():  # rank -> a GPU of its node, shared if too few
        device = f"cuda:{comm.local_rank % torch.cuda.device_count()}"
    out = Path(args.out)
    if lead:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(args), indent=2))
    target = args.target if args.target is not None else preset_for(args.env).get("target")
    torch.manual_seed(args.seed)

    # the model and its fitness: a policy on a vector env, or the user's plug-ins
    has_env = args.env.lower() != "none"
    members = len(dist.split_groups(args.groups, comm.rank, comm.size)) * (args.popsize // max(args.groups, 1))
    env_threads = args.env_threads or available_cores(comm.local_size)
    env = None
    if has_env:
        env = make_vector_env(args.env, members * args.episodes, device, threads=env_threads, note=print_note if lead else None)
    eval_env = None
    if lead and has_env and not args.fitness:
        eval_env = make_vector_env(args.env, args.eval_episodes, device, threads=min(env_threads, args.eval_episodes), note=None)
    if args.model:
        model = load_callable(args.model, "--model")(env)
    elif env is not None:
        model = MLPPolicy(env.single_observation_space, env.single_action_space, hidden=args.hidden)
    else:
        raise SystemExit("--env none needs --model module:function to build the model")
    model = flipes.flipout(model).to(device)
    es = flipes.FlipES(
        model,
        popsize=args.popsize,
        sigma=args.sigma,
        lr=args.lr,
        seed=args.seed,
        groups=args.groups,
        comm=comm,
        comm_mode=args.comm,
        rank=args.rank or None,
    )
    obs_norm = getattr(model, "obs_norm", None)
    evaluate = None
    if args.fitness:
        fitness = load_callable(args.fitness, "--fitness")
        evaluate = getattr(sys.modules[fitness.__module__], "evaluate", None)
    else:
        if env is None:
            raise SystemExit("--env none needs --fitness module:function")
        fitness = RolloutFitness(env, args.episodes, args.seed, obs_norm, reward_shift=args.reward_shift)

    elapsed, best = 0.0, -float("inf")
    if args.resume:
        try:
            state = load_checkpoint(args.resume, map_location=device)
        except CheckpointError as e:
            raise SystemExit(f"--resume: {e}") from None
        keys = ("env", "popsize", "groups", "rank", "seed", "sigma", "lr", "hidden", "episodes", "reward_shift")
        keys += ("fitness", "model")
        saved = {"rank": 0, "reward_shift": 0.0, **state["config"]}  # runs saved before these options existed
        changed = {k: (saved.get(k), getattr(args, k)) for k in keys if saved.get(k) != getattr(args, k)}
        if changed:
            shown = ", ".join(f"--{k.replace('_', '-')}: saved {a!r}, now {b!r}" for k, (a, b) in changed.items())
            raise SystemExit(f"--resume: the run was trained with other options ({shown}); pass the saved ones to continue it")
        es.load_state_dict(state["es"])
        elapsed, best = state["seconds"], state["best"]
        if isinstance(fitness, RolloutFitness):
            fitness.timesteps = state["timesteps"] if lead else 0  # all ranks' steps, counted once

    saved_at = es.generation  # generation of the latest checkpoint.pt

    def checkpoint(path: Path, keep_previous: bool = True) -> None:
        steps = row.get("timesteps", steps_at_start)
        config = dataclasses.asdict(args)
        save_checkpoint(
            {"es": es.state_dict(), "timesteps": steps, "seconds": row["seconds"], "best": best, "config": config},
            path,
            keep_previous,
        )

    writer = tensorboard_writer(args.tensorboard and lead, out)
    progress = Progress(args.generations, every=max(1, args.eval_every))
    if lead and args.resume and (out / "metrics.jsonl").exists():  # drop rows past the checkpoint (a crash, previous.pt)
        kept = [r for r in (out / "metrics.jsonl").read_text().splitlines() if json.loads(r)["generation"] < es.generation]
        (out / "metrics.jsonl").write_text("".join(r + "\n" for r in kept))
    log = open(out / "metrics.jsonl", "a" if args.resume else "w") if lead else None
    start = time.perf_counter() - elapsed
    row: dict = {"seconds": elapsed}
    steps_at_start = int(comm.allreduce_sum_(torch.tensor([float(getattr(fitness, "timesteps", 0))])).item())
    reason = "generations"
    with StopRequest() as stop:
        while es.generation < args.generations:
            gen = es.generation
            bytes_before = comm.bytes_sent
            t0 = time.perf_counter()
            stats = es.step(fitness)
            if obs_norm is not None and obs_norm.pending is not None:
                # frozen during the generation, merged after it: summed per group, then over groups in
                # order, the same arithmetic for any number of processes (a few rows cross the network)
                pending = obs_norm.pending
                obs_norm.update(comm.allgather_tensor(pending.view(len(es.local_groups), -1, pending.shape[1]).sum(1)))
            # env steps of all ranks (each rank counts its own members' episodes)
            steps = int(comm.allreduce_sum_(torch.tensor([getattr(fitness, "timesteps", 0)], dtype=torch.float64)).item())
            row = {
                "generation": gen,
                "fitness_mean": stats["fitness_mean"],
                "fitness_max": stats["fitness_max"],
                "fitness_std": stats["fitness_std"],
                "grad_norm": stats["grad_norm"],
                "update_ratio": stats["update_ratio"],
                "seconds": time.perf_counter() - start,
                "timesteps": steps,
                "steps_per_second": (steps - row.get("timesteps", steps_at_start)) / (time.perf_counter() - t0),
                "bytes_sent": comm.bytes_sent - bytes_before,
                "params_sha256": tensors_sha256(model.parameters()),
            }
            if comm.size > 1 and (gen + 1) % args.check_every == 0:
                dist.check_identical(comm, list(model.state_dict().values()), "parameters")
            if gen % args.eval_every == 0 or gen == args.generations - 1:
                if eval_env is not None:
                    episodes = run_episodes(eval_env, model, obs=reset_episodes(eval_env, args.seed, "eval", gen))
                    returns = episodes.returns
                    row["eval_return"], row["eval_std"] = returns.mean().item(), returns.std().item() if len(returns) > 1 else 0.0
                elif evaluate is not None and lead:
                    row["eval_return"] = float(evaluate(model))
                row.update(comm.bcast({k: row[k] for k in ("eval_return", "eval_std") if k in row}))  # all ranks decide alike
            row["seconds"] = time.perf_counter() - start  # with this generation's evaluation
            if not lead:
                done, reason = _stop_now(row, target, args, stop, comm)
                if done:
                    break
                continue
            log.write(json.dumps(row) + "\n")
            log.flush()
            progress.update(row)
            if writer is not None:
                for key, value in row.items():
                    if isinstance(value, int | float):
                        writer.add_scalar(key, value, gen)
            if row.get("eval_return", -float("inf")) > best:
                best = row["eval_return"]
                checkpoint(out / "best.pt", keep_previous=False)
            done, reason = _stop_now(row, target, args, stop, comm)
            if done:
                break
            if es.generation % args.checkpoint_every == 0:
                checkpoint(out / "checkpoint.pt")
                saved_at = es.generation
    if not lead:
        if reason == "interrupted":
            sys.exit(130)
        return row
    if saved_at != es.generation or not (out / "checkpoint.pt").exists():
        checkpoint(out / "checkpoint.pt")
    log.close()
    if writer is not None:
        writer.close()
    progress.message(f"{reason}; generation {es.generation}, run directory {out}")
    try:
        from flipes.plotting import plot_runs

        plot_runs([out], out / "curves.png", "timesteps" if has_env and not args.fitness else "generation")
    except ImportError:
        progress.message("(no curves.png: matplotlib is not installed; pip install 'flipes[plot]')")
    if reason == "interrupted":
        sys.exit(130)
    return row


if __name__ == "__main__":
    world = dist.world()
    try:
        args = parse_config(Args, description=__doc__, presets=lambda values: preset_for(values["env"]))
        preset = preset_for(args.env)
        if world.rank == 0 and preset:
            used = ", ".join(f"{k} {v}" for k, v in preset.items() if getattr(args, k) == v)
            print_note(f"per-env defaults of {args.env} (flipes.rl.presets): {used}; flags and --config override them")
        main(args, world)
    except BaseException as e:
        if world.size > 1 and not (isinstance(e, SystemExit) and e.code in (0, None, 130)):  # 130: all ranks stop alike
            dist.abort_on_exception(world)  # one failing rank ends the whole job, with its traceback
        raise
