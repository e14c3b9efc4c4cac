"""Shared pieces for methods that cut, copy or mix encoder layers (Theseus, truncation, distillation).

They work on plain `*ForSequenceClassification` models of the supported encoder families and keep
the results plain, so a successor or a student exports as a folder any transformers user can load.
"""

from __future__ import annotations

import copy
import re

from torch import nn

from ..errors import ConfigError
from ..layer_stack import classify_hidden, layer_list, layer_name_fragment, set_layer_list

__all__ = ["classify_hidden", "layer_list"]  # re-exported: the methods built on surgery use them

GENERIC_LABEL = re.compile(r"^LABEL_\d+$")


def parameter_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def require_plain_model(reference, field_name: str):
    """The reference's plain transformers model (a classifier, or a causal LM on causal-lm runs), or a
    clear error naming what it is instead."""
    if reference.plain_model is None:
        method = (reference.record or {}).get("method", "unknown")
        raise ConfigError(
            f"{field_name} '{reference.source}' is a '{method}' run whose model is not a plain transformers "
            f"model; use a run of a method that exports a plain model (full_ft, truncate, theseus, ...) "
            f"or a model folder"
        )
    return reference.plain_model


def check_reference_labels(reference, label_names: list[str], field_name: str) -> None:
    """A predecessor or teacher must predict exactly the dataset's classes, in the same order.

    Folders saved without class names carry transformers' placeholders (LABEL_0, ...); for those
    only the number of classes can be compared.
    """
    theirs = list(reference.label_names)
    ours = list(label_names)
    if len(theirs) != len(ours):
        raise ConfigError(
            f"{field_name} '{reference.source}' predicts {len(theirs)} classes {theirs}; this dataset has "
            f"{len(ours)} {ours}: use a {field_name} trained on this dataset"
        )
    if all(GENERIC_LABEL.match(str(name)) for name in theirs):
        return
    if theirs != ours:
        raise ConfigError(
            f"{field_name} '{reference.source}' was trained on classes {theirs}; this dataset has {ours}: "
            f"use a {field_name} trained on this dataset"
        )


def check_same_vocabulary(reference_model: nn.Module, backbone, field_name: str, source: str) -> None:
    """The run feeds the reference token ids made by the run's backbone tokenizer."""
    theirs = getattr(reference_model.config, "vocab_size", None)
    ours = backbone.config.vocab_size
    if theirs is not None and theirs != ours:
        raise ConfigError(
            f"{field_name} '{source}' has a vocabulary of {theirs} tokens but backbone '{backbone.name}' "
            f"tokenizes into {ours}; train with the backbone the {field_name} was trained on"
        )


def check_same_layer_shape(config_a, config_b, what: str) -> None:
    """Layers can be copied between two models only when every layer dimension matches."""
    for attribute in ("model_type", "hidden_size", "num_attention_heads", "intermediate_size"):
        a, b = getattr(config_a, attribute, None), getattr(config_b, attribute, None)
        if a != b:
            raise ConfigError(f"{what}: {attribute} differs ({a} vs {b})")


def uniform_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """1-based teacher layer matched to each student layer 1..m, spread evenly (last to last)."""
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError("layer counts must be positive")
    return [max(1, round((j + 1) * teacher_layers / student_layers)) for j in range(student_layers)]


def shallow_copy_with_layers(model: nn.Module, layers: list[nn.Module], *, share_rest: bool) -> nn.Module:
    """A copy of a classification model whose encoder holds exactly `layers` (already copied by the
    caller), its config saying so; every other parameter is the original's very tensor when
    `share_rest` (so the copy shares embeddings and head), else a copy."""
    original_layers = layer_list(model)
    # Deep-copy everything but the layer stack, which is replaced anyway.
    set_layer_list(model, nn.ModuleList())
    try:
        result = copy.deepcopy(model)
    finally:
        set_layer_list(model, original_layers)
    set_layer_list(result, nn.ModuleList(layers))
    result.config.num_hidden_layers = len(layers)
    from transformers import PretrainedConfig

    for index, layer in enumerate(layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
            # Copied layers keep a reference to their old model's config; attention modules read
            # the attention implementation from it, so point them at the new model's config.
            if isinstance(getattr(module, "config", None), PretrainedConfig):
                module.config = result.config
    if share_rest:
        originals = dict(model.named_parameters())
        in_layers = layer_name_fragment(model)
        for name, _ in list(result.named_parameters()):
            if name in originals and in_layers not in f".{name}":
                owner_name, _, attribute = name.rpartition(".")
                owner = result.get_submodule(owner_name) if owner_name else result
                setattr(owner, attribute, originals[name])
        head = result.get_output_embeddings() if hasattr(result, "get_output_embeddings") else None
        if head is not None and getattr(result.config, "tie_word_embeddings", False):
            # The LM head's tied weight is listed once, under the embeddings: tie it to the shared one.
            result.tie_weights()
    return result
