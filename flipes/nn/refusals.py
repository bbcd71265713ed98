"""What ``flipout`` refuses, each with a one-line fix: no ``nn.Module``, a model it cannot see into (lazy, TorchScript),
hook-based weight reparametrizations and pruning, shared-id position tables, recurrent kernels inside a per-member
forward, sequence-first transformer blocks, and parameters nothing would perturb."""

from __future__ import annotations

from collections.abc import Mapping
from types import GeneratorType, MappingProxyType
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import prune

from flipes.nn.dense import PerMember

if TYPE_CHECKING:
    from flipes.nn.report import ParameterRow


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _parts_of_a_module(obj: object) -> str:
    """What ``obj`` is where it is a model's parameters or state rather than the model (``model.parameters()``, a list
    of its tensors, ``model.state_dict()``), in words; else ""."""
    if isinstance(obj, GeneratorType) and obj.__name__ in ("parameters", "named_parameters", "buffers"):
        return f"model.{obj.__name__}() (a generator of its tensors)"
    if isinstance(obj, list | tuple) and obj and all(isinstance(t, torch.Tensor) for t in obj):
        return f"a {type(obj).__name__} of {len(obj)} tensors"
    if isinstance(obj, Mapping) and obj and all(isinstance(t, torch.Tensor) for t in obj.values()):
        return f"a dict of {len(obj)} tensors (a state dict)"
    return ""


def check_module(obj: object, where: str) -> None:
    """Raise a TypeError naming what ``where`` takes when ``obj`` is no ``nn.Module`` (a function, a tensor)."""
    if isinstance(obj, nn.Module):
        return
    parts = _parts_of_a_module(obj)
    if parts:  # torch.optim's habit, Optimizer(model.parameters())
        raise TypeError(
            f"{where} takes the model itself, a torch.nn.Module, got {parts}; pass the model, whose parameters "
            "flipes finds: model = flipes.flipout(model), then flipes.FlipES(model, ...)"
        )
    got = f"a {type(obj).__name__}" if not isinstance(obj, torch.Tensor) else f"a Tensor of shape {tuple(obj.shape)}"
    raise TypeError(
        f"{where} takes a torch.nn.Module, got {got}; to search over a plain tensor, evolve "
        "flipes.flipout(flipes.nn.Vector(init)) and compute f(x()) in your fitness (README: Black-box search over a vector)"
    )


UNINITIALIZED = (
    "is not initialized yet (an UninitializedParameter or buffer: no shape until the module's first call); run the model "
    "once on an example input before flipes.flipout(model)"
)


def _uninitialized(m: nn.Module) -> str:
    """The name of a lazy (shapeless) parameter or buffer ``m`` holds itself, else ""."""
    lazy = [n for n, t in [*m._parameters.items(), *m._buffers.items()] if isinstance(t, nn.parameter.UninitializedTensorMixin)]
    return repr(lazy[0]) if lazy else ""


def _check_inspectable(model: nn.Module) -> None:
    """Refuse what flipout cannot see into: a lazy module not initialized yet (its parameters have no shape, and its
    first call turns it into its plain class, past any conversion) and a trainable TorchScript module (its compiled
    forward, which flipes cannot convert, would run the mean parameters for every member)."""
    for name, m in model.named_modules():
        where = f"{name!r} ({type(m).__name__})" if name else f"the model ({type(m).__name__})"
        if isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params():
            raise ValueError(
                f"flipout(): {where} is not initialized yet: its parameters get their shapes at its first call, which "
                "also turns it into its plain class; run the model once on an example input before flipes.flipout(model)"
            )
        lazy = _uninitialized(m)
        if lazy:  # a module of one's own holding torch.nn.UninitializedParameter
            raise ValueError(f"flipout(): {where}'s {lazy} {UNINITIALIZED}")
        if isinstance(m, torch.jit.ScriptModule) and _trainable(m):
            freeze = f", or freeze it: flipes.flipout(model, frozen=[{name!r}])" if name else ""
            raise ValueError(
                f"flipout(): {where} is a TorchScript module (torch.jit.script / torch.jit.trace): flipes cannot convert "
                "its compiled forward, which would run the mean parameters for every member; give flipes.flipout the "
                f"Python module it was made from (torch.compile works on the converted model){freeze}"
            )


# torch.nn.utils' old hook-based reparametrizations: a forward pre-hook sets the weight from other parameters
_WEIGHT_HOOKS = MappingProxyType({"WeightNorm": "weight_norm", "SpectralNorm": "spectral_norm"})


def _check_weight_hooks(model: nn.Module) -> None:
    """Refuse trainable modules with ``torch.nn.utils.weight_norm`` / ``spectral_norm`` / ``prune`` applied: their hook
    computes the weight from the mean parameters before the forward, so every member would run the mean weight (a Flipout
    layer would perturb a stale copy of it) while ``tell`` writes an ES gradient for parameters no member used."""
    for name, m in model.named_modules():
        for hook in m._forward_pre_hooks.values():
            where = repr(name) if name else "the model"
            freeze = f"flipes.flipout(model, frozen=[{name!r}])" if name else "model.requires_grad_(False)"
            if isinstance(hook, prune.BasePruningMethod) and _trainable(m):
                raise ValueError(
                    f"flipout(): {where} ({type(m).__name__}) has torch.nn.utils.prune applied: its hook computes "
                    f"{hook._tensor_name!r} from the mean {hook._tensor_name + '_orig'!r} and the mask before each call, so "
                    f"no member would run its own; make the pruning permanent first, torch.nn.utils.prune.remove(module, "
                    f"{hook._tensor_name!r}) (the pruned entries are then evolved too), or freeze it: {freeze}"
                )
            fn = _WEIGHT_HOOKS.get(type(hook).__name__)
            if fn is None or not type(hook).__module__.startswith("torch.nn.utils") or not _trainable(m):
                continue
            raise ValueError(
                f"flipout(): {where} ({type(m).__name__}) has torch.nn.utils.{fn} applied: its hook "
                f"computes {hook.name!r} from the mean parameters before each call, so no member would run its own; "
                f"apply torch.nn.utils.parametrizations.{fn} instead (flipes perturbs its parameters per member), or "
                f"freeze it: {freeze}"
            )


