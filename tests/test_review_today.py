"""Edges of today's library changes that their own tests left open."""

from __future__ import annotations

import pytest

from flipes.rl import make_vector_env


@pytest.mark.parametrize("threads", [None, "2", 1.5])
def test_make_vector_env_refuses_a_thread_count_that_is_no_integer_by_name(threads: object) -> None:
    """A ``threads=`` that is not an integer (None, a string, a float) is refused with a ValueError naming ``threads``
    and what 0 means, not a TypeError of a comparison inside flipes, nor taken as a count."""
    with pytest.raises(ValueError, match=r"make_vector_env: threads .* an integer .*0.*got " + repr(threads).replace(".", r"\.")):
        make_vector_env("flipes/CartPole-v1", 2, "cpu", threads=threads)
