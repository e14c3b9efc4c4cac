"""Pruning a trained encoder: unstructured magnitude masks, and structured removal of attention
heads and FFN neurons that really shrinks the Linear layers.

transformers 5 dropped `PreTrainedModel.prune_heads`, so heads are removed here by slicing the
query/key/value rows and the attention output's columns of each layer. BERT-family attention
reshapes its projections with `view(..., -1, head_size)`, so a layer with fewer heads runs as is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from ..errors import LabError
from ..families import BY_MODEL_TYPE
from . import decoder_pruning, gpt2_pruning
from .calibration import column_importance
from .removal_plans import check_head_request, neuron_scores, neurons_to_keep, plan_head_removal
from .slicing import keep_columns, keep_rows, require_plain_model

# Names under which a module is a task head or an embedding, never a pruning/quantization target.
_EXCLUDED_PARTS = ("embed", "classifier", "pooler", "score", "lm_head")


@dataclass
class Targets:
    """The Linear layers compression acts on, and a sentence saying which they are."""

    modules: list[tuple[str, nn.Linear]]
    description: str

    @property
    def weight_count(self) -> int:
        return sum(m.weight.numel() for _, m in self.modules)


def plain_linears(model: nn.Module) -> None:
    """Replace GPT-2's transposed linear layers (`Conv1D`) by `nn.Linear` layers computing the same, each
    weight keeping whether it trains, so that pruning and quantization find them."""
    from ..precision import as_linear, is_transposed_linear

    for parent in list(model.modules()):
        for attribute, child in list(parent.named_children()):
            if is_transposed_linear(child):
                linear = as_linear(child)
                linear.weight.requires_grad_(child.weight.requires_grad)
                setattr(parent, attribute, linear)


def linear_targets(model: nn.Module) -> Targets:
    """The encoder's Linear layers (attention and FFN projections); embeddings, pooler and
    classifier are left alone because they are small or not matrices a layer multiplies by."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    in_encoder = [(n, m) for n, m in linears if "encoder" in n.split(".") and
                  not any(part in n for part in _EXCLUDED_PARTS)]
    if in_encoder:
        return Targets(in_encoder, f"the {len(in_encoder)} Linear weight matrices of the encoder layers "
                                   "(attention q/k/v/output and FFN); embeddings, pooler and classifier untouched")
    in_layers = [(n, m) for n, m in linears if "layers" in n.split(".") and
                 not any(part in n for part in _EXCLUDED_PARTS)]
    if in_layers:
        return Targets(in_layers, f"the {len(in_layers)} Linear weight matrices of the decoder layers "
                                  "(attention q/k/v/o and MLP); embeddings and score head untouched")
    others = [(n, m) for n, m in linears if not any(part in n for part in _EXCLUDED_PARTS)]
    if not others:
        raise LabError("this model has no Linear layers outside its embeddings and head to compress")
    return Targets(others, f"the model's {len(others)} Linear weight matrices outside embeddings and "
                           "task head (no encoder submodule was found)")


def magnitude_prune(model: nn.Module, sparsity: float, scope: str) -> Targets:
    """Zero the smallest-magnitude fraction `sparsity` of the target weights, ranked over all
    targets together (`global`) or within each matrix (`per_layer`).

    Masks stay attached (weight = weight_orig * mask) so a recovery fine-tune keeps the zeros;
    call `make_pruning_permanent` afterwards.
    """
    targets = linear_targets(model)
    if scope == "global":
        prune.global_unstructured([(m, "weight") for _, m in targets.modules],
                                  pruning_method=prune.L1Unstructured, amount=float(sparsity))
    elif scope == "per_layer":
        for _, m in targets.modules:
            prune.l1_unstructured(m, "weight", amount=float(sparsity))
    else:
        raise LabError(f"unknown pruning scope '{scope}': use global or per_layer")
    return targets


def wanda_prune(model: nn.Module, sparsity: float, norms: list[torch.Tensor]) -> Targets:
    """Zero the fraction `sparsity` of every output row's weights with the lowest |w_ij| x norm of
    input j (Wanda, Sun et al., 2024): `norms` holds each target's measured input norms, in the order
    of `linear_targets`. Masks stay attached like `magnitude_prune`'s."""
    targets = linear_targets(model)
    if len(norms) != len(targets.modules):
        raise LabError(f"Wanda needs the input norms of the {len(targets.modules)} target matrices, got {len(norms)}")
    for (_, module), norm in zip(targets.modules, norms):
        with torch.no_grad():
            score = module.weight.abs().float() * norm.to(module.weight.device)
            count = int(round(float(sparsity) * score.shape[1]))
            mask = torch.ones_like(module.weight)
            if count:
                mask.scatter_(1, torch.argsort(score, dim=1, stable=True)[:, :count], 0.0)
        prune.custom_from_mask(module, "weight", mask)
    return targets


