"""FlipES: evolution strategies with Flipout perturbations.

Wen, Vicol, Ba, Grosse & Tran, "Flipout: Efficient Pseudo-Independent Weight Perturbations on
Mini-Batches", ICLR 2018 (arXiv:1803.04386); the ES estimator and fitness shaping follow Salimans
et al., 2017 (arXiv:1703.03864).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Final, NoReturn, SupportsIndex

import numpy as np
import torch
from torch import Tensor, nn

from flipes.dist import Comm, SerialComm, abort_on_exit, check_comm, split_groups
from flipes.es import members
from flipes.es.checks import (
    NonFiniteFitness,
    check_fitness,
    check_fitness_fn,
    check_weights,
    nonnegative,
    refuse_unsynced_ddp,
)
from flipes.es.estimate import block_gradient
from flipes.es.evolved import (
    changed_since_population,
    check_requires_grad,
    evolved_parameters,
    held_in,
    held_sizes,
    parameter_names,
    raise_if_not_finite,
    refuse_unhandled,
)
from flipes.es.foreign import FOREIGN_METHODS, ForeignMethod, InitSignature, refuse_foreign_keywords
from flipes.es.hints import raise_with_fix
from flipes.es.install import Deferred, HeldNoise, install, install_whole, uninstall
from flipes.es.members import BestMember
from flipes.es.notices import (
    warn_dropout,
    warn_idle_noise_rank,
    warn_of_generation,
    warn_rebuilt,
    warn_rounded_step,
    warn_sigma_one_group,
    warn_unsplit,
)
from flipes.es.optimizer import (  # default_optimizer, optimizer_settings: imported from here before they moved
    OptimizerFactory,
    build_optimizer,
    check_placement,
    default_optimizer,  # noqa: F401
    optimizer_settings,  # noqa: F401
    step_sizes,
)
from flipes.es.options import checked_options, sigma_value
from flipes.es.parts import part
from flipes.es.population import EpochShuffles, Population, PopulationBlock
from flipes.es.ranks import gather_fitness, send_failure
from flipes.es.refusals import (
    note_direct_reads,
    read_watched,
    refuse_direct_reads,
    refuse_load_in_population,
    refuse_mean_reads,
    refuse_nested,
    refuse_older_owner,
    refuse_replayed_noise,
    refuse_stale,
    told_record,
)
from flipes.es.settings import FIXED, SETTABLE, checked_setting, fixed_message
from flipes.es.shaping import centered_ranks
from flipes.es.sigma import leave_out
from flipes.es.slots import dense_slots, flipout_slots, padding_rows
from flipes.es.state import load_state, pickled_state, saved_state, unpickled_state
from flipes.nn.attention import fused_transformers_off
from flipes.nn.convert import (
    ParameterReport,
    check_members_first,
    check_module,
    flipout_layers,
    mean_reads,
    noting_parameters,
    parameter_report,
    per_member_modules,
    uncompiled,
)
from flipes.nn.functional import without_autocast
from flipes.noise import DenseNoise, SlotNoise, compiling, sample_dense, sample_slot, shared_sign_table
from flipes.optim import finite_norm

# fitness (N,) -> weights (N,): tell takes a tensor, a numpy array or a list back (check_weights), as documented
Shaping = Callable[[Tensor], Tensor | np.ndarray | Sequence[float]]


class FlipES:
    r"""Evolution strategies over the Flipout layers of ``model``.

    Each generation, ``population()`` gives every member its own perturbation
    ``σ·ε_g ∘ (r_n s_nᵀ)`` of every Flipout weight; ``tell(fitness)`` shapes the fitness and writes
    ``-ĝ`` (the gradient of the loss ``-J``) to the parameters' ``.grad``, with

        ĝ = 1/(Nσ) Σ_n F̂_n u_n,

    then steps the optimizer. Every trainable parameter is evolved: Flipout weights and biases, and
    the dense per-member parameters of ``flipes.flipout`` (norms, bare parameters); parameters with
    ``requires_grad=False`` stay frozen. ``report()`` lists which is which. The evolved set is fixed
    when the FlipES is built: changing a parameter's ``requires_grad`` afterwards is an error at the
    next ``population()`` or ``tell``; build a new FlipES for the model instead.

    Between generations a loop may assign ``es.shaping``, ``es.weight_decay``, ``es.optimizer`` (an optimizer over
    exactly ``es.params``) and ``es.lr``, checked as here. The population's layout (``popsize``, ``groups``, ``seed``,
    ``mirrored``, ``maximize``, ``noise_rank``, ``sigma_lr``, ``track_best``, ``hold_noise``) is fixed: assigning it is
    an error; a new FlipES for the model (a restart with a larger population) takes over its layers. A σ rule of your
    own is a schedule reading a value you change after ``tell``: ``sigma=lambda g: rule.sigma``.

    Other libraries' names for these arguments (evosax's ``sigma_init``, ``sigma_decay``, ``lrate_init``; EvoTorch's
    ``stdev_init``, ``center_learning_rate``, ``objective_sense``; ``flipes.es.foreign``) are refused, naming FlipES's.

    Args:
        model: a model with Flipout layers (see ``flipes.flipout``), or ``torch.compile`` of one: names and
            state dicts are then the model's own (no ``_orig_mod.``), and ``step`` calls the compiled one.
        popsize: members per generation, ``N`` (all processes together); an integer (numpy's too).
        sigma: perturbation scale σ > 0, or a function ``generation -> σ`` (a schedule).
        lr: learning rate (finite, >= 0) of the optimizer FlipES builds: the default Adam, or the
            ``torch.optim.Optimizer`` class given as ``optimizer``; ``None`` (default): 0.03. An optimizer
            factory sets its own: an ``lr`` given beside it must be the one it sets (else an error, as one of
            the two would be ignored).
        seed: any integer (not a float); keys all noise, with the generation, group and slot.
        groups: number of ε groups; members are split into ``groups`` contiguous blocks, each with
            its own ε (signs are per member in any case). More groups: less correlation between
            members, more sampling work; ``groups=popsize, mirrored=False`` is fully independent ES.
        mirrored: antithetic pairs (member ``2k+1`` is ``-u_{2k}``); needs an even group size.
        shaping: ``fitness (N,) -> weights (N,)``, e.g. ``flipes.shaping.centered_ranks``: it gets a float64 tensor
            and may return a tensor, a numpy array or a list.
        weight_decay: L2 coefficient (>= 0) added to the loss gradient (``+ wd·θ``).
        optimizer: a factory ``params -> torch.optim.Optimizer`` that builds its optimizer over exactly
            the ``params`` it is given (the evolved ones, ``es.params``), with its own settings, e.g.
            ``lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9)``; or an optimizer class,
            built as ``cls(params, lr=lr)``. Not an optimizer instance (it would hold other
            parameters). Default: ``Adam(params, lr)`` (fused if available).
        comm: communicator between processes (``flipes.dist``); default: this process alone.
            Each process evaluates a contiguous block of groups (``groups >= processes``).
        comm_mode: ``"allreduce"``: each process computes the gradient of its own members and the
            gradients are summed (one parameter vector per process and generation);
            ``"seeds"``: every process rebuilds all groups' noise from the seeds and computes the
            whole gradient itself, so only the N fitness values cross the network, and the result
            is bitwise that of one process.
        noise_rank: ``None`` (default) or 0: full-rank ε. An integer ``r >= 1``: each group's ε of every Flipout
            weight is ``A Bᵀ/√r`` with Gaussian ``A`` (out × r) and ``B`` ((in·kernel) × r), still
            sign-flipped per member (EGGROLL-style low-rank perturbations; Sarkar et al., 2025).
            The population forward then costs O(N·r·(in + out)) per layer instead of O(N·in·out);
            the perturbations stay uncorrelated with variance σ² per weight, so ĝ stays unbiased
            (for fitness linear in θ exactly), at a higher variance for small ``r``. Biases then
            get one noise vector ``σε_b`` per group, sign-flipped per member (``σε_b ∘ r_n``) like
            the weights, instead of independent noise per member.
        sigma_lr: 0 (default) keeps σ fixed (or on its schedule). ``η > 0`` adapts one σ per layer (a
            Flipout layer's weight and bias) and per dense parameter, starting from ``sigma``, by
            ascent on log σ along the natural gradient standardized per layer:
            ``log σ += η · Σ_n c_n (‖z_n‖² - d) / (√(2d) N)``, ``c_n`` the shaped fitness less the mean of
            the members whose noise is independent of n's (unbiased under Flipout), so η means the
            same for layers of any size (``flipes.es.sigma``). Under Flipout a layer's weights learn σ only from the
            variation between ε groups: use ``groups ≥ 8``. Needs full-rank noise, and a shaping other than
            ``flipes.shaping.ars`` (whose ±w pairs cancel the twins' shared score). ``stats["sigma"]``
            is then the mean σ over the evolved parameters; σ is part of ``state_dict()``.
        track_best: keep ``es.best``, the member of highest fitness over all generations so far
            (:class:`~flipes.es.members.BestMember`: its fitness, generation, index and state dict,
            buffers included); part of ``state_dict()``. Costs one member's weights per
            generation that beats it. Noisy fitness (episodes, minibatches) makes its fitness optimistic.
        maximize: ``True`` (default): higher fitness is better. ``False``: ``tell`` takes a loss to
            minimize (``shaping`` is applied to its negation; ``es.best`` is the lowest); the fitness
            statistics ``tell`` returns are of the values as told. Part of ``state_dict()``'s configuration.
        hold_noise: ``True`` (default): the generation's noise of every local member (ε, and the
            per-member signs and bias noise, O(N·(in + out)) per layer) is sampled on entering
            ``population()`` and held until ``tell``. ``False``: for a population evaluated in parts
            (``pop.split``): each part's ε groups are sampled when the part is entered (kept while the next
            parts lie in the same groups), and ``tell`` samples the groups again, a part's worth at a time:
            the memory of one part's noise instead of all N members', for twice the sampling. Use many
            groups (``popsize / groups`` at most the part size): a part inside one group holds that group's
            noise. The members are the same; ``tell``'s sums differ by rounding alone. A forward of the
            whole population samples all of it, as with ``True``.

    Raises:
        TypeError: ``popsize``, ``seed`` or ``groups`` not an integer (a float, a bool), or another argument of the
            wrong type (a ``model`` that is no ``nn.Module``); other libraries' argument names, naming FlipES's.
        ValueError: a value out of range (``sigma`` <= 0, ``popsize`` not a multiple of ``groups``, an odd group
            with ``mirrored``), or a trainable parameter that no Flipout layer or per-member module perturbs
            (``flipes.flipout(model)`` first).

    Examples::

        >>> model = flipes.flipout(nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 2)))
        >>> es = flipes.FlipES(model, popsize=64, sigma=0.05, lr=0.03, seed=0)
        >>> for _ in range(100):
        ...     with es.population() as pop:
        ...         fitness = -loss_of_each_member(model(x.expand(pop.size, *x.shape)))
        ...     stats = es.tell(fitness)
    """

    # fixed once built (settings.FIXED: __setattr__ refuses them), Final so that a type checker flags es.popsize = n too
    popsize: Final[int]
    groups: Final[int]
    seed: Final[int]
    mirrored: Final[bool]
    maximize: Final[bool]
    noise_rank: Final[int | None]
    sigma_lr: Final[float]
    track_best: Final[bool]
    hold_noise: Final[bool]
    comm_mode: Final[str]

    __signature__ = InitSignature()  # help() and call tips show __init__'s arguments, not __new__'s (*args, **kwargs)

    def __new__(cls, *args: Any, **kwargs: Any) -> FlipES:
        # another library's name (sigma_init=, stdev_init=, objective_sense=) is refused naming FlipES's, before
        # Python's own "unexpected keyword argument", which names no fix
        refuse_foreign_keywords(cls.__init__, kwargs, cls.__name__)
        return super().__new__(cls)

    def __init__(
        self,
        model: nn.Module,
        popsize: SupportsIndex,
        sigma: float | Callable[[int], float] = 0.05,
        lr: float | None = None,
        seed: SupportsIndex = 0,
        groups: SupportsIndex = 1,
        *,
        mirrored: bool = True,
        shaping: Shaping = centered_ranks,
        weight_decay: float = 0.0,
        optimizer: OptimizerFactory | None = None,
        comm: Comm | None = None,
        comm_mode: str = "allreduce",
        noise_rank: int | None = None,
        sigma_lr: float = 0.0,
        track_best: bool = False,
        maximize: bool = True,
        hold_noise: bool = True,
    ) -> None:
        # checked up front: a wrong type would otherwise fail far from here, or be truncated silently
        check_module(model, "FlipES(model, ...)")
        o = checked_options(
            popsize, sigma, lr, seed, groups, mirrored=mirrored, shaping=shaping, weight_decay=weight_decay,
            comm_mode=comm_mode, noise_rank=noise_rank, sigma_lr=sigma_lr, track_best=track_best, maximize=maximize,
            hold_noise=hold_noise,
        )  # fmt: skip
        popsize, groups, lr = o.popsize, o.groups, o.lr
        self.track_best, self.maximize, self.hold_noise = o.track_best, o.maximize, o.hold_noise
        self.best: BestMember | None = None  # with track_best: the fittest member of any generation so far
        self.noise_rank, self.sigma_lr = o.noise_rank, o.sigma_lr  # sigma_lr 0 keeps σ fixed
        self.model = model  # what step() calls: torch.compile(net) stays compiled
        model = self._module = uncompiled(model)  # names and state dicts: net's own, without "_orig_mod."
        self.popsize, self.groups, self.seed, self.mirrored = popsize, groups, o.seed, o.mirrored
        self.shaping, self.weight_decay = shaping, o.weight_decay
        self._sigma = sigma
        self._sigma_held: tuple[int, float] | None = None  # (generation, σ): the schedule's value its members were given
        if comm is not None:
            check_comm(comm, "FlipES(comm=...)", needs=("rank", "size"))  # not an AttributeError at comm.rank below
        refuse_unsynced_ddp(model, comm)
        self.comm: Final[Comm] = comm if comm is not None else SerialComm()
        warn_unsplit(comm, popsize)
        self.comm_mode = comm_mode
        self.local_groups = split_groups(groups, self.comm.rank, self.comm.size)
        group_size = popsize // groups
        self.members = range(self.local_groups.start * group_size, self.local_groups.stop * group_size)

        self.layers = flipout_layers(model)
        self.dense_modules = per_member_modules(model)
        check_members_first(model)
        refuse_unhandled(model)
        self.slots, self._slot_index = flipout_slots(self.layers, [*self.layers, *self.dense_modules])
        self._weight_counts = [len(layer.perturbed_weights()) for layer in self.layers]  # fixed, as the slots are
        self.dense_slots, self._dense_uses, self._bias_of, self._weight_uses = dense_slots(
            self.layers, [*self.layers, *self.dense_modules], self.slots, self._slot_index
        )
        self._dense_fixed_rows = [sorted({r for m, name in uses for r in padding_rows(m, name)}) for uses in self._dense_uses]
        self.params: list[nn.Parameter] = evolved_parameters(self.slots, self.dense_slots)
        warn_sigma_one_group(self)
        warn_idle_noise_rank(self)
        # evolved parameters a plain module also holds (self.shift = self.fc.bias): its reads are noted in a population,
        # refused at its end (refuse_mean_reads); put in before _held_in, which holds the modules' dicts
        self._mean_reads = mean_reads(model)
        self._noting = [noting_parameters(r.owner, [r.key]) for r in self._mean_reads]
        # what was trainable when the evolved set was fixed: a flag changed later is an error (check_requires_grad)
        self._requires_grad = [(p, p.requires_grad) for p in model.parameters()]
        self._held = dict(model.named_parameters(remove_duplicate=False))  # the Parameter objects evolved: check_held
        # where the model holds them: each module's own dicts, looked up every generation instead of walking the names
        self._held_in = held_in(model)
        self._held_sizes = held_sizes(model)
        self.optimizer = build_optimizer(self.params, optimizer, lr, o.given_lr, partial(parameter_names, self._module))
        told_record(self.optimizer).seed = self.seed  # its state_dict() records the run and generation
        # adaptive σ: one log σ per Flipout slot (a layer's weight and bias) and per dense parameter
        self.log_sigma: Tensor | None = None
        if self.sigma_lr > 0:
            self.log_sigma = torch.full(  # on the host, as load_state_dict keeps it: read by sigmas() every generation
                (len(self.slots) + len(self.dense_slots),), math.log(self.sigma_at(0)), dtype=torch.float64, device="cpu"
            )
        self._slot_numel = [
            (pw.weight.numel() if pw.weight.requires_grad else 0)
            + (pw.bias.numel() if pw.bias is not None and pw.bias.requires_grad else 0)
            for pw in self.slots
        ] + [p.numel() for _, _, p in self.dense_slots]
        warn_rebuilt(self)  # before it takes the layers over from a FlipES that stepped them
        for module in [*self.layers, *self.dense_modules]:  # the newest FlipES of a model owns its layers
            module.__dict__["_flipes_owner"] = weakref.ref(self)
        for layer in self.layers:  # fixed, as the members are: set with the ownership, not in every install
            layer.flipes_population = len(self.members)
        self.generation = 0
        self._noise: tuple[list[SlotNoise], list[DenseNoise]] | Deferred | None = None  # this generation's, once sampled
        self._noise_serial = 0  # counts the noises sampled: what a Population's parts check theirs by
        self._shuffles = EpochShuffles()  # pop.minibatch's shuffle of the epoch, drawn once an epoch
        # (generation, Deferred.block) of a tell that raised after it freed the noise, before the step: drawn again by a
        # tell of that generation (the noise is a function of the seed and the generation)
        self._freed: tuple[int, int] | None = None
        self._told_equal = False  # warned once that a whole population had one fitness value
        self._placement: list[tuple[torch.dtype, torch.device]] | None = None  # the parameters' at the last step
        self._evaluated = False  # a layer ran inside this generation's population, or a member was built
        self._inside: list[nn.Module] | None = None  # the modules of a population being evaluated
        self._in_part = False  # a Population.part() is being evaluated
        self._stale_hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._told_outside = False  # warned once that the model did not run inside a population
        self._train_fitness = False  # flipes.train holds the block: the warnings speak of the fitness it was given
        self._ranks_agree = False  # every process was found to hold the same parameters (checked at the first tell)
        self._told_dropout = False  # warned once of dropout in training mode (flipes.train notes it instead)
        self._versions: list[int] | None = None  # the parameters' version counters when a population block ended
        self._told_changed = False  # warned once that they changed between that and tell
        self._told_rounded = False  # warned once that a step rounded away in bfloat16/float16 parameters
        self._built = True  # from here on the layout is fixed: __setattr__ refuses FIXED and checks SETTABLE

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_built"):
            if name in FIXED:
                raise AttributeError(fixed_message(name, value))
            if name in SETTABLE:
                value = checked_setting(self, name, value)
                if name == "optimizer":  # its state_dict() records the run and generation (refusals.mark_state)
                    told = told_record(value)
                    told.seed, told.generation = self.seed, self.generation - 1
        object.__setattr__(self, name, value)

    # other libraries' methods (es.ask()): an AttributeError naming flipes' way. Descriptors, not a __getattr__, which
    # would cost every attribute read of FlipES ~45 ns (Python 3.11 specializes reads only without one); hidden from
    # type checkers, which then flag es.ask() as Python does
    if not TYPE_CHECKING:
        ask, result, run = ForeignMethod(), ForeignMethod(), ForeignMethod()

    def __dir__(self) -> list[str]:
        # a notebook's tab completion lists dir(): the refused methods above are no attributes to offer (a subclass's own
        # run() stays)
        refused = {n for n in FOREIGN_METHODS if isinstance(inspect.getattr_static(type(self), n, None), ForeignMethod)}
        return [name for name in super().__dir__() if name not in refused]

    def __repr__(self) -> str:
        # what a notebook cell may have changed since (es.shaping, es.lr, es.weight_decay) shows, the defaults aside
        sigma = f"{self.mean_sigma():.4g}" + (
            " (adaptive)" if self.log_sigma is not None else " (schedule)" if callable(self._sigma) else ""
        )
        # every param group's step size, where groups differ (a frozen group's lr 0 included)
        lrs = [f"{v:.4g}" for v in step_sizes(self.optimizer)]
        lr = "" if not lrs else f"(lr={lrs[0]})" if len(lrs) == 1 else f"(lr=[{', '.join(lrs)}])"
        parts = [
            f"popsize={self.popsize}",
            f"groups={self.groups}",
            f"sigma={sigma}",
            f"optimizer={type(self.optimizer).__name__}{lr}",
            f"mirrored={self.mirrored}",
            f"generation={self.generation}",
            f"params={sum(p.numel() for p in self.params):,}",
        ]
        if self.shaping is not centered_ranks:
            parts.insert(4, f"shaping={getattr(self.shaping, '__qualname__', type(self.shaping).__name__)}")
        if self.weight_decay:
            parts.insert(4, f"weight_decay={self.weight_decay:.4g}")
        if not self.maximize:
            parts.insert(3, "maximize=False")
        if self.noise_rank is not None:
            parts.insert(3, f"noise_rank={self.noise_rank}")
        if self.comm.size > 1:
            parts.append(f"process {self.comm.rank} of {self.comm.size}: members {self.members.start}..{self.members.stop - 1}")
        return f"FlipES({', '.join(parts)})"

    def __getstate__(self) -> dict[str, Any]:
        """For ``copy.deepcopy`` and pickle: the layers' slots keyed by position, not by ``id`` (a copy's layers
        are other objects), and no population in progress (a copy of the model is the mean network)."""
        return pickled_state(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        unpickled_state(self, state)

    def report(self) -> ParameterReport:
        """What a population does with each parameter of the model: Flipout, low-rank, dense, frozen
        (a shared bias that its weights' Flipout noise does not carry: dense)."""
        check_requires_grad(self)  # the rows read the flags live: they would describe another evolved set
        dense = {id(p) for _, _, p in self.dense_slots}
        names = {name for name, p in self._module.named_parameters() if id(p) in dense}
        rows = parameter_report(self._module, self.noise_rank).rows
        return ParameterReport([dataclasses.replace(r, how="dense") if r.name in names else r for r in rows])

    def sigma_at(self, generation: int) -> float:
        """σ of ``generation`` on the FlipES's ``sigma`` (the number, or the schedule called); the schedule's value
        when σ is adapted (``sigma_lr``), which :meth:`sigmas` reads instead. Not finite or not > 0: an error.

        A schedule is read once for the generation being evaluated, on entering its first ``population()``: its members
        are perturbed at that σ, and ``tell``, ``member_noise`` and ``es.sigma`` use it, whatever the schedule says
        after (a rule of one's own changed inside the block takes effect in the next generation)."""
        held = self._sigma_held
        if held is not None and held[0] == generation:
            return held[1]
        return sigma_value(self._sigma, generation)

    def sigmas(self) -> list[float]:
        """σ of every Flipout slot, then of every dense parameter, in the current generation."""
        if self.log_sigma is None:
            return [self.sigma_at(self.generation)] * len(self._slot_numel)
        return self.log_sigma.exp().tolist()

    def mean_sigma(self) -> float:
        """σ averaged over the evolved parameters (weighted by their number)."""
        sigmas, counts = self.sigmas(), self._slot_numel
        if self.log_sigma is None or not sum(counts):
            return self.sigma_at(self.generation)
        return sum(s * c for s, c in zip(sigmas, counts, strict=True)) / sum(counts)

    @property
    def sigma(self) -> float:
        """σ of the generation being evaluated (:meth:`mean_sigma`: with ``sigma_lr > 0``, the layers' σ averaged by
        their sizes). Set by ``FlipES(sigma=...)``: a number, or a schedule ``generation -> σ``."""
        return self.mean_sigma()

    @sigma.setter
    def sigma(self, value: NoReturn) -> None:  # no value: a type checker flags es.sigma = x, which always raises
        # an attribute of that name would be read by nothing: every generation's σ comes from the schedule
        if self._train_fitness:  # a callback of flipes.train's, which builds the FlipES itself
            raise AttributeError(
                f"es.sigma = {value!r}: σ is not set on a FlipES; in flipes.train it is --sigma with --sigma-decay and "
                "--sigma-min (sigma_decay=, sigma_min=), or adapted with --sigma-lr; a σ rule of your own needs a loop of "
                "your own (with es.population() ... es.tell), with FlipES(sigma=lambda g: rule.sigma)"
            )
        raise AttributeError(
            f"es.sigma = {value!r}: σ is not set on a FlipES, it is FlipES(sigma=...), a number or a schedule "
            "`generation -> σ` (flipes.search.SigmaDecay(sigma, decay, minimum), or a function of your own) called "
            "every generation, so that a resumed run and every process have the same σ; sigma_lr > 0 adapts it. A rule "
            "that sets σ from what it sees (the 1/5th success rule) is a schedule reading a value of yours that you "
            "change between tell and the next population: FlipES(sigma=lambda g: rule.sigma)"
        )

    @property
    def lr(self) -> float:
        """The optimizer's step size (its first parameter group's ``lr``); setting it sets every group's, as a
        ``torch.optim.lr_scheduler`` does, saved with the optimizer's state."""
        groups = [g for g in self.optimizer.param_groups if g.get("lr") is not None]  # Adafactor: None, its own
        if not groups:
            raise AttributeError(f"es.lr: the optimizer {type(self.optimizer).__name__} has no lr in its param_groups")
        return float(groups[0]["lr"])

    @lr.setter
    def lr(self, value: float) -> None:
        lr = nonnegative("lr", value)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @property
    def num_params(self) -> int:
        """How many scalars the search evolves: the elements of ``es.params`` (frozen parameters not counted)."""
        return sum(p.numel() for p in self.params)

    def _sample(self, groups: range | None = None) -> tuple[list[SlotNoise], list[DenseNoise]]:
        """The noise of ``groups`` (default: this process's groups) for the current generation: one
        ``SlotNoise`` per Flipout slot (keys 0, 1, ...), then one ``DenseNoise`` per dense parameter."""
        groups = self.local_groups if groups is None else groups
        sigmas = self.sigmas()
        group_size = self.popsize // self.groups
        noise = []
        for i, pw in enumerate(self.slots):
            w = pw.layout  # its shape, dtype and device: no detach needed
            nz = sample_slot(
                seed=self.seed,
                generation=self.generation,
                slot=i,
                groups=groups,
                group_size=group_size,
                weight=w,
                in_channels=pw.in_channels,
                out_channels=pw.out_channels,
                has_bias=pw.bias is not None and pw.bias.requires_grad,
                sigma=sigmas[i],
                mirrored=self.mirrored,
                table=shared_sign_table(w.dtype, w.device),
                rank=self.noise_rank,
            )
            rows = list(pw.fixed_rows) if pw.weight.requires_grad else slice(None)  # a frozen weight: all rows
            if rows:  # most weights have no fixed row: no indexing op on the sampling path
                (nz.eps if nz.factors is None else nz.factors[0])[:, rows] = 0
            noise.append(nz)
        dense = [
            sample_dense(
                seed=self.seed,
                generation=self.generation,
                slot=len(self.slots) + i,
                groups=groups,
                group_size=group_size,
                param=p,  # its shape, dtype and device
                sigma=sigmas[len(self.slots) + i],
                mirrored=self.mirrored,
            )
            for i, (_, _, p) in enumerate(self.dense_slots)
        ]
        for nz, rows in zip(dense, self._dense_fixed_rows, strict=True):
            if rows:  # a dense embedding's padding row: never perturbed, as torch never updates it
                nz.delta[:, list(rows)] = 0
        return noise, dense

    def population(self) -> PopulationBlock:
        """Inside, every Flipout layer evaluates the local members (inputs are members first).

        The noise is sampled on first entry in a generation and kept until ``tell``, so entering
        twice in one generation evaluates the same members. Autograd is off inside. A ``with`` block:
        ``with es.population() as pop:`` gives the :class:`Population`.
        """
        return PopulationBlock(self._population(), lambda: warn_dropout(self))

    @contextmanager
    def _population(self) -> Iterator[Population]:
        refuse_older_owner(self)
        check_requires_grad(self)
        refuse_replayed_noise(self)
        modules = [*self.layers, *self.dense_modules]
        refuse_nested(self)
        # whether the model runs in here at all (tell warns if not): the first call of a layer or dense module removes
        # every dense module's hook (a layer's is its hook of note_direct_reads, which calls `ran` too)
        hooks: list[torch.utils.hooks.RemovableHandle] = []

        def ran(module: nn.Module, args: Any) -> None:
            self._evaluated = True
            if compiling():  # Dynamo cannot trace a RemovableHandle: the hooks stay until an eager forward, or the end
                return
            for hook in hooks:
                hook.remove()

        ran.flipes_population = True  # type: ignore[attr-defined]  # left out of copies (flipes.nn.dense.without_owner)

        hooks.extend(m.register_forward_pre_hook(ran) for m in self.dense_modules)
        with torch.no_grad():
            if self._noise is None:
                self._sigma_held = None  # this generation's σ read now, then held (sigma_at)
                self._sigma_held = (self.generation, self.sigma_at(self.generation))
                self._noise = self._sample() if self.hold_noise else Deferred()
                self._noise_serial, self._freed = self._noise_serial + 1, None
            noise, serial = self._noise, self._noise_serial
            on_demand: list[torch.utils.hooks.RemovableHandle] = []
            if isinstance(noise, Deferred):  # sampled per part; a forward of the whole population samples it all

                def whole(module: nn.Module, args: Any) -> None:
                    install_whole(self)

                whole.flipes_population = True  # type: ignore[attr-defined]  # a copy of the model is the mean network
                on_demand = [m.register_forward_pre_hook(whole) for m in modules]
            else:
                install(self, *noise, len(self.members))
            restore_fused = fused_transformers_off(self._module)  # they read the mean weights, past the Flipout layers
            noting = note_direct_reads(self, ran)
            for held in self._noting:
                held.reads = set()
            self._inside = modules  # a tell() inside the block makes its later forwards errors (refuse_stale)
            try:
                yield Population(
                    size=len(self.members),
                    popsize=self.popsize,
                    generation=self.generation,
                    sigma=self.mean_sigma(),
                    members=self.members,
                    groups=self.local_groups,
                    seed=self.seed,
                    # by its serial, not the noise: a `pop` kept after tell() (a loop's variable) must not keep a
                    # copy of every Flipout weight per group alive
                    enter_part=lambda start, stop: part(self, self._noise if self._noise_serial == serial else None, start, stop),
                    superseded=self._superseded_check(),
                    shuffles=self._shuffles,
                )
                refuse_direct_reads(self)
                refuse_mean_reads(self)
                self._versions = [p._version for p in self.params]  # a change before tell is warned of there
            except RuntimeError as error:
                raise_with_fix(self, error)
                raise
            except SystemExit as e:  # Python passes no sys.exit to the except hook that ends an MPI job on an error
                if self.comm.size > 1:  # the other ranks would wait for this one's fitness in tell, for ever
                    abort_on_exit(self.comm, e)
                raise
            finally:
                restore_fused()
                for layer in read_watched(self):
                    layer.__dict__.pop("_flipes_reads", None)
                for held in self._noting:
                    held.reads = None
                for hook in [*hooks, *on_demand, *noting, *self._stale_hooks]:
                    hook.remove()
                self._inside, self._stale_hooks, self._in_part = None, [], False
                uninstall(self)
                if isinstance(noise, Deferred):  # uninstalled: a whole forward in a later block of the generation installs it
                    noise.whole = False

    def _superseded_check(self) -> Callable[[], bool]:
        """For a Population of this generation: whether a later generation's population is open now."""
        generation = self.generation
        return lambda: self._inside is not None and self.generation != generation

    @torch.inference_mode(False)  # an optimizer state made inside inference_mode could not be updated outside it
    @torch.no_grad()
    def tell(self, fitness: Tensor | np.ndarray | Iterable[float]) -> dict[str, float]:
        """Update the mean parameters from the fitness of this process's members.

        Args:
            fitness: ``(pop.size,)``, higher is better (lower with ``maximize=False``), in the members'
                input order.

        Returns:
            ``fitness_mean/max/min/std``, ``grad_norm`` (‖ĝ‖), ``update_ratio`` (‖Δθ‖/‖θ‖, θ after the step: 0
            for no step at θ = 0, inf for a step onto θ = 0), ``sigma`` and ``generation`` (the generation just finished).

        A rejected fitness raises before anything changes. A tell that raises midway (an interrupt, out of
        memory) before the optimizer steps leaves the parameters and the generation as they were (``.grad``: ``None``
        or this generation's gradient): call it again with the same fitness. Inside a ``torch.autocast`` region the
        update still runs in the parameters' dtype.

        Raises:
            ValueError: a fitness of another shape than ``(pop.size,)``; its subclass ``NonFiniteFitness``
                (``flipes.es.checks``) for a NaN or infinite value, naming the members.
            TypeError: a fitness that is not real numbers (a string, complex numbers).
            OverflowError: a gradient past float16's range for float16 parameters, before the step (their ``.grad``:
                ``None``); the message says how to shape or keep float32 parameters.
            RuntimeError: no population of this generation was entered yet (``with es.population()`` first). With
                several processes, on the others: a fitness this one rejected (their tell raises it at once, naming this
                process's rank, rather than waiting for its fitness).
        """
        with without_autocast(self.params[0].device):
            return self._tell(fitness)

    def _tell(self, fitness: Tensor | np.ndarray | Iterable[float]) -> dict[str, float]:
        check_requires_grad(self)
        check_placement(self.optimizer, self.params, self._placement, partial(parameter_names, self._module))
        self._redraw_freed()
        if self._noise is None:
            told = f" (tell() already ended generation {self.generation - 1})" if self.generation else ""
            raise RuntimeError(
                f"tell() before any population of generation {self.generation}{told}: evaluate `with es.population()` "
                "first; each generation is one population, then one tell()"
            )
        changed = changed_since_population(self)
        try:
            try:
                local = check_fitness(fitness, self.members, self.popsize)
            except NonFiniteFitness as error:  # the fitness function may be fine and the members broken
                raise_if_not_finite(self, error)
                raise
        except Exception as error:  # on this rank alone: the others, in the fitness exchange, raise it too
            send_failure(self, error)
            raise
        full = gather_fitness(self, local)
        # weights for ascent either way, from a copy: a shaping that works in place (f -= f.mean()) would otherwise
        # change the stats and es.best read from `full` below, and the caller's own float64 tensor or array
        shaped = check_weights(self.shaping(full.clone() if self.maximize else -full), full)
        sigma = self.sigma_at(self.generation)
        sigmas, adaptive = self.sigmas(), self.log_sigma is not None
        everyone = self.comm_mode == "seeds" and self.comm.size > 1
        mine = slice(None) if everyone else slice(self.members.start, self.members.stop)
        coeff = shaped[mine]
        by_group = by_member = None
        if adaptive:  # baselines independent of each member's σ-score (flipes.es.sigma)
            by_group = leave_out(shaped.double(), self.popsize // self.groups)[mine]
            by_member = leave_out(shaped.double(), 2 if self.mirrored else 1)[mine]
        groups = range(self.groups) if everyone else self.local_groups
        for p in self.params:  # the last generation's gradient (one copy of the parameters), replaced below anyway
            p.grad = None
        noise = self._noise
        if isinstance(noise, Deferred):  # sampled again, a block of groups at a time (the largest part's)
            noise.noise = None
            step = max(noise.block, 1)
            if everyone:  # every process sums all groups itself: in the same blocks, for the same bits
                step = max(self.comm.allgather_object(step))
            blocks = [range(g, min(g + step, groups.stop)) for g in range(groups.start, groups.stop, step)]
        else:
            blocks = [groups]
        if self.track_best:  # from the noise, before it is dropped below; after the old .grad and a part's block went
            best = int(full.argmax() if self.maximize else full.argmin())
            better = (lambda a, b: a > b) if self.maximize else (lambda a, b: a < b)
            if self.best is None or better(full[best].item(), self.best.fitness):
                self.best = BestMember(full[best].item(), self.generation, best, members.member_state_dict(self, best))
        per = self.popsize // self.groups
        grads: dict[int, Tensor] = {}
        sigma_sums: list[Tensor] = []
        for block in blocks:
            held = noise if isinstance(noise, tuple) and not everyone else self._sample(block)
            rows = slice((block.start - groups.start) * per, (block.stop - groups.start) * per)
            sums = self._block_gradient(
                held, sigmas, coeff[rows], *(None if b is None else b[rows] for b in (by_group, by_member))
            )
            for p, g in sums[0].items():
                grads[p] = grads[p] + g if p in grads else g
            sigma_sums = sums[1] if not sigma_sums else [a + b for a, b in zip(sigma_sums, sums[1], strict=True)]
            # a block's noise and sums (a copy of the parameters each) are not kept while the next block is sampled
            held = sums = None
        # the generation's noise (with full rank a copy of every Flipout weight per group) is not needed beside flat; a
        # tell that raises before the step draws it again
        self._freed = (self.generation, noise.block if isinstance(noise, Deferred) else 0)
        noise = self._noise = None
        flat = torch.cat([grads[id(p)].flatten() for p in self.params])
        del grads  # a copy of the parameters: not kept beside flat, before and after
        sigma_grad = torch.stack([g.to(sigma_sums[0].device) for g in sigma_sums]).cpu() if adaptive else None
        if not everyone:
            flat = self.comm.allreduce_sum_(flat)
            if sigma_grad is not None:
                sigma_grad = self.comm.allreduce_sum_(sigma_grad)
        if adaptive:
            flat.mul_(-1.0 / self.popsize)
        else:
            flat.mul_(-1.0 / (self.popsize * sigma * sigma))  # -ĝ: Σ F̂ (σu) / (Nσ²), negated for the loss -J

        flats = [p.view(-1) if p.is_contiguous() else p.flatten() for p in self.params]  # tell runs under no_grad
        numels = [f.numel() for f in flats]
        before = torch.cat(flats)
        del flats  # a channels_last weight's flatten is a copy
        narrow: list[tuple[Tensor, Tensor, Tensor]] = []  # (parameter, its ĝ, whether its .grad overflowed to inf)
        for p, g in zip(self.params, flat.split(numels), strict=True):
            wide, g = g, g.view_as(p).to(p.dtype)  # the flat vector has the widest dtype of all parameters
            if g.stride() != p.stride():  # a channels_last weight: as autograd does, the grad takes the parameter's
                g = torch.empty_like(p, dtype=p.dtype).copy_(g)  # layout (torch's fused Adam pairs their memory)
            p.grad = g + self.weight_decay * p if self.weight_decay else g
            if p.dtype == torch.float16 and wide.dtype != p.dtype:  # ĝ summed in float32: past 65504 (+ wd·θ) .grad is inf
                narrow.append((p, wide, p.grad.isinf().any() > wide.isinf().any()))
        if narrow:
            refuse_overflowed_grads(self, narrow)
        told = told_record(self.optimizer)  # a step of it outside tell while .grad is this one is refused (refusals)
        told.stepping = True
        try:
            self.optimizer.step()
        finally:
            told.stepping = False
        told.seed, told.loaded = self.seed, None
        told.generation, told.grads = self.generation, [(p, weakref.ref(p.grad)) for p in self.params if p.grad is not None]
        # the step is taken: the generation ends here, whatever raises below (an interrupt at the sync of the norms),
        # so that no later tell or population steps with this generation's noise again
        self._placement = [(p.dtype, p.device) for p in self.params]  # where the optimizer's state now lives
        mean_sigma = self.mean_sigma()
        if sigma_grad is not None:  # ascent on log σ along the standardized natural gradient (flipes.es.sigma)
            self.log_sigma += self.sigma_lr * sigma_grad.to(torch.float64) / self.popsize
        generation, self.generation, self._freed = self.generation, self.generation + 1, None
        refuse_stale(self)
        # no flat copy of the parameters after the step (for an LLM gigabytes): ‖before − after‖ in place in `before`,
        # bit for bit ‖after − before‖ of one (IEEE subtraction is antisymmetric), ‖after‖ from each parameter's norm
        torch._foreach_sub_(before.split(numels), [p.view(-1) if p.is_contiguous() else p.flatten() for p in self.params])
        # Tensor.norm() is this vector_norm, through a Python function
        vector_norm = torch.linalg.vector_norm
        acc = torch.promote_types(before.dtype, torch.float32)  # float16 norms in float32: in range, as below
        norm = vector_norm(torch.stack([vector_norm(p, dtype=acc) for p in self.params]))
        grad_norm, delta, norm = torch.stack([vector_norm(flat), vector_norm(before, dtype=acc), norm]).tolist()  # one sync
        grad_norm = finite_norm(flat, grad_norm)  # a finite ĝ whose squares overflowed (raw shaping): not inf
        # likewise a step or parameters past 1e19 or below 1e-19 (float32): their ratio, not inf, NaN or 0
        delta, norm = finite_norm(before, delta, acc), finite_norm(self.params, norm, acc)
        low, high = torch.aminmax(full)  # on the host (check_fitness): read with the mean and std in one go
        read = torch.stack((full.mean(), high, low, full.std(unbiased=False))).tolist()
        fitness_mean, fitness_max, fitness_min, fitness_std = read

        stats = {
            "generation": generation,  # an int, as pop.generation
            "fitness_mean": fitness_mean,
            "fitness_max": fitness_max,
            "fitness_min": fitness_min,
            "fitness_std": fitness_std,
            "grad_norm": grad_norm,
            # no step from parameters that are all 0 (a zero gradient at a start of zeros) is a ratio of 0, not inf
            "update_ratio": delta / norm if norm > 0 else (0.0 if delta == 0 else float("inf")),
            "sigma": mean_sigma,
        }
        self._versions = None
        evaluated, self._evaluated = self._evaluated, False
        warn_rounded_step(self, generation, before, flat, numels)  # before: before − after
        warn_of_generation(self, stats, changed, evaluated)
        return stats

    def _redraw_freed(self) -> None:
        """Where a tell of this generation raised after it freed the noise (an interrupt, out of memory) and before the
        step, the noise again: drawn from the seeds, it is the one the members were evaluated with, bit for bit."""
        if self._noise is not None or self._freed is None or self._freed[0] != self.generation:
            return
        with torch.no_grad():
            self._noise = self._sample() if self.hold_noise else Deferred()
        if isinstance(self._noise, Deferred):
            self._noise.block = self._freed[1]  # tell's blocks as before: the same bits
        self._noise_serial, self._freed = self._noise_serial + 1, None

    def _block_gradient(
        self, noise: HeldNoise, sigmas: list[float], coeff: Tensor, by_group: Tensor | None, by_member: Tensor | None
    ) -> tuple[dict[int, Tensor], list[Tensor]]:
        """:func:`flipes.es.estimate.block_gradient` of this FlipES: ``Σ_n c_n σu_n`` over the members of ``noise``, and
        with adaptive σ each slot's log-σ score (a method, so that one instance's can be watched)."""
        return block_gradient(self, noise, sigmas, coeff, by_group, by_member)

    def step(self, fitness_fn: Callable[[nn.Module, Population], Tensor]) -> dict[str, float]:
        """One generation: ``fitness_fn(model, pop)`` inside ``population()``, then ``tell``."""
        check_fitness_fn(fitness_fn)
        with self.population() as pop:
            try:
                fitness = fitness_fn(self.model, pop)
            except Exception as error:  # on this rank alone: the others, in tell's fitness exchange, raise it too
                send_failure(self, error)
                raise
        return self.tell(fitness)

    def member_parameters(self, index: SupportsIndex) -> dict[str, Tensor]:
        """Member ``index``'s explicit parameters ``θ̄ + σu_index`` in the current generation: every
        parameter of the model by name as in ``model.named_parameters()`` (frozen ones: their values),
        new detached tensors in each parameter's dtype and device, unchanged by later updates. A tied
        parameter appears once, under its first name (an LLM's embedding, not its head): to load a member
        into a model, ``member_state_dict`` has it under every name (``{**state_dict(), **member_parameters(i)}``
        would keep the mean head). ``torch.func.functional_call(model, es.member_parameters(i), ...)`` ties it.

        ``index`` is a global member index, ``0 <= index < popsize`` (``pop.members`` holds this
        process's); a member another process evaluates is computed from the seeds. Callable once the
        generation's ``population()`` was entered, inside it and after it, until ``tell`` moves the mean.
        """
        return members.member_parameters(self, members.member_index(self, index))

    def member_noise(self, index: SupportsIndex) -> dict[str, Tensor]:
        """Member ``index``'s perturbation ``σu_index`` of every evolved parameter by name (frozen ones absent), as the
        population applies it: ``member_parameters(index)[name]`` is ``θ̄ + member_noise(index)[name]``. It is drawn
        as such (no difference of two parameters): ``u`` is it divided by the parameter's σ, ``es.sigma`` (with
        ``sigma_lr > 0`` each layer's own, :meth:`sigmas`). Callable when ``member_parameters`` is.
        """
        return members.member_noise(self, members.member_index(self, index))

    def member_state_dict(self, index: SupportsIndex) -> dict[str, Any]:
        """``model.state_dict()`` with member ``index``'s parameters (see ``member_parameters``) and the
        buffers as they are, copied: ``plain_model.load_state_dict(es.member_state_dict(i))`` gives a
        plain torch model that computes what member ``i`` computes in the population, to rounding: the population's
        ``x W̄ + ((x ∘ s) σε) ∘ r`` sums in another order than ``x (W̄ + σu)`` (tested: 1e-12 in float64, 1e-5 in
        float32, where one MLP differed by 3e-7)."""
        return members.member_state_dict(self, members.member_index(self, index))

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit for bit: the noise is a pure function of
        (seed, generation), so no random state is stored. Tensors are references: save at once."""
        return saved_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from what :meth:`state_dict` returned: model, optimizer, generation (and σ, the best member).

        Raises:
            ValueError: ``state`` is no FlipES state dict, or one of another configuration, model or optimizer;
                nothing has changed then.
            RuntimeError: called inside ``with es.population()``; nothing has changed then.
        """
        refuse_load_in_population(self)
        load_state(self, state)


def refuse_overflowed_grads(es: FlipES, narrow: list[tuple[Tensor, Tensor, Tensor]]) -> None:
    """Raise, before the step and with ``.grad`` cleared, where a finite ĝ overflowed a float16 parameter's ``.grad`` to
    inf (raw shaping of fitness ~1e5, or a small σ): the optimizer would make the parameters inf or NaN without a word.
    One sync a tell, for models with float16 parameters only (bfloat16 has float32's range)."""
    flags = torch.stack([flag for _, _, flag in narrow]).tolist()
    bad = [(p, wide) for (p, wide, _), flag in zip(narrow, flags, strict=True) if flag]
    if not bad:
        return
    for p in es.params:
        p.grad = None
    top = max(float((wide.view_as(p) + es.weight_decay * p.float()).abs().max()) for p, wide in bad)  # .grad's, in float32
    names = parameter_names(es._module, [p for p, _ in bad])
    raise OverflowError(
        f"tell(): the ES gradient of {names} reaches {top:.3g}, past float16's largest number 65504: its .grad would be "
        "inf and the step make the parameters inf or NaN (nothing was stepped). The gradient grows with the shaped "
        "fitness's scale over σ: shape the fitness by rank (shaping=flipes.shaping.centered_ranks) or scale it down, or "
        f"keep the parameters float32 and evaluate the population under torch.autocast({bad[0][0].device.type!r}, "
        "dtype=torch.float16) (the members compute in float16, the mean steps in float32)"
    )
