"""Which units structured pruning removes, from their importance scores. Heads, where every head of a
layer can go on its own (BERT-family encoders, GPT-2): the same number from every layer, or a total
over the model where layers give up their cheapest heads first, importance normalised by the layer's
mean so that layers compare, every layer keeping one. Feed-forward neurons: the same fraction of
every layer, the least important first."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import LabError
from .calibration import column_importance


def plan_head_removal(scores: list[torch.Tensor], *, per_layer: int | None = None,
                      total: int | None = None) -> dict[int, list[int]]:
    """{layer index: [heads to remove]} from each layer's head importances (one score per head)."""
    counts = [len(s) for s in scores]
    if per_layer is not None:
        if per_layer < 0 or per_layer >= min(counts):
            raise LabError(f"cannot remove {per_layer} heads per layer: layers have {min(counts)} heads "
                           f"(remove between 0 and {min(counts) - 1})")
        return {i: sorted(torch.argsort(s)[:per_layer].tolist()) for i, s in enumerate(scores)}
    if total is None:
        raise LabError("say how many heads to remove: per layer or in total")
    limit = sum(c - 1 for c in counts)
    if total < 0 or total > limit:
        raise LabError(f"cannot remove {total} heads in all: the model has {sum(counts)} heads in "
                       f"{len(counts)} layers and every layer keeps one (at most {limit})")
    ranked = []
    for i, s in enumerate(scores):
        normalised = s / s.mean().clamp_min(1e-12)
        ranked.extend((float(v), i, h) for h, v in enumerate(normalised))
    ranked.sort()
    removed: dict[int, list[int]] = {i: [] for i in range(len(scores))}
    for _, i, h in ranked:
        if sum(len(v) for v in removed.values()) >= total:
            break
        if len(removed[i]) < counts[i] - 1:
            removed[i].append(h)
    return {i: sorted(v) for i, v in removed.items()}


def check_head_request(counts: list[int], *, per_layer: int | None = None, total: int | None = None) -> None:
    """The same refusals as `plan_head_removal`, before any score is computed."""
    plan_head_removal([torch.ones(c) for c in counts], per_layer=per_layer, total=total)


def neurons_to_keep(score: torch.Tensor, fraction: float, device: torch.device) -> torch.Tensor:
    """The indices, in order, of the most important neurons left once `fraction` of them go (one at least)."""
    keep_count = max(1, len(score) - int(round(fraction * len(score))))
    return torch.sort(torch.argsort(score, descending=True)[:keep_count]).values.to(device)


def neuron_scores(ups: list[nn.Linear], down: nn.Linear, input_norm: torch.Tensor | None) -> torch.Tensor:
    """Each feed-forward neuron's importance: what it writes through `down` given its measured inputs,
    or without them the L1 norm of its rows in `ups` (up, and gate on SwiGLU) and its column in `down`."""
    if input_norm is not None:
        return column_importance(input_norm, down)
    with torch.no_grad():
        return (sum(up.weight.abs().sum(1) for up in ups) + down.weight.abs().sum(0)).float()
