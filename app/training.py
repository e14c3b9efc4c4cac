"""The training loop: one stored, prepared run (`app.preparation`) trained step by step, with
everything recorded in the run store as it happens (loss, throughput, measured memory, the
method's telemetry, validation passes) and the final metrics and checkpoint at the end.
`app.runner.execute_run` wraps it with the run's status."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .batching import Batcher, batch_tokens
from .checkpoints import load_reference, save_checkpoint
from .config import RunConfig
from .distributed import DataParallel
from .errors import ConfigError, LabError, RunCancelled
from .generation import generate_text
from .lm_data import generation_prompts
from .lm_loss import causal_lm_sums, perplexity
from .memory import PARTS, MemoryMeter, count_parameters
from .methods.base import BuildContext, Method, StepOutput, TrainState
from .pooling import set_decoder_pooling
from .precision import apply_backbone_precision, precision_summary
from .preparation import PreparedRun, batcher_for
from .store import RunStore

EVAL_TELEMETRY_SAMPLE = 256


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


# --- evaluation --------------------------------------------------------------------------


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
             autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext, check_cancel: Callable[[], None] = lambda: None, batcher: Batcher = Batcher()) -> dict:
    was_training = model.training
    model.eval()
    losses = []
    predicted_by_index = torch.empty(len(tensors["labels"]), dtype=torch.long)
    try:
        for batch in batcher.in_order(tensors, batch_size, device):
            check_cancel()
            with autocast():
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


# What a language model's evaluation scores beyond the loss, stored per split as `val_NAME`, `test_NAME`.
LANGUAGE_MODEL_SCORES = ("perplexity", "token_accuracy", "exact_match")


@torch.no_grad()
def evaluate_language_model(method: Method, model, tensors: dict, *, batch_size: int, device: torch.device,
                            autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                            check_cancel: Callable[[], None] = lambda: None, batcher: Batcher = Batcher(),
                            exact_match_accuracy: bool = False) -> dict:
    """Next-token loss per labelled token, its perplexity, how often the most likely token is the label
    (token accuracy), and how many examples greedy decoding would answer exactly (exact match). With
    `exact_match_accuracy` (text-to-text classification), `accuracy` is the exact match, which compares
    with a classifier's accuracy on the same data; otherwise it is the token accuracy."""
    was_training = model.training
    model.eval()
    loss, tokens, correct, exact = 0.0, 0, 0, 0
    try:
        for batch in batcher.in_order(tensors, batch_size, device):
            check_cancel()
            with autocast():
                hidden, head = method.lm_outputs(model, batch)
                part = causal_lm_sums(hidden, head, batch["labels"])
            loss, tokens, correct, exact = loss + part[0], tokens + part[1], correct + part[2], exact + part[3]
    finally:
        model.train(was_training)
    mean = loss / max(1, tokens)
    examples = int(len(tensors["labels"]))
    token_accuracy, exact_match = correct / max(1, tokens), exact / max(1, examples)
    return {"accuracy": exact_match if exact_match_accuracy else token_accuracy, "macro_f1": None, "loss": mean,
            "perplexity": perplexity(mean), "token_accuracy": token_accuracy,
            "exact_match": exact_match, "tokens": tokens, "examples": examples}


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


