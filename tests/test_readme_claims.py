"""What README.md names exists as it names it: each ``--flag`` it gives a command is one of that command's options,
each ``flipes.X`` and ``from flipes... import Y`` resolves, each keyword of an inline call is a parameter of the
callable, and each repository path it names is a file or directory of the clone.

All read in this process from the parsers and modules themselves (no command is run), so a renamed option, a moved
module or a removed parameter fails here in well under a second instead of leaving the README behind.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import inspect
import re
from collections.abc import Callable
from functools import cache
from typing import Any

from helpers import ROOT, load_script

import flipes
from flipes.cli import COMMON, FOREIGN, PROCESSES, SHORT_FOREIGN, build_parser
from flipes.command_options import EvaluateConfig, ExportConfig, PlotConfig
from flipes.config import TrainConfig

README = (ROOT / "README.md").read_text()

# flags of other programs the README quotes in their own command lines (pytest, pip, Slurm, MPI launchers, timeout)
OTHER_PROGRAMS = {"--maxprocesses", "--dist", "--no-deps", "--target", "--signal", "--array", "--time", "--requeue",
                  "--hostfile", "--foreground", "--mpi"}  # fmt: skip
# a command as the README writes one, up to the next: `flipes train ...`, `python -m flipes plot ...`, a script, make's
COMMAND = re.compile(r"(?:flipes|-m flipes)\s+(train|evaluate|export|plot)\b|(scripts/\w+\.py)|make train ARGS=")
FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")


def option_strings(cls: type) -> frozenset[str]:
    """Every flag the parser of the options dataclass ``cls`` accepts (``--no-x`` of a bool included)."""
    return frozenset(s for action in build_parser(cls)._actions for s in action.option_strings)


@cache
def command_options() -> dict[str, frozenset[str]]:
    """Each command's flags: ``train``, ``evaluate``, ``export``, ``plot`` and ``scripts/NAME.py`` for every script
    with an ``Args`` dataclass (the four thin wrappers are their commands)."""
    options = {"train": TrainConfig, "evaluate": EvaluateConfig, "export": ExportConfig, "plot": PlotConfig}
    found = {name: option_strings(cls) for name, cls in options.items()}
    for name in options:
        found[f"scripts/{name}.py"] = found[name]
    for path in sorted((ROOT / "scripts").glob("*.py")):
        if re.search(r"^class Args\b", path.read_text(), re.M):
            found[f"scripts/{path.name}"] = option_strings(load_script(path).Args)
    return found


def code_pieces(text: str) -> list[tuple[int, str]]:
    """(line number, text) of each inline code span and each line of a fenced block (its ``# comment`` cut), and of
    each ``make train ARGS="..."`` as the ``flipes train`` it runs."""
    pieces, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(r"\s*```", line):
            fenced = not fenced
        elif fenced:
            pieces.append((number, "" if line.lstrip().startswith("#") else line.split(" # ")[0]))
        else:
            pieces += [(number, m[1]) for m in re.finditer(r"`([^`]+)`", line)]
            pieces += [(number, "flipes train " + m[1]) for m in re.finditer(r'ARGS="([^"]*)"', line)]
    return pieces


def misnamed_flags(text: str) -> tuple[int, list[tuple[int, str, str]]]:
    """How many commands ``text`` writes out, and (line, command, flag) of each flag one of them is given that is not
    one of that command's options; a row of the Scripts table gives its flags to its script."""
    options, commands, wrong = command_options(), 0, []
    for number, piece in code_pieces(text):
        found = list(COMMAND.finditer(piece))
        commands += len(found)
        for k, match in enumerate(found):
            end = found[k + 1].start() if k + 1 < len(found) else len(piece)
            words = re.split(r"\||;|&&", piece[match.end() : end])[0]  # up to a pipe or the next shell command
            command = match[1] or match[2] or "train"
            if command in options:
                wrong += [(number, command, flag) for flag in FLAG.findall(words) if flag not in {*options[command], "--help"}]
    for number, line in enumerate(text.splitlines(), 1):
        row = re.match(r"\| `python (scripts/\w+\.py)", line)
        if row and row[1] in options:  # its description may name the training options its script compares
            known = options[row[1]] | options["train"]
            wrong += [(number, row[1], flag) for flag in FLAG.findall(line.split(" | ")[1]) if flag not in known]
    return commands, wrong


def test_every_flag_the_readme_gives_a_command_is_one_of_its_options() -> None:
    """Each ``--flag`` written after ``flipes train|evaluate|export|plot``, ``python scripts/NAME.py`` or ``make train
    ARGS=`` in a code span or block of README.md is accepted by that command's parser; a flag renamed or removed in
    the code (or mistyped in the README) fails here, as a made-up one does."""
    commands, wrong = misnamed_flags(README)
    assert commands >= 100, commands  # the README's commands were found
    assert wrong == [], "README.md gives commands flags their parsers do not have"
    # the check itself: a flag after each kind of command that its parser lacks is caught
    made_up = "`flipes evaluate runs/x --popsize 8` and `python scripts/digits.py --env-kwargs {}`"
    assert misnamed_flags(made_up)[1] == [(1, "evaluate", "--popsize"), (1, "scripts/digits.py", "--env-kwargs")]


def test_every_flag_the_readme_names_is_an_option_or_a_foreign_name_flipes_refuses() -> None:
    """Each ``--flag`` anywhere in README.md is an option of a flipes command or script, another library's name that
    flipes' parser refuses naming its own option (flipes.cli's tables, which the README's "Coming from" lists quote),
    or a flag of another program the README quotes (pytest, pip, Slurm, mpiexec)."""
    ours = set().union(*command_options().values())
    refused = {f"--{key.replace('_', '-')}" for key in [*FOREIGN, *COMMON, *PROCESSES]} | {f"-{k}" for k in SHORT_FOREIGN}
    named = {flag for line in README.splitlines() for flag in FLAG.findall(line)}
    assert len(named) >= 80
    assert sorted(named - ours - refused - OTHER_PROGRAMS - {"--help", "--version", "--no-x"}) == []


def resolve(dotted: str) -> Any:
    """The object ``flipes.a.b`` (or ``envs.a``) names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for part in parts[k:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(dotted)


def test_every_flipes_name_the_readme_uses_exists() -> None:
    """Each dotted ``flipes.X.Y`` / ``envs.X`` and each name of a ``from flipes... import A, B`` in README.md resolves
    (a renamed or moved public name leaves no sentence pointing at nothing)."""
    dotted = {m.rstrip(".") for m in re.findall(r"(?<![\w./])((?:flipes|envs)(?:\.[A-Za-z_]\w*)+)", README)}
    dotted = {d for d in dotted if not d.endswith((".py", ".json", ".jsonl", ".pt", ".toml"))}  # files, not names
    imported = {f"{m[1]}.{name}" for m in re.finditer(r"from ((?:flipes|envs)[\w.]*) import (\([\w,\s]+\)|[\w, ]+)", README)
                for name in re.findall(r"\w+", m[2])}  # fmt: skip
    assert len(dotted) >= 40 and len(imported) >= 10
    missing = []
    for name in sorted(dotted | imported):
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert missing == []


def inline_calls(text: str) -> list[tuple[int, str, list[str]]]:
    """(line, callee, keywords) of each call written in an inline code span outside code blocks, ``f(a, k=v)``, with
    the keywords at its own level (not those of calls inside its arguments)."""
    calls, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(r"\s*```", line):
            fenced = not fenced
        if fenced:
            continue
        for span in re.findall(r"`([^`]+)`", line):
            for m in re.finditer(r"([A-Za-z_][\w.]*)\(", span):
                depth, end, top = 1, m.end(), ""
                while end < len(span) and depth:
                    depth += {"(": 1, ")": -1}.get(span[end], 0)
                    top += span[end] if depth == 1 and span[end] not in "()" else " "
                    end += 1
                calls.append((number, m[1], re.findall(r"(?:^|,)\s*(\w+)\s*=(?!=)", top)))
    return calls


def parameters(obj: Callable[..., Any]) -> set[str] | None:
    """The keywords ``obj`` takes; None where it takes any (``**kwargs``), but flipes.train's, which are TrainConfig's
    fields and its own."""
    signature = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
    names = set(signature.parameters)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return names | {f.name for f in dataclasses.fields(TrainConfig)} if obj is flipes.train else None
    return names


def test_every_keyword_of_an_inline_call_in_the_readme_is_a_parameter() -> None:
    """Each ``name(..., keyword=...)`` in an inline code span of README.md whose callee is a flipes name (``FlipES``,
    ``flipes.train``, ``RolloutFitness``, ``ClipUp``, ...) uses keywords that callee takes; another library's keyword
    that flipes refuses naming its own (``flipes.train(max_iter=)``) is what the README says it is."""
    import flipes.nn
    import flipes.optim
    import flipes.rl
    import flipes.search
    import flipes.shaping

    bare = {k: getattr(m, k) for m in (flipes.optim, flipes.shaping, flipes.search, flipes.nn, flipes.rl, flipes)
            for k in dir(m) if not k.startswith("_")}  # fmt: skip
    refused = set(FOREIGN) | set(COMMON)
    checked, wrong = 0, []
    for number, callee, keywords in inline_calls(README):
        try:
            obj = resolve(callee) if callee.startswith("flipes.") else bare.get(callee)
        except (ImportError, AttributeError):
            obj = None  # a name of the reader's (es.tell, model.generate): not flipes' to check
        if not callable(obj) or (names := parameters(obj)) is None:
            continue
        checked += len(keywords)
        wrong += [(number, callee, k) for k in keywords if k not in names and not (obj is flipes.train and k in refused)]
    assert checked >= 80, checked
    assert wrong == [], "README.md calls flipes names with keywords they do not take"


def test_every_repository_path_the_readme_names_exists() -> None:
    """Each path under scripts/, tests/, flipes/ or envs/ that README.md names (in backticks or a link, a ``*`` or
    ``{a,b}`` pattern matching at least one file, ``tests/test_x`` as ``tests/test_x.py``) and each linked file exists;
    but for what .gitignore keeps out of the clone (``scripts/results/gpu_check_quick.*``, a smoke run's report)."""
    ignored = [line for line in (ROOT / ".gitignore").read_text().splitlines() if line and not line.startswith("#")]
    missing = []
    for number, line in enumerate(README.splitlines(), 1):
        for path in re.findall(r"(?<![\w/.-])((?:scripts|tests|flipes|envs)/[\w./*{},-]*[\w*}])", line):
            if re.match(r"(flipes|envs)/[A-Z]", path) or any(fnmatch.fnmatch(path, p) for p in ignored):  # an env id; output
                continue
            brace = re.search(r"\{([^}]*)\}", path)
            each = [path[: brace.start()] + word + path[brace.end() :] for word in brace[1].split(",")] if brace else [path]
            if not all(any(ROOT.glob(p)) or any(ROOT.glob(f"{p}.py")) for p in each):
                missing.append((number, path))
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", line):
            if not target.startswith(("http://", "https://")) and not (ROOT / target).exists():
                missing.append((number, target))
    assert missing == []


def test_every_option_of_the_commands_is_in_the_readme() -> None:
    """Each field of TrainConfig has a row in the README's "Training options" tables (a new option cannot go
    undocumented there, nor a removed one keep its row: the first test above), and each option of ``flipes
    evaluate``, ``export`` and ``plot`` is named somewhere in README.md."""
    section = README[README.index("\n### Training options\n") : README.index("\n### Help, config files and types\n")]
    rows = {flag for line in section.splitlines() if line.startswith("| `--") for flag in FLAG.findall(line.split(" | ")[0])}
    fields = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(TrainConfig)}
    assert len(fields) >= 50 and sorted(fields - rows) == []
    others = set().union(*(command_options()[name] for name in ("evaluate", "export", "plot")))
    named = {flag for line in README.splitlines() for flag in FLAG.findall(line)}
    flags = {o for o in others if o.startswith("--") and "_" not in o and not o.startswith("--no-")} - {"--help"}
    assert len(flags) >= 12 and sorted(flags - named) == []


def attributes(cls: type) -> set[str]:
    """The attributes an instance of ``cls`` has: its class's, its dataclass fields and every ``self.X = ...`` of its
    source (read, not run: building a FlipES imports torch's Dynamo through its optimizer, seconds in a fresh process)."""
    assigned = {name for line in inspect.getsource(cls).splitlines() if "=" in line
                for name in re.findall(r"self\.(\w+)", line.split("=")[0])}  # fmt: skip
    return set(dir(cls)) | assigned | ({f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set())


def test_the_attributes_the_readme_reads_off_flipes_objects_exist() -> None:
    """Each ``es.X``, ``pop.X``, ``result.X`` and ``state.X`` in README.md's text (a FlipES, its Population,
    flipes.train's result, a callback's TrainState; its Python blocks run in test_readme.py, where such names may be
    the reader's own) is an attribute of that object: a renamed one leaves no recipe reading nothing."""
    from flipes.train_state import TrainResult, TrainState

    has = {"es": attributes(flipes.FlipES), "pop": attributes(flipes.Population)}
    has |= {"result": attributes(TrainResult), "state": attributes(TrainState)}
    files = {"py"}  # es.py (OpenAI's ES starter), state.py: files, not attributes
    text = re.sub(r"(?ms)^\s*```.*?^\s*```", "", README)  # the text outside code blocks
    found = {(name, attr) for name in has for attr in re.findall(rf"(?<![\w.]){name}\.([A-Za-z_]\w*)", text)}
    assert len(found) >= 30
    assert sorted((name, attr) for name, attr in found if attr not in has[name] | files) == []


def test_the_layout_names_every_module_of_flipes_nn_and_es() -> None:
    """README.md's Layout, which names the files of ``flipes/``, ``flipes/nn/`` and ``flipes/es/`` one by one (``rl/``
    and ``envs/`` it summarizes), names each of them: a new module cannot go unlisted."""
    layout = README[README.index("\n## Layout\n") :]
    named = {word.removesuffix(".py") for word in re.findall(r"`([\w.]+)`", layout)}
    modules = {p.stem for d in ("flipes", "flipes/nn", "flipes/es") for p in (ROOT / d).glob("*.py")} - {"__init__", "__main__"}
    assert len(modules) >= 60 and sorted(modules - named) == []


def test_every_extra_the_readme_names_is_declared_and_every_declared_one_is_named() -> None:
    """Each pip extra README.md names (``flipes[plot]``, ``'.[mpi]'``, ``[examples]``) is one pyproject.toml declares,
    and each declared one is named: an error's ``pip install 'flipes[X]'`` hint quoted here installs something."""
    import tomllib

    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    # extras are lower case and hyphenated: a TOML table, `[env_kwargs]`, is none
    written = re.findall(r"(?:flipes|\.)\[([a-z,-]+)\]", README) + re.findall(r"`\[([a-z-]+)\]`", README)
    named = {extra for group in written for extra in group.split(",")}
    assert len(declared) >= 8 and named == declared
