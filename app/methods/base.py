"""The interface every training method implements, and how method configs are parsed.

A method is one module holding a `Method` subclass and its config dataclass. Config fields
carry `metadata={"help": ..., "choices": [...], "min": ..., "max": ...}`: the CLI's `--set`,
`python -m app methods` and the launch page's form are all built from them.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..lm_loss import causal_lm_loss
from ..tasks import CLASSIFICATION
from .export_writers import export_plain_or_state


@dataclass
class MethodConfig:
    """Base class of method configs; subclasses add fields made with `option`."""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- what a method sees while it builds and trains --------------------------------------------


@dataclass
class BuildContext:
    """Everything a method may use to build its model."""

    backbone: Any  # app.backbones.Backbone
    label_names: list[str]
    device: torch.device
    seed: int
    # Rebuilding a finished run to load its weights: skip expensive initialisation.
    restoring: bool = False
    # Yields training batches (dicts of tensors on `device`); used e.g. for Fisher importance.
    train_batches: Callable[[], typing.Iterator[dict]] | None = None
    # Yields the validation split in order (with labels), e.g. to score a predecessor once; None when restoring.
    validation_batches: Callable[[], typing.Iterator[dict]] | None = None
    # Loads another finished run or a model folder named by a config field (predecessor, teacher).
    load_reference: Callable[[str], "Reference"] | None = None
    # Reports what a long build is doing ("scoring importance 120/1000").
    progress: Callable[[str], None] = lambda message: None
    max_length: int = 128
    # Building only to count memory (app.estimate): tensors are fake and hold no values, so skip
    # every initialisation that reads weights or data (importance scores, text-based inits).
    shapes_only: bool = False
    # How decoder classifiers pool (the run's `decoder_pooling`): 'last' or 'mean'.
    decoder_pooling: str = "last"
    # What the model learns (the run's `task`): a classifier, or a language model that keeps its LM head.
    task: str = CLASSIFICATION

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


@dataclass
class Reference:
    """Another run's trained model (or a model folder) used as predecessor or teacher."""

    model: nn.Module  # forward(**inputs) -> logits, in eval mode, no grad needed
    label_names: list[str]
    source: str  # run id or folder
    plain_model: nn.Module | None = None  # an AutoModelForSequenceClassification when there is one
    record: dict | None = None


@dataclass
class TrainState:
    step: int  # 1-based index of the step being taken
    total_steps: int
    device: torch.device
    generator: torch.Generator  # seeded; for any randomness a method draws (e.g. Theseus)
    phase: str = "train"
    stop_requested: bool = False
    extra: dict = field(default_factory=dict)
    # The memory estimate's step: tensors are fake, so nothing may read a value (logged terms,
    # statistics); only what autograd keeps matters.
    shapes_only: bool = False


