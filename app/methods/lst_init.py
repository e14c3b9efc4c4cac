"""Building and initialising the ladder side network of LST from the backbone's own layers.

The side network is the backbone's layer type with every width divided by the reduction factor r.
Its initial weights come from structural pruning of the backbone: importance scores pick which
hidden dimensions, which dimensions inside each attention head and which FFN neurons survive,
and the kept rows/columns are copied. Index sets are kept consistent:

* hidden dimensions: ONE set for the whole side network. It indexes the columns of q/k/v and of
  the FFN input, the rows of the attention output and FFN output projections, and both
  LayerNorms of every side layer. One set (rather than one per layer) is what the side stream's
  residual connections need: the backbone's residual stream uses the same basis in every layer,
  so side dimension j must mean the same backbone dimension j in every side block and in the
  ladder projections that feed them.
* attention: per layer and per head, the same d_head/r dimensions index the rows of q, k and v
  and the columns of the output projection, so each side head is a thinner copy of the same
  backbone head (q·k sums over matching dimensions, v lines up with o).
* FFN: per layer, the kept neurons index the rows of the FFN input and the columns of its output.

Decoders of the LLaMA family prune the same way, with three constraints of their own:

* rotary positions rotate dimension j of a head together with dimension j + d_head/2, so head
  dimensions are kept in such pairs, and the side network's rotary embedding uses exactly the
  kept pairs' frequencies (one pair set per layer, shared by all its heads, because one rotary
  table serves every head of a layer);
* grouped-query attention: query heads read the key/value head of their group, so the kept head
  dimensions are the same for query and key/value heads (the head and key/value-head counts stay);
* SwiGLU: the gate and up projections keep the same neurons, which index the down projection's
  columns; RMSNorm scales (and Qwen3's per-head query/key norms) keep the kept dimensions.

Importance is either L1 magnitude of the weights or an empirical Fisher score (squared per-example
gradients of the task loss, summed over shuffled training examples).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import feed_forward_size
from ..errors import ConfigError
from ..families.base import Family
from ..families.parts import weight_parameter
from ..layer_stack import LayerStack
from ..lm_loss import causal_lm_loss
from ..pooling import pool_tokens

# --- the shrunken configuration --------------------------------------------------------------


def head_size_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def side_dimensions(config, reduction_factor: int) -> dict:
    """Side widths for a backbone config, or a ConfigError that says which width does not divide."""
    d, heads, d_ff = config.hidden_size, config.num_attention_heads, feed_forward_size(config)
    r = reduction_factor
    if getattr(config, "num_key_value_heads", None):  # a rotary decoder: head dims go in pairs
        head_size = head_size_of(config)
        if (head_size // 2) % r:
            raise ConfigError(
                f"reduction_factor {r} does not divide the {head_size // 2} rotary pairs of the backbone's "
                f"per-head size {head_size}; choose a divisor of {head_size // 2}")
        if d % r or d_ff % r:
            raise ConfigError(f"reduction_factor {r} does not divide the backbone's hidden size {d} and FFN size {d_ff}")
        return {"hidden": d // r, "ffn": d_ff // r, "heads": heads, "head_size": head_size // r,
                "kv_heads": config.num_key_value_heads}
    if d % heads:
        raise ConfigError(f"backbone hidden size {d} is not a multiple of its {heads} heads")
    head_size = d // heads
    if head_size % r:
        raise ConfigError(
            f"reduction_factor {r} does not divide the backbone's per-head size {head_size} "
            f"(hidden {d} / {heads} heads); choose a divisor of {head_size}"
        )
    if d_ff % r:
        raise ConfigError(f"reduction_factor {r} does not divide the backbone's FFN size {d_ff}")
    return {"hidden": d // r, "ffn": d_ff // r, "heads": heads, "head_size": head_size // r}


def side_config(config, reduction_factor: int):
    """A copy of the backbone config with every width divided by r and the same head count."""
    dims = side_dimensions(config, reduction_factor)
    shrunk = copy.deepcopy(config)
    shrunk.hidden_size = dims["hidden"]
    shrunk.intermediate_size = dims["ffn"]
    if hasattr(shrunk, "n_inner"):  # GPT-2's name for it
        shrunk.n_inner = dims["ffn"]
    shrunk.num_attention_heads = dims["heads"]
    if "kv_heads" in dims:
        shrunk.head_dim = dims["head_size"]
    return shrunk


def build_side_layers(view: LayerStack, config, count: int) -> nn.ModuleList:
    """`count` real instances of the backbone's own layer class built from the shrunken config."""
    layer_class = type(view.layers[0])
    if view.family.causal:
        return nn.ModuleList(layer_class(config, layer_idx=i) for i in range(count))
    return nn.ModuleList(layer_class(config) for _ in range(count))


