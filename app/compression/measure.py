"""What a compressed model costs and how well it predicts: stored parameters, nonzero weights,
bytes of its saved state, test accuracy (test perplexity for a language model) and CPU latency."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..batching import Batcher
from ..lm_loss import IGNORE_INDEX, chunk_positions, next_token_pairs, perplexity
from ..methods.base import logits_of, model_inputs
from .pruning import Targets
from .quantization import is_dynamic_quantized

SCALE_BYTES = 4  # one fp32 scale per output row of a k-bit matrix


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a saved copy of this model holds, each storage once; a dynamically quantized
    Linear contributes its int8 weight, scale, zero point and fp32 bias."""
    state: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()

    def add(name: str, tensor: torch.Tensor) -> None:
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            return  # tied weights are stored once
        seen.add(key)
        state[name] = tensor.detach().to("cpu").contiguous()

    def add_stored(name: str, tensor: torch.Tensor) -> None:
        """A tensor subclass (torchao's int8 weight) is stored as the plain tensors it holds."""
        if type(tensor) in (torch.Tensor, nn.Parameter) or not hasattr(tensor, "__tensor_flatten__"):
            add(name, tensor)
            return
        for inner in tensor.__tensor_flatten__()[0]:
            part = getattr(tensor, inner)
            if part is not None:
                add_stored(f"{name}_{inner}", part)

    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if is_dynamic_quantized(module):
            weight = module.weight()
            add(prefix + "weight_int8", weight.int_repr())
            if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                add(prefix + "weight_scale", weight.q_per_channel_scales().float())
                add(prefix + "weight_zero_point", weight.q_per_channel_zero_points())
            else:
                add(prefix + "weight_scale", torch.tensor([weight.q_scale()], dtype=torch.float32))
                add(prefix + "weight_zero_point", torch.tensor([weight.q_zero_point()], dtype=torch.int64))
            bias = module.bias()
            if bias is not None:
                add(prefix + "bias", bias)
            continue
        for name, parameter in module.named_parameters(recurse=False):
            add_stored(prefix + name, parameter)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and name not in module._non_persistent_buffers_set:
                add(prefix + name, buffer)
    return state


def saved_bytes(model: nn.Module) -> int:
    """Size of the model's state written as one safetensors file (serialised in memory)."""
    return len(safetensors_bytes(state_tensors(model)))


def packed_kbit_bytes(model: nn.Module, targets: Targets, bits: int) -> int:
    """Bytes the saved state would take with the target weights packed at `bits` bits each plus
    one fp32 scale per output row; every other tensor at its stored size. Computed, not written:
    safetensors has no sub-byte type."""
    target_names = {f"{name}.weight" for name, _ in targets.modules}
    total = 0
    for name, tensor in state_tensors(model).items():
        if name in target_names:
            total += (tensor.numel() * bits + 7) // 8 + tensor.shape[0] * SCALE_BYTES
        else:
            total += tensor.numel() * tensor.element_size()
    return total


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(stored parameters, nonzero parameters); an int8 weight counts as its number of entries."""
    total = nonzero = 0
    for name, tensor in state_tensors(model).items():
        if name.endswith(("weight_scale", "weight_zero_point")):
            continue  # quantization metadata, not model parameters
        total += tensor.numel()
        nonzero += int(torch.count_nonzero(tensor))
    return total, nonzero


@torch.inference_mode()
def test_logits(model: nn.Module, tensors: dict, *, batch_size: int = 64,
                check_cancel: Callable[[], None] = lambda: None, batcher: Batcher = Batcher()) -> torch.Tensor:
    """fp32 logits of every example of a split, in the split's order."""
    model.eval()
    out: torch.Tensor | None = None
    for batch in batcher.in_order(tensors, batch_size):
        check_cancel()
        logits = logits_of(model(**model_inputs(batch))).float()
        if out is None:
            out = logits.new_empty((len(tensors["labels"]), logits.shape[-1]))
        out[batch["index"]] = logits
    return out


# (model, batch) -> (final states, the head that reads them): how a run's method reads its language model
LanguageModelOutputs = Callable[[nn.Module, dict], tuple[torch.Tensor, nn.Module]]


