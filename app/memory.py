"""Measured training memory: weights, gradients, optimizer state, activations saved for backward.

Without a CUDA allocator there is no peak to read, so the parts are measured directly: the
storages of parameters and buffers, of the gradients that backward really allocated, of the
optimizer's state tensors, and of every tensor autograd saves for backward during the forward
pass (through `saved_tensors_hooks`). Each storage is counted once; storages that belong to
parameters are left out of activations (a weight saved for backward is not an activation). What a
language model's loss keeps for backward (`app.lm_loss`: the gradients its chunks computed in the
forward pass, or the states checkpointed chunks recompute from) is its own part, `loss`, so the breakdown shows what the head and cross-entropy cost beside the model's
activations.
The peak estimate is their sum: what is alive at the end of the forward pass of a step once the
optimizer state and gradient buffers exist. On CUDA the allocator's own peak is recorded beside it.
"""

from __future__ import annotations

import contextlib
import math
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

PARTS = ("weights", "quantized", "gradients", "optimizer", "activations", "loss")
LOSS = "loss"

# The part that saved tensors count toward (None: activations), and the meter tracking this thread's
# forward pass, if any. Context variables: each training thread has its own.
_COUNTED_AS: ContextVar[str | None] = ContextVar("counted_as", default=None)
_TRACKING: ContextVar["SavedActivationMeter | None"] = ContextVar("tracking", default=None)


@contextlib.contextmanager
def counted_as(part: str):
    """Tensors saved for backward inside count toward `part` of the breakdown instead of activations."""
    token = _COUNTED_AS.set(part)
    try:
        yield
    finally:
        _COUNTED_AS.reset(token)


def keep_for_backward(*tensors: torch.Tensor) -> None:
    """Count tensors a computation keeps for backward outside autograd's saved tensors, such as the
    inputs activation checkpointing holds to recompute from (its own hooks hide what it saves)."""
    meter = _TRACKING.get()
    if meter is not None:
        for tensor in tensors:
            meter._pack(tensor)


def component_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors that hold a tensor's data: itself, or for a quantized weight its packed data
    and scales (a torchao tensor subclass flattens into them; a bitsandbytes weight carries its scales
    beside it, as `SCB` for int8 and `quant_state` for 4-bit)."""
    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        inner = [getattr(tensor, name) for name in names]
        return [part for t in inner if t is not None for part in component_tensors(t)]
    parts = [tensor]
    scale = getattr(tensor, "SCB", None)
    if isinstance(scale, torch.Tensor):
        parts.append(scale)
    state = getattr(tensor, "quant_state", None)
    while state is not None:
        parts.extend(v for v in vars(state).values() if isinstance(v, torch.Tensor))
        state = getattr(state, "state2", None)
    return parts


def is_quantized(tensor: torch.Tensor) -> bool:
    """Stored in fewer than 8 bits per value plus scales (int8 or packed int4), whatever its dtype says."""
    return is_traceable_wrapper_subclass(tensor) or tensor.dtype in (torch.int8, torch.uint8)


def _storage_key(tensor: torch.Tensor):
    try:
        storage = tensor.untyped_storage()
        if storage.device.type == "meta":
            # Fake and meta tensors (the memory estimate) have no data pointer; the storage object
            # itself identifies them, and views share it just as real views share their memory.
            return ("meta", storage._cdata), storage.nbytes()
        return (storage.device.type, storage.data_ptr()), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # sparse or other storage-less tensors
        return None, 0


def unique_storage_bytes(tensors) -> int:
    seen: dict = {}
    for tensor in tensors:
        if tensor is None:
            continue
        for part in component_tensors(tensor):
            key, nbytes = _storage_key(part)
            if key is not None and key[1] != 0:
                seen[key] = max(seen.get(key, 0), nbytes)
    return sum(seen.values())


@dataclass
class MemorySample:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    cuda_peak: int | None = None
    quantized: int = 0  # frozen weights stored in int8/int4, scales included (not in `weights`)
    loss: int = 0  # what a language model's chunked loss keeps for backward (not in `activations`)

    @property
    def peak(self) -> int:
        return sum(getattr(self, part) for part in PARTS)

    def as_dict(self) -> dict:
        out = {part: getattr(self, part) for part in PARTS}
        out["peak"] = self.peak
        if self.cuda_peak is not None:
            out["cuda_max_allocated"] = self.cuda_peak
        return out


class SavedActivationMeter:
    """Counts the bytes of distinct storages autograd saves for backward inside `track()`."""

    def __init__(self, excluded_keys: set):
        self.excluded = excluded_keys
        self.seen: dict = {}
        self.parts: dict[str, dict] = {}  # storages saved while `counted_as(part)`

    def _pack(self, tensor: torch.Tensor):
        key, nbytes = _storage_key(tensor)
        if key is not None and key not in self.excluded:
            part = _COUNTED_AS.get()
            seen = self.seen if part is None else self.parts.setdefault(part, {})
            if nbytes > seen.get(key, 0):
                seen[key] = nbytes
        return tensor

    @staticmethod
    def _unpack(tensor: torch.Tensor):
        return tensor

    @contextlib.contextmanager
    def track(self):
        self.seen, self.parts = {}, {}
        token = _TRACKING.set(self)
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                yield self
        finally:
            _TRACKING.reset(token)

    @property
    def total(self) -> int:
        """Activations: every storage saved outside a named part (one saved in both counts there)."""
        named = {key for seen in self.parts.values() for key in seen}
        return sum(nbytes for key, nbytes in self.seen.items() if key not in named)

    def part_total(self, part: str) -> int:
        return sum(self.parts.get(part, {}).values())


class MemoryMeter:
    """Measures one training step's memory when asked; costs nothing on the other steps."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device):
        self.model = model
        self.optimizer = optimizer
        self.device = device
        stored = list(model.parameters()) + list(model.buffers())
        self._param_keys = {_storage_key(part)[0] for t in stored for part in component_tensors(t)}
        self._param_keys.discard(None)
        self.quantized = unique_storage_bytes(t for t in stored if is_quantized(t))
        self.weights = unique_storage_bytes(stored) - self.quantized
        self.activations = SavedActivationMeter(self._param_keys)

    @contextlib.contextmanager
    def forward(self, active: bool):
        """Wrap the forward pass of a step; records saved activations when `active`."""
        if not active:
            yield
            return
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with self.activations.track():
            yield

    def gradients_bytes(self) -> int:
        return unique_storage_bytes(p.grad for p in self.model.parameters() if p.grad is not None)

    def optimizer_bytes(self) -> int:
        tensors = []
        for state in self.optimizer.state.values():
            tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
        return unique_storage_bytes(tensors)

    def sample(self, gradients: int) -> MemorySample:
        """Call after the optimizer step; `gradients` was read right after backward."""
        cuda_peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return MemorySample(
            weights=self.weights,
            gradients=gradients,
            optimizer=self.optimizer_bytes(),
            activations=self.activations.total,
            cuda_peak=cuda_peak,
            quantized=self.quantized,
            loss=self.activations.part_total(LOSS),
        )


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Parameters of a model, each shared (tied) tensor counted once."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        state = getattr(p, "quant_state", None)  # packed 4-bit: two values per stored byte
        total += math.prod(state.shape) if state is not None else p.numel()
    return total
