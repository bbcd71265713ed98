"""The ``flipes`` command: ``flipes train``, ``flipes evaluate``, ``flipes export``, ``flipes plot`` (also
``python -m flipes``).

    flipes train --env flipes/CartPole-v1 --popsize 64 --seed 0 --out runs/cartpole
    flipes train --config my_run.toml --seed 3          # flags override the file
    flipes train --resume runs/cartpole --generations 200
    flipes evaluate runs/cartpole --checkpoint best --episodes 20 --render cartpole.gif
    flipes export runs/cartpole                         # runs/cartpole/policy.pt2, for torch alone
    flipes plot runs/cartpole runs/cartpole-seed1 --x timesteps
    flipes plot runs/p64/seed* runs/p256/seed* --group config    # each setting's mean over seeds, with a band

A mistake in the options prints one line, ``flipes: error: <option>: <what>; <what to do>``, and
exits with status 2; ``flipes COMMAND --help`` describes every option.
"""

from __future__ import annotations

import importlib.util
import json
import os
import runpy
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from flipes.callbacks import Callback, read_jsonl
from flipes.checkpoint import discard
from flipes.cli import POSITIONAL, parse_config, print_error, report_usage_error
from flipes.config import TrainConfig
from flipes.errors import StorageError, UsageError, WorkerEndedError, os_reason

if TYPE_CHECKING:
    from flipes.dist import Comm

TRAIN_HELP = """Train a policy (or any model, with --fitness) with FlipES.

    flipes train --env flipes/CartPole-v1 --popsize 64 --generations 100 --seed 0 --out runs/cartpole
    flipes train --config my_run.toml --seed 3          # flags override the file
    flipes train --resume runs/cartpole --generations 200
    flipes train --env none --fitness mymod:fitness --model mymod:make_model
    mpiexec -n 4 flipes train --env HalfCheetah-v5 --groups 4 --comm seeds   # same result as -n 1

With an env, the population runs --episodes episodes per member in ONE vector env, one Flipout pass
per step for all members; every --eval-every generations the center (mean) policy is evaluated on
--eval-episodes episodes, and training stops once that mean reaches --target (by default the env's
registered reward_threshold, or its preset row's target). A known env id brings its own defaults
(flipes.rl.presets); a config file and flags override them, and --help shows the defaults of the
command line it ends (flipes train --env Hopper-v5 --help: that env's row). The run directory holds
config.json, metrics.jsonl (one JSON object per generation), checkpoint.pt (latest; previous.pt is
the one it replaced), best.pt and curves.png.
"""


@dataclass
class EvaluateConfig:
    """Options of ``flipes evaluate``."""

    run: str = field(metadata=POSITIONAL)
    """Run directory written by flipes train."""
    episodes: int = 100
    """Episodes to evaluate the center policy on."""
    checkpoint: str = "latest"
    """Which parameters: latest (checkpoint.pt), best (best.pt: the best evaluated center), best-member (the
    fittest member of any generation, kept with --track-best) or a checkpoint file."""
    seed: int = 12345
    """Seeds the evaluation episodes."""
    render: str = ""
    """Also record one episode to this file: out.gif, or out.mp4 with imageio-ffmpeg installed."""
    max_frames: int = 1000
    """Longest recording, in frames."""
    device: str = "cpu"
    """Torch device of the policy and of flipes/ envs."""


@dataclass
class ExportConfig:
    """Options of ``flipes export``."""

    run: str = field(metadata=POSITIONAL)
    """Run directory written by flipes train (on an env)."""
    checkpoint: str = "latest"
    """Which parameters: latest (checkpoint.pt), best (best.pt: the best evaluated center), best-member (the
    fittest member of any generation, kept with --track-best) or a checkpoint file."""
    out: str = ""
    """The .pt2 file to write (default: RUN/policy.pt2)."""


@dataclass
class PlotConfig:
    """Options of ``flipes plot``."""

    runs: list[str] = field(default_factory=list, metadata=POSITIONAL)
    """Run directories holding metrics.jsonl."""
    x: Literal["generation", "timesteps", "seconds"] = "generation"
    """The x axis."""
    out: str = ""
    """The PNG to write (default: RUN/curves.png for one run, curves.png for several)."""
    group: Literal["none", "config", "parent"] = "none"
    """Draw the seeds of each setting as one mean curve with a band, one color per setting: config (runs whose
    config.json agree on every option but --seed and those a resume may change, such as --generations), parent (runs in
    one directory, e.g. runs/p64/seed0 runs/p64/seed1), none (one color per run: its fitness mean, max and best member,
    and its eval_return)."""
    band: Literal["ci95", "se", "minmax", "none"] = "ci95"
    """With --group: the shaded band around each setting's mean over seeds: ci95 (Student's t 95% interval of the mean),
    se (mean ± standard error), minmax (the lowest and highest seed), none."""
    csv: str = ""
    """With --group: also write the aggregated curves to this CSV file (group, metric, x, seeds, mean, se, ci95_low,
    ci95_high, min, max), to redraw the figure elsewhere."""


