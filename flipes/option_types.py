"""A dataclass field's annotation as an option's type (:class:`FieldType`): read from the annotation, a command-line
word parsed as it, a value from a config file or Python checked against it strictly, and one to suggest instead."""

from __future__ import annotations

import dataclasses
import decimal
import json
import math
import numbers
import os
import sys
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

_SCALARS = (bool, int, float, str)


@dataclasses.dataclass(frozen=True)
class FieldType:
    """What a field annotation allows: one scalar type and/or literal choices, maybe None, maybe a list; or a
    mapping of names to JSON values (``dict[str, Any]``)."""

    scalar: type | None
    choices: tuple[Any, ...] = ()
    optional: bool = False
    is_list: bool = False
    mapping: bool = False

    def describe(self) -> str:
        """What a value must be, in words: "an integer", "a list of integers", "'auto' or none"."""
        if self.mapping:
            return 'an object of names to values, e.g. {"continuous": true}'
        one_of = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
        many = {int: "integers", float: "numbers", str: "strings", bool: "true or false values"}
        parts = [(many if self.is_list else one_of)[self.scalar]] if self.scalar else []
        parts += [repr(c) for c in self.choices]
        parts += ["none"] if self.optional else []
        one = " or ".join(parts)
        return f"a list of {one}" if self.is_list else one


def field_type(annotation: Any) -> FieldType:
    """Read a field annotation (after ``typing.get_type_hints``) into a :class:`FieldType`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is dict:
        if args and args[0] is not str:
            raise TypeError(f"flipes.cli cannot parse options of type {annotation!r} (its keys must be str)")
        return FieldType(None, mapping=True)
    if origin is list:
        inner = field_type(args[0])
        return dataclasses.replace(inner, is_list=True)
    members = args if origin in (typing.Union, types.UnionType) else (annotation,)
    scalar, choices, optional = None, [], False
    for m in members:
        if m is type(None):
            optional = True
        elif typing.get_origin(m) is Literal:
            choices += typing.get_args(m)
        elif m in _SCALARS and scalar is None:
            scalar = m
        else:
            raise TypeError(f"flipes.cli cannot parse options of type {annotation!r}")
    return FieldType(scalar, tuple(choices), optional)


def _parse_scalar(text: str, scalar: type) -> Any:
    if scalar is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if scalar is int:
        try:
            return int(text)
        except ValueError:
            pass
        try:  # 1e6, 2.5e5: budgets in env steps are written so; exact (Decimal), and only where the value is whole
            number = decimal.Decimal(text.strip())
            # no more digits than int() reads from a string (Python's int_max_str_digits, 0: no limit): 1e50000000
            # would take minutes and gigabytes to make
            digits = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
            if number.is_finite() and number == number.to_integral_value() and (not digits or number.adjusted() < digits):
                return int(number)
        except decimal.InvalidOperation:
            pass
        raise ValueError(f"expected an integer, got {text!r}")
    if scalar is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    return text


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s object hook that refuses a key given twice in one object (JSON would keep the last silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"gives the key {key!r} twice; keep one of them")
        out[key] = value
    return out


def parse_text(text: str, ft: FieldType) -> Any:
    """A command-line word as the field's type (for list fields: one item; for a mapping: a JSON object)."""
    if ft.mapping:
        try:
            value = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            fix = """JSON: "double-quoted" names, true, false, null; in a shell, quote the whole object: '{"a": true}'"""
            raise ValueError(f"{text!r} is not JSON ({e}; {fix})") from None
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object such as '{{\"continuous\": true}}', got {text!r}")
        try:
            return check_value("the object", value, ft)
        except TypeError as e:  # NaN, which Python's json reads
            raise ValueError(str(e)) from None
    if ft.optional and text.lower() == "none":
        return None
    for choice in ft.choices:  # in any case, as true/false and none are: --target AUTO is --target auto
        if text == str(choice) or (isinstance(choice, str) and text.lower() == choice.lower()):
            return choice
    if ft.scalar is None:
        raise ValueError(f"expected {ft.describe()}, got {text!r}")
    try:
        return _parse_scalar(text, ft.scalar)
    except ValueError as e:
        if ft.choices or ft.optional:
            raise ValueError(f"expected {ft.describe()}, got {text!r}") from None
        raise e


