"""Training memory before any step: the lab's own meter, run on a model made of fake tensors.

The backbone and method are built exactly as a run builds them (same registry, same build
context, same trainable parameters), but inside `FakeTensorMode`: every tensor has its shape,
dtype and device and no memory behind it. One forward pass under the memory meter's
`saved_tensors_hooks` accounting and one backward pass then give the bytes of saved activations
and of the gradients a real step creates, without computing anything, for any batch and length,
and for backbones too large for this machine (`ConfigBackbone`). Weights are the unique storages
of parameters and buffers; AdamW keeps two fp32-shaped states per trained parameter plus a
4-byte step counter, as `torch.optim.AdamW` does.

The estimate is for the worst batch of a run, `batch_size x max_length` tokens: with dynamic
padding (the default) most batches are shorter and use less. Methods whose steps differ
(Theseus's module replacement) are measured at each kind of step and the largest is reported.
With `bf16` the forward runs under autocast on the estimate's device; on a CPU that is an
approximation of CUDA autocast (other kernels, other casts).

CUDA needs more than the tensors a step holds: the context (kernels, cuBLAS/cuDNN handles) and
the caching allocator's rounding and fragmentation. The `fits` figures add a documented
allowance, `CUDA_CONTEXT_BYTES` plus `ALLOCATOR_SLACK` of the peak; it is taken from what CUDA
setups commonly show, not measured by this lab (`benchmarks/gpu_check.py` measures it on a GPU).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .backbones import Backbone, ConfigBackbone, build_from_config, get_backbone, shapes_only
from .config import RunConfig
from .errors import ConfigError
from .memory import LOSS, PARTS, MemoryMeter, unique_storage_bytes
from .methods import create_method
from .methods.base import BuildContext, Method, Reference, TrainState
from .options import check_bounds
from .pooling import restore_pooling
from .precision import (LIBRARY, QUANTIZED, apply_backbone_precision, check_precision, embeddings_to_bf16,
                        quantized_weight_bytes)
from .preparation import check_length_fits, check_task_fits
from .tasks import CAUSAL_LM, CLASSIFICATION
from .training import select_trainable

GiB = 1024**3
MiB = 1024**2
# Documented allowance, not a measurement of this lab: a CUDA context with PyTorch's kernels
# loaded takes a few hundred MB on current GPUs, and the caching allocator keeps about a tenth
# more than what is allocated once blocks fragment.
CUDA_CONTEXT_BYTES = 512 * MiB
ALLOCATOR_SLACK = 0.10
DEVICE_SIZES_GB = (8, 16, 24, 40, 80)
ADAMW_STATES = 2
ADAMW_STEP_BYTES = 4  # the float32 step counter AdamW keeps per parameter tensor
DEFAULT_LABELS = ("negative", "positive")
WORST_CASE_NOTE = ("worst-case batch: every example padded to max_length; with dynamic padding most batches "
                   "are shorter and use less")
EVERY_STEP_NOTE = "padding = max: every batch is padded to max_length, so every step has this shape and this peak"
BF16_NOTE = ("bf16 autocast estimated approximately: the forward runs under autocast on {device}, whose kernels "
             "and casts differ from CUDA's")


def cuda_requirement(peak_bytes: int) -> int:
    """Device memory a run with this measured peak is expected to need on CUDA."""
    return int(math.ceil(peak_bytes * (1 + ALLOCATOR_SLACK))) + CUDA_CONTEXT_BYTES


def fits_devices(peak_bytes: int) -> dict[str, bool]:
    need = cuda_requirement(peak_bytes)
    return {f"{gb}GB": need <= gb * GiB for gb in DEVICE_SIZES_GB}


@dataclass
class MemoryEstimate:
    backbone: str
    method: str
    batch_size: int
    max_length: int
    input_length: int  # max_length plus the method's virtual tokens
    bf16: bool
    weights: int
    gradients: int
    optimizer: int
    activations: int
    trainable_params: int
    total_params: int
    seconds: float
    step_kind: str  # which kind of step gave the peak
    steps: list[dict] = field(default_factory=list)  # every kind of step measured
    notes: list[str] = field(default_factory=list)
    processes: int = 1  # data-parallel processes; every figure is one process's (one GPU's)
    gradient_buckets: int = 0  # DDP's copy of the gradients, included in `gradients`
    quantized: int = 0  # frozen weights stored in int8/int4 with their scales (not in `weights`)
    backbone_precision: str = "fp32"
    loss: int = 0  # what a language model's chunked loss keeps for backward (not in `activations`)

    @property
    def predicted_peak_bytes(self) -> int:
        return sum(getattr(self, part) for part in PARTS)

    @property
    def breakdown(self) -> dict[str, int]:
        return {part: getattr(self, part) for part in PARTS}

    @property
    def cuda_requirement_bytes(self) -> int:
        return cuda_requirement(self.predicted_peak_bytes)

    @property
    def fits(self) -> dict[str, bool]:
        return fits_devices(self.predicted_peak_bytes)

    def as_dict(self) -> dict:
        out = asdict(self)
        for part in PARTS:
            out.pop(part)
        out.update(
            predicted_peak_bytes=self.predicted_peak_bytes,
            breakdown=self.breakdown,
            cuda_requirement_bytes=self.cuda_requirement_bytes,
            cuda_overhead={"context_bytes": CUDA_CONTEXT_BYTES, "allocator_slack": ALLOCATOR_SLACK,
                           "source": "documented allowance, not measured by this lab"},
            fits=self.fits,
        )
        return out


def _run_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(RunConfig)}


def _check_shape(batch_size: int, max_length: int) -> None:
    fields = _run_fields()
    for name, value in (("batch_size", batch_size), ("max_length", max_length)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{name}' must be a whole number, got {value!r}")
        check_bounds(name, value, fields[name].metadata)


def _check_processes(processes: int, batch_size: int) -> None:
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ConfigError(f"'processes' must be a whole number of at least 1, got {processes!r}")
    if processes > batch_size:
        raise ConfigError(f"{processes} processes cannot share a batch of {batch_size}: each needs at least one example")


def _add_data_parallel(estimate: MemoryEstimate, processes: int, batch_size: int) -> None:
    """DDP (as the lab runs it, `gradient_as_bucket_view` off) reduces gradients through buckets that
    hold a second copy of every trained gradient, alive from the first backward on."""
    estimate.processes = processes
    estimate.gradient_buckets = estimate.gradients
    estimate.gradients *= 2
    for row in estimate.steps:
        row["total"] += row["gradients"]
        row["gradients"] *= 2
    estimate.notes.append(
        f"one of {processes} data-parallel processes: batch {estimate.batch_size} of {batch_size}, and DDP's gradient "
        f"buckets ({estimate.gradient_buckets:,} bytes, a copy of the gradients) counted in gradients"
    )


def _resolve_backbone(backbone) -> Backbone:
    if isinstance(backbone, Backbone):
        return backbone
    if isinstance(backbone, str):
        return get_backbone(backbone)
    if hasattr(backbone, "model_type"):  # a transformers config
        return ConfigBackbone(backbone)
    raise ConfigError(f"backbone must be a name, a Backbone or a transformers config, got {type(backbone).__name__}")


def _reference_loader(backbone: Backbone, label_names: list[str], notes: list[str], task: str = CLASSIFICATION):
    """Predecessors and teachers as shapes: a model folder's config when one is named, else a
    classifier (or, on causal-lm, a language model) of the backbone's shape (what a run fine-tuned
    from this backbone is)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    def load(value: str) -> Reference:
        folder = Path(str(value)).expanduser()
        has_config = bool(value) and (folder / "config.json").is_file()
        if task == CAUSAL_LM:
            if has_config:
                model = build_from_config(AutoModelForCausalLM,
                                          AutoConfig.from_pretrained(str(folder), trust_remote_code=False))
            else:
                notes.append(f"reference '{value}' estimated as a language model of the backbone's shape")
                model = backbone.load_for_causal_lm()  # inside shapes_only: built, not loaded
            return Reference(model=model.eval(), label_names=[], source=str(value), plain_model=model)
        if has_config:
            config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
            if getattr(config, "pad_token_id", None) is None:
                config.pad_token_id = backbone.pad_token_id  # what a decoder run's classifier carries
            model = build_from_config(
                AutoModelForSequenceClassification, config, num_labels=len(label_names),
                id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)},
            )
            restore_pooling(model)
        else:
            notes.append(f"reference '{value}' estimated as a classifier of the backbone's shape")
            model = backbone.load_for_classification(label_names)  # inside shapes_only: built, not loaded
        model.eval()
        return Reference(model=model, label_names=list(label_names), source=str(value), plain_model=model)

    return load


