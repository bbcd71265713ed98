"""A run's center policy as one ``torch.export`` program, to deploy with torch alone.

    flipes export runs/cartpole                       # writes runs/cartpole/policy.pt2
    policy = torch.export.load("runs/cartpole/policy.pt2").module()     # no flipes import needed
    actions = policy(obs)                             # (batch, *obs_shape) -> actions of the batch

The program holds the mean network and its observation normalization (the statistics baked in),
and maps observations to the env's actions exactly as :func:`flipes.load_policy`'s policy does
(argmax for Discrete spaces, tanh into the bounds for Box); a recurrent policy's program takes and
returns its state: ``actions, state = policy(obs, state)``, ``state`` zeros at an episode's start.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from flipes.checkpoint import discard
from flipes.errors import UsageError, os_reason
from flipes.nn.convert import uncompiled
from flipes.rl import make_vector_env
from flipes.rl.envs import EnvError
from flipes.rl.recurrent import GRUPolicy, RecurrentPolicy
from flipes.rl.spaces import STRUCTURED, layout
from flipes.runs import load_policy, run_config, run_env, run_env_kwargs, unmade_env


class _StateAsInput(nn.Module):
    """A GRU policy whose state is always a tensor input (zeros at an episode's start, where the policy
    itself takes ``None``): a traced program has one signature."""

    def __init__(self, policy: GRUPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        return self.policy(obs, state)


LAYOUT_FILE = "flipes_observation_layout"  # an extra file of the .pt2 archive


def export_policy(
    run_dir: str | Path,
    path: str | Path | None = None,
    checkpoint: str = "latest",
    model: Callable[..., nn.Module] | nn.Module | None = None,
) -> Path:
    """Write the center policy of ``run_dir`` as a ``torch.export`` program (``.pt2``) and return its path.

    Args:
        run_dir: a directory written by ``flipes train`` / :func:`flipes.train` on an env.
        path: the file to write; ``RUN_DIR/policy.pt2`` by default.
        checkpoint: ``latest``, ``best``, ``best-member`` or a checkpoint file of the run.
        model: the run's model, where it was given to :func:`flipes.train` as a Python object.

    The batch dimension is dynamic; the observations' dtype is the env's (:func:`program_inputs`).
    Before writing, the program must give the policy's actions bit for bit on the env's reset
    observations, on one of them, and on wide ones that reach the normalization's clip.

    Raises:
        UsageError: a run without an env (its inputs are unknown), a recurrent policy other than
            :class:`~flipes.rl.GRUPolicy` (its state's shape is unknown), a policy torch cannot
            export, a path that cannot be written, or torch < 2.4.
    """
    if torch.__version__ < (2, 4):  # torch 2.2's program of a GRU policy acts otherwise, and its load of a program raises
        raise UsageError(
            "torch",
            f"{torch.__version__}: flipes export needs torch >= 2.4 (older torch.export programs need not act as the policy)",
            "pip install -U 'torch>=2.4'",
        )
    run_dir = Path(run_dir)
    env_id = run_env(run_dir)
    if env_id.lower() == "none":
        raise UsageError(
            str(run_dir),
            "was trained on a custom fitness (--env none): there are no observations to trace",
            "use torch.export.export(model, (example_input,)) on flipes.load_policy(...); a Hugging Face model: "
            "flipes.load_policy(...).save_pretrained(dir), the center's weights as a plain checkpoint",
        )
    out = Path(path) if path is not None else run_dir / "policy.pt2"
    if out.suffix != ".pt2":
        raise UsageError("--out", f"{out}: torch.export programs are .pt2 files", "e.g. --out policy.pt2")
    try:
        env = make_vector_env(env_id, 3, "cpu", note=None, **run_env_kwargs(run_config(run_dir), run_dir))
    except EnvError as e:
        raise unmade_env(run_dir, e) from None
    try:
        obs, _ = env.reset(seed=0)
        space, source = env.single_observation_space, getattr(env, "source_observation_space", None)
    finally:
        env.close()
    # the program takes a Dict's or Tuple's observations flattened: where each entry's columns are travels with it
    extra = {LAYOUT_FILE: f"{type(source).__name__}: {layout(source)}"} if isinstance(source, STRUCTURED) else None
    policy = uncompiled(load_policy(run_dir, checkpoint, "cpu", model=model)).requires_grad_(False)  # actions without a graph
    batch = torch.export.Dim("batch", min=1)
    if isinstance(policy, GRUPolicy):
        module: nn.Module = _StateAsInput(policy)
        state = torch.zeros(obs.shape[0], policy.cell.hidden_size, dtype=policy.head.weight.dtype, device=obs.device)
        args: tuple[Tensor, ...] = (obs, state)
        shapes: tuple[dict[int, torch.export.Dim], ...] = ({0: batch}, {0: batch})
    elif isinstance(policy, RecurrentPolicy):
        raise UsageError(
            str(run_dir),
            f"{type(policy).__name__} is a recurrent policy whose state flipes cannot shape",
            "export it with torch.export yourself",
        )
    else:
        module, args, shapes = policy, (obs,), ({0: batch},)
    try:
        program = torch.export.export(module, args, dynamic_shapes=shapes)
    except Exception as e:  # torch's reasons are many kinds of exception: one line with the first of its lines
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UsageError(
            str(run_dir),
            f"torch.export cannot trace its policy ({first})",
            "a policy of your own must trace without data-dependent Python branches (torch.export's documentation)",
        ) from None
    # the program must act as the policy: on the reset's observations, on one of them, and on wide
    # ones that reach the normalization's clip (integer ones, a state index or pixels: anywhere in the space)
    gen = torch.Generator(obs.device).manual_seed(0)
    if obs.dtype.is_floating_point:
        wide = 10 * torch.randn(7, *obs.shape[1:], generator=gen, device=obs.device).to(obs.dtype)
    else:
        space.seed(0)
        wide = torch.as_tensor(np.stack([space.sample() for _ in range(7)]), device=obs.device).to(obs.dtype)
    zeros = tuple(torch.zeros(7, *a.shape[1:], dtype=a.dtype, device=a.device) for a in args[1:])
    checks = [args, tuple(a[:1] for a in args), (wide, *zeros)]
    with torch.no_grad():
        for inputs in checks:
            expect, got = module(*inputs), program.module()(*inputs)
            if not all(torch.equal(a, b) for a, b in zip(_tensors(expect), _tensors(got), strict=True)):
                raise RuntimeError(
                    f"the exported program of {run_dir} acts otherwise than its policy: a flipes bug, please report it"
                )
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files=extra)
    tmp = out.with_name(out.name + ".tmp")
    try:  # all at once: a reader sees the old program or the new one
        with open(tmp, "wb") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as e:
        discard(tmp)
        raise UsageError("--out", f"cannot write {out} ({os_reason(e)})", "choose a path you can write") from None
    return out


def program_inputs(path: str | Path) -> list[tuple[torch.dtype, tuple[int, ...]]]:
    """The dtype and per-row shape of each input of a program ``flipes export`` wrote: the observations (in the
    env's dtype: float32 for flipes/ and classic-control envs, float64 for gymnasium's MuJoCo envs;
    cast others to it), then a GRU policy's state."""
    program = torch.export.load(str(path))
    names = [spec.arg.name for spec in program.graph_signature.input_specs if spec.kind.name == "USER_INPUT"]
    values = {node.name: node.meta["val"] for node in program.graph.nodes if node.op == "placeholder"}
    return [(values[name].dtype, tuple(int(d) for d in values[name].shape[1:])) for name in names]


def program_layout(path: str | Path) -> str:
    """Where a program ``flipes export`` wrote for an env of Dict or Tuple observations takes each entry: ``"Dict: goal
    0:3, pos 3:5"``, the columns of the flattened rows it takes (``gymnasium.spaces.flatten``); ``""`` for other envs."""
    extra = {LAYOUT_FILE: ""}
    torch.export.load(str(path), extra_files=extra)
    return str(extra[LAYOUT_FILE])


def _tensors(value: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return value if isinstance(value, tuple) else (value,)
