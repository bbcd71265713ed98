"""What FlipES warns of, once each: a fitness that did not come from the members (the model ran outside the
population, or a copy of it ran), a whole population of one fitness value, parameters changed between the
population and ``tell``, dropout left in training mode, and a step that bfloat16/float16 parameters rounded away.

Each is a run that goes on but learns nothing, or learns from noise, with nothing else to show it.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from flipes.dist import Comm, launched_world, unseen_launch
from flipes.errors import (
    ChangedParametersWarning,
    EqualFitnessWarning,
    OutsidePopulationWarning,
    RoundedStepWarning,
    caller_stacklevel,
)
from flipes.nn.convert import dropout_fix, training_dropout, uncompiled

if TYPE_CHECKING:
    from flipes.es.engine import FlipES

# what OutsidePopulationWarning and EqualFitnessWarning ask of a loop of one's own, and of flipes.train's fitness
OUTSIDE_LOOP = (
    "the model ran no forward inside `with es.population()`, so its fitness did not come from the members (outside the "
    "block every member is the mean network) and the ES gradient is noise; call the model inside the block (or build "
    "members with es.member_parameters)"
)
OUTSIDE_TRAIN = (
    "the fitness ran no forward of the model it is given (a copy of it, or another module, is the mean network for "
    "every member), so its values did not come from the members and the ES gradient is noise; call that model itself"
)

# the share of a low-precision model's moved entries (non-zero gradient) that a step may leave unchanged before it warns:
# Qiu et al.'s lr = α·σ in bfloat16 left 35% of a small Qwen2's unchanged, Adam at lr=0.03 none
ROUNDED_SHARE = 0.05
LOW_PRECISION = (torch.bfloat16, torch.float16)
EQUAL_LOOP = "the model's outputs inside `with es.population()` (outside it every member is the mean network)"
EQUAL_TRAIN = "the outputs of the model it is given (a copy of it is the mean network for every member)"


def warn_unsplit(comm: Comm | None, popsize: int) -> None:
    """At construction: a FlipES given no ``comm`` in one of several processes mpiexec started (each would run the
    whole population, the same run several times)."""
    launched_rank, launched_size = launched_world()
    if comm is None and launched_size > 1 and launched_rank == 0:
        warnings.warn(
            f"FlipES got no comm in one of {launched_size} processes started by mpiexec: each process evaluates all "
            f"{popsize} members, the same run {launched_size} times; pass comm=flipes.dist.world() with groups >= "
            f"{launched_size} to split them (as flipes.train does), or comm=flipes.dist.SerialComm() "
            "for independent runs on purpose",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )
        return
    rank, size = torch_world()
    if comm is None and size > 1 and rank == 0:
        warnings.warn(
            f"FlipES got no comm in one of {size} processes of torch.distributed (torchrun, accelerate launch): each "
            f"process evaluates all {popsize} members and steps alone, so with other data per process their parameters "
            "drift apart (DDP's gradient sync runs in backward, which ES never runs); flipes splits a population over "
            f"MPI: start it with mpiexec -n {size} and pass comm=flipes.dist.world() with groups >= {size}, or "
            "comm=flipes.dist.SerialComm() for independent runs on purpose",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )


def torch_world() -> tuple[int, int]:
    """``(rank, size)`` of this process in torch.distributed's default group where it is initialized, else among the
    processes torchrun or srun started (``(0, 1)`` where neither says more)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    launch = unseen_launch()
    return (launch.rank, launch.size) if launch is not None else (0, 1)


