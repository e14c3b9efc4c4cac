"""Structured pruning of LLaMA-family decoder layers: query heads under grouped-query attention,
and SwiGLU neurons.

Under grouped-query attention every key/value head serves a group of consecutive query heads, and
the attention kernel finds a query head's key/value head by that layout. So heads go in equal
numbers from every group: removing `per_layer` heads takes `per_layer / kv_heads` of the least
important query heads from each group, keeps every key/value head, and shrinks the group size the
layer records. Importance is the L1 norm of a query head's own weights: its rows of the query
projection and its columns of the output projection (key and value rows are shared by the group).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import LabError


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    from ..layer_stack import layer_list

    layers = layer_list(model)
    if not all(hasattr(layer, "self_attn") and hasattr(layer, "mlp") for layer in layers):
        raise LabError(f"structured pruning of {model.config.model_type} decoder layers is not available; "
                       "it supports LLaMA-family layers (self_attn with q/k/v/o projections, a SwiGLU mlp). "
                       "Use unstructured pruning or quantization for this run")
    return layers


def _heads(attention: nn.Module) -> tuple[int, int]:
    """(query heads, key/value heads) of one attention module as it is now."""
    kv_heads = attention.k_proj.out_features // attention.head_dim
    return attention.q_proj.out_features // attention.head_dim, kv_heads


def heads_per_layer(model: nn.Module) -> list[int]:
    return [_heads(layer.self_attn)[0] for layer in decoder_layers(model)]


def _keep(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A Linear keeping the given output rows (dim 0) or input columns (dim 1)."""
    rows = dim == 0
    new = nn.Linear(linear.in_features if rows else len(index), len(index) if rows else linear.out_features,
                    bias=linear.bias is not None, device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(linear.weight[index] if rows else linear.weight[:, index])
        if linear.bias is not None:
            new.bias.copy_(linear.bias[index] if rows else linear.bias)
    for old, fresh in ((linear.weight, new.weight), (linear.bias, new.bias)):
        if old is not None:
            fresh.requires_grad_(old.requires_grad)
    return new


def check_heads_request(model: nn.Module, per_layer: int) -> None:
    for layer in decoder_layers(model):
        heads, kv_heads = _heads(layer.self_attn)
        if per_layer % kv_heads or not 0 <= per_layer < heads:
            raise LabError(f"cannot remove {per_layer} heads per layer: each layer has {heads} query heads in "
                           f"{kv_heads} groups sharing a key/value head, and heads go equally from every group, so "
                           f"give a multiple of {kv_heads} below {heads}")


def prune_decoder_heads(model: nn.Module, per_layer: int) -> dict[int, list[int]]:
    """Remove `per_layer` query heads from every layer, equally from each key/value group.
    Returns {layer index: [removed query heads]}."""
    check_heads_request(model, per_layer)
    plan = {}
    for index, layer in enumerate(decoder_layers(model)):
        attention = layer.self_attn
        heads, kv_heads = _heads(attention)
        group = heads // kv_heads
        size = attention.head_dim
        with torch.no_grad():
            score = (attention.q_proj.weight.abs().sum(1) + attention.o_proj.weight.abs().sum(0)).view(heads, size).sum(1)
        removed = []
        for g in range(kv_heads):
            members = torch.arange(g * group, (g + 1) * group)
            removed += members[torch.argsort(score[members].float())[: per_layer // kv_heads]].tolist()
        kept = [h for h in range(heads) if h not in set(removed)]
        rows = torch.cat([torch.arange(h * size, (h + 1) * size) for h in kept]).to(attention.q_proj.weight.device)
        attention.q_proj = _keep(attention.q_proj, rows, 0)
        attention.o_proj = _keep(attention.o_proj, rows, 1)
        attention.num_key_value_groups = len(kept) // kv_heads
        plan[index] = sorted(removed)
    return plan


def prune_decoder_ffn(model: nn.Module, fraction: float) -> list[int]:
    """Remove the least important `fraction` of every layer's SwiGLU neurons (rows of the gate and
    up projections, columns of the down projection). Returns neurons kept per layer."""
    kept = []
    for layer in decoder_layers(model):
        mlp = layer.mlp
        width = mlp.up_proj.out_features
        keep_count = max(1, width - int(round(fraction * width)))
        with torch.no_grad():
            score = (mlp.gate_proj.weight.abs().sum(1) + mlp.up_proj.weight.abs().sum(1)
                     + mlp.down_proj.weight.abs().sum(0)).float()
        keep = torch.sort(torch.argsort(score, descending=True)[:keep_count]).values.to(mlp.up_proj.weight.device)
        mlp.gate_proj = _keep(mlp.gate_proj, keep, 0)
        mlp.up_proj = _keep(mlp.up_proj, keep, 0)
        mlp.down_proj = _keep(mlp.down_proj, keep, 1)
        kept.append(int(keep_count))
    return kept
