"""Torch ops and host reads per env step of a training rollout: what sets a GPU rollout's speed at small N.

    python scripts/count_rollout_ops.py                                 # flipes/CartPole-v1 and flipes/Pendulum-v1, N = 64
    python scripts/count_rollout_ops.py --envs flipes/Acrobot-v1 --n 256
    PYTHONPATH=../other-tree python scripts/count_rollout_ops.py         # the same on another checkout, to compare

On a GPU every torch op of the per-step loop is a kernel launch (~5-10 µs) whatever N, so the ops per env step set a
small population's rollout speed there; on a CPU they are the Python/dispatch floor. This runs ``RolloutFitness`` as
training builds it (a Flipout MLP of the preset's hidden widths, obs normalization on: one untimed generation merged
first, the preset's popsize and episodes, one torch thread) under ``torch.profiler`` on the CPU for ``--generations``
generations, and divides by the rollout's steps (calls of ``env.step``). ``top-level`` counts the aten ops called from
Python (an op inside another, ``aten::addmm``'s ``aten::copy_``, is not counted again: it launches no kernel of its own
from the host), ``computing`` those of them that are not views, empty tensors or a ``.to()`` that copies nothing (none
launches a kernel on a GPU);
``aten events`` counts every aten event. ``host reads`` are ``aten::_local_scalar_dense`` events, where every
``.item()``, ``bool(tensor)`` and ``int(tensor)`` ends: each waits for a GPU. The counts are of the CPU's code paths: on a
GPU the env draws every row at every step instead of the reset rows (a few ops more), checks no Discrete action's range
(3 ops and 2 reads fewer) and the rollout asks whether any episode is left every 16 steps. Also the center-policy
evaluation (``run_episodes`` of the plain network, ``eval_episodes`` envs).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

import flipes
from flipes.cli import option_name, run
from flipes.errors import UsageError
from flipes.rl import MLPPolicy, make_vector_env
from flipes.rl.envs import EnvError
from flipes.rl.presets import preset_for
from flipes.rl.rollout import RolloutFitness, run_episodes

# ops that only make a view or an uninitialized tensor: no kernel on a GPU, host time only
METADATA = frozenset(
    f"aten::{name}"
    for name in (
        "view", "reshape", "flatten", "unflatten", "unbind", "select", "slice", "squeeze", "unsqueeze", "mT", "numpy_T", "t",
        "transpose", "permute", "movedim", "expand", "as_strided", "alias", "detach", "empty", "empty_like", "empty_strided",
        "lift_fresh", "view_as", "split", "chunk", "is_nonzero", "item", "_local_scalar_dense",
    )
)  # fmt: skip
READ = "aten::_local_scalar_dense"  # where every .item(), bool(tensor) and int(tensor) ends


@dataclass
class Args:
    envs: list[str] = field(default_factory=lambda: ["flipes/CartPole-v1", "flipes/Pendulum-v1"])
    """Env ids (flipes' torch envs; a gymnasium id works too)."""
    n: int = 0
    """Population size (0: the preset's)."""
    generations: int = 2
    """Profiled generations, after one untimed generation whose statistics are merged."""
    eval_episodes: int = 0
    """Envs of the profiled center-policy evaluation (0: the preset's; -1: none)."""
    ops: bool = False
    """Also list the top-level ops per step, most frequent first."""
    final_obs: bool = False
    """Also keep each episode's final observation (RolloutFitness and run_episodes' final_obs), to count what it adds."""


def counts(prof: Any, steps: int) -> tuple[float, float, float, float, Counter]:
    """Top-level aten ops, of them computing ones (not views or allocations), all aten events, host reads, per step;
    and the top-level ops by name."""
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top: Counter = Counter()
    noop = 0  # .to() / as_tensor of a tensor already so: no copy under it
    for e in events:
        parent, nested = e.cpu_parent, False
        while parent is not None:
            if parent.name.startswith("aten::"):
                nested = True
                break
            parent = parent.cpu_parent
        if not nested:
            top[e.name] += 1
            noop += e.name == "aten::to" and not any(c.name == "aten::_to_copy" for c in e.cpu_children)
    reads = sum(1 for e in events if e.name == READ)
    compute = sum(c for name, c in top.items() if name not in METADATA) - noop
    return sum(top.values()) / steps, compute / steps, len(events) / steps, reads / steps, top


def report(prof: Any, steps: int, ops: bool) -> None:
    """Print the counts per step (and each top-level op's, with ``ops``)."""
    top, compute, total, reads, by_name = counts(prof, steps)
    print(f"  per step: {top:.1f} top-level aten ops ({compute:.1f} computing), {total:.1f} aten events, {reads:.2f} host reads")
    if ops:
        for name, c in by_name.most_common():
            print(f"    {c / steps:7.2f}  {name}")


def steps_counted(env: Any) -> list[int]:
    """A counter of ``env.step`` calls (wrapping the instance's method)."""
    calls = [0]
    inner = env.step

    def step(actions: Any) -> Any:
        calls[0] += 1
        return inner(actions)

    env.step = step
    return calls


def one_env(args: Args, env_id: str) -> None:
    preset = preset_for(env_id)
    n, k = args.n or preset.get("popsize", 64), preset.get("episodes", 1)
    env = make_vector_env(env_id, n * k, threads=1, note=None)
    torch.manual_seed(0)
    policy = flipes.flipout(MLPPolicy(env.single_observation_space, env.single_action_space, hidden=preset["hidden"])).eval()
    es = flipes.FlipES(policy, popsize=n, sigma=preset.get("sigma", 0.1), seed=0)
    fitness = RolloutFitness(env, k, 0, policy.obs_norm, final_obs=args.final_obs)
    calls = steps_counted(env)
    for generation in range(1 + args.generations):
        if generation == 1:
            calls[0] = 0
            prof = profile(activities=[ProfilerActivity.CPU])
            prof.__enter__()
        with es.population() as pop:
            f = fitness(policy, pop)
        es.tell(f)
        policy.obs_norm.update()
    prof.__exit__(None, None, None)
    print(f"{env_id}, N = {n} x {k} episodes, training rollout: {calls[0]} steps in {args.generations} generations (incl. tell)")
    report(prof, calls[0], args.ops)
    episodes = preset.get("eval_episodes", 100) if args.eval_episodes == 0 else args.eval_episodes
    if episodes > 0:
        eval_env = make_vector_env(env_id, episodes, threads=1, note=None)
        calls = steps_counted(eval_env)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run_episodes(eval_env, policy, seed=0, final_obs=args.final_obs)
        print(f"{env_id}, evaluation of the center policy, {episodes} envs: {calls[0]} steps")
        report(prof, calls[0], args.ops)


def main(args: Args) -> None:
    for name, low in {"n": 0, "generations": 1, "eval_episodes": -1}.items():
        if getattr(args, name) < low:
            raise UsageError(option_name(name), f"must be at least {low}, got {getattr(args, name)}")
    torch.set_num_threads(1)
    for env_id in args.envs:
        try:
            one_env(args, env_id)
        except EnvError as e:  # an unknown id, or its engine not installed: the message says what to use
            raise UsageError("--envs", str(e)) from None


if __name__ == "__main__":
    run(main, Args, description=__doc__)
