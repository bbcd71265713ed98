"""Each command's options and ``--help`` text: ``flipes train``'s layered over the presets (``parse_train_config``),
``flipes evaluate``'s, ``flipes export``'s and ``flipes plot``'s (``EvaluateConfig``, ``ExportConfig``, ``PlotConfig``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from flipes.cli import POSITIONAL, parse_config
from flipes.config import TrainConfig

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

The progress lines and the last line (why training ended: "solved: ...", "all N generations trained",
...) go to stdout; notes, warnings and errors, each line starting "flipes:", to stderr. Exit status:
0 training ended (solved, or a budget spent: the last line says which), 1 a file of the run cannot be
written or an env worker died, 2 a mistake in the options (one line), 130 stopped by Ctrl-C, SIGTERM or
SIGUSR1 with a checkpoint (--resume DIR continues it).
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
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor options that replace the run's own of the same name, a JSON object (the others are kept): the
    policy on held-out physics, '{"g_range": null, "g": 15}' (a flipes/Pendulum-v1 run trained with g_range)."""
    env: str = ""
    """The run's env id with the module that registers it, mymodule:mine/Task-v0, where nothing else registers it
    (an env of one's own registered by the training script)."""


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
    env: str = ""
    """The run's env id with the module that registers it, mymodule:mine/Task-v0, where nothing else registers it
    (an env of one's own registered by the training script)."""


@dataclass
class PlotConfig:
    """Options of ``flipes plot``."""

    runs: list[str] = field(default_factory=list, metadata=POSITIONAL)
    """Run directories holding metrics.jsonl."""
    x: Literal["generation", "timesteps", "seconds"] = "generation"
    """The x axis."""
    out: str = ""
    """The figure to write, .png, .svg or .pdf (default: RUN/curves.png for one run, curves.png for several)."""
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
    pre = _Parser(add_help=False, prog="flipes train")  # its errors name the command, not python's script
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


def evaluate_help() -> str:
    return """Evaluate a run's center policy, and optionally record a video of it.

    flipes evaluate runs/cartpole                      # 100 episodes: mean ± std return
    flipes evaluate runs/cartpole --checkpoint best --episodes 20 --render cartpole.gif
    flipes evaluate runs/pendulum --env-kwargs '{"g_range": null, "g": 15}'   # one held-out gravity

The policy is rebuilt from the run directory's config.json and checkpoint, observation
normalization included; the env is made as the run made it (its --env-kwargs too, each replaced by
one of this command's --env-kwargs of the same name). --render plays one
episode in gymnasium's own implementation of the env (flipes/ envs are step-for-step copies of those)
and writes a GIF, or an MP4 with imageio-ffmpeg.
"""


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


PLOT_HELP = """Learning curves of one or more run directories to a PNG (or an SVG or PDF, by --out's suffix).

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