@dataclass
class StepOutput:
    loss: torch.Tensor
    logits: torch.Tensor | None = None
    terms: dict[str, float] = field(default_factory=dict)  # named loss terms to log


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def logits_of(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output


def has_token_labels(batch: dict) -> bool:
    """A causal-LM batch: a label per token (-100 where the loss skips) rather than one per example."""
    return batch["labels"].ndim == 2


def language_model_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """A transformers causal LM's body (the model without its head, ending in its final norm) and its
    LM head; through peft's wrapper, the wrapped model's (adapters included)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.base_model, inner.get_output_embeddings()


def language_model_outputs(model: nn.Module, batch: dict,
                           prefix: torch.Tensor | None = None) -> tuple[torch.Tensor, nn.Module]:
    """A transformers causal LM's final states (after its final norm) and its LM head, without the
    logits: the loss applies the head chunk by chunk (`app.lm_loss`). peft wraps the model; the states
    come from the wrapped model's body, through whatever adapters peft put in it. `prefix` (batch,
    n, width): embeddings put before the text's (virtual tokens); the states returned are the text's."""
    body, head = language_model_parts(model)
    if prefix is None:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
        return body(**inputs, use_cache=False).last_hidden_state, head
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    text = body.get_input_embeddings()(ids)
    embeds = torch.cat([prefix.to(text.dtype), text], dim=1)
    mask = torch.cat([mask.new_ones(ids.shape[0], prefix.shape[1]), mask], dim=1)
    hidden = body(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
    return hidden[:, prefix.shape[1]:], head


class Method:
    """Base of every training method. Subclasses set the class attributes and `build`."""

    name: ClassVar[str]
    title: ClassVar[str]
    summary: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    default_lr: ClassVar[float] = 2e-5
    # Config fields that name another run or a model folder (validated before a run starts).
    reference_fields: ClassVar[tuple[str, ...]] = ()
    # True when `export` writes a plain transformers folder that loads without this project.
    exports_plain_model: ClassVar[bool] = False
    # Named recipes (plain data): {"help": ..., "method_config": {...}, "run": {...}}. The Launch
    # page offers each as one button and the CLI as `train --preset NAME`; explicit values win.
    presets: ClassVar[dict[str, dict]] = {}
    # True when a training step may leave some trainable parameters without a gradient (random
    # module choices): data-parallel training then looks for them every step.
    varying_graph: ClassVar[bool] = False
    # True when the method decides by itself when to stop and which weights to keep (Theseus' phase
    # 2): the run-level `patience` is then refused.
    stops_early_itself: ClassVar[bool] = False
    # True when the trainable parts sit inside or before a frozen backbone (adapters, low-rank
    # updates, biases, virtual tokens): backprop crosses every layer, which keeps its activations.
    backprop_crosses_frozen_backbone: ClassVar[bool] = False
    # True when learned virtual tokens go in front of every input (`extra_input_tokens` counts
    # them); attention maps over the typed text leave them out.
    prepends_virtual_tokens: ClassVar[bool] = False
    # True when a separate side network trains beside a backbone that runs without autograd: the
    # backbone's activations are not kept and its attention maps stay as they were.
    trains_side_network: ClassVar[bool] = False
    # True when every backbone layer adds the same modules, parameters and saved tensors to a step
    # (nothing trained depends on the layer count otherwise): a step's memory is then an affine
    # function of the layer count, which lets the estimate measure a few layers and extrapolate.
    memory_grows_by_layer: ClassVar[bool] = False
    # The run tasks this method can train (`RunConfig.task`).
    tasks: ClassVar[tuple[str, ...]] = (CLASSIFICATION,)

    def __init__(self, config: MethodConfig | None = None):
        self.config = config if config is not None else self.Config()

    def memory_affine_in_layers(self) -> bool:
        """Whether this method, with its settings, keeps `memory_grows_by_layer`."""
        return self.memory_grows_by_layer

    # -- building -------------------------------------------------------------------------
    def build(self, ctx: BuildContext) -> nn.Module:
        """The model to train: `model(**inputs)` returns logits (or an output with `.logits`)."""
        raise NotImplementedError

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def check_compatible(self, backbone, label_names: list[str]) -> None:
        """Raise ConfigError when this config cannot work with this backbone or dataset."""

    @classmethod
    def backbone_refusal(cls, backbone) -> str | None:
        """Why this method cannot train on this backbone whatever its settings, or None."""
        return None

    @classmethod
    def task_refusal(cls, task: str) -> str | None:
        """Why this method cannot train for this task, or None."""
        if task in cls.tasks:
            return None
        return f"{cls.title} trains for {' and '.join(cls.tasks)} only, not {task}"

    def check_task(self, task: str) -> None:
        """Refuse a task this method, with these settings, cannot train for."""
        reason = self.task_refusal(task)
        if reason:
            raise ConfigError(reason)

    def check_backbone(self, backbone, label_names: list[str]) -> None:
        """Refuse a backbone this method cannot train on, then run the method's own checks."""
        reason = self.backbone_refusal(backbone)
        if reason:
            raise ConfigError(reason)
        self.check_compatible(backbone, label_names)

    def extra_input_tokens(self) -> int:
        """Positions this method adds to every input (virtual prompt tokens): the run's max_length
        plus these must fit within the backbone's position limit."""
        return 0

    def estimate_steps(self, model: nn.Module, state: "TrainState"):
        """Set the method up for each kind of training step whose memory differs, yielding a label
        for each; the memory estimate measures every one and reports the largest. One kind here;
        methods with phases or random choices (Theseus) yield their extremes."""
        self.on_train_start(model, state)
        self.on_step_start(model, state)
        yield "training step"

    # -- training -------------------------------------------------------------------------
    def on_train_start(self, model: nn.Module, state: TrainState) -> None:
        pass

    def on_step_start(self, model: nn.Module, state: TrainState) -> None:
        pass

    def training_step(self, model: nn.Module, batch: dict, state: TrainState) -> StepOutput:
        if has_token_labels(batch):
            return StepOutput(causal_lm_loss(*self.lm_outputs(model, batch), batch["labels"]))
        logits = logits_of(model(**model_inputs(batch)))
        return StepOutput(F.cross_entropy(logits.float(), batch["labels"]), logits)

    def lm_outputs(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, nn.Module]:
        """causal-lm: the final states (batch, length, hidden) and the head that reads them (no logits)."""
        return language_model_outputs(model, batch)

    def predict(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return logits_of(model(**model_inputs(batch)))

    def step_telemetry(self, model: nn.Module, state: TrainState) -> dict | None:
        """Plain data (numbers, lists) to record for this step, or None."""
        return None

    def eval_telemetry(self, model: nn.Module, batch: dict, state: TrainState) -> dict | None:
        """Plain data recorded with each validation pass; `batch` is a fixed validation sample."""
        return None

    def after_eval(self, model: nn.Module, state: TrainState, metrics: dict) -> None:
        """Called after each validation pass; may set `state.stop_requested`."""

    def on_train_end(self, model: nn.Module, state: TrainState) -> None:
        pass

    def run_summary(self, model: nn.Module) -> dict:
        """Extra plain data stored with the finished run."""
        return {}

    # -- after training -------------------------------------------------------------------
    def inference_model(self, model: nn.Module) -> nn.Module:
        """The part that serves predictions (e.g. the Theseus successor alone)."""
        return model

    def export(self, model: nn.Module, out_dir: Path, ctx: BuildContext) -> dict:
        """Write the trained model. Default: a plain transformers folder when the model is one,
        else the full state as safetensors with a loading note."""
        return export_plain_or_state(self, self.inference_model(model), out_dir, ctx)
