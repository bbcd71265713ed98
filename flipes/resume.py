"""Resuming a run: the options a checkpoint fixes, restoring its state bit for bit, and the check
that all MPI ranks start alike."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from flipes import dist
from flipes.builders import CheckedFitness
from flipes.checkpoint import CheckpointError, NewerCheckpointError, load_checkpoint, load_mismatch, tensors_sha256, written_by
from flipes.config import TrainConfig
from flipes.errors import UsageError
from flipes.es.state import unknown_entries
from flipes.plugins import same_code
from flipes.rl import RolloutFitness
from flipes.rl.envs import registered_id, split_env_id
from flipes.search import own_shaping

if TYPE_CHECKING:
    from flipes.builders import Fitness
    from flipes.train_state import TrainState

# options a resumed run must share with its checkpoint (the others may change, e.g. generations)
RESUME_KEYS = (
    "env",
    "env_kwargs",  # the env's constructor options: another env, as another id is
    "popsize",
    "groups",
    "mirrored",
    "noise_rank",
    "seed",
    "sigma",
    "sigma_decay",  # σ's schedule: σ of every generation, so the noise a resume draws
    "sigma_min",
    "lr",
    "lr_decay",  # lr's schedule: the step of every generation
    "lr_min",
    "shaping",
    "weight_decay",
    "hidden",
    "policy",
    "episodes",
    "reward_shift",
    "max_episode_steps",
    "action_noise",  # part of every member's fitness
    "common_episodes",  # which episodes every member plays
    "fitness",
    "model",
    "algo",  # the optimizer (Adam, ClipUp, SGD): another one cannot take the saved optimizer state
    "sigma_lr",
    "max_speed",
    "ars_top",
    "optimizer",
)
# resume keys added after the first checkpoints were written: a run that lacks one ran with its default
LATER_KEYS = (
    "env_kwargs",
    "mirrored",
    "reward_shift",
    "max_episode_steps",
    "policy",
    "shaping",
    "weight_decay",
    "algo",
    "sigma_lr",
    "max_speed",
    "ars_top",
    "optimizer",
    "sigma_decay",
    "sigma_min",
    "action_noise",
    "lr_decay",
    "lr_min",
    "common_episodes",
)


# options each rank may set for itself; all others must agree across ranks
RANK_LOCAL = ("device", "threads", "env_threads", "progress", "tensorboard", "plot", "wandb", "wandb_project", "out",
              "resume", "overwrite")  # fmt: skip


def agree(comm: dist.Comm, config: TrainConfig, state: TrainState) -> None:
    """Every rank starts from the same options, generation and parameters, or the job stops at once.

    Raises:
        UsageError: on every rank, naming what differs and on which ranks.
    """
    options = {k: v for k, v in dataclasses.asdict(config).items() if k not in RANK_LOCAL}
    mine = (options, state.es.generation, tensors_sha256(state.model.state_dict().values()))
    everyone = comm.allgather_object(mine)
    ref = everyone[0]
    differ = sorted({k for opts, _, _ in everyone for k in opts if opts[k] != ref[0][k]})
    if differ:
        shown = "; ".join(f"--{k.replace('_', '-')}: " + ", ".join(f"rank {r} {o[k]!r}" for r, (o, _, _) in enumerate(everyone))
                          for k in differ)  # fmt: skip
        raise UsageError(
            "mpiexec", f"the ranks were started with other options ({shown})", "start every rank with the same command"
        )
    if len({g for _, g, _ in everyone}) > 1:
        shown = ", ".join(f"rank {r} at {g}" for r, (_, g, _) in enumerate(everyone))
        # every rank takes this branch: a second exchange is safe. A rank that resumed nothing, beside one that did, ran
        # --resume auto on a run directory it cannot see (node-local scratch): the same command on every rank
        read = comm.allgather_object((bool(state.resumed), str(getattr(state, "run_dir", ""))))
        anew = [(r, where) for r, (resumed, where) in enumerate(read) if not resumed]
        if anew and len(anew) < len(read):
            r, where = anew[0]
            raise UsageError(
                "--resume",
                f"the ranks start at other generations ({shown}): rank {r} found no checkpoint in {where} and started the "
                "run anew",
                "every rank reads the run directory: keep --out on a file system all the job's nodes share (not a "
                "node-local $TMPDIR)",
            )
        raise UsageError(
            "--resume", f"the ranks start at other generations ({shown})", "resume every rank from the same checkpoint"
        )
    if len({h for _, _, h in everyone}) > 1:
        shown = ", ".join(f"rank {r} {h[:12]}" for r, (_, _, h) in enumerate(everyone))
        if not state.resumed:  # a new run: each rank built its model, from more than the seed (the clock, os.urandom)
            raise UsageError(
                "--model",
                f"the ranks built other initial parameters ({shown})",
                "build the model from the seed alone (flipes seeds torch's, NumPy's and Python's generators with --seed "
                "around it), or load the same weights on every rank",
            )
        raise UsageError(
            "--resume", f"the ranks start from other parameters ({shown})", "resume every rank from the same checkpoint"
        )


def restore(state: TrainState, path: str, device: str, fitness: Fitness) -> list[str]:
    """Continue the run saved at ``path`` (a run directory or checkpoint file), bit for bit; returns notes naming the
    options changed since that make it equal to a run never stopped only to rounding (:func:`rounding_changes`).

    Raises:
        UsageError: no readable checkpoint there, or the run was trained with other options.
    """
    try:
        saved_state = load_checkpoint(path, map_location=device)
    except CheckpointError as e:  # a damaged file, or one that lacks an entry read below: one line, naming previous.pt
        fix = "" if e.previous else "pass a run directory or checkpoint file written by flipes train"
        file = resume_file(path)
        if isinstance(e, NewerCheckpointError):  # its line says what to do: an older previous.pt is no way on
            raise UsageError("--resume", e.message("--resume")) from None
        if file.name == "best.pt" and (file.parent / "checkpoint.pt").is_file():  # no older best: the run's own checkpoint
            fix = f"best.pt keeps no older copy: --resume {shlex.quote(str(file.parent))} continues from the run's checkpoint.pt"
        elif state.comm.rank != 0 and not file.is_file():  # where rank 0 reads it (else its own line ends the job first)
            fix = "every rank reads the checkpoint: keep the run directory on a file system all the job's nodes share " \
                  "(not a node-local $TMPDIR)"  # fmt: skip
        elif not e.previous and file.suffix == ".pt" and file.is_file():  # a run's damaged checkpoint, none older beside it
            fix = "no previous.pt beside it to continue from: copy it again whole if it came from elsewhere, else start the " \
                  "run again with --overwrite"  # fmt: skip
        raise UsageError("--resume", e.message("--resume"), fix) from None
    saved = dict(saved_state["config"])
    options = {f.name for f in dataclasses.fields(TrainConfig)} | {"rank"}  # "rank": noise_rank's name before
    unknown = [
        f"the entry {k!r}"
        for k in saved_state
        if k not in ("es", "config", "timesteps", "seconds", "best", "callbacks", "es_settings")
    ]
    unknown += [f"the option {k!r}" for k in saved if k not in options] + unknown_entries(saved_state["es"])
    if unknown:  # a newer flipes's: dropped, the run would go on as another one
        from flipes import __version__

        shown = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        raise UsageError(
            "--resume",
            f"{resume_file(path)} holds {shown}, which this flipes {__version__} does not know: a newer flipes wrote it, "
            "whose run this one would continue as another; nothing was loaded",
            "resume it with that flipes or a later one (pip install -U flipes)",
        )
    saved.setdefault("noise_rank", saved.pop("rank", 0) or 0)  # runs saved before the option's rename
    lacking = [k for k in RESUME_KEYS if k not in saved and k not in LATER_KEYS]
    if lacking:
        raise UsageError("--resume", f"{path}'s config lacks {', '.join(lacking)}", "resume a checkpoint flipes train wrote")
    defaults = TrainConfig()  # default_factory fields (env_kwargs) too, as flipes plot --group reads them
    for key in LATER_KEYS:  # runs saved before an option existed ran with its default
        saved.setdefault(key, getattr(defaults, key))
    now = dataclasses.asdict(state.config)
    changed = {k: (saved.get(k), now[k]) for k in RESUME_KEYS if not same_option(k, saved, now)}
    if changed:
        written = lambda v: json.dumps(v) if isinstance(v, dict) else repr(v)  # noqa: E731  --env-kwargs as it is typed
        if (recorded := _run_config(path)) is not None and all(same_option(k, recorded, now) for k in changed):
            # no flag differs: config.json's values (under the flags) do, from the checkpoint's
            file, json_path = resume_file(path), resume_file(path).with_name("config.json")
            shown = ", ".join(f"--{k.replace('_', '-')}: {written(a)} in the checkpoint, {written(b)} in config.json"
                              for k, (a, b) in changed.items())  # fmt: skip
            raise UsageError(
                "--resume",
                f"{file} was trained with other options than {json_path} records ({shown}): another run's checkpoint put "
                "in its place, or config.json edited by hand",
                "pass the checkpoint's options to continue it, or put the run's own checkpoint back",
            )
        shown = ", ".join(f"--{k.replace('_', '-')}: saved {written(a)}, now {written(b)}" for k, (a, b) in changed.items())
        fix = "pass the saved ones to continue it"
        if "seed" in changed:  # one --out for several seeds (a job array's tasks, --resume auto): a name collision
            fix += f", or give each seed a run directory of its own (--out runs/seed{now['seed']})"
        if any(isinstance(a, str) and "<" in a.partition(":")[2] for a, _ in changed.values()):
            fix += (
                " (code recorded in angle brackets, a lambda, a local function or an object, is known by its module and "
                "name alone: give it again from the same script, or from an importable module:function in a new run)"
            )
        raise UsageError("--resume", f"the run was trained with other options ({shown})", fix)
    refuse_other_dtype(path, saved_state["es"]["model"], state.model.state_dict())
    es_state = saved_state["es"]
    if "shaping" in saved_state.get("es_settings", {}) and "shaping" in es_state:
        # a shaping of one's own that a callback set: its state waits for the callback to set it again (on_train_start)
        es_state = {k: v for k, v in es_state.items() if k != "shaping"}
        state.saved_shaping_state = saved_state["es"]["shaping"]
    try:
        state.es.load_state_dict(es_state)
    except (RuntimeError, ValueError) as e:  # the --model or --optimizer code changed since: torch's size mismatch & co.
        raise UsageError(
            "--resume",
            f"{path} does not fit the model and optimizer built now ({load_mismatch(e)})",
            "resume with the code the run was trained with (its --model, --optimizer), or train it anew into another --out",
        ) from None
    if not all(torch.isfinite(p).all() for p in state.model.parameters()):
        other = Path(path) / "previous.pt" if Path(path).is_dir() else Path(path).with_name("previous.pt")
        earlier = shlex.quote(str(other))
        fix = f"resume an earlier checkpoint, e.g. --resume {earlier}" if other.exists() else "retrain with a lower --lr"
        raise UsageError("--resume", f"{path} holds non-finite parameters (NaN or inf)", fix)
    state.seconds, state.best, state.resumed = saved_state["seconds"], saved_state["best"], True
    state.saved_callbacks = saved_state.get("callbacks", {})
    state.saved_es_settings = saved_state.get("es_settings", {})  # taken by train_state.take_saved_es_settings
    state.timesteps = saved_state["timesteps"]
    if isinstance(fitness, RolloutFitness | CheckedFitness):  # a plugged-in one takes it where it counts steps
        fitness.timesteps = saved_state["timesteps"] if state.comm.rank == 0 else 0  # all ranks' steps, counted once
    return rounding_changes(saved, now) + version_changes(resume_file(path))


def version_changes(file: Path) -> list[str]:
    """Notes for a checkpoint written by another flipes or torch than this process runs (as its header records them):
    the run goes on from it, but the same arithmetic may round otherwise, so it is equal to one never stopped only to
    rounding. None for a file written before headers named them."""
    from flipes import __version__

    now = {"flipes": __version__, "torch": str(torch.__version__)}
    then = written_by(file)
    return [
        f"resumed with {name} {now[name]} ({file} was written by {name} {version}: another version may round otherwise): the "
        "run goes on from its checkpoint, equal to one never stopped only to rounding, not bit for bit"
        for name, version in then.items()
        if version != now[name]
    ]


def refuse_other_dtype(path: str, saved: dict[str, Any], now: dict[str, Any]) -> None:
    """Raise where the model built now holds a floating tensor in another dtype than the checkpoint: the load would
    cast it and the run go on with other numbers than the one never stopped (a notebook whose
    ``torch.set_default_dtype`` differs from the process that began the run builds the model in its own dtype).

    Raises:
        UsageError: naming the first such tensor, both dtypes and the fix.
    """
    for name, value in saved.items():
        built = now.get(name)
        if isinstance(value, Tensor) and isinstance(built, Tensor) and value.is_floating_point() and value.dtype != built.dtype:
            raise UsageError(
                "--resume",
                f"{path} holds the model in {value.dtype} ({name}), the model built now is {built.dtype}",
                f"build it in {value.dtype} as when the run began (torch.set_default_dtype({value.dtype}) before "
                "flipes.train, where this process set another), or train it anew into another --out",
            )


def rounding_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Notes for options a resume may change (not in :data:`RESUME_KEYS`) that compute the same run with other
    rounding: another device type, or the noise sampled part by part in the update (``--hold-noise false`` with
    ``--members-per-pass``), or no longer. The run goes on from its checkpoint, but not bit for bit."""

    def noise_by_part(config: dict[str, Any]) -> bool:
        return not config.get("hold_noise", True) and bool(config.get("members_per_pass", 0))

    changed = []
    if "device" in saved and torch.device(saved["device"]).type != torch.device(now["device"]).type:
        changed.append(f"--device {now['device']} (trained on {saved['device']}: another device rounds otherwise)")
    if noise_by_part(saved) != noise_by_part(now):
        how = "part by part" if noise_by_part(now) else "for the whole population"
        changed.append(f"--hold-noise {str(now['hold_noise']).lower()} (the update now samples the noise {how}, which "
                       "sums in another order)")  # fmt: skip
    return [
        f"resumed with {c}: the run goes on from its checkpoint, equal to one never stopped only to rounding, not bit for bit"
        for c in changed
    ]


