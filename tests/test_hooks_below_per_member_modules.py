"""Forward hooks and pre-hooks on modules inside a module that runs per member as a whole (a block of a norm and a
bare scale, with no Flipout layer below it): a hook that keeps an activation gets every member's, members first, and
hooks that change an input or output change each member's, so every member equals its plain copy with its hooks."""

from __future__ import annotations

import copy
import threading

import torch
from torch import Tensor, nn

import flipes

DT = torch.float64
N, K = 4, 3  # members, examples per member


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.act, self.gain = nn.LayerNorm(5), nn.Tanh(), nn.Parameter(torch.ones(5))

    def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
        return self.act(self.norm(x) * self.gain) * scale


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.block, self.out = nn.Linear(5, 5), Block(), nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.block(self.inp(x), scale=2.0))


def add_hooks(model: nn.Module, kept: list[Tensor]) -> None:
    """Each kind of hook torch has, on the block's modules; the last keeps the activation it sees."""
    norm, act = model.block.norm, model.block.act
    norm.register_forward_pre_hook(lambda m, args: args[0] + 1.0)  # a lone value for the 1-tuple
    norm.register_forward_hook(lambda m, args, out: out * 2.0)
    act.register_forward_pre_hook(lambda m, args: (args[0] * 0.5,))
    act.register_forward_pre_hook(lambda m, args, kwargs: ((args[0] - 0.2,), kwargs), with_kwargs=True)
    act.register_forward_hook(lambda m, args, kwargs, out: out + 0.1, with_kwargs=True)
    act.register_forward_hook(lambda m, args, out: kept.append(out))


def test_hooks_inside_a_per_member_block_see_and_change_each_members_tensors() -> None:
    """The block runs per member under torch.func.vmap; the activation its hook keeps is every member's, (N, k, 5),
    member n's equal to what the hook keeps in member n's plain copy (loaded with ``es.member_state_dict(n)``, same
    hooks), and each member's output equals the copy's, float64 to 1e-12."""
    torch.manual_seed(0)
    plain = Net().to(DT)
    model = flipes.flipout(copy.deepcopy(plain))
    assert {r.how for r in flipes.nn.parameter_report(model).rows if r.name.startswith("block.")} == {"dense"}
    kept: list[Tensor] = []
    add_hooks(model, kept)
    es = flipes.FlipES(model, popsize=N, sigma=0.1, seed=0)
    x = torch.randn(N, K, 5, dtype=DT)
    with es.population():
        out = model(x)
        assert len(kept) == 1 and kept[0].shape == (N, K, 5)
        for n in range(N):
            member, theirs = copy.deepcopy(plain), []
            member.load_state_dict(es.member_state_dict(n))
            add_hooks(member, theirs)
            torch.testing.assert_close(out[n], member(x[n]), rtol=0, atol=1e-12)
            torch.testing.assert_close(kept[0][n], theirs[0], rtol=0, atol=1e-12)


def test_a_hook_for_every_module_keeps_each_members_activation_below_a_per_member_block() -> None:
    """A forward hook registered for every module (``register_module_forward_hook``, as profilers register theirs)
    keeps the block's activation as every member's, (N, k, 5), readable after the population and equal, member n's,
    to what it keeps in member n's plain copy, float64 to 1e-12 (vmap's own tensor would have escaped)."""
    torch.manual_seed(0)
    plain = Net().to(DT)
    model = flipes.flipout(copy.deepcopy(plain))
    es = flipes.FlipES(model, popsize=N, sigma=0.1, seed=0)
    x = torch.randn(N, K, 5, dtype=DT)
    kept: list[Tensor] = []
    keep = lambda m, args, out: kept.append(out) if isinstance(m, nn.Tanh) else None  # noqa: E731
    handle = nn.modules.module.register_module_forward_hook(keep)
    try:
        with es.population():
            model(x)
        assert len(kept) == 1 and kept[0].shape == (N, K, 5)
        for n in range(N):
            member = copy.deepcopy(plain)
            member.load_state_dict(es.member_state_dict(n))
            member(x[n])
            torch.testing.assert_close(kept[0][n], kept[n + 1], rtol=0, atol=1e-12)
    finally:
        handle.remove()


def test_a_hook_for_every_module_is_removable_after_two_threads_populations_overlap() -> None:
    """Two threads run a population each, the second entering the per-member block while the first is inside it and
    leaving it after the first: the hook for every module still comes off with its handle's ``remove()``, and the
    process's hook dict is torch's own again (a copy left in its place kept the hook for good)."""
    torch.manual_seed(0)
    models = [flipes.flipout(Net().to(DT)) for _ in range(2)]
    pops = [flipes.FlipES(m, popsize=N, sigma=0.1, seed=0) for m in models]
    x = torch.randn(N, K, 5, dtype=DT)
    inside, first_done = [threading.Event(), threading.Event()], threading.Event()
    names: dict[int, int] = {}

    def hook(m: nn.Module, args: tuple, out: Tensor) -> None:
        who = names.pop(threading.get_ident(), None) if isinstance(m, nn.Tanh) else None  # once per thread
        if who is not None:
            inside[who].set()
            (inside[1] if who == 0 else first_done).wait(10)

    def run(i: int) -> None:
        names[threading.get_ident()] = i
        with pops[i].population():
            models[i](x)
        if i == 0:
            first_done.set()

    global_hooks = nn.modules.module._global_forward_hooks
    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        threads[0].start()
        assert inside[0].wait(10)
        threads[1].start()
        for t in threads:
            t.join(30)
        assert not names and all(e.is_set() for e in (*inside, first_done))
    finally:
        handle.remove()
        now, nn.modules.module._global_forward_hooks = nn.modules.module._global_forward_hooks, global_hooks  # no later test's
    assert now is global_hooks and not global_hooks
