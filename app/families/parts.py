"""The weight-carrying pieces of one transformer layer, named the same for every family, so that
pruning (LST's side-network init, distillation's attention recorder) is written once. Each family
says where its pieces are (`Family.layer_parts`)."""

from __future__ import annotations

from dataclasses import dataclass

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
    tensors are views, so copying into them writes the module's own weights."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.weight, self.bias = weight, bias


def conv1d_views(conv: nn.Module, parts: int = 1) -> list[LinearView]:
    """A Conv1D projection as `parts` equal Linear-layout views (3 for a fused q/k/v)."""
    weight, bias = conv.weight.t(), conv.bias  # [out, in], [out]
    size = weight.shape[0] // parts
    return [LinearView(weight[i * size:(i + 1) * size], None if bias is None else bias[i * size:(i + 1) * size])
            for i in range(parts)]
