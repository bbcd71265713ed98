"""Command lines from dataclasses: one option per field, its help from the field's docstring.

Every flipes command and script describes its options as a dataclass (CleanRL's ``Args``)::

    @dataclass
    class Args:
        popsize: int = 64
        \"\"\"Members per generation.\"\"\"

and gets ``--popsize N`` with that help text, values checked strictly by the annotation (``int``
rejects ``3.7``, for flags and config files alike), ``--config FILE`` (TOML or JSON) under the
flags, and one-line errors (:class:`flipes.errors.UsageError`). Supported annotations: ``int``,
``float``, ``str``, ``bool`` (``--x``, ``--x false``, ``--no-x``), ``list[...]`` of those,
``Literal[...]`` and unions with ``None`` (``none`` on the command line) or a ``Literal``, and
``dict[str, Any]`` (a JSON object on the command line, ``--x '{"a": 1}'``; a table in a config file).

(Why not tyro: its errors are multi-line panels, a config file under the flags and per-env
defaults under the file would be ours anyway, and it brings rich, typeguard, shtab and
docstring-parser for what is ~500 lines here.)
"""

from __future__ import annotations

import argparse
import ast
import codecs
import dataclasses
import difflib
import functools
import importlib
import inspect
import json
import math
import numbers
import re
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from flipes.errors import UsageError
from flipes.option_types import FieldType, check_value, example_value, field_type, parse_text

T = TypeVar("T")
R = TypeVar("R")


# field metadata of an option given without a flag: ``run: str = field(metadata=POSITIONAL)``
POSITIONAL = types.MappingProxyType({"positional": True})
# field metadata of a list option: what its empty list means, shown in --help where it is the default
EMPTY = "empty"


def _written(value: Any, config_file: bool) -> str:
    """``value`` as a user writes it: TOML/JSON in a config file (``"none"`` for None), Python otherwise."""
    if not config_file:
        return repr(value)
    return '"none"' if value is None else json.dumps(value, ensure_ascii=False)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it), or else its trailing ``# comment``."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source (frozen app, REPL): no help texts
            continue
        lines = source.splitlines()
        tree = ast.parse(source).body[0]
        if not isinstance(tree, ast.ClassDef):
            continue
        body = tree.body
        for node, after in zip(body, [*body[1:], None], strict=True):
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
            else:
                comment = re.search(r"#\s*(.*)$", lines[(node.end_lineno or node.lineno) - 1])
                if comment and "noqa" not in comment.group(1) and "fmt:" not in comment.group(1):
                    docs[node.target.id] = comment.group(1).strip()
    return docs


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def option_name(name: str) -> str:
    """The command-line flag of a field: ``eval_episodes`` -> ``--eval-episodes``."""
    return f"--{name.replace('_', '-')}"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML or JSON file of option values (keys as the fields, with ``-`` or ``_``)."""
    if not str(path):  # Path("") is ".", the directory this runs in
        raise UsageError(
            "--config", "got an empty value (an unset shell variable?)", "pass a TOML or JSON file, or leave --config out"
        )
    path = Path(path)
    option = f"--config {path}"
    if path.is_dir():
        raise UsageError(option, "is a directory, not a file of options", "pass a TOML or JSON file")
    if path.exists() and not path.is_file():  # /dev/null, a pipe: no file of options
        raise UsageError(option, "is not a regular file", "pass a TOML or JSON file")
    if not path.is_file():
        raise UsageError(option, "no such file", "check the path")
    try:
        text = path.read_text(encoding="utf-8-sig")  # UTF-8 as TOML and JSON are, a BOM (Notepad's) or not
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(option, f"cannot be read ({e})", "pass a readable TOML or JSON file") from None
    suffix = path.suffix.lower()  # run.JSON is JSON too, not TOML that fails to parse
    if suffix in (".yaml", ".yml"):  # else read as TOML, whose parse error would send one to fix valid YAML
        raise UsageError(option, "is YAML, which flipes does not read", "write the options as TOML (.toml) or JSON (.json)")
    if suffix == ".json":
        try:
            data = json.loads(text, object_pairs_hook=_pairs)  # a key given twice is kept twice, to be refused below
        except json.JSONDecodeError as e:
            raise UsageError(option, f"is not valid JSON ({e})", "fix the file, or write it as TOML (.toml)") from None
        if twice := _repeated_key(data):  # within a table, e.g. env_kwargs (TOML refuses it itself, as --env-kwargs does)
            raise UsageError(option, f"gives {twice} twice", "keep one of them")
    else:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise UsageError(option, "TOML needs Python >= 3.11", "use a .json config file") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UsageError(option, f"is not valid TOML ({e})", "fix the file (TOML strings need quotes)") from None
    if isinstance(data, _Pairs):
        keys = [k for k, _ in data.pairs]
        data = dict(data.pairs)
    elif isinstance(data, dict):
        keys = list(data)
    else:
        raise UsageError(option, f"holds a {type(data).__name__}, not a table of options", 'write e.g. {"popsize": 64}')
    seen: dict[str, str] = {}
    for key in keys:  # one option twice, as env-kwargs and env_kwargs, or a JSON key repeated: which one counts is no guess
        name = key.replace("-", "_")
        if name in seen:
            twice = f"{seen[name]!r} twice" if seen[name] == key else f"{seen[name]!r} and {key!r}"
            raise UsageError(option, f"gives the option {name} twice ({twice})", "keep one of them")
        seen[name] = key
    return {k.replace("-", "_"): v for k, v in data.items()}


class _Pairs(dict):
    """A JSON object read by :func:`_pairs`: its values by key (the last of a repeated key), and ``pairs``, every key
    in the order given."""

    pairs: list[tuple[str, Any]]


def _repeated_key(value: Any, where: str = "") -> str:
    """The first key that a JSON object inside ``value`` (read by :func:`_pairs`) gives twice, as ``'gravity' in
    env_kwargs``; "" where none does. The file's own keys are not looked at: they are options, refused by name."""
    if isinstance(value, list):
        return next((found for i, v in enumerate(value) if (found := _repeated_key(v, f"{where}[{i}]"))), "")
    if not isinstance(value, _Pairs):
        return ""
    keys = [k for k, _ in value.pairs]
    if where and len(set(keys)) < len(keys):
        return f"{next(k for i, k in enumerate(keys) if k in keys[:i])!r} in {where}"
    return next((found for k, v in value.items() if (found := _repeated_key(v, f"{where}.{k}" if where else k))), "")


