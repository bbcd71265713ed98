"""Per-member ("dense") perturbations of parameters that have no Flipout form.

A norm's scale and shift, a bare ``nn.Parameter`` a module adds or multiplies, any layer flipes has
no two-GEMM form for: member ``n`` of a population uses ``θ + σε_n`` with ``ε_n ~ N(0, I)`` drawn
independently per member (Salimans et al., 2017, arXiv:1703.03864), ``N × numel`` random numbers a
generation — cheap for the elementwise parameters this is meant for.

``flipes.flipout`` turns a module that owns such parameters, and has no Flipout layer below it,
into a ``PerMember`` module: the same object with a subclass of its own class, so its state dict,
``isinstance`` checks and outside-population forward are unchanged. Inside a population it runs
its own forward once for all members through ``torch.func.vmap``, each member with its own
parameters. Inputs are members first, ``(N, ...)`` or ``(N·k, ...)`` member-major, as for every
Flipout layer; any other argument is shared by all members, and so are tensors shaped as the rows without their first
dim (1-D positions ``(T,)`` or a table ``(T, E)`` beside ``(N·k, T, E)``; refused where T is also the rows' count).
Called with no member input at all, it returns every member's output, members first; an output reduced over each
member's batch (a loss, a pooled feature vector), ``(N, ...)``. A Hugging Face module runs each member's rows as a
batch, and an output of one row beside a member's k rows is broadcast over them, as it is unbatched.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _torch_module  # its hooks for every module
from torch.nn.modules.batchnorm import _NormBase  # BatchNorm and InstanceNorm
from torch.nn.utils import parametrize
from torch.utils import _pytree as pytree

from flipes.nn.inputs import refuse_non_tensor
from flipes.nn.reads import NotesReads
from flipes.nn.vector import Vector
from flipes.noise import SlotNoise, compiling

# the norms whose per-member forward is written out here (nn.RMSNorm exists from torch 2.4)
NORMS: tuple[type[nn.Module], ...] = (nn.LayerNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))


class PerMember(NotesReads):
    """Mixin of modules evaluated with dense per-member noise on all their trainable parameters.

    ``member_noise`` maps parameter names (as in ``named_parameters()``) to ``(N, *shape)``
    perturbations of the ``flipes_members`` (N) of a population, or to a function making them at the first read
    (a Flipout weight this module also reads); ``None`` outside one, where the module is
    exactly its parent class. A module with no evolved parameter (a BatchNorm without affine
    parameters) has an empty ``member_noise``: it still runs per member, on each member's batch.
    """

    member_noise: dict[str, Tensor | Callable[[], Tensor]] | None = None
    flipes_members: int = 0  # the population size while one is evaluated (not "members": a module may have its own)

    def __reduce_ex__(self, protocol: int) -> tuple:  # the class is made at runtime: pickle how to make it
        return _new_per_member, (type(self).__bases__[-1],), self.__getstate__()  # type: ignore[attr-defined]

    def __getstate__(self) -> dict[str, Any]:
        return without_owner(super().__getstate__())  # type: ignore[misc]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.member_noise is None:
            return super().forward(*args, **kwargs)  # type: ignore[misc]
        return per_member_forward(self, self.member_noise, args, kwargs)  # type: ignore[arg-type]


@functools.cache  # one subclass per class, so converted modules of a type share a type
def per_member_class(cls: type[nn.Module]) -> type[nn.Module]:
    """``PerMember`` + ``cls``: named ``PerMember<cls>``, in ``cls``'s module for readable reprs."""
    return type(f"PerMember{cls.__name__}", (PerMember, cls), {"__module__": cls.__module__})


def user_class_name(module: nn.Module) -> str:
    """The name of the class the user wrote for ``module`` (``Linear``), for messages: without the classes flipes
    (``PerMember<cls>``) and torch's parametrize (``Parametrized<cls>``) make at runtime around it."""
    cls = type(module)
    while cls.__bases__ and (
        (issubclass(cls, PerMember) and cls is not PerMember)
        or (parametrize.is_parametrized(module) and cls.__name__ == f"Parametrized{cls.__bases__[0].__name__}")
    ):
        cls = cls.__bases__[-1] if PerMember in cls.__bases__ else cls.__bases__[0]
    return cls.__name__


def _new_per_member(cls: type[nn.Module]) -> nn.Module:
    new = per_member_class(cls)
    return new.__new__(new)


def to_per_member(module: nn.Module) -> nn.Module:
    """Make ``module`` a ``PerMember`` module in place (its class is swapped for the subclass)."""
    if not isinstance(module, PerMember):
        module.__class__ = per_member_class(type(module))
    return module