def warn_rebuilt(es: FlipES) -> None:
    """At construction: a FlipES built inside the training loop, over layers that a FlipES of the same settings, itself
    built so, stepped once: each starts at generation 0 with a fresh optimizer and so draws the first generation's noise
    again and again (the ES gradient of one fixed population, silently). Warned at the second such rebuild in a row:
    one rebuild (frozen parameters changed, a layer added, a restart) is flipes' own advice elsewhere."""
    owners = (m.__dict__.get("_flipes_owner", lambda: None)() for m in [*es.layers, *es.dense_modules])
    previous = next((o for o in owners if o is not None), None)
    es._rebuilt_after_one = (  # the same search again (a variant compared on purpose differs in its settings)
        previous is not None
        and previous.generation == 1
        and (previous.seed, previous.popsize, previous.groups, previous.mirrored) == (es.seed, es.popsize, es.groups, es.mirrored)
        and previous.shaping is es.shaping
        and (previous._sigma is es._sigma or previous._sigma == es._sigma)
    )
    if es._rebuilt_after_one and getattr(previous, "_rebuilt_after_one", False):
        warnings.warn(
            f"FlipES: built again over layers that a FlipES of the same seed {es.seed} stepped once, itself built so: each "
            "starts at generation 0 with a fresh optimizer and draws the first generation's noise again; build the FlipES "
            "once, before the loop",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )


def warn_sigma_one_group(es: FlipES) -> None:
    """At construction: adaptive σ with one ε group, where a Flipout layer's weights tell σ nothing."""
    if es.sigma_lr > 0 and es.groups == 1 and es.comm.rank == 0 and any(pw.weight.requires_grad for pw in es.slots):
        warnings.warn(
            "sigma_lr > 0 with groups=1: every member of a Flipout layer has the same ‖ε‖², so the layer's weights "
            "tell its σ nothing and it follows the biases alone; use groups >= 8 (as --algo pgpe does)",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )


def warn_idle_noise_rank(es: FlipES) -> None:
    """At construction: ``noise_rank`` on a model without a Flipout layer, where it changes nothing (a sweep may mix
    models, so a warning, not a refusal)."""
    if es.noise_rank is not None and not es.slots and es.comm.rank == 0:
        warnings.warn(
            f"noise_rank={es.noise_rank} makes a Flipout layer's noise low-rank, and this model has no Flipout layer (its "
            "parameters get dense Gaussian noise, as a flipes.nn.Vector's does), so it changes nothing; drop noise_rank",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )


def warn_dropout(es: FlipES) -> None:
    """Warn once (rank 0) where the model has dropout in training mode at the end of the first population block: a
    module starts in it (a Hugging Face model built from a config too), and each member's fitness would carry noise
    of its own that ES reads as signal. Read at the end, not the start: a fitness may call model.eval() itself."""
    if es._told_dropout or es.comm.rank != 0:
        return
    es._told_dropout = True
    modules = dict(uncompiled(es._module).named_modules())
    dropout = [f"{name or 'the model'} ({type(modules[name]).__name__})" for name in training_dropout(es._module)]
    if dropout:
        shown = ", ".join(dropout[:3]) + (", ..." if len(dropout) > 3 else "")
        warnings.warn(
            f"FlipES: the model has dropout in training mode ({shown}): "
            "it adds noise of its own to every member's fitness; "
            f"{dropout_fix(es._module, 'call model.eval() before the population')} unless that is meant",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )


