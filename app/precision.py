"""The frozen backbone's storage precision (`backbone_precision`): fp32, bf16, int8 or int4.

Only weights that never train change: every linear layer whose weight is frozen once the method has
chosen its trainable parameters takes the precision, and frozen embedding tables go to bf16 with any
precision below fp32 (QLoRA keeps them in its 16-bit compute dtype too; quantizing a lookup table
saves little and costs accuracy). Trainable tensors (side networks, adapters, low-rank factors,
biases, heads) and norms stay fp32.

Which library stores what (kernels come from these libraries; the lab writes none):
- bf16: the weight is cast; the layer casts its input to bf16 and its output back.
- int8, forward only (LST's backbone runs without autograd): torchao's dynamic int8 (int8 weights
  with one scale per output row, activations quantized per token), whose CPU kernels run faster
  than fp32's.
- int8 where backprop crosses the frozen layers (LoRA, adapters, BitFit, prompts): bitsandbytes'
  `Linear8bitLt` (LLM.int8 storage, one scale per row). torchao's int8 weight-only tensor would
  keep a dequantized fp32 copy of every weight for backward, more than the fp32 layer keeps.
- int4, everywhere: bitsandbytes' NF4 `Linear4bit` with double-quantized block scales (QLoRA's
  format), on CUDA and on the CPU.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

PRECISIONS = ("fp32", "bf16", "int8", "int4")
QUANTIZED = ("int8", "int4")
NF4_BLOCK = 64  # weights per absmax scale (bitsandbytes' 4-bit default)
NF4_STATE_BLOCK = 256  # absmax values per second-level scale (double quantization)
NF4_CODE_BYTES = 16 * 4  # the 16 NF4 levels, float32, kept with every weight
NF4_STATE_CODE_BYTES = 256 * 4  # the 8-bit map of the double-quantized scales, float32
NF4_OFFSET_BYTES = 4
LIBRARY = {
    ("int8", True): "torchao dynamic int8",
    ("int8", False): "bitsandbytes Linear8bitLt",
    ("int4", True): "bitsandbytes NF4",
    ("int4", False): "bitsandbytes NF4",
    ("bf16", True): "torch bf16",
    ("bf16", False): "torch bf16",
}


def allowed_precisions(method) -> tuple[str, ...]:
    """The precisions a method's frozen weights may take."""
    if method.trains_side_network or method.backprop_crosses_frozen_backbone:
        return PRECISIONS
    return ("fp32",)


def check_precision(method, precision: str, device: torch.device | None = None) -> None:
    """Refuse, before anything is stored, a precision this method or device cannot run."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown backbone_precision '{precision}': use {', '.join(PRECISIONS)}")
    allowed = allowed_precisions(method)
    if precision not in allowed:
        raise ConfigError(
            f"{method.title} trains every weight it keeps, so there is no frozen backbone to store in {precision}: "
            "backbone_precision applies to methods that keep a frozen backbone (a side network beside it, or "
            "adapters, low-rank updates, biases or prompts trained through it); use bf16 autocast for the rest")
    if precision in QUANTIZED and device is not None and device.type not in ("cpu", "cuda"):
        raise ConfigError(f"backbone_precision {precision} runs on cpu and cuda (torchao, bitsandbytes), not "
                          f"{device.type}")
    if precision in QUANTIZED:
        library_of(precision, forward_only=bool(method.trains_side_network))  # importable, or a clear error


def library_of(precision: str, *, forward_only: bool):
    """The library module that stores int8/int4; a clear error when it is not installed."""
    name = "torchao" if (precision, forward_only) == ("int8", True) else "bitsandbytes"
    try:
        with quiet_import():
            if name == "torchao":
                import torchao.quantization as module
            else:
                import bitsandbytes as module
    except ImportError as error:
        raise ConfigError(f"backbone_precision {precision} needs {name} (pip install -r requirements.txt): {error}") \
            from error
    return module


# Import-time chatter of bitsandbytes (its optional CUDA and hub kernels) that says nothing about a run;
# torchao's and torch's own are silenced for good below.
IMPORT_LOGGERS = ("bitsandbytes",)
# peft imports torchao by itself whenever it is installed, outside `quiet_import`: torchao then reports
# its CUDA-only extensions missing on a CPU build, and registers enums with torch's pytree, which torch
# 2.13 answers with a deprecation line. Neither says anything a user can act on.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
# bitsandbytes' int8 matmul logs on every call that it quantizes the input through fp16 (LLM.int8's
# design: it takes fp16 activations; docs/precision.md states it once instead), and its CPU backend
# logs, wherever peft imports it, that an optional kernel from a model hub is not installed.
for _name in ("bitsandbytes.autograd._functions", "bitsandbytes.backends.cpu.ops"):
    logging.getLogger(_name).setLevel(logging.ERROR)


@contextlib.contextmanager
def quiet_import():
    loggers = [logging.getLogger(name) for name in IMPORT_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def is_transposed_linear(module: nn.Module) -> bool:
    """GPT-2's `Conv1D`: a linear layer that keeps its weight as (in, out)."""
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None \
        and module.weight.ndim == 2


