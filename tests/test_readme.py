"""README.md's Python blocks run as written, and what their comments say they print is what they print.

Every ```python block of the README is found by :func:`readme_blocks` and must have a row in ``BLOCKS`` (keyed by
its first line): a new block without one fails here rather than going unchecked. A row gives the smallest honest
stand-ins for the names the README leaves to the user (``my_fitness``, ``data``, ``MyNet``, ...), the block whose
names a fragment continues, and any substitution that keeps a block fast; a substitution whose text is gone from
the README fails too, so none can silently stop applying. Each block runs in a few seconds at the sizes written,
but one: the sketch's HalfCheetah run (up to 600 s) is cut to one generation here.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import math
import re
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import FAST_KW, ROOT
from torch import nn

import flipes


def readme_blocks(name: str = "README.md") -> list[tuple[int, str]]:
    """(line number, dedented source) of every ```python block in the Markdown file ``name`` (README.md unless
    given), indented ones (in lists) included."""
    lines, blocks, i = (ROOT / name).read_text().splitlines(), [], 0
    while i < len(lines):
        if re.fullmatch(r"\s*```python\s*", lines[i]):
            j = i + 1
            while not re.fullmatch(r"\s*```\s*", lines[j]):
                j += 1
            blocks.append((i + 2, textwrap.dedent("\n".join(lines[i + 1 : j]))))
            i = j
        i += 1
    return blocks


# -- stand-ins for what the README leaves to its reader ---------------------------------------------------------


def my_fitness(model: nn.Module, pop: flipes.Population) -> torch.Tensor:
    """A fitness for the API section's 4-in, 2-out MLP: minus each member's squared error to 1 on its own inputs."""
    x = torch.randn(pop.size, 4, generator=pop.generator("inputs"))
    return -(model(x) - 1).square().sum(-1)


class MyNet(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Linear(4, 3))


def sketch_names() -> dict[str, Any]:
    """'Training from Python': ``data``, ``loss_per_member``, ``MyNet``, ``accuracy`` and a gymnasium ``env`` with its
    first ``obs`` are the reader's code."""
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    return {
        "env": env,
        "obs": env.reset(seed=0)[0],
        "data": torch.randn(8, 4, generator=torch.Generator().manual_seed(0)),
        "loss_per_member": lambda out: out.square().mean(dim=(1, 2)),
        "MyNet": MyNet,
        "accuracy": lambda model: 0.5,
    }


def digits_names() -> dict[str, Any]:
    """'Fitness functions': ``data()`` of scripts/digits.py (its x, y first), here 300 random 8x8 images."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(300, 64, generator=g), torch.randint(0, 10, (300,), generator=g)
    return {"data": lambda: (x, y, None, None), "torch": torch, "F": torch.nn.functional}


def image_names() -> dict[str, Any]:
    """'A CNN on images': ``data()`` of scripts/digits.py with its test set, here 300 and 60 random 8x8 images."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(360, 64, generator=g), torch.randint(0, 10, (360,), generator=g)
    return {"data": lambda: (x[:300], y[:300], x[300:], y[300:])}


def backprop_names() -> dict[str, Any]:
    """'Flipout for backprop': a minibatch ``x, y`` of 64-feature inputs, the training set's size, inputs to predict."""
    g = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(32, 64, generator=g),
        "y": torch.randint(0, 10, (32,), generator=g),
        "num_train": 1000,
        "x_test": torch.randn(5, 64, generator=g),
    }


def halfcheetah_stand_in() -> str:
    """The id the sketch's HalfCheetah line trains on: HalfCheetah-v5 where an engine for it is installed
    (EnvPool or gymnasium's MuJoCo envs), else flipes/Pendulum-v1 (no extra), so the rest of the block still runs."""
    have = any(importlib.util.find_spec(m) for m in ("envpool", "mujoco"))
    return "HalfCheetah-v5" if have else "flipes/Pendulum-v1"


CURRICULUM = "import flipes, torch\nfrom flipes.rl import MLPPolicy, RolloutFitness, make_vector_env\n\npopsize"

