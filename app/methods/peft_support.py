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

from ..backbones import hub_id_of
from ..errors import BackboneError, ConfigError
from ..families import family_for, family_of
from ..pooling import MEAN, pretrained_pooling, relink_pooling
from ..tasks import CAUSAL_LM

# Roles every family maps to its own module paths (`app.families`).
LAYER_ROLES = ("query", "key", "value", "attention_output", "ffn_in", "ffn_out")
ROLE_HELP = (
    "query, key, value (attention projections; one fused projection in GPT-2), attention_output (the "
    "projection after attention), ffn_in and ffn_out (the feed-forward block's input and output projections; "
    "ffn_in is both the gate and up projections of a SwiGLU block)"
)
LAYER_LIST_NAMES = ("layer", "layers", "h")  # BERT-style, LLaMA-style, GPT-2


def layer_roles(model_type: str) -> dict[str, tuple[str, ...]]:
    """Role -> module paths within one layer for this architecture."""
    try:
        roles = family_for(model_type).roles
    except BackboneError as exc:
        raise ConfigError(str(exc)) from None
    return {role: (path,) if isinstance(path, str) else tuple(path) for role, path in roles.items()}


def layer_module_pattern(model_type: str, roles: list[str]) -> str:
    """A regular expression matching the full names of the role modules in every layer.

    Anchoring on `.layer.<i>.` keeps `output.dense` (FFN out) from also matching
    `attention.output.dense`, which a plain name-suffix match would.
    """
    paths = layer_roles(model_type)
    alternatives = "|".join(sorted({re.escape(path) for role in roles for path in paths[role]}))
    return rf"(.*\.)?({'|'.join(LAYER_LIST_NAMES)})\.\d+\.({alternatives})"


LAYER_INDEX = re.compile(rf"(?:^|\.)(?:{'|'.join(LAYER_LIST_NAMES)})\.(\d+)\.")


def layer_index(module_name: str) -> int | None:
    """The layer a module belongs to, read from its full name."""
    match = LAYER_INDEX.search(module_name)
    return int(match.group(1)) if match else None


# --- the classification head ------------------------------------------------------------------


def head_module_names(classifier: nn.Module) -> list[str]:
    """Names (relative to an *ForSequenceClassification model) of the modules that make its head.

    RoBERTa, ELECTRA and MPNet heads hold a dense layer and an output projection under
    `classifier`; BERT splits the same two layers into the encoder's `pooler` and `classifier`,
    so BERT's pooler counts as head too: every architecture then trains a comparable head.
    """
    names = list(family_of(classifier).head_modules)
    base_prefix = getattr(classifier, "base_model_prefix", "")
    base = getattr(classifier, base_prefix, None) if base_prefix else None
    if base is not None and getattr(base, "pooler", None) is not None:
        names.append(f"{base_prefix}.pooler")
    for name in names:
        try:
            classifier.get_submodule(name)
        except AttributeError:
            raise ConfigError(
                f"{type(classifier).__name__} has no '{name}' module where its family keeps the "
                "classification head"
            ) from None
    return names


def head_parameter_names(classifier: nn.Module) -> set[str]:
    prefixes = tuple(name + "." for name in head_module_names(classifier))
    return {name for name, _ in classifier.named_parameters() if name.startswith(prefixes)}


def extra_head_modules(classifier: nn.Module) -> list[str]:
    """Head modules `peft` does not train on its own (it adds `classifier` and `score` for SEQ_CLS)."""
    return [name for name in head_module_names(classifier) if name not in ("classifier", "score")]


# --- peft --------------------------------------------------------------------------------------


def wrap_with_peft(classifier: nn.Module, peft_config):
    """`get_peft_model`, with the deprecation chatter of the pinned versions kept out of the logs."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return relink_pooling(get_peft_model(classifier, peft_config))


def save_peft_adapter(model, out_dir: Path) -> Path:
    """The `peft` adapter folder (adapter_config.json + adapter_model.safetensors) of a trained model."""
    folder = Path(out_dir) / "peft_adapter"
    model.save_pretrained(str(folder))
    return folder


def export_with_adapter(method, model, out_dir: Path, ctx, holds: str) -> dict:
    """The method's usual export (merged, or the lab's state) plus the peft adapter folder of the
    trained model, with a note on loading it (`holds`: what the adapter carries)."""
    from .export_writers import export_plain_or_state

    result = export_plain_or_state(method, method.inference_model(model), out_dir, ctx)
    folder = save_peft_adapter(model, Path(out_dir))
    readme = Path(out_dir) / "README.md"
    note = (language_model_adapter_note(folder, ctx.backbone) if ctx.task == CAUSAL_LM
            else peft_adapter_note(folder, ctx.backbone, holds))
    readme.write_text((readme.read_text() if readme.exists() else "") + note)
    result["peft_adapter"] = str(folder)
    return result


def language_model_adapter_note(folder: Path, backbone) -> str:
    return (
        "\n## Loading with peft alone\n\n"
        f"`{folder.name}/` is a standard peft adapter folder (the low-rank updates; the LM head stays the backbone's).\n"
        "It loads on top of the backbone:\n\n"
        "    from transformers import AutoModelForCausalLM\n"
        "    from peft import PeftModel\n"
        f"    base = AutoModelForCausalLM.from_pretrained('{hub_id_of(backbone.name) or backbone.source}')\n"
        f"    model = PeftModel.from_pretrained(base, '{folder.name}')\n"
        "\n(point the first path at wherever the backbone lives on your machine or at its hub id).\n"
    )


def peft_adapter_note(folder: Path, backbone, holds: str = "virtual tokens and the trained head") -> str:
    if backbone.family.causal:
        pooling_lines = ("    from app.pooling import relink_pooling, use_token_pooling  # the last real token, "
                         "found from the mask\n    base = use_token_pooling(base)\n")
    elif pretrained_pooling(backbone.source) == MEAN:
        pooling_lines = ("    from app.pooling import relink_pooling, use_mean_pooling  # trained on the mean token "
                         "state, as the backbone was\n    base = use_mean_pooling(base)\n")
    else:
        pooling_lines = ""
    return (
        "\n## Loading with peft alone\n\n"
        f"`{folder.name}/` is a standard peft adapter folder ({holds}).\n"
        "It loads on top of the backbone:\n\n"
        "    from transformers import AutoModelForSequenceClassification\n"
        "    from peft import PeftModel\n"
        f"    base = AutoModelForSequenceClassification.from_pretrained('{hub_id_of(backbone.name) or backbone.source}', "
        "num_labels=N)\n"
        + pooling_lines
        + f"    model = PeftModel.from_pretrained(base, '{folder.name}')\n"
        + ("    model = relink_pooling(model)  # peft's copy of the head must see the mask too\n" if pooling_lines else "")
        + "\n(`N` is the number of classes in `lab_config.json`; point the first path at wherever the backbone\n"
        "lives on your machine or at its hub id).\n"
    )
