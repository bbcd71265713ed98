"""Command-line plumbing for scripts: typed configs from dataclasses, config files, plug-ins."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _field_type(tp: Any) -> tuple[type, bool, bool]:
    """(scalar type, is a list, may be None) of a dataclass field annotation."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    optional = False
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        optional, tp = len(rest) < len(args), rest[0]
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return args[0], True, optional
    return tp, False, optional


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML or JSON file of option values (keys as the dataclass fields, ``-`` or ``_``)."""
    path = Path(path)
    if not path.exists():
        raise SystemExit(f"--config {path}: no such file")
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise SystemExit(f"--config {path}: TOML needs Python >= 3.11; use a .json config file") from None
        data = tomllib.loads(text)
    return {k.replace("-", "_"): v for k, v in data.items()}


def parse_config(
    cls: type[T],
    argv: list[str] | None = None,
    description: str | None = None,
    presets: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
) -> T:
    """Build ``cls`` (a dataclass) from defaults < presets < ``--config FILE`` (TOML/JSON) < flags.

    Every field becomes ``--field-name`` (``--field_name`` works too); unknown keys in the file
    and bad values are errors that name the option. ``presets(values)`` gets the options parsed
    without presets and returns defaults that depend on them (e.g. per-env defaults by ``env``).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    from_file = read_config_file(known.config) if known.config else {}
    unknown = sorted(set(from_file) - set(fields))
    if unknown:
        raise SystemExit(f"--config {known.config}: unknown option(s) {unknown}; valid: {sorted(fields)}")

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML or JSON file of options (command-line flags override it)")
    for name, f in fields.items():
        scalar, is_list, optional = _field_type(hints[name])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        default = from_file.get(name, default)
        convert = _bool if scalar is bool else scalar
        flags = list(dict.fromkeys([f"--{name.replace('_', '-')}", f"--{name}"]))
        kwargs: dict[str, Any] = {"dest": name, "default": default, "type": convert, "help": f"(default: {default})"}
        if is_list:
            kwargs["nargs"] = "+"
        elif optional:
            kwargs["type"] = lambda s, c=convert: None if s.lower() == "none" else c(s)
        parser.add_argument(*flags, **kwargs)
    values = vars(parser.parse_args(argv))
    if presets is not None:
        preset = dict(presets(values))
        unknown = sorted(set(preset) - set(fields))
        if unknown:
            raise ValueError(f"presets name unknown option(s) {unknown}; valid: {sorted(fields)}")
        parser.set_defaults(**{k: v for k, v in preset.items() if k not in from_file})
        values = vars(parser.parse_args(argv))
    values.pop("config")
    return cls(**values)


def load_callable(spec: str, option: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function, with errors that say what is wrong."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"{option} {spec!r}: expected module:function, e.g. {option} mypkg.fitness:evaluate")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: modules in the working directory are found
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise SystemExit(f"{option} {spec!r}: cannot import {module_name!r} ({e}); is it on PYTHONPATH?") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise SystemExit(f"{option} {spec!r}: module {module_name!r} has no function {attr!r}")
    return fn
