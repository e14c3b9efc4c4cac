"""The weight-carrying pieces of one transformer layer, named the same for every family, so that
pruning (LST's side-network init, distillation's attention recorder) is written once. Each family
says where its pieces are (`Family.layer_parts`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass
class LayerParts:
    """A post-norm encoder layer (BERT, MPNet) or a GPT-2 block: q, k, v, attention output, a
    two-matrix feed-forward block and two LayerNorms."""

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_out: nn.Linear
    attn_norm: nn.LayerNorm
    ffn_in: nn.Linear
    ffn_out: nn.Linear
    ffn_norm: nn.LayerNorm

    def linears(self) -> dict[str, nn.Linear]:
        return {"query": self.query, "key": self.key, "value": self.value, "attn_out": self.attn_out,
                "ffn_in": self.ffn_in, "ffn_out": self.ffn_out}


@dataclass
class DecoderLayerParts:
    """A LLaMA-family decoder layer: q, k, v, attention output, a SwiGLU block and two RMSNorms."""

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_out: nn.Linear
    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear
    attn_norm: nn.Module
    ffn_norm: nn.Module
    query_norm: nn.Module | None = None  # Qwen3 normalises each head's query and key
    key_norm: nn.Module | None = None

    def linears(self) -> dict[str, nn.Linear]:
        return {"query": self.query, "key": self.key, "value": self.value, "attn_out": self.attn_out,
                "gate": self.gate, "up": self.up, "down": self.down}


class LinearView:
    """A projection seen in nn.Linear's layout (weight [out, in], bias [out]) whatever its module:
    GPT-2's Conv1D stores weight [in, out] and fuses query, key and value into one matrix. The
    tensors are views, so copying into them writes the module's own weights; `source` is the
    parameter they view and `rows` the output rows of it this projection is."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, source: nn.Parameter, rows: slice):
        self.weight, self.bias, self.source, self.rows = weight, bias, source, rows


def conv1d_views(conv: nn.Module, parts: int = 1) -> list[LinearView]:
    """A Conv1D projection as `parts` equal Linear-layout views (3 for a fused q/k/v)."""
    weight, bias = conv.weight.t(), conv.bias  # [out, in], [out]
    size = weight.shape[0] // parts
    views = []
    for i in range(parts):
        rows = slice(i * size, (i + 1) * size)
        views.append(LinearView(weight[rows], None if bias is None else bias[rows], conv.weight, rows))
    return views


def weight_parameter(linear: nn.Linear | LinearView) -> tuple[nn.Parameter, Callable[[torch.Tensor], torch.Tensor]]:
    """The parameter holding a projection's weight, and how to read that projection (in Linear
    layout) off a tensor shaped like the parameter, e.g. its gradient."""
    if isinstance(linear, LinearView):
        return linear.source, lambda tensor: tensor.t()[linear.rows]
    return linear.weight, lambda tensor: tensor