def _pairs(pairs: list[tuple[str, Any]]) -> _Pairs:
    """``json.loads``'s object hook that keeps a repeated key's every occurrence (``pairs``) beside the usual dict."""
    out = _Pairs(pairs)
    out.pairs = pairs
    return out


# how other ES libraries ask to minimize: training maximizes its fitness, and says how to minimize instead
MINIMIZE = ("maximize", "minimize", "objective_sense", "maximise", "minimise")
MINIMIZE_FIX = (
    "training maximizes the fitness: return minus the loss from the fitness function (FlipES(..., maximize=False) "
    "takes a loss in a loop of your own)"
)
# EvoTorch's objective_sense=["max", "min"], one sense per objective: flipes ranks one number per member
OBJECTIVES_FIX = "; several objectives: return one number per member of them (README: 'Several objectives and constraints')"

# env=None reads as "no env" in Python, but the option's unset value is CartPole: name the spelling of "no env"
NO_ENV_FIX = 'a fitness of your own with no env is env = "none" (with fitness= and model=)'

# how other libraries ask for worker processes (EvoTorch's num_actors, ...): flipes' processes are MPI ranks
PROCESSES = ("num_actors", "num_workers", "n_workers", "workers", "num_processes", "n_jobs")


def processes_fix(flags: bool) -> str:
    """What to do instead of asking training for worker processes, for options spelt as flags or keywords."""
    threads = "--env-threads" if flags else "env_threads"
    return (
        "flipes' processes are MPI ranks: mpiexec -n N flipes train ... (or a script calling flipes.train) splits the "
        f"population among N processes; an env's own worker processes or threads are {threads}"
    )


