"""MuJoCo's warnings while models compile, said once instead of once per copy.

MuJoCo prints each warning of its XML compiler to stdout and appends it to ``MUJOCO_LOG.TXT`` in the working
directory. gymnasium's ``half_cheetah.xml`` uses ``settotalmass``, which MuJoCo 4 deprecates, so a vector env of N
HalfCheetah copies printed that note N times (in every worker process too) and grew a log file in the user's
directory. Inside :func:`mujoco_warnings_once` the warnings are collected instead: that note, about gymnasium's
file rather than the user's run, is dropped (as the MuJoCo Warp envs drop it), and each other distinct warning is
raised once as a Python warning (filterable like any other) when the block ends. The handler there before (MuJoCo's
own, or one the user installed) is put back.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import gymnasium as gym


class MujocoWarning(UserWarning):
    """A warning MuJoCo gave while an env's model was compiled (e.g. a deprecated XML attribute)."""


def uses_mujoco(entry_point: Any) -> bool:
    """Whether a registered entry point is one of gymnasium's MuJoCo envs."""
    return isinstance(entry_point, str) and entry_point.startswith("gymnasium.envs.mujoco")


def makes_mujoco(env_id: str) -> bool:
    """Whether ``env_id``, registered with gymnasium in this process, is one of its MuJoCo envs (any other id: no)."""
    spec = gym.registry.get(env_id)
    return spec is not None and uses_mujoco(spec.entry_point)


@contextlib.contextmanager
def mujoco_warnings_once(report: bool = True, load: bool = False) -> Iterator[list[str]]:
    """Collects MuJoCo's warnings inside the block; yields the list of distinct ones.

    Args:
        report: warn each distinct one once (as :class:`MujocoWarning`) when the block ends; ``False`` drops them
            (a worker process whose parent made the same model and reported them already).
        load: import MuJoCo if it is not imported yet (the block makes a MuJoCo env for certain); otherwise a
            process that never imported MuJoCo is left alone (no import cost for envs that do not use it).
    """
    seen: list[str] = []
    mujoco = sys.modules.get("mujoco")
    if mujoco is None and load:
        try:
            import mujoco
        except Exception:  # not installed, or failing to import (MUJOCO_GL names a missing backend): the env says so
            mujoco = None
    setter = getattr(mujoco, "set_mju_user_warning", None)
    if setter is None:  # no MuJoCo, or a MuJoCo without the hook
        yield seen
        return
    previous = mujoco.get_mju_user_warning()

    def collect(message: str) -> None:
        if "settotalmass" not in message and message not in seen:
            seen.append(message)

    setter(collect)
    try:
        yield seen
    finally:
        setter(previous)
        if report:
            for message in seen:
                warnings.warn(f"MuJoCo: {message.strip()}", MujocoWarning, stacklevel=1)  # one place: each message once