def _to_fake(model: torch.nn.Module, mode, device: torch.device) -> None:
    """Swap every meta parameter and buffer for a fake tensor on `device`; a tensor shared by
    several modules (tied weights, shared embeddings) stays one shared tensor."""
    converter = mode.fake_tensor_converter
    done: dict[int, torch.Tensor] = {}

    def fake(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in done:
            value = converter.from_meta_and_device(mode, tensor.detach(), device)
            if isinstance(tensor, torch.nn.Parameter):
                value = torch.nn.Parameter(value, requires_grad=tensor.requires_grad)
            done[id(tensor)] = value
        return done[id(tensor)]

    for module in model.modules():
        for name, tensor in list(module._parameters.items()):
            if tensor is not None:
                module._parameters[name] = fake(tensor)
        for name, tensor in list(module._buffers.items()):
            if tensor is not None:
                module._buffers[name] = fake(tensor)


def _synthetic_batch(backbone: Backbone, batch_size: int, length: int, device: torch.device,
                     task: str = CLASSIFICATION) -> dict:
    """A full batch of the worst shape; values do not matter to fake tensors. A causal-LM batch has a
    label at every position (packed text: the loss reads every token)."""
    batch = {
        "input_ids": torch.ones(batch_size, length, dtype=torch.long, device=device),
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long, device=device),
    }
    names = getattr(backbone.tokenizer, "model_input_names", None)
    wants_types = ("token_type_ids" in names) if names is not None else getattr(backbone.config, "type_vocab_size", 0) > 1
    if wants_types:
        batch["token_type_ids"] = torch.zeros(batch_size, length, dtype=torch.long, device=device)
    label_shape = (batch_size, length) if task == CAUSAL_LM else (batch_size,)
    batch["labels"] = torch.zeros(label_shape, dtype=torch.long, device=device)
    batch["index"] = torch.arange(batch_size)
    return batch