# first line of a block -> how it runs: names given beforehand ("names"), the block whose namespace it continues
# ("after", a copy of it), substitutions (old text, new text), whether it writes run directories ("runs"), and the
# optional package it needs ("needs": the block is left out where that extra is not installed)
BLOCKS: dict[str, dict[str, Any]] = {
    "import torch, flipes": {  # Training from Python
        "names": sketch_names,
        "runs": True,
        "subs": [
            (  # train for up to 600 s (its row's 2,000 generations): one generation, short episodes, here
                'flipes.TrainConfig.for_env("HalfCheetah-v5", popsize=64, out="runs/hc64")',
                'flipes.TrainConfig.for_env("{id}", popsize=64, out="runs/hc64", generations=1, eval_episodes=1,'
                " max_episode_steps=50)",
            )
        ],
    },
    "import torch, flipes\nfrom torch import nn": {"names": lambda: {"my_fitness": my_fitness}},  # The API
    "x = flipes.flipout(flipes.nn.Vector(torch.full((100,), 3.0)))": {"after": "api"},  # black-box search
    "with es.population() as pop:\n    fitness = my_fitness(model, pop)\nelite": {"after": "api"},  # one member
    "def fitness(model, pop, batch=256):": {"names": digits_names},  # scripts/digits.py's fitness
    "with es.population() as pop:\n    fitness = torch.cat(": {"after": "api"},  # a population in parts
    "import torch, torch.nn.functional as F, flipes": {  # A CNN on images: 3 of its 300 generations
        "names": image_names,
        "subs": [("for _ in range(300):", "for _ in range(3):")],
    },
    "import functools, torch, flipes": {"names": backprop_names},  # Flipout for backprop
    "import torch, transformers, flipes": {"needs": "transformers"},  # Fine-tuning a Hugging Face language model
    "class MemberSampling(transformers.LogitsProcessor):": {  # its sampled answers: tests/test_transformers.py runs it
        "needs": "transformers",
        "names": lambda: {"transformers": importlib.import_module("transformers"), "torch": torch},
    },
    "import flipes, torch\nfrom flipes.rl import": {},  # Novelty search: final observations
    CURRICULUM: {},  # Domain randomization and curricula
    "class MeanObs(flipes.rl.Probe):": {"after": "novelty"},  # Behaviours of your own: probes, on the NSR-ES loop
    "import gymnasium as gym, numpy as np, torch, flipes\nfrom envs.base import TorchVectorEnv": {},  # Your own env
    "import flipes, torch, torch.nn.functional as F\nfrom flipes.nn import FlipoutMixin": {},  # A Flipout form of your own
    # Several objectives and constraints: what their comments say is checked in tests/test_objectives_readme.py
    "import flipes, torch\nfrom flipes.shaping import feasible_first\n\nx": {},
    "import flipes, torch\nfrom flipes.shaping import centered_ranks": {},
    "import flipes, torch\nfrom flipes.shaping import feasible_first\n\n\nclass Safety": {},
}


def row_of(source: str) -> dict[str, Any]:
    """The BLOCKS row of a block: the longest key the block starts with."""
    keys = [k for k in BLOCKS if source.startswith(k)]
    assert keys, f"README block starting {source.splitlines()[0]!r} has no row in tests/test_readme.py's BLOCKS: add one"
    return BLOCKS[max(keys, key=len)]


def run(source: str, names: dict[str, Any], label: str) -> dict[str, Any]:
    ns = {"__name__": f"readme_{label}", **names}
    exec(compile(source, f"README.md:{label}", "exec"), ns)
    return ns