@torch.inference_mode()
def language_model_scores(model: nn.Module, reference: nn.Module, tensors: dict, outputs_of: LanguageModelOutputs, *,
                          batch_size: int = 16, check_cancel: Callable[[], None] = lambda: None,
                          batcher: Batcher = Batcher()) -> dict:
    """A language model's test scores over a split's labelled tokens, against the uncompressed
    `reference` run on the same batches: perplexity, token accuracy, the share of next tokens
    predicted as the reference predicts them, and the logits' mean relative L2 change. The two
    models' logits are compared chunk by chunk, so no split's worth of vocabulary-wide logits is kept."""
    model.eval()
    reference.eval()
    loss = drift = 0.0
    labelled = hits = agreed = nonfinite = 0
    for batch in batcher.in_order(tensors, batch_size):
        check_cancel()
        states, head = outputs_of(model, batch)
        reference_states, reference_head = (states, head) if model is reference else outputs_of(reference, batch)
        states, targets = next_token_pairs(states, batch["labels"])
        keep = targets != IGNORE_INDEX
        states, targets, reference_states = states[keep], targets[keep], next_token_pairs(
            reference_states, batch["labels"])[0][keep]
        size = chunk_positions(head.out_features)
        for start in range(0, len(targets), size):
            logits = head(states[start:start + size]).float()
            expected = reference_head(reference_states[start:start + size]).float()
            part = targets[start:start + size]
            finite = torch.isfinite(logits).all(-1)
            nonfinite += int((~finite).sum())
            loss += float(F.cross_entropy(logits, part, reduction="sum"))
            hits += int((logits.argmax(-1) == part).sum())
            agreed += int((logits.argmax(-1) == expected.argmax(-1)).sum())
            drift += float(((logits - expected).norm(dim=-1) / expected.norm(dim=-1).clamp_min(1e-12)).sum())
        labelled += len(targets)
    count = max(labelled, 1)
    return {"test_perplexity": perplexity(loss / count), "test_token_accuracy": hits / count,
            "agreement": agreed / count, "logit_drift": None if nonfinite else drift / count,
            "test_tokens": labelled, "nonfinite_tokens": nonfinite}


def logit_drift(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over examples of |logits - reference| / |reference| (L2 norms): how far compression
    moved the model's outputs, visible even when the predicted classes stay the same."""
    return float(((logits - reference).norm(dim=-1) / reference.norm(dim=-1).clamp_min(1e-12)).mean())


def latency_batch(tensors: dict, batch_size: int, batcher: Batcher = Batcher("max")) -> dict:
    """The first `batch_size` test examples (repeated when the split is smaller), padded as the run
    pads: to their own longest example with dynamic padding, to the run's max length otherwise."""
    n = len(tensors["labels"])
    index = torch.arange(batch_size) % n
    return model_inputs(batcher.batch(tensors, index))


def forward_pass(model: nn.Module, batch: dict):
    return model(**batch)


def language_model_pass(outputs_of: LanguageModelOutputs) -> Callable[[nn.Module, dict], torch.Tensor]:
    """A language model's forward pass as generation runs it over a prompt: every position's state,
    and the next token's scores at the last position only."""
    def run(model: nn.Module, batch: dict) -> torch.Tensor:
        states, head = outputs_of(model, batch)
        return head(states[:, -1])
    return run


@torch.inference_mode()
def latency_ms(model: nn.Module, batch: dict, *, repeats: int, warmup: int,
               check_cancel: Callable[[], None] = lambda: None, run=forward_pass) -> tuple[float, list[float]]:
    """Median wall time of one forward pass over `batch`, after `warmup` untimed passes."""
    model.eval()
    for _ in range(warmup):
        check_cancel()
        run(model, batch)
    times = []
    for _ in range(repeats):
        check_cancel()
        start = time.perf_counter()
        run(model, batch)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times), times


@torch.inference_mode()
def paired_latency_ms(model: nn.Module, reference: nn.Module, batch: dict, *, repeats: int, warmup: int,
                      check_cancel: Callable[[], None] = lambda: None,
                      run=forward_pass) -> tuple[float, float, list[float]]:
    """Median wall time of one forward pass of `model` and of `reference`, timed in alternating
    passes so that load from other programs on a shared machine falls on both alike: their ratio
    is the speed-up, not the medians taken minutes apart. Returns (model ms, reference ms, model runs)."""
    model.eval()
    reference.eval()
    for _ in range(warmup):
        check_cancel()
        run(model, batch)
        run(reference, batch)
    times, reference_times = [], []
    for round_index in range(repeats):
        check_cancel()
        order = (model, reference) if round_index % 2 == 0 else (reference, model)
        for which in order:
            start = time.perf_counter()
            run(which, batch)
            elapsed = (time.perf_counter() - start) * 1000.0
            (times if which is model else reference_times).append(elapsed)
    return statistics.median(times), statistics.median(reference_times), times