# other ES libraries' names for training options: (whose, flipes' option, what else to know); README's "Coming from" table
FOREIGN = {
    "noise_stdev": ("OpenAI's ES starter", "sigma", ""),
    "stepsize": ("OpenAI's ES starter", "lr", " (its Adam)"),
    "l2coeff": ("OpenAI's ES starter", "weight_decay", ", at c/σ for its l2coeff c (with Adam at {lr} = its stepsize)"),
    "episodes_per_batch": ("OpenAI's ES starter", "popsize", " (members; the episodes per member are {episodes})"),
    "return_proc_mode": ("OpenAI's ES starter", "shaping", " (centered-ranks, the default, z-score or raw)"),
    "ac_noise_std": ("OpenAI's ES starter", "action_noise", " (added in training rollouts only, as there)"),
    "snapshot_freq": ("OpenAI's ES starter", "checkpoint_every", " (in generations, as there)"),
    "eval_prob": ("OpenAI's ES starter", "eval_every", " (the center policy every n generations, not a fraction of episodes)"),
    # the starter's options with no flipes counterpart: the option nearest in meaning, and what differs
    "timesteps_per_batch": (
        "OpenAI's ES starter",
        "episodes",
        " (no per-generation step minimum here: a generation is popsize × {episodes} episodes; {max_timesteps} is the "
        "whole run's budget)",
    ),
    "calc_obstat_prob": ("OpenAI's ES starter", "policy", " (mlp, the default, normalizes with every training observation)"),
    "episode_cutoff_mode": (
        "OpenAI's ES starter",
        "max_episode_steps",
        " (a fixed cap; an adaptive one is a loop of your own reading RolloutFitness.last_lengths)",
    ),
    "stdev_init": ("EvoTorch's", "sigma", ""),
    "init_stdev": ("EvoJAX's", "sigma", ""),
    "center_learning_rate": (
        "EvoTorch's and EvoJAX's",
        "lr",
        " (ClipUp's step c: EvoTorch's, at max speed 2c, is {algo}=pgpe with {max_speed}=2c;"
        " EvoJAX's PGPE is SGD at c·σ² unless its optimizer='adam' (Adam at c) or 'clipup' (max speed 0.15))",
    ),
    "stdev_learning_rate": ("EvoTorch's and EvoJAX's", "sigma_lr", " (one σ per layer)"),
    "symmetric": ("EvoTorch's", "mirrored", ""),
    "ranking_method": ("EvoTorch's", "shaping", ""),
    "fitness_shaping_fn": ("evosax's", "shaping", " (a function fitness -> weights, or centered-ranks, z-score, raw)"),
    "eval_data_length": (
        "EvoTorch's Problem's",
        "fitness",
        " (one number per member: combine objectives and costs into it, as flipes.shaping.feasible_first does, and log "
        "the others from a callback: README's 'Several objectives and constraints')",
    ),
    "sigma_init": ("evosax's", "sigma", ""),
    "sigma_limit": ("evosax's", "sigma_min", ""),
    "lrate_init": ("evosax's", "lr", " (its OpenES's Adam)"),
    "lrate_decay": ("evosax's", "lr_decay", ""),
    "lrate_limit": ("evosax's", "lr_min", ""),
    "max_iter": ("EvoJAX's", "generations", " (a total: a resume trains up to it)"),
    "n_repeats": ("EvoJAX's", "episodes", " (per member; {common_episodes} on gives every member the same resets, as there)"),
    "n_evaluations": ("EvoJAX's", "eval_episodes", " (fresh episodes of the center every {eval_every} generations)"),
    "test_interval": ("EvoJAX's", "eval_every", " (in generations)"),
    "model_dir": ("EvoJAX's", "out", " (the run directory: checkpoints, metrics and config)"),
    "solution_ranking": ("EvoJAX's", "shaping", " (centered ranks, the default, for True; raw for False)"),
    "stdev_max_change": ("EvoJAX's", "sigma_lr", " (flipes' σ steps, one σ per layer, are not clamped)"),
    "maxiter": ("pycma's", "generations", " (a total: a resume trains up to it)"),
    "sigma0": ("pycma's", "sigma", ""),
    "total_timesteps": ("Stable-Baselines3's", "max_timesteps", " (env steps of the training episodes)"),
    "n_timesteps": ("RL Zoo's", "max_timesteps", " (env steps of the training episodes)"),
    "n_envs": ("RL Zoo's", "popsize", " (members; popsize × {episodes} env copies step as one vector env)"),
    "log_folder": ("RL Zoo's", "out", " (the run directory itself)"),
    "save_freq": ("RL Zoo's", "checkpoint_every", " (in generations, not steps)"),
    "eval_freq": ("RL Zoo's", "eval_every", " (in generations, not steps)"),
    "num_threads": ("RL Zoo's", "threads", " (torch threads per process; the env engine's: {env_threads})"),
    "learning_rate": ("Stable-Baselines3's", "lr", " (Adam's; with {algo} pgpe it sets ClipUp's speed, with ars SGD's lr·σ)"),
    "log_dir": ("torch's SummaryWriter's", "out", " (the run directory; TensorBoard's scalars go to its tensorboard/)"),
    "logdir": ("TensorBoard's", "out", " (the run directory; its scalars go to its tensorboard/)"),
    "comm_mode": ("FlipES's", "comm", " (allreduce or seeds; flipes.train(comm=...) also takes a communicator)"),
}