def without_owner(state: dict[str, Any]) -> dict[str, Any]:
    """A module's pickled state without the reference to the FlipES that evaluates it (a weak
    reference: it cannot be pickled, and a copy of the model has no FlipES yet), nor what a running
    population set on it (its noise, its hooks): a copy made inside ``es.population()`` is the mean
    network, as the original is once the block ends. A module's own attributes are kept."""
    dropped = ("_flipes_owner", "_flipes_shared_ids", "_flipes_no_input", "_flipes_reads")
    state = {k: v for k, v in state.items() if k not in dropped}
    noise = state.get("noise")
    if isinstance(noise, tuple) and noise and all(isinstance(n, SlotNoise) for n in noise):  # a Flipout layer's
        state["noise"] = None
    if state.get("member_noise") is not None:
        state["member_noise"] = None
    for kind in ("_forward_pre_hooks", "_forward_hooks"):
        hooks = state.get(kind)
        if hooks and any(getattr(h, "flipes_population", False) for h in hooks.values()):
            state[kind] = type(hooks)((k, h) for k, h in hooks.items() if not getattr(h, "flipes_population", False))
    return state


def resolved(delta: Tensor | Callable[[], Tensor]) -> Tensor:
    """A ``member_noise`` value as a tensor (made now where it is built at its first read)."""
    return delta if isinstance(delta, Tensor) else delta()


def needs_member_batches(module: nn.Module) -> bool:
    """Whether ``module`` must see each member's examples on their own even with no evolved
    parameter: a BatchNorm's batch statistics, or any norm's running statistics, would mix members.

    Raises:
        ValueError: for a lazy norm not yet initialized (it changes its class at its first call).
    """
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        raise ValueError(
            f"flipout(): {type(module).__name__} is not initialized yet; run the model once on an example input "
            "before flipes.flipout(model)"
        )
    norms = nn.modules.batchnorm
    return isinstance(module, norms._BatchNorm) or (
        isinstance(module, nn.modules.instancenorm._InstanceNorm) and module.track_running_stats
    )


def _norm_forward(module: nn.Module, noise: dict[str, Tensor], x: Tensor) -> Tensor:
    """LayerNorm / RMSNorm without vmap: normalize once, then one broadcast multiply-add with each
    member's scale and shift (vmap's generic rule costs ~2x more here)."""
    n, shape = module.flipes_members, tuple(module.normalized_shape)
    refuse_non_tensor(user_class_name(module), x, getattr(module, "weight", None))  # a NumPy array: not a shape problem
    if not _is_member(x, n):
        raise ValueError(
            f"{user_class_name(module)}: input of shape {tuple(x.shape)} inside a population of {n} members; inputs must be "
            f"members first, (members, ...) or (members·k, ...) member-major"
        )
    if isinstance(module, nn.LayerNorm):
        y = F.layer_norm(x, shape, None, None, module.eps)
    else:
        y = F.rms_norm(x, shape, None, module.eps)
    y = y.reshape(n, -1, *shape)

    def member(name: str) -> Tensor | None:
        p = getattr(module, name, None)
        return p if name not in noise else (p + resolved(noise[name])).unsqueeze(1)

    weight, bias = member("weight"), member("bias")
    if weight is not None and bias is not None:
        out = torch.addcmul(bias, y, weight)
    else:
        out = y if weight is None else y * weight
        out = out if bias is None else out + bias
    return out.reshape(x.shape)


def _scaled(module: nn.Module, noise: dict[str, Tensor], args: tuple, kwargs: dict) -> Tensor | None:
    """A Hugging Face RMSNorm's members without vmap: its forward once for all rows with a unit ``weight``, then each
    member's weight multiplied in, the one product its forward ends with (``weight * x``, rounded once either way).
    ``None`` where that cannot apply, or where its first call on rows not all zero found it differs from vmap's forward
    (a scale of ``1 + weight``, a cast after the product): vmap's ~7x cost was most of a small LM's decoding step."""
    if not type(module).__name__.endswith("RMSNorm") or module.__dict__.get("_flipes_scaled") is False:
        return None  # the name first: every other module's per-member forward passes here
    if type(module).__bases__[-1] in NORMS or compiling():
        return None  # torch's own norms: _norm_forward
    x, weight, n = args[0] if len(args) == 1 else None, module._parameters.get("weight"), module.flipes_members
    if kwargs or noise.keys() != {"weight"} or module._modules:
        return None
    if weight is None or weight.dim() != 1 or not _is_member(x, n) or x.dim() < 2 or x.shape[-1] != weight.shape[0]:
        return None
    with _parameters(module, {"weight": torch.ones_like(weight)}):
        unit = super(PerMember, module).forward(x)  # type: ignore[misc]
    if not isinstance(unit, Tensor) or unit.shape != x.shape:
        return None
    member = (weight.detach() + resolved(noise["weight"])).unsqueeze(1)  # (N, 1, D)
    return (member * unit.reshape(n, -1, weight.shape[0])).reshape(x.shape)


def per_member_forward(module: nn.Module, noise: dict[str, Tensor], args: tuple, kwargs: dict) -> Any:
    """``module``'s own forward, member ``n`` with parameters ``θ + noise[name][n]``, inputs split by member."""
    scaled = _scaled(module, noise, args, kwargs)
    if scaled is not None and module.__dict__.get("_flipes_scaled"):
        return scaled
    out = _vmapped_forward(module, noise, args, kwargs)
    # the first call whose rows are not all zero (zeros equal any scale's product): the product is vmap's, bit for
    # bit, or vmap from here on
    if scaled is not None and bool(scaled.ne(0).any()):
        module._flipes_scaled = isinstance(out, Tensor) and out.dtype == scaled.dtype and torch.equal(out, scaled)
    return out


