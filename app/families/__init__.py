"""The registry of transformer families: adding one is a module and one entry in FAMILIES."""

from __future__ import annotations

from ..errors import BackboneError
from .base import Family
from .bert import BERT, MPNET
from .decoders import GPT2, LLAMA

FAMILIES: tuple[Family, ...] = (BERT, MPNET, LLAMA, GPT2)
BY_MODEL_TYPE: dict[str, Family] = {model_type: family for family in FAMILIES for model_type in family.model_types}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(BY_MODEL_TYPE)


def family_for(model_type: str) -> Family:
    try:
        return BY_MODEL_TYPE[model_type]
    except KeyError:
        raise BackboneError(
            f"'{model_type}' models are not supported; the lab takes "
            + "; ".join(f"{f.title}s ({', '.join(f.model_types)})" for f in FAMILIES)
        ) from None


def family_of(model) -> Family:
    """The family of a model, a config or anything with `.config.model_type`."""
    config = getattr(model, "config", model)
    return family_for(config.model_type)
