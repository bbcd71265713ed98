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


def test_torch_env_refuses_more_step_threads_than_cores() -> None:
    """flipes' torch envs refuse num_threads (torch threads set at every step) above this machine's core count, built
    directly or through make_vector_env's env options, naming the count and the bound."""
    from envs.cartpole import CartPoleVectorEnv

    threads = (os.cpu_count() or 1) + 1
    with pytest.raises(ValueError, match=rf"num_threads {threads} on a machine of {threads - 1} cores"):
        CartPoleVectorEnv(num_envs=2, num_threads=threads)
    with pytest.raises(ValueError, match=rf"num_threads {threads} on a machine of {threads - 1} cores"):
        make_vector_env("flipes/CartPole-v1", 2, note=None, num_threads=threads)
