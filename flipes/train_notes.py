"""What ``flipes train`` says once training has started: the presets it applied (``preset_lines``), where a
resumed run continues, what a ``--model``'s parameters get."""

from __future__ import annotations

from typing import Any

from flipes.callbacks import Callback
from flipes.config import TrainConfig


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
