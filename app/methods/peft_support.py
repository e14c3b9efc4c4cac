"""What the parameter-efficient methods share: which modules form the classification head, which
sublayers of an encoder layer play which role, and wrapping a classifier with a `peft` config.

Architectures name the same parts differently (BERT's `attention.self.query` is MPNet's
`attention.attn.q`); methods speak of roles (query, value, attention output, ...) and this module
turns a role into the module paths of the backbone at hand.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from torch import nn

from ..errors import ConfigError

# role -> module path inside one encoder layer, per architecture family
BERT_LIKE_ROLES = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_output": "attention.output.dense",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
}
MPNET_ROLES = {
    "query": "attention.attn.q",
    "key": "attention.attn.k",
    "value": "attention.attn.v",
    "attention_output": "attention.attn.o",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
}
LAYER_ROLES = tuple(BERT_LIKE_ROLES)
ROLE_HELP = (
    "query, key, value (attention projections), attention_output (the projection after attention), "
    "ffn_in and ffn_out (the feed-forward block's two projections)"
)


def layer_roles(model_type: str) -> dict[str, str]:
    """Role -> module path within one encoder layer for this architecture."""
    if model_type == "mpnet":
        return MPNET_ROLES
    if model_type in ("bert", "roberta", "xlm-roberta", "electra"):
        return BERT_LIKE_ROLES
    raise ConfigError(
        f"backbone type '{model_type}' has no known layer layout for this method; "
        "use a BERT, RoBERTa, XLM-RoBERTa, ELECTRA or MPNet backbone"
    )


def layer_module_pattern(model_type: str, roles: list[str]) -> str:
    """A regular expression matching the full names of the role modules in every encoder layer.

    Anchoring on `.layer.<i>.` keeps `output.dense` (FFN out) from also matching
    `attention.output.dense`, which a plain name-suffix match would.
    """
    paths = layer_roles(model_type)
    alternatives = "|".join(re.escape(paths[role]) for role in roles)
    return rf"(.*\.)?layer\.\d+\.({alternatives})"


LAYER_INDEX = re.compile(r"(?:^|\.)layer\.(\d+)\.")


def layer_index(module_name: str) -> int | None:
    """The encoder layer a module belongs to, read from its full name."""
    match = LAYER_INDEX.search(module_name)
    return int(match.group(1)) if match else None


# --- the classification head ------------------------------------------------------------------


def head_module_names(classifier: nn.Module) -> list[str]:
    """Names (relative to an *ForSequenceClassification model) of the modules that make its head.

    RoBERTa, ELECTRA and MPNet heads hold a dense layer and an output projection under
    `classifier`; BERT splits the same two layers into the encoder's `pooler` and `classifier`,
    so BERT's pooler counts as head too: every architecture then trains a comparable head.
    """
    names = ["classifier"]
    base_prefix = getattr(classifier, "base_model_prefix", "")
    base = getattr(classifier, base_prefix, None) if base_prefix else None
    if base is not None and getattr(base, "pooler", None) is not None:
        names.append(f"{base_prefix}.pooler")
    for name in names:
        try:
            classifier.get_submodule(name)
        except AttributeError:
            raise ConfigError(
                f"{type(classifier).__name__} has no '{name}' module; this method supports "
                "BERT, RoBERTa, XLM-RoBERTa, ELECTRA and MPNet classification models"
            ) from None
    return names


def head_parameter_names(classifier: nn.Module) -> set[str]:
    prefixes = tuple(name + "." for name in head_module_names(classifier))
    return {name for name, _ in classifier.named_parameters() if name.startswith(prefixes)}


def extra_head_modules(classifier: nn.Module) -> list[str]:
    """Head modules `peft` does not train on its own (it adds `classifier` for SEQ_CLS itself)."""
    return [name for name in head_module_names(classifier) if name != "classifier"]


# --- peft --------------------------------------------------------------------------------------


def wrap_with_peft(classifier: nn.Module, peft_config):
    """`get_peft_model`, with the deprecation chatter of the pinned versions kept out of the logs."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(classifier, peft_config)


def save_peft_adapter(model, out_dir: Path) -> Path:
    """The `peft` adapter folder (adapter_config.json + adapter_model.safetensors) of a trained model."""
    folder = Path(out_dir) / "peft_adapter"
    model.save_pretrained(str(folder))
    return folder


def peft_adapter_note(folder: Path, backbone_source: str) -> str:
    from ..pooling import MEAN, pretrained_pooling

    mean_pooled = pretrained_pooling(backbone_source) == MEAN
    return (
        "\n## Loading with peft alone\n\n"
        f"`{folder.name}/` is a standard peft adapter folder (virtual tokens and the trained head).\n"
        "It loads on top of the backbone:\n\n"
        "    from transformers import AutoModelForSequenceClassification\n"
        "    from peft import PeftModel\n"
        f"    base = AutoModelForSequenceClassification.from_pretrained('{backbone_source}', num_labels=N)\n"
        + ("    from app.pooling import use_mean_pooling  # trained on the mean token state, as the backbone was\n"
           "    base = use_mean_pooling(base)\n" if mean_pooled else "")
        + f"    model = PeftModel.from_pretrained(base, '{folder.name}')\n\n"
        "(`N` is the number of classes in `lab_config.json`; point the first path at wherever the backbone\n"
        "lives on your machine or at its hub id).\n"
    )
