"""Typed config dataclasses: defaults < YAML file < command-line flags, unknown keys rejected.

Each field carries its help text (`opt(default, "help")`); the CLI builds its flags from the
fields, so a stage's options are declared once.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from kdcli.errors import UsageError

MAX_SEED = 2**63 - 1  # seeds reach torch and NumPy generators as 64-bit integers
MAX_CONFIG_BYTES = 1 << 20  # a YAML file of defaults is a few hundred bytes; refuse anything over 1 MiB unparsed


def opt(default: Any, help: str, *, flag: str | None = None, key: bool = True) -> Any:
    """A config field: its default, its help text, an optional flag name; key=False keeps it out of the cache key."""
    meta = {"help": help, "flag": flag, "key": key}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def coerce(name: str, value: Any, tp) -> Any:
    """Check/convert one value to the field's type; raise UsageError naming the key otherwise."""
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise UsageError(f"config key {name!r} may not be empty")
    origin = typing.get_origin(base)
    if origin is list:
        (item_type,) = typing.get_args(base) or (str,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()] if value else []
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"config key {name!r} expects a list, got {value!r}")
        return [coerce(name, v, item_type) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"config key {name!r} expects a mapping, got {value!r}")
        return dict(value)
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UsageError(f"config key {name!r} expects true/false, got {value!r}")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise UsageError(f"config key {name!r} expects an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"config key {name!r} expects an integer, got {value!r}") from None
    if base is float:
        if isinstance(value, bool):
            raise UsageError(f"config key {name!r} expects a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"config key {name!r} expects a number, got {value!r}") from None
        if not math.isfinite(number):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number, got {value!r}")
        return number
    if base is str:
        if isinstance(value, (dict, list)):
            raise UsageError(f"config key {name!r} expects a string, got {value!r}")
        return str(value)
    return value


def load_yaml(path: Path) -> dict:
    """A YAML mapping of config keys ('-' read as '_'); a missing, oversized or malformed file is a UsageError."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"config file {path} is a directory; --config takes a YAML file")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    if size > MAX_CONFIG_BYTES:
        raise UsageError(f"config file {path} is {size / 2**20:.1f} MiB; a config file may hold at most "
                         f"{MAX_CONFIG_BYTES // 2**20} MiB")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping of keys to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build(cls, yaml_path: Path | None = None, overrides: dict | None = None):
    """Instantiate `cls` from defaults, then the YAML file, then non-None overrides; validate it."""
    types_ = field_types(cls)
    values: dict[str, Any] = {}
    sources = [load_yaml(yaml_path) if yaml_path else {}, {k: v for k, v in (overrides or {}).items() if v is not None}]
    for source in sources:
        unknown = sorted(set(source) - set(types_))
        if unknown:
            raise UsageError(f"unknown config key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(types_))}")
        for name, value in source.items():
            values[name] = coerce(name, value, types_[name])
    config = cls(**values)
    validate = getattr(config, "validate", None)
    if validate:
        validate()
    return config


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def key_dict(config) -> dict:
    """The fields that define the result (those not marked key=False)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.metadata.get("key", True)}


def parse_kv(pairs: list[str], what: str = "--model-arg") -> dict[str, Any]:
    """['k=v', ...] -> {k: v} with ints, floats and bools parsed; a bad pair is a UsageError."""
    parsed: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"{what} expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        parsed[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return parsed


def check_seed(flag: str, value: int) -> None:
    """A seed is an integer in [0, MAX_SEED]; anything else is a UsageError naming the flag."""
    if not 0 <= value <= MAX_SEED:
        raise UsageError(f"{flag} must be an integer in [0, 2^63 - 1], got {value}")


def parse_seeds(value) -> list[int]:
    """'0-4', '0,2,5', '0-2,7', '0 1 2', an int or a list -> a list of seeds."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    parts = value if isinstance(value, list) else str(value).replace(",", " ").split()
    seeds: list[int] = []
    for part in (str(p).strip() for p in parts):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match or (match[2] is not None and int(match[2]) < int(match[1])):
            raise UsageError(f"--seeds expects ranges and lists such as 0-4 or 0,2,5; got {part!r}")
        for end in (match[1], match[2] or match[1]):
            check_seed("--seeds", int(end))
        seeds += range(int(match[1]), int(match[2] or match[1]) + 1)
    return seeds