def _vmapped_forward(module: nn.Module, noise: dict[str, Tensor], args: tuple, kwargs: dict, as_given: bool = False) -> Any:
    """``per_member_forward`` through ``torch.func.vmap`` (or member by member where vmap cannot run it)."""
    if type(module).__bases__[-1] in NORMS and len(args) == 1 and not kwargs:
        return _norm_forward(module, noise, args[0])
    low = _low_precision_input(module, args, kwargs)
    if low is not None:
        # torch's batch_norm takes a bfloat16/float16 map beside float32 parameters and statistics (a conv's output
        # under autocast), vmap's rule for it refuses that in eval mode: each member's norm in float32, its output in the
        # input's dtype, as the plain module returns it
        out = _vmapped_forward(module, noise, (args[0].to(torch.float32),), kwargs)
        return out.to(low) if isinstance(out, Tensor) else out
    if not as_given and _autocast_low_inputs(module, args, kwargs):
        # under autocast a previous layer's bfloat16 output meets this module's float32 member parameters inside vmap,
        # where autocast applies only in part: F.conv* and prelu refuse the mix the plain module's autocast casts away.
        # Where the inputs as given fail, they run in float32 (from then on), as vmap runs a float32 input
        widened = pytree.tree_map(lambda t: t.float() if _low(t) else t, (args, kwargs))
        if module.__dict__.get("_flipes_float_inputs"):
            return _vmapped_forward(module, noise, *widened)
        try:
            return _vmapped_forward(module, noise, args, kwargs, as_given=True)
        except SharedBufferWrite:
            raise
        except RuntimeError as e:
            if _out_of_memory(e):  # no dtype's failure: float32 would need twice the memory
                raise
            # widened below, outside this handler: an input wrong in any dtype raises the module's own error alone
        out = _vmapped_forward(module, noise, *widened)
        module._flipes_float_inputs = True
        return out
    if not args and not kwargs and type(module).__bases__[-1] is Vector and noise.keys() == {"value"}:
        # every member's value, θ + δ_n, as the vmap below returns it: black-box search calls it once a generation,
        # where vmap's setup cost several times the fitness of a cheap function
        module._flipes_no_input = True
        return module._parameters["value"].detach() + resolved(noise["value"])
    if not noise and not module.training and getattr(module, "running_mean", None) is not None:
        return super(PerMember, module).forward(*args, **kwargs)  # type: ignore[misc]  # running statistics: one map for all
    n = module.flipes_members
    if isinstance(module, nn.EmbeddingBag) and (args[1] if len(args) > 1 else kwargs.get("offsets")) is not None:
        raise ValueError(
            f"{user_class_name(module)}: inside a population bags are rows of 2-D ids, (members, L) or (members·k, L) "
            "member-major (pad shorter bags with padding_idx); 1-D ids with offsets pack every member's bags into one "
            "sequence, which cannot be split by member"
        )
    params = dict(module.named_parameters(remove_duplicate=False))
    member_params = {name: params[name].detach() + resolved(delta) for name, delta in noise.items()}
    leaves, spec = pytree.tree_flatten((args, kwargs))
    dims = [0 if _is_member(leaf, n) else None for leaf in leaves]
    if n == 1 and len({leaf.shape[0] for leaf, d in zip(leaves, dims, strict=True) if d == 0} - {1}) == 1:
        # a part of one member: a (1, ...) tensor beside its k > 1 rows is one shared by every member (a mask), as it
        # is in the whole population, where 1 is no multiple of the members
        dims = [None if d == 0 and leaf.shape[0] == 1 else d for leaf, d in zip(leaves, dims, strict=True)]
    dims = _positions_shared(module, leaves, dims)
    per = {leaf.shape[0] // n for leaf, d in zip(leaves, dims, strict=True) if d == 0}  # examples per member
    if member_params and not per and all(leaf.dim() < 2 for leaf in leaves if isinstance(leaf, Tensor)):
        # no member input (flipes.nn.Vector, or shared 1-D positions only): each member's output, stacked; a batch of
        # rows that is no multiple of the members (7 rows for 8) is the error below, not an input shared by every member
        per = {1}
        module._flipes_no_input = True  # for the hint of FlipES where a model cannot use that (no_input_fix)
    if len(per) != 1:
        raise ValueError(
            f"{user_class_name(module)}: inside a population of {n} members, inputs must be members first, "
            f"(members, ...) or (members·k, ...) member-major, all with the same k; got shapes "
            f"{[tuple(leaf.shape) for leaf in leaves if isinstance(leaf, Tensor)]}"
        )
    (k,) = per
    members = [leaf for leaf, d in zip(leaves, dims, strict=True) if d == 0]
    # a shared argument with a batch dim of one beside member rows of its rank (a (1, D) context beside (N, D), a (1,) one
    # beside (N,)) broadcasts over a batch in the plain model: each member's row runs as a batch of one, else its output
    # gains that dim
    batch_of_one = any(
        d is None and isinstance(leaf, Tensor) and leaf.dim() == m.dim() and leaf.shape[0] == 1
        for leaf, d in zip(leaves, dims, strict=True)
        for m in members
    )
    batch = k > 1 or batch_of_one or any(needs_batch_dim(module, leaf.shape[1:]) for leaf in members)  # else x[n]
    lone = [leaf for leaf in members if leaf.shape[2:].numel() == 1]  # one value per channel and member
    if batch and k == 1 and lone and isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
        raise ValueError(
            f"{user_class_name(module)} in training mode normalizes each member's batch by its own statistics, and one "
            "example per member has none; call model.eval() for rollouts (running statistics), or give each member "
            "k > 1 examples, (members·k, ...)"
        )
    base = super(PerMember, module).forward  # type: ignore[misc]

    def one_member(p: dict[str, Tensor], flat: list[Any]) -> Any:
        a, kw = pytree.tree_unflatten(flat, spec)
        with _parameters(module, p), _batch_stats_only(module), _plain_below(module), _hooks_below_see_members(module, n):
            with _parametrizations_uncached(module):
                return base(*a, **kw)

    def unbatched() -> str:  # each member's input is its own row, without a batch dim: said where the forward needed one
        if batch:
            return ""
        shapes = ", ".join(str(tuple(leaf.shape[1:])) for leaf in members)
        return (
            f"; it ran on each member's input without the member dim, {shapes}: where it needs a batch dim, pass one "
            "example per member as (members, 1, ...)"
        )

    def run(batched: bool) -> Any:  # batched: each member's k rows as a batch, (k, ...); else its one row, x[n]
        split = [leaf.unflatten(0, (n, k)) if d == 0 and batched else leaf for leaf, d in zip(leaves, dims, strict=True)]
        why = module.__dict__.get("_flipes_member_loop")  # what vmap could not batch, once known: vmap is not tried again
        if why is None:
            try:  # own dropout masks
                if module.__dict__.get("_flipes_plain_leaves"):
                    return _vmap_with_plain_leaves(one_member, member_params, split, dims)
                return torch.func.vmap(one_member, in_dims=(0, dims), randomness="different")(member_params, split)
            except ValueError as e:
                if "must only return Tensors" not in str(e) or module.__dict__.get("_flipes_plain_leaves"):
                    raise
                module._flipes_plain_leaves = True  # known from here on: not tried plain first again
                return _vmap_with_plain_leaves(one_member, member_params, split, dims)
            except RuntimeError as e:
                why = _not_vmappable(e)
                if why is None or _experts_implementation(module) or _power_iteration(module):
                    raise  # not vmap's alone, or with a fix that keeps one call (named by the error below)
                module._flipes_member_loop = why
        out = _member_by_member(module, one_member, member_params, split, dims, n)
        if not module.__dict__.get("_flipes_member_loop_told", False):  # said once it worked: an error says its own
            module._flipes_member_loop_told = True
            warnings.warn(
                f"flipes: {user_class_name(module)}'s forward cannot run under torch.func.vmap ({why}), so "
                f"inside a population it runs member by member, one call a member: the same outputs, slower; "
                f"{_vmap_fix(why)}",
                stacklevel=2,
            )
        return out

    # a forward written for batches only runs each member's one row as a batch of one: a Hugging Face module's (batch
    # first by convention; unbatched, one given shared positions would return them as a batch of one more); another's
    # known after its first failure (reading input.shape[:2]), so later calls do not fail (and trace) first again
    batched_only = not batch and (_batch_first(module) or module.__dict__.get("_flipes_batched_only", False))
    try:
        if batched_only:
            out = run(True)
        else:
            try:
                out = run(batch)
            except (RuntimeError, ValueError) as e:
                if batch or isinstance(e, SharedBufferWrite) or _out_of_memory(e):
                    raise
                try:
                    out = run(True)
                except Exception:
                    raise e from None
                module._flipes_batched_only = batched_only = True
        if batched_only:
            # its batch dim of one taken away: (N, 1, ...) -> (N, ...); an output without one (learned positions
            # (T, E), whatever the batch) is already each member's, members first
            return pytree.tree_map(lambda t: t.squeeze(1) if isinstance(t, Tensor) and t.shape[1:2] == (1,) else t, out)
    except SharedBufferWrite:
        raise
    except RuntimeError as e:
        if _out_of_memory(e):  # the device's, neither the forward's nor vmap's
            raise
        if why := module.__dict__.get("_flipes_member_loop"):  # not vmap's: the forward's own error, also in a plain call
            raise RuntimeError(
                f"{user_class_name(module)}: its forward, run member by member (torch.func.vmap cannot batch {why}), "
                f"raised: {e}{unbatched()}"
            ) from e
        path = module.__dict__.get("_flipes_path")  # its name in the model flipout converted: the one to freeze
        raise RuntimeError(
            f"{user_class_name(module)}: its forward cannot run per member under torch.func.vmap ({e}); "
            f"{_power_iteration(module) or _shared_write(module, e) or _experts_implementation(module)}"
            f"freeze it, flipes.flipout(model, frozen=[{repr(path) if path else '...'}]), or write a Flipout layer for it"
        ) from e
    except ValueError as e:
        if batch:
            raise
        raise ValueError(f"{user_class_name(module)}: its forward, run per member, raised: {e}{unbatched()}") from e
    if not batch:
        return out

    broadcast = _batch_first(module) and k > 1

    def rows(t: Any) -> Any:
        # (N, k, ...) -> member-major (N·k, ...); an output without the k rows, reduced over each member's batch (a loss,
        # a pooled feature vector), stays members first: (N,), (N, E)
        if not isinstance(t, Tensor) or t.dim() < 2:
            return t
        if broadcast and t.shape[1] == 1:  # a batch of one beside the member's k rows (positions): broadcast over them
            t = t.expand(n, k, *t.shape[2:])
        return t.flatten(0, 1) if t.shape[1] == k else t

    return pytree.tree_map(rows, out)


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device running out of memory: ``torch.OutOfMemoryError`` (CUDA, ROCm, XPU), or the plain
    RuntimeError Apple's MPS backend raises ("MPS backend out of memory (MPS allocated: ...")."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and str(error).startswith("MPS backend out of memory")
    )