# RL Zoo's short flags (train.py: -n for --n-timesteps, -f for --log-folder), the ones an RL Zoo user types by habit
SHORT_FOREIGN = {
    "n": ("RL Zoo's", "max_timesteps", " (env steps of the training episodes)"),
    "f": ("RL Zoo's", "out", " (the run directory itself)"),
}


_RUN_DIR = " (the run directory)"
_TOTAL = " (a total: a resume trains up to it)"
_RESUME = " (a run directory, or a checkpoint file in one)"
# names many training scripts give these options, no one library's: difflib's closest spelling misleads for them
# (--save-dir is no --seed, --n-iters no --fitness, --gpu no --groups)
COMMON = {
    **dict.fromkeys(("save_dir", "output_dir", "out_dir", "checkpoint_dir", "save_path", "run_dir"), ("out", _RUN_DIR)),
    **dict.fromkeys(
        ("n_iters", "iters", "iterations", "n_iterations", "num_iterations", "num_generations"), ("generations", _TOTAL)
    ),
    **dict.fromkeys(
        ("population", "pop_size", "population_size", "num_population"), ("popsize", " (members, all processes together)")
    ),
    **dict.fromkeys(("noise_std", "noise_scale", "std"), ("sigma", " (the scale of the parameter noise)")),
    **dict.fromkeys(("gpu", "cuda", "use_cuda"), ("device", " (cuda, cuda:1, ...; cpu is the default)")),
    **dict.fromkeys(("load", "load_path", "resume_from", "checkpoint_path", "restore"), ("resume", _RESUME)),
    **dict.fromkeys(("env_id", "env_name", "environment"), ("env", "")),
    **dict.fromkeys(
        ("num_seeds", "n_seeds", "seeds"), ("seed", ", one run per seed: flipes plot --group draws them as one curve")
    ),
    # the closest spellings are --out and --overwrite, which replaces a run: what a log's volume is set by instead
    **dict.fromkeys(
        ("quiet", "silent"),
        ("progress", ", off: {progress} false writes the last line alone to stdout (warnings and errors go to stderr)"),
    ),
    "verbose": (
        "progress",
        ", on by default: a line per {eval_every} generations where piped, and every generation's row in DIR/metrics.jsonl",
    ),
}


def foreign_fix(key: str, flags: bool) -> str | None:
    """What flipes calls an option another ES library (or training scripts in general) calls ``key`` (as a flag, or as
    a keyword and config key), or None where ``key`` is no such name."""
    name = (lambda k: "--" + k.replace("_", "-")) if flags else (lambda k: k)
    if key in FOREIGN:  # the name as that library spells it
        who, ours, note = FOREIGN[key]
        given = f"{who} {key}" if who.endswith("'s") else f"{who}'s {key}"
    elif key in COMMON:  # as the caller gave it
        given, (ours, note) = name(key), COMMON[key]
    else:
        return None
    names = {
        k: name(k)
        for k in (
            "lr",
            "episodes",
            "algo",
            "max_speed",
            "env_threads",
            "common_episodes",
            "eval_every",
            "progress",
            "max_timesteps",
        )
    }
    return f"{given} is {name(ours)} here{note.format(**names)}"


