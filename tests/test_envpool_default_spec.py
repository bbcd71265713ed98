"""EnvPool's default spec of an id, which flipes reads for the options an env takes, is read once per id."""

from __future__ import annotations

from typing import Any

import pytest

from flipes.rl import make_vector_env
from flipes.rl.envpool_vec import default_spec, envpool_ids
from flipes.rl.envs import EnvOptionError


def test_making_envpool_envs_reads_each_ids_default_spec_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two envs of EnvPool's CartPole-v1 made, each reset and stepped, read EnvPool's default spec of the id once in
    all (each make read it three times: an Atari id's costs ~0.2 s of CPU each), and the envs still check their
    options against it: an option of the wrong kind is refused naming it."""
    if "CartPole-v1" not in envpool_ids():
        pytest.skip("EnvPool is not installed")
    from envpool.registration import registry

    read: list[str] = []
    make_spec = registry.make_spec

    def counted(task_id: str, **kwargs: Any) -> Any:
        read.append(task_id)
        return make_spec(task_id, **kwargs)

    monkeypatch.setattr(registry, "make_spec", counted)
    default_spec.cache_clear()
    for _ in range(2):
        env = make_vector_env("envpool:CartPole-v1", 2)
        env.reset(seed=0)
        env.step(env.action_space.sample())
        env.close()
    assert read == ["CartPole-v1"]
    with pytest.raises(EnvOptionError, match="takes max_episode_steps as an integer"):
        make_vector_env("envpool:CartPole-v1", 2, max_episode_steps="10")
    assert read == ["CartPole-v1"]
