"""Structured pruning of LLaMA-family decoder layers: query heads under grouped-query attention,
and SwiGLU neurons.

Under grouped-query attention every key/value head serves a group of consecutive query heads, and
the attention kernel finds a query head's key/value head by that layout. So, within a layer, heads
go in equal numbers from every group: removing n heads takes n / kv_heads of the least important
query heads from each group, keeps every key/value head, and shrinks the group size the layer
records. Importance is the L1 norm of a query head's own weights: its rows of the query projection
and its columns of the output projection (key and value rows are shared by the group).

Heads are removed either `per_layer` (the same number from every layer) or as a `total` over the
model: then a layer gives up heads in rounds of one per group, a round's cost being its heads'
importance normalised by the layer's mean (so layers compare), and the cheapest rounds go first;
every group keeps at least one head.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import LabError
from ..layer_stack import layer_list
from .calibration import column_importance
from .removal_plans import neuron_scores, neurons_to_keep
from .slicing import keep_columns, keep_rows, require_plain_model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    require_plain_model(model)
    layers = layer_list(model)
    if not all(hasattr(layer, "self_attn") and hasattr(layer, "mlp") for layer in layers):
        raise LabError(f"structured pruning of {model.config.model_type} decoder layers is not available; "
                       "it supports LLaMA-family layers (self_attn with q/k/v/o projections, a SwiGLU mlp). "
                       "Use unstructured pruning or quantization for this run")
    return layers


def output_projections(model: nn.Module, *, heads: bool, ffn: bool) -> tuple[list[nn.Linear], list[nn.Linear]]:
    layers = decoder_layers(model)
    return ([layer.self_attn.o_proj for layer in layers] if heads else [],
            [layer.mlp.down_proj for layer in layers] if ffn else [])


def _heads(attention: nn.Module) -> tuple[int, int]:
    """(query heads, key/value heads) of one attention module as it is now."""
    kv_heads = attention.k_proj.out_features // attention.head_dim
    return attention.q_proj.out_features // attention.head_dim, kv_heads


def heads_per_layer(model: nn.Module) -> list[int]:
    return [_heads(layer.self_attn)[0] for layer in decoder_layers(model)]


def check_heads_request(model: nn.Module, per_layer: int | None = None, total: int | None = None) -> None:
    layers = decoder_layers(model)
    shapes = [_heads(layer.self_attn) for layer in layers]
    if per_layer is not None:
        for heads, kv_heads in shapes:
            if per_layer % kv_heads or not 0 <= per_layer < heads:
                raise LabError(f"cannot remove {per_layer} heads per layer: each layer has {heads} query heads in "
                               f"{kv_heads} groups sharing a key/value head, and heads go equally from every "
                               f"group, so give a multiple of {kv_heads} below {heads}")
    if total is not None:
        kv_heads = {kv for _, kv in shapes}
        limit = sum(heads - kv for heads, kv in shapes)
        if len(kv_heads) > 1:
            raise LabError("a total of heads needs the same number of key/value heads in every layer; "
                           "give the heads to remove per layer")
        [kv] = kv_heads
        if total % kv or not 0 <= total <= limit:
            raise LabError(f"cannot remove {total} heads in all: the {len(shapes)} layers have {kv} key/value "
                           f"groups each, heads go equally from every group of a layer and each group keeps one, "
                           f"so give a multiple of {kv} up to {limit}")


def _head_scores(attention: nn.Module, input_norm: torch.Tensor | None = None) -> torch.Tensor:
    """Each query head's importance: what it writes through o_proj given its measured inputs, or
    without them the L1 norm of its q rows and o columns."""
    heads, _ = _heads(attention)
    if input_norm is not None:
        return column_importance(input_norm, attention.o_proj).view(heads, -1).sum(1)
    with torch.no_grad():
        return (attention.q_proj.weight.abs().sum(1) + attention.o_proj.weight.abs().sum(0)).view(heads, -1).sum(1).float()


def _removal_order(attention: nn.Module, input_norm: torch.Tensor | None = None) -> list[list[int]]:
    """Rounds of removal for one layer: round r takes the r-th least important head of every group."""
    heads, kv_heads = _heads(attention)
    group = heads // kv_heads
    score = _head_scores(attention, input_norm)
    ranked = [(g * group + torch.argsort(score[g * group:(g + 1) * group])).tolist() for g in range(kv_heads)]
    return [[ranked[g][r] for g in range(kv_heads)] for r in range(group - 1)]


def _plan_total(layers: nn.ModuleList, total: int, norms: list[torch.Tensor] | None) -> dict[int, int]:
    """Rounds to take from each layer so that `total` heads go, cheapest normalised rounds first."""
    candidates = []
    for index, layer in enumerate(layers):
        norm = norms[index] if norms else None
        score = _head_scores(layer.self_attn, norm)
        normalised = score / score.mean().clamp_min(1e-12)
        for r, round_heads in enumerate(_removal_order(layer.self_attn, norm)):
            candidates.append((float(normalised[round_heads].sum()), index, r))
    rounds = {index: 0 for index in range(len(layers))}
    kv_heads = _heads(layers[0].self_attn)[1] if len(layers) else 1
    # Within a layer a later round never costs less than an earlier one, so the cheapest rounds
    # overall always take each layer's rounds in order (ties keep that order).
    for _, index, _ in sorted(candidates)[: total // kv_heads]:
        rounds[index] += 1
    return rounds


def prune_heads(model: nn.Module, per_layer: int | None = None, total: int | None = None,
                        norms: list[torch.Tensor] | None = None) -> dict[int, list[int]]:
    """Remove query heads, equally from each key/value group of a layer: `per_layer` from every
    layer, or `total` over the model; ranked by what they write given `norms` (each layer's o_proj
    input norms, `calibration`), else by weight magnitude. Returns {layer index: [removed query heads]}."""
    if (per_layer is None) == (total is None):
        raise LabError("say how many heads to remove: per layer or in total")
    check_heads_request(model, per_layer=per_layer, total=total)
    layers = decoder_layers(model)
    if per_layer is not None:
        rounds = {index: per_layer // _heads(layer.self_attn)[1] for index, layer in enumerate(layers)}
    else:
        rounds = _plan_total(layers, total, norms)
    plan = {}
    for index, layer in enumerate(layers):
        attention = layer.self_attn
        order = _removal_order(attention, norms[index] if norms else None)
        removed = sorted(h for round_heads in order[: rounds[index]] for h in round_heads)
        heads, kv_heads = _heads(attention)
        kept = [h for h in range(heads) if h not in set(removed)]
        size = attention.head_dim
        rows = torch.cat([torch.arange(h * size, (h + 1) * size) for h in kept]).to(attention.q_proj.weight.device)
        attention.q_proj = keep_rows(attention.q_proj, rows)
        attention.o_proj = keep_columns(attention.o_proj, rows)
        attention.num_key_value_groups = len(kept) // kv_heads
        plan[index] = removed
    return plan


def prune_ffn(model: nn.Module, fraction: float, norms: list[torch.Tensor] | None = None) -> list[int]:
    """Remove the least important `fraction` of every layer's SwiGLU neurons (rows of the gate and
    up projections, columns of the down projection), ranked by what they write given `norms` (each
    layer's down_proj input norms), else by weight magnitude. Returns neurons kept per layer."""
    kept = []
    for index, layer in enumerate(decoder_layers(model)):
        mlp = layer.mlp
        score = neuron_scores([mlp.gate_proj, mlp.up_proj], mlp.down_proj, norms[index] if norms else None)
        keep = neurons_to_keep(score, fraction, mlp.up_proj.weight.device)
        mlp.gate_proj = keep_rows(mlp.gate_proj, keep)
        mlp.up_proj = keep_rows(mlp.up_proj, keep)
        mlp.down_proj = keep_columns(mlp.down_proj, keep)
        kept.append(len(keep))
    return kept
