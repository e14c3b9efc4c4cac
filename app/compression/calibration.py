"""How much each attention head and FFN neuron actually writes, measured on a few training batches.

A unit's weights alone can mislead: a decoder has a few FFN neurons whose activations are hundreds of
times larger than the rest while their weights are small (SmolLM2's first and last layers have them),
and ranking by weight magnitude removes them first, which breaks the model. Here a unit's importance
is the size of what it adds to the residual stream: for input column j of a layer's output
projection (the attention output, the FFN's down projection), the norm of its inputs over the
calibration tokens times the norm of its weight column, as Wanda (Sun et al., 2024) scores weights.
A head's score is the sum over its columns. Unstructured pruning by the same measurements is
Wanda itself: each weight scored |w_ij| times the norm of input j, compared within its output row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn


@dataclass
class InputNorms:
    """Per group of Linear layers (e.g. every layer's attention output), the root sum of squares of each
    input column over the calibration tokens, padding left out; `tokens`: how many were measured."""

    groups: dict[str, list[torch.Tensor]]
    tokens: int


def measure_input_norms(model: nn.Module, groups: dict[str, list[nn.Linear]], batches: Iterable[dict],
                        run: Callable[[nn.Module, dict], object]) -> InputNorms:
    """Run `model` on `batches` through `run` and record what enters every Linear of `groups` (a
    Linear may sit in several groups: it is measured once)."""
    linears = {id(linear): linear for group in groups.values() for linear in group}
    sums = {key: torch.zeros(linear.in_features, dtype=torch.float64) for key, linear in linears.items()}
    real: list[torch.Tensor] = []

    def record(linear: nn.Module, args: tuple) -> None:
        inputs = args[0].detach()
        mask = real[0].to(inputs.device).bool()
        if inputs.dim() == 3 and mask.shape == inputs.shape[:2]:
            inputs = inputs[mask]
        sums[id(linear)] += inputs.reshape(-1, inputs.shape[-1]).double().pow(2).sum(0).cpu()

    handles = [linear.register_forward_pre_hook(record) for linear in linears.values()]
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                mask = batch.get("attention_mask")
                real[:] = [mask if mask is not None else torch.ones_like(batch["input_ids"])]
                tokens += int(real[0].sum())
                run(model, batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return InputNorms({name: [sums[id(linear)].sqrt().float() for linear in group] for name, group in groups.items()},
                      tokens)


def column_importance(input_norm: torch.Tensor, output: nn.Linear) -> torch.Tensor:
    """What input column j of `output` writes: its inputs' norm times its weight column's norm."""
    with torch.no_grad():
        return input_norm.to(output.weight.device) * output.weight.float().norm(dim=0)