def resume_file(path: str) -> Path:
    """The checkpoint file a ``--resume`` value reads: a run directory's ``checkpoint.pt``, or the file itself."""
    return Path(path) / "checkpoint.pt" if Path(path).is_dir() else Path(path)


def _run_config(path: str) -> dict[str, Any] | None:
    """The options in the ``config.json`` beside the run's ``checkpoint.pt`` that ``path`` resumes, which a resume takes
    under its flags; ``None`` where it resumes another file (``previous.pt`` continues with its own options) or there
    is no readable one."""
    file = resume_file(path)
    if file.name != "checkpoint.pt":
        return None
    try:
        recorded = json.loads(file.with_name("config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def same_option(key: str, saved: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether a resumed run's option ``key`` means what it was trained with: equal values, the same
    plug-in code under another name (:func:`flipes.plugins.same_code`), the same shaping rule, or the same env id
    with the module that registers it named now or then, not both (``mymodule:mine/Task-v0``, where the training
    script registered it)."""
    if saved.get(key) == now[key]:
        return True
    if key == "env":  # two modules may register one id as two envs: refused, as another id is
        named = [split_env_id(v)[1].rpartition(":")[0] for v in (saved.get(key), now[key]) if isinstance(v, str)]
        return len(named) == 2 and "" in named and registered_id(saved[key]) == registered_id(now[key])
    if key in ("fitness", "model", "optimizer"):
        return same_code(saved.get(key), now[key])
    if key == "shaping":
        saved_rule, rule = own_shaping(saved.get(key, "auto")), own_shaping(now[key])
        if callable(saved_rule) or callable(rule):
            return saved_rule is rule
        return same_code(saved_rule, rule)
    return False