def parse_train_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """``flipes train``'s options: defaults < the env's preset row < the ``--algo`` row < the row's own options
    for that search < the resumed run's options (``--resume DIR``) < ``--config`` file < flags. The search is
    ``--algo``'s (flag, file or resumed run), else the one the env's row names, else openai-es; ``--help`` shows the
    latter as ``--algo``'s default, and an ``--algo`` flag beside it."""
    from flipes.cli import _Parser, read_config_file
    from flipes.config import default_run_dir, saved_options
    from flipes.rl.presets import defaults, policy_preset, row_algo, row_policy

    argv = list(sys.argv[1:] if argv is None else argv)
    # values["algo"] is TrainConfig's default when nobody set it: only a flag or the file says it was chosen
    pre = _Parser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--algo")
    pre.add_argument("--policy")
    known, _ = pre.parse_known_args(argv)
    in_file = read_config_file(known.config) if known.config is not None else {}
    chosen = known.algo is not None or "algo" in in_file
    chosen_policy = known.policy is not None or "policy" in in_file

    def layers(values: dict[str, Any]) -> dict[str, Any]:
        resume = values["resume"]
        if resume == "auto":
            resume = str(default_run_dir(values["out"], values["env"], values["fitness"]))
        saved = saved_options(resume) if resume else {}
        env_id = saved.get("env", values["env"])
        env_id = env_id if isinstance(env_id, str) else ""
        unchosen = saved.get("algo", row_algo(env_id))  # without --algo / --policy: --help shows them as the defaults
        algo = saved.get("algo", values["algo"] if chosen else unchosen)
        row_pol = saved.get("policy", row_policy(env_id))
        policy = saved.get("policy", values["policy"] if chosen_policy else row_pol)
        # the chosen search's and policy's rows; a flag or file sets algo and policy themselves
        return {**defaults(env_id, algo), **policy_preset(policy, env_id), **saved, "algo": unchosen, "policy": row_pol}

    return parse_config(TrainConfig, argv, TRAIN_HELP, presets=layers, prog="flipes train")


class Note(Callback):
    """A line to stderr once training has started (after every check passed)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def on_train_start(self, state: Any) -> None:
        from flipes.rl.envs import print_note

        print_note(self.text)


class ResumeNote(Callback):
    """Where a resumed run continues: its directory and generation."""

    def on_train_start(self, state: Any) -> None:
        from flipes.rl.envs import print_note

        if state.resumed:
            print_note(f"resumed {state.config.resume} at generation {state.es.generation}")


class ModelNote(Callback):
    """What a ``--model``'s parameters get: the last line of ``es.report()`` (flipout, dense, frozen),
    after the first generation (a mistake in the fitness stays a one-line error)."""

    def __init__(self) -> None:
        self.shown = False

    def on_generation(self, state: Any, row: dict[str, Any]) -> None:
        from flipes.rl.envs import print_note

        if not self.shown:
            self.shown = True
            print_note(f"--model {state.config.model}: " + str(state.es.report()).splitlines()[-1])


def main_guard(fn: Callable[[], Any], comm: Comm) -> Any:
    """Run ``fn`` so that a failure on one MPI rank ends the whole job with its error (not a hang), its
    warnings about the command's own run shown as one ``flipes: warning:`` line each."""
    from flipes import dist

    try:
        with warnings.catch_warnings():  # restores the process's showwarning after the command
            warnings.showwarning = _command_warning(warnings.showwarning)
            return fn()
    except BaseException as e:
        if comm.size > 1:  # the options were parsed before: a sys.exit here is one rank's (training's own are ended there)
            if isinstance(e, SystemExit):
                dist.abort_on_exit(comm, e, "during flipes train")
            if isinstance(e, UsageError | StorageError | WorkerEndedError | KeyboardInterrupt):
                if comm.rank != 0:  # usually every rank has it: rank 0 says it once, and ends the job
                    time.sleep(3.0)  # a rank alone with it still gets to say it
                if isinstance(e, KeyboardInterrupt):  # a second signal forwarded by mpiexec, or one rank's
                    print(interrupted_line("train", e), file=sys.stderr, flush=True)
                else:
                    print_error(e)
                comm.abort(2 if isinstance(e, UsageError) else 130 if isinstance(e, KeyboardInterrupt) else 1)
            dist.abort_on_exception(comm)
        raise