class EarlyStopping:
    """Asks the loop to stop after `patience` validation passes without a better accuracy, and puts
    the best pass's trainable weights back at the end (ties go to the lower validation loss). A
    language model is judged by its validation loss (perplexity) first."""

    def __init__(self, patience: int, named_trainable: list, start_fraction: float = 0.0, by_loss: bool = False):
        self.patience = patience
        self.by_loss = by_loss
        self.start_fraction = start_fraction
        self.named_trainable = named_trainable
        self.best_key: tuple[float, float] | None = None
        self.best_step: int | None = None
        self.best_metrics: dict | None = None
        self.best_weights: list[torch.Tensor] | None = None
        self.passes_without_gain = 0

    def observe(self, model, state: TrainState, metrics: dict) -> None:
        key = (-metrics["loss"], metrics["accuracy"]) if self.by_loss else (metrics["accuracy"], -metrics["loss"])
        if self.best_key is None or key > self.best_key:
            self.best_key, self.best_step, self.passes_without_gain = key, state.step, 0
            self.best_metrics = metrics
            self.best_weights = [p.detach().to("cpu", copy=True) for _, p in self.named_trainable]
            return
        self.passes_without_gain += 1
        armed = state.step >= self.start_fraction * state.total_steps
        if self.passes_without_gain >= self.patience and armed:
            state.stop_requested = True

    def restore_best(self, state: TrainState) -> None:
        if self.best_weights is None or self.best_step == state.step:
            return
        with torch.no_grad():
            for (_, p), best in zip(self.named_trainable, self.best_weights):
                p.copy_(best.to(p.device))
        state.extra["restored_best"] = True

    def summary(self, state: TrainState) -> dict:
        return {"patience": self.patience, "patience_from": self.start_fraction, "best_step": self.best_step, "stopped_at_step": state.step,
                "best_val_accuracy": self.best_metrics["accuracy"] if self.best_metrics else None,
                "best_val_loss": self.best_metrics["loss"] if self.best_metrics else None,
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


def build_context(prepared: PreparedRun, store: RunStore | None, hooks: LoopHooks) -> BuildContext:
    """What the method may use while it builds the model of a run about to train."""
    config = prepared.config
    device = prepared.device
    batcher = batcher_for(prepared)

    def train_batches():
        tensors = prepared.tokens("train")
        generator = torch.Generator().manual_seed(config.seed)
        order = torch.randperm(len(tensors["labels"]), generator=generator)
        for start in range(0, len(order), config.batch_size):
            yield batcher.batch(tensors, order[start : start + config.batch_size], device)

    def validation_batches():
        tensors = prepared.tokens("validation")
        yield from batcher.in_order(tensors, max(config.batch_size, 32), device)

    def progress(message: str) -> None:
        hooks.check_cancel()
        if hooks.on_message:
            hooks.on_message(message)

    return BuildContext(
        backbone=prepared.backbone,
        label_names=prepared.label_names,
        device=device,
        seed=config.seed,
        train_batches=train_batches,
        validation_batches=validation_batches,
        load_reference=lambda ref: load_reference(store, ref, device, config.task),
        progress=progress,
        max_length=config.max_length,
        decoder_pooling=config.decoder_pooling,
        task=config.task,
    )


def build_model(prepared: PreparedRun, ctx: BuildContext):
    """The method's model on the run's device, in training mode; new layers draw from the run's seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(prepared.config.seed)
        model = set_decoder_pooling(prepared.method.build(ctx), ctx.decoder_pooling)
    return model.to(prepared.device).train()


def bf16_autocast(config: RunConfig, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast where it was asked for and runs (CUDA), else a context that does nothing."""
    if config.bf16 and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


class TrainingBatches:
    """The training batches in the Batcher's epoch order, epoch after epoch; in a data-parallel run
    each process takes its share of every batch (batches too small to share are skipped)."""

    def __init__(self, batcher: Batcher, tensors: dict, batch_size: int, seed: int, world: DataParallel | None):
        self.batcher, self.tensors, self.batch_size, self.world = batcher, tensors, batch_size, world
        self.generator = torch.Generator().manual_seed(seed)
        self._left: list[torch.Tensor] = []

    def next(self, device: torch.device) -> tuple[dict, int, float]:
        """(this process's batch, examples in the whole batch, the factor this process's loss takes)."""
        if not self._left:
            self._left = self.batcher.epoch(self.tensors, self.batch_size, self.generator)[::-1]
            if self.world:
                self._left = [b for b in self._left if self.world.usable(b)]
        indices = self._left.pop()
        global_examples = len(indices)
        indices, loss_scale = self.world.share(indices) if self.world else (indices, 1.0)
        return self.batcher.batch(self.tensors, indices, device), global_examples, loss_scale


@dataclass
class Tally:
    """Running totals over the training steps (evaluation passes excluded) and the peak memory sample."""

    real_tokens: int = 0
    padded_positions: int = 0
    examples: int = 0
    step_seconds: float = 0.0
    peak_sample: dict | None = None

    def add(self, tokens: int, positions: int, examples: int, seconds: float, memory: dict | None, step: int):
        self.real_tokens += tokens
        self.padded_positions += positions
        self.examples += examples
        self.step_seconds += seconds
        if memory and (self.peak_sample is None or memory["peak"] > self.peak_sample["peak"]):
            self.peak_sample = dict(memory, step=step)

    def throughput(self) -> dict:
        seconds = self.step_seconds
        return {
            "examples_per_second": self.examples / seconds if seconds > 0 else None,
            "tokens_per_second": self.real_tokens / seconds if seconds > 0 else None,
            "padding_fraction": 1 - self.real_tokens / self.padded_positions if self.padded_positions else None,
        }


def check_finite(loss: torch.Tensor, step: int, lr: float) -> None:
    if not torch.isfinite(loss):
        raise LabError(f"the loss became {loss.item()} at step {step}; try a lower learning rate (now {lr:g})")


def train(prepared: PreparedRun, store: RunStore, run_id: str, hooks: LoopHooks | None = None,
          world: DataParallel | None = None) -> dict:
    """Train a stored run and record everything; returns the final metrics.

    Each step: next batch → forward/backward → clip → optimizer and learning-rate step → record,
    then a validation pass every `eval_every` steps (and at the last). With `world` (a data-parallel run) every process calls
    this and trains on its share of every batch; only the main process (rank 0) writes the store,
    evaluates and saves."""
    hooks = hooks or LoopHooks()
    config, method, device = prepared.config, prepared.method, prepared.device
    main = world is None or world.is_main
    check_world_size(config, world)
    check_cancel = (lambda: world.check_cancel(hooks.check_cancel)) if world else hooks.check_cancel
    seed_everything(config.seed)
    check_cancel()
    splits = {split: prepared.tokens(split) for split in ("train", "validation", "test")}

    model = build_model(prepared, build_context(prepared, store, hooks))
    named_trainable = select_trainable(method, model)
    stored_in = apply_backbone_precision(model, config.backbone_precision, named_trainable,
                                         forward_only=method.trains_side_network, device=device)
    trainable = [p for _, p in named_trainable]
    optimizer = adamw(trainable, lr=prepared.lr, weight_decay=config.weight_decay)
    warmup = int(round(config.steps * config.warmup_ratio))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, config.steps, warmup))
    meter = MemoryMeter(model, optimizer, device)
    autocast = bf16_autocast(config, device)
    state = TrainState(step=0, total_steps=config.steps, device=device,
                       generator=torch.Generator().manual_seed(config.seed + 1))
    step_model = world.wrap_step(method, model, state) if world else None
    ranks = world.gather(world.describe()) if world else None
    if main:
        record_setup(store, run_id, prepared, model, world, ranks)
        store.merge_summary(run_id, backbone_precision=precision_summary(config.backbone_precision, method, stored_in))

    batcher = batcher_for(prepared)
    batches = TrainingBatches(batcher, splits["train"], config.batch_size, config.seed, world)
    validation = Validation(prepared, model, splits["validation"], batcher, autocast, hooks.check_cancel,
                            EarlyStopping(config.patience, named_trainable, config.patience_from, by_loss=prepared.causal_lm)
                            if config.patience and main else None)
    tally = Tally()
    last_val: dict | None = None
    method.on_train_start(model, state)
    if prepared.causal_lm and main:
        # The untuned model's perplexity and answers first: every later pass is read against them.
        last_val = validation.run(store, run_id, state)
    started = time.perf_counter()
    for step in range(1, config.steps + 1):
        check_cancel()
        batch, global_examples, loss_scale = batches.next(device)
        state.step = step
        measure = config.memory_every == 1 or step == 1 or step == config.steps or step % config.memory_every == 0

        step_start = time.perf_counter()
        method.on_step_start(model, state)
        with meter.forward(measure), autocast():
            if step_model is not None:  # DDP averages the gradients while backward runs
                scaled_loss, out = step_model(batch, loss_scale)
            else:
                out: StepOutput = method.training_step(model, batch, state)
                scaled_loss = out.loss
        check_finite(out.loss, step, prepared.lr)
        scaled_loss.backward()
        gradient_bytes = meter.gradients_bytes() if measure else 0
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

        loss_value = float(out.loss.detach())
        tokens, positions = batch_tokens(batch)
        if world:  # the global batch's mean loss and its token counts
            loss_sum, tokens, positions = world.total([loss_value * len(batch["labels"]), tokens, positions])
            loss_value, tokens, positions = loss_sum / global_examples, int(tokens), int(positions)
        step_seconds = time.perf_counter() - step_start
        shape = list(batch["input_ids"].shape)
        memory = dict(meter.sample(gradient_bytes).as_dict(), batch_shape=shape) if measure else None
        tally.add(tokens, positions, global_examples, step_seconds, memory, step)
        telemetry = method.step_telemetry(model, state)
        if main:
            data = {"step_seconds": step_seconds, "batch_shape": shape, "tokens": tokens,
                    "tokens_per_second": tokens / step_seconds if step_seconds > 0 else None}
            if out.terms:
                data["terms"] = out.terms
            store.log_step(run_id, step, elapsed=time.perf_counter() - started, loss=loss_value,
                           lr=scheduler.get_last_lr()[0],
                           examples_per_second=global_examples / step_seconds if step_seconds > 0 else None,
                           memory=memory, data=data, telemetry=telemetry, phase=state.phase)
            if hooks.on_step:
                hooks.on_step(step, config.steps, loss_value)

        if step % config.eval_every == 0 or step == config.steps:
            if main:
                last_val = validation.run(store, run_id, state)
            if world:  # rank 0 alone evaluated, so it alone may have asked to stop
                state.stop_requested = world.any(state.stop_requested)
        if state.stop_requested:
            break

    method.on_train_end(model, state)
    if validation.early_stop is not None:
        validation.early_stop.restore_best(state)
    train_seconds = time.perf_counter() - started
    rank_peaks = world.gather(peak_summary(tally.peak_sample)) if world else None
    if not main:
        return {}
    if last_val is None or state.extra.get("restored_best"):
        last_val = validation.metrics()
    test = validation.evaluate(splits["test"])
    store.log_eval(run_id, state.step, "test", test)
    save_checkpoint(store, run_id, method, model, config, prepared.label_names)
    metrics = final_metrics(config, state, last_val, test, train_seconds, tally)
    record_end(store, run_id, method, model, state, metrics, validation.early_stop, world, ranks, rank_peaks)
    return metrics