def check_options(cls: type, values: Mapping[str, Any], source: str, also: Sequence[str] = ()) -> dict[str, Any]:
    """``values`` by field name, each checked against ``cls``'s annotation (see :func:`check_value`);
    ``also``: names the caller takes besides the fields, offered for a misspelt one.

    Raises:
        UsageError: an unknown name (with the closest valid ones) or a value of the wrong type;
            ``source`` names where the values came from (``--config run.toml``, ``flipes.train``).
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    # the options whose unset value is empty, "" or {} (--env-kwargs): None, Python's "not given", means that value
    unset = {f.name: value for f in dataclasses.fields(cls) if (value := _default(f)) in ("", {})}
    out = {}
    for key, value in values.items():
        if key not in hints or key not in names:
            close = difflib.get_close_matches(key, [*names, *also], n=3)
            fix = f"did you mean {', '.join(close)}?" if close else f"valid options: {', '.join([*names, *also])}"
            if key in also:  # a keyword the caller's function takes beside the options (flipes.train's callbacks=)
                fix = f"{key} is no option of a run but a keyword of flipes.train itself: flipes.train(config, {key}=...)"
            if key in MINIMIZE and cls.__name__ == "TrainConfig":  # EvoTorch's and evosax's way to minimize
                fix = MINIMIZE_FIX + (OBJECTIVES_FIX if isinstance(value, list | tuple) else "")
            if key in PROCESSES and cls.__name__ == "TrainConfig":
                fix = processes_fix(flags=False)
            if cls.__name__ == "TrainConfig" and (foreign := foreign_fix(key, flags=False)):  # not the closest spelling
                fix = foreign
            # a table of options, not a misspelt table option ([env_kwarg] device = "cpu" means env_kwargs)
            misspelt = any(isinstance(unset.get(c), dict) for c in close)
            table = source.startswith("--config") and isinstance(value, dict) and not misspelt
            if table and any(str(k).replace("-", "_") in names for k in value):  # [train] popsize = 8
                fix = f"options go at the top level of the file, not in a table: move them out of {key!r}"
            raise UsageError(source, f"unknown option {key!r}", fix)
        if value is None and key in unset:
            out[key] = unset[key]
            continue
        try:
            out[key] = check_value(key, value, field_type(hints[key]))
        except TypeError as e:
            example = _written(example_value(value, field_type(hints[key])), source.startswith("--config"))
            if key == "device":  # "0" is no device either: the names torch takes, the number as CUDA's index
                index = value if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0 else 0
                example = f'"cuda:{index}" or "cpu"'
            # as the file is written: "key": value in JSON, key = value in TOML (and Python's key=value reads alike)
            in_json = source.startswith("--config") and source.lower().endswith(".json")
            written = f'"{key}": {example}' if in_json else f"{key} = {example}"
            fix = NO_ENV_FIX if (key, value, cls.__name__) == ("env", None, "TrainConfig") else f"write e.g. {written}"
            raise UsageError(source, str(e), fix) from None
    return out


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are :class:`UsageError` (one line, exit 2) instead of usage dumps, and
    which takes no abbreviations (``--popsiz`` is a typo, not ``--popsize``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)
        # values, not flags: -1e3, -.5, -inf (argparse alone takes only -5 and -0.5 for numbers)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-inf(inity)?$", re.IGNORECASE)

    def error(self, message: str) -> NoReturn:
        m = re.match(r"argument (\S+?)(?:/\S+)?: (.*)", message)
        if m:
            raise UsageError(m.group(1), m.group(2), f"{self.prog} --help describes it")
        m = re.match(r"unrecognized arguments: (.*)", message)
        if m:
            word = m.group(1).split()[0]
            # each flag once, as --help writes it (--max-timesteps, not its alias --max_timesteps too)
            flags = [f for a in self._actions for f in a.option_strings if f.startswith("--") and "_" not in f]
            close = difflib.get_close_matches("--" + word.split("=")[0].lstrip("-").replace("_", "-"), flags, n=3)
            fix = f"did you mean {', '.join(close)}?" if close else f"{self.prog} --help lists the options"
            key = word.split("=")[0].lstrip("-").replace("-", "_")
            if self.prog.endswith("train") and key in MINIMIZE:
                fix = MINIMIZE_FIX
            if self.prog.endswith("train") and key in PROCESSES:
                fix = processes_fix(flags=True)
            if self.prog.endswith("train") and (foreign := foreign_fix(key, flags=True)):
                fix = foreign
            # -n 1000: a letter's close spellings are noise, not guesses (-popsize 8, a long flag with one dash, gets them)
            if re.match(r"-[A-Za-z](=|$)", word):
                short = SHORT_FOREIGN.get(key) if self.prog.endswith("train") else None
                fix = f"{self.prog} has no short options but -h; " + (
                    f"{short[0]} {word.split('=')[0]} is --{short[1].replace('_', '-')} here{short[2]}"
                    if short
                    else "--help lists the long ones"
                )
            raise UsageError(word, "unknown option", fix)
        raise UsageError(self.prog, message, f"{self.prog} --help describes the options")


class _Given(argparse.Action):
    """Stores a text option whose default "" means "not given" (--out, --resume, --fitness, --render), refusing an
    empty word for it: read as that default, ``--resume "$RUN"`` with RUN unset would start a run afresh, and
    ``--out "$DIR" --overwrite`` replace the default directory's run. Where a --config file (or a preset) set a value,
    the parser's default is that value and an empty word clears it, as the option's own default would."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None) -> None:
        if values == "" and self.default == "":
            flag = option_name(self.dest)
            raise UsageError(
                flag,
                "got an empty value (an unset shell variable?), which would read as not given",
                f"pass a value, or leave {flag} out for its default",
            )
        setattr(namespace, self.dest, values)