def check_value(name: str, value: Any, ft: FieldType) -> Any:
    """``value`` (from a config file or Python) checked against the field's type, strictly: a bool is
    not an int, 3.7 is not an int, a string is not a number. Ints are widened to float for float fields.

    Raises:
        TypeError: naming ``name``, the value and the type expected.
    """
    if ft.mapping:
        if not isinstance(value, Mapping):
            raise TypeError(f"{name} = {value!r} is not {ft.describe()}")
        return _json_value(name, value)
    if ft.is_list:
        if not isinstance(value, list | tuple):
            raise TypeError(f"{name} = {value!r} is not {ft.describe()}")
        item = dataclasses.replace(ft, is_list=False)
        return [check_value(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    if value is None or (ft.optional and ft.scalar is not str and isinstance(value, str) and value.lower() == "none"):
        if ft.optional:
            return None
        raise TypeError(f"{name} = none is not {ft.describe()}")
    if any(value == c and type(value) is type(c) for c in ft.choices):
        return value
    if isinstance(value, str) and (same := [c for c in ft.choices if isinstance(c, str) and c.lower() == value.lower()]):
        return same[0]  # "AUTO" in a config file is "auto", as on the command line
    s = ft.scalar
    if s is bool and isinstance(value, bool | np.bool_):
        return bool(value)
    if s is int and isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_):
        return int(value)  # numpy's integers too
    if s is int and isinstance(value, float | np.floating) and float(value).is_integer() and abs(value) <= 2**53:
        return int(value)  # 1e7 in a TOML or JSON file or in Python is a float; a whole one (exact below 2^53) means the integer
    if s is float and isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_):
        return float(value)
    if s is str and isinstance(value, str | os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{name} = {value!r} is not {ft.describe()}")


def _json_value(name: str, value: Any) -> Any:
    """``value`` as plain JSON data (a run records it in config.json and its checkpoint, and a resume compares it):
    dicts with string keys, lists (from tuples too), strings, finite numbers, booleans and None.

    Raises:
        TypeError: naming the entry of ``name`` that is none of those.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise TypeError(f"{name} = {value!r} is not a finite number (JSON has no NaN or inf)")
        return float(value)
    if isinstance(value, list | tuple):
        return [_json_value(f"{name}[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{name} has a key {bad[0]!r} that is not a string")
        return {k: _json_value(f"{name}[{k!r}]", v) for k, v in value.items()}
    raise TypeError(
        f"{name} = {value!r} is of type {type(value).__name__}, not a JSON value (a string, number, bool, list or object)"
    )


def example_value(value: Any, ft: FieldType) -> Any:
    """A value of the field's type to suggest in place of ``value``: ``value`` itself where it is one,
    converted where the intent is plain (``"64"`` -> 64 and 3.7 -> 4 for an integer, 32 -> [32] and
    ``"64 64"`` -> [64, 64] for a list, 1 -> True for a flag, 3 -> "3" for a string), else the first choice or a typical value."""
    if ft.mapping:
        return {"name": 1}
    if ft.is_list:
        item = dataclasses.replace(ft, is_list=False)
        if isinstance(value, str):  # "64 64", "64,64" or "[64, 64]": the flag's words or a list, as one string
            value = value.strip().strip("[]()").replace(",", " ").split() or [value]
        return [example_value(v, item) for v in (value if isinstance(value, list | tuple) else [value])]
    try:
        return check_value("value", value, ft)
    except TypeError:
        pass
    s = ft.scalar
    if isinstance(value, str) and s is not str:
        try:
            return parse_text(value.strip(), ft)
        except ValueError:
            pass
    if s is bool and isinstance(value, numbers.Real) and value in (0, 1):
        return bool(value)
    if s is int and isinstance(value, numbers.Real) and math.isfinite(value) and abs(value) < 1e18:
        return round(value)  # not 1e300's 301 digits: a typical value below says more
    if s is float and isinstance(value, bool | np.bool_):
        return float(value)
    if s is str and value is not None:
        return str(value)
    if ft.choices:
        return ft.choices[0]
    return {int: 1, float: 0.1, bool: True, str: "name"}[s] if s else None