def as_linear(layer: nn.Module) -> nn.Linear:
    """The same function as an `nn.Linear` (weight transposed once); the bias Parameter is kept."""
    in_features, out_features = layer.weight.shape
    linear = nn.Linear(in_features, out_features, bias=False, device="meta")
    linear.weight = nn.Parameter(layer.weight.data.t().contiguous(), requires_grad=False)
    linear.bias = layer.bias
    return linear


def output_heads(model: nn.Module) -> list[nn.Linear]:
    """A language model's LM heads: linear layers that share an embedding table's weight (tied), or that
    a model names as its output embeddings."""
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    heads = {id(m): m for m in model.modules() if isinstance(m, nn.Linear) and id(m.weight) in tied}
    for module in model.modules():
        named = getattr(module, "get_output_embeddings", None)
        head = named() if callable(named) else None
        if isinstance(head, nn.Linear):
            heads[id(head)] = head
    return list(heads.values())


def frozen_linears(model: nn.Module, trainable_ids: set[int]) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) for every linear layer whose weight is frozen, LM heads aside (they
    read the embedding space and are stored as the embeddings are, see `embeddings_to_bf16`); GPT-2's
    transposed layers become `nn.Linear` first, so that every library sees the layout it knows."""
    found = []
    heads = {id(head) for head in output_heads(model)}
    for parent in list(model.modules()):
        for attribute, child in list(parent.named_children()):
            if id(getattr(child, "weight", None)) in trainable_ids or id(child) in heads:
                continue
            if is_transposed_linear(child):
                child = as_linear(child)
                setattr(parent, attribute, child)
            if type(child) in (nn.Linear, Bf16Linear):
                found.append((parent, attribute, child))
    return found


class Bf16Embedding(nn.Embedding):
    """A frozen embedding table stored in bf16 (as QLoRA keeps it beside its 4-bit layers); answers in
    fp32, the dtype of the rest of the model."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids).to(torch.float32)


def check_layers_found(layers: list, precision: str) -> None:
    if not layers:
        raise ConfigError(f"this model has no frozen linear layer to store in {precision}: the libraries quantize "
                          "nn.Linear layers (and GPT-2's Conv1D), and its frozen layers are neither")


def embeddings_to_bf16(model: nn.Module, trainable: list) -> None:
    """Frozen embedding tables, and the frozen LM heads that read their space (often the same tensor),
    to bf16, in place (any precision below fp32 does this). An LM head is never quantized, as
    bitsandbytes' own loaders keep `lm_head` out: backprop crosses it to every method's trained part,
    and its logits decide every generated token."""
    trainable_ids = {id(p) for _, p in trainable}
    heads = output_heads(model)
    for module in model.modules():
        if type(module) is nn.Embedding and id(module.weight) not in trainable_ids:
            module.weight.data = module.weight.data.to(torch.bfloat16)
            module.__class__ = Bf16Embedding
    for head in heads:
        if type(head) is nn.Linear and id(head.weight) not in trainable_ids:
            head.weight.data = head.weight.data.to(torch.bfloat16)
            head.__class__ = Bf16Linear