def make_pruning_permanent(model: nn.Module) -> None:
    for module in model.modules():
        if prune.is_pruned(module) and hasattr(module, "weight_orig"):
            prune.remove(module, "weight")


def target_sparsity(targets: Targets) -> float:
    zeros = sum(int((m.weight == 0).sum()) for _, m in targets.modules)
    return zeros / max(1, targets.weight_count)


# --- structured pruning ------------------------------------------------------------------------


@dataclass
class AttentionParts:
    attention: nn.Module  # has query, key, value, attention_head_size, num_attention_heads
    output: nn.Linear  # attention output projection (its input columns are per head)


@dataclass
class FeedForwardParts:
    layer: nn.Module
    up: nn.Linear  # hidden -> intermediate
    down: nn.Linear  # intermediate -> hidden


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    require_plain_model(model)
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise LabError(f"structured pruning found no encoder layers in {type(model).__name__}")
    return layers


def attention_parts(model: nn.Module) -> list[AttentionParts]:
    parts = []
    for index, layer in enumerate(encoder_layers(model)):
        attention = getattr(getattr(layer, "attention", None), "self", None)
        output = getattr(getattr(getattr(layer, "attention", None), "output", None), "dense", None)
        if attention is None or output is None or not all(
            isinstance(getattr(attention, name, None), nn.Linear) for name in ("query", "key", "value")
        ):
            raise LabError(
                f"attention-head pruning supports BERT-style attention (query/key/value projections); "
                f"layer {index} of {model.config.model_type} is built differently (MPNet's shared relative "
                "position bias per head, for one, cannot be sliced per layer); use FFN pruning instead"
            )
        parts.append(AttentionParts(attention, output))
    return parts


def check_ffn_prunable(model: nn.Module) -> None:
    """Raise a clear LabError when this model's feed-forward blocks cannot be pruned."""
    output_projections(model, heads=False, ffn=True)


def check_heads_request(model: nn.Module, *, per_layer: int | None = None, total: int | None = None) -> None:
    """Raise a clear LabError for a number of heads this model cannot give up, before any is scored."""
    decoder = _decoder_pruning(model)
    if decoder is not None:
        decoder.check_heads_request(model, per_layer=per_layer, total=total)
    else:
        check_head_request(heads_per_layer(model), per_layer=per_layer, total=total)


def feed_forward_parts(model: nn.Module) -> list[FeedForwardParts]:
    parts = []
    for index, layer in enumerate(encoder_layers(model)):
        up = getattr(getattr(layer, "intermediate", None), "dense", None)
        down = getattr(getattr(layer, "output", None), "dense", None)
        if not isinstance(up, nn.Linear) or not isinstance(down, nn.Linear):
            raise LabError(f"FFN pruning expects intermediate.dense and output.dense Linear layers; layer {index} "
                           f"of {model.config.model_type} has none")
        parts.append(FeedForwardParts(layer, up, down))
    return parts


def _decoder_pruning(model: nn.Module):
    """The module that slices this decoder's layers (`gpt2_pruning`, or `decoder_pruning` for the LLaMA
    family), or None for an encoder. Both offer output_projections, heads_per_layer,
    check_heads_request, prune_heads and prune_ffn."""
    family = BY_MODEL_TYPE.get(getattr(getattr(model, "config", None), "model_type", None))
    if family is None or not family.causal:
        return None
    return gpt2_pruning if model.config.model_type == "gpt2" else decoder_pruning


def output_projections(model: nn.Module, *, heads: bool, ffn: bool) -> tuple[list[nn.Linear], list[nn.Linear]]:
    """Every layer's attention output projection (when `heads`) and FFN down projection (when `ffn`):
    the Linear layers whose input columns belong to one head or one neuron."""
    decoder = _decoder_pruning(model)
    if decoder is not None:
        return decoder.output_projections(model, heads=heads, ffn=ffn)
    return ([parts.output for parts in attention_parts(model)] if heads else [],
            [parts.down for parts in feed_forward_parts(model)] if ffn else [])


