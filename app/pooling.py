"""How a classifier turns token states into one vector: the way its backbone was pretrained.

Decoders (`use_token_pooling`) classify from the last real token's state, found from the
attention mask rather than from pad ids, so padding on either side, an end-of-text pad token that
also appears in a text, and virtual tokens prepended by prompt tuning all pool the right state.

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

MEAN = "mean"
FIRST = "first"
LAST = "last"
POOLING_FIELD = "classifier_pooling"


def bare_encoder(model: nn.Module) -> nn.Module:
    return getattr(model, "base_model", model)


def pool_first_token(hidden: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def pool_last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The state at the last position the mask keeps (right or left padding alike)."""
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    last = (positions * attention_mask.to(positions.device).long()).argmax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def pool_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == MEAN:
        return masked_mean(hidden, attention_mask)
    if mode == LAST:
        return pool_last_token(hidden, attention_mask)
    return pool_first_token(hidden)


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
    encoder._pooling_mask.mask = mask


def _take_mask(pooling: nn.Module) -> torch.Tensor | None:
    mask, pooling._pooling_mask.mask = pooling._pooling_mask.mask, None
    return mask


def _link(base: nn.Module, head: nn.Module) -> None:
    """Share one mask holder between the bare model, which sees the mask, and the head module,
    which pools. The hooks are module-level functions that find their state on the module they run
    on: a deep copy of the whole model (Theseus' successor, quantisation) then pools with its own
    copy of the holder."""
    holder = _MaskHolder()
    base._pooling_mask = holder
    base._pooling_source = True
    head._pooling_mask = holder
    base.register_forward_pre_hook(_remember_mask, with_kwargs=True)


def relink_pooling(model: nn.Module) -> nn.Module:
    """peft trains copies of head modules (`modules_to_save`), and a copy made alone holds its own
    holder that never sees a mask; point every pooling module back at its model's holder."""
    sources = {id(m._pooling_mask): m._pooling_mask for m in model.modules() if getattr(m, "_pooling_source", False)}
    if len(sources) == 1:
        (holder,) = sources.values()
        for module in model.modules():
            if hasattr(module, "_pooling_mask"):
                module._pooling_mask = holder
    return model


def _mean_as_first_token(pooling: nn.Module, args: tuple):
    hidden, *rest = args
    mask = _take_mask(pooling)
    if mask is None or mask.shape != hidden.shape[:2]:
        mask = torch.ones(hidden.shape[:2], device=hidden.device, dtype=hidden.dtype)
    return (masked_mean(hidden, mask).unsqueeze(1), *rest)


def use_mean_pooling(model: nn.Module) -> nn.Module:
    """Make the model's classifier read the masked mean of the last token states (idempotent)."""
    pooling = _pooling_module(model)
    if pooling is None:
        raise ValueError(f"{type(model).__name__} has no pooler or classification head to pool for")
    model.config.classifier_pooling = MEAN
    if hasattr(pooling, "_pooling_mask"):
        return model
    _link(bare_encoder(model), pooling)
    pooling.register_forward_pre_hook(_mean_as_first_token)
    return model


def _pool_decoder_output(base: nn.Module, args: tuple, kwargs: dict, output):
    hidden = output[0]
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:
        mask = args[1]
    if mask is None or mask.ndim != 2 or mask.shape != hidden.shape[:2]:
        mask = torch.ones(hidden.shape[:2], device=hidden.device, dtype=torch.long)
    pooled = pool_tokens(hidden, mask, base._pooling_mode)
    # The head then reads one position of every sequence, chosen by pad ids; every position holds
    # the pooled state, so whichever it picks is right.
    output.last_hidden_state = pooled.unsqueeze(1).expand_as(hidden)
    return output


def use_token_pooling(model: nn.Module, mode: str = LAST) -> nn.Module:
    """Make a decoder classifier (a `score` head after the bare model) read the last real token's
    state, or the masked mean of all of them (idempotent; the mode can be changed).

    The hook sits on the bare model and sees both its mask and its output, so copies of the head
    (peft's `modules_to_save`) and swapped head modules (dynamic int8) need nothing of their own."""
    top = getattr(model, "get_base_model", lambda: model)()
    if getattr(top, "score", None) is None:
        raise ValueError(f"{type(model).__name__} has no score head to pool for")
    model.config.classifier_pooling = mode
    base = bare_encoder(top)
    base._pooling_mode = mode
    if not getattr(base, "_pools_tokens", False):
        base._pools_tokens = True
        base.register_forward_hook(_pool_decoder_output, with_kwargs=True)
    return model


def set_decoder_pooling(model: nn.Module, mode: str) -> nn.Module:
    """Set how every decoder classifier inside `model` pools (a method's model may wrap one, or
    hold a predecessor beside it); models without decoder pooling are returned unchanged."""
    for module in model.modules():
        if getattr(module, "_pools_tokens", False):
            module._pooling_mode = mode
            module.config.classifier_pooling = mode
    return model


def restore_pooling(model: nn.Module) -> nn.Module:
    """Apply the pooling a loaded model's config records (folders exported by this lab)."""
    pooling = getattr(model.config, POOLING_FIELD, None)
    if getattr(model, "score", None) is not None:
        use_token_pooling(model, pooling if pooling in (MEAN, LAST) else LAST)
    elif pooling == MEAN:
        use_mean_pooling(model)
    return model


def pooling_of(model: nn.Module) -> str:
    pooling = getattr(model.config, POOLING_FIELD, None)
    return pooling if pooling in (MEAN, LAST) else FIRST


def pool_with_mask(model: nn.Module, attention_mask: torch.Tensor | None) -> None:
    """For code that calls the pooling module directly on hidden states (not through the
    encoder's forward): the mask the next pooling uses."""
    holder = getattr(bare_encoder(model), "_pooling_mask", None)
    if holder is not None:
        holder.mask = attention_mask


def load_classifier(folder: str | Path):
    """A classifier folder exported by this lab, pooled the way it was trained."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(Path(folder).expanduser()),
                                                               trust_remote_code=False)
    return restore_pooling(model)