def estimate_memory(backbone, method: str | Method, batch_size: int, max_length: int,
                    method_config: dict | None = None, *, bf16: bool = False,
                    label_names: list[str] | None = None, device: str | torch.device = "cpu",
                    seed: int = 0, extrapolate: bool = True, processes: int = 1,
                    padding: str = "dynamic", backbone_precision: str = "fp32",
                    task: str = CLASSIFICATION) -> MemoryEstimate:
    """Predicted training memory of one run's worst step; raises `LabError` on bad input.

    `padding` says which batches have this shape: with "max" every one, with "dynamic" the longest.
    With `processes` > 1 the figures are one data-parallel process's: its share of the batch, and
    the gradient buckets DDP allocates beside the gradients.

    With `extrapolate` (the default), a deep backbone under a method whose memory grows by the same
    amount per layer is stepped at `LAYER_PROBES` layers and extended to its depth, exactly (the
    probes must agree on one per-layer amount, else the step runs at full depth)."""
    started = time.perf_counter()
    _check_shape(batch_size, max_length)
    _check_processes(processes, batch_size)
    check_bounds("padding", padding, _run_fields()["padding"].metadata)
    method_obj = method if isinstance(method, Method) else create_method(method, method_config)
    backbone_obj = _resolve_backbone(backbone)
    labels = [] if task == CAUSAL_LM else list(label_names or DEFAULT_LABELS)  # a language model has no classes
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # where model.to("cuda") puts a run
    for field_name in method_obj.reference_fields:
        if not getattr(method_obj.config, field_name, None):
            # Nothing to load yet: a run fine-tuned from this backbone has the backbone's shape.
            setattr(method_obj.config, field_name, "backbone-shaped")
    check_length_fits(backbone_obj, method_obj, max_length)
    method_obj.check_backbone(backbone_obj, labels)
    check_task_fits(backbone_obj, method_obj, task)
    check_precision(method_obj, backbone_precision, device)
    shape = dict(batch_size=-(-batch_size // processes), max_length=max_length, bf16=bf16, labels=labels, device=device,
                 seed=seed, precision=backbone_precision, task=task)
    estimate = None
    probes = _layer_probes(backbone_obj) if extrapolate and method_obj.memory_affine_in_layers() else None
    if probes:
        measured = [_step_estimate(probe, copy.deepcopy(method_obj), **shape) for probe in probes]
        estimate = _extend_to_depth(measured, _layer_count(backbone_obj.config))
    if estimate is None:
        estimate = _step_estimate(backbone_obj, method_obj, **shape)
    estimate.backbone = backbone_obj.name
    if padding == "max":
        estimate.notes[0] = EVERY_STEP_NOTE
    if processes > 1:
        _add_data_parallel(estimate, processes, batch_size)
    estimate.seconds = time.perf_counter() - started
    return estimate


# A deep stack is estimated from these depths: three, so that two differences can be compared.
LAYER_PROBES = (1, 2, 3)
# Below this depth stepping the whole stack costs about what the three probes (6 layers) cost.
EXTRAPOLATE_FROM_LAYERS = 8
EXTENDED = (*PARTS, "trainable_params", "total_params")


def _layer_count(config) -> int:
    return int(getattr(config, "num_hidden_layers", 0) or 0)


def _with_layers(config, layers: int):
    """The config with its first `layers` layers, or None when its layers are not all alike (a
    per-layer list such as `layer_types` with more than one value)."""
    count = _layer_count(config)
    probe = copy.deepcopy(config)
    for name, value in vars(config).items():
        if isinstance(value, (list, tuple)) and len(value) == count:
            if len({repr(item) for item in value}) > 1:
                return None
            setattr(probe, name, type(value)(value[:layers]))
    probe.num_hidden_layers = layers
    return probe


def _layer_probes(backbone: Backbone) -> list[Backbone] | None:
    if _layer_count(backbone.config) < EXTRAPOLATE_FROM_LAYERS:
        return None
    probes = []
    for layers in LAYER_PROBES:
        config = _with_layers(backbone.config, layers)
        if config is None:
            return None
        probe = copy.copy(backbone)
        probe.config = config
        probes.append(probe)
    return probes


def _extend_to_depth(measured: list[MemoryEstimate], layers: int) -> MemoryEstimate | None:
    """The estimate at `layers` layers from estimates at `LAYER_PROBES` layers, when every figure grows
    by one fixed amount per layer; None when the probes disagree."""
    first = measured[0]
    if any(len(m.steps) != 1 for m in measured):
        return None
    per_layer = {}
    for name in EXTENDED:
        a, b, c = (getattr(m, name) for m in measured)
        if b - a != c - b:
            return None
        per_layer[name] = b - a
    extra = layers - LAYER_PROBES[0]
    values = {name: getattr(first, name) + extra * per_layer[name] for name in EXTENDED}
    steps = [{**row, **{k: values[k] for k in PARTS}}
             for row in first.steps[:1]]
    for row in steps:
        row["total"] = sum(row[k] for k in PARTS)
    notes = first.notes + [f"stepped at {', '.join(map(str, LAYER_PROBES))} layers and extended to {layers}: "
                           f"every layer adds the same {sum(per_layer[k] for k in PARTS):,} bytes (exact: the probes "
                           "agree on it)"]
    return dataclasses.replace(first, **values, steps=steps, notes=notes)


def _step_estimate(backbone_obj: Backbone, method_obj: Method, *, batch_size: int, max_length: int, bf16: bool,
                   labels: list[str], device: torch.device, seed: int, precision: str = "fp32",
                   task: str = CLASSIFICATION) -> MemoryEstimate:
    """One fake training step (of each kind the method has) at full size."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    notes: list[str] = [WORST_CASE_NOTE]
    steps: list[dict] = []
    meta = torch.device("meta")
    # Built on the meta device (shapes only, nothing allocated, any size), then every parameter
    # and buffer becomes a fake tensor on the device the run would use, so each operator picks
    # the same kernel (and saves the same tensors) as it would there.
    with meta, shapes_only(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ctx = BuildContext(
            backbone=backbone_obj, label_names=labels, device=meta, seed=seed,
            load_reference=_reference_loader(backbone_obj, labels, notes, task), max_length=max_length,
            shapes_only=True, task=task,
        )
        model = method_obj.build(ctx)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        _to_fake(model, mode, device)
        model.train()
        named_trainable = select_trainable(method_obj, model)
        # bf16 runs as it would (fake tensors take any dtype); int8/int4 libraries do not run on fake
        # tensors, so their linear layers keep fp32 here (embeddings go to bf16 as in a run) and the bytes
        # they would hold replace fp32's below (they save nothing for backward that the fp32 layer does
        # not: tests compare with real runs).
        if precision in QUANTIZED:
            embeddings_to_bf16(model, named_trainable)
        else:
            apply_backbone_precision(model, precision, named_trainable, forward_only=method_obj.trains_side_network,
                                     device=device)
        replaced, quantized = quantized_weight_bytes(model, precision, named_trainable,
                                                     forward_only=method_obj.trains_side_network)
        meter = MemoryMeter(model, optimizer=None, device=torch.device("cpu"))
        input_length = max_length + method_obj.extra_input_tokens()
        batch = _synthetic_batch(backbone_obj, batch_size, max_length, device, task)
        state = TrainState(step=1, total_steps=2, device=device, generator=torch.Generator().manual_seed(seed),
                           shapes_only=True)
        use_autocast = bf16
        if bf16:
            notes.append(BF16_NOTE.format(device=device.type))
        stepped: dict[int, torch.nn.Parameter] = {}
        for kind in method_obj.estimate_steps(model, state):
            with meter.activations.track():
                if use_autocast:
                    with torch.autocast(device.type, dtype=torch.bfloat16):
                        out = method_obj.training_step(model, batch, state)
                else:
                    out = method_obj.training_step(model, batch, state)
            activations, loss = meter.activations.total, meter.activations.part_total(LOSS)
            out.loss.backward()
            gradients = meter.gradients_bytes()
            for _, p in named_trainable:
                if p.grad is not None:
                    stepped[id(p)] = p
                    p.grad = None
            steps.append({"kind": kind, "activations": activations, "loss": loss, "gradients": gradients})
        # AdamW creates its states for every parameter that has had a gradient.
        optimizer = unique_storage_bytes(p for p in stepped.values()) * ADAMW_STATES + ADAMW_STEP_BYTES * len(stepped)
        trainable = sum(p.numel() for _, p in {id(p): (n, p) for n, p in named_trainable}.values())
        total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        weights = meter.weights - replaced
    if precision in QUANTIZED:
        notes.append(f"frozen linear weights as {precision} ({LIBRARY[(precision, method_obj.trains_side_network)]}): "
                     f"{quantized:,} bytes with their scales, by the library's storage layout")
    for row in steps:
        row["optimizer"] = optimizer
        row["weights"] = weights
        row["quantized"] = quantized
        row["total"] = sum(row[part] for part in PARTS)
    worst = max(steps, key=lambda row: row["total"])
    if len(steps) > 1:
        notes.append(f"peak from the step kind '{worst['kind']}' ({len(steps)} kinds measured)")
    return MemoryEstimate(
        backbone=backbone_obj.name, method=method_obj.name, batch_size=batch_size, max_length=max_length,
        input_length=input_length, bf16=bool(bf16), weights=weights, quantized=quantized, backbone_precision=precision,
        gradients=worst["gradients"],
        optimizer=optimizer, activations=worst["activations"], loss=worst["loss"], trainable_params=trainable,
        total_params=total,
        seconds=0.0, step_kind=worst["kind"], steps=steps, notes=notes,
    )


def bert_config(layers: int = 24, hidden: int = 1024, heads: int = 16, intermediate: int = 4096,
                max_positions: int = 512, vocab: int = 30522):
    """A BERT config of any size (BERT-large by default), for estimates of models not on this machine."""
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=intermediate, max_position_embeddings=max_positions, type_vocab_size=2)


def available_memory(device: str | torch.device = "cpu") -> tuple[int | None, str]:
    """Free bytes where a run would train, and where the figure comes from."""
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), f"torch.cuda.mem_get_info({device})"
    try:
        import psutil

        return int(psutil.virtual_memory().available), "available RAM (psutil)"
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "available RAM (/proc/meminfo)"
    except OSError:
        pass
    return None, "unknown"
