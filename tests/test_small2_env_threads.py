"""make_vector_env refuses a thread count torch or EnvPool should not get (negative, or absurd for this machine),
with the same one-line UsageError as --env-threads, before it makes any env."""

import os

import pytest

from flipes.errors import UsageError
from flipes.rl import make_vector_env


@pytest.mark.parametrize("threads", [-1, 4 * (os.cpu_count() or 1) + 1])
def test_make_vector_env_refuses_threads_out_of_range(threads: int) -> None:
    """A negative count, or more than 4 per core, raises a UsageError naming ``threads`` and the count."""
    with pytest.raises(UsageError, match=rf"^threads: .*{threads}"):
        make_vector_env("CartPole-v1", 2, threads=threads, note=None)
