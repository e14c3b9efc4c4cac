"""Cutting a Linear layer down to some of its rows (outputs) or columns (inputs), keeping its
dtype, device and which parameters train: what structured pruning of encoders and decoders does."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import LabError


def keep_rows(linear: nn.Linear, index: torch.Tensor) -> nn.Linear:
    new = nn.Linear(linear.in_features, len(index), bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(linear.weight[index])
        if linear.bias is not None:
            new.bias.copy_(linear.bias[index])
    new.weight.requires_grad_(linear.weight.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    return new


def keep_columns(linear: nn.Linear, index: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(index), linear.out_features, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(linear.weight[:, index])
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    new.weight.requires_grad_(linear.weight.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    return new


def require_plain_model(model: nn.Module) -> None:
    """Structured pruning slices a transformers model's own layers; a method's wrapper (a side
    network, peft's virtual tokens) has no layers of its own to slice."""
    # Not at module level: importing transformers from two threads at once (the app's warm-up)
    # can fail; see app.backbones.TRANSFORMERS_IMPORTS.
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise LabError(
            f"structured pruning needs a plain transformers model, but this run's inference model is a "
            f"{type(model).__name__}; use unstructured pruning or quantization for this method"
        )