def warn_of_generation(es: FlipES, stats: dict[str, float], changed: list[str], evaluated: bool) -> None:
    """At the end of ``tell`` (after the step: the generation is complete even where warnings are errors, ``-W error``),
    each warning once per FlipES: the parameters ``changed`` in place since the population ended, a fitness that came
    from no member (the model did not run inside the population, ``evaluated`` false), a whole population of one
    fitness value."""
    generation = stats["generation"]
    if changed and not es._told_changed:  # once, after the step: the generation is complete even under -W error
        es._told_changed = True
        warnings.warn(
            f"generation {generation}: the parameters {', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''} "
            "changed between the end of the population and tell() (a load_state_dict, an in-place edit): tell "
            "stepped from the changed values with the gradient of the members evaluated around the earlier ones; "
            "change them after tell(), and run a member in a plain copy of the model "
            "(plain.load_state_dict(es.member_state_dict(i)))",
            ChangedParametersWarning,
            stacklevel=caller_stacklevel(),
        )
    equal = stats["fitness_max"] == stats["fitness_min"]
    if not evaluated and not equal and not es._told_outside:
        # once, and last, as below; the members' fitness differs by the inputs alone
        es._told_outside = True
        if es.comm.rank == 0:
            warnings.warn(
                f"generation {es.generation - 1}: {OUTSIDE_TRAIN if es._train_fitness else OUTSIDE_LOOP}",
                OutsidePopulationWarning,
                stacklevel=caller_stacklevel(),
            )
    if equal and not es._told_equal:
        # once, and last: the generation is complete even where warnings are errors (-W error)
        es._told_equal = True  # a sparse reward may tie a whole population for a while
        if es.comm.rank == 0:
            warnings.warn(
                f"generation {es.generation - 1}: all {es.popsize} members have the same fitness "
                f"({stats['fitness_max']:g}), so the ES gradient holds no signal (zero for centered ranks, z-scores "
                "and mirrored pairs; with shaping=raw and no mirroring, a step along the noise itself). If that is "
                f"unexpected: does the fitness come from {EQUAL_TRAIN if es._train_fitness else EQUAL_LOOP}? Or is "
                "sigma too small for the fitness to tell members apart?",
                EqualFitnessWarning,
                stacklevel=caller_stacklevel(),
            )


def _zero(lr: object) -> bool:
    """Whether a param group's ``lr`` (a number or a tensor) is 0."""
    return isinstance(lr, (int, float, Tensor)) and float(lr) == 0


def warn_rounded_step(es: FlipES, generation: int, delta: Tensor, grad: Tensor, numels: list[int]) -> None:
    """After ``tell``'s step, once per FlipES (rank 0): more than ``ROUNDED_SHARE`` of the bfloat16/float16 parameters'
    entries with a non-zero ES gradient stayed unchanged (``delta``: before − after, flat as ``grad``, ``numels`` each
    parameter's), the step below half their spacing in that dtype. A float32 step is not checked, nor a param group
    with a zero learning rate, which moves nothing on purpose."""
    if es._told_rounded or es.comm.rank != 0 or not any(p.dtype in LOW_PRECISION for p in es.params):
        return  # before any split: a float32 model's tell (CartPole's, ~1 ms) pays 0.8 µs here, not 11
    # a param group at lr 0 moves nothing on purpose: its parameters are left out, the other groups' still counted
    stepped = {id(p) for group in es.optimizer.param_groups if not _zero(group.get("lr")) for p in group["params"]}
    deltas, grads = delta.split(numels), grad.split(numels)
    low = [(p, d, g) for p, d, g in zip(es.params, deltas, grads, strict=True) if p.dtype in LOW_PRECISION and id(p) in stepped]
    if not low:
        return
    # count_nonzero, and one bool mask a parameter made in place: a third of the cost of summing masks (every tell of a
    # bfloat16 model until it warns)
    moved = torch.stack([torch.count_nonzero(g) for _, _, g in low]).sum()
    kept = torch.stack([torch.count_nonzero((d == 0).logical_and_(g != 0)) for _, d, g in low]).sum()
    moved, kept = torch.stack((moved, kept)).tolist()  # one sync
    if not moved or kept / moved <= ROUNDED_SHARE:
        return
    es._told_rounded = True
    names = sorted({str(p.dtype).removeprefix("torch.") for p, _, _ in low})
    dtypes, device = " and ".join(names), es.params[0].device.type
    warnings.warn(
        f"generation {generation}: the step left {kept / moved:.0%} of the {dtypes} parameters' entries it moves "
        f"unchanged: the optimizer's step (lr·ĝ) is below half their spacing in {dtypes}, so ES does not move them; keep "
        f"the parameters float32 and evaluate the population under torch.autocast({device!r}, dtype=torch.{names[0]}) "
        f"(the members compute in {names[0]}, the mean steps in float32), or take larger steps",
        RoundedStepWarning,
        stacklevel=caller_stacklevel(),
    )
