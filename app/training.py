"""Preparing and running one training run: checks first, then the loop that records everything.

`prepare_run` resolves the backbone, dataset and method and rejects bad input before a run is
stored. `execute_run` trains a stored run and always leaves it in a final state: `finished`,
`failed` (with its reason and traceback), or `cancelled`.
"""

from __future__ import annotations

import math
import random
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .backbones import Backbone, get_backbone
from .config import RunConfig
from .batching import Batcher, batch_tokens
from .data import ColumnMap, TextDataset, load_dataset, tokenize_split
from .errors import ConfigError, LabError, RunCancelled
from .memory import MemoryMeter
from .methods import create_method
from .methods.base import BuildContext, Method, StepOutput, TrainState
from .pooling import set_decoder_pooling
from .store import RunStore

if TYPE_CHECKING:
    from .distributed import DataParallel

EVAL_TELEMETRY_SAMPLE = 256


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{name}' asked for, but CUDA is not available on this machine")
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device '{name}' does not exist ({torch.cuda.device_count()} CUDA device(s))")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' asked for, but MPS is not available on this machine")
    return torch.device(name)


def check_length_fits(backbone: Backbone, method: Method, max_length: int) -> None:
    """Every input (max_length tokens plus the method's virtual tokens) must fit the backbone's positions."""
    if max_length > backbone.max_length:
        raise ConfigError(
            f"max_length {max_length} is above what backbone '{backbone.name}' accepts ({backbone.max_length})"
        )
    extra_tokens = method.extra_input_tokens()
    if max_length + extra_tokens > backbone.max_length:
        raise ConfigError(
            f"max_length {max_length} plus the {extra_tokens} virtual tokens of method '{method.name}' is above "
            f"what backbone '{backbone.name}' accepts ({backbone.max_length}); lower max_length to at most "
            f"{backbone.max_length - extra_tokens} or use fewer virtual tokens"
        )


def select_trainable(method: Method, model) -> list:
    """The method's trainable (name, parameter) pairs; every other parameter is frozen."""
    named_trainable = method.trainable_parameters(model)
    if not named_trainable:
        raise ConfigError(f"method '{method.name}' left no parameter to train")
    trainable_ids = {id(p) for _, p in named_trainable}
    for p in model.parameters():
        if id(p) not in trainable_ids:
            p.requires_grad_(False)
    return named_trainable


@dataclass
class PreparedRun:
    config: RunConfig
    backbone: Backbone
    dataset: TextDataset
    method: Method
    device: torch.device
    notes: list[str] = field(default_factory=list)

    @property
    def lr(self) -> float:
        return self.config.lr if self.config.lr is not None else self.method.default_lr