def check_world_size(config: RunConfig, world: DataParallel | None) -> None:
    processes = world.world_size if world else 1
    if config.processes != processes:
        raise ConfigError(f"this run is set for {config.processes} processes but runs in {processes}; start it "
                          f"with torchrun --nproc_per_node {config.processes} -m app train ...")


class Validation:
    """The validation pass: metrics, the method's telemetry on a fixed sample, the method's own
    reaction (Theseus' phase 2) and early stopping."""

    def __init__(self, prepared: PreparedRun, model, tensors: dict, batcher: Batcher, autocast,
                 check_cancel: Callable[[], None], early_stop: EarlyStopping | None):
        self.prepared, self.model, self.tensors, self.batcher = prepared, model, tensors, batcher
        self.autocast, self.check_cancel, self.early_stop = autocast, check_cancel, early_stop
        sample = torch.arange(min(EVAL_TELEMETRY_SAMPLE, len(tensors["labels"])))
        self.telemetry_sample = batcher.batch(tensors, sample, prepared.device)
        config = prepared.config
        self.prompts = (generation_prompts(prepared.backbone.tokenizer, prepared.dataset, config.generations,
                                           config.max_length) if prepared.causal_lm and config.generations else [])

    def evaluate(self, tensors: dict) -> dict:
        config = self.prepared.config
        if self.prepared.causal_lm:
            return evaluate_language_model(self.prepared.method, self.model, tensors,
                                           batch_size=max(config.batch_size, 32), device=self.prepared.device,
                                           autocast=self.autocast, check_cancel=self.check_cancel, batcher=self.batcher,
                                           exact_match_accuracy=self.prepared.dataset.format == "text_to_text")
        return evaluate(self.prepared.method, self.model, tensors, batch_size=max(config.batch_size, 32),
                        device=self.prepared.device, num_labels=self.prepared.dataset.num_labels,
                        autocast=self.autocast, check_cancel=self.check_cancel, batcher=self.batcher)

    def metrics(self) -> dict:
        return self.evaluate(self.tensors)

    def generations(self) -> list[dict]:
        """Each fixed validation prompt answered greedily by the model as it is now."""
        prepared = self.prepared
        rows = []
        for prompt in self.prompts:
            self.check_cancel()
            with self.autocast():
                answer = generate_text(prepared.method, self.model, prepared.backbone.tokenizer, prompt["prompt"],
                                       max_new_tokens=prepared.config.max_new_tokens,
                                       max_positions=prepared.backbone.max_length, device=prepared.device)
            rows.append({"prompt": prompt["prompt"], "reference": prompt["reference"], "answer": answer.text})
        return rows

    def run(self, store: RunStore, run_id: str, state: TrainState) -> dict:
        method, model = self.prepared.method, self.model
        metrics = self.metrics()
        with torch.no_grad():
            was_training = model.training
            model.eval()
            telemetry = method.eval_telemetry(model, self.telemetry_sample, state)
            model.train(was_training)
        if self.prompts:
            telemetry = dict(telemetry or {}, generations=self.generations())
        store.log_eval(run_id, state.step, "validation", metrics, telemetry)
        method.after_eval(model, state, metrics)
        if self.early_stop is not None:
            self.early_stop.observe(model, state, metrics)
        return metrics


