"""A flipes torch env's num_threads is refused above the core count only where it does something: on the CPU, whose
steps set torch's threads to it; an env on another device (CUDA) leaves torch's setting and takes any count."""

import os

import numpy as np
import pytest
import torch

from envs.base import check_num_threads
from envs.cartpole import CartPoleVectorEnv

CORES = os.cpu_count() or 1


def test_the_core_bound_holds_on_the_cpu_alone_and_the_type_check_everywhere() -> None:
    """cores + 1 threads: refused for the CPU, naming the count and the bound, and accepted for CUDA (checked without
    a GPU: the check reads the device's type alone); a count that is no positive integer is refused for both."""
    with pytest.raises(ValueError, match=rf"num_threads {CORES + 1} on a machine of {CORES} cores"):
        check_num_threads(CORES + 1, torch.device("cpu"))
    check_num_threads(CORES + 1, torch.device("cuda"))
    check_num_threads(CORES, torch.device("cpu"))
    for device in ("cpu", "cuda"):
        for bad in (0, "2", True, 1.0, np.int64(0), np.bool_(True)):
            with pytest.raises(ValueError, match="num_threads must be a positive integer"):
                check_num_threads(bad, torch.device(device))


def test_a_numpy_integer_thread_count_is_taken_as_an_int() -> None:
    """``num_threads=np.int64(1)`` (a sweep's ``np.arange``) makes the env, which holds the plain int 1 that its steps
    pass to torch.set_num_threads."""
    env = CartPoleVectorEnv(num_envs=2, num_threads=np.int64(1))
    assert env.num_threads == 1 and type(env.num_threads) is int


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_env_takes_any_thread_count_and_never_sets_torchs(monkeypatch: pytest.MonkeyPatch) -> None:
    """CartPole on CUDA with cores + 1 threads is made, and its reset and steps never call torch.set_num_threads."""
    env = CartPoleVectorEnv(num_envs=4, device="cuda", num_threads=CORES + 1)
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    env.reset(seed=0)
    for _ in range(3):
        env.step(torch.zeros(4, dtype=torch.int64, device="cuda"))
    assert calls == [] and env.num_threads is None
