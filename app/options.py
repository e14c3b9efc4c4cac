"""Declared settings: a dataclass field made with `option` carries its help text, choices and
bounds, and everything that reads or shows a setting (the CLI's flags and `--set`, the Launch form,
`python -m app methods`) is generated from that one declaration."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from dataclasses import field
from typing import Any

from .errors import ConfigError

NO_VALUE_WORDS = ("none", "null", "")


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
    if isinstance(value, str) and value.strip().lower() in NO_VALUE_WORDS and (optional or tp is not str):
        value = None  # a required text field keeps "none" as text: it can be a choice (report_to=none)
    if value is None:
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
            try:
                return [_convert(name, item_type, item) for item in items]
            except ConfigError:
                raise ConfigError(f"'{name}' expects a comma-separated list of {item_type.__name__} values, "
                                  f"got {value!r}") from None
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
    config = config_cls(**checked_values(config_cls, values))
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def checked_values(config_cls, values: dict[str, Any]) -> dict[str, Any]:
    """Each value turned into its field's type and checked against the field's choices and bounds."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    checked = {}
    for name, value in values.items():
        f = fields[name]
        converted = _convert(name, _field_type(config_cls, f), value)
        aliases = f.metadata.get("aliases")
        if aliases and isinstance(converted, str):
            converted = aliases.get(converted, converted)  # old names keep working
        check_bounds(name, converted, f.metadata)
        checked[name] = converted
    return checked


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


# --- command-line flags ------------------------------------------------------------------------


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_config_flags(parser, config_cls, *, skip=(), more_names=None, shortcuts=None) -> None:
    """One flag per field of `config_cls` (`split_seed` -> `--split-seed`; a bool gets `--bf16` and
    `--no-bf16`), with the field's help text, its default and its bounds.

    Every flag defaults to None, "not given", so that a caller can lay what was typed over a preset
    and over the config's defaults (`given_flags`). The text is kept as typed and checked by
    `checked_values`, as the form's and `--set`'s values are: a bad value is a one-line ConfigError
    rather than argparse's usage text.

    skip: fields taken another way (a mapping of settings, say); more_names: older spellings that
    keep working ({"sparsities": ["--sparsity"]}); shortcuts: flags that set a field to one value
    ({"scope": {"--per-layer": "per_layer"}}).
    """
    more_names, shortcuts = more_names or {}, shortcuts or {}
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    strays = sorted((set(skip) | set(more_names) | set(shortcuts)) - set(fields))
    if strays:
        raise TypeError(f"{config_cls.__name__} has no field {', '.join(strays)}")
    for row in describe_fields(config_cls):
        name = row["name"]
        if name in skip:
            continue
        tp, _ = _unwrap_optional(_field_type(config_cls, fields[name]))
        names = [flag_name(name), *more_names.get(name, ())]
        help_text = _flag_help(row).replace("%", "%%")  # argparse formats help with %
        target = parser.add_mutually_exclusive_group() if name in shortcuts else parser
        if tp is bool:
            target.add_argument(*names, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif tp in (int, float, str) or typing.get_origin(tp) is list:
            target.add_argument(*names, dest=name, default=None, metavar=_flag_metavar(row, tp), help=help_text)
        else:
            raise TypeError(f"{config_cls.__name__}.{name} has no flag form; skip it and take it another way")
        for shortcut, value in shortcuts.get(name, {}).items():
            target.add_argument(shortcut, dest=name, action="store_const", const=value,
                                help=f"same as {names[0]} {value}")


def given_flags(args: argparse.Namespace, config_cls) -> dict[str, Any]:
    """The `add_config_flags` flags that were given, as typed, by field name."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)
            if getattr(args, f.name, None) is not None}


def _flag_help(row: dict) -> str:
    notes = []
    default = row["default"]
    if isinstance(default, bool):
        notes.append(f"default: {'on' if default else 'off'}")
    elif default not in (None, "", []):
        notes.append(f"default: {default}")
    if "min" in row:
        notes.append(f"at least {row['min']}")
    if "max" in row:
        notes.append(f"at most {row['max']}")
    return f"{row['help']} ({'; '.join(notes)})" if notes else row["help"]


def _flag_metavar(row: dict, tp) -> str:
    item_type = (typing.get_args(tp) or (str,))[0] if typing.get_origin(tp) is list else tp
    if "choices" in row:
        one = "{" + ",".join(map(str, row["choices"])) + "}"
    else:
        one = {int: "N", float: "X"}.get(item_type, row["name"].upper())
    if typing.get_origin(tp) is list:
        one = f"{one},{one},..." if "choices" not in row else f"{one},..."
    return f"{one}|none" if row["optional"] else one