def _low_precision_input(module: nn.Module, args: tuple, kwargs: dict) -> torch.dtype | None:
    """The dtype of a BatchNorm's (or InstanceNorm's) one input where it is bfloat16 or float16 and the module's
    parameters and running statistics are float32, the mixed case torch's own kernel runs; else ``None``."""
    if not isinstance(module, _NormBase) or len(args) != 1 or kwargs or not isinstance(args[0], Tensor):
        return None
    held = [t for t in (module.weight, module.bias, module.running_mean, module.running_var) if t is not None]
    return args[0].dtype if _low(args[0]) and held and all(t.dtype == torch.float32 for t in held) else None


def _low(t: Any) -> bool:
    return isinstance(t, Tensor) and t.dtype in (torch.bfloat16, torch.float16)


def _autocast_low_inputs(module: nn.Module, args: tuple, kwargs: dict) -> bool:
    """Whether an input of ``module`` is bfloat16 or float16 inside an autocast region of its device while its
    parameters are float32 (its own forward would see the mix only after vmap's partial autocast)."""
    low = [t for t in pytree.tree_leaves((args, kwargs)) if _low(t)]
    if not low:
        return False
    from flipes.nn.functional import autocast_dtype  # here: functional imports this module; torch < 2.4 asks otherwise

    if autocast_dtype(low[0].device.type) is None:
        return False
    params = [p for p in module.parameters() if p.is_floating_point()]
    return bool(params) and all(p.dtype == torch.float32 for p in params)