def _command_warning(show: Callable[..., None]) -> Callable[..., None]:
    """``warnings.showwarning`` for a command: a warning that points at the command itself (flipes' entry
    point or script: flipes warns at its caller's line, and here the caller is the command) is one line
    without the file and source line; one from a user's module keeps the usual form."""
    entry = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    package = Path(__file__).resolve().parent
    runpy_file = Path(runpy.__file__).resolve()

    def showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int, *rest: Any) -> None:
        where = None if filename.startswith("<") else Path(filename).resolve()  # <frozen runpy>: python -m flipes
        if where is None or where in (entry, runpy_file) or where.is_relative_to(package):  # runpy.py: so on 3.10
            ours = category is UserWarning or category.__module__.startswith("flipes")
            kind = "" if ours else f"{category.__name__}: "  # torch's or gymnasium's, raised where flipes called them
            print(f"flipes: warning: {kind}{' '.join(str(message).split())}", file=sys.stderr, flush=True)
        else:
            show(message, category, filename, lineno, *rest)

    return showwarning


def other_version_row(env_id: str) -> str:
    """The name of a row in :data:`flipes.rl.presets.PRESETS` for another version of ``env_id``, which has none
    (``HalfCheetah-v4`` -> ``HalfCheetah-v5``); empty where ``env_id`` has a row or no version of it has one."""
    from flipes.rl.envs import base_id
    from flipes.rl.presets import PRESETS, env_row

    name = base_id(env_id)
    stem, version = name.rpartition("-v")[::2]
    if not stem or not version.isdigit() or env_row(env_id):
        return ""
    return next((row for row in PRESETS if row.rpartition("-v")[0] == stem), "")


def preset_lines(config: TrainConfig) -> list[str]:
    """What the presets set in ``config`` (values no flag or file changed), one line each: the env's
    row, then the ``--algo`` row over it; ``hidden`` only where a built-in policy is used (not --model)."""
    from flipes.rl.presets import algo_preset, defaults, policy_preset, preset_for

    algo = algo_preset(config.algo, config.env)
    policy = {} if config.model else policy_preset(config.policy, config.env)
    env_row = {
        k: v
        for k, v in preset_for(config.env, config.algo).items()
        if k not in algo and k not in policy and (not config.model or k not in ("hidden", "policy"))
    }
    lines = []
    if config.fitness and config.env == TrainConfig.env:  # --env left out, most likely: the fitness may need no env
        lines.append(
            f"--fitness {config.fitness} runs beside the default --env {config.env}: its presets below apply, the run "
            f"goes to runs/{config.env.split('/')[-1]} unless --out says otherwise, and --model gets its spaces; "
            "--env none for a fitness that needs no env"
        )
    kin = other_version_row(config.env)
    differ = {k: v for k, v in defaults(kin).items() if getattr(config, k) != v} if kin else {}
    if differ:  # HalfCheetah-v4 (an EnvPool id) on the generic defaults, far from what v5's row found to work
        flags = " ".join(
            f"--{k.replace('_', '-')}" + "".join(f" {x}" for x in (v if isinstance(v, list) else [v])) for k, v in differ.items()
        )
        lines.append(
            f"no per-env defaults for {config.env}: TrainConfig's apply; flipes.rl.presets has {kin}'s, which would set "
            f"{flags} (flags or a --config file)"
        )
    rows = ((env_row, f"per-env defaults of {config.env}"), (algo, f"--algo {config.algo} sets"))
    # no widths: the MLP is linear; the CNN keeps its convolutions, which feed the action layer (ARS's [] on an Atari row)
    empty = " (a linear policy)" if config.policy != "cnn" else " (the CNN's convolutions straight into the action layer)"
    for row, what in (*rows, (policy, f"--policy {config.policy} sets")):
        used = ", ".join(f"{k} {v}" + empty * (k == "hidden" and v == []) for k, v in row.items() if getattr(config, k) == v)
        if used:
            lines.append(f"{what} (flipes.rl.presets): {used}; flags and --config override them")
    return lines