# embeddings Hugging Face's T5 family (T5, mT5, UMT5, LongT5, Switch, Pix2Struct, UDOP, Pop2Piano) and MPNet look up
# with (T, T) relative-position buckets that every member shares, then permute as (T, T, heads)
_SHARED_ID_TABLES = ("relative_attention_bias", "global_relative_attention_bias")


def _check_shared_id_tables(model: nn.Module) -> None:
    """Refuse trainable relative-position bias tables looked up with ids every member shares, ``(T, T)`` buckets: a
    population reads their first dim as members (an error where T is no multiple of N, silently wrong where it is),
    and each member's own lookup would not fit the ``(T, T, heads)`` the model permutes."""
    names = [
        f"{name}.{attr}" if name else attr
        for name, m in model.named_modules()
        for attr in _SHARED_ID_TABLES
        if not isinstance(m, torch.jit.ScriptModule)  # frozen (a trainable one is refused): its dicts have no .get
        and isinstance(m._modules.get(attr), nn.Embedding)
        and m._modules[attr].weight.requires_grad
    ]
    if names:
        shown = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
        raise ValueError(
            f"flipout(): {len(names)} relative-position bias table(s) ({shown}) are looked up with (T, T) position "
            "buckets every member shares, which a population would read as members (silently wrong where T is a "
            f"multiple of the members); freeze them: flipes.flipout(model, frozen={names!r})"
        )


# recurrent layers whose torch kernels have no torch.func.vmap form (torch 2.13: aten::lstm/gru/rnn_tanh/rnn_relu.input and
# aten::lstm_cell have no batching rule; GRUCell and RNNCell decompose into ops that have one)
_NO_PER_MEMBER_KERNEL = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell)


def _check_dense_recurrence(model: nn.Module) -> None:
    """Refuse a recurrent layer that would run inside a per-member (dense) forward, which evaluates every member through
    ``torch.func.vmap``: torch's fused kernels have no vmap form, so the first population would fail. It is there as a
    subclass with a forward of its own or a parametrized layer (no Flipout form), or frozen inside a module that holds
    parameters of its own."""
    for name, dense in model.named_modules():
        if not isinstance(dense, PerMember):
            continue
        for sub, m in dense.named_modules(prefix=name):
            kind = next((k.__name__ for k in _NO_PER_MEMBER_KERNEL if isinstance(m, k)), None)
            if kind is None:
                continue
            plain = type(m).__bases__[-1] if isinstance(m, PerMember) else type(m)  # the user's class
            where = f"{sub!r} ({plain.__name__})" if sub else f"the model ({plain.__name__})"
            vmap = f"every member's forward through torch.func.vmap, and torch's {kind} kernel has no vmap form"
            if isinstance(m, PerMember):  # itself without a Flipout form
                freeze = f"; or freeze it: flipes.flipout(model, frozen=[{sub!r}])" if sub else ""
                raise ValueError(
                    f"flipout(): {where} has no Flipout form (a subclass with a forward of its own, or a parametrized "
                    f"layer), so it would get dense noise, {vmap}. Call a plain nn.{kind} from a module of your own "
                    f"instead (flipout makes it a Flipout layer), or write its step with nn.Linear layers{freeze}"
                )
            holder = repr(name) if name else "the model"
            freeze = f"; or freeze those: flipes.flipout(model, frozen=[{name!r}])" if name else ""
            raise ValueError(
                f"flipout(): {where} would run inside the per-member forward of {holder}, which holds parameters of its "
                f"own: that runs {vmap}. Move the parameters of {holder} itself into a submodule of their own (such as "
                f"flipes.nn.Vector), so that {holder} runs as plain torch around its {kind}{freeze}"
            )


def check_members_first(module: nn.Module) -> None:
    """Refuse torch's sequence-first transformer blocks with evolved parameters: their feed-forward layers and
    norms get ``(T, N, E)``, which a population reads as T members (and, where T == N, would perturb them by
    time step silently). A frozen one runs as plain torch."""
    for name, m in module.named_modules():
        sequence_first = isinstance(m, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer) and not m.self_attn.batch_first
        if sequence_first and any(p.requires_grad for p in m.parameters()):  # a frozen block sees a shared context
            raise ValueError(
                f"FlipES: {type(m).__name__} {name or '(the model)'!r} is sequence-first (batch_first=False): inside "
                "a population its Linear layers and norms take the members in dim 0, so a (T, N, E) input would be "
                "read as T members; build it with batch_first=True and pass (N, T, E)"
            )


def unhandled_message(rows: list[ParameterRow]) -> str:
    shown = ", ".join(f"{r.name} (held by {r.module})" for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
    return (
        f"{len(rows)} trainable parameter(s) would not be evolved: {shown}. They are held directly by a module that also "
        "holds Flipout layers, so flipes has no per-member forward for them. Move each into a small submodule of its own "
        "(flipes.flipout then perturbs it per member), e.g. self.log_std = flipes.nn.Vector(init) used as "
        "self.log_std(): (members, ...) inside a population, or as self.log_std(like) against a tensor it broadcasts to "
        "(logits / self.temperature(logits), y * self.gain(y)): each member's value over its rows; or freeze it: "
        "flipes.flipout(model, frozen=[name, ...]) or param.requires_grad_(False)"
    )