# what vmap cannot batch though the forward runs member by member: (the start of torch's message, what it is)
_NOT_VMAPPABLE = (
    ("autograd.Function with functorch transforms", "an autograd.Function without a vmap rule"),
    ("calling .item()", "a member's value read as a number, .item()"),
    ("data-dependent control flow", "Python control flow on a member's values"),
    ("dynamic shape", "a shape that depends on a member's values (a boolean mask, nonzero)"),
    ("doesn't have storage", "a member's values read as data, .tolist() or .numpy()"),
)


def _vmap_with_plain_leaves(one_member: Callable[..., Any], params: dict[str, Tensor], flat: list[Any], dims: list) -> Any:
    """``vmap(one_member, in_dims=(0, dims))(params, flat)`` for a forward whose output also holds leaves that are no
    tensors, which vmap refuses (``None``: MultiheadAttention's weights with ``need_weights=False``): only the tensors are
    batched, the other leaves are put back as the forward returned them (the same for every member)."""
    held: dict[str, Any] = {}

    def tensors_only(p: dict[str, Tensor], f: list[Any]) -> tuple[Tensor, ...]:
        leaves, held["spec"] = pytree.tree_flatten(one_member(p, f))
        held["plain"] = [None if isinstance(leaf, Tensor) else (leaf,) for leaf in leaves]
        return tuple(leaf for leaf in leaves if isinstance(leaf, Tensor))

    batched = iter(torch.func.vmap(tensors_only, in_dims=(0, dims), randomness="different")(params, flat))
    leaves = [next(batched) if plain is None else plain[0] for plain in held["plain"]]
    return pytree.tree_unflatten(leaves, held["spec"])


def _not_vmappable(error: RuntimeError) -> str | None:
    """What in a forward vmap could not batch, where running it member by member works instead; else ``None``."""
    return next((what for text, what in _NOT_VMAPPABLE if text in str(error)), None)


def _vmap_fix(why: str) -> str:
    """How to let a forward run all members in one vmapped call again (said once, with the warning)."""
    if why.startswith("an autograd.Function"):
        return (
            "give the autograd.Function a setup_context staticmethod (forward without ctx) and generate_vmap_rule = "
            "True, or write a straight-through estimator as x + (q(x) - x).detach()"
        )
    return "write it with tensor ops (torch.where, masks multiplied in) to run every member in one call"


class SharedBufferWrite(RuntimeError):
    """A forward run member by member wrote into a buffer every member shares."""