def train_command(argv: Sequence[str] | None = None) -> int:
    """``flipes train``: exit status 0, or 130 when interrupted (Ctrl-C, SIGTERM)."""
    from flipes import dist
    from flipes.config import validate
    from flipes.training import train

    try:  # before MPI starts, which waits for the other ranks up to the run's --mpi-timeout (--help: no MPI)
        with warnings.catch_warnings():
            warnings.showwarning = _command_warning(warnings.showwarning)
            parsed: TrainConfig | Exception = parse_train_config(argv)
    except Exception as e:  # said under main_guard once the ranks have met: once per job
        parsed = e
    comm = dist.world(parsed.mpi_timeout if isinstance(parsed, TrainConfig) else TrainConfig.mpi_timeout)

    def run() -> int:
        if isinstance(parsed, Exception):
            raise parsed
        config = parsed
        validate(config, comm.size)  # before any note: a mistake is one line
        notes: list[Callback] = []
        if config.progress and not config.resolve_auto_resume().resume:  # a first start, also by --resume auto
            notes += [Note(line) for line in preset_lines(config)]
        if config.progress:
            notes.append(ResumeNote())
        if config.model and config.progress:
            notes.append(ModelNote())
        result = train(config, comm=comm, callbacks=notes)
        return 130 if result.reason == "interrupted" else 0

    return main_guard(run, comm)


def checkpoint_origin(run: str, checkpoint: str, state: dict[str, Any]) -> str:
    """Which file ``--checkpoint`` read (its ``state``) and the generation its weights are of, numbered as
    metrics.jsonl's rows: ``runs/cp/best.pt, after generation 12`` (``best`` may be far behind ``latest``)."""
    from flipes.runs import checkpoint_path

    path, es = checkpoint_path(run, checkpoint), state["es"]
    if checkpoint == "best-member":
        return f"{path}, its best member, from generation {es['best']['generation']}"
    return f"{path}, after generation {es['generation'] - 1}" if es["generation"] else f"{path}, before any generation"


def evaluate_command(argv: Sequence[str] | None = None) -> tuple[float, float]:
    """``flipes evaluate``: prints the center policy's mean ± std return; returns them."""
    from flipes.config import LIMITS, check_device
    from flipes.runs import evaluate_policy, policy_and_state, run_config, run_env, run_env_kwargs

    args = parse_config(EvaluateConfig, argv, evaluate_help(), prog="flipes evaluate")
    if args.episodes < 1:
        raise UsageError("--episodes", f"must be at least 1, got {args.episodes}", "e.g. --episodes 100")
    if args.episodes > LIMITS["eval_episodes"]:  # train's --eval-episodes bound: one vector env holds them all
        raise UsageError(
            "--episodes", f"{args.episodes} is beyond any use (at most {LIMITS['eval_episodes']:,})", "is it a typo?"
        )
    if args.render:
        render = Path(args.render)
        if render.suffix not in (".gif", ".mp4"):
            raise UsageError("--render", f"{render}: writes .gif or .mp4 files", "e.g. --render policy.gif")
        if not render.parent.is_dir():
            raise UsageError("--render", f"{render}: no directory {str(render.parent)!r}", "create it first, or write elsewhere")
        if render.suffix == ".gif" and importlib.util.find_spec("PIL") is None:  # the [render] extra's pillow
            raise UsageError("--render", f"{render}: GIF needs pillow, which is not installed", "pip install 'flipes[render]'")
        if render.suffix == ".mp4" and not any(importlib.util.find_spec(m) for m in ("imageio_ffmpeg", "av")):  # checked first
            raise UsageError(
                "--render", f"{render}: MP4 needs imageio with ffmpeg", "pip install imageio imageio-ffmpeg, or write a .gif"
            )
        if args.max_frames < 1:
            raise UsageError("--max-frames", f"must be at least 1, got {args.max_frames}", "e.g. --max-frames 500")
    check_device(args.device)
    env_id = run_env(args.run)
    if str(env_id).lower() == "none":
        raise UsageError(args.run, "was trained on a custom fitness (--env none): there is no env to evaluate it on",
                         "use the evaluate() beside your fitness function")  # fmt: skip
    policy, state = policy_and_state(args.run, args.checkpoint, args.device)
    config = run_config(args.run)
    cut = config.get("max_episode_steps") or None  # the run's own cut, for envs without a time limit
    kwargs = run_env_kwargs(config, args.run)  # the env the run trained on: its constructor options too
    shown = render_env(env_id, kwargs) if args.render else None  # an env that cannot render says so before the episodes
    try:
        returns = evaluate_policy(policy, env_id, args.episodes, args.seed, args.device, max_steps=cut, env_kwargs=kwargs)
    except BaseException:
        if shown is not None:
            shown.close()
        raise
    mean, std = returns.mean().item(), returns.std().item() if len(returns) > 1 else 0.0
    what = "best member" if args.checkpoint == "best-member" else "center policy"
    episodes = f"{args.episodes} episode{'s' if args.episodes != 1 else ''}"
    origin = checkpoint_origin(args.run, args.checkpoint, state)
    print(f"{env_id}: {what} return {mean:.2f} ± {std:.2f} over {episodes} ({origin})")
    if args.render:
        n = record(policy, env_id, Path(args.render), args.seed, args.max_frames, cut, env=shown)
        print(f"wrote {args.render} ({n} frames)")
    return mean, std