def adamw(parameters: list, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only, fused into one kernel where torch can: on MiniLM-L6's
    22.7M parameters the per-tensor update loop costs several times the fused kernel on a CPU
    (transformers' Trainer defaults to the fused one too)."""
    groups = [{"params": [p for p in parameters if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype the fused kernel does not take
        return torch.optim.AdamW(groups, lr=lr)


def check_processes(config: RunConfig, device: torch.device) -> None:
    """A data-parallel run needs a batch to share and, on CUDA, one GPU per process."""
    if config.processes == 1:
        return
    if config.batch_size < config.processes:
        raise ConfigError(f"batch_size {config.batch_size} cannot be shared by {config.processes} processes: "
                          f"use a batch of at least {config.processes}")
    if device.type == "cuda" and torch.cuda.device_count() < config.processes:
        raise ConfigError(f"{config.processes} processes need {config.processes} GPUs; this machine has "
                          f"{torch.cuda.device_count()}")
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(f"data-parallel runs use cuda or cpu, not {device.type}")


def load_run_dataset(config: RunConfig) -> TextDataset:
    return load_dataset(
        config.dataset,
        columns=ColumnMap(config.text_column, config.label_column, config.text_pair_column or None),
        split_seed=config.split_seed,
        max_train_examples=config.max_train_examples,
        max_eval_examples=config.max_eval_examples,
    )


def prepare_run(config: RunConfig | dict, store: RunStore | None = None, *, pending_ids: set[str] = frozenset()) -> PreparedRun:
    """Every check that can be made before training; raises a `LabError` with a clear message."""
    if isinstance(config, dict):
        config = RunConfig.from_dict(config)
    else:
        config.check()
    method = create_method(config.method, config.method_config)
    device = resolve_device(config.device)
    backbone = get_backbone(config.backbone)
    refusal = method.backbone_refusal(backbone)
    if refusal:
        raise ConfigError(refusal)
    check_length_fits(backbone, method, config.max_length)
    dataset = load_run_dataset(config)
    if config.batch_size > len(dataset.train):
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the training set ({len(dataset.train)} examples)"
        )
    check_processes(config, device)
    if config.decoder_pooling != "last" and not backbone.family.causal:
        raise ConfigError(f"decoder_pooling applies to decoder backbones; '{backbone.name}' is an encoder, whose "
                          "classifier pools the way it was pretrained")
    if config.patience and method.stops_early_itself:
        raise ConfigError(f"{method.title} stops early on its own (its 'patience' setting); leave the run's "
                          "patience at 0")
    notes = list(dataset.notes)
    if config.bf16 and device.type != "cuda":
        notes.append("bf16 autocast asked for but ignored: it runs on CUDA only")
    for field_name in method.reference_fields:
        value = getattr(method.config, field_name, None)
        if value:
            from .checkpoints import check_reference

            check_reference(store, value, dataset.label_names, field_name, pending_ids=pending_ids)
    method.check_backbone(backbone, dataset.label_names)
    return PreparedRun(config, backbone, dataset, method, device, notes)


# --- evaluation --------------------------------------------------------------------------


def batcher_for(prepared: "PreparedRun") -> Batcher:
    return Batcher.for_tokenizer(prepared.config.padding, prepared.backbone.tokenizer, prepared.device)


def macro_f1(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> float:
    scores = []
    for c in range(num_labels):
        tp = np.sum((predictions == c) & (labels == c))
        fp = np.sum((predictions == c) & (labels != c))
        fn = np.sum((predictions != c) & (labels == c))
        if tp + fp + fn == 0:
            continue  # a class absent from both predictions and labels does not count
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


@torch.no_grad()
def evaluate(method: Method, model, tensors: dict, *, batch_size: int, device: torch.device, num_labels: int,
             autocast=None, check_cancel: Callable[[], None] = lambda: None, batcher: Batcher = Batcher()) -> dict:
    was_training = model.training
    model.eval()
    losses = []
    predicted_by_index = torch.empty(len(tensors["labels"]), dtype=torch.long)
    try:
        for batch in batcher.in_order(tensors, batch_size, device):
            check_cancel()
            with autocast() if autocast else _null():
                logits = method.predict(model, batch).float()
            losses.append(F.cross_entropy(logits, batch["labels"], reduction="sum").item())
            predicted_by_index[batch["index"]] = logits.argmax(-1).cpu()
    finally:
        model.train(was_training)
    labels = tensors["labels"].numpy()
    predicted = predicted_by_index.numpy()
    return {
        "accuracy": float((predicted == labels).mean()),
        "macro_f1": macro_f1(predicted, labels, num_labels),
        "loss": float(sum(losses) / len(labels)),
        "examples": int(len(labels)),
    }


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --- the loop ----------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then linear decay to 0 at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def count_params(model) -> tuple[int, int]:
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


class EarlyStopping:
    """Asks the loop to stop after `patience` validation passes without a better accuracy, and puts
    the best pass's trainable weights back at the end (ties go to the lower validation loss)."""

    def __init__(self, patience: int, named_trainable: list):
        self.patience = patience
        self.named_trainable = named_trainable
        self.best_key: tuple[float, float] | None = None
        self.best_step: int | None = None
        self.best_weights: list[torch.Tensor] | None = None
        self.passes_without_gain = 0

    def observe(self, model, state: TrainState, metrics: dict) -> None:
        key = (metrics["accuracy"], -metrics["loss"])
        if self.best_key is None or key > self.best_key:
            self.best_key, self.best_step, self.passes_without_gain = key, state.step, 0
            self.best_weights = [p.detach().to("cpu", copy=True) for _, p in self.named_trainable]
            return
        self.passes_without_gain += 1
        if self.passes_without_gain >= self.patience:
            state.stop_requested = True

    def restore_best(self, state: TrainState) -> None:
        if self.best_weights is None or self.best_step == state.step:
            return
        with torch.no_grad():
            for (_, p), best in zip(self.named_trainable, self.best_weights):
                p.copy_(best.to(p.device))
        state.extra["restored_best"] = True

    def summary(self, state: TrainState) -> dict:
        return {"patience": self.patience, "best_step": self.best_step, "stopped_at_step": state.step,
                "best_val_accuracy": self.best_key[0] if self.best_key else None,
                "stopped_early": state.step < state.total_steps}


@dataclass
class LoopHooks:
    """How the caller watches a run: a cancel flag and an optional per-step callback."""

    cancel: threading.Event = field(default_factory=threading.Event)
    on_step: Callable[[int, int, float], None] | None = None
    on_message: Callable[[str], None] | None = None
    # Set when the whole process is stopping: the run ends as interrupted, not cancelled.
    shutdown: threading.Event | None = None
    # How a run in another process hears the app: a file whose text is the status to end with.
    cancel_file: Path | None = None

    def check_cancel(self) -> None:
        if self.shutdown is not None and self.shutdown.is_set():
            raise RunCancelled("the app stopped while this run was training", status="interrupted")
        if self.cancel.is_set():
            raise RunCancelled()
        if self.cancel_file is not None and self.cancel_file.exists():
            if self.cancel_file.read_text(encoding="utf-8").strip() == "interrupted":
                raise RunCancelled("the app stopped while this run was training", status="interrupted")
            raise RunCancelled()


def build_context(prepared: PreparedRun, store: RunStore | None, hooks: LoopHooks, *, restoring: bool = False,
                  label_names: list[str] | None = None) -> BuildContext:
    from .checkpoints import load_reference

    config = prepared.config
    device = prepared.device
    batcher = batcher_for(prepared)

    def train_batches():
        if prepared.dataset is None:
            raise RuntimeError("training batches are not available while restoring a finished run")
        tensors = tokenize_split(prepared.backbone.tokenizer, prepared.dataset, "train", config.max_length)
        generator = torch.Generator().manual_seed(config.seed)
        order = torch.randperm(len(tensors["labels"]), generator=generator)
        for start in range(0, len(order), config.batch_size):
            yield batcher.batch(tensors, order[start : start + config.batch_size], device)

    def validation_batches():
        if prepared.dataset is None:
            raise RuntimeError("validation batches are not available while restoring a finished run")
        tensors = tokenize_split(prepared.backbone.tokenizer, prepared.dataset, "validation", config.max_length)
        yield from batcher.in_order(tensors, max(config.batch_size, 32), device)

    def progress(message: str) -> None:
        hooks.check_cancel()
        if hooks.on_message:
            hooks.on_message(message)

    return BuildContext(
        backbone=prepared.backbone,
        label_names=list(label_names) if label_names is not None else prepared.dataset.label_names,
        device=device,
        seed=config.seed,
        restoring=restoring,
        train_batches=None if restoring else train_batches,
        validation_batches=None if restoring else validation_batches,
        load_reference=lambda ref: load_reference(store, ref, device),
        progress=progress,
        max_length=config.max_length,
        decoder_pooling=config.decoder_pooling,
    )


def train(prepared: PreparedRun, store: RunStore, run_id: str, hooks: LoopHooks | None = None,
          world: "DataParallel | None" = None) -> dict:
    """Train a stored run and record everything; returns the final metrics.

    With `world` (a data-parallel run) every process calls this and trains on its share of every
    batch; only the main process (rank 0) writes the store, evaluates and saves."""
    hooks = hooks or LoopHooks()
    config, method, device = prepared.config, prepared.method, prepared.device
    main = world is None or world.is_main
    processes = world.world_size if world else 1
    if config.processes != processes:
        raise ConfigError(f"this run is set for {config.processes} processes but runs in {processes}; start it "
                          f"with torchrun --nproc_per_node {config.processes} -m app train ...")
    check_cancel = (lambda: world.check_cancel(hooks.check_cancel)) if world else hooks.check_cancel
    seed_everything(config.seed)
    tokenizer = prepared.backbone.tokenizer
    check_cancel()
    train_tensors = tokenize_split(tokenizer, prepared.dataset, "train", config.max_length)
    val_tensors = tokenize_split(tokenizer, prepared.dataset, "validation", config.max_length)
    test_tensors = tokenize_split(tokenizer, prepared.dataset, "test", config.max_length)

    ctx = build_context(prepared, store, hooks)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = set_decoder_pooling(method.build(ctx), ctx.decoder_pooling)
    model.to(device)
    model.train()
    named_trainable = select_trainable(method, model)
    optimizer = adamw([p for _, p in named_trainable], lr=prepared.lr, weight_decay=config.weight_decay)
    warmup = int(round(config.steps * config.warmup_ratio))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, config.steps, warmup))
    trainable, total = count_params(model)
    meter = MemoryMeter(model, optimizer, device)
    use_bf16 = config.bf16 and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else None

    generator = torch.Generator().manual_seed(config.seed)
    draw_generator = torch.Generator().manual_seed(config.seed + 1)
    state = TrainState(step=0, total_steps=config.steps, device=device, generator=draw_generator)
    step_model = world.wrap_step(method, model, state) if world else None
    ranks = world.gather(world.describe()) if world else None

    if main:
        store.merge_summary(
            run_id,
            trainable_params=trainable,
            total_params=total,
            lr=prepared.lr,
            device=str(device),
            bf16=use_bf16,
            backbone=prepared.backbone.info(num_params=None).as_dict(),
            dataset=prepared.dataset.summary(),
            method_config=method.config.as_dict(),
            memory_sampling={
                "every": config.memory_every,
                "note": "measured every step" if config.memory_every == 1
                else f"measured every {config.memory_every} steps (and on the first and last)",
                "method": "saved-tensor hooks + parameter, gradient and optimizer storages"
                + (" + torch.cuda.max_memory_allocated" if device.type == "cuda" else "")
                + ("; per process, the figures shown are rank 0's" if world else ""),
            },
            notes=prepared.notes,
        )
        if world:
            store.merge_summary(run_id, data_parallel={"world_size": world.world_size, "backend": world.backend,
                                                       "ranks": ranks})

    batcher = batcher_for(prepared)
    telemetry_sample = batcher.batch(val_tensors, torch.arange(min(EVAL_TELEMETRY_SAMPLE, len(val_tensors["labels"]))),
                                     device)

    def run_eval(split_tensors, split):
        return evaluate(method, model, split_tensors, batch_size=max(config.batch_size, 32), device=device,
                        num_labels=prepared.dataset.num_labels, autocast=autocast, check_cancel=hooks.check_cancel,
                        batcher=batcher)

    def validation_pass():
        metrics = run_eval(val_tensors, "validation")
        with torch.no_grad():
            was_training = model.training
            model.eval()
            telemetry = method.eval_telemetry(model, telemetry_sample, state)
            model.train(was_training)
        store.log_eval(run_id, state.step, "validation", metrics, telemetry)
        method.after_eval(model, state, metrics)
        if early_stop is not None:
            early_stop.observe(model, state, metrics)
        return metrics

    early_stop = EarlyStopping(config.patience, named_trainable) if config.patience and main else None
    method.on_train_start(model, state)
    peak_sample: dict | None = None
    real_tokens = padded_positions = examples_seen = 0
    step_seconds_total = 0.0
    started = time.perf_counter()
    epoch_batches: list[torch.Tensor] = []
    last_val: dict | None = None
    for step in range(1, config.steps + 1):
        check_cancel()
        if not epoch_batches:
            epoch_batches = batcher.epoch(train_tensors, config.batch_size, generator)[::-1]
            if world:
                epoch_batches = [b for b in epoch_batches if world.usable(b)]
        indices = epoch_batches.pop()
        global_examples = len(indices)
        indices, loss_scale = world.share(indices) if world else (indices, 1.0)
        batch = batcher.batch(train_tensors, indices, device)
        shape = list(batch["input_ids"].shape)
        tokens, positions = batch_tokens(batch)
        state.step = step
        measure = config.memory_every == 1 or step == 1 or step == config.steps or step % config.memory_every == 0

        step_start = time.perf_counter()
        method.on_step_start(model, state)
        with meter.forward(measure), (autocast() if autocast else _null()):
            if step_model is not None:  # DDP averages the gradients while backward runs
                scaled_loss, out = step_model(batch, loss_scale)
            else:
                out: StepOutput = method.training_step(model, batch, state)
                scaled_loss = out.loss
        loss = out.loss
        if not torch.isfinite(loss):
            raise LabError(
                f"the loss became {loss.item()} at step {step}; try a lower learning rate (now {prepared.lr:g})"
            )
        scaled_loss.backward()
        gradient_bytes = meter.gradients_bytes() if measure else 0
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for _, p in named_trainable], config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        loss_value = float(loss.detach())
        if world:  # the global batch's mean loss and its token counts
            loss_sum, tokens, positions = world.total([loss_value * len(indices), tokens, positions])
            loss_value, tokens, positions = loss_sum / global_examples, int(tokens), int(positions)
        step_seconds = time.perf_counter() - step_start
        step_seconds_total += step_seconds
        real_tokens += tokens
        padded_positions += positions
        examples_seen += global_examples

        memory = dict(meter.sample(gradient_bytes).as_dict(), batch_shape=shape) if measure else None
        if memory and (peak_sample is None or memory["peak"] > peak_sample["peak"]):
            peak_sample = dict(memory, step=step)
        telemetry = method.step_telemetry(model, state)
        data = {"step_seconds": step_seconds, "batch_shape": shape, "tokens": tokens,
                "tokens_per_second": tokens / step_seconds if step_seconds > 0 else None}
        if out.terms:
            data["terms"] = out.terms
        if main:
            store.log_step(
                run_id, step,
                elapsed=time.perf_counter() - started,
                loss=loss_value,
                lr=scheduler.get_last_lr()[0],
                examples_per_second=global_examples / step_seconds if step_seconds > 0 else None,
                memory=memory,
                data=data,
                telemetry=telemetry,
                phase=state.phase,
            )
            if hooks.on_step:
                hooks.on_step(step, config.steps, loss_value)
        if step % config.eval_every == 0 or step == config.steps:
            if main:
                last_val = validation_pass()
            if world:  # rank 0 alone evaluated, so it alone may have asked to stop
                state.stop_requested = world.any(state.stop_requested)
        if state.stop_requested:
            break

    method.on_train_end(model, state)
    if early_stop is not None:
        early_stop.restore_best(state)
    train_seconds = time.perf_counter() - started
    rank_peaks = world.gather(peak_summary(peak_sample)) if world else None
    if not main:
        return {}
    if last_val is None or state.extra.get("restored_best"):
        last_val = run_eval(val_tensors, "validation")
    test = run_eval(test_tensors, "test")
    store.log_eval(run_id, state.step, "test", test)
    from .checkpoints import save_checkpoint

    save_checkpoint(store, run_id, method, model, prepared)
    metrics = {
        "val_accuracy": last_val["accuracy"],
        "val_macro_f1": last_val["macro_f1"],
        "val_loss": last_val["loss"],
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "test_loss": test["loss"],
        "steps_done": state.step,
        "train_seconds": train_seconds,
        "steps_per_second": state.step / train_seconds if train_seconds > 0 else None,
        "padding": config.padding,
        # Throughput over the training steps themselves (evaluation passes excluded).
        "examples_per_second": examples_seen / step_seconds_total if step_seconds_total > 0 else None,
        "tokens_per_second": real_tokens / step_seconds_total if step_seconds_total > 0 else None,
        "padding_fraction": 1 - real_tokens / padded_positions if padded_positions else None,
        # throughput on a CPU depends on torch's intra-op threads (one per physical core by default)
        "torch_threads": torch.get_num_threads(),
        **peak_summary(peak_sample),
    }
    if peak_sample:
        metrics["peak_memory_shape"] = peak_sample["batch_shape"]
        metrics["peak_memory_step"] = peak_sample["step"]
    if world:
        metrics["processes"] = world.world_size
        metrics["rank_peak_memory_bytes"] = [peak["peak_memory_bytes"] for peak in rank_peaks]
        store.merge_summary(run_id, data_parallel={
            "world_size": world.world_size, "backend": world.backend,
            "ranks": [dict(rank, **peak) for rank, peak in zip(ranks, rank_peaks)]})
    if early_stop is not None:
        store.merge_summary(run_id, early_stopping=early_stop.summary(state))
    extra_summary = method.run_summary(model)
    if extra_summary:
        store.merge_summary(run_id, method_summary=extra_summary)
    store.update_run(run_id, metrics=metrics)
    return metrics


def peak_summary(peak_sample: dict | None) -> dict:
    """A process's measured peak training memory and its parts (None when nothing was measured)."""
    if not peak_sample:
        return {"peak_memory_bytes": None, "memory_breakdown": None}
    return {"peak_memory_bytes": peak_sample["peak"],
            "memory_breakdown": {k: peak_sample[k] for k in ("weights", "gradients", "optimizer", "activations")},
            **({"cuda_max_allocated_bytes": peak_sample["cuda_max_allocated"]}
               if "cuda_max_allocated" in peak_sample else {})}


OOM_ADVICE = "out of memory: try a smaller batch size or max length, or a method that stores fewer activations (lst)"


def failure_message(exc: BaseException) -> str:
    if isinstance(exc, LabError):
        return str(exc)
    if isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in str(exc).lower() or isinstance(exc, MemoryError)
    )):
        return f"{OOM_ADVICE} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return f"{type(exc).__name__}: {exc}"


