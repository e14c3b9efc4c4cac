"""Declared settings: a dataclass field made with `option` carries its help text, choices and
bounds, and everything that reads or shows a setting (the CLI's flags and `--set`, the Launch form,
`python -m app methods`) is generated from that one declaration."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import field
from typing import Any

from .errors import ConfigError


def option(default, help: str, **metadata):
    """A config field with its help text (and optional choices/min/max) for forms and the CLI."""
    meta = {"help": help, **metadata}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: json.loads(json.dumps(default)), metadata=meta)
    return field(default=default, metadata=meta)


def _field_type(config_cls, f: dataclasses.Field):
    hints = typing.get_type_hints(config_cls)
    return hints.get(f.name, str)


def _unwrap_optional(tp):
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else str), True
    return tp, False


def describe_fields(config_cls) -> list[dict]:
    """Plain-data description of a config's fields: name, type, default, help, choices, bounds."""
    rows = []
    default_instance = config_cls()
    for f in dataclasses.fields(config_cls):
        tp, optional = _unwrap_optional(_field_type(config_cls, f))
        kind = getattr(tp, "__name__", str(tp))
        if typing.get_origin(tp) is list:
            kind = "list"
        row = {
            "name": f.name,
            "type": kind,
            "optional": optional,
            "default": getattr(default_instance, f.name),
            "help": f.metadata.get("help", ""),
        }
        for key in ("choices", "min", "max", "advanced"):
            if key in f.metadata:
                row[key] = f.metadata[key]
        rows.append(row)
    return rows


def _convert(name: str, tp, value):
    """Turn a CLI/form value into the field's type, with a message that names the field."""
    tp, optional = _unwrap_optional(tp)
    if typing.get_origin(tp) is list and isinstance(value, str) and not value.strip():
        return []  # an empty list field of a form or `--set name=`
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(f"'{name}' needs a value")
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp is int:
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError(value)
                return int(value)
            return int(str(value).strip())
        if tp is float:
            result = float(value)
            if not math.isfinite(result):
                raise ConfigError(f"'{name}' must be a finite number, got {value!r}")
            return result
        if typing.get_origin(tp) is list:
            (item_type,) = typing.get_args(tp) or (str,)
            if isinstance(value, str):
                text = value.strip()
                items = json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
            else:
                items = list(value)
            return [_convert(name, item_type, item) for item in items]
        if tp is str:
            return str(value).strip()
    except ConfigError:
        raise
    except (TypeError, ValueError, json.JSONDecodeError):
        raise ConfigError(f"'{name}' expects {getattr(tp, '__name__', tp)}, got {value!r}") from None
    return value


def parse_config(config_cls, values: dict[str, Any] | None = None):
    """A validated config from user values (strings from `--set` or typed values from a form)."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown setting {', '.join(repr(u) for u in unknown)} for this method; "
            f"its settings are: {', '.join(fields) or '(none)'}"
        )
    kwargs = {}
    for name, value in values.items():
        f = fields[name]
        converted = _convert(name, _field_type(config_cls, f), value)
        aliases = f.metadata.get("aliases")
        if aliases and isinstance(converted, str):
            converted = aliases.get(converted, converted)  # old names keep working
        check_bounds(name, converted, f.metadata)
        kwargs[name] = converted
    config = config_cls(**kwargs)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def check_bounds(name: str, value, metadata) -> None:
    if value is None:
        return
    choices = metadata.get("choices")
    items = value if isinstance(value, list) else [value]
    if choices is not None:
        bad = [v for v in items if v not in choices]
        if bad:
            raise ConfigError(f"'{name}' must be one of {', '.join(map(str, choices))}; got {bad[0]!r}")
    for bound, test, word in (("min", lambda v, b: v < b, "at least"), ("max", lambda v, b: v > b, "at most")):
        if bound in metadata:
            for v in items:
                if isinstance(v, (int, float)) and test(v, metadata[bound]):
                    raise ConfigError(f"'{name}' must be {word} {metadata[bound]}, got {v}")