def test_every_python_block_of_the_readme_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ```python block of README.md runs without an error or a warning, with only the stand-ins and
    substitutions of ``BLOCKS``, in the order and context the README gives it (fragments continue the API
    section's namespace); then what its comments state holds: ``print(es)`` shows the line the README prints,
    ``tell``'s stats have the keys its comment lists, the vector search ends below 0.01, a callback's extra
    column reaches metrics.jsonl, the digits fitness is scripts/digits.py's, line for line, and the CNN's BatchNorms
    end with running statistics from update_bn."""
    monkeypatch.chdir(tmp_path)  # the sketch writes runs/cp, runs/mine, ...
    blocks = readme_blocks()
    assert len(blocks) >= 7
    spaces: dict[str, dict[str, Any]] = {}
    for line, source in blocks:
        row, label = row_of(source), f"{line}"
        if "needs" in row and importlib.util.find_spec(row["needs"]) is None:  # an extra this install lacks
            continue
        for old, new in row.get("subs", []):
            assert old in source, f"README.md:{line}: the substitution's text {old!r} is gone; update BLOCKS"
            source = source.replace(old, new.format(id=halfcheetah_stand_in()))
        names = dict(spaces[row["after"]]) if "after" in row else row.get("names", dict)()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ns = run(source, names, label)
        ours = [w for w in caught if w.filename.startswith(("README.md", str(ROOT / "flipes"), str(ROOT / "envs")))]
        assert not ours, f"README.md:{line} warns as written: {[str(w.message) for w in ours]}"
        if source.startswith("import torch, flipes\nfrom torch import nn"):
            spaces["api"] = ns
            check_api_block(source, ns)
        elif source.startswith("import torch, torch.nn.functional as F, flipes"):
            check_cnn(ns)
        elif source.startswith("import torch, flipes"):
            check_sketch(ns)
        elif source.startswith("x = flipes.flipout(flipes.nn.Vector"):
            assert ns["x"]().square().sum().item() < 0.01  # "(tested: < 0.01)"
        elif source.startswith("def fitness(model, pop, batch=256):"):
            check_digits_fitness(source, ns)
        elif source.startswith("import torch, transformers, flipes"):
            assert ns["es"].generation == 3 and ns["fitness"].shape == (30,) and ns["stats"]["fitness_std"] > 0
        elif source.startswith(CURRICULUM):
            check_curriculum(ns)
        elif source.startswith("import flipes, torch\nfrom flipes.rl import"):
            spaces["novelty"] = ns
            check_novelty_search(ns)
        elif source.startswith("class MeanObs(flipes.rl.Probe):"):
            check_probe(ns)
        elif source.startswith("import gymnasium as gym, numpy as np, torch, flipes\nfrom envs.base"):
            check_own_torch_env(ns)


def check_api_block(source: str, ns: dict[str, Any]) -> None:
    printed = re.search(r"^# (FlipES\(.*\))$", source, re.M)
    assert printed and repr(ns["es"]) == printed.group(1)
    listed = re.search(r"stats = es.tell\(fitness\)\s+# (.*)$", source, re.M).group(1)
    keys = set()
    for item in listed.split(", "):
        first, *more = item.split()[0].split("/")
        keys.add(first)
        keys.update(first.rsplit("_", 1)[0] + "_" + m for m in more)  # fitness_mean/max: fitness_max
    assert set(ns["stats"]) == keys, (sorted(ns["stats"]), sorted(keys))
    assert isinstance(ns["stats"]["generation"], int)


def check_cnn(ns: dict[str, Any]) -> None:
    """'A CNN on images': update_bn filled both BatchNorms' running statistics from the training set's 2 batches of
    256, and the accuracy is of the model in eval mode."""
    norms = [m for m in ns["model"].modules() if isinstance(m, nn.BatchNorm2d)]
    assert ns["es"].generation == 3 and len(norms) == 2 and not ns["model"].training
    assert all(int(m.num_batches_tracked) == 2 and not torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in norms)
    assert 0 <= ns["accuracy"] <= 1


def check_sketch(ns: dict[str, Any]) -> None:
    assert ns["result"].reason.startswith("solved")
    assert not ns["policy"].training  # "the center policy, eval mode"
    assert isinstance(ns["policy"](ns["obs"]), np.integer)  # "numpy obs in, numpy action out"
    hc = flipes.read_metrics(ns["config"].run_dir())
    assert all(row["sigma_x100"] == pytest.approx(100 * row["sigma"]) for row in hc)  # "reaches metrics.jsonl"


def check_curriculum(ns: dict[str, Any]) -> None:
    """The curriculum block: 5 generations, the range widened to its last setting, and the gravities the last
    generation's episodes drew (one per env) lie in the range set before it, some outside the first range [9.5, 10.5]
    (the widened range took effect; these seeds' draws); the last held-out evaluation gave 10 returns."""
    env = ns["env"].unwrapped
    assert ns["es"].generation == 5 and list(env.g_range) == [7.5, 12.5]
    assert env.g.shape == (64,) and bool(((env.g >= 7.5) & (env.g <= 12.5)).all())
    assert env.g.min() < 9.5 and env.g.max() > 10.5
    assert ns["returns"].shape == (10,)


def check_novelty_search(ns: dict[str, Any]) -> None:
    """The NSR-ES block: 10 generations, one center behaviour per generation in the archive, and each member's
    behaviour is where its episode ended: every member whose return (its steps) fell short of the 200-step cut ends
    past CartPole's termination bounds (|x| > 2.4 or |θ| > 12°), which the last observation it acted on was within
    (one that reached the cut may have ended there either way)."""
    es, rollout, archive = ns["es"], ns["rollout"], ns["archive"]
    assert es.generation == 10 and len(archive) == 10 and all(b.shape == (1,) for b in archive)
    final = rollout.last_final_obs
    assert final.shape == (64, 1, 4) and torch.equal(ns["behaviour"], final[:, 0, :1])
    past = (final[:, 0, 0].abs() > 2.4) | (final[:, 0, 2].abs() > 12 * 2 * math.pi / 360)
    ended = rollout.last_returns < 200
    assert ended.any() and bool(past[ended].all())


def check_probe(ns: dict[str, Any]) -> None:
    """The probe block: 10 more generations, one center behaviour (2 numbers) each in its archive, and each member's
    behaviour its episode's mean cart position and pole angle: row m of ``last_probe`` is the mean of the observations
    of the m-th episode's steps, which never leave CartPole's bounds before the last (|x| <= 2.4 + one step's drift)."""
    es, rollout, archive = ns["es"], ns["rollout"], ns["archive"]
    assert es.generation == 20 and len(archive) == 10 and all(b.shape == (2,) for b in archive)
    probed = rollout.last_probe
    assert probed.shape == (64, 1, 4) and torch.equal(ns["behaviour"], probed[:, 0, [0, 2]])
    assert bool((probed[:, 0, 0].abs() < 2.5).all()) and bool((probed[:, 0, 2].abs() < 0.25).all())


def check_own_torch_env(ns: dict[str, Any]) -> None:
    """'Your own env': the TorchVectorEnv subclass trains its 30 generations, and env i of a reset(seed=s) of 3 copies
    starts where one copy reset with seed s + i starts, exactly."""
    assert ns["result"].reason == "generations" and len(ns["result"].metrics) == 30
    three = ns["Reach"](3).reset(seed=5)[0]
    for i in range(3):
        assert torch.equal(three[i], ns["Reach"](1).reset(seed=5 + i)[0][0])


def check_digits_fitness(source: str, ns: dict[str, Any]) -> None:
    script = (ROOT / "scripts" / "digits.py").read_text()
    for line in source.splitlines()[1:]:  # the def line carries type hints in the script
        code = line.split("#")[0].strip()
        assert code in script, f"README's digits fitness line {code!r} is not in scripts/digits.py"
    model = flipes.flipout(nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)))
    es = flipes.FlipES(model, popsize=16, seed=0)
    with es.population() as pop:
        fitness = ns["fitness"](model, pop)
    assert fitness.shape == (16,) and bool(fitness.isfinite().all())


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation other than ``-`` and ``_`` dropped (letters
    of any script kept, such as σ), spaces as ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


DOCS = ("README.md", "BENCHMARKS.md", "DEVELOPERS.md")  # the Markdown files that link to each other's sections


def headings(name: str) -> list[str]:
    """The text of each heading of the Markdown file ``name``, in order; a code block's ``# comment`` is no heading."""
    prose = re.sub(r"^\s*```.*?^\s*```", "", (ROOT / name).read_text(), flags=re.M | re.S)
    return [line.lstrip("#") for line in prose.splitlines() if re.match(r"#{1,6} ", line)]


def heading_anchors(name: str) -> set[str]:
    """The anchors GitHub gives the headings of the Markdown file ``name``: a repeated heading's gets -1, -2, ..."""
    anchors: set[str] = set()
    for heading in headings(name):
        anchor, n = github_anchor(heading), 0
        while (anchor if n == 0 else f"{anchor}-{n}") in anchors:
            n += 1
        anchors.add(anchor if n == 0 else f"{anchor}-{n}")
    return anchors


def test_every_link_within_the_readme_leads_to_one_of_its_headings() -> None:
    """Each ``](#anchor)`` link of README.md names the anchor of a heading in it (GitHub's rule), and each link to a
    file (a result's plot, DEVELOPERS.md, BENCHMARKS.md) names a file of the repository, so a renamed section or file
    cannot leave a link that goes nowhere."""
    text = (ROOT / "README.md").read_text()
    names = [h.strip() for h in headings("README.md")]
    assert "Quick start" in names and not any(h.startswith("outside a population") for h in names)
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert len(links) >= 10 and github_anchor("The `flipes` command") == "the-flipes-command"
    assert [link for link in links if link not in heading_anchors("README.md")] == []
    files = re.findall(r"\]\(((?!#|https?:)[^)#]+)(?:#[^)]*)?\)", text)  # the images and files it links to
    assert len(files) >= 5 and [f for f in files if not (ROOT / f).is_file()] == []


@pytest.mark.parametrize("source", DOCS)
def test_every_link_between_the_docs_leads_to_a_heading_of_its_target(source: str) -> None:
    """Each link from one of README.md, BENCHMARKS.md and DEVELOPERS.md to a section of one of them, ``](#anchor)``
    within the file or ``](OTHER.md#anchor)`` into another, names the anchor of a heading of the file it leads to
    (GitHub's rule), and each link to a file names a file of the repository: a section moved from one file to
    another (the benchmark tables went from the README to BENCHMARKS.md), or renamed, cannot leave a link behind
    that goes nowhere. The README and BENCHMARKS.md link to each other in both directions, DEVELOPERS.md to both."""
    text = (ROOT / source).read_text()
    links = [(source, a) for a in re.findall(r"\]\(#([^)]+)\)", text)]
    cross = re.findall(r"\]\((" + "|".join(map(re.escape, DOCS)) + r")#([^)]+)\)", text)
    broken = [f"{target}#{anchor}" for target, anchor in links + cross if anchor not in heading_anchors(target)]
    assert broken == [], f"{source} links to anchors that no heading of their file has"
    least = {
        "README.md": {"BENCHMARKS.md": 10},
        "BENCHMARKS.md": {"README.md": 3},
        "DEVELOPERS.md": {"README.md": 2, "BENCHMARKS.md": 1},
    }
    for target, n in least[source].items():  # each direction is exercised, not only allowed
        assert sum(t == target for t, _ in cross) >= n, (source, target)
    files = re.findall(r"\]\(((?!#|https?:)[^)#]+)(?:#[^)]*)?\)", text)
    assert [f for f in files if not (ROOT / f).is_file()] == []


def test_benchmarks_md_holds_no_python_block() -> None:
    """BENCHMARKS.md records measurements with the commands that reproduce them (inline, mostly shell), and no
    ```python block, so none of it is run here: its commands take minutes to hours, and their scripts run at small
    sizes in their own tests (``--quick``, ``--tiny``). A Python block added there would run nowhere (``BLOCKS``
    covers the README's alone): this fails first, so that it goes to the README with a ``BLOCKS`` row, or gets a
    runner. DEVELOPERS.md holds none either."""
    assert readme_blocks("BENCHMARKS.md") == []
    assert readme_blocks("DEVELOPERS.md") == []


def test_the_readmes_metrics_table_names_every_column_a_run_writes(tmp_path: Path) -> None:
    """The columns README.md's ``metrics.jsonl`` table lists are exactly the keys of the rows a run writes with every
    optional column on (an env, evaluations, ``--reward-shift``, ``--track-best``, ``--lr-decay``): none undocumented,
    none stale."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| column | what it is |") :].split("\n\n", 1)[0]
    documented = {name for row in table.splitlines()[2:] for name in re.findall(r"`(\w+)`", row.split(" | ")[0])}
    flipes.train(**FAST_KW, generations=2, eval_every=1, reward_shift=1.0, track_best=True, lr_decay=0.9, out=str(tmp_path))
    written = {key for row in flipes.read_metrics(tmp_path) for key in row}
    assert documented == written