class Bf16Linear(nn.Linear):
    """A frozen linear layer stored in bf16 inside an fp32 model: computes in bf16, answers in the
    input's dtype; a bias (trainable under BitFit) stays fp32 and is added after."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x.to(self.weight.dtype), self.weight).to(x.dtype)
        return out if self.bias is None else out + self.bias.to(x.dtype)


def apply_backbone_precision(model: nn.Module, precision: str, trainable: list, *, forward_only: bool,
                             device: torch.device) -> int:
    """Store the model's frozen linear weights in `precision`, in place; returns how many layers
    changed. `trainable` lists the (name, parameter) pairs that train; their objects stay the same."""
    if precision == "fp32":
        return 0
    trainable_ids = {id(p) for _, p in trainable}
    layers = frozen_linears(model, trainable_ids)
    check_layers_found(layers, precision)
    embeddings_to_bf16(model, trainable)
    if precision == "bf16":
        for _parent, _attribute, layer in layers:
            layer.weight.data = layer.weight.data.to(torch.bfloat16)
            layer.__class__ = Bf16Linear
        return len(layers)
    library = library_of(precision, forward_only=forward_only)
    if precision == "int8" and forward_only:
        chosen = {id(layer) for _, _, layer in layers}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            library.quantize_(model, library.Int8DynamicActivationInt8WeightConfig(),
                              filter_fn=lambda module, _name: id(module) in chosen)
        return len(layers)
    for parent, attribute, layer in layers:
        setattr(parent, attribute, _bitsandbytes_layer(library, layer, precision, device))
    return len(layers)


def _bitsandbytes_layer(bnb, layer: nn.Linear, precision: str, device: torch.device) -> nn.Module:
    bias = layer.bias
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if precision == "int4":
            new = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=False, compute_dtype=torch.float32,
                                    quant_type="nf4", compress_statistics=True, device="meta")
            new.weight = bnb.nn.Params4bit(layer.weight.data.to("cpu"), requires_grad=False, quant_type="nf4",
                                           compress_statistics=True, blocksize=NF4_BLOCK)
        else:
            new = bnb.nn.Linear8bitLt(layer.in_features, layer.out_features, bias=False, has_fp16_weights=False,
                                      threshold=0.0, device="meta")
            new.weight = bnb.nn.Int8Params(layer.weight.data.to("cpu"), requires_grad=False, has_fp16_weights=False)
        if precision == "int4":
            # On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight for inference the first time
            # it runs in eval mode without autograd, for good: every later training step then takes a
            # kernel without a backward, and nothing before the layer gets a gradient again (measured
            # here: LoRA's updates stopped after the first validation pass). Kept off.
            new.support_avx512bf16_for_cpu = False
        new = new.to(device)  # bitsandbytes quantizes as the weight moves to its device
    new.bias = bias  # the same Parameter: BitFit trains it, and the optimizer holds this object
    return new


def precision_summary(precision: str, method, layers: int) -> dict:
    """What a run records about its frozen weights' storage."""
    if precision == "fp32":
        return {"precision": "fp32", "layers": 0, "library": "torch"}
    return {"precision": precision, "layers": layers,
            "library": LIBRARY[(precision, bool(method.trains_side_network))]}


# --- bytes of quantized storage, for the estimate (no library runs on fake tensors) ----------------------

def quantized_linear_bytes(precision: str, in_features: int, out_features: int, *, forward_only: bool) -> int:
    """Bytes one frozen linear weight holds in `precision` (data and scales, bias excluded), as the
    library stores it; tests check the formula against real layers."""
    numel = in_features * out_features
    if precision == "fp32":
        return numel * 4
    if precision == "bf16":
        return numel * 2
    if precision == "int8":
        if forward_only:  # torchao: int8 data, a float32 scale and an int8 zero point per row
            return numel + out_features * 4 + out_features
        return numel + out_features * 4  # bitsandbytes: int8 data and a float32 scale per row
    if precision == "int4":
        blocks = math.ceil(numel / NF4_BLOCK)
        return (math.ceil(numel / 2) + blocks + math.ceil(blocks / NF4_STATE_BLOCK) * 4
                + NF4_CODE_BYTES + NF4_STATE_CODE_BYTES + NF4_OFFSET_BYTES)
    raise ConfigError(f"unknown backbone_precision '{precision}'")


def quantized_weight_bytes(model: nn.Module, precision: str, trainable: list, *, forward_only: bool) -> tuple[int, int]:
    """(bytes the frozen linear weights hold now, bytes they would hold in `precision`) for int8/int4;
    (0, 0) otherwise. Works on fake tensors: only shapes are read."""
    if precision not in QUANTIZED:
        return 0, 0
    found = frozen_linears(model, {id(p) for _, p in trainable})
    check_layers_found(found, precision)
    layers = {id(layer.weight): layer for _, _, layer in found}
    now = sum(layer.weight.numel() * layer.weight.element_size() for layer in layers.values())
    after = sum(quantized_linear_bytes(precision, layer.in_features, layer.out_features, forward_only=forward_only)
                for layer in layers.values())
    return now, after
