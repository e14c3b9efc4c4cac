"""The causal-LM loss without the whole logits tensor.

A language model's head turns every position's state into one score per vocabulary entry. On
SmolLM2 (49,152 entries) a batch of 8 × 256 tokens makes 400 MB of fp32 logits, and a plain loss
keeps them (and their softmax) for backward: more than LST's whole side network. Here the head
and the loss run on chunks of positions, at most one chunk's logits existing at a time, and each
chunk's gradients (for the states, and for the head's weights when they train) are computed right
away in the forward pass from its softmax: backward only scales what the forward kept, so nothing is
recomputed. That is liger-kernel's fused linear cross-entropy, in plain torch operations that run
on every device. A head that is not a plain `nn.Linear` goes chunk by chunk under activation
checkpointing instead (backward recomputes each chunk's logits). Distillation compares two models'
logits and also runs under checkpointing.

Labels follow transformers' convention: `labels[b, t]` is the token at position t, and -100 marks a
position the loss skips (a prompt, padding); the state at t - 1 predicts the label at t.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .memory import LOSS, counted_as, keep_for_backward

IGNORE_INDEX = -100
# The fp32 logits of one chunk: 32 MB is 170 positions of SmolLM2, 650 of GPT-2's 50,257 entries.
LOGITS_CHUNK_BYTES = 32 * 2**20


def chunk_positions(vocab_size: int, budget_bytes: int | None = None) -> int:
    """Positions per chunk so that one chunk's fp32 logits fit the budget."""
    return max(1, (budget_bytes or LOGITS_CHUNK_BYTES) // (4 * max(1, vocab_size)))


def perplexity(mean_loss: float) -> float:
    """exp of the mean next-token loss, capped where a float would overflow into infinity."""
    return float(math.exp(min(mean_loss, 50.0)))


def next_token_pairs(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every position's state with the label it predicts (the next position's), flattened."""
    states = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = labels[:, 1:].reshape(-1)
    return states, targets


class LinearCrossEntropy(torch.autograd.Function):
    """Σ cross-entropy(states @ weightᵀ + bias, targets) over positions whose target is not -100,
    chunk by chunk, with the gradients computed in the forward pass (softmax − one-hot, times the
    weight for the states and times the states for the weight)."""

    @staticmethod
    def forward(ctx, states, weight, bias, targets, size: int):
        total = states.new_zeros((), dtype=torch.float32)
        grad_states = torch.empty_like(states)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and bias.requires_grad else None
        for start in range(0, states.shape[0], size):
            chunk = states[start:start + size].to(weight.dtype)
            target = targets[start:start + size]
            labelled = (target != IGNORE_INDEX).unsqueeze(1)
            safe = target.clamp_min(0).unsqueeze(1)
            logits = F.linear(chunk, weight, bias).float()
            normaliser = torch.logsumexp(logits, -1, keepdim=True)
            total = total + ((normaliser - logits.gather(1, safe)) * labelled).sum()
            grad_logits = logits.sub_(normaliser).exp_()  # the softmax, in the logits' own storage
            grad_logits.scatter_add_(1, safe, -torch.ones_like(safe, dtype=grad_logits.dtype))
            grad_logits.mul_(labelled)
            grad_states[start:start + size] = (grad_logits.to(weight.dtype) @ weight).to(states.dtype)
            if grad_weight is not None:
                grad_weight += grad_logits.T @ chunk.float()
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
        ctx.save_for_backward(grad_states, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_states, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        return (grad_states * grad_output.to(grad_states.dtype),
                None if grad_weight is None else (grad_weight * grad_output).to(weight_dtype),
                None if grad_bias is None else (grad_bias * grad_output).to(bias_dtype), None, None)


def _chunk_loss_sum(head: nn.Module, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(states).float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


@counted_as(LOSS)
def causal_lm_loss(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """The mean next-token cross-entropy over labelled positions, computed chunk by chunk. What it
    keeps for backward (the states' gradient, and the head's when it trains) is the memory
    breakdown's `loss` part."""
    states, targets = next_token_pairs(hidden, labels)
    size = chunk_positions(head.weight.shape[0])
    count = (targets != IGNORE_INDEX).sum().clamp_min(1)
    if torch.is_grad_enabled() and type(head) is nn.Linear and not head._forward_hooks:
        return LinearCrossEntropy.apply(states, head.weight, head.bias, targets, size) / count
    total = states.new_zeros((), dtype=torch.float32)
    if torch.is_grad_enabled():
        keep_for_backward(states, targets)  # checkpointing keeps them out of sight of saved-tensor hooks
    for start in range(0, states.shape[0], size):
        part = (head, states[start:start + size], targets[start:start + size])
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss_sum, *part, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(*part)
    return total / count


def _chunk_distillation_sums(student_head: nn.Module, student_states: torch.Tensor, teacher_head: nn.Module,
                             teacher_states: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """[summed cross-entropy, summed T²·KL(teacher_T ‖ student_T)] over the chunk's labelled positions."""
    logits = student_head(student_states).float()
    labelled = targets != IGNORE_INDEX
    cross_entropy = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    with torch.no_grad():
        teacher_log_probs = F.log_softmax(teacher_head(teacher_states).float() / temperature, -1)
    kl = F.kl_div(F.log_softmax(logits / temperature, -1), teacher_log_probs, reduction="none", log_target=True)
    return torch.stack([cross_entropy, (kl.sum(-1) * labelled).sum() * temperature**2])


@counted_as(LOSS)
def causal_lm_distillation_loss(student_hidden: torch.Tensor, student_head: nn.Module, teacher_hidden: torch.Tensor,
                                teacher_head: nn.Module, labels: torch.Tensor,
                                temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level distillation of a language model, chunk by chunk like `causal_lm_loss`: the mean
    next-token cross-entropy with the labels and the mean T²·KL between the teacher's and the
    student's temperature-softened next-token distributions, both over labelled positions. Neither
    model's whole logits tensor exists at once; the teacher's logits are recomputed without autograd."""
    states, targets = next_token_pairs(student_hidden, labels)
    teacher_states, _ = next_token_pairs(teacher_hidden.detach(), labels)
    size = chunk_positions(student_head.weight.shape[0])
    total = states.new_zeros(2, dtype=torch.float32)
    if torch.is_grad_enabled():
        keep_for_backward(states, teacher_states, targets)
    for start in range(0, states.shape[0], size):
        part = (student_head, states[start:start + size], teacher_head, teacher_states[start:start + size],
                targets[start:start + size], float(temperature))
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_distillation_sums, *part, use_reentrant=False)
        else:
            total = total + _chunk_distillation_sums(*part)
    mean = total / (targets != IGNORE_INDEX).sum().clamp_min(1)
    return mean[0], mean[1]


@torch.no_grad()
def causal_lm_sums(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor) -> tuple[float, int, int, int]:
    """(summed next-token loss, labelled positions, positions whose most likely token is the label,
    examples whose every labelled token is the most likely one). The last is greedy decoding's exact
    match: fed the right answer, greedy decoding writes it, end-of-text included, only if each of its
    tokens is the most likely at its place."""
    states, targets = next_token_pairs(hidden, labels)
    size = chunk_positions(head.weight.shape[0])
    loss = 0.0
    hits = torch.empty(targets.shape, dtype=torch.bool, device=targets.device)
    for start in range(0, states.shape[0], size):
        logits = head(states[start:start + size]).float()
        part = targets[start:start + size]
        loss += float(F.cross_entropy(logits, part, ignore_index=IGNORE_INDEX, reduction="sum"))
        hits[start:start + size] = logits.argmax(-1) == part
    labelled = targets != IGNORE_INDEX
    whole = ((hits | ~labelled).reshape(labels.shape[0], -1).all(1) & labelled.reshape(labels.shape[0], -1).any(1))
    return loss, int(labelled.sum()), int((hits & labelled).sum()), int(whole.sum())