def test_the_readme_lists_the_options_a_resume_may_change() -> None:
    """The options README.md says a resume may change are exactly the TrainConfig fields a resume does not compare
    with the checkpoint (``flipes.resume.RESUME_KEYS``), less ``--out``, ``--resume``, ``--overwrite`` and
    ``--progress``, which say where and how rather than what the run is."""
    from flipes.config import TrainConfig
    from flipes.resume import RESUME_KEYS

    text = " ".join((ROOT / "README.md").read_text().split())
    listed = text[text.index("these may change, and `config.json` then records") :].split(")", 1)[0]
    flags = set(re.findall(r"`--([\w-]+)`", listed))
    free = {f.name.replace("_", "-") for f in dataclasses.fields(TrainConfig) if f.name not in RESUME_KEYS}
    assert flags == free - {"out", "resume", "overwrite", "progress"}


def test_the_readmes_options_tables_give_each_options_default() -> None:
    """Each row of README.md's option tables whose default cell holds a value per option (a literal in backticks, or
    on/off for a flag; one value for several options is each one's) states that option's TrainConfig default: a
    changed default (--mpi-timeout 300 to 30, say) leaves no row saying the old one."""
    from flipes.config import TrainConfig

    defaults = {f.name.replace("_", "-"): f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(TrainConfig)}  # fmt: skip

    def shown(value: Any) -> str:  # as the README writes it
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, list):
            return " ".join(map(str, value))
        return f"{value:g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, dict) else str(value)

    checked = []
    for line in (ROOT / "README.md").read_text().splitlines():
        row = re.fullmatch(r"\| (`--.+?) \| (.+?) \| .*", line)
        if row is None:
            continue
        options = re.findall(r"`--([a-z][a-z-]*)", row[1])  # each option's name, without its argument
        values = [re.fullmatch(r"`([^`<]*)`.*|(on|off)", cell.strip()) for cell in row[2].split(", ")]
        if None in values:  # a description (none, the search's), a path pattern, or another option's name
            continue
        said = [v[1] if v[1] is not None else v[2] for v in values] * (len(options) if len(values) == 1 else 1)
        for option, value in zip(options, said, strict=False):
            if option in defaults:  # not --no-mirrored, nor another tool's alias
                checked.append((option, value, shown(defaults[option])))
    assert len(checked) >= 40, checked
    assert [(option, value) for option, value, _ in checked] == [(option, default) for option, _, default in checked]


