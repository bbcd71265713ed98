"""evosax's OpenAI-ES on gymnax's CartPole-v1: the evosax part of scripts/bench_solve.py, run in its own process.

It needs JAX (CPU wheels), evosax and gymnax, which flipes does not depend on: ``make bench-solve`` installs them
into ``.venv-jax`` and bench_solve.py starts this file with that venv's python, one process per seed:

    .venv-jax/bin/python scripts/bench_solve_evosax.py '{"seed": 0}'      # any field of Settings, as JSON

It imports neither flipes nor torch. Progress goes to stderr; the last line of stdout is one JSON object
(``{"rows": [...], "meta": {...}}``) with one row per criterion, in bench_solve.py's row format.

Settings: those of evosax's own OpenAI-ES CartPole example, ``examples/02_mlp_control.ipynb`` ("Evolving CartPole
Controllers", Open-ES with MLP controller) of evosax v0.1.6, the last release that has an OpenAI-ES CartPole example:
population 100 (antithetic), Adam with lr 0.1 and beta1 0.99 (that release's Adam), a constant sigma 0.03 (its
OpenES default), the mean starting at zeros, centered-rank fitness shaping, an MLP 4-64-64-2 with ReLU whose action
is sampled from the softmax of its outputs, 16 rollouts per member, no observation normalization. They run on the
API of the installed evosax (0.3.x: ``Open_ES`` and ``GymnaxProblem``, the classes of its own RL notebook
``examples/02_rl.ipynb``, which now trains CartPole with SNES). One difference: the example's (and that notebook's)
rollouts stop at 200 steps; here they run to gymnax's CartPole-v1 limit of 500, the horizon of the 475 criterion
(``episode_length``). With 200, the fitness cannot tell a 200-step policy from a 500-step one: seed 1 stalled at a
mean of 246 on the 500-step test for all 300 generations (seeds 0 and 2 solved in 29 and 21), where with 500 seeds
0 / 1 / 2 solve in 35 / 12 / 22 generations (this project's 2-core box, 2026-12-05).

Timing: ``wall_s`` runs from just before the first generation until solving was detected, evaluations included,
JIT compilation excluded: the generation step and both evaluations are compiled ahead of time (``jax.jit(...).lower
(...).compile()``) before the clock starts, and that time is ``compile_s``; ``wall_jit_s`` = ``wall_s`` +
``compile_s`` is the fair total. JAX's import and building the problem, the strategy and their first states
(small jitted calls) are ``import_s`` and ``setup_s``, outside both. JAX runs on the CPU with its default
threads (XLA's CPU client uses every core); ``loop_cpu_s`` / ``wall_s`` says how many it kept busy.

Counting: gymnax's rollouts step every episode to ``episode_length`` (finished episodes are masked, not stopped),
so ``computed_steps`` is population x rollouts x episode_length per generation; ``env_steps`` counts only the
steps of the episodes themselves, as EvoTorch and flipes do: CartPole pays 1 per step, so it is the sum of the
returns. The center (mean) policy is evaluated after every generation on 10 fresh 500-step episodes with the
training's policy (the same sampled actions), and whenever their mean return reaches the target also on 100
(flipes' criterion); their steps are ``eval_steps``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any


@dataclass
class Settings:
    """One seed's run; the defaults are the example's (see the module docstring)."""

    seed: int = 0
    """Seeds the initial key: the strategy's samples, the episodes and the sampled actions."""
    population: int = 100
    """Members per generation (antithetic pairs)."""
    lr: float = 0.1
    """Adam's learning rate on the mean."""
    adam_b1: float = 0.99
    """Adam's beta1 (evosax v0.1.6's default)."""
    sigma: float = 0.03
    """The perturbations' standard deviation, constant."""
    hidden: tuple[int, ...] = (64, 64)
    """The MLP's hidden widths (ReLU)."""
    rollouts: int = 16
    """Episodes per member; its fitness is their mean return."""
    episode_length: int = 500
    """Steps of a training episode (the example's 200; CartPole-v1's limit 500 here, see the docstring)."""
    criteria: tuple[int, ...] = (10, 100)
    """Evaluation episodes of the center's tests, each run once the one before it passes."""
    target: float = 475.0
    """Mean return that counts as solved (CartPole-v1's reward threshold)."""
    generations: int = 300
    """At most this many generations."""
    max_seconds: float = 600.0
    """At most this many seconds of the timed loop."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(s: Settings) -> dict[str, Any]:
    t0 = time.perf_counter()
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from evosax.algorithms import Open_ES
    from evosax.problems import GymnaxProblem
    from evosax.problems.networks import MLP, categorical_output_fn

    import_s = time.perf_counter() - t0
    load_before = os.getloadavg()

    t0 = time.perf_counter()
    policy = MLP(layer_sizes=(*s.hidden, 2), activation=nn.relu, output_fn=categorical_output_fn)
    problem = GymnaxProblem(
        "CartPole-v1", policy, episode_length=s.episode_length, num_rollouts=s.rollouts, use_normalize_obs=False
    )
    # one episode per call; the evaluations vmap it over their keys to get every episode's return, not only the mean
    tester = GymnaxProblem("CartPole-v1", policy, num_rollouts=1, use_normalize_obs=False)
    key_train, key_test = jax.random.split(jax.random.key(s.seed))
    key_train, key_problem, key_sample, key_init = jax.random.split(key_train, 4)
    problem_state = problem.init(key_problem)
    solution = problem.sample(key_sample)  # its structure only: the mean starts at zeros, as in the example
    es = Open_ES(
        population_size=s.population,
        solution=solution,
        optimizer=optax.adam(s.lr, b1=s.adam_b1),
        std_schedule=optax.constant_schedule(s.sigma),
    )
    params = es.default_params
    state = es.init(key_init, jax.tree.map(jnp.zeros_like, solution), params)
    jax.block_until_ready(state)
    setup_s = time.perf_counter() - t0

    # every key is derived inside the compiled functions: no eager JAX op (and its own compilation) in the timed loop
    def generation(state: Any, problem_state: Any, key: jax.Array) -> tuple[Any, Any, jax.Array, jax.Array]:
        key, key_ask, key_eval, key_tell = jax.random.split(key, 4)
        population, state = es.ask(key_ask, state, params)
        fitness, problem_state, _ = problem.eval(key_eval, population, problem_state)  # mean return over rollouts
        state, _ = es.tell(key_tell, population, -fitness, state, params)  # evosax minimizes
        return state, problem_state, key, jnp.round(fitness * s.rollouts).sum()  # env steps: 1 reward per step

    def evaluate(episodes: int, mean: jax.Array, problem_state: Any, gen: jax.Array) -> jax.Array:
        center = jax.tree.map(lambda x: x[None], es._unravel_solution(mean))  # a population of one
        keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(key_test, episodes), gen), episodes)
        returns, _, _ = jax.vmap(lambda k: tester.eval(k, center, problem_state))(keys)
        return returns[:, 0]

    t0 = time.perf_counter()
    step = jax.jit(generation).lower(state, problem_state, key_train).compile()
    gen0 = jnp.asarray(0, dtype=jnp.int32)
    tests = {
        n: jax.jit(lambda m, p, g, n=n: evaluate(n, m, p, g)).lower(state.mean, problem_state, gen0).compile() for n in s.criteria
    }
    compile_s = time.perf_counter() - t0
    log(f"evosax: import {import_s:.1f} s, setup {setup_s:.1f} s, JIT compile {compile_s:.1f} s, {es.num_dims} parameters")

    found: dict[int, dict[str, Any]] = {}  # episodes -> the row at which that criterion was first met
    env_steps = computed_steps = eval_steps = 0
    eval_s = 0.0
    last = (float("nan"), float("nan"))
    gen = 0

    def snapshot(wall: float) -> dict[str, Any]:
        return {
            "wall_s": wall,
            "compile_s": compile_s,
            "wall_jit_s": wall + compile_s,
            "eval_s": eval_s,
            "eval_steps": eval_steps,
            "env_steps": env_steps,
            "computed_steps": computed_steps,
            "generations": gen + 1,
            "eval_mean": last[0],
            "eval_std": last[1],
        }

    cpu0, start = time.process_time(), time.perf_counter()
    for gen in range(s.generations):
        state, problem_state, key_train, steps = step(state, problem_state, key_train)
        env_steps += int(steps)  # waits for the generation
        computed_steps += s.population * s.rollouts * s.episode_length
        for episodes in s.criteria:  # the first every generation; each further one only when those before pass
            t0 = time.perf_counter()
            returns = np.asarray(tests[episodes](state.mean, problem_state, np.int32(gen)))
            eval_s += time.perf_counter() - t0
            eval_steps += int(returns.sum())
            last = (float(returns.mean()), float(returns.std()))
            if last[0] < s.target:
                break
            found.setdefault(episodes, snapshot(time.perf_counter() - start))
        if s.criteria[-1] in found or time.perf_counter() - start > s.max_seconds:
            break
    wall = time.perf_counter() - start
    loop_cpu_s = time.process_time() - cpu0
    log(f"evosax: seed {s.seed}: {gen + 1} generations, {wall:.1f} s, last test {last[0]:.1f} ± {last[1]:.1f}")

    rows = []
    for episodes in s.criteria:
        row = found.get(episodes) or snapshot(wall)  # not solved by this criterion within the budget: the end
        rows.append(
            {
                "env": "gymnax/CartPole-v1",
                "method": "evosax OpenAI-ES",
                "criterion": f"{episodes} ep",
                "seed": s.seed,
                "solved": episodes in found,
                "setup_s": setup_s,
                "import_s": import_s,
                **row,
                "loop_s": wall,
                "loop_cpu_s": loop_cpu_s,
                "load_before": load_before,
                "load_after": os.getloadavg(),
            }
        )
    meta = {
        **{name: version(name) for name in ("jax", "jaxlib", "evosax", "gymnax", "flax", "optax")},
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS"),  # None: XLA's default threads (its CPU client uses every core)
        "num_parameters": int(es.num_dims),
        "settings": dataclasses.asdict(s),
    }
    return {"rows": rows, "meta": meta}


def parse(argv: list[str]) -> dict[str, Any]:
    """The settings given as one JSON object; ``--help`` prints the docstring and exits, anything else is one line."""
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0)
    if len(argv) > 1:
        raise SystemExit(f"bench_solve_evosax: one argument expected, a JSON object of settings, got {len(argv)}")
    try:
        given = json.loads(argv[0]) if argv else {}
    except json.JSONDecodeError as e:
        raise SystemExit(f"bench_solve_evosax: the argument is not JSON ({e}); give one object, e.g. '{{\"seed\": 0}}'") from None
    if not isinstance(given, dict):
        raise SystemExit(f"bench_solve_evosax: the argument must be a JSON object, e.g. '{{\"seed\": 0}}', got {argv[0]}")
    return given


def main(argv: list[str]) -> None:
    given = parse(argv)
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise SystemExit(f"bench_solve_evosax: unknown settings {unknown}; known: {sorted(fields)}")
    tuples = {"hidden", "criteria"}
    settings = Settings(**{k: tuple(v) if k in tuples else v for k, v in given.items()})
    print(json.dumps(run(settings)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