def _member_by_member(
    module: nn.Module, one_member: Callable[..., Any], params: dict[str, Tensor], flat: list[Any], dims: list, n: int
) -> Any:
    """What ``vmap(one_member, in_dims=(0, dims))(params, flat)`` computes, one call per member, outputs stacked.

    Raises:
        RuntimeError: where the first member's call wrote into a buffer of ``module`` (every member's, which the next
            member would read as it was left): vmap refuses that too.
    """
    buffers = {name: (b, b._version) for name, b in module.named_buffers()}
    outs = []
    for i in range(n):
        member = {name: value[i] for name, value in params.items()}
        outs.append(one_member(member, [leaf[i] if d == 0 else leaf for leaf, d in zip(flat, dims, strict=True)]))
        if i == 0:
            now = dict(module.named_buffers())
            written = [name for name, (b, v) in buffers.items() if now.get(name) is not b or b._version != v]
            if written:
                raise SharedBufferWrite(
                    f"{user_class_name(module)}: its forward, run member by member, wrote into "
                    f"{', '.join(written)}, which every member shares, so each member would read the one before's "
                    "update: skip that update inside a population (call model.eval() where it updates only in training "
                    "mode), or keep such state in the forward's own variables"
                )
    first, spec = pytree.tree_flatten(outs[0])
    each = [pytree.tree_leaves(out) for out in outs]
    stacked = [torch.stack([e[j] for e in each]) if isinstance(leaf, Tensor) else leaf for j, leaf in enumerate(first)]
    return pytree.tree_unflatten(stacked, spec)


@contextmanager
def _plain_below(module: nn.Module) -> Iterator[None]:
    """Inside: the ``PerMember`` modules below ``module`` (its norm, also called from elsewhere) run as their plain
    class, on the member's parameters ``module``'s forward swapped in. Kept on the modules, not in a global flag,
    so that another model's population evaluated in another thread meanwhile stays per member."""
    if not module._modules:  # a leaf (most dense modules: a norm, a bare parameter): nothing below
        yield
        return
    below = [m for m in module.modules() if m is not module and isinstance(m, PerMember) and m.member_noise is not None]
    noise = [m.member_noise for m in below]
    for m in below:
        m.member_noise = None
    try:
        yield
    finally:
        for m, held in zip(below, noise, strict=True):
            m.member_noise = held


@contextmanager
def _parametrizations_uncached(module: nn.Module) -> Iterator[None]:
    """Inside ``torch.nn.utils.parametrize.cached()``: the parametrized tensors of ``module`` and the modules below it
    computed from the member's parameters, not read from the cache, which may hold the mean network's (computed before
    the population), and none of the member's left there after (for a read outside, or the next member run member by
    member). The cache is keyed by the module a parametrization was first registered on, not its copy that
    ``flipes.flipout(copy.deepcopy(plain))`` converts, so it is emptied meanwhile (others' entries are computed again)."""
    if not parametrize._cache_enabled or not any(parametrize.is_parametrized(m) for m in module.modules()):
        yield
        return
    cache = parametrize._cache
    held = dict(cache)
    cache.clear()
    try:
        yield
    finally:
        cache.clear()
        cache.update(held)


_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks")


@contextmanager
def _hooks_below_see_members(module: nn.Module, n: int) -> Iterator[None]:
    """Inside: the forward hooks and pre-hooks of the modules below ``module`` (an activation kept by a hook on its
    norm) run on every member's tensors at once, members first (``(N, k, ...)``), as a hook on a Flipout layer sees
    them, not on vmap's per-member tensors, which a hook that keeps them could not read after the call. What such a
    hook returns in place of an input or output is each member's again. Hooks registered for every module
    (``nn.modules.module.register_module_forward_hook``, as profilers do) are called so too."""
    dicts = [(getattr(m, d), d == _HOOK_DICTS[0]) for m in module.modules() if m is not module for d in _HOOK_DICTS]
    dicts += [(getattr(_torch_module, f"_global{d}"), d == _HOOK_DICTS[0]) for d in _HOOK_DICTS]
    dicts = [(hooks, pre) for hooks, pre in dicts if hooks]
    if not dicts:
        yield
        return
    # wrapped in place, not in new dicts: a handle's remove() deletes from the dict it was registered in, and another
    # thread's forward meanwhile (the global dicts are the process's) restores what it found, wrappers or not
    saved = [(hooks, dict(hooks)) for hooks, _ in dicts]
    for hooks, pre in dicts:
        for key, hook in list(hooks.items()):
            hooks[key] = _members_first(hook, n, pre=pre)
    try:
        yield
    finally:
        for hooks, original in saved:
            for key, hook in original.items():
                if key in hooks:  # not removed meanwhile
                    hooks[key] = hook


def _maybe_current_level_before_2_3() -> int | None:
    """``torch._C._functorch.maybe_current_level`` for torch < 2.3, which lacks it (its ``current_level`` asserts outside
    every functorch transform): the innermost transform's level, or None outside them."""
    from torch._C import _functorch

    return _functorch.current_level() if torch._C._are_functorch_transforms_active() else None