def init_like_pretraining(module: nn.Module, std: float) -> None:
    """BERT-style initialisation (normal weights, zero biases, unit LayerNorms): the `random` ablation."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, mean=0.0, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
        elif type(sub).__name__.endswith("RMSNorm"):
            nn.init.ones_(sub.weight)
        elif type(sub).__name__ == "Conv1D":  # GPT-2's projections
            nn.init.normal_(sub.weight, mean=0.0, std=std)
            nn.init.zeros_(sub.bias)


# --- importance ------------------------------------------------------------------------------


Scores = dict[int, dict[str, torch.Tensor]]  # backbone layer index -> part name -> score per weight


def magnitude_scores(view: LayerStack, layer_indices: Iterable[int]) -> Scores:
    """|W| for every weight matrix of the given backbone layers."""
    return {
        i: {name: linear.weight.detach().abs().float() for name, linear in view.family.layer_parts(view.layers[i]).linears().items()}
        for i in layer_indices
    }


def fisher_scores(
    view: LayerStack,
    layer_indices: Iterable[int],
    batches: Iterator[dict],
    *,
    num_samples: int,
    num_labels: int,
    pooling: str,
    seed: int,
    progress: Callable[[str], None] = lambda message: None,
    lm_head: nn.Module | None = None,
) -> Scores:
    """Empirical Fisher importance: squared per-example gradients of the task loss, summed.

    As in the official code, every example gets its own backward pass (batch 1) and its gradient
    is squared before summing; squaring a batch-mean gradient instead would let examples' signs
    cancel and score a different quantity. Each example is cut to its own length first (padding
    is masked out anyway), which keeps the one-at-a-time passes cheap.

    A pretrained encoder has no head for this task, so the loss goes through a temporary linear
    head (seeded, thrown away afterwards) on the pooled last hidden state. A language model has
    its head: given `lm_head`, the loss is the run's own next-token loss on the example's labelled
    tokens. The backbone is left as it was found: frozen, in eval mode, without gradients.
    """
    layer_indices = sorted(set(layer_indices))
    parts = {i: view.family.layer_parts(view.layers[i]).linears() for i in layer_indices}
    # Gradients are taken for the parameters themselves: a fused q/k/v matrix (GPT-2) is one
    # parameter, read per projection afterwards.
    readers = {i: {name: weight_parameter(linear) for name, linear in linears.items()} for i, linears in parts.items()}
    weights = list({id(p): p for named in readers.values() for p, _ in named.values()}.values())
    totals = {id(w): torch.zeros_like(w, dtype=torch.float32) for w in weights}
    generator = torch.Generator().manual_seed(seed)
    hidden = view.config.hidden_size
    head = lm_head
    if head is None:
        head = nn.Linear(hidden, num_labels)
        with torch.no_grad():
            head.weight.copy_(torch.randn(num_labels, hidden, generator=generator) * view.config.initializer_range)
            head.bias.zero_()
    was_training = view.model.training
    previous = [w.requires_grad for w in weights]
    view.model.eval()
    seen = 0
    report_every = max(1, num_samples // 20)
    try:
        for w in weights:
            w.requires_grad_(True)
        head.to(weights[0].device)
        for batch in batches:
            if seen >= num_samples:
                break
            attention_mask = batch.get("attention_mask")
            token_type_ids = batch.get("token_type_ids")
            for row in range(min(len(batch["labels"]), num_samples - seen)):
                length = batch["input_ids"].shape[1]
                if attention_mask is not None:
                    real = int(attention_mask[row].sum())
                    if bool(attention_mask[row, :real].all()):  # right padding: the tail is all padding
                        length = real
                input_ids = batch["input_ids"][row : row + 1, :length]
                mask = attention_mask[row : row + 1, :length] if attention_mask is not None else None
                types = token_type_ids[row : row + 1, :length] if token_type_ids is not None else None
                last = view.hidden_states(input_ids, mask, types)[-1]
                final_norm = view.family.final_norm(view.model)
                if final_norm is not None:
                    last = final_norm(last)
                labels = batch["labels"][row : row + 1]
                if lm_head is not None:
                    loss = causal_lm_loss(last, head, labels[:, :length])
                else:
                    pooled = pool_tokens(last, mask if mask is not None else torch.ones_like(input_ids), pooling)
                    loss = F.cross_entropy(head(pooled).float(), labels)
                grads = torch.autograd.grad(loss, weights)
                for w, g in zip(weights, grads):
                    totals[id(w)] += g.float().pow(2)
                seen += 1
                if seen % report_every == 0 or seen == num_samples:
                    progress(f"Fisher importance: {seen}/{num_samples} training examples")
    finally:
        for w, flag in zip(weights, previous):
            w.requires_grad_(flag)
            w.grad = None
        view.model.train(was_training)
    if seen == 0:
        raise ConfigError("Fisher importance needs training examples, but the training set gave none")
    return {i: {name: read(totals[id(parameter)]) for name, (parameter, read) in named.items()}
            for i, named in readers.items()}


# --- choosing and copying ----------------------------------------------------------------------


def top_indices(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` largest scores, in ascending index order (ties go to the lower index)."""
    order = torch.sort(scores, descending=True, stable=True).indices[:keep]
    return torch.sort(order).values


