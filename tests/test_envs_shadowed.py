"""A module of the user's named ``envs`` that hides flipes' env package (a folder or ``envs.py`` beside their script) is
named in one line, not reported as every ``flipes/`` id unknown in an empty list."""

from __future__ import annotations

import sys
import types

import pytest

from flipes.rl import make_vector_env
from flipes.rl.envs import EnvError


def test_a_users_envs_module_hiding_flipes_envs_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """With another ``envs`` module imported first, making a flipes/ env names that module's file and the fix."""
    theirs = types.ModuleType("envs")
    theirs.__file__ = "/home/me/project/envs/__init__.py"
    monkeypatch.setitem(sys.modules, "envs", theirs)
    with pytest.raises(EnvError) as e:
        make_vector_env("flipes/CartPole-v1", 2)
    message = str(e.value)
    assert "(/home/me/project/envs/__init__.py) is not flipes' envs package" in message
    assert "rename that one, or run from another directory" in message and "\n" not in message