def test_the_scripts_table_names_every_script_and_only_existing_ones() -> None:
    """The README's Scripts table names files of scripts/ (a renamed or removed script cannot leave a row behind),
    each with an ``Args`` dataclass (the ``--help`` and ``--config`` the text under it promises); and every
    scripts/*.py is named: in the table, as a thin wrapper of the ``flipes`` command, or among the files the Scripts
    section says are no commands of their own, so a new script cannot go undocumented."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Scripts\n") : text.index("\n## The API\n")]
    rows = [line for line in section.splitlines() if line.startswith("| `python scripts/")]
    listed = {name for row in rows for name in re.findall(r"(\w+)\.py", row.split(" | ")[0])}
    assert len(rows) >= 20 and {"digits", "repro_timing", "bench_mpi"} <= listed
    missing = sorted(name for name in listed if not (ROOT / "scripts" / f"{name}.py").is_file())
    assert missing == [], f"the README's Scripts table names scripts that do not exist: {missing}"

    def defines_args(name: str) -> bool:
        tree = ast.parse((ROOT / "scripts" / f"{name}.py").read_text())
        return any(isinstance(node, ast.ClassDef) and node.name == "Args" for node in tree.body)

    assert [name for name in sorted(listed) if not defines_args(name)] == []
    wrappers_line = " ".join(text.split())
    wrappers_line = wrappers_line[: wrappers_line.index("are thin wrappers of it")].rsplit(";", 1)[-1]
    wrappers = set(re.findall(r"`scripts/(\w+)\.py`", wrappers_line))
    assert wrappers == {"train", "evaluate", "export", "plot"}
    prose = " ".join(line for line in section.splitlines() if not line.startswith("|"))
    helpers = {name for name in re.findall(r"`(\w+)\.py`", prose) if name not in listed}
    present = {p.stem for p in (ROOT / "scripts").glob("*.py")}
    assert sorted(present - listed - wrappers - helpers) == [], "scripts/*.py that the README does not name"


def makefile_recipes() -> dict[str, str]:
    """Each target of the Makefile, with its recipe lines joined (the commands ``make TARGET`` runs itself)."""
    recipes: dict[str, str] = {}
    target = None
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("\t") and target is not None:
            recipes[target] += line.strip() + "\n"
        elif m := re.match(r"([A-Za-z][\w-]*):(?!=)", line):
            target = m.group(1)
            recipes[target] = ""
        elif not line.startswith("\t"):
            target = None
    return recipes


def test_the_readmes_make_commands_are_targets_that_run_their_scripts() -> None:
    """Every ``make TARGET`` the README names is a target of the Makefile, and a Scripts row that gives one beside its
    script (``python scripts/bench_solve.py`` (``make bench-solve``)) names the target whose recipe runs that script."""
    text = (ROOT / "README.md").read_text()
    recipes = makefile_recipes()
    assert {"setup", "train", "test"} <= set(recipes)
    named = set(re.findall(r"`make ([a-z][\w-]*)", text))
    assert len(named) >= 6 and sorted(named - set(recipes)) == []
    pairs = re.findall(r"\| `python (scripts/\w+\.py)[^`]*` \(`make ([\w-]+)`\)", text)
    assert len(pairs) >= 4
    assert [(script, target) for script, target in pairs if script not in recipes.get(target, "")] == []


def trained_run_dirs(until: str = "## The API") -> list[tuple[int, str, Path]]:
    """(line, how, run directory) of each fresh run README.md trains above the heading ``until``, in its order: each
    ``flipes train`` or ``make train`` line of a bash block (its ``--out``, else ``runs/<env name>``), and each
    ``flipes.train`` / ``TrainConfig.for_env`` call of a Python block (``out=``, else the same default); a line or call
    that resumes (``--resume``, ``resume=``) or replaces (``--overwrite``, ``overwrite=``) a run is left out."""
    from flipes.config import default_run_dir

    lines = (ROOT / "README.md").read_text().split(until)[0].splitlines()
    found: list[tuple[int, str, Path]] = []
    i = 0
    while i < len(lines):
        fence = re.fullmatch(r"\s*```(bash|python)\s*", lines[i])
        if not fence:
            i += 1
            continue
        j = i + 1
        while not re.fullmatch(r"\s*```\s*", lines[j]):
            j += 1
        body = lines[i + 1 : j]
        if fence.group(1) == "bash":
            for k, line in enumerate(body):
                code = line.split("#")[0]
                if not re.search(r"\b(flipes|make) train\b", code) or re.search(r"--(resume|overwrite)\b", code):
                    continue
                opt = dict(re.findall(r"--(env|out|fitness)[ =](\S+)", code))
                run = default_run_dir(opt.get("out", ""), opt.get("env", "flipes/CartPole-v1"), opt.get("fitness", ""))
                found.append((i + 2 + k, code.strip(), run))
        else:
            tree = ast.parse(textwrap.dedent("\n".join(body)))
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and ast.unparse(node.func) in ("flipes.train", "flipes.TrainConfig.for_env")):
                    continue
                kw = {k.arg: k.value for k in node.keywords if k.arg}
                if "resume" in kw or "overwrite" in kw or (node.args and ast.unparse(node.func) == "flipes.train"):
                    continue  # a resume, a replacement, or a TrainConfig counted where it was made
                env = node.args[0] if node.args else kw.get("env")
                value = {k: ast.literal_eval(v) if isinstance(v, ast.Constant) else ast.unparse(v) for k, v in kw.items()}
                env_id = ast.literal_eval(env) if isinstance(env, ast.Constant) else "flipes/CartPole-v1"
                run = default_run_dir(value.get("out", ""), env_id, value.get("fitness", ""))
                found.append((i + 2 + node.lineno - 1, ast.unparse(node), run))
        i = j + 1
    return found


def test_the_readme_never_trains_a_fresh_run_into_a_directory_it_already_filled() -> None:
    """A reader who runs README.md's commands and blocks from the top, in order, never meets the refusal to train into
    a directory holding a run: every fresh run it trains up to The API (the quick start's ``make train``, the first
    steps' commands, the seeds' loop, the Python sketch) goes to a directory no earlier one of them trained into."""
    found = trained_run_dirs()
    assert len(found) >= 8 and any(run == Path("runs/CartPole-v1") for _, _, run in found)
    first: dict[Path, tuple[int, str]] = {}
    for line, how, run in found:
        assert run not in first, (
            f"README.md:{line} `{how}` trains into {run}, which README.md:{first[run][0]} `{first[run][1]}` "
            "already filled: training there is refused; give it another out"
        )
        first[run] = (line, how)


def quoted_pattern(quote: str) -> re.Pattern[str]:
    """A README quote of a command's output as a pattern: its words exactly, each number any number."""
    return re.compile(re.sub(r"\\\d+(?:\\\.\\\d+)?|\d+(?:\\\.\d+)?", r"\\d+(?:\\.\\d+)?", re.escape(quote)))