READS_HIDDEN = ("query", "key", "value", "ffn_in", "gate", "up")  # their columns read the hidden state
WRITES_HIDDEN = ("attn_out", "ffn_out", "down")  # their rows write it


def hidden_importance(layer_scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """Score of each hidden dimension in one layer: the columns that read it, the rows that write it."""
    reads = sum(layer_scores[name].sum(0) for name in READS_HIDDEN if name in layer_scores)
    writes = sum(layer_scores[name].sum(1) for name in WRITES_HIDDEN if name in layer_scores)
    return reads + writes


@dataclass
class PrunedIndices:
    hidden: torch.Tensor  # shared by every side layer and every ladder projection
    heads: dict[int, torch.Tensor]  # backbone layer -> kept rows of q/k/v = kept columns of o
    ffn: dict[int, torch.Tensor]  # backbone layer -> kept FFN neurons


def choose_indices(scores: Scores, *, num_heads: int, reduction_factor: int) -> PrunedIndices:
    """Keep the 1/r most important hidden dims (summed over layers), then per layer the most
    important dims of each head and FFN neurons, scored on the kept hidden dims only."""
    layers = sorted(scores)
    first = scores[layers[0]]
    hidden_size = first["query"].shape[1]
    head_size = first["query"].shape[0] // num_heads
    ffn_size = first["ffn_in"].shape[0]
    r = reduction_factor
    hidden = top_indices(sum(hidden_importance(scores[i]) for i in layers), hidden_size // r)
    heads, ffn = {}, {}
    for i in layers:
        s = scores[i]
        per_dim = (s["query"][:, hidden].sum(1) + s["key"][:, hidden].sum(1) + s["value"][:, hidden].sum(1)
                   + s["attn_out"][hidden].sum(0))
        kept = [h * head_size + top_indices(per_dim[h * head_size:(h + 1) * head_size], head_size // r)
                for h in range(num_heads)]
        heads[i] = torch.cat(kept)
        ffn[i] = top_indices(s["ffn_in"][:, hidden].sum(1) + s["ffn_out"][hidden].sum(0), ffn_size // r)
    return PrunedIndices(hidden, heads, ffn)


@dataclass
class DecoderPrunedIndices:
    hidden: torch.Tensor  # shared by every side layer, ladder projection and the side's final norm
    head_dims: dict[int, torch.Tensor]  # backbone layer -> kept dimensions within every head
    rotary_pairs: dict[int, torch.Tensor]  # backbone layer -> kept rotary pairs (first index of each)
    ffn: dict[int, torch.Tensor]  # backbone layer -> kept SwiGLU neurons


def choose_decoder_indices(scores: Scores, *, num_heads: int, num_kv_heads: int, head_size: int,
                           reduction_factor: int) -> DecoderPrunedIndices:
    """The decoder version of `choose_indices`: hidden dims as for encoders; per layer one set of
    rotary pairs for all heads (query and key/value alike), and the SwiGLU neurons."""
    layers = sorted(scores)
    r = reduction_factor
    hidden_size = scores[layers[0]]["query"].shape[1]
    ffn_size = scores[layers[0]]["gate"].shape[0]
    hidden = top_indices(sum(hidden_importance(scores[i]) for i in layers), hidden_size // r)
    half = head_size // 2
    head_dims, pairs, ffn = {}, {}, {}
    for i in layers:
        s = scores[i]
        per_dim = (s["query"][:, hidden].sum(1).view(num_heads, head_size).sum(0)
                   + s["key"][:, hidden].sum(1).view(num_kv_heads, head_size).sum(0)
                   + s["value"][:, hidden].sum(1).view(num_kv_heads, head_size).sum(0)
                   + s["attn_out"][hidden].sum(0).view(num_heads, head_size).sum(0))
        kept = top_indices(per_dim[:half] + per_dim[half:], half // r)
        pairs[i] = kept
        head_dims[i] = torch.cat([kept, kept + half])  # rotate_half's layout: first halves, then second
        ffn[i] = top_indices(s["gate"][:, hidden].sum(1) + s["up"][:, hidden].sum(1) + s["down"][hidden].sum(0),
                             ffn_size // r)
    return DecoderPrunedIndices(hidden, head_dims, pairs, ffn)


def _per_head(dims: torch.Tensor, heads: int, head_size: int) -> torch.Tensor:
    return torch.cat([h * head_size + dims for h in range(heads)])


def _copy_linear(s: nn.Linear, d: nn.Linear, rows: torch.Tensor, cols: torch.Tensor) -> None:
    d.weight.copy_(s.weight[rows][:, cols])
    if d.bias is not None:
        d.bias.copy_(s.bias[rows])


@torch.no_grad()
def copy_pruned_decoder_layer(family: Family, source: nn.Module, target: nn.Module, hidden: torch.Tensor,
                              head_dims: torch.Tensor, ffn: torch.Tensor, *, num_heads: int, num_kv_heads: int,
                              head_size: int) -> None:
    """Copy the kept rows/columns of a LLaMA-family layer into a side layer of the same class."""
    src, dst = family.layer_parts(source), family.layer_parts(target)
    query_rows = _per_head(head_dims, num_heads, head_size)
    kv_rows = _per_head(head_dims, num_kv_heads, head_size)
    _copy_linear(src.query, dst.query, query_rows, hidden)
    _copy_linear(src.key, dst.key, kv_rows, hidden)
    _copy_linear(src.value, dst.value, kv_rows, hidden)
    _copy_linear(src.attn_out, dst.attn_out, hidden, query_rows)
    _copy_linear(src.gate, dst.gate, ffn, hidden)
    _copy_linear(src.up, dst.up, ffn, hidden)
    _copy_linear(src.down, dst.down, hidden, ffn)
    dst.attn_norm.weight.copy_(src.attn_norm.weight[hidden])
    dst.ffn_norm.weight.copy_(src.ffn_norm.weight[hidden])
    for norm_src, norm_dst in ((src.query_norm, dst.query_norm), (src.key_norm, dst.key_norm)):
        if norm_src is not None:
            norm_dst.weight.copy_(norm_src.weight[head_dims])


@torch.no_grad()
def copy_pruned_layer(family: Family, source: nn.Module, target: nn.Module, hidden: torch.Tensor,
                      heads: torch.Tensor, ffn: torch.Tensor) -> None:
    """Copy the kept rows/columns of a backbone layer into a side layer of the same class."""
    src, dst = family.layer_parts(source), family.layer_parts(target)

    for name in ("query", "key", "value"):
        _copy_linear(getattr(src, name), getattr(dst, name), heads, hidden)
    _copy_linear(src.attn_out, dst.attn_out, hidden, heads)
    _copy_linear(src.ffn_in, dst.ffn_in, ffn, hidden)
    _copy_linear(src.ffn_out, dst.ffn_out, hidden, ffn)
    for norm_src, norm_dst in ((src.attn_norm, dst.attn_norm), (src.ffn_norm, dst.ffn_norm)):
        norm_dst.weight.copy_(norm_src.weight[hidden])
        norm_dst.bias.copy_(norm_src.bias[hidden])


@torch.no_grad()
def selection_projection(linear: nn.Linear, hidden: torch.Tensor, *, transpose: bool = False) -> None:
    """Make a ladder projection pick (or, transposed, put back) the kept hidden dimensions, so the
    pruned side layers first see the backbone's states in the basis they were cut from."""
    linear.weight.zero_()
    positions = torch.arange(len(hidden), device=linear.weight.device)
    if transpose:
        linear.weight[hidden.to(linear.weight.device), positions] = 1.0
    else:
        linear.weight[positions, hidden.to(linear.weight.device)] = 1.0
    if linear.bias is not None:
        linear.bias.zero_()
