"""Quantizing a trained model: fp16/bf16 casts, dynamic int8 on CPU, and k-bit weight
fake-quantization (8 down to 1 bit) to show where accuracy collapses.

Dynamic int8 comes in two kinds. `int8` uses `torch.ao.quantization.quantize_dynamic` (deprecated in
torch 2.13 but present): Linear weights are stored as int8 with one scale per output row,
activations are quantized on the fly with one scale per batch. `int8_per_token` is torchao's
dynamic int8 (its successor): the same weights, but one activation scale per token, so a few tokens
with huge activations (decoders' feed-forward outputs have them) no longer flatten every other
token's values to a handful of levels. k-bit fake-quant rounds each
target weight to one of 2^k levels and keeps computing in fp32, so it measures accuracy only; its
size is what the packed weights would take, computed rather than written.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from .pruning import Targets, linear_targets

HALF_KINDS = {"fp16": torch.float16, "bf16": torch.bfloat16}
KBIT_KINDS = {"8bit": 8, "4bit": 4, "2bit": 2, "1bit": 1}
PER_TOKEN_INT8 = "int8_per_token"
QUANTIZE_KINDS = ("fp16", "bf16", "int8", PER_TOKEN_INT8, "8bit", "4bit", "2bit", "1bit")


def cast_half(model: nn.Module, kind: str) -> nn.Module:
    return model.to(HALF_KINDS[kind])


def dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy with every nn.Linear replaced by a dynamically quantized int8 Linear (CPU only)."""
    with warnings.catch_warnings():
        # torch 2.13 flags torch.ao.quantization as deprecated; it still works and is the only
        # int8 path for CPU inference without an extra dependency.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
        warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*")
        # One scale per output row, not per matrix: with a single scale, a few large weights in a
        # row set the step for every row, and a fine-tuned MiniLM-L6 lost 1.0-2.5 test points on
        # Rotten Tomatoes (3 seeds); per row it lost -0.3 to 0.7, at the same speed.
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8
        )


def per_token_int8(model: nn.Module) -> nn.Module:
    """A copy with every nn.Linear's weight an int8 tensor of torchao (one scale per output row),
    its input quantized per token at every call."""
    from ..precision import library_of, quiet_import

    torchao = library_of("int8", forward_only=True)
    copied = copy.deepcopy(model)
    with quiet_import():
        torchao.quantize_(copied, torchao.Int8DynamicActivationInt8WeightConfig(),
                          filter_fn=lambda module, _name: isinstance(module, nn.Linear))
    return copied


def is_dynamic_quantized(module: nn.Module) -> bool:
    return isinstance(module, torch.ao.nn.quantized.dynamic.Linear)


def fake_quantize_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric quantization, returned dequantized.

    k >= 2: levels -qmax..qmax with qmax = 2^(k-1) - 1 and scale = max|w| / qmax per row (so 2 bits
    is ternary {-s, 0, s}). k = 1: binary, sign(w) * mean|w| per row.
    """
    w = weight.detach().float()
    if bits == 1:
        scale = w.abs().mean(dim=1, keepdim=True)
        signs = torch.where(w >= 0, 1.0, -1.0)
        return (signs * scale).to(weight.dtype)
    qmax = 2 ** (bits - 1) - 1
    scale = (w.abs().amax(dim=1, keepdim=True) / qmax).clamp_min(1e-12)
    return (torch.clamp(torch.round(w / scale), -qmax, qmax) * scale).to(weight.dtype)


def fake_quantize(model: nn.Module, bits: int) -> Targets:
    targets = linear_targets(model)
    with torch.no_grad():
        for _, module in targets.modules:
            module.weight.copy_(fake_quantize_weight(module.weight, bits))
    return targets
