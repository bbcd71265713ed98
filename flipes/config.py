"""The options of a training run (``flipes train``, ``flipes.train``), and their checks."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

from flipes.cli import EMPTY, check_options, check_value, field_type, finite, option_name
from flipes.errors import UsageError

_UNSET: Any = object()
TRAIN_ONLY = ("evaluate", "callbacks")  # flipes.train's keywords that are no options of a run (never recorded)
ShapingName = Literal["auto", "centered-ranks", "z-score", "raw"]
SHAPING_NAMES: tuple[str, ...] = get_args(ShapingName)  # the shapings --shaping names (else module:function)


class _InitSignature:
    """What ``inspect.signature`` (so ``help()`` and a notebook's call tip) gives for a class that defines ``__new__``:
    by itself that one's ``(*args, **kwargs)``; this its ``__init__``'s, the fields of the class it is read on (a
    dataclass subclass's own fields included)."""

    def __get__(self, instance: object, owner: type) -> inspect.Signature:
        sig = inspect.signature(owner.__init__)
        return sig.replace(parameters=list(sig.parameters.values())[1:])  # without self


@dataclass
class TrainConfig:
    """Options of one ES training run. Defaults < the env's row in ``flipes.rl.presets`` (see
    :meth:`for_env`) < a config file < flags."""

    __signature__ = _InitSignature()  # the fields, not __new__'s (*args, **kwargs)

    def __new__(cls, *args: Any, **kwargs: Any) -> TrainConfig:
        # the dataclass's TypeError names a misspelt or foreign keyword, but not the option meant; checked only where
        # there is one: check_options resolves every annotation (a subclass's local type would fail; 70x the cost)
        unknown = {k: v for k, v in kwargs.items() if k not in cls.__dataclass_fields__}
        if unknown:
            check_options(cls, unknown, "flipes.TrainConfig")
        return super().__new__(cls)

    def __post_init__(self) -> None:
        # env_kwargs as JSON reads it back (tuples as lists), so that a resume compares it with config.json's equal;
        # a value that is no JSON is validate()'s to name
        with contextlib.suppress(TypeError):
            self.env_kwargs = check_value("env_kwargs", self.env_kwargs, field_type(dict[str, Any]))

    env: str = "flipes/CartPole-v1"
    """Environment id: flipes/ID (batched torch envs), any gymnasium id (EnvPool's engine when
    installed; prefixes envpool:, gymnasium:, gymnasium-sync:, gymnasium-async: pick one), or none
    with --fitness and --model."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Options for the env's constructor, a JSON object: '{"continuous": true}' (LunarLander-v3),
    '{"ctrl_cost_weight": 0.05}' (HalfCheetah-v5), '{"repeat_action_probability": 0.25}' (EnvPool's Atari); a table in a
    --config file. Given to the engine that makes the env (gymnasium.make_vec, envpool.make, a flipes/ env's class) for
    every env of the run: training, evaluation, flipes evaluate and its --render, flipes export. A name the env does not
    take is refused, naming the ones it does; seeds, copies, device and time limit are flipes' own options."""
    popsize: int = 64
    """Members per generation, N (all processes together)."""
    generations: int = 100
    """Generations to train (a resumed run continues up to this count)."""
    sigma: float = 0.1
    """Perturbation scale σ of every parameter (with --sigma-decay, of generation 0)."""
    sigma_decay: float = 1.0
    """σ's factor per generation, d in (0, 1]: generation g perturbs at max(σ·d^g, --sigma-min), a function of g
    alone, so a resume continues the schedule bit for bit (evosax's OpenES sigma_decay); 1 keeps σ fixed.
    Refused with adaptive σ (--sigma-lr > 0, e.g. --algo pgpe's: add --sigma-lr 0) and with --algo ars."""
    sigma_min: float = 0.0
    """The floor of --sigma-decay's schedule (evosax's sigma_limit): σ decays to it and stays there; 0: none.
    At most --sigma, and only with --sigma-decay < 1 (a fixed or adapted σ has no floor)."""
    lr: float = 0.05
    """Adam's learning rate on the ES gradient (openai-es); with --algo pgpe it sets ClipUp's speed
    (lr·√D/2, see --max-speed), with --algo ars SGD's step lr·σ (with --lr-decay, of generation 0)."""
    lr_decay: float = 1.0
    """--lr's factor per generation, d in (0, 1]: generation g steps at max(lr·d^g, --lr-min), whatever the optimizer
    (Adam's lr; ClipUp's step and max speed alike; ARS's SGD at that times σ; an --optimizer's lr), a function of g
    alone, so a resume continues it bit for bit (evosax's OpenES lrate_decay); 1 keeps lr fixed."""
    lr_min: float = 0.0
    """The floor of --lr-decay's schedule (evosax's lrate_limit): lr decays to it and stays there; 0: none.
    At most --lr, and only with --lr-decay < 1."""
    seed: int = 0
    """Keys all noise and episodes, and seeds torch's, NumPy's and Python's global generators while the model is
    built (torch's with the seed itself) and, per generation, around its fitness, evaluation and tell (a --model,
    --fitness, policy, --shaping or --optimizer of one's own drawing from them): the same seed gives the same
    parameters."""
    groups: int = 0
    """ε groups: members split into this many blocks, each with its own ε; must divide popsize and,
    under MPI, be at least the number of processes. 0: the fewest that work, said in a note where not
    one: under MPI the fewest that give every process as many groups (else the fewest that give each
    one), more where --members-per-pass needs them: pass a number for a run whose result must not
    depend on the process count."""
    mirrored: bool = True
    """Antithetic pairs: member 2k+1 is the negative of member 2k (needs an even popsize per group)."""
    noise_rank: int = 0
    """Rank of each group's ε: 0 is full rank; r >= 1 draws ε = A Bᵀ/√r, a cheaper population forward."""
    algo: Literal["openai-es", "pgpe", "ars"] = "openai-es"
    """The search: openai-es (centered ranks, Adam, fixed σ); pgpe (adds --sigma-lr 0.2 --groups 8 and
    ClipUp, see --max-speed: σ adapts per layer); ars (top --ars-top mirrored directions scaled by the
    reward std, SGD at lr·σ; a linear policy, lr 0.02, σ 0.03). Flags override what each sets. Without it, the
    search the env's preset row names (Hopper-v5, Walker2d-v5: ars, at that row's ARS options), else openai-es."""
    shaping: ShapingName | str = "auto"
    """Fitness shaping, the weight of each member in the ES gradient: auto is the search's own (centered
    ranks; ARS's with --algo ars, which refuses the others); centered-ranks (ranks scaled to [-0.5, 0.5]: invariant to monotone
    transforms of the fitness, robust to outliers); z-score ((F - mean) / std); raw (F itself); or a custom
    one, module:function, called as FN(fitness (N,)) -> weights (N,)."""
    weight_decay: float = 0.0
    """L2 pull of the mean parameters towards 0: weight_decay·θ is added to each step's loss gradient -ĝ
    (OpenAI's ES starter's l2coeff 0.005 is weight_decay 0.005/σ here, its gradient omitting the 1/σ:
    the same steps with Adam at its stepsize)."""
    track_best: bool = False
    """Keep the best member of any generation (highest fitness) in the checkpoints, to evaluate or
    export with --checkpoint best-member (rows log best_member_fitness); with noisy fitness (episodes,
    minibatches) its fitness is optimistic: evaluate it again."""
    sigma_lr: float = 0.0
    """Learning rate of log σ, one σ per layer adapted along its natural gradient (standardized per layer,
    flipes.es.sigma); 0 keeps σ fixed."""
    max_speed: float = 0.0
    """ClipUp's largest step, the length of the whole update (--algo pgpe); its step size is half of it.
    0: lr·√D/2 for D evolved parameters, half the length of Adam's first step at --lr (ClipUp keeps its
    speed where Adam's steps shrink with the gradient's signal)."""
    ars_top: int = 0
    """ARS: mirrored directions kept per generation, the best by max(r+, r-); 0 keeps all."""
    episodes: int = 1
    """Episodes per member and generation (its fitness is their mean return)."""
    reward_shift: float = 0.0
    """Subtracted from every step's reward in the fitness (an alive bonus): fitness_* columns are shifted, while
    eval_return and return_mean (the population's mean episode return, a column only with a shift) keep it."""
    max_episode_steps: int = 0
    """Cut every episode, in training and evaluation, after this many steps (0: the env's own time limit).
    For envs that register none (CliffWalking-v1, an env of your own without truncation), whose rollouts
    otherwise last until every episode has ended by itself."""
    action_noise: float = 0.0
    """Std of Gaussian noise added to the policy's continuous (Box) actions in training rollouts, in the env's action
    units, then clipped to the action space's bounds (OpenAI's ES starter's ac_noise_std, 0.01 in its MuJoCo configs);
    the center policy's evaluation, flipes evaluate and export stay noise-free. Member m's noise at step t of its
    episode k is a function of (seed, generation, m, k, t) alone. 0: none. Not for discrete action spaces."""
    common_episodes: bool = False
    """Common random numbers: every member plays the same --episodes episodes each generation (episode k of each from
    the same reset, physics drawn at the reset included, with the same --action-noise), so that members differ by their
    parameters alone, as in EvoJAX's training rollouts. A generation then sees --episodes starts instead of popsize ×
    --episodes (scripts/bench_common_episodes.py compares the two)."""
    hidden: list[int] = field(
        default_factory=lambda: [32, 32],
        metadata={EMPTY: "no widths: a linear policy, or the CNN's convolutions straight into the action layer"},
    )
    """Hidden layer widths of the MLP policy (--hidden with no width: a linear policy); of the GRU
    policy, its encoder's widths and then the GRU's hidden size (the last width); of the CNN policy, the fully
    connected layers between its convolutions and the action layer (--policy cnn sets 512, the Nature DQN's). Not
    for a --model of one's own (refused there; its config.json keeps the default)."""
    policy: Literal["mlp", "gru", "cnn"] = "mlp"
    """The policy built for the env: mlp (memoryless), gru (a Flipout GRU cell after an MLP
    encoder: memory within an episode, for partially observed envs), or cnn (for image observations, (C, H, W)
    or (H, W, C), at least 36x36: the Nature-DQN convolutions, then --hidden, pixels scaled to [0, 1], no
    observation normalization). Without it, the policy the env's preset row names (EnvPool's Atari ids, e.g.
    Pong-v5: cnn), else mlp."""
    eval_every: int = 2
    """Evaluate the center (mean) policy every this many generations, and at the last one."""
    eval_episodes: int = 100
    """Episodes of each center-policy evaluation (its mean is eval_return)."""
    target: float | Literal["auto"] | None = "auto"
    """Stop once eval_return reaches this; auto: the env's preset target or gymnasium's registered
    reward_threshold; none: never stop early."""
    max_seconds: float = 0.0
    """Stop after this much wall time of this invocation (0: no limit); a resume gets it afresh, so it can
    be a cluster job's time limit with --resume auto (--generations is the run's whole budget)."""
    max_timesteps: int = 0
    """Stop at the end of the generation whose training env steps (the rows' timesteps: all members' episodes, all
    processes, evaluations not counted) reach this many (0: no limit). A total over resumes, as --generations is.
    Needs a fitness that counts steps: an env's, or a flipes.rl.RolloutFitness of one's own."""
    device: str = "cpu"
    """Torch device of the model and of flipes/ envs: cpu, cuda, cuda:N, mps."""
    out: str = ""
    """Run directory for config.json, metrics.jsonl and checkpoints (default: runs/<env name>, with --env
    none runs/<fitness function name>, or the --resume directory)."""
    resume: str = ""
    """Run directory (or checkpoint file) to continue from, bit for bit, with the options it was
    trained with (its config.json; a file's own, those it records); auto: --out if it holds a run, else start
    it (one command for a start and every requeue)."""
    overwrite: bool = False
    """Replace the run in --out if it holds one (its checkpoints and metrics are deleted); without it
    such a directory is refused."""
    fitness: str = ""
    """A custom fitness, module:function, called as FN(model, pop) -> Tensor[pop.size]; an
    evaluate(model) -> float (or a dict of numbers with an eval_return) beside it gives eval_return."""
    model: str = ""
    """A custom model, module:function, called as FN(env) (None with --env none) -> nn.Module."""
    optimizer: str = ""
    """A custom optimizer in place of --algo's (Adam, ClipUp, SGD), module:function, called as
    FN(params) -> torch.optim.Optimizer over exactly those parameters with its own settings; or a
    torch.optim class (e.g. torch.optim.sgd:SGD), built at --lr."""
    checkpoint_every: int = 10
    """Write checkpoint.pt every this many generations (and on Ctrl-C/SIGTERM and at the end)."""
    progress: bool = True
    """Print a progress line per generation and notes about engines and presets (false: only the line that says
    how training ended, and a UserWarning for what may not be meant: dropout in training mode, a callback's saved
    state that no callback takes back)."""
    tensorboard: bool = True
    """Write TensorBoard scalars to <out>/tensorboard when the tensorboard package is installed."""
    plot: bool = True
    """Draw the run's curves to <out>/curves.png at the end (matplotlib; false: a sweep of many short runs skips
    its 0.2-0.3 s of CPU a run and the PNGs; flipes plot DIR draws them later all the same)."""
    wandb: bool = False
    """Log metrics to Weights & Biases (pip install 'flipes[wandb]'; WANDB_MODE=offline needs no account)."""
    wandb_project: str = "flipes"
    """Weights & Biases project of the run."""
    threads: int = 1
    """Torch CPU threads per process (0: torch's default); small rollout ops run best on one."""
    env_threads: int = 0
    """EnvPool threads or gymnasium worker processes per process (0: this process's share of the cores)."""
    members_per_pass: int = 0
    """Members evaluated per forward pass (0: all of this process's members at once). Fewer evaluates
    the population in parts of this many, one after another (``pop.split``): for a model whose
    activations over the whole population do not fit memory; the env then holds members-per-pass ×
    episodes copies. A divisor of an ε group's members (popsize / groups) or a multiple of them. Each
    member has the perturbation and episodes it has in one pass; its fitness differs at most by the
    rounding of a forward pass over fewer rows (float32 CartPole: the same bits)."""
    hold_noise: bool = True
    """With --members-per-pass: false samples each part's noise when the part is evaluated, and again in
    the update, instead of holding every member's noise for the generation (FlipES(hold_noise=False)):
    memory for one part's noise, for twice the sampling. --groups of at least popsize / members-per-pass
    (the default 0 takes them where such parts fit; a part inside one group holds that group's noise; one
    group per process is refused). At the same --groups the members are the same; the update differs by rounding."""
    comm: Literal["allreduce", "seeds"] = "allreduce"
    """Under MPI: allreduce sums gradients; seeds exchanges only fitness values and rebuilds all noise."""
    check_every: int = 10
    """Under MPI: verify every this many generations that all ranks hold identical parameters and buffers
    (the model's state dict), and stop with an error naming the entries that differ."""
    mpi_timeout: float = 300.0
    """Under MPI: end the job, naming the rank(s) that did not arrive, when a rank waits longer than
    this many seconds for the others in one exchange, or for them to start (MPI's start and each
    train() call's first exchange; 0: wait forever). Keep it above the slowest generation's rollout
    plus rank 0's evaluation and checkpoint, and above any work a script does on one rank before train()."""

    @classmethod
    def for_env(cls, env: str = _UNSET, **overrides: Any) -> TrainConfig:
        """Defaults < the env's row of ``flipes.rl.presets`` (with its ``algo``'s layers, the row's own search
        unless ``algo=`` names another) < the options of the run being resumed (``resume=``) < ``overrides``,
        all checked strictly."""
        from flipes.rl.presets import defaults, policy_preset, row_algo, row_policy

        if env is not _UNSET:
            overrides["env"] = env
        resume = overrides.get("resume")
        if resume == "auto":
            resume = str(default_run_dir(overrides.get("out", ""), overrides.get("env", cls.env), overrides.get("fitness", "")))
        saved = saved_options(resume) if resume else {}
        name = overrides.get("env", saved.get("env", cls.env))
        env_id = name if isinstance(name, str) else ""
        algo = overrides.get("algo", saved.get("algo", row_algo(env_id)))  # a row may name its search
        policy = overrides.get("policy", saved.get("policy", row_policy(env_id)))  # a row may name its policy
        # their rows as the checked values name them: algo="PGPE" is "pgpe" (choices are taken in any case)
        algo, policy = (v.lower() if isinstance(v, str) else v for v in (algo, policy))
        values = {**defaults(env_id, algo), **policy_preset(policy, env_id), **saved, **overrides}
        return cls(**check_options(cls, values, "flipes.train", also=TRAIN_ONLY))

    def replace(self, **overrides: Any) -> TrainConfig:
        """A copy with ``overrides`` (checked strictly)."""
        return dataclasses.replace(self, **check_options(type(self), overrides, "flipes.train", also=TRAIN_ONLY))

    def run_dir(self) -> Path:
        """Where the run is written: ``out``, else the ``resume`` directory, else ``runs/<env name>``
        (``runs/<fitness function name>`` without an env)."""
        if self.resume and self.resume != "auto" and not self.out:
            return resume_dir(self.resume)
        return default_run_dir(self.out, self.env, self.fitness)

    def resolve_auto_resume(self) -> TrainConfig:
        """``resume="auto"`` made concrete: the run directory if it holds a checkpoint, else no resume."""
        if self.resume != "auto":
            return self
        here = self.run_dir()
        return dataclasses.replace(self, out=str(here), resume=str(here) if (here / "checkpoint.pt").exists() else "")


def resume_dir(resume: str) -> Path:
    """The run directory of a ``--resume`` value: the directory itself, or a checkpoint file's directory."""
    path = Path(resume)
    return path.parent if path.suffix == ".pt" else path


def default_run_dir(out: str, env: str, fitness: Any = "") -> Path:
    """``out``, or where it is empty ``runs/<env name>``; with ``env="none"``, ``runs/<fitness function
    name>`` (``mod:fn`` or a function's ``__name__``), so that runs of different objectives do not meet in
    one directory; ``runs/none`` where the fitness has no name (a lambda, or none given)."""
    if out:
        return Path(out)
    name = env.split("/")[-1].split(":")[-1]
    if env.lower() == "none":
        given = fitness.rsplit(":", 1)[-1] if isinstance(fitness, str) else getattr(fitness, "__name__", "")
        name = given if given.isidentifier() else name
    return Path("runs") / re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def saved_options(resume: str) -> dict[str, Any]:
    """The options a run was trained with (its ``config.json``), to continue it with: all but
    ``resume``, ``out``, ``overwrite`` and ``progress`` (how this invocation prints). Empty where there is
    no readable config.json nor checkpoint (the resume then says what is wrong); the checkpoint's
    options where config.json is missing or damaged. A checkpoint file (``DIR/previous.pt``, or one copied
    beside another run's config.json) continues with the options it records itself, whatever its directory's
    config.json says: that file describes the directory's latest checkpoint, which may be another run's."""
    config = resume_dir(resume) / "config.json"
    source = str(config)
    try:
        saved = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = None
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"resume", "out", "overwrite", "progress"}
    if Path(resume).is_file():
        from flipes.checkpoint import CheckpointError, load_checkpoint

        try:
            recorded = load_checkpoint(resume, map_location="cpu").get("config")
        except (CheckpointError, OSError):
            recorded = None  # the resume says what is wrong with the file
        if isinstance(recorded, dict):  # config.json only for an option the checkpoint lacks (one written before it)
            saved, source = {**(saved if isinstance(saved, dict) else {}), **recorded}, f"{resume} (the options it records)"
    if not isinstance(saved, dict) or not names <= saved.keys():
        from flipes.checkpoint import CheckpointError, load_checkpoint

        try:  # the checkpoint records the options too
            recorded = load_checkpoint(resume, map_location="cpu").get("config")
        except (CheckpointError, OSError):
            recorded = None
        if isinstance(saved, dict):  # an option config.json lost (edited by hand) is the checkpoint's, not the default
            saved = {**(recorded if isinstance(recorded, dict) else {}), **saved}
        elif isinstance(recorded, dict):
            saved, source = recorded, f"{resume} (the options in its checkpoint)"
        else:
            return {}
    if "rank" in saved and "noise_rank" not in saved:  # runs saved before the option's rename
        saved["noise_rank"] = saved.pop("rank") or 0
    if "policy" not in saved:  # runs saved before --policy existed trained the MLP (not an Atari row's CNN)
        saved["policy"] = "mlp"
    kept = {k: v for k, v in saved.items() if k in names}
    try:  # checked here, so that a hand-edited value is named in its file, not as a flag nobody passed
        check_options(TrainConfig, kept, source)
    except UsageError as e:
        raise UsageError(
            source,
            f"the resumed run's option {e.problem}",
            "restore the value the run was trained with (its checkpoint.pt holds it)",
        ) from None
    return kept


# upper bounds past which a value is a typo, not a plan (and would exhaust memory or overflow)
LIMITS: MappingProxyType[str, int] = MappingProxyType(
    {"popsize": 2**24, "eval_episodes": 2**20, "episodes": 2**16, "seed": 2**32 - 1}
)

_AT_LEAST_ONE = ("popsize", "generations", "episodes", "eval_every", "eval_episodes", "checkpoint_every", "check_every")


ADAPTIVE_GROUPS = 8  # ε groups adaptive σ wants at the least (flipes.es.sigma: a weight's σ sees G samples a generation)


def _group_counts(popsize: int, processes: int, mirrored: bool) -> list[int]:
    """The --groups values that work: dividing --popsize, at least one per process, and with mirrored
    sampling an even number of members each."""
    divisors = {d for i in range(1, math.isqrt(popsize) + 1) if popsize % i == 0 for d in (i, popsize // i)}  # not O(popsize)
    return sorted(g for g in divisors if g >= processes and not (mirrored and (popsize // g) % 2))


def _groups_fix(popsize: int, processes: int, mirrored: bool) -> str:
    """The --groups values that work (:func:`_group_counts`); or, where none does, the --popsize to choose."""
    fits = _group_counts(popsize, processes, mirrored)
    if fits:
        return f"use --groups {fits[0]}" if len(fits) == 1 else f"use one of --groups {fits}"
    step = 2 * processes if mirrored else processes
    need = f"a multiple of {step}" + (" (an even group for every process)" if mirrored else " (a group for every process)")
    return f"no --groups fits --popsize {popsize}: use a --popsize that is {need}, e.g. {max(step, popsize // step * step)}"


def resolve_groups(config: TrainConfig, processes: int = 1) -> tuple[TrainConfig, str]:
    """``groups=0`` made a number for ``processes``, and the note that says so ("" where one group runs on one process).

    Each process evaluates whole ε groups, so the fewest counts that work with the other options: one on one
    process; under MPI first one that gives every process as many groups (no process waits for another with
    more members), else the fewest that give each process one; more where --members-per-pass asks for them
    (--hold-noise false samples a part's groups alone: parts of whole groups, at least --popsize / --members-per-pass
    groups, where such parts fit), and at least 8 with adaptive σ (--sigma-lr > 0: a Flipout weight's σ learns
    from the variation between groups alone; fewer where --popsize has no such count). The run records the number,
    so a resume keeps it on any process count: a resumed run's ``groups=0`` is the count it recorded.

    Raises:
        UsageError: no count fits --popsize on ``processes`` processes, naming the --popsize to choose.
    """
    if config.groups != 0 or not 1 <= config.popsize <= LIMITS["popsize"]:  # a bad popsize is validate's to name
        return config, ""
    if config.resume:  # a TrainConfig (or --groups 0) that leaves the count to the run being resumed
        where = config.resolve_auto_resume().resume
        saved = saved_options(where).get("groups") if where else None
        if isinstance(saved, int) and saved > 0:
            return dataclasses.replace(config, groups=saved), ""
    fits = _group_counts(config.popsize, processes, config.mirrored)
    if not fits:
        if processes == 1:  # an odd popsize with mirrored sampling: validate names it
            return dataclasses.replace(config, groups=1), ""
        fix = _groups_fix(config.popsize, processes, config.mirrored)
        raise UsageError("--groups", f"0 (the default) finds no count for {processes} processes", fix)
    # adaptive σ learns a Flipout weight's σ from the variation between ε groups alone: at least ADAPTIVE_GROUPS
    floor = min(ADAPTIVE_GROUPS, max(fits)) if config.sigma_lr > 0 else 1
    fewest = min(fits, key=lambda g: (g < floor, g % processes != 0, g))
    size = config.members_per_pass
    whole = size > 0 and not config.hold_noise  # parts that sample their own groups' noise: parts of whole groups first
    order = sorted(fits, key=lambda g: (whole and config.popsize // g > size, g < floor, g % processes != 0, g))
    for groups in order:
        try:
            _check_members_per_pass(dataclasses.replace(config, groups=groups), config.popsize // groups, processes)
        except UsageError:
            continue
        break
    else:
        groups = fewest  # validate names what is wrong with the parts
    if groups == 1:
        return dataclasses.replace(config, groups=1), ""
    why = [f"each of the {processes} processes evaluates whole ε groups"] if processes > 1 else []
    if floor > 1 and groups >= floor > min(fits, key=lambda g: (g % processes != 0, g)):
        why.append(f"--sigma-lr {config.sigma_lr:g} learns a Flipout weight's σ from the variation between groups alone "
                   f"(at least {ADAPTIVE_GROUPS} where --popsize allows)")  # fmt: skip
    if groups != fewest:
        parts = f"--members-per-pass {config.members_per_pass}" + (" with --hold-noise false" * (not config.hold_noise))
        why.append(f"{parts} needs parts of whole groups")
    note = (
        f"--groups {groups}: {', and '.join(why)} (--groups 0, the default, takes the fewest that work); pass --groups for "
        "a run whose members do not depend on the process count or the parts"
    )
    return dataclasses.replace(config, groups=groups), note


def sigma_lr_by_pgpe(config: TrainConfig) -> bool:
    """Whether ``config.sigma_lr`` is most likely ``--algo pgpe``'s preset, not a flag: an error about it says so."""
    from flipes.rl.presets import ALGOS  # here: presets imports this module's TrainConfig

    return config.algo == "pgpe" and config.sigma_lr == ALGOS["pgpe"]["sigma_lr"]


def validate(config: TrainConfig, processes: int = 1) -> None:
    """Check what can be checked before anything is built (``processes``: of the MPI job).

    Raises:
        UsageError: naming the option, what is wrong with it and what to do.
    """
    check_options(TrainConfig, dataclasses.asdict(config), "flipes.train")  # types, when built by hand
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    if config.groups < 0:
        raise UsageError("--groups", f"must be at least 0, got {config.groups}", "0 takes the fewest that fit, e.g. --groups 8")
    config, _ = resolve_groups(config, processes)
    for name in _AT_LEAST_ONE:
        if getattr(config, name) < 1:
            opt = option_name(name)
            raise UsageError(opt, f"must be at least 1, got {getattr(config, name)}", f"e.g. {opt} {defaults[name]}")
    meanings = {
        "threads": "torch's default",
        "env_threads": "this process's share of the cores",
        "noise_rank": "full-rank noise",
        "max_episode_steps": "the env's own time limit",
        "max_timesteps": "no limit",
    }
    for name in ("threads", "env_threads", "noise_rank", "seed", "max_episode_steps", "max_timesteps"):
        if getattr(config, name) < 0:
            fix = f"0 means {meanings[name]}" if name in meanings else "any integer >= 0 is a seed"
            raise UsageError(option_name(name), f"must be 0 or positive, got {getattr(config, name)}", fix)
    for name, limit in LIMITS.items():
        if getattr(config, name) > limit:
            raise UsageError(option_name(name), f"{getattr(config, name)} is beyond any use (at most {limit:,})", "is it a typo?")
    big = [h for h in config.hidden if h > 2**16]
    if big:
        raise UsageError("--hidden", f"widths {big} are beyond any use (at most {2**16:,})", "is it a typo?")
    for name in ("out", "resume"):  # "~" only a shell expands: a config file's or Python's would name a directory "./~"
        path = getattr(config, name)
        if path.startswith("~") and os.path.expanduser(path) != path:  # ~ or ~user
            fix = f"write it in full ({os.path.expanduser(path)}), or relative to the working directory"
            raise UsageError(option_name(name), f"{path!r} starts with '~', which only a shell expands", fix)
    if config.resume and config.overwrite:
        raise UsageError(
            "--overwrite",
            "with --resume: a resumed run continues its directory",
            "drop --overwrite to continue the run, or --resume to start over",
        )
    check_threads("--threads", config.threads)
    check_threads("--env-threads", config.env_threads, "this process's share", per_core=4)
    finite("--sigma", config.sigma, 0, strict=True, fix="σ is the perturbation scale, e.g. --sigma 0.05")
    finite("--sigma-lr", config.sigma_lr, 0, fix="0 keeps σ fixed; e.g. --sigma-lr 0.2 adapts it")
    if config.sigma_lr > 0 and config.noise_rank:
        by_preset = ", --algo pgpe's preset unless given" if sigma_lr_by_pgpe(config) else ""
        raise UsageError(
            "--sigma-lr",
            f"adaptive σ ({config.sigma_lr:g}{by_preset}) needs full-rank noise (its score is the Gaussian one), "
            f"not --noise-rank {config.noise_rank}",
            "use --noise-rank 0, or --sigma-lr 0 to keep σ fixed",
        )
    _check_sigma_schedule(config)
    finite("--max-speed", config.max_speed, 0, fix="0 derives it from --lr; e.g. --max-speed 0.15")
    # a resume's values may be the saved run's: restore names a change of search against them (--resume auto resumes
    # only where the run directory holds a checkpoint; else it is a new run)
    if not config.resolve_auto_resume().resume:
        _check_rule_options(config)
    if config.ars_top < 0 or config.ars_top > config.popsize // 2:
        from flipes.rl.presets import defaults as preset  # here: presets imports this module's TrainConfig

        env_id = config.env if isinstance(config.env, str) else ""
        row = preset(env_id, config.algo).get("ars_top") if config.ars_top > 0 else None  # Hopper-v5's 4 beside --popsize 4
        by_preset = f" ({env_id}'s preset unless given)" if row == config.ars_top else ""
        raise UsageError(
            "--ars-top",
            f"{config.ars_top}{by_preset} of {config.popsize // 2} mirrored pairs",
            f"use 1 ... {config.popsize // 2}, or 0 for all",
        )
    env_id = config.env if isinstance(config.env, str) else ""
    if config.model:
        from flipes.rl.presets import row_policy

        if config.policy not in ("mlp", row_policy(env_id)):  # the row's own policy is not asked for: --model replaces it
            raise UsageError("--policy", f"{config.policy} is built for an env, and --model builds the model", "drop one of them")
    if config.model and not config.resume:  # widths size flipes' policy: a model of one's own would train as it is
        from flipes.rl.presets import defaults as preset
        from flipes.rl.presets import policy_preset

        # the widths the presets give this policy (--policy mlp on an Atari id: the MLP's, not the row's CNN's)
        widths = {**preset(env_id, config.algo), **policy_preset(config.policy, env_id)}.get("hidden", TrainConfig().hidden)
        if list(config.hidden) != list(widths):
            raise UsageError(
                "--hidden",
                f"{config.hidden} sizes the policy flipes builds for an env, and --model builds the model",
                "drop --hidden and size the model in its own code",
            )
    if config.policy == "gru" and not config.hidden:
        by_ars = " (--algo ars sets none: its linear policy, unless --hidden is given)" if config.algo == "ars" else ""
        raise UsageError("--hidden", f"the GRU policy needs at least one width (its hidden size){by_ars}", "e.g. --hidden 64 64")
    from flipes.es import shaping  # here: flipes.search imports this module
    from flipes.search import own_shaping

    rule = own_shaping(config.shaping)  # any spelling of FlipES's own rule (flipes.shaping:z_score), as it refuses
    if rule is shaping.ars and config.algo != "ars":  # spelt --shaping flipes.shaping:ars: FlipES's rules for it
        if config.sigma_lr > 0:
            by_preset = " (--algo pgpe's preset unless given)" if sigma_lr_by_pgpe(config) else ""
            raise UsageError(
                "--sigma-lr",
                f"{config.sigma_lr:g}{by_preset} with ARS shaping, whose ±w pairs share ‖z‖²: σ would never move",
                "use --sigma-lr 0, or --algo ars",
            )
        if not config.mirrored:
            raise UsageError("--mirrored", "ARS shaping compares the returns of mirrored pairs", "leave --mirrored on")
    if config.algo == "ars" and config.sigma_lr > 0:  # its step is α·σ₀ over the current σ: σ₀/σ times ARS's
        raise UsageError(
            "--sigma-lr", "ARS steps at a fixed σ (its step size is lr·σ)", "use --sigma-lr 0 with --algo ars, or --algo pgpe"
        )
    if config.algo == "ars" and not config.mirrored:
        raise UsageError(
            "--mirrored", "ARS compares the returns of mirrored pairs (r+, r-)", "leave --mirrored on with --algo ars"
        )
    # a negative step size is how some libraries minimize (FlipES's own refusal names the same)
    minimize = "training maximizes the fitness: to minimize a loss, return minus the loss from the fitness and keep lr positive, "
    finite("--lr", config.lr, 0, strict=True, fix=(minimize if config.lr < 0 else "") + "e.g. --lr 0.05")
    _check_lr_schedule(config)
    finite("--weight-decay", config.weight_decay, 0, fix="0 is none; e.g. --weight-decay 0.005")
    if config.shaping not in SHAPING_NAMES and ":" not in config.shaping:
        raise UsageError(
            "--shaping",
            f"{config.shaping!r} is none of {', '.join(SHAPING_NAMES)} and not module:function",
            "e.g. --shaping centered-ranks",
        )
    if config.algo == "ars" and config.shaping != "auto":
        raise UsageError(
            "--shaping", f"{config.shaping} with --algo ars, whose step is its own weighting of mirrored pairs", "drop --shaping"
        )
    if config.popsize == 1 and config.algo != "ars" and rule in (shaping.centered_ranks, shaping.z_score):
        score = "z-score" if rule is shaping.z_score else "centered rank"
        raise UsageError(
            "--popsize",
            f"1 member: its {score} is always 0, so no generation would move the parameters",
            "use --popsize 2 or more (--shaping raw takes one member's fitness as it is)",
        )
    finite("--reward-shift", config.reward_shift, fix="e.g. --reward-shift 1 removes an alive bonus of 1 per step")
    finite("--action-noise", config.action_noise, 0, fix="0 is none; e.g. --action-noise 0.01 (OpenAI's ES starter's)")
    if config.action_noise and config.fitness:
        raise UsageError(
            "--action-noise",
            f"adds noise in flipes' rollouts, and --fitness {config.fitness} computes the fitness itself",
            "drop --action-noise, or roll out with flipes.rl.RolloutFitness(env, action_noise=...) in that fitness",
        )
    if config.common_episodes and config.fitness:
        raise UsageError(
            "--common-episodes",
            f"seeds the episodes of flipes' rollouts, and --fitness {config.fitness} computes the fitness itself",
            "drop --common-episodes, or roll out with flipes.rl.RolloutFitness(env, common_episodes=True) in that fitness",
        )
    _check_rollout_options(config)
    finite("--max-seconds", config.max_seconds, 0, allow_inf=True, fix="0 means no limit")
    finite("--mpi-timeout", config.mpi_timeout, 0, allow_inf=True, fix="0 means wait forever")
    if isinstance(config.target, float):
        finite("--target", config.target, fix="--target none trains all generations; --target auto uses the env's")
    bad = [h for h in config.hidden if h < 1]
    if bad:
        raise UsageError(
            "--hidden",
            f"layer widths must be at least 1, got {config.hidden}",
            "e.g. --hidden 64 64; --hidden with no width is a linear policy",
        )
    by_preset = " (--algo pgpe's preset unless given)" if config.algo == "pgpe" and config.groups == 8 else ""
    if config.popsize % config.groups:
        fix = _groups_fix(config.popsize, processes, config.mirrored)
        raise UsageError("--groups", f"{config.groups}{by_preset} does not divide --popsize {config.popsize}", fix)
    if config.groups < processes:
        fix = _groups_fix(config.popsize, processes, config.mirrored)
        if config.resume:  # a resume keeps the run's count: another one is refused as another run's
            fix = f"resume the run on at most {config.groups} process(es) (a run keeps its --groups; {fix} for a new run)"
        raise UsageError("--groups", f"{config.groups} group(s){by_preset} cannot be shared by {processes} processes", fix)
    per_group = config.popsize // config.groups
    if config.mirrored and per_group % 2:
        fix = _groups_fix(config.popsize, processes, config.mirrored)
        raise UsageError(
            "--popsize",
            f"mirrored sampling pairs members, but each of the {config.groups} group(s){by_preset} has {per_group} (odd)",
            f"{fix}, or --mirrored false",
        )
    _check_members_per_pass(config, per_group, processes)
    if config.env.strip().lower() == "none":
        if not config.fitness:
            raise UsageError(
                "--env", "none needs a custom fitness", "pass --fitness module:function (and --model module:function)"
            )
        if not config.model:
            raise UsageError("--env", "none needs a custom model", "pass --model module:function that returns an nn.Module")
    elif not config.env.strip():
        raise UsageError("--env", "is empty", "pass an env id, e.g. --env flipes/CartPole-v1")
    _check_env_kwargs(config)
    check_device(config.device)
    if config.env.strip().lower() != "none" or config.sigma_lr:  # a fitness of one's own may be float32 throughout
        check_float64(config.device)


def _check_rule_options(config: TrainConfig) -> None:
    """--max-speed and --ars-top belong to one search each (flipes.search.search_rule reads them there alone): given
    to another, or beside an --optimizer of one's own, either would be ignored."""
    if config.max_speed > 0 and config.optimizer:
        raise UsageError(
            "--max-speed",
            f"{config.max_speed:g} is the speed of --algo pgpe's ClipUp, and --optimizer {config.optimizer} replaces it",
            "drop --max-speed and set the speed in your optimizer, or drop --optimizer",
        )
    if config.max_speed > 0 and config.algo != "pgpe":
        raise UsageError(
            "--max-speed",
            f"{config.max_speed:g} is the speed of --algo pgpe's ClipUp, and this run's search is {config.algo}",
            "drop --max-speed, or use --algo pgpe",
        )
    if config.ars_top > 0 and config.algo != "ars":
        raise UsageError(
            "--ars-top",
            f"{config.ars_top} keeps --algo ars's best directions, and this run's search is {config.algo}",
            "drop --ars-top, or use --algo ars",
        )


# options of flipes' own rollouts (flipes.rl.RolloutFitness) that a --fitness, computing the fitness itself, would ignore:
# (their unset value, how RolloutFitness takes them); --action-noise and --common-episodes are refused beside it in validate
ROLLOUT_OPTIONS: MappingProxyType[str, tuple[Any, str]] = MappingProxyType(
    {"episodes": (1, "episodes=..."), "reward_shift": (0.0, "reward_shift=..."), "max_episode_steps": (0, "max_steps=...")}
)


def _check_rollout_options(config: TrainConfig) -> None:
    """Refuse an option of flipes' rollouts beside a --fitness, which replaces them: the run would ignore it. A value the
    env's preset row sets (Hopper-v5's --reward-shift 1) was not asked for, and a resume keeps what its run recorded."""
    if not config.fitness or config.resolve_auto_resume().resume:
        return
    from flipes.rl.presets import defaults as preset  # here: presets imports this module's TrainConfig

    env_id = config.env.strip()
    row = {} if env_id.lower() == "none" else preset(env_id, config.algo)
    for name, (unset, spelt) in ROLLOUT_OPTIONS.items():
        value = getattr(config, name)
        if value != unset and value != row.get(name, unset):
            opt = option_name(name)
            raise UsageError(
                opt,
                f"{value:g} sets flipes' rollouts, and --fitness {config.fitness} computes the fitness itself",
                f"drop {opt}, or roll out with flipes.rl.RolloutFitness(env, {spelt}) in that fitness",
            )


def _check_env_kwargs(config: TrainConfig) -> None:
    """--env-kwargs: options of an env, none of them one that flipes sets itself (the env checks the rest when made)."""
    from flipes.rl.envs import OWN_OPTIONS

    if config.env_kwargs and config.env.strip().lower() == "none":
        raise UsageError("--env-kwargs", "options for an env's constructor, and --env is none", "drop --env-kwargs")
    for key in config.env_kwargs:
        if key in OWN_OPTIONS:
            problem = f"option {key!r} is flipes' own ({OWN_OPTIONS[key]})"
            raise UsageError("--env-kwargs", problem, "leave it out of --env-kwargs")


SIGMA_VANISHES = 1e-12  # a decayed σ below it perturbs no float32 weight above 1e-5 (and 1/σ² nears float32's range)


def _check_decay(what: str, decay_flag: str, decay: float, floor_flag: str, floor: float, example_floor: str) -> None:
    """A schedule's factor per generation in (0, 1] and its floor >= 0: --sigma-decay/--sigma-min, --lr-decay/--lr-min."""
    fix = f"{what}·d^g at generation g: e.g. {decay_flag} 0.999; 1 keeps {what} fixed"
    finite(decay_flag, decay, 0, strict=True, fix=fix)
    if decay > 1:
        raise UsageError(decay_flag, f"must be at most 1, got {decay!r} ({what} would grow each generation)", fix)
    finite(floor_flag, floor, 0, fix=f"0 is no floor; e.g. {floor_flag} {example_floor}")


def _check_sigma_schedule(config: TrainConfig) -> None:
    """--sigma-decay and --sigma-min: a decay in (0, 1], a floor in [0, --sigma], each with the rule it belongs to."""
    from flipes.search import SigmaDecay

    decay, floor, sigma = config.sigma_decay, config.sigma_min, config.sigma
    _check_decay("σ", "--sigma-decay", decay, "--sigma-min", floor, "0.01")
    # without a decay first: a floor below --sigma would be refused then too
    if floor > 0 and decay == 1:
        adapted = f", or adapted by --sigma-lr {config.sigma_lr:g}" if config.sigma_lr > 0 else ""
        # a decay alone is refused beside adaptive σ and with ARS: name what it needs too, or no decay
        unadapt = "--sigma-lr 0 " if config.sigma_lr > 0 else ""
        fix = f"add {unadapt}--sigma-decay d < 1, e.g. {unadapt}--sigma-decay 0.999, or drop --sigma-min"
        if config.algo == "ars":
            fix = "drop --sigma-min (ARS steps at a fixed σ), or use --algo openai-es with --sigma-decay d < 1"
        why = f"{floor:g} floors --sigma-decay's schedule, and --sigma-decay is 1 (σ fixed{adapted})"
        raise UsageError("--sigma-min", why, fix)
    if floor > sigma:
        raise UsageError(
            "--sigma-min",
            f"{floor:g} is above --sigma {sigma:g}, where σ starts",
            f"use a floor below it, e.g. --sigma-min {sigma / 10:g}",
        )
    if decay == 1:
        return
    if config.sigma_lr > 0:
        by_preset = ", --algo pgpe's preset unless given" if sigma_lr_by_pgpe(config) else ""
        raise UsageError(
            "--sigma-decay",
            f"{decay:g} schedules σ, and --sigma-lr ({config.sigma_lr:g}{by_preset}) adapts it: one rule sets σ",
            "add --sigma-lr 0 to schedule σ (--algo pgpe keeps ClipUp), or drop --sigma-decay to adapt it",
        )
    if config.algo == "ars":  # its step is α·σ₀ over the current σ, as with --sigma-lr
        raise UsageError(
            "--sigma-decay",
            "ARS steps at a fixed σ (its step size is lr·σ)",
            "drop --sigma-decay with --algo ars, or use --algo openai-es",
        )
    last = SigmaDecay(sigma, decay, floor)(config.generations - 1)
    if last < SIGMA_VANISHES:
        raise UsageError(
            "--sigma-decay",
            f"{decay:g} takes σ to {last:.3g} by generation {config.generations - 1}, too small to perturb float32 weights",
            f"{'raise the floor' if floor else 'set a floor'}, e.g. --sigma-min {sigma / 100:g}, or a decay closer to 1",
        )


def _check_lr_schedule(config: TrainConfig) -> None:
    """--lr-decay and --lr-min: a decay in (0, 1], a floor in [0, --lr] that only a decay reaches."""
    decay, floor = config.lr_decay, config.lr_min
    _check_decay("lr", "--lr-decay", decay, "--lr-min", floor, "0.001")
    if floor > 0 and decay == 1:
        raise UsageError(
            "--lr-min",
            f"{floor:g} floors --lr-decay's schedule, and --lr-decay is 1 (lr fixed)",
            "add --lr-decay d < 1, e.g. --lr-decay 0.999, or drop --lr-min",
        )
    if floor > config.lr:
        raise UsageError(
            "--lr-min", f"{floor:g} is above --lr {config.lr:g}, where lr starts", f"e.g. --lr-min {config.lr / 10:g}"
        )


def _check_members_per_pass(config: TrainConfig, per_group: int, processes: int) -> None:
    """Parts of exactly --members-per-pass members on every process: a divisor of a group, or whole
    groups dividing each process's block (an env holds a fixed number of copies)."""
    size = config.members_per_pass
    if size < 0:
        raise UsageError("--members-per-pass", f"must be 0 or positive, got {size}", "0 evaluates all members in one pass")
    if not config.hold_noise and not size:
        raise UsageError(
            "--hold-noise",
            "false samples the noise part by part, and the members are evaluated in one pass",
            f"add --members-per-pass (with --groups {config.groups}: a divisor of {per_group} or a multiple of it)",
        )
    blocks = [(r + 1) * config.groups // processes - r * config.groups // processes for r in range(processes)]
    split = [b for b in blocks if size < b * per_group]  # the processes that evaluate in more than one pass
    if size and not split and not config.hold_noise:
        raise UsageError(
            "--hold-noise",
            f"false with --members-per-pass {size}, which holds each process's {max(blocks) * per_group} members in one "
            "pass: the noise would be sampled twice for nothing",
            f"use a smaller --members-per-pass (a divisor of {per_group} or a multiple of it), or drop --hold-noise",
        )
    if not size or not split:
        return
    if per_group % size == 0 or (size % per_group == 0 and all(b % (size // per_group) == 0 for b in split)):
        if not config.hold_noise and max(blocks) == 1:  # a part within a process's one group holds all of its noise
            raise UsageError(
                "--hold-noise",
                f"false with --groups {config.groups}: each process's parts lie in its one ε group of {per_group} members, "
                "whose noise is held whole: the noise would be sampled twice for nothing",
                f"use --groups of at least --popsize / --members-per-pass = {-(-config.popsize // size)} (each part then "
                "holds its own groups' noise), or drop --hold-noise",
            )
        return
    whole = [j * per_group for j in range(1, max(blocks) + 1) if all(b % j == 0 or j >= b for b in blocks)]
    fits = sorted({d for d in range(1, per_group + 1) if per_group % d == 0} | set(whole))
    where = f"each process's {blocks[0] * per_group} members" if len(set(blocks)) == 1 else "the processes' members"
    raise UsageError(
        "--members-per-pass",
        f"{size} does not split {where} into equal parts within groups of {per_group} (--popsize / --groups)",
        f"use one of {fits}, or 0 for one pass",
    )


def check_threads(option: str, threads: int, zero: str | None = "torch's default", per_core: int = 1) -> None:
    """A UsageError (one line) for a thread count below 0 or above ``per_core`` threads per core of this machine, for
    every command and script that takes one: torch takes any count, and one of thousands crashes the process at its
    first parallel op or a later library's import (a segfault at 100,000). ``zero``: what 0 means; None where the
    option takes no 0 (a count below 1 refused, and no 0 offered in the fix). Where Python cannot count the
    machine's cores (``os.cpu_count()`` None), those this process may use bound it; else nothing."""
    cores = os.cpu_count() or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None)
    if zero is None and threads < 1:
        raise UsageError(option, f"must be at least 1, got {threads}", "pass a positive count")
    if threads < 0:
        raise UsageError(option, f"must be 0 or positive, got {threads}", f"0 means {zero}")
    if cores and threads > per_core * cores:
        zero_note = f" (0: {zero})" if zero is not None else ""
        raise UsageError(
            option, f"{threads} threads on a machine of {cores} cores", f"use {per_core * cores} or fewer{zero_note}"
        )


def check_device(name: str) -> None:
    """Raise a UsageError for a device torch does not know or this machine does not have."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError("--device", f"unknown device {name!r}", "use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                "--device",
                f"{name}: this machine has no CUDA device (or torch {torch.__version__} was built without CUDA)",
                "use --device cpu, or install a CUDA build of torch",
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                "--device", f"{name}: there are {torch.cuda.device_count()} CUDA device(s)", "use cuda:0 ... or cuda"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError("--device", "mps is not available on this machine", "use --device cpu")
    elif device.type != "cpu":
        raise UsageError("--device", f"flipes runs on cpu, cuda or mps, not {name!r}", "use --device cpu or cuda")


def check_float64(device: object) -> None:
    """Refuse a device without float64 (MPS) before anything is made on it: torch's error would come from deep in an
    env's constructor, a policy's ``.to`` or a rollout.

    Raises:
        UsageError: naming the device and the CPU to use instead.
    """
    import torch

    if torch.device(str(device)).type == "mps":
        raise UsageError(
            "--device",
            f"{device}: MPS has no float64, which flipes' envs (their state), policies (observation statistics) and "
            "rollouts (returns) keep on the device",
            "use --device cpu",
        )


def default_target(env: str) -> float | None:
    """The return at which a run on ``env`` counts as solved: the preset's ``target`` where it has
    one, else gymnasium's registered ``reward_threshold`` (None where neither is known)."""
    from flipes.rl.envs import base_id
    from flipes.rl.presets import preset_for

    if env.strip().lower() == "none":
        return None
    if "target" in preset_for(env):
        return float(preset_for(env)["target"])
    import gymnasium as gym

    try:
        threshold = gym.spec(base_id(env).rpartition(":")[2]).reward_threshold
    except gym.error.Error:
        return None
    return None if threshold is None else float(threshold)


def resolve_target(config: TrainConfig) -> float | None:
    """The return that stops ``config``'s run: its ``target``, or :func:`default_target` for ``auto``."""
    if isinstance(config.target, float | int):
        return float(config.target)
    return default_target(config.env) if config.target == "auto" else None