def evaluate_help() -> str:
    return """Evaluate a run's center policy, and optionally record a video of it.

    flipes evaluate runs/cartpole                      # 100 episodes: mean ± std return
    flipes evaluate runs/cartpole --checkpoint best --episodes 20 --render cartpole.gif

The policy is rebuilt from the run directory's config.json and checkpoint, observation
normalization included; the env is made as the run made it (its --env-kwargs too). --render plays one
episode in gymnasium's own implementation of the env (flipes/ envs are step-for-step copies of those)
and writes a GIF, or an MP4 with imageio-ffmpeg.
"""


def record(
    policy: Any,
    env_id: str,
    path: Path,
    seed: int,
    max_frames: int,
    max_steps: int | None = None,
    env: Any = None,
    env_kwargs: Mapping[str, Any] | None = None,
) -> int:
    """One episode of ``policy`` in gymnasium's own ``env_id`` (cut after ``max_steps`` steps), rendered to a GIF or MP4;
    returns the frames. The policy sees observations in the env's dtype and the env gets actions as its space holds them
    (a Discrete action as a Python int, which toy-text envs index their tables with). ``env``: the env
    :func:`render_env` made for ``env_id`` (made here when None, with the constructor options ``env_kwargs``); closed
    here."""
    import gymnasium as gym
    import numpy as np
    import torch

    from flipes.rl import stepper
    from flipes.rl.envs import base_id

    env = render_env(env_id, env_kwargs) if env is None else env
    obs, first = first_frame(env, env_id, seed)
    frames = [first]
    if not isinstance(frames[0], np.ndarray):
        problem = f"{base_id(env_id)}'s render() returned {type(frames[0]).__name__} in render_mode 'rgb_array'"
        raise UsageError("--render", problem, "return the frame as an (height, width, 3) uint8 array")
    device = next(policy.parameters()).device
    act = stepper(policy)  # a recurrent policy carries its state through the episode
    space = env.action_space
    steps = max_frames - 1 if max_steps is None else min(max_frames - 1, max_steps)  # the reset's frame is the first
    with torch.no_grad():
        for _ in range(steps):
            action = act(torch.as_tensor(np.asarray(obs), device=device)[None])[0].cpu().numpy()  # as the rollouts feed it
            action = int(action) if isinstance(space, gym.spaces.Discrete) else action.astype(space.dtype, copy=False)
            obs, _, terminated, truncated, _ = env.step(action)
            frames.append(env.render())
            if terminated or truncated:
                break
    fps = env.metadata.get("render_fps", 30)
    env.close()
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")  # the suffix says the format; replaced all at once
    try:
        if path.suffix == ".gif":
            from PIL import Image

            images = [Image.fromarray(np.asarray(f)) for f in frames]
            images[0].save(tmp, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        else:
            try:
                import imageio.v2 as imageio

                imageio.mimwrite(tmp, frames, fps=fps)
            except (ImportError, ValueError) as e:
                raise UsageError(
                    "--render",
                    f"{path}: MP4 needs imageio with ffmpeg ({e})",
                    "pip install imageio imageio-ffmpeg, or write a .gif",
                ) from None
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a read-only directory: the file that was there stays
        raise UsageError("--render", f"cannot write {path} ({os_reason(e)})", "choose a path you can write") from None
    finally:
        discard(tmp)
    return len(frames)


def first_frame(env: Any, env_id: str, seed: int) -> tuple[Any, Any]:
    """``env`` reset with ``seed``: its first observation and frame, or a UsageError saying what rendering lacks: a
    renderer that is not installed (classic control's pygame, imported at the first frame) or an OpenGL context."""
    import gymnasium as gym

    obs, _ = env.reset(seed=seed)
    try:
        return obs, env.render()
    except gym.error.DependencyNotInstalled as e:
        raise UsageError(
            "--render", f"rendering {env_id} needs packages that are not installed ({e})", "pip install 'flipes[render]'"
        ) from None
    except Exception as e:  # MuJoCo's FatalError, or an AttributeError of a viewer that found no OpenGL
        if "GL" not in f"{type(e).__name__} {e}" and "opengl" not in str(e).lower():
            raise
        headless = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
        gl = os.environ.get("MUJOCO_GL", "(unset)")
        raise UsageError(
            "--render",
            f"rendering {env_id} found no OpenGL context (MUJOCO_GL={gl}, {'no display' if headless else 'a display'}: {e})",
            "set MUJOCO_GL=egl (an NVIDIA driver or Mesa's libEGL) or MUJOCO_GL=osmesa (Mesa's software renderer)",
        ) from None


def render_env(env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> Any:
    """gymnasium's own ``env_id`` made to render rgb_array frames with the constructor options ``env_kwargs`` (a run's
    ``--env-kwargs``), its Dict or Tuple observations flattened as every engine flattens them; a UsageError saying what
    is missing where it cannot be made (checked before any episode)."""
    import gymnasium as gym

    from flipes.rl.envs import GYMNASIUM_MAKE, EnvOptionError, base_id, check_env_options, gymnasium_entry_options
    from flipes.rl.mujoco_log import makes_mujoco, mujoco_warnings_once
    from flipes.rl.spaces import SpaceError, flat_observation_space

    kwargs = dict(env_kwargs or {})
    if kwargs and base_id(env_id) in gym.registry:  # gymnasium's env may take other options than the engine trained on
        try:
            takes = gymnasium_entry_options(base_id(env_id))
            check_env_options(base_id(env_id), "gymnasium, which renders it", kwargs, takes, also=GYMNASIUM_MAKE)
        except EnvOptionError as e:
            raise UsageError("--render", f"{e} (the run's --env-kwargs)", "evaluate without --render") from None

    headless = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if headless:  # offscreen rendering needs no window: pygame's dummy driver, MuJoCo's EGL (read at the first render)
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        with mujoco_warnings_once(load=makes_mujoco(base_id(env_id))):  # no MUJOCO_LOG.TXT left in the user's directory
            env = gym.make(base_id(env_id), render_mode="rgb_array", **kwargs)  # gymnasium's own env, without an engine prefix
    except gym.error.DependencyNotInstalled as e:
        raise UsageError(
            "--render", f"rendering {env_id} needs packages that are not installed ({e})", "pip install 'flipes[render]'"
        ) from None
    except (gym.error.UnregisteredEnv, gym.error.DeprecatedEnv) as e:  # an engine's own id, e.g. EnvPool's Taxi-v3
        problem = f"gymnasium has no env {base_id(env_id)!r} to render ({' '.join(str(e).split())[:200]})"
        raise UsageError(
            "--render", problem, "evaluate without --render (EnvPool's ids render only where gymnasium has them)"
        ) from None
    except (TypeError, gym.error.Error) as e:  # an env of one's own: no render_mode argument, or a vector env only
        given = "".join(f", {k}={v!r}" for k, v in kwargs.items())
        problem = f"gymnasium.make({base_id(env_id)!r}, render_mode='rgb_array'{given}) failed ({' '.join(str(e).split())[:200]})"
        fix = "register the env with an entry_point whose env takes render_mode and returns rgb_array frames from render()"
        raise UsageError("--render", problem, fix) from None
    try:
        flat = flat_observation_space(env.observation_space)
    except SpaceError:  # the policy was trained on an engine's own variant (EnvPool's Blackjack: a Box; gymnasium's: a Tuple)
        env.close()
        problem = f"gymnasium's {base_id(env_id)} gives {env.observation_space} observations, which flipes cannot flatten"
        raise UsageError("--render", problem, "evaluate without --render") from None
    if flat is not None:  # as every engine flattens them for the policy
        env = gym.wrappers.FlattenObservation(env)
    try:  # a frame now, so that a renderer that is missing (pygame), or no OpenGL, is said before any episode
        first_frame(env, env_id, 0)
    except BaseException:
        env.close()
        raise
    return env


def export_command(argv: Sequence[str] | None = None) -> Path:
    """``flipes export``: a run's policy as a torch.export program; prints and returns its path."""
    from flipes.export import export_policy, program_inputs

    args = parse_config(ExportConfig, argv, EXPORT_HELP, prog="flipes export")
    path = export_policy(args.run, args.out or None, args.checkpoint)
    shown = [
        f"{str(dtype).removeprefix('torch.')} (batch{''.join(f', {d}' for d in shape)})" for dtype, shape in program_inputs(path)
    ]
    call = f"torch.export.load({str(path)!r}).module()"
    if len(shown) == 1:
        print(f"wrote {path}: {call}(obs) maps observations {shown[0]} to actions")
    else:
        state = f"state {shown[1]}, zeros at an episode's start"
        print(f"wrote {path}: {call}(obs, state) -> (actions, state), observations {shown[0]}, {state}")
    return path


EXPORT_HELP = """A run's policy (its center, or --checkpoint best-member) as one torch.export program (.pt2),
deployable with torch alone.

    flipes export runs/cartpole                        # runs/cartpole/policy.pt2
    flipes export runs/cartpole --checkpoint best --out cartpole.pt2

    policy = torch.export.load("runs/cartpole/policy.pt2").module()   # no flipes import
    actions = policy(obs)             # obs (batch, *obs_shape), any batch
    actions, state = policy(obs, state)   # a GRU policy: state zeros (batch, hidden) at an episode's start

The program holds the mean network with its observation normalization and gives the same actions as
flipes evaluate's policy, bit for bit (checked before it is written). It takes observations of the
env's dtype (float32 for flipes/ and classic-control envs, float64 for gymnasium's MuJoCo envs; the
line it prints names it, and a GRU state's shape): cast others to it.
"""


def plot_command(argv: Sequence[str] | None = None) -> Path:
    """``flipes plot``: learning curves of run directories to a PNG; prints and returns its path (with ``--group``, first
    a line per group: its final eval_return, mean ± standard error over seeds)."""
    from flipes.plotting import plot_groups, plot_runs
    from flipes.runs import runs_under
    from flipes.seeds import aggregate_groups, group_runs, seeds_hint, summary, write_csv

    args = parse_config(PlotConfig, argv, PLOT_HELP, prog="flipes plot")
    if not args.runs:
        raise UsageError("flipes plot", "no run directory given", "pass one or more, e.g. flipes plot runs/cartpole")
    empty: list[str] = []  # runs without a complete row
    for run in args.runs:
        if not (Path(run) / "metrics.jsonl").is_file():
            held = runs_under(run)
            if held:  # a folder of runs (RL Zoo's plot scripts take one): name them
                them = "it" if held[0] == "holds 1 run" else "them"
                raise UsageError(run, f"is not a run directory (no metrics.jsonl) but {held[0]}", f"pass {them}: {held[1]}")
            raise UsageError(run, "is not a run directory (no metrics.jsonl)", "pass directories written by flipes train")
        lines, torn = read_jsonl(Path(run) / "metrics.jsonl")
        if torn:  # a crash mid-write; the curves show the complete rows
            print(f"flipes plot: {run}: skipped {torn} incomplete line(s) of metrics.jsonl", file=sys.stderr)
        if not lines:  # a run whose first generation has not ended: the figure would show no curve of it
            empty.append(run)
        if args.x == "timesteps" and lines and all(json.loads(line).get("timesteps", 0) == 0 for line in lines):
            raise UsageError("--x", f"{run} took no env steps (a run with --env none)", "plot it with --x generation or seconds")
    if len(empty) == len(args.runs):  # an empty figure
        which = empty[0] if len(empty) == 1 else f"{' and '.join(empty[:2])}{' ...' if len(empty) > 2 else ''}"
        has = "has" if len(empty) == 1 else "have"
        raise UsageError(which, f"{has} no row in metrics.jsonl yet (no generation has ended)", "plot it once one has")
    for run in empty:
        print(f"flipes plot: {run}: no row in metrics.jsonl yet (no generation has ended): no curve of it", file=sys.stderr)
    out = Path(args.out) if args.out else (Path(args.runs[0]) / "curves.png" if len(args.runs) == 1 else Path("curves.png"))
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UsageError("--out", f"{out}: writes .png, .svg or .pdf files", "e.g. --out curves.png")
    if not out.parent.is_dir() and out.parent.exists():
        raise UsageError("--out", f"{out}: {str(out.parent)!r} is not a directory", "write elsewhere")
    if args.csv and args.group == "none":
        raise UsageError("--csv", "writes the curves of groups of seeds", "add --group config (or --group parent)")
    if args.band != "ci95" and args.group == "none":  # a band is drawn around groups' means only
        raise UsageError("--band", "shades the band around the mean of groups of seeds", "add --group config (or --group parent)")
    if args.csv and not Path(args.csv).parent.is_dir() and Path(args.csv).parent.exists():  # a missing one is made, as --out's
        raise UsageError("--csv", f"{args.csv}: {str(Path(args.csv).parent)!r} is not a directory", "write elsewhere")
    if args.group == "none":
        try:
            path = plot_runs(args.runs, out, args.x)
        except ImportError:
            raise UsageError("flipes plot", "needs matplotlib", "pip install 'flipes[plot]'") from None
        except OSError as e:
            raise UsageError("--out", f"cannot write {out} ({e.strerror or e})", "choose a path you can write") from None
        hint = seeds_hint(args.runs)
        if hint:
            print(hint, file=sys.stderr)
        print(path)
        return path
    groups = group_runs(args.runs, args.group)
    if all(len(group.runs) == 1 for group in groups):  # likely a mistaken grouping: say so, draw anyway
        print(f"flipes plot: --group {args.group}: no two runs are seeds of one setting", file=sys.stderr)
    aggregates = aggregate_groups(groups, args.x)
    try:
        path = plot_groups(groups, aggregates, out, args.x, args.band)
    except ImportError:
        raise UsageError("flipes plot", "needs matplotlib", "pip install 'flipes[plot]'") from None
    except OSError as e:
        raise UsageError("--out", f"cannot write {out} ({e.strerror or e})", "choose a path you can write") from None
    if args.csv:
        try:
            write_csv(groups, aggregates, args.csv, args.x)
        except OSError as e:
            raise UsageError("--csv", f"cannot write {args.csv} ({e.strerror or e})", "choose a path you can write") from None
    print("\n".join(summary(group, metrics, args.x) for group, metrics in zip(groups, aggregates, strict=True)))
    print(path)
    return path


PLOT_HELP = """Learning curves of one or more run directories to a PNG.

    flipes plot runs/cartpole runs/cartpole-seed1 --x timesteps --out curves.png

Each run's metrics.jsonl gives fitness mean and max (population) and, where evaluated, the center
policy's eval_return, against generation, timesteps or seconds.

    flipes plot runs/p64/seed* runs/p256/seed* --group config --csv curves.csv

draws the seeds of each setting as their mean with a 95% t-interval band, one color per setting, labelled by
the options that tell the settings apart (popsize=64, popsize=256). Seeds log at different x (timesteps,
evaluations every k generations): at each x any seed has, every seed counts with its latest value at or before
it (step-wise), and a curve spans only the x where every seed of its setting has data, so each point is the mean
of all of them. A line per setting gives its final eval_return, mean ± standard error over seeds.
"""

COMMANDS: MappingProxyType[str, tuple[Callable[[Sequence[str] | None], Any], str]] = MappingProxyType(
    {
        "train": (train_command, "train a policy or model with FlipES"),
        "evaluate": (evaluate_command, "evaluate a run's center policy (and record a video)"),
        "export": (export_command, "a run's policy as a torch.export program, for torch alone"),
        "plot": (plot_command, "plot the learning curves of runs"),
    }
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flipes`` console command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        lines = ["usage: flipes {train,evaluate,export,plot} [options]   (flipes COMMAND --help for its options)", ""]
        lines += [f"  {name:9s} {text}" for name, (_, text) in COMMANDS.items()]
        print("\n".join(lines))
        return 0 if argv else 2
    if argv[0] == "--version":
        from flipes import __version__

        print(f"flipes {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        report_usage_error(UsageError(argv[0], "unknown command", f"use one of {', '.join(COMMANDS)}"))
    fn = COMMANDS[argv[0]][0]
    try:
        status = fn(argv[1:])
    except KeyboardInterrupt as e:  # a second Ctrl-C or SIGTERM in training (the first one stops after the generation),
        print(interrupted_line(argv[0], e), file=sys.stderr, flush=True)  # or a Ctrl-C in the other commands
        return 130
    except UsageError as e:
        report_usage_error(e)
    except (StorageError, WorkerEndedError) as e:  # a full disk, lost permission, a killed env worker: what is still good
        print_error(e)
        return 1
    return status if isinstance(status, int) else 0


def interrupted_line(command: str, e: KeyboardInterrupt) -> str:
    """The one line of a command stopped at once by ``e``: in training, which signal and what the run keeps."""
    from flipes.interrupts import Interrupted

    if isinstance(e, Interrupted):
        return f"flipes: interrupted: {command} stopped at once by {e.why}; {e.kept}"
    after = "; the run's last checkpoint stays: --resume continues from it" if command == "train" else ""
    return f"flipes: interrupted: {command} stopped at once{after}"


def script(command: str) -> None:
    """``scripts/<command>.py``: the same as ``flipes <command>``."""
    sys.exit(main([command, *sys.argv[1:]]))
