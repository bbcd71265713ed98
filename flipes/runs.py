"""Run directories after training: the policy they hold, and its evaluation."""

from __future__ import annotations

import copy
import dataclasses
import json
import shlex
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, SupportsIndex

import gymnasium as gym
import torch
from torch import nn

from flipes.builders import global_seed, seeded_global_rngs
from flipes.callbacks import jsonl_rows
from flipes.checkpoint import CheckpointError, NewerCheckpointError, load_checkpoint, load_mismatch, state_mismatch
from flipes.cli import import_here
from flipes.config import TrainConfig, check_float64
from flipes.errors import UsageError, caller_stacklevel
from flipes.es.checks import as_index
from flipes.nn import flipout, uncompiled
from flipes.plugins import Plugins, name_of
from flipes.rl import POLICIES, episode_seed, make_vector_env, run_episodes
from flipes.rl.envs import EnvError, EnvOptionError, registered_id, split_env_id
from flipes.rl.policy import SpacePolicy
from flipes.rl.spaces import STRUCTURED


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl``, every generation since it started, across resumes (lines
    that are not rows, such as a torn last line from a crash mid-write, are skipped);
    ``TrainResult.metrics`` holds one call's rows.

    Raises:
        FileNotFoundError: no metrics.jsonl in ``run``.
        UsageError: it cannot be read (a directory in its place, no permission).
    """
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        if Path(run).is_file():  # the file itself, or a checkpoint of the run: its directory is what is meant
            raise FileNotFoundError(f"{run}: is a file, not a run directory; pass the run's directory, {Path(run).parent}")
        raise FileNotFoundError(f"{run}: no metrics.jsonl; pass a run directory written by flipes train")
    return [row for _, row in jsonl_rows(path) if row is not None]  # each line parsed once, none held


def runs_under(folder: str | Path, marker: str = "metrics.jsonl", depth: int = 3) -> tuple[str, str] | None:
    """What an error says when a folder of runs is given for a run: ``("holds 2 runs", "runs/a runs/b")``, the run
    directories (holding ``marker``) up to ``depth`` levels below ``folder`` (a bounded search: the folder may be a home
    directory), the first three shown; None where there is none."""
    found = (p.parent for d in range(1, depth + 1) for p in Path(folder).glob("/".join(["*"] * d + [marker])))
    held = sorted(str(p) for p in found) if Path(folder).is_dir() else []
    if not held:
        return None
    return f"holds {len(held)} run{'s' if len(held) > 1 else ''}", " ".join(held[:3]) + (" ..." if len(held) > 3 else "")


def run_config(run_dir: str | Path) -> dict[str, Any]:
    """The options a run was trained with (its ``config.json``).

    Raises:
        UsageError: not a run directory.
    """
    path = Path(run_dir) / "config.json"
    if Path(run_dir).is_file():  # a checkpoint of the run, most likely: the directory names the run, the file its weights
        raise UsageError(
            str(run_dir),
            "is a file, not a run directory",
            f"pass the run's directory, {Path(run_dir).parent}, and a checkpoint file as checkpoint= (--checkpoint FILE)",
        )
    if not path.is_file():
        if not Path(run_dir).exists():  # a typo, or a run whose first generation has not written it yet
            raise UsageError(str(run_dir), "does not exist", "pass a directory written by flipes train")
        held = runs_under(run_dir, "config.json")
        if held:  # a folder of runs: name them
            raise UsageError(str(run_dir), f"is not a run directory (no config.json) but {held[0]}", f"pass one: {held[1]}")
        raise UsageError(str(run_dir), "is not a run directory (no config.json)", "pass a directory written by flipes train")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))  # as JSON is, whatever the locale
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(str(path), f"is not valid JSON ({e})", _rewrite_fix(run_dir)) from None
    if not isinstance(config, dict):
        problem = f"holds a JSON {type(config).__name__}, not the object of options flipes train writes"
        raise UsageError(str(path), problem, _rewrite_fix(run_dir))
    return config


def _rewrite_fix(run_dir: str | Path) -> str:
    """How to get a damaged config.json back: a resume to the generation the checkpoint holds takes the options it
    records and writes config.json again, training nothing."""
    try:
        generation = load_checkpoint(Path(run_dir) / "checkpoint.pt", map_location="cpu")["es"]["generation"]
    except (CheckpointError, OSError, KeyError, TypeError):
        return "no readable checkpoint.pt records the run's options: retrain"
    return (
        f"flipes train --resume {shlex.quote(str(run_dir))} --generations {generation} writes it again from the options "
        "its checkpoint records, training nothing"
    )


def run_env(run_dir: str | Path) -> str:
    """The env id a run was trained on (``"none"`` for a custom fitness), from its ``config.json`` (or its
    checkpoint's options, where config.json lost it).

    Raises:
        UsageError: not a run directory, or a config.json without an env (damaged, or edited by hand).
    """
    env = run_config(run_dir).get("env")
    if not isinstance(env, str):  # config.json lost it (edited by hand): the checkpoint records it too
        try:
            env = load_checkpoint(checkpoint_path(run_dir), map_location="cpu").get("config", {}).get("env")
        except CheckpointError:
            env = None
    if not isinstance(env, str):
        path = Path(run_dir) / "config.json"
        raise UsageError(str(path), "names no env, nor does its checkpoint", "restore the run's env id in config.json")
    return env


def unmade_env(run_dir: str | Path, error: EnvError) -> UsageError:
    """The error for a run whose env cannot be made here; for an id nothing registered in this process (an env of one's
    own, registered by a module or by the training script), it names how to register it first."""
    if not isinstance(error.__cause__, gym.error.NameNotFound | gym.error.NamespaceNotFound):
        return UsageError(str(run_dir), f"its env cannot be made here: {error}")
    short = registered_id(run_env(run_dir))[1]
    problem = f"its env {short} is registered by nothing imported here ({error.__cause__})"
    fix = (
        f"import the module that registers it first: --env mymodule:{short} of flipes evaluate and flipes export (a "
        "script that registers it as it trains: move the register call into a module)"
    )
    return UsageError(str(run_dir), problem, fix)


def import_env_module(run_dir: str | Path, given: str) -> None:
    """``--env`` of ``flipes evaluate`` and ``flipes export``: the run's env id with the module that registers it
    (``mymodule:mine/Task-v0``), imported so that the run's own id is known; the run's env, not another.

    Raises:
        UsageError: another env than the run's, no module named, or a module that cannot be found.
    """
    recorded = run_env(run_dir)
    engine, short = registered_id(recorded)
    module = split_env_id(given)[1].rpartition(":")[0]
    prefix = "" if engine == "auto" else f"{engine}:"
    if registered_id(given) != (engine, short) or not module:
        problem = f"{given} is not {run_dir}'s env {recorded} with a module: --env names the module that registers it"
        raise UsageError("--env", problem, f"pass --env {prefix}mymodule:{short}, mymodule registering {short}")
    try:
        import_here(module)
    except ModuleNotFoundError as e:
        if e.name is None or not module.startswith(e.name):
            raise  # the module exists and fails to import something itself: its own traceback
        raise UsageError("--env", f"cannot import {module!r} ({e})", "is it on PYTHONPATH (or in this directory)?") from None


def run_env_kwargs(config: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """The env constructor options (``--env-kwargs``) of a run's options ``config`` (its config.json): {} for a run
    recorded before the option existed.

    Raises:
        UsageError: a value that is not an object of options (config.json edited by hand).
    """
    kwargs = config.get("env_kwargs") or {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        path = Path(run_dir) / "config.json"
        problem = f"env_kwargs is {kwargs!r}, not an object of the env's options"
        raise UsageError(str(path), problem, "restore the run's value (its checkpoint.pt holds the options it was trained with)")
    return kwargs


def checkpoint_path(run_dir: str | Path, checkpoint: str = "latest") -> Path:
    """``latest`` and ``best-member`` -> checkpoint.pt, ``best`` -> best.pt, else a checkpoint file path: as given, or,
    where no such file is there, inside the run directory (``--checkpoint previous.pt`` from anywhere).

    Raises:
        UsageError: anything else.
    """
    run_dir = Path(run_dir)
    if checkpoint == "best" and not (run_dir / "best.pt").exists() and (run_dir / "checkpoint.pt").exists():
        raise UsageError(
            "--checkpoint",
            f"{str(run_dir)!r} has no best.pt: no evaluation of its center policy has been written "
            "(a custom fitness without evaluate(), or none finished yet)",
            "use --checkpoint latest",
        )
    if checkpoint in ("latest", "best", "best-member"):
        return run_dir / ("best.pt" if checkpoint == "best" else "checkpoint.pt")
    path = Path(checkpoint)
    if not path.exists() and not path.is_absolute() and (run_dir / path).exists():  # the run's own file, by its name
        path = run_dir / path
    if path.suffix == ".pt" and path.is_file():
        return path
    if path.suffix == ".pt" and not path.exists():
        raise UsageError("--checkpoint", f"{checkpoint!r}: no such file, nor in {str(run_dir)!r}", "check the path")
    raise UsageError(
        "--checkpoint",
        f"{checkpoint!r} is neither latest, best, best-member nor a checkpoint file",
        "use latest, best, best-member or a path to a .pt file",
    )


# every option a run's checkpoint has recorded ("rank": noise_rank's name before)
_KNOWN_OPTIONS = frozenset({f.name for f in dataclasses.fields(TrainConfig)} | {"rank"})


def load_policy(
    run_dir: str | Path,
    checkpoint: str = "latest",
    device: str | torch.device = "cpu",
    env: gym.vector.VectorEnv | None = None,
    model: Callable[..., nn.Module] | nn.Module | None = None,
) -> nn.Module:
    """The center policy (mean network) of a run, in eval mode, observation normalization included. Built by flipes
    for an env of Dict or Tuple observations, it takes them as the env gives them, flattening them as training did.

    Args:
        run_dir: a directory written by ``flipes train`` / :func:`flipes.train`.
        checkpoint: ``latest`` (checkpoint.pt), ``best`` (best.pt), ``best-member`` (the fittest
            member of any generation, kept by ``--track-best``) or a checkpoint file.
        device: where the policy lives.
        env: a vector env of the run's env id, for the spaces of an MLP policy (or the argument of
            ``--model``); made here with one copy when not given.
        model: the run's model as given to :func:`flipes.train` (a function ``env -> nn.Module`` or
            a module: a copy of it is loaded, the module itself is left as it was); by default the run's
            ``--model`` is imported by name, or an MLP policy built.

    Raises:
        UsageError: not a run directory, a missing or broken checkpoint (naming the one to use instead), a device
            this machine does not have, or one without float64 (MPS).
    """
    from flipes.config import check_device

    check_device(str(device))  # else torch.load's failure to map to it reads as a damaged checkpoint
    return policy_and_state(run_dir, checkpoint, device, env, model)[0]


def policy_and_state(
    run_dir: str | Path,
    checkpoint: str = "latest",
    device: str | torch.device = "cpu",
    env: gym.vector.VectorEnv | None = None,
    model: Callable[..., nn.Module] | nn.Module | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_policy`'s policy and the checkpoint state it was read from (``flipes evaluate`` names the
    generation: read once, as a checkpoint may be GBs)."""
    check_float64(device)  # before the checkpoint is mapped there: torch's failure would read as a damaged one
    config, given, env_given = run_config(run_dir), model is not None, env is not None
    built_otherwise: list[str] = []
    try:
        state = load_checkpoint(checkpoint_path(run_dir, checkpoint), map_location=device)
    except CheckpointError as e:
        fix = "" if e.previous else "pass --checkpoint latest, best, best-member or a checkpoint file of this run"
        if isinstance(e, NewerCheckpointError):  # its line says what to do
            fix = ""
        elif checkpoint in ("latest", "best", "best-member") and not (Path(run_dir) / "checkpoint.pt").exists():
            # a run whose setup is under way or was cut short (config.json is written first): no other value reads
            fix = "the run has written none yet: its setup is under way, or was cut short (the same flipes train completes it)"
        elif checkpoint == "best":  # written without a previous one: the run's latest is what is left
            fix = "best.pt keeps no older copy: use --checkpoint latest (a resumed run writes best.pt again as it improves)"
        raise UsageError("--checkpoint", e.message("--checkpoint"), fix) from None
    saved = state.get("config")  # the options the weights were trained with: they fill what config.json lacks
    if isinstance(saved, dict) and (unknown := sorted(set(saved) - _KNOWN_OPTIONS)):
        from flipes import __version__

        warnings.warn(  # a newer flipes's option may build the policy otherwise (an activation: no shape tells)
            f"{checkpoint} of {run_dir} records options this flipes {__version__} does not know ({', '.join(unknown)}): a "
            "newer flipes trained it, and the policy is built without them; evaluate it with that flipes or a later one "
            "(pip install -U flipes) to be sure it is the one trained",
            stacklevel=caller_stacklevel(),
        )
    if isinstance(saved, dict):
        ours, theirs = config.get("env"), saved.get("env")
        if ours is not None and theirs is not None and str(ours) != str(theirs):
            problem = f"{checkpoint} was trained on {theirs}, {run_dir} on {ours}"
            raise UsageError("--checkpoint", problem, "pass a checkpoint written by this run")
        # the options that build the policy, where config.json says other than the checkpoint: named if it does not load
        both = [k for k in ("policy", "hidden", "model") if k in saved and k in config and saved[k] != config[k]]
        built_otherwise = [f"--{k}: {saved[k]!r} in the checkpoint, {config[k]!r} in config.json" for k in both]
        config = {**saved, **config}  # config.json first, as a resume reads it (an edited --model name is kept)
    env_id = str(config.get("env", "none"))
    own = env is None and env_id.lower() != "none"
    if own:
        try:
            env = make_vector_env(env_id, 1, device, note=None, **run_env_kwargs(config, run_dir))
        except EnvError as e:
            raise unmade_env(run_dir, e) from None
    try:
        if isinstance(model, nn.Module):  # loaded in place, it would change the caller's model (a later
            try:  # load of another checkpoint, export's requires_grad_(False)) under them
                model = copy.deepcopy(model)
            except Exception as e:  # a module holding a lock, a file, an env: loaded in place, as said
                warnings.warn(
                    f"load_policy(model=...): the module cannot be copied ({type(e).__name__}: {e}); the checkpoint is "
                    "loaded into it in place",
                    stacklevel=caller_stacklevel(),
                )
        if model is not None or config.get("model"):
            model = Plugins(model=model).model_factory(config.get("model") or name_of(model))(env)
        else:
            assert env is not None
            name = config.get("policy", "mlp")
            if name not in POLICIES:
                problem = f"names policy {name!r}, none of {', '.join(POLICIES)}"
                fix = "restore the run's value (its checkpoint.pt holds the options it was trained with)"
                raise UsageError(str(Path(run_dir) / "config.json"), problem, fix)
            kind = POLICIES[name]
            model = kind(env.single_observation_space, env.single_action_space, hidden=config["hidden"])
    finally:
        if own and env is not None:
            env.close()
    model = flipout(model).to(device)
    source = getattr(env, "source_observation_space", None)
    if isinstance(model, SpacePolicy) and isinstance(source, STRUCTURED):  # takes the env's Dict or Tuple observations
        model.source_observation_space = source
    weights = state["es"]["model"]
    if checkpoint == "best-member":
        if "best" not in state["es"]:
            if state.get("config", {}).get("track_best"):
                raise UsageError("--checkpoint", f"{run_dir} has no best member yet: no generation was checkpointed", "train on")
            raise UsageError("--checkpoint", f"{run_dir} kept no best member", "train it with --track-best")
        weights = state["es"]["best"]["state_dict"]

    def another_model(why: str) -> UsageError:
        if given:  # the caller's model, not the run's own code: it is the likelier culprit
            problem = f"{checkpoint} of {run_dir} holds parameters of another model than the one given ({why})"
            return UsageError("--checkpoint", problem, "give model= the model the run was trained with")
        if env_given:  # the policy was built for the caller's env: its spaces are the likelier culprit
            problem = f"{checkpoint} of {run_dir} holds parameters of another model than the one built for the env given ({why})"
            fix = "give env= an env with the run's observation and action spaces, or leave it out"
            return UsageError("--checkpoint", problem, fix)
        problem = f"{checkpoint} holds parameters of another model than {run_dir}'s ({why})"
        if built_otherwise:  # config.json edited by hand, or another run's checkpoint put in place: the options say which
            shown = ", ".join(built_otherwise)
            problem = f"{problem}: the policy was built from config.json, which records other options than it ({shown})"
            fix = "pass a checkpoint of this run"
            if checkpoint in ("latest", "best", "best-member"):  # the run's own file: replaced, or config.json edited
                fix = "put the run's own checkpoint back, or restore config.json's values"
            return UsageError("--checkpoint", problem, fix)
        return UsageError("--checkpoint", problem, "pass a checkpoint written by this run")

    # a run begun under torch.set_default_dtype(torch.float64) holds float64 weights: built here in this process's
    # default, the load would round them; each takes the checkpoint's dtype, so the policy loaded is the one trained
    for name, built in uncompiled(model).state_dict(keep_vars=True).items():
        saved = weights.get(name)
        other = isinstance(saved, torch.Tensor) and saved.dtype != built.dtype
        if other and saved.is_floating_point() and built.is_floating_point():
            built.data = built.data.to(saved.dtype)
    # before loading: torch copies what fits and then raises, which would half load a module given that cannot be copied
    if why := state_mismatch(weights, uncompiled(model).state_dict()):
        raise another_model(why)
    try:
        uncompiled(model).load_state_dict(weights)  # torch.compile(net) given: net's keys
    except RuntimeError as e:  # a module's own _load_from_state_dict may refuse what the keys and shapes allow
        raise another_model(load_mismatch(e)) from None
    return model.eval(), state