def record_setup(store: RunStore, run_id: str, prepared: PreparedRun, model, world: DataParallel | None,
                 ranks: list | None) -> None:
    """What the run trains, on what, and how its memory is measured: stored before the first step."""
    config, device = prepared.config, prepared.device
    store.merge_summary(
        run_id,
        trainable_params=count_parameters(model, trainable_only=True),
        total_params=count_parameters(model),
        lr=prepared.lr,
        device=str(device),
        bf16=config.bf16 and device.type == "cuda",
        backbone=prepared.backbone.info().as_dict(),
        dataset=prepared.dataset.summary(),
        method_config=prepared.method.config.as_dict(),
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


def final_metrics(config: RunConfig, state: TrainState, validation: dict, test: dict, train_seconds: float,
                  tally: Tally) -> dict:
    metrics = {
        "val_accuracy": validation["accuracy"],
        "val_macro_f1": validation["macro_f1"],
        "val_loss": validation["loss"],
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "test_loss": test["loss"],
        "steps_done": state.step,
        "train_seconds": train_seconds,
        "steps_per_second": state.step / train_seconds if train_seconds > 0 else None,
        "padding": config.padding,
        **tally.throughput(),
        # throughput on a CPU depends on torch's intra-op threads (one per physical core by default)
        "torch_threads": torch.get_num_threads(),
        **peak_summary(tally.peak_sample),
    }
    for split, result in (("val", validation), ("test", test)):
        if "perplexity" in result:  # causal-lm: `accuracy` is the exact match on text-to-text, else the token accuracy
            metrics.update({f"{split}_{name}": result[name] for name in LANGUAGE_MODEL_SCORES})
    if tally.peak_sample:
        metrics["peak_memory_shape"] = tally.peak_sample["batch_shape"]
        metrics["peak_memory_step"] = tally.peak_sample["step"]
    return metrics


def record_end(store: RunStore, run_id: str, method: Method, model, state: TrainState, metrics: dict,
               early_stop: EarlyStopping | None, world: DataParallel | None, ranks: list | None,
               rank_peaks: list | None) -> None:
    """The final metrics and what the run learnt about itself (every process's peak, early stopping,
    the method's own summary)."""
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


def peak_summary(peak_sample: dict | None) -> dict:
    """A process's measured peak training memory and its parts (None when nothing was measured)."""
    if not peak_sample:
        return {"peak_memory_bytes": None, "memory_breakdown": None}
    return {"peak_memory_bytes": peak_sample["peak"],
            "memory_breakdown": {k: peak_sample.get(k, 0) for k in PARTS},
            **({"cuda_max_allocated_bytes": peak_sample["cuda_max_allocated"]}
               if "cuda_max_allocated" in peak_sample else {})}
