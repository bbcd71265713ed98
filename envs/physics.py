"""Physical constants as env options: one number for every env, or drawn per env at every reset (domain randomization).

An env declares each constant once, with its range::

    class CartPoleVectorEnv(RandomizedPhysics):
        length = Constant(0.5, positive=True)
        length_range = Range(length)

which gives ``env.length`` (a number, or ``(N,)`` in the env's dtype, one per env) and ``env.length_range``
(``(low, high)`` or ``None``), both checked when set. With a range, every ``reset()`` draws each reset env's value
uniformly in it: env ``i`` of ``reset(seed=s)`` from ``s + i`` alone (a SplitMix64 output after its initial state's,
see :mod:`envs.seeding`), so a member's physics do not depend on N, the device or how a population is split;
without a seed, from the env's generator. A ``reset_mask`` redraws the masked envs' alone; autoresets keep the
episode's (they never reach ``reset()``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor

from envs import seeding
from envs.base import TorchVectorEnv, real_option

Derived = TypeVar("Derived", bound=tuple)  # a NamedTuple of derived quantities


def _bounds_in(low: float, high: float, dtype: torch.dtype) -> tuple[float, float]:
    """The least and the greatest number of ``dtype`` (float32 or float64, an env's) in ``[low, high]``: clamped to them,
    a draw rounded to ``dtype`` stays in its range; where ``dtype`` has no number in it, ``low`` and ``high`` rounded to
    nearest."""
    if dtype == torch.float64:  # the bounds are Python floats already
        return low, high
    nearest = np.float32(low), np.float32(high)  # compared below as Python floats: numpy would compare in float32
    lo = np.nextafter(nearest[0], np.float32(math.inf)) if float(nearest[0]) < low else nearest[0]
    hi = np.nextafter(nearest[1], np.float32(-math.inf)) if float(nearest[1]) > high else nearest[1]
    return (float(lo), float(hi)) if lo <= hi else (float(nearest[0]), float(nearest[1]))


class Constant:
    """A physical constant of a :class:`RandomizedPhysics` env, as a class attribute: ``default`` until set, a finite
    number (``positive``: > 0, as a mass or a length) for every env, or one per env."""

    def __init__(self, default: float, positive: bool = False) -> None:
        self.default = default
        self.positive = positive
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @property
    def requirement(self) -> str:
        return "a finite number > 0" if self.positive else "a finite number"

    def number(self, what: str, value: Any) -> float:
        """``value`` as a float, or a ValueError naming ``what`` (the constant or a bound of its range) and what it takes."""
        number = real_option(what, value)
        if not math.isfinite(number) or (self.positive and number <= 0):
            raise ValueError(f"{what} must be {self.requirement}, got {value!r}")
        return number

    def __get__(self, env: RandomizedPhysics | None, owner: type | None = None) -> Any:
        return self if env is None else env._physics[self.name]

    def __set__(self, env: RandomizedPhysics, value: float | Sequence[float] | Tensor | np.ndarray) -> None:
        if isinstance(value, Tensor | np.ndarray | list | tuple):
            per_env = torch.as_tensor(value, dtype=env.dtype, device=env.device)
            if per_env.shape != (env.num_envs,):
                raise ValueError(
                    f"{self.name} must be one number or {env.num_envs} numbers (one per env), got shape {tuple(per_env.shape)}"
                )
            bad = ~torch.isfinite(per_env) | (per_env <= 0 if self.positive else False)
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                raise ValueError(f"{self.name} must be {self.requirement} for every env, got {per_env[i].item()} for env {i}")
            env._physics[self.name] = per_env.clone()
        else:
            env._physics[self.name] = self.number(self.name, value)
        env._physics_changed()


class Range:
    """The ``<name>_range`` option of a :class:`Constant`: ``(low, high)``, drawn from at every reset, or ``None``."""

    def __init__(self, constant: Constant) -> None:
        self.constant = constant

    def __get__(self, env: RandomizedPhysics | None, owner: type | None = None) -> Any:
        return self if env is None else env._ranges[self.constant.name]

    def __set__(self, env: RandomizedPhysics, value: Sequence[float] | np.ndarray | Tensor | None) -> None:
        name = self.constant.name
        if isinstance(value, np.ndarray | Tensor) and value.shape == (2,):  # a curriculum's bounds computed in numpy
            value = value.tolist()
        if value is not None:
            if not isinstance(value, list | tuple) or len(value) != 2:
                raise ValueError(f"{name}_range must be [low, high], two numbers (or None for one {name}), got {value!r}")
            number = self.constant.number
            value = (number(f"{name}_range's low", value[0]), number(f"{name}_range's high", value[1]))
            if not value[0] <= value[1]:
                raise ValueError(f"{name}_range must be [low, high] with low <= high, got {list(value)}")
        env._ranges[name] = value


class RandomizedPhysics(TorchVectorEnv):
    """A :class:`~envs.base.TorchVectorEnv` whose :class:`Constant` class attributes are options, fixed or drawn per env
    at every reset from their :class:`Range` s. ``constants`` lists them in declaration order: constant ``k``'s
    draw for env ``i`` of ``reset(seed=s)`` is SplitMix64 output ``state_dim + k + 1`` of ``s + i``, whichever others
    are randomized."""

    constants: ClassVar[tuple[Constant, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = {v.name: v for v in vars(cls).values() if isinstance(v, Constant)}
        for name, constant in own.items():  # else the env would fail only at its first reset, with a KeyError
            declared = vars(cls).get(f"{name}_range")
            if not isinstance(declared, Range) or declared.constant is not constant:
                raise TypeError(
                    f"{cls.__name__}.{name} is a Constant without its range: "
                    f"declare {name}_range = Range({name}) in the same class"
                )
        # a redeclared constant keeps its inherited place, and so its SplitMix64 output
        inherited = tuple(own.pop(c.name, c) for c in cls.constants)
        cls.constants = inherited + tuple(own.values())

    def _init_physics(self, options: Mapping[str, Any]) -> None:
        """Set each constant to its option's value (``None``: the default) and its range to ``<name>_range``'s, both
        given by option name (the constructor's keywords); a constant given both is an error: a range draws the value
        at every reset, which would replace the given one unnoticed."""
        self._physics: dict[str, float | Tensor] = {c.name: c.default for c in self.constants}
        self._ranges: dict[str, tuple[float, float] | None] = {}
        for c in self.constants:
            value, bounds = options.get(c.name), options.get(f"{c.name}_range")
            if value is not None and bounds is not None:
                raise ValueError(
                    f"{c.name} and {c.name}_range were both given: {c.name}_range draws each env's {c.name} at every "
                    f"reset; give {c.name} for one value or {c.name}_range to randomize it, not both"
                )
            setattr(self, f"{c.name}_range", bounds)
            if value is not None:
                setattr(self, c.name, value)
        self._physics_changed()

    def _physics_changed(self) -> None:
        """Called after a constant changes (set, or drawn at a reset): an env that derives quantities from them updates
        them here."""

    def _derive(self, derive: Callable[..., Derived], default: Derived) -> Derived:
        """``default`` (numbers, for the default arithmetic) while every constant is its default; else ``derive`` of the
        constants in declaration order as ``(N,)`` float64 tensors, each result rounded once to the env's dtype. Derived
        in float64 as gymnasium derives them, so that env ``n`` steps bit for bit as an env made with its values,
        whichever the other envs' are."""
        values = [self._physics[c.name] for c in self.constants]
        if not any(isinstance(v, Tensor) for v in values) and values == [c.default for c in self.constants]:
            return default
        per_env = [torch.as_tensor(v, dtype=torch.float64, device=self.device).expand(self.num_envs) for v in values]
        return type(default)(*(d.to(self.dtype).contiguous() for d in derive(*per_env)))

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        """:meth:`TorchVectorEnv.reset <envs.base.TorchVectorEnv.reset>`, then each randomized constant of each reset
        env drawn afresh from its range."""
        obs, info = super().reset(seed=seed, options=options)
        drawn = [(k, c) for k, c in enumerate(self.constants) if self._ranges[c.name] is not None]
        if drawn:
            self._draw(drawn, self._seeds(seed), (options or {}).get("reset_mask"))
        return obs, info

    def _draw(self, drawn: list[tuple[int, Constant]], seeds: Tensor | None, mask: Tensor | np.ndarray | None) -> None:
        if seeds is not None:  # the outputs after the state's: the initial states stay those without ranges
            u = seeding.uniform(seeds.to(self.device), self.state_dim + len(self.constants))[:, self.state_dim :]
        redrawn = None if mask is None else self._check_mask(mask)
        for k, c in drawn:
            if seeds is None:
                uk = torch.rand(self.num_envs, generator=self._generator, device=self.device, dtype=torch.float64)
            else:
                uk = u[:, k]
            low, high = self._ranges[c.name]
            # rounded to float32, a draw near a bound that float32 lacks (0.3) would land past it (0.30000001)
            value = (low + (high - low) * uk).to(self.dtype).clamp_(*_bounds_in(low, high, self.dtype))
            if redrawn is not None:  # the other envs keep theirs
                old = torch.as_tensor(self._physics[c.name], dtype=self.dtype, device=self.device)
                value = torch.where(redrawn, value, old)
            self._physics[c.name] = value
        self._physics_changed()