def _parses(words: list[str], item: FieldType) -> bool:
    """Whether every word reads as a value of ``item``."""
    try:
        [parse_text(w, item) for w in words]
    except ValueError:
        return False
    return True


def _converter(name: str, ft: FieldType) -> Callable[[str], Any]:
    item = dataclasses.replace(ft, is_list=False)

    def convert(text: str) -> Any:
        try:
            return parse_text(text, item)
        except ValueError as e:
            words = text.strip().strip("[]()").replace(",", " ").split()
            if ft.is_list and len(words) > 1 and _parses(words, item):  # --hidden 64,64: another CLI's list, as one word
                raise argparse.ArgumentTypeError(f"{e} (one value a word: {option_name(name)} {' '.join(words)})") from None
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = ft.describe()  # argparse shows it in its own messages
    return convert


def _shown(value: Any) -> str:
    """An option's value as --help writes it: ``none``, ``true``, list items separated by spaces."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return json.dumps(value)
    return " ".join(map(_shown, value)) if isinstance(value, list) else str(value)


def build_parser(
    cls: type,
    description: str | None = None,
    prog: str | None = None,
    defaults: Mapping[str, Any] = {},
    add_help: bool = True,
    given: Mapping[str, Any] = {},
) -> argparse.ArgumentParser:
    """The argparse parser of ``cls``: ``--config`` plus one option per field, help from its docstring
    (which shows ``defaults`` where they replace a field's own, and beside the default the value ``given`` on the
    command line, e.g. the ``--env`` whose preset row the other defaults are). A list field whose metadata has
    :data:`EMPTY` says what its empty list means where that is the default."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    parser = _Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=add_help)
    parser.add_argument("--config", metavar="FILE", help="TOML or JSON file of options; flags override it")
    for f in dataclasses.fields(cls):
        ft = field_type(hints[f.name])
        default = defaults.get(f.name, _default(f))
        doc = docs.get(f.name, "")
        empty = f.metadata.get(EMPTY, "no values")
        if f.name in given:  # an empty list reads as what it means; an empty string as what was typed
            value = given[f.name]
            here = f"given: {_shown(value) or (empty if isinstance(value, list) else repr(value))}"
        else:
            here = ""
        if default == [] and (EMPTY in f.metadata or _default(f) != []):  # e.g. a preset row's linear policy
            text = f"{doc} (default: {empty}{here and '; '}{here})"
        elif default is dataclasses.MISSING or default in ("", [], {}):
            text = f"{doc} ({here})" if here else doc  # required, or no value: no default to show
        elif ft.scalar is bool and not ft.is_list:
            off = "--no-" + f.name.replace("_", "-")
            text = f"{doc} (default: {_shown(default)}; {off} for false{here and '; '}{here})"
        else:
            text = f"{doc} (default: {_shown(default)}{here and '; '}{here})"
        text = text.replace("%", "%%")  # argparse %-formats help texts: a "95%" in a docstring or value stays as written
        metavar = "JSON" if ft.mapping else {int: "INT", float: "FLOAT", str: "STR", bool: "BOOL", None: ""}[ft.scalar]
        if ft.choices or ft.optional:
            metavar = (
                "{" + ",".join([*map(str, ft.choices), *([metavar] if metavar else []), *(["none"] if ft.optional else [])]) + "}"
            )
        if f.metadata.get("positional"):
            nargs = "+" if ft.is_list else ("?" if default is not dataclasses.MISSING else None)
            kw: dict[str, Any] = {"nargs": nargs} if nargs else {}
            if default is not dataclasses.MISSING:
                kw["default"] = default
            parser.add_argument(f.name, type=_converter(f.name, ft), help=text, metavar=f.name.upper(), **kw)
            continue
        flags = list(dict.fromkeys([option_name(f.name), f"--{f.name}"]))
        if ft.scalar is bool and not ft.is_list and not ft.choices:
            parser.add_argument(
                *flags,
                dest=f.name,
                nargs="?",
                const=True,
                default=default,
                type=_converter(f.name, ft),
                metavar="BOOL",
                help=text,
            )
            parser.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false", help=argparse.SUPPRESS)
            continue
        parser.add_argument(
            *flags,
            dest=f.name,
            default=default,
            type=_converter(f.name, ft),
            metavar=metavar,
            help=text,
            **({"nargs": "*"} if ft.is_list else {}),
            **({"action": _Given} if ft.scalar is str and not ft.is_list and not ft.choices and _default(f) == "" else {}),
        )
    return parser


