"""The hooks :func:`flipes.train` calls on a callback, checked before training: signatures it cannot call and other
libraries' hooks it would never call; and the list of callbacks given."""

from __future__ import annotations

import copy
from collections.abc import Iterable

from flipes.callbacks import Callback
from flipes.config import TrainConfig
from flipes.errors import UsageError, call_mismatch

# how flipes.train calls a callback's methods: the arguments after self, as a Callback defines them
HOOKS = {
    "on_train_start": ("state",),
    "on_generation": ("state", "row"),
    "on_train_end": ("state", "reason"),
    "state_dict": (),
    "load_state_dict": ("state",),
}


# hooks of other libraries (Keras, Lightning) and near misses of flipes' own, which flipes would never call: the hook
# that runs at that point (flipes has none before a generation: what a generation's start would do, the end of the
# one before does; and a callback's checkpointed state is its state_dict)
OTHER_HOOKS = {
    "on_train_begin": "on_train_start",
    "on_fit_start": "on_train_start",
    "on_start": "on_train_start",
    "on_fit_end": "on_train_end",
    "on_end": "on_train_end",
    "on_exception": "on_train_end",
    "on_epoch_begin": "on_generation",
    "on_epoch_start": "on_generation",
    "on_epoch_end": "on_generation",
    "on_train_epoch_start": "on_generation",
    "on_train_epoch_end": "on_generation",
    "on_batch_begin": "on_generation",
    "on_batch_start": "on_generation",
    "on_batch_end": "on_generation",
    "on_train_batch_begin": "on_generation",
    "on_train_batch_start": "on_generation",
    "on_train_batch_end": "on_generation",
    "on_validation_start": "on_generation",
    "on_validation_end": "on_generation",
    "on_validation_epoch_start": "on_generation",
    "on_validation_epoch_end": "on_generation",
    "on_generation_begin": "on_generation",
    "on_generation_start": "on_generation",
    "on_generation_end": "on_generation",
    "on_generations": "on_generation",
    "on_step": "on_generation",
    "on_step_end": "on_generation",
    "on_iteration": "on_generation",
    "on_iteration_end": "on_generation",
    "on_save_checkpoint": "state_dict",
    "on_load_checkpoint": "load_state_dict",
}


def check_hooks(cb: Callback) -> None:
    """Raise a UsageError where a callback overrides a hook with a signature flipes cannot call (Keras' and
    Lightning's habits: ``on_generation(self, row)``), or defines another library's hook that flipes never calls
    (Keras' ``on_epoch_end``, ``on_train_begin``), before training rather than at the first generation."""
    for klass in type(cb).__mro__:
        if klass is Callback:
            break
        for name in vars(klass):
            if name in OTHER_HOOKS:
                hook = OTHER_HOOKS[name]
                raise UsageError(
                    "callbacks",
                    f"{type(cb).__name__}.{name} is no hook of flipes.train, which would never call it",
                    f"define it as def {hook}({', '.join(('self', *HOOKS[hook]))}) (flipes' hooks: "
                    "on_train_start(state), on_generation(state, row) after each generation, on_train_end(state, reason))",
                )
    for hook, args in HOOKS.items():
        method = getattr(cb, hook)
        if getattr(type(cb), hook, None) is getattr(Callback, hook):
            continue
        if (why := call_mismatch(method, args)) is not None:
            raise UsageError(
                "callbacks",
                f"{type(cb).__name__}.{hook} takes other arguments ({why}); flipes calls {hook}({', '.join(args)})",
                f"define it as def {hook}({', '.join(('self', *args))})",
            )


def checked_callbacks(callbacks: Iterable[Callback]) -> list[Callback]:
    """``flipes.train``'s ``callbacks=`` as a list, each an instance of a Callback whose hooks flipes can call; a
    UsageError names the mistake (one callback given bare, a class, another object) before training."""
    if isinstance(callbacks, Callback | type) or not isinstance(callbacks, Iterable):  # one given bare: list() would say little
        name = callbacks.__name__ if isinstance(callbacks, type) else type(callbacks).__name__
        what, fix = (
            ("the class", f"callbacks=[{name}()]")
            if isinstance(callbacks, type)
            else ("a" + "n" * (name[0] in "AEIOUaeiou"), "callbacks=[callback]")
        )
        raise UsageError("callbacks", f"is {what} {name}, not a list of callbacks", f"pass a list, {fix}")
    callbacks = list(callbacks)
    for cb in callbacks:  # here, not at the first generation's hook
        if isinstance(cb, type) or not isinstance(cb, Callback):
            name = cb.__name__ if isinstance(cb, type) else type(cb).__name__
            fix = f"pass an instance, callbacks=[{name}()]" if isinstance(cb, type) else "subclass flipes.callbacks.Callback"
            raise UsageError("callbacks", f"{name} is {'a class' if isinstance(cb, type) else 'not a Callback'}", fix)
        check_hooks(cb)
    return callbacks


class ConfigGuard:
    """Refuse a callback's change to ``state.config`` (in place, or the whole config replaced) as soon as its hook
    returns. The config holds the run's recorded options: callbacks run on rank 0 alone, while every rank's loop reads
    its own copy (``generations``: rank 0 would leave the loop and the others wait for it until ``--mpi-timeout``;
    ``check_every``: rank 0 alone would enter the ranks' check), and a resume compares the checkpoint's copy with
    ``config.json``. The same refusal in one process, so that a script does not part from its run under ``mpiexec``."""

    def __init__(self, config: TrainConfig) -> None:
        self.kept = copy.deepcopy(vars(config))  # identical float objects (a nan) compare equal, as the dict compares them

    def check(self, now: TrainConfig, cb: Callback, hook: str) -> None:
        """Raise a UsageError naming ``cb.hook`` and the options it changed, where ``now`` (``state.config`` after
        the hook) is no longer the config the run started the loop with."""
        if isinstance(now, TrainConfig) and _same(vars(now), self.kept):  # the usual case: a dict comparison, ~80 fields
            return
        if isinstance(now, TrainConfig):
            values = vars(now)
            keys = [*self.kept, *(k for k in values if k not in self.kept)]  # an attribute set that is no option too
            changed = [k for k in keys if not _same(values.get(k), self.kept.get(k))]
            shown = ", ".join(f"{k} ({self.kept.get(k)!r} -> {values.get(k)!r})" for k in changed[:3])
            what = f"changed state.config.{shown}{', ...' if len(changed) > 3 else ''}"
        else:
            what = f"replaced state.config with a {type(now).__name__}"
        raise UsageError(
            "callbacks",
            f"{type(cb).__name__}.{hook} {what}: the config holds the run's recorded options, which every process reads "
            "as they were (callbacks run on rank 0 alone) and a resume checks",
            "read state.config only: return True from on_generation to stop early, and resume the run with other options "
            "(flipes.train(..., resume=DIR, generations=...)) to change them",
        )


def _same(a: object, b: object) -> bool:
    """``a == b`` as a dict compares values, where a value whose ``==`` has no truth value (a NumPy array or tensor a
    callback set, elementwise) or raises counts as changed instead of raising."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # ValueError (NumPy), RuntimeError (torch): "ambiguous truth value"
        return False