def test_the_first_steps_end_with_the_lines_and_files_the_readme_quotes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """'First steps': the first command as written solves flipes/CartPole-v1 and ends with the line the README quotes,
    ``flipes evaluate runs/cp --checkpoint best`` then prints the line it quotes (the same words; numbers, which a
    machine's rounding may move, as numbers), naming the generation that solved it, and the run directory holds the
    files the README lists (curves.png and tensorboard/ where their extras are installed)."""
    from flipes.commands import main

    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n# train until.*?\n(flipes train .*?)\n", text).group(1)
    said = re.search(r"the first command ended with\s+`([^`]+)`.*?--checkpoint best` then printed\s+`([^`]+)`", text, re.S)
    listed = re.search(r"A run directory holds ((?:`[^`]+`(?:,\s+|\s+and\s+))+`[^`]+`)", text).group(1)
    monkeypatch.chdir(tmp_path)
    assert main(block.split()[1:]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert quoted_pattern(said.group(1)).fullmatch(last), (last, said.group(1))
    assert main(["evaluate", "runs/cp", "--checkpoint", "best"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert quoted_pattern(said.group(2)).fullmatch(printed), (printed, said.group(2))
    generations = int(re.search(r"(\d+) generations in all", last).group(1))
    assert printed.endswith(f"after generation {generations - 1})")  # best.pt is the evaluation that solved it
    files = {name.rstrip("/") for name in re.findall(r"`([^`]+)`", listed)}
    optional = {"curves.png": "matplotlib", "tensorboard": "tensorboard"}
    want = {f for f in files if f not in optional or importlib.util.find_spec(optional[f])}
    assert {p.name for p in (tmp_path / "runs/cp").iterdir() if not p.name.startswith(".")} == want