def execute_run(store: RunStore, run_id: str, hooks: LoopHooks | None = None, prepared: PreparedRun | None = None,
                world: "DataParallel | None" = None) -> dict:
    """Run a stored run to its end; never raises for a failed run, returns its final record.
    In a data-parallel run, the main process calls this and the others `train` alone."""
    hooks = hooks or LoopHooks()
    reporter = None
    try:
        record = store.get_run(run_id)
        if hooks.cancel.is_set():
            store.set_status(run_id, "cancelled", error="cancelled before it started")
            return store.get_run(run_id)
        store.set_status(run_id, "running")
        if prepared is None:
            prepared = prepare_run(record["config"], store)
        if prepared.config.report_to != "none":
            from .reporting import open_reporter

            reporter = open_reporter(store, run_id, prepared.config)
        train(prepared, reporter.store if reporter else store, run_id, hooks, world)
        store.set_status(run_id, "finished")
    except RunCancelled as stop:
        _final_status(store, run_id, stop.status, stop.reason, None)
    except BaseException as exc:  # a run's failure must never take the process down
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            _final_status(store, run_id, "cancelled", "interrupted from the keyboard", None)
            raise
        reason = world.explain(exc) if world is not None else exc
        _final_status(store, run_id, "failed", failure_message(reason), traceback.format_exc())
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if reporter is not None:
        reporter.close()  # final status, metrics and artifacts; bounded in time, never raises
    try:
        return store.get_run(run_id)
    except Exception:  # the store itself may be what failed
        return {"id": run_id, "status": "failed"}


def _final_status(store: RunStore, run_id: str, status: str, error: str, tb: str | None) -> None:
    try:
        store.set_status(run_id, status, error=error, traceback=tb)
    except Exception as exc:  # the store is unusable (disk full?): say so where someone can see it
        print(f"[lab] could not record run {run_id} as {status}: {exc}; reason: {error}", file=sys.stderr)