def heads_per_layer(model: nn.Module) -> list[int]:
    decoder = _decoder_pruning(model)
    if decoder is not None:
        return decoder.heads_per_layer(model)
    return [p.attention.query.out_features // p.attention.attention_head_size for p in attention_parts(model)]


def head_importance(parts: AttentionParts, input_norm: torch.Tensor | None = None) -> torch.Tensor:
    """What each head writes through the output projection given its measured inputs, or without
    them the L1 norm of every weight that belongs to it: its q/k/v rows and output columns."""
    size = parts.attention.attention_head_size
    if input_norm is not None:
        return column_importance(input_norm, parts.output).view(-1, size).sum(1)
    with torch.no_grad():
        rows = sum(getattr(parts.attention, name).weight.abs().sum(1) for name in ("query", "key", "value"))
        columns = parts.output.weight.abs().sum(0)
        return (rows + columns).view(-1, size).sum(1).float()


def neuron_importance(parts: FeedForwardParts, input_norm: torch.Tensor | None = None) -> torch.Tensor:
    return neuron_scores([parts.up], parts.down, input_norm)


def _set_child(parent: nn.Module, child: nn.Module, new: nn.Module) -> None:
    for name, module in parent.named_children():
        if module is child:
            setattr(parent, name, new)
            return
    raise RuntimeError("module to replace is not a direct child")


def remove_heads(parts: AttentionParts, heads: list[int], owner: nn.Module) -> None:
    """Remove the given heads of one layer; `owner` is the module holding `parts.output`."""
    if not heads:
        return
    attention, size = parts.attention, parts.attention.attention_head_size
    total = attention.query.out_features // size
    keep_heads = [h for h in range(total) if h not in set(heads)]
    if not keep_heads:
        raise LabError("cannot remove every head of a layer; keep at least one")
    index = torch.cat([torch.arange(h * size, (h + 1) * size) for h in keep_heads]).to(attention.query.weight.device)
    for name in ("query", "key", "value"):
        setattr(attention, name, keep_rows(getattr(attention, name), index))
    new_output = keep_columns(parts.output, index)
    _set_child(owner, parts.output, new_output)
    parts.output = new_output
    attention.num_attention_heads = len(keep_heads)
    attention.all_head_size = len(keep_heads) * size


def prune_heads(model: nn.Module, *, per_layer: int | None = None, total: int | None = None,
                norms: list[torch.Tensor] | None = None) -> dict:
    """Remove the least important heads: `per_layer` from every layer, or `total` across the
    model (importance normalised within each layer so layers compare; every layer keeps a head).
    `norms`: each layer's measured attention-output input norms (`calibration`); without them heads
    are ranked by weight magnitude. Returns {layer index: [removed head indices]}."""
    decoder = _decoder_pruning(model)
    if decoder is not None:
        return decoder.prune_heads(model, per_layer=per_layer, total=total, norms=norms)
    parts = attention_parts(model)
    plan = plan_head_removal([head_importance(p, norms[i] if norms else None) for i, p in enumerate(parts)],
                             per_layer=per_layer, total=total)
    layers = encoder_layers(model)
    for i, heads in plan.items():
        remove_heads(parts[i], heads, layers[i].attention.output)
    return plan


def prune_ffn(model: nn.Module, fraction: float, norms: list[torch.Tensor] | None = None) -> list[int]:
    """Remove the least important `fraction` of every layer's FFN neurons (rows of the
    intermediate Linear, the matching columns of the output Linear), ranked by what they write given
    `norms` (each layer's measured output-Linear input norms), else by weight magnitude. Returns
    neurons kept per layer."""
    if not 0.0 <= fraction < 1.0:
        raise LabError(f"FFN pruning fraction must be in [0, 1), got {fraction}")
    decoder = _decoder_pruning(model)
    if decoder is not None:
        return decoder.prune_ffn(model, fraction, norms)
    kept = []
    for index, parts in enumerate(feed_forward_parts(model)):
        keep = neurons_to_keep(neuron_importance(parts, norms[index] if norms else None), fraction,
                               parts.up.weight.device)
        _set_child(parts.layer.intermediate, parts.up, keep_rows(parts.up, keep))
        _set_child(parts.layer.output, parts.down, keep_columns(parts.down, keep))
        kept.append(len(keep))
    return kept