def _members_first(hook: Callable[..., Any], n: int, pre: bool) -> Callable[..., Any]:
    """``hook`` called, inside vmap, with every member's tensors, members first, its returned tensors split by member
    again (those in the places of member tensors, or of ``n`` rows); outside vmap (member by member) as it is."""
    from torch._C import _functorch

    current_level = getattr(_functorch, "maybe_current_level", _maybe_current_level_before_2_3)

    def members_first(module: nn.Module, *args: Any) -> Any:
        level = current_level()
        if level is None:
            return hook(module, *args)
        leaves, spec = pytree.tree_flatten(args)
        batched = [isinstance(t, Tensor) and _functorch.maybe_get_level(t) == level for t in leaves]

        def unwrap(t: Tensor) -> Tensor:
            value, dim = _functorch._unwrap_batched(t, level)
            return value.movedim(dim, 0)

        out = hook(module, *pytree.tree_unflatten([unwrap(t) if b else t for t, b in zip(leaves, batched, strict=True)], spec))
        if out is None:
            return None
        back, back_spec = pytree.tree_flatten(out)
        # in the place of what it got: a pre-hook returns the args (a lone value for a 1-tuple; (args, kwargs) where it
        # takes kwargs), a forward hook the output (its last argument)
        given = (args[0] if len(args) == 1 else args) if pre else args[-1]
        wrapped = (out,) if pre and len(args) == 1 and not isinstance(out, tuple) else out
        given_leaves, given_spec = pytree.tree_flatten(given)
        if given_spec == pytree.tree_flatten(wrapped)[1]:
            flags = [isinstance(t, Tensor) and _functorch.maybe_get_level(t) == level for t in given_leaves]
        else:
            flags = [isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] == n and any(batched) for t in back]
        pairs = zip(back, flags, strict=True)
        rewrapped = [_functorch._add_batch_dim(t, 0, level) if f and isinstance(t, Tensor) else t for t, f in pairs]
        return pytree.tree_unflatten(rewrapped, back_spec)

    return members_first


def _shared_write(module: nn.Module, error: Exception) -> str:
    """The hint for a forward that writes in place into a tensor all members share (a buffer it updates, such as an
    exponential moving average): one tensor cannot take every member's update; empty for any other error."""
    if "doesn't match the broadcast shape" not in str(error) or next(module.buffers(), None) is None:
        return ""
    return (
        "its forward writes in place into a tensor every member shares (a buffer it updates, such as a moving "
        "average), which cannot take each member's update: skip that update inside a population (call model.eval() "
        "where it updates only in training mode), or "
    )


def no_input_fix(names: list[str], error: RuntimeError) -> str | None:
    """What to do when dense modules ``names``, called with no tensor input, gave every member's value, ``(N, ...)``,
    and the model then failed on shapes (combining it with rows of another batch); ``None`` for any other error."""
    if type(error) is not RuntimeError or not re.search(r"match|broadcast|shape|size", str(error)):
        return None
    return (
        f"flipes: {', '.join(repr(n) for n in names)} ran with no tensor input, so each returned every member's value, "
        "members first (members, ...); a model that combines it with rows of its batch (a relative-position bias "
        "added to attention scores, as Swin's and BEiT's) cannot use it per member: freeze it, "
        f"flipes.flipout(model, frozen={names!r})"
    )


def _experts_implementation(module: nn.Module) -> str:
    """The hint for a Hugging Face mixture-of-experts module whose experts implementation failed per member ("eager"
    loops over the experts its tokens hit, a shape vmap cannot batch; "grouped_mm" has kernels for some dtypes only):
    "batched_mm" gathers each token's experts' weights, which runs per member; empty for any other module."""
    implementation = getattr(getattr(module, "config", None), "_experts_implementation", None)
    if not isinstance(implementation, str) or implementation == "batched_mm":
        return ""
    return (
        f"its experts implementation {implementation!r} cannot run per member, 'batched_mm' can: call "
        'model.set_experts_implementation("batched_mm") before the population, or '
    )


def _power_iteration(module: nn.Module) -> str:
    """The hint for a module whose ``parametrizations.spectral_norm`` runs its power iteration (training mode), an
    in-place update that vmap cannot batch; empty for any other."""
    parametrizations = getattr(module, "parametrizations", None)
    if not module.training or parametrizations is None:
        return ""
    if not any(type(p).__name__ == "_SpectralNorm" for plist in parametrizations.values() for p in plist):
        return ""
    return (
        "its spectral_norm updates its power-iteration vectors in training mode: call model.eval() (they then stay), "
        "and after each tell advance them on the mean weight, layer.train(); layer.weight; layer.eval() (else the "
        "weight's spectral norm drifts from 1 as it trains), or "
    )