def evaluate_policy(
    policy: nn.Module,
    env_id: str,
    episodes: SupportsIndex = 100,
    seed: int = 12345,
    device: str | torch.device = "cpu",
    max_steps: SupportsIndex | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Returns of ``episodes`` episodes of ``policy`` on ``env_id`` made with the constructor options ``env_kwargs``
    (a run's ``--env-kwargs``; one vector env, fixed seeds), each cut after ``max_steps`` steps (``None``: the env's
    own time limit). The policy runs in eval mode, as
    :func:`load_policy` returns it (no dropout); each module's mode is set back afterwards. As deployed, a
    BatchNorm whose running statistics were never filled uses its initial ones, where a run's ``eval_return``
    used each batch's: the returns differ until they are filled (``torch.optim.swa_utils.update_bn``).

    Args:
        policy: an ``nn.Module`` taking the env's observations (tensors on ``device``) and returning its actions.
        env_id: an env id as ``--env`` takes it.
        episodes: how many episodes, one env each.
        seed: keys the episodes' resets (``flipes evaluate --seed``): the same seed, the same episodes.
        device: where the env returns observations and the policy runs (the policy is not moved there).
        max_steps: cut each episode after this many steps; ``None``: the env's own time limit.
        env_kwargs: the env's constructor options.

    Returns:
        ``(episodes,)`` float64 returns, on ``device``.

    Raises:
        UsageError: ``episodes`` or ``max_steps`` below 1, an unknown env id or option, a device this machine does
            not have or one without float64 (MPS); as ``flipes evaluate`` it names the flag (``--episodes``, ``--env``,
            ``--env-kwargs``, ``--device``).
        TypeError: a policy that is no ``nn.Module``.
    """
    count = as_index(episodes)  # numpy's integers too
    if count is None or count < 1:  # not EnvPool's bare assert
        raise UsageError("--episodes", f"must be an integer of at least 1, got {episodes!r}", "e.g. --episodes 100")
    from flipes.config import LIMITS, check_device

    if count > LIMITS["eval_episodes"]:  # one vector env holds them all: numpy's and torch's sizes overflow first
        raise UsageError("--episodes", f"{count} is beyond any use (at most {LIMITS['eval_episodes']:,})", "is it a typo?")
    episodes = count
    if not isinstance(policy, nn.Module):  # not an AttributeError from policy.modules() after the env is made
        raise TypeError(
            f"evaluate_policy(policy, ...) takes the policy as a torch.nn.Module, got a {type(policy).__name__}; "
            "flipes.load_policy(run_dir) gives a run's"
        )
    steps = as_index(max_steps) if max_steps is not None else None
    if max_steps is not None and (steps is None or steps < 1):  # 0 or less cut every episode at once: all returns 0
        raise UsageError(
            "max_steps", f"must be an integer of at least 1, got {max_steps!r}", "pass None for the env's own time limit"
        )
    check_device(str(device))  # torch's own error names every device type it has a string for
    check_float64(device)
    try:
        env = make_vector_env(env_id, episodes, device, note=None, **(env_kwargs or {}))
    except EnvOptionError as e:
        raise UsageError("--env-kwargs", str(e)) from None
    except EnvError as e:
        raise UsageError("--env", str(e)) from None
    modes = [(m, m.training) for m in policy.modules()]
    policy.eval()
    try:  # a policy that samples its actions draws from the global generators: seeded, as training's evaluation seeds them
        with seeded_global_rngs(global_seed(seed, 0, "evaluate")):
            return run_episodes(env, policy, episode_seed(seed, 0, "evaluate"), max_steps=max_steps).returns
    finally:
        for module, training in modes:
            module.training = training
        env.close()


def run_labels(runs: list[Path]) -> list[str]:
    """Each run's legend label: the fewest trailing parts of its path, as many for every run, that tell the runs apart
    (``CartPole-v1``, or ``seed0/CartPole-v1`` beside ``seed1/CartPole-v1``: runs in the default ``runs/<env name>``
    of several directories share their name); the whole path where no suffix does."""
    parts = [run.absolute().parts for run in runs]
    for k in range(1, max(map(len, parts), default=0) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(run) for run in runs]


def series(rows: list[dict], x: str, y: str) -> tuple[list, list]:
    """The (x, y) points of the rows that hold both as numbers (``null``, a non-finite value, as a gap);
    a row edited by hand or written by other code may lack either."""
    points = [(r[x], r[y]) for r in rows if _number(r.get(x)) and r.get(x) is not None and y in r and _number(r[y])]
    return [p[0] for p in points], [p[1] for p in points]


def _number(value: object) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))