def parse_config(
    cls: type[T],
    argv: Sequence[str] | None = None,
    description: str | None = None,
    presets: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
    prog: str | None = None,
) -> T:
    """Build ``cls`` (a dataclass) from defaults < presets < ``--config FILE`` (TOML/JSON) < flags.

    Every field becomes ``--field-name`` (``--field_name`` works too). ``presets(values)`` gets the
    options parsed without presets and returns defaults that depend on them (e.g. per-env
    defaults by ``env``).

    Raises:
        UsageError: an unknown option, a value of the wrong type, a broken config file.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = _Parser(add_help=False, prog=prog)
    pre.add_argument("--config", action="append")
    known, _ = pre.parse_known_args(argv)
    if known.config is not None and len(known.config) > 1:  # argparse would read the last file alone, dropping the others
        files = ", ".join(known.config)
        raise UsageError("--config", f"given {len(known.config)} times ({files}); one file is read", "merge them into one file, "
                         "or give the options of all but one as flags (flags override the file)")  # fmt: skip
    known.config = known.config[0] if known.config is not None else None
    # an empty --config is read_config_file's to refuse, not "no file"
    from_file = check_options(cls, read_config_file(known.config), f"--config {known.config}") if known.config is not None else {}
    defaults, given = from_file, {}
    if presets is not None:
        # the presets depend on the options: read them first (any --help waits), so that --help shows
        # the defaults that apply to this command line, e.g. the row of its --env
        first, _ = build_parser(cls, description, prog, from_file, add_help=False).parse_known_args(argv)
        preset = dict(presets(vars(first)))
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(preset) - set(fields))
        if unknown:
            raise ValueError(f"presets name unknown option(s) {unknown}; valid: {sorted(fields)}")
        defaults = {**preset, **from_file}
        if "-h" in argv or "--help" in argv:  # beside each default, what the command line gives instead
            unset = object()  # the default of every option in this parse: what differs from it was given
            flags, _ = build_parser(cls, description, prog, dict.fromkeys(fields, unset), add_help=False).parse_known_args(argv)
            shown = {k: defaults.get(k, _default(f)) for k, f in fields.items()}
            given = {k: v for k, v in vars(flags).items() if k in fields and v is not unset and v != shown[k]}
    values = vars(build_parser(cls, description, prog, defaults, given=given).parse_args(argv))
    values.pop("config")
    return cls(**values)


# the characters flipes' output holds (help texts, evaluate's ±), as an ASCII-only stream shows them
PLAIN = {"σ": "sigma", "±": "+-", "·": "*", "×": "x", "−": "-", "≥": ">=", "≤": "<=", "√": "sqrt", "‖": "|", "ε": "eps",
         "θ": "theta", "Δ": "delta", "ĝ": "g", "→": "->", "←": "<-", "…": "...", "²": "^2", "µ": "u", "μ": "mu"}  # fmt: skip


def _plain(error: UnicodeError) -> tuple[str, int]:
    """A codec error handler: each character the stream's encoding lacks as its ASCII spelling, else as ``\\uXXXX``."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    text = error.object[error.start : error.end]
    return "".join(PLAIN.get(c) or c.encode("ascii", "backslashreplace").decode() for c in text), error.end


codecs.register_error("flipes.plain", _plain)


def plain_output() -> None:
    """Let stdout and stderr write any text in an encoding without Greek letters (``LANG=en_US.ISO-8859-1``,
    ``PYTHONIOENCODING=ascii``, Windows' cp1252 when redirected to a file): what the encoding lacks is spelt in ASCII
    (``σ`` as ``sigma``) instead of ending the command with a UnicodeEncodeError. A UTF-8 stream is left as it is."""
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None)
        try:
            if not encoding or codecs.lookup(encoding).name == "utf-8":
                continue
            stream.reconfigure(errors="flipes.plain")  # type: ignore[union-attr]
        except (AttributeError, LookupError, ValueError, OSError):  # no reconfigure (a notebook's stream), no such codec
            continue


