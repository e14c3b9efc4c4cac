"""Structured pruning of GPT-2 layers: attention heads and feed-forward neurons.

GPT-2 computes queries, keys and values with one fused projection (`c_attn`, rows q | k | v) and splits
its output by `split_size`, then views each part as heads of `head_dim`; removing a head takes its
rows from each of the three parts and its columns from the attention output (`c_proj`), and the layer
records its new head count and split size. The feed-forward block is `c_fc` (rows per neuron) and
`mlp.c_proj` (columns per neuron). The sweep first turns GPT-2's transposed `Conv1D` layers into
`nn.Linear` (`pruning.plain_linears`); slicing works on those.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import LabError
from ..layer_stack import layer_list
from .calibration import column_importance
from .removal_plans import check_head_request, neuron_scores, neurons_to_keep, plan_head_removal
from .slicing import keep_columns, keep_rows, require_plain_model


def gpt2_layers(model: nn.Module) -> nn.ModuleList:
    require_plain_model(model)
    layers = layer_list(model)
    for index, layer in enumerate(layers):
        parts = (layer.attn.c_attn, layer.attn.c_proj, layer.mlp.c_fc, layer.mlp.c_proj)
        if not all(isinstance(p, nn.Linear) for p in parts):
            raise LabError(f"GPT-2 layer {index} still holds Conv1D layers: turn them into nn.Linear first "
                           "(compression.pruning.plain_linears)")
    return layers


def heads_per_layer(model: nn.Module) -> list[int]:
    return [layer.attn.num_heads for layer in gpt2_layers(model)]


def check_heads_request(model: nn.Module, per_layer: int | None = None, total: int | None = None) -> None:
    check_head_request(heads_per_layer(model), per_layer=per_layer, total=total)


def output_projections(model: nn.Module, *, heads: bool, ffn: bool) -> tuple[list[nn.Linear], list[nn.Linear]]:
    layers = gpt2_layers(model)
    return ([layer.attn.c_proj for layer in layers] if heads else [],
            [layer.mlp.c_proj for layer in layers] if ffn else [])


def _head_scores(attention: nn.Module, input_norm: torch.Tensor | None) -> torch.Tensor:
    """What each head writes through `c_proj` given its measured inputs, or without them the L1 norm
    of its q, k and v rows and its output columns."""
    heads, size, width = attention.num_heads, attention.head_dim, attention.split_size
    if input_norm is not None:
        return column_importance(input_norm, attention.c_proj).view(heads, size).sum(1)
    with torch.no_grad():
        rows = attention.c_attn.weight.abs().sum(1).view(3, width).sum(0)
        return (rows + attention.c_proj.weight.abs().sum(0)).view(heads, size).sum(1).float()


def prune_heads(model: nn.Module, *, per_layer: int | None = None, total: int | None = None,
                norms: list[torch.Tensor] | None = None) -> dict[int, list[int]]:
    """Remove the least important heads (`per_layer` from every layer, or `total` over the model),
    ranked by what they write given `norms` (each layer's c_proj input norms), else by weight
    magnitude. Returns {layer index: [removed heads]}."""
    layers = gpt2_layers(model)
    scores = [_head_scores(layer.attn, norms[i] if norms else None) for i, layer in enumerate(layers)]
    plan = plan_head_removal(scores, per_layer=per_layer, total=total)
    for index, removed in plan.items():
        attention = layers[index].attn
        kept = sorted(set(range(attention.num_heads)) - set(removed))
        size, width = attention.head_dim, attention.split_size
        device = attention.c_attn.weight.device
        columns = torch.cat([torch.arange(h * size, (h + 1) * size) for h in kept]).to(device)
        attention.c_attn = keep_rows(attention.c_attn, torch.cat([columns + part * width for part in range(3)]))
        attention.c_proj = keep_columns(attention.c_proj, columns)
        attention.num_heads = len(kept)
        attention.split_size = len(kept) * size
    return plan


def prune_ffn(model: nn.Module, fraction: float, norms: list[torch.Tensor] | None = None) -> list[int]:
    """Remove the least important `fraction` of every layer's feed-forward neurons, ranked by what they
    write given `norms` (each layer's mlp.c_proj input norms), else by weight magnitude. Returns neurons
    kept per layer."""
    kept = []
    for index, layer in enumerate(gpt2_layers(model)):
        mlp = layer.mlp
        score = neuron_scores([mlp.c_fc], mlp.c_proj, norms[index] if norms else None)
        keep = neurons_to_keep(score, fraction, mlp.c_fc.weight.device)
        mlp.c_fc = keep_rows(mlp.c_fc, keep)
        mlp.c_proj = keep_columns(mlp.c_proj, keep)
        kept.append(len(keep))
    return kept
