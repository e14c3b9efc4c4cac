"""The method registry: adding a method is one module and one line here."""

from __future__ import annotations

import json

from ..errors import ConfigError
from ..options import describe_fields, parse_config
from .adapter import HoulsbyAdapters
from .base import Method
from .bitfit import BitFit
from .distill import Distill
from .full_ft import FullFineTuning
from .linear_probe import LinearProbe
from .lora import Lora
from .lst import LadderSideTuning
from .p_tuning import PTuning
from .prompt_tuning import PromptTuning
from .theseus import Theseus
from .truncate import Truncate

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        FullFineTuning,
        BitFit,
        HoulsbyAdapters,
        PromptTuning,
        PTuning,
        Lora,
        Truncate,
        Theseus,
        Distill,
        LadderSideTuning,
        LinearProbe,
    )
}


def method_class(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method '{name}'; known methods: {', '.join(METHODS)}") from None


def create_method(name: str, values: dict | None = None) -> Method:
    """A method instance with its config parsed and validated from user values."""
    cls = method_class(name)
    return cls(parse_config(cls.Config, values))


def supported_methods(backbone) -> tuple[str, ...]:
    """The methods that can train on `backbone` (an `app.backbones.Backbone`), in registry order."""
    return tuple(name for name, cls in METHODS.items() if cls.backbone_refusal(backbone) is None)


def describe_backbone(backbone) -> dict:
    """A backbone's facts plus the methods that can train on it (the CLI's and the Launch page's row)."""
    return {**backbone.info().as_dict(), "methods": list(supported_methods(backbone))}


def describe_methods() -> list[dict]:
    return [
        {
            "name": cls.name,
            "title": cls.title,
            "summary": cls.summary,
            "default_lr": cls.default_lr,
            "exports_plain_model": cls.exports_plain_model,
            "reference_fields": list(cls.reference_fields),
            "tasks": list(cls.tasks),
            "presets": json.loads(json.dumps(cls.presets)),  # a copy: callers may change it
            "fields": describe_fields(cls.Config),
        }
        for cls in METHODS.values()
    ]
