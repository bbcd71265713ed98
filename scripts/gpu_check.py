"""One prepared command that checks flipes on a GPU: correctness first, then speed, in <= 8 minutes.

    python scripts/gpu_check.py                          # cuda:0; writes scripts/results/gpu_check.{json,md}
    python scripts/gpu_check.py --device cpu --quick true   # the same paths on the CPU, tiny (~45 s; gpu_check_quick.*)
    make gpu-check

Steps, each with its own time limit, in this order (the checks of correctness come first):

1. ``tests``: the device-aware tests with ``FLIPES_TEST_DEVICE`` set to the device: every member's
   Flipout output equals torch's layer with its explicit weights (float64, Linear, Conv2d, LSTM and
   GRU cells), the ES gradient equals the materialized estimator, flipes' envs match gymnasium
   transition for transition and keep every tensor on the device, each env's action noise is the formula's
   drawn on the device.
2. ``mpi``: ``mpiexec -n 2`` with both ranks on the device, ``--comm seeds``: the parameters after
   every generation equal a one-process run's, hash for hash.
3. ``benchmark``: ``scripts/benchmark.py`` (plain, Flipout, low-rank and vmap population forwards)
   at N = 4,096 and 16,384.
4. ``repro_timing``: ``scripts/repro_timing.py``'s FC-512 and FC-2048 rows, beside the paper's
   0.18 s per update at FC-512 (Wen et al., 2018, Fig. 5, on a Tesla P100).
5. ``cartpole``: rollout steps/s of a Flipout population on ``flipes/CartPole-v1`` at N = 16,384
   and 65,536, and ``train.py``'s time to solve it on the device.
6. ``mujoco_warp``, last (its one try on a GPU lost the machine): flipes/HalfCheetah-v5 and
   flipes/Humanoid-v5 on MuJoCo Warp, env steps/s at N = 4,096 and 16,384, each printed as it is
   measured; ``train.py`` on flipes/HalfCheetah-v5 (popsize 1,024) for 120 s: the time to a center
   return of 5,000, or the best return in that time.

``--quick`` runs every step's code at tiny sizes: the tests step's narrower -k terms (QUICK_TERMS) on the files that
hold their tests, a few generations per run with 5 evaluation episodes or fewer, HalfCheetah's episodes cut at 100 steps.

The exit status is 1 when a correctness step fails (1 and 2; a crash of any step counts too).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args
from xml.etree import ElementTree

import torch

from flipes import cli
from flipes.config import default_target
from flipes.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
PAPER_FC512_SECONDS = 0.18  # Wen et al. 2018, Fig. 5: FlipES, one update of FC-512 at N = 5,000, Tesla P100


StepName = Literal["tests", "mpi", "benchmark", "repro_timing", "cartpole", "mujoco_warp"]


@dataclass
class Args:
    device: Literal["cuda", "cpu"] = "cuda"
    """The device to check: cuda (cuda:0) or cpu."""
    quick: bool = False
    """Tiny sizes: the same code paths in a few minutes (what the test suite runs, on the CPU)."""
    out: str = "scripts/results/gpu_check"
    """Writes OUT.json, OUT.md and OUT.log (every command's whole output); with --quick the default is
    scripts/results/gpu_check_quick."""
    skip: list[StepName] = dataclasses.field(default_factory=list)
    """Step names to leave out."""

    def __post_init__(self) -> None:
        if self.quick and self.out == "scripts/results/gpu_check":  # a CPU smoke run keeps the GPU's report
            self.out = "scripts/results/gpu_check_quick"


@dataclass
class Step:
    name: str
    ok: bool | None  # None: skipped, or a measurement without a pass/fail
    seconds: float
    summary: str
    data: dict[str, Any]


def run(args: Args, cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs cmd in the repository root; its whole output goes to OUT.log beside the report (the minutes
    on a lent GPU are too few to rerun a failure for its traceback), also when it runs out of time."""
    print("$", " ".join(cmd), flush=True)
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    log = Path(args.out).with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        r = execute(cmd, full_env, timeout)
        status, out, err = f"exit {r.returncode}", r.stdout, r.stderr
        return r
    except subprocess.TimeoutExpired as e:
        status, out, err = f"killed after {timeout:g} s", e.stdout, e.stderr
        raise
    finally:
        with log.open("a", encoding="utf-8") as f:
            f.write(f"$ {' '.join(cmd)}  ({status})\n{text(out)}\n{text(err)}\n")


def execute(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """cmd in the repository root with env, its output captured (tests/test_gpu_check.py runs the scripts' commands in
    its own process instead, sparing a start of Python each)."""
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def text(output: str | bytes | None) -> str:
    """A subprocess's output as text (TimeoutExpired holds bytes, or None)."""
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# the tests step's -k terms, each "word and word" matched in the test names (parameter ids included): every member's
# output, the gradient, the envs' transitions and devices, autocast, a probe's episodes, the action noise
TERMS = ("members_equal", "gradient", "every_transition", "stays_on_the_device", "bit_for_bit", "run_alone", "under_autocast",
         "plus_the_noise", "draws_are_a_pure_function", "drawn_physics_steps_exactly", "draws_lie_in_their_ranges",
         "drawn_g_m_l_steps_exactly")  # fmt: skip
# quick: "tell_gradient" (the ES gradient against the materialized estimator) of the gradient tests; on the CPU the others
# are the suite's own runs again
QUICK_TERMS = ("linear_members and 0-True-2", "tell_gradient", "every_transition", "run_alone", "plus_the_noise")


TESTS = (
    "tests/test_exactness.py",
    "tests/test_layers.py",
    "tests/test_es.py::test_tell_gradient_equals_materialized_estimator",
    "tests/test_envs.py",
    "tests/test_warp_envs.py",  # its stays_on_the_device test: MuJoCo Warp's CUDA graphs against the CPU
    "tests/test_members.py",
    "tests/test_parts.py::test_every_part_computes_its_members_outputs",  # a population in parts, noise held or not
    "tests/test_recurrent_policy.py",
    "tests/test_autocast.py",  # bfloat16 autocast on the GPU against the plain module's
    # dense per-member modules (norms, PReLU, one's own, BatchNorm) under CUDA's float16 and bfloat16
    # autocast, whose op lists and vmap's handling of them the CPU's do not show, each member against its plain copy
    "tests/test_autocast_dense_members_on_device.py",
    "tests/test_action_noise.py",  # each env's noisy actions against the formula, drawn on the device
    "tests/test_probe.py",  # a probe's sums over episodes that end within the 16 steps between the GPU's checks
    "tests/test_physics_options.py",  # per-env physics drawn on the device, each env stepped against its one-env copy
    "tests/test_physics_options_classic.py",
    "tests/test_randomized_physics.py",  # float32 draws within their bounds, Pendulum's drawn g, m, l env by env
)
# QUICK_TERMS' tests are in the other files: collecting these (MuJoCo Warp's import among them) would cost seconds for nothing
QUICK_LEAVES_OUT = ("tests/test_layers.py", "tests/test_warp_envs.py", "tests/test_members.py", "tests/test_parts.py",
                    "tests/test_autocast", "tests/test_physics_options", "tests/test_randomized_physics.py")  # fmt: skip
QUICK_TESTS = tuple(t for t in TESTS if not t.startswith(QUICK_LEAVES_OUT))


def step_tests(args: Args, tmp: Path) -> tuple[bool, str, dict]:
    terms, tests = (QUICK_TERMS, QUICK_TESTS) if args.quick else (TERMS, TESTS)
    junit = tmp / "tests.xml"
    select = " or ".join(f"({t})" for t in terms)
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", str(junit)]
    r = run(args, [*pytest, *tests, "-k", select], 300, {"FLIPES_TEST_DEVICE": args.device})
    counts = dict((k, int(v)) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", r.stdout))
    cases = ElementTree.parse(junit).iter("testcase") if junit.exists() else []
    names = [case.get("name", "").lower() for case in cases if case.find("skipped") is None]  # those that ran
    # a term no test ran for checks nothing, silently (a test renamed, a parameter id changed, all skipped): a failure
    unmatched = [t for t in terms if not any(all(word.lower() in name for word in t.split(" and ")) for name in names)]
    ok = r.returncode == 0 and counts.get("passed", 0) > 0 and not unmatched
    said = f"{counts}" + (f"; -k terms that ran no test: {unmatched}" if unmatched else "")
    return ok, said + ("" if ok else "\n" + tail(r.stdout + r.stderr)), {"counts": counts, "returncode": r.returncode,
                                                                         "unmatched": unmatched}  # fmt: skip


def step_benchmark(args: Args, tmp: Path) -> tuple[bool | None, str, dict]:
    out = tmp / "benchmark.json"
    sizes = ["--quick"] if args.quick else ["--popsizes", "4096", "16384"]
    r = run(args, [sys.executable, "scripts/benchmark.py", "--device", args.device, *sizes, "--json", str(out)], 240)
    if r.returncode != 0:
        return False, tail(r.stdout + r.stderr), {}
    rows = json.loads(out.read_text(encoding="utf-8"))["results"]
    lines = []
    for row in rows:
        ms = {k: v["ms"] for k, v in row["variants"].items()}
        shown = ", ".join(f"{k} {ms[k]:.3f} ms" for k in ("plain", "flipout", "lowrank", "vmap") if ms.get(k) is not None)
        lines.append(f"{row['mlp']} N={row['n']}: {shown}")
    return None, "; ".join(lines), {"results": rows}


def step_repro_timing(args: Args, tmp: Path) -> tuple[bool | None, str, dict]:
    extra = ["--tiny", "true"] if args.quick else ["--hidden", "512", "2048", "--repeats", "2", "--classic-max-seconds", "20"]
    cmd = [sys.executable, "scripts/repro_timing.py", "--device", args.device, "--sections", "fc", "--out", str(tmp), *extra]
    r = run(args, cmd, 240)
    if r.returncode != 0:
        return False, tail(r.stdout + r.stderr), {}
    found = sorted(tmp.glob("repro_timing*.json"))
    data = json.loads(found[-1].read_text(encoding="utf-8")) if found else {}
    rows = data.get("fc", [])
    lines = [f"FC-{row['size']}: " + ", ".join(f"{k} {ms / 1e3:.4f} s" for k, ms in row["ms"].items()) for row in rows]
    return None, "; ".join(lines) + f" per update (paper: FlipES {PAPER_FC512_SECONDS} s at FC-512 on a P100)", {"fc": rows}


def step_cartpole(args: Args, tmp: Path) -> tuple[bool | None, str, dict]:
    import flipes
    from flipes.rl import MLPPolicy, RolloutFitness, make_vector_env

    device = torch.device(args.device)
    rates = {}
    for n in [64, 128] if args.quick else [16384, 65536]:
        env = make_vector_env("flipes/CartPole-v1", n, device)
        torch.manual_seed(0)
        policy = flipes.flipout(MLPPolicy(env.single_observation_space, env.single_action_space, hidden=(32, 32))).to(device)
        es = flipes.FlipES(policy, popsize=n, sigma=0.1, seed=0)
        fitness = RolloutFitness(env, seed=0, obs_norm=policy.obs_norm)
        for _ in range(2):  # the first generation warms up (kernels, allocator)
            with es.population() as pop:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0, steps0 = time.perf_counter(), fitness.timesteps
                f = fitness(policy, pop)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                rate = (fitness.timesteps - steps0) / (time.perf_counter() - t0)
            es.tell(f)
            policy.obs_norm.update()
        rates[n] = rate
    out = tmp / "cartpole-run"
    budget = ["--generations", "2", "--target", "none", "--eval-episodes", "5"] if args.quick else ["--max-seconds", "90"]
    r = run(args, [sys.executable, "scripts/train.py", "--env", "flipes/CartPole-v1", "--device", args.device, "--out", str(out),
             "--tensorboard", "false", "--plot", "false", *budget], 150)  # fmt: skip
    if r.returncode != 0:
        return False, tail(r.stdout + r.stderr), {"steps_per_second": rates}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    last = [row for row in rows if "eval_return" in row][-1]
    solved = last["eval_return"] >= (default_target("flipes/CartPole-v1") or math.inf)  # what --target auto stops at
    shown = ", ".join(f"N={n:,}: {v / 1e6:.2f} M steps/s" for n, v in rates.items())
    verdict = (
        f"solved in {last['seconds']:.1f} s (generation {last['generation']})"
        if solved
        else f"not solved ({last['eval_return']:.0f})"
    )
    return (
        None,
        f"rollout {shown}; train.py {verdict}",
        {"steps_per_second": rates, "solve_seconds": last["seconds"] if solved else None},
    )


def step_mujoco_warp(args: Args, tmp: Path) -> tuple[bool | None, str, dict]:
    """Env steps/s of flipes/HalfCheetah-v5 and flipes/Humanoid-v5 (the lightest and the heaviest
    body) with zero actions, and train.py on flipes/HalfCheetah-v5 for at most 120 s of its clock:
    the time to a center return of 5,000, or the best return reached."""
    try:
        import mujoco_warp  # noqa: F401
        import warp as wp
    except ImportError as e:
        return None, f"skipped: MuJoCo Warp is not installed ({e}; pip install 'flipes[warp]')", {"skipped": True}
    if args.device.startswith("cuda"):
        wp.init()
        if wp.get_cuda_device_count() == 0:  # e.g. a driver older than the CUDA that warp-lang was built for
            why = f"Warp {wp.__version__} sees no CUDA device (driver {wp.get_cuda_driver_version()})"
            return None, f"skipped: {why}", {"skipped": True}
    from flipes.rl import make_vector_env

    rates: dict[str, dict[int, float]] = {}
    captured: dict[str, bool] = {}
    first_step: dict[str, float] = {}  # seconds; the first on an empty kernel cache includes compiling them
    bodies = ["HalfCheetah-v5"] if args.quick else ["HalfCheetah-v5", "Humanoid-v5"]
    for body in bodies:
        rates[body] = {}
        for n in [16] if args.quick else [4096, 16384]:
            env = make_vector_env(f"flipes/{body}", n, args.device)
            env.reset(seed=0)
            actions = torch.zeros(n, *env.single_action_space.shape, device=args.device)
            t0 = time.perf_counter()
            env.step(actions)  # compiles (or loads the cached kernels) and records the graph
            captured[body] = env.unwrapped.physics.captured
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            first_step[f"{body} N={n}"] = time.perf_counter() - t0
            t0, steps = time.perf_counter(), 20 if args.quick else 200
            for _ in range(steps):
                env.step(actions)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            rates[body][n] = n * steps / (time.perf_counter() - t0)
            print(f"  {body} N={n:,}: first step {first_step[f'{body} N={n}']:.1f} s (kernels compiled or loaded, graph"
                  f" recorded), then {rates[body][n] / 1e3:.0f} k steps/s", flush=True)  # fmt: skip
            del env
    out, target = tmp / "halfcheetah-run", 5000.0
    budget = (
        # one generation: tell, evaluation, save; 100-step episodes, the same rollout cut at its step limit
        ["--popsize", "16", "--generations", "1", "--eval-episodes", "1", "--max-episode-steps", "100"]
        if args.quick
        else ["--popsize", "1024", "--max-seconds", "120"]
    )
    r = run(args, [sys.executable, "scripts/train.py", "--env", "flipes/HalfCheetah-v5", "--device", args.device, "--out",
                   str(out), "--tensorboard", "false", "--plot", "false", "--target", str(target), *budget], 240)  # fmt: skip
    shown = "; ".join(
        f"{body} " + ", ".join(f"N={n:,}: {v / 1e3:.0f} k" for n, v in by_n.items()) for body, by_n in rates.items()
    )
    if r.returncode != 0:
        return False, tail(r.stdout + r.stderr), {"steps_per_second": rates}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    evals = [row for row in rows if "eval_return" in row]
    reached = [row for row in evals if row["eval_return"] >= target]
    best = max((row["eval_return"] for row in evals), default=math.nan)  # nan: no evaluation in the time
    verdict = (
        f"{target:,.0f} reached in {reached[0]['seconds']:.0f} s (generation {reached[0]['generation']})"
        if reached
        else f"{target:,.0f} not reached in {rows[-1]['seconds']:.0f} s (best {best:,.0f})"
    )
    data = {"steps_per_second": rates, "first_step_seconds": first_step, "graph_captured": captured,
            "seconds_to_5000": reached[0]["seconds"] if reached else None, "best_return": best}  # fmt: skip
    graphs = "" if all(captured.values()) else f" (NOT captured, launched kernel by kernel: {captured})"
    return None, f"env steps/s: {shown}{graphs}; train.py HalfCheetah popsize {budget[1]}: {verdict}", data


def step_mpi(args: Args, tmp: Path) -> tuple[bool | None, str, dict]:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        return None, f"skipped: no {mpiexec} (pip install mpi4py mpich)", {"skipped": True}
    # quick: 8 members a rank; the hashes of 1 and 2 ranks agree (or not) at any popsize
    popsize = "16" if args.quick else "64"
    common = ["--env", "flipes/CartPole-v1", "--device", args.device, "--comm", "seeds", "--groups", "2", "--popsize", popsize]
    common += ["--target", "none", "--eval-every", "100", "--tensorboard", "false", "--plot", "false"]
    # quick: generations evaluated (the first, the last) and one not, as at 6; 5 evaluation episodes instead of 100
    common += ["--generations", "3", "--eval-episodes", "5"] if args.quick else ["--generations", "6"]
    hashes = {}
    for k in (1, 2):
        out = tmp / f"mpi{k}"
        r = run(args, [str(mpiexec), "-n", str(k), sys.executable, "scripts/train.py", *common, "--out", str(out)], 180)
        if r.returncode != 0:
            return False, f"mpiexec -n {k} failed:\n" + tail(r.stdout + r.stderr), {}
        hashes[k] = [
            json.loads(line)["params_sha256"] for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        ]
    ok = hashes[1] == hashes[2] and len(hashes[1]) > 0
    return ok, f"{len(hashes[1])} generations, parameters {'identical' if ok else 'DIFFER'} at 1 and 2 ranks", {"hashes": hashes}


STEPS: dict[str, Callable[[Args, Path], tuple[bool | None, str, dict]]] = {
    "tests": step_tests,
    "mpi": step_mpi,
    "benchmark": step_benchmark,
    "repro_timing": step_repro_timing,
    "cartpole": step_cartpole,
    "mujoco_warp": step_mujoco_warp,
}
assert list(STEPS) == list(get_args(StepName)), "--skip's choices are the step names"


def versions(device: torch.device) -> dict[str, Any]:
    import gymnasium
    import numpy

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    info |= {"gymnasium": gymnasium.__version__, "machine": platform.machine(), "cpus": os.cpu_count()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    else:
        info["device_name"] = platform.processor() or "cpu"
    return info


def main(args: Args) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "--device", f"{args.device}: this torch sees no CUDA device (torch {torch.__version__})", "use --device cpu"
        )
    info = versions(device)
    print(f"gpu_check on {info['device_name']} (torch {info['torch']}, CUDA {info.get('cuda')})", flush=True)
    results: list[Step] = []
    Path(args.out).with_suffix(".log").unlink(missing_ok=True)  # run() appends each command's output
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in STEPS.items():
            if name in args.skip:
                continue
            t0, workdir = time.perf_counter(), Path(tmp) / name
            workdir.mkdir()
            try:
                ok, summary, data = fn(args, workdir)
            except Exception as e:  # a crash is a failure of the step, and the others still run
                ok, summary, data = False, f"{type(e).__name__}: {e}", {}
            results.append(Step(name, ok, time.perf_counter() - t0, summary, data))
            mark = {True: "PASS", False: "FAIL", None: "----"}[ok]
            print(f"[{mark}] {name} ({results[-1].seconds:.0f} s): {summary}", flush=True)
            write_report(args, info, results, time.perf_counter() - started)  # a run cut short keeps its steps
    total = time.perf_counter() - started
    failed = write_report(args, info, results, total)
    verdict = f"FAILED: {failed}" if failed else "no failures"
    print(f"wrote {Path(args.out).with_suffix('.json')} and .md; {total:.0f} s; {verdict}")
    return 1 if failed else 0


def write_report(args: Args, info: dict[str, Any], results: list[Step], total: float) -> list[str]:
    """Writes OUT.json and OUT.md with the steps run so far; returns the names of the failed ones."""
    failed = [r.name for r in results if r.ok is False]
    md = [f"# gpu_check on {info['device_name']}", "",
          f"`python scripts/gpu_check.py --device {args.device}{' --quick' if args.quick else ''}`, {total:.0f} s; "
          f"torch {info['torch']}, CUDA {info.get('cuda')}, driver {info.get('driver')}, Python {info['python']}", "",
          "| step | result | seconds | summary |", "|---|---|---|---|"]  # fmt: skip
    for r in results:
        result = {True: "pass", False: "FAIL", None: "measured" if not r.data.get("skipped") else "skipped"}[r.ok]
        md.append(f"| {r.name} | {result} | {r.seconds:.0f} | {r.summary.splitlines()[0] if r.summary else ''} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"args": dataclasses.asdict(args), "info": info, "seconds": total, "failed": failed,
               "steps": [dataclasses.asdict(r) for r in results]}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    out.with_suffix(".md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return failed


if __name__ == "__main__":
    sys.exit(cli.run(main, Args, description=__doc__))
