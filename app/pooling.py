"""How a classifier turns token states into one vector: the way its backbone was pretrained.

transformers' sequence classifiers pool the first token. Sentence-transformers encoders such as
all-MiniLM-L6-v2 and all-mpnet-base-v2 were trained on the mean of their token states instead
(their `1_Pooling/config.json` says so); in those, the first token's state below the last layer
is nearly the same vector for every input (mean pairwise correlation 1.00 in MiniLM's layers 0-5),
so a classifier on a truncated or compressed copy sees a constant and stays at the majority class.

`use_mean_pooling` keeps the model a plain `*ForSequenceClassification` with unchanged parameters
and state-dict names: a hook on the pooling module (BERT's pooler, the RoBERTa/MPNet/ELECTRA head)
hands it a one-token sequence holding the masked mean, which it then treats as its first token.
The mask comes from a hook on the encoder's forward. The choice is stored as
`config.classifier_pooling = "mean"` (ModernBERT's field for the same thing), so an exported model
says how it was trained; plain transformers ignores the field for these families, which is why
`load_classifier` exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .encoder import bare_encoder, masked_mean

MEAN = "mean"
FIRST = "first"
POOLING_FIELD = "classifier_pooling"


def pretrained_pooling(source: str | None) -> str:
    """'mean' when the folder is a sentence-transformers model that mean-pools, else 'first'."""
    if not source:
        return FIRST
    folder = Path(source).expanduser()
    config_file = folder / "1_Pooling" / "config.json"
    if not config_file.is_file():
        config_file = _hub_pooling_file(source) if not folder.exists() else None
    if config_file is None:
        return FIRST
    try:
        settings = json.loads(Path(config_file).read_text())
    except (OSError, json.JSONDecodeError):
        return FIRST
    return MEAN if settings.get("pooling_mode_mean_tokens") else FIRST


def _hub_pooling_file(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, "1_Pooling/config.json"))
    except Exception:  # no such file, no network: the model is pooled the transformers way
        return None


class _MaskHolder:
    """The attention mask of the forward pass in progress, shared by the two hooks."""

    def __init__(self):
        self.mask: torch.Tensor | None = None


def _pooling_module(model: nn.Module) -> nn.Module | None:
    encoder = bare_encoder(model)
    pooler = getattr(encoder, "pooler", None)
    if pooler is not None:
        return pooler
    top = getattr(model, "get_base_model", lambda: model)()
    head = getattr(top, "classifier", None)
    # Heads that pick the first token themselves take the whole sequence (RoBERTa, MPNet, ELECTRA).
    return head if head is not None and not isinstance(head, nn.Linear) else None


def _remember_mask(encoder: nn.Module, args: tuple, kwargs: dict) -> None:
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:
        mask = args[1]
    encoder._mean_pooling.mask = mask


def _mean_as_first_token(pooling: nn.Module, args: tuple):
    hidden, *rest = args
    mask, pooling._mean_pooling.mask = pooling._mean_pooling.mask, None
    if mask is None or mask.shape != hidden.shape[:2]:
        mask = torch.ones(hidden.shape[:2], device=hidden.device, dtype=hidden.dtype)
    return (masked_mean(hidden, mask).unsqueeze(1), *rest)


def use_mean_pooling(model: nn.Module) -> nn.Module:
    """Make the model's classifier read the masked mean of the last token states (idempotent)."""
    pooling = _pooling_module(model)
    if pooling is None:
        raise ValueError(f"{type(model).__name__} has no pooler or classification head to pool for")
    model.config.classifier_pooling = MEAN
    if hasattr(pooling, "_mean_pooling"):
        return model
    encoder = bare_encoder(model)
    holder = _MaskHolder()
    encoder._mean_pooling = holder
    pooling._mean_pooling = holder
    # Module-level functions that find their state on the module they run on: a deep copy of the
    # model (Theseus' successor, quantisation) then pools with its own copy of the holder.
    encoder.register_forward_pre_hook(_remember_mask, with_kwargs=True)
    pooling.register_forward_pre_hook(_mean_as_first_token)
    return model


def restore_pooling(model: nn.Module) -> nn.Module:
    """Apply the pooling a loaded model's config records (folders exported by this lab)."""
    if getattr(model.config, POOLING_FIELD, None) == MEAN:
        use_mean_pooling(model)
    return model


def pooling_of(model: nn.Module) -> str:
    return MEAN if getattr(model.config, POOLING_FIELD, None) == MEAN else FIRST


def pool_with_mask(model: nn.Module, attention_mask: torch.Tensor | None) -> None:
    """For code that calls the pooling module directly on hidden states (not through the
    encoder's forward): the mask the next pooling uses."""
    holder = getattr(bare_encoder(model), "_mean_pooling", None)
    if holder is not None:
        holder.mask = attention_mask


def load_classifier(folder: str | Path):
    """A classifier folder exported by this lab, pooled the way it was trained."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(Path(folder).expanduser()),
                                                               trust_remote_code=False)
    return restore_pooling(model)