def print_error(e: BaseException, prog: str = "flipes") -> None:
    """``e`` as the one line ``flipes: error: ...`` on stderr (its own line breaks folded)."""
    print(f"{prog}: error: " + " ".join(str(e).split()), file=sys.stderr, flush=True)


def report_usage_error(e: UsageError, prog: str = "flipes") -> NoReturn:
    """Print ``e`` as one line on stderr and exit with status 2."""
    print_error(e, prog)
    raise SystemExit(2)


def run(main: Callable[[T], R], cls: type[T], description: str | None = None, argv: Sequence[str] | None = None, **kw: Any) -> R:
    """A script's ``__main__``: parse ``cls`` from the command line and call ``main`` with it; a
    :class:`UsageError` from either becomes one line and exit status 2 (other errors keep their traceback)."""
    plain_output()
    try:
        return main(parse_config(cls, argv, description, **kw))
    except UsageError as e:
        report_usage_error(e)


def main_module() -> str:
    """The module name of the running script: ``pkg.script`` for ``python -m pkg.script``, ``script``
    for ``python script.py``, empty in an interactive session."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return spec.name
    file = getattr(main, "__file__", None)
    return Path(file).stem if file else ""


def import_here(module_name: str) -> types.ModuleType:
    """Import a module named on the command line (``--fitness mymodule:fn``, ``--env mymodule:mine/Task-v0``), finding
    modules in the working directory as ``python -m`` does (a console script's path holds its own directory instead)."""
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    return importlib.import_module(module_name)


def load_callable(spec: str, option: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function, with errors that say what is wrong.

    Raises:
        UsageError: not ``module:function``, a module that cannot be found, no such function.
            (An exception raised while importing the module is the user's code: it propagates.)
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(option, f"{spec!r} is not module:function", f"e.g. {option} mypkg.fitness:evaluate")
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name or module_name.startswith("."):
        name = Path(module_name).stem
        raise UsageError(
            option,
            f"{module_name!r} is a file path, not a module name",
            f"put its directory on PYTHONPATH (or run from it) and pass {option} {name}:{attr}",
        )
    # a script's function is found by importing the script from Python (its __main__ block does not run then); not
    # where that script is the one running, which no longer defines it
    script = module_name.removeprefix("__main__[").removesuffix("]") if module_name.startswith("__main__[") else ""
    value = f"{script}.{attr}" if script and script != main_module() and "<" not in attr else "..."
    given_again = UsageError(  # for a name recorded from an object given to flipes.train
        option,
        f"{spec} was a Python object given to flipes.train and cannot be imported by name",
        f"give it again from Python ({option.lstrip('-')}={value} of flipes.train, flipes.load_policy or "
        "flipes.export_policy), or define it in a module",
    )
    if module_name.startswith("__main__["):  # a function of a script: found only while that script runs
        if module_name != f"__main__[{main_module()}]":
            raise given_again
        module_name = "__main__"
    try:
        module = import_here(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not module_name.startswith(e.name):
            raise  # the module exists and fails to import something itself: its own traceback
        raise UsageError(option, f"cannot import {module_name!r} ({e})", "is it on PYTHONPATH (or in this directory)?") from None
    fn: Any = module
    for part in attr.split("."):  # a qualname: Class.method
        fn = getattr(fn, part, None)
    if fn is None:
        if module_name == "__main__" or "<" in attr:
            raise given_again
        raise UsageError(option, f"module {module_name!r} has no function {attr!r}", "check the name after the colon")
    if not callable(fn):
        raise UsageError(option, f"{module_name}.{attr} is a {type(fn).__name__}, not a function", "name a function or class")
    return fn


def finite(
    option: str, value: float, low: float | None = None, *, strict: bool = False, allow_inf: bool = False, fix: str = ""
) -> None:
    """Check a number option: not NaN, finite unless ``allow_inf``, ``> low`` (``strict``) or ``>= low``."""
    bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
    bad = math.isnan(value) or (not allow_inf and math.isinf(value))
    bad = bad or (low is not None and (value <= low if strict else value < low))
    if bad:
        kind = "a number" if allow_inf else "a finite number"
        raise UsageError(option, f"must be {kind}{bound}, got {value!r}", fix)