def needs_batch_dim(module: nn.Module, shape: torch.Size) -> bool:
    """Whether one member's input of ``shape`` (a population input without its member dim) is ONE
    example that ``module`` must see with a batch dim of 1: torch's BatchNorm, GroupNorm and PReLU read
    channels at dim 1 and have no unbatched form. ``(C, ...)`` with ``C`` their channels is one example;
    ``(B, C, ...)``, B examples. An EmbeddingBag's 1-D ids ``(L,)`` are one bag (1-D ids need offsets there).

    Raises:
        ValueError: where both read (``(C, C, ...)``), naming the two layouts that say which.
    """
    if isinstance(module, nn.EmbeddingBag):
        return len(shape) == 1
    if isinstance(module, nn.GroupNorm):
        channels = module.num_channels
    elif isinstance(module, nn.PReLU) and module.num_parameters > 1:
        channels = module.num_parameters
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        channels = module.num_features
        if not _accepts(module, len(shape)):
            return _accepts(module, len(shape) + 1)
        if not _accepts(module, len(shape) + 1):
            return False
    else:
        return False
    if len(shape) < 2 or shape[1] != channels:
        return len(shape) > 0 and shape[0] == channels
    if shape[0] == channels:
        one, each = ", ".join(map(str, shape)), ", ".join(map(str, shape[1:]))
        raise ValueError(
            f"{user_class_name(module)}({channels}): a member's input of shape {tuple(shape)} reads as one example or as "
            f"{channels} examples; inside a population pass one example per member as (members, 1, {one}), "
            f"or B examples per member as (members·B, {each})"
        )
    return False


def _accepts(norm: nn.Module, dims: int) -> bool:
    """Whether a BatchNorm takes inputs of ``dims`` dimensions."""
    try:
        norm._check_input_dim(torch.empty((1,) * dims, device="meta"))  # type: ignore[operator]
    except ValueError:
        return False
    return True


def _batch_first(module: nn.Module) -> bool:
    """Whether ``module``'s class (the one converted, not a subclass of it in another package) is defined in
    transformers: written for batches, ``(B, ...)``, whatever its input."""
    return type(module).__bases__[-1].__module__.startswith("transformers.")


def _positions_shared(module: nn.Module, leaves: list[Any], dims: list[int | None]) -> list[int | None]:
    """``dims`` with tensors shaped as the members' rows without their first dim shared by every member, as a plain
    model broadcasts them over its batch: 1-D positions along the rows, ``(T,)`` beside ``(N·k, T, ...)``, or a table
    ``(T, E)`` beside ``(N·k, T, E)``. One whose first dim is also the rows' count could be one per row as well, and is
    refused naming both readings (silently wrong either way otherwise)."""
    rows = [leaf for leaf, d in zip(leaves, dims, strict=True) if d == 0 and leaf.dim() > 1]
    out = list(dims)
    for i, (leaf, d) in enumerate(zip(leaves, dims, strict=True)):
        wider = [r for r in rows if r.dim() > leaf.dim()] if d == 0 else []  # d == 0: a tensor
        if not any(r.shape[1 : 1 + leaf.dim()] == leaf.shape for r in wider):
            continue
        if any(leaf.shape[0] == r.shape[0] for r in wider):
            shapes = ", ".join(str(tuple(r.shape)) for r in rows)
            what = f"a 1-D tensor of length {leaf.shape[0]}" if leaf.dim() == 1 else f"a tensor of shape {tuple(leaf.shape)}"
            raise ValueError(
                f"{user_class_name(module)}: inside a population of {module.flipes_members} members it got {what} beside "
                f"rows of shapes {shapes}: it reads as positions (or a table) along the rows, shared by every member, or "
                "as one value per row; use a sequence length other than the number of rows, or freeze the module: "
                f"flipes.flipout(model, frozen=[{_name_in_model(module) or 'its name'!r}])"
            )
        out[i] = None
    return out


def _name_in_model(module: nn.Module) -> str | None:
    """``module``'s name in the model of the FlipES evaluating it (for an error's ``frozen=`` hint), else ``None``."""
    owner = module.__dict__.get("_flipes_owner")
    es = owner() if owner is not None else None
    return None if es is None else next((name for name, m in es._module.named_modules() if m is module), None)


def _is_member(x: Any, n: int) -> bool:
    return isinstance(x, Tensor) and x.dim() > 0 and x.shape[0] > 0 and x.shape[0] % n == 0


@contextmanager
def _parameters(module: nn.Module, values: dict[str, Tensor]) -> Iterator[None]:
    """Temporarily replace named parameters by (batched) tensors, the way ``functional_call`` does,
    without calling the module again (its forward is the one running)."""
    saved = []
    try:
        for name, value in values.items():
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            saved.append((owner, leaf, owner._parameters[leaf]))
            owner._parameters[leaf] = value  # type: ignore[assignment]
        yield
    finally:
        for owner, leaf, param in reversed(saved):
            owner._parameters[leaf] = param


@contextmanager
def _batch_stats_only(module: nn.Module) -> Iterator[None]:
    """BatchNorm in training mode normalizes each member's examples by their own statistics and
    leaves the running statistics alone: one member's batch must not move the mean network's (nor
    may an InstanceNorm's running statistics)."""
    norms = [m for m in module.modules() if needs_member_batches(m) and m.training and m.track_running_stats]
    saved = [(m, m.running_mean, m.running_var) for m in norms]
    for m in norms:
        m.track_running_stats = False  # BatchNorm: batch statistics, no update
        if isinstance(m, nn.modules.instancenorm._InstanceNorm):  # it updates whatever running buffers it has
            m.running_mean = m.running_var = None
    try:
        yield
    finally:
        for m, mean, var in saved:
            m.track_running_stats = True
            m.running_mean, m.running_var = mean, var
