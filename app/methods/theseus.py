"""BERT-of-Theseus: compress a fine-tuned predecessor by progressive module replacement.

Xu et al., EMNLP 2020 (official code JetRunner/BERT-of-Theseus). The predecessor (n layers,
frozen) is cut into m modules of k = n/m consecutive layers; successor layer i replaces
predecessor module i. Phase 1: every step draws r_i ~ Bernoulli(p) per module and runs the
successor layer where r_i = 1, the predecessor's block otherwise, so the successor learns to fit
in next to the predecessor; p rises (linear curriculum) or is switched to 1 (constant). Phase 2:
the successor alone fine-tunes until validation stops improving, keeping the best weights.
Embeddings and head are the predecessor's (frozen unless asked), as in the official code, and the
successor exports as a plain m-layer model. On a decoder's causal-lm task the predecessor is a language
model; the successor keeps its embeddings, final norm and LM head, and both phases train on the LM
loss.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..layer_stack import LayerStack, layer_name_fragment
from ..lm_loss import causal_lm_loss, causal_lm_sums, perplexity
from ..memory import count_parameters
from ..options import option
from ..tasks import CAUSAL_LM, CLASSIFICATION, TASKS
from .base import (
    BuildContext, Method, MethodConfig, StepOutput, TrainState, has_token_labels, language_model_outputs, logits_of,
    model_inputs,
)
from .layer_surgery import (
    check_reference_labels,
    check_same_layer_shape,
    check_same_vocabulary,
    classify_hidden,
    layer_list,
    require_plain_model,
    shallow_copy_with_layers,
)

PAPER_LINEAR_K = 0.0006
PAPER_LINEAR_B = 0.3
# With the official k and b, p = min(1, k*t + b) first reaches 1 at t = ceil((1 - b) / k) = 1,167,
# i.e. step 1,168 (steps count t from 0).
PAPER_FULL_REPLACEMENT_STEP = 1168
OFFICIAL_PRESET = {
    "help": ("The official README's linear-scheduler command: k = 0.0006, b = 0.3, learning rate 2e-5, "
             "batch 32, 128 tokens, no warm-up or weight decay (run_glue.py's defaults), gradient norm "
             "clipped at 1.0. p reaches 1 at step 1,168, so phase 2 starts there; 2,400 steps leave about "
             "as many again for the successor alone (the README trains 15 epochs of MRPC, about 1,700 "
             "steps). Hours on a CPU: meant for a GPU."),
    "method_config": {"scheduler": "linear", "linear_b": PAPER_LINEAR_B, "linear_k": PAPER_LINEAR_K,
                      "phase2_start": PAPER_FULL_REPLACEMENT_STEP},
    "run": {"lr": 2e-5, "batch_size": 32, "max_length": 128, "warmup_ratio": 0.0, "weight_decay": 0.0,
            "grad_clip": 1.0, "steps": 2400},
}


@dataclass
class TheseusConfig(MethodConfig):
    predecessor: str | None = option(
        None,
        "The fine-tuned model to compress: id of a finished run of this lab whose model is a plain "
        "transformers classifier (full_ft, truncate, theseus, ...) or a model folder. Frozen throughout.",
    )
    layers: int | None = option(
        None,
        "Successor layers m (default: half the predecessor's n). n must divide by m; successor "
        "layer i replaces predecessor layers [k*i, k*i+k) with k = n/m.",
        min=1,
    )
    scheduler: str = option(
        "linear",
        "How the replacement probability p grows in phase 1. linear: p_t = min(1, k*t + b); "
        "constant: p fixed, switched to 1 at constant_switch_step.",
        choices=["linear", "constant"],
    )
    linear_b: float = option(
        PAPER_LINEAR_B, "Linear scheduler: starting probability b (the paper's README uses 0.3).", min=0.0, max=1.0
    )
    linear_k: float | None = option(
        None,
        "Linear scheduler: growth per step k. Empty (the default, for short runs) picks "
        "k = (1 - b) / (phase-1 steps - 1), so p reaches 1 exactly when phase 2 starts: on a 300-step "
        "run with phase 2 at half, k = 0.0047, about 8x the official value. The official README's "
        "k is 0.0006 (p = 1 after 1,167 steps, for GLUE-length runs): the 'official' preset sets it.",
        min=0.0,
        max=1.0,
    )
    replace_rate: float = option(
        0.5, "Constant scheduler: replacement probability p (the paper uses 0.5).", min=0.0, max=1.0
    )
    constant_switch_step: int | None = option(
        None, "Constant scheduler: the step from which p = 1 (empty: when phase 2 starts).", min=1
    )
    phase2_start: float = option(
        0.5,
        "When phase 2 (the successor alone, p = 1) begins: a fraction of the run's steps if below "
        "1 (0.5 = halfway), else a step number.",
        min=0.0,
    )
    patience: int = option(
        3,
        "Phase 2 stops after this many validation passes without improvement and keeps the best "
        "successor (0: never stop early, still keep the best).",
        min=0,
    )
    successor_init: str = option(
        "predecessor",
        "Initial successor layers. predecessor: its layers 0..m-1 (official). block_last: each "
        "module starts as the last layer of the block it replaces (k-1, 2k-1, ...). backbone: the "
        "pretrained backbone's first m layers (bojone's variant).",
        choices=["predecessor", "block_last", "backbone"],
    )
    train_embeddings_and_head: bool = option(
        False,
        "Also train the embeddings and classification head (shared with the predecessor, which then "
        "changes with them); the official code keeps them frozen.",
    )


class TheseusModel(nn.Module):
    """Successor and predecessor side by side; forward mixes them by the draws it is given."""

    def __init__(self, successor: nn.Module, predecessor: nn.Module, block_size: int):
        super().__init__()
        # Registered first so shared embeddings and head are named under the successor.
        self.successor = successor
        self.predecessor = predecessor
        self.block_size = block_size

    @property
    def num_modules(self) -> int:
        return len(layer_list(self.successor))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, draws: list[int] | None = None):
        inputs = {"input_ids": input_ids}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        if draws is None or all(draws):
            return logits_of(self.successor(**inputs))
        return self.mixed_logits(input_ids, attention_mask, token_type_ids, draws)

    def mixed_logits(self, input_ids, attention_mask=None, token_type_ids=None, draws: list[int] = ()):
        """The classification head on the mixed stack's last states (`mixed_states`)."""
        hidden = self.mixed_states(input_ids, attention_mask, token_type_ids, draws)
        return classify_hidden(self.successor, hidden, attention_mask)

    def mixed_language_model_outputs(self, batch: dict, draws: list[int]) -> tuple[torch.Tensor, nn.Module]:
        """A language model's final states (after its final norm) from the mixed stack, and the LM head."""
        if all(draws):
            return language_model_outputs(self.successor, batch)
        hidden = self.mixed_states(batch["input_ids"], batch.get("attention_mask"), None, draws)
        return LayerStack(self.successor).normed(hidden), self.successor.get_output_embeddings()

    def mixed_states(self, input_ids, attention_mask=None, token_type_ids=None, draws: list[int] = ()):
        """y_{i+1} = successor_i(y_i) if draws[i] else predecessor block i (y_i): the last layer's states."""
        if len(draws) != self.num_modules:
            raise ValueError(f"{len(draws)} draws for {self.num_modules} modules")
        view = LayerStack(self.successor)
        hidden = view.embed(input_ids, token_type_ids)
        mask = view.layer_mask(attention_mask, hidden)
        context = view.layer_context(hidden)
        successor_layers = layer_list(self.successor)
        predecessor_layers = layer_list(self.predecessor)
        k = self.block_size
        for i, use_successor in enumerate(draws):
            block = [successor_layers[i]] if use_successor else predecessor_layers[k * i : k * i + k]
            for layer in block:
                hidden = view.run_layer(layer, hidden, mask, context)
        return hidden


def successor_layer_count(predecessor_layers: int, requested: int | None, whose: str = "the predecessor") -> int:
    m = requested if requested is not None else predecessor_layers // 2
    if m < 1:
        raise ConfigError(f"{whose} has {predecessor_layers} layer(s): too few to compress")
    if m > predecessor_layers:
        raise ConfigError(f"layers={m} is more than the {predecessor_layers} layers of {whose}")
    if predecessor_layers % m:
        divisors = [d for d in range(1, predecessor_layers + 1) if predecessor_layers % d == 0]
        raise ConfigError(
            f"{whose} has {predecessor_layers} layers, which do not split into {m} equal modules; "
            f"choose layers from {divisors}"
        )
    return m


def _folder_depth(value: str) -> int | None:
    config_file = Path(value).expanduser() / "config.json"
    if not config_file.is_file():
        return None
    try:
        return int(json.loads(config_file.read_text()).get("num_hidden_layers"))
    except (ValueError, TypeError, json.JSONDecodeError):
        return None


def phase2_start_step(setting: float, total_steps: int) -> int | None:
    """First step of phase 2, or None when phase 2 begins after the run's last step."""
    if setting < 1:
        step = int(setting * total_steps) + 1
    else:
        step = int(setting)
    return step if step <= total_steps else None


class Theseus(Method):
    name = "theseus"
    title = "BERT-of-Theseus"
    summary = (
        "Compresses a fine-tuned predecessor: its layer blocks are randomly replaced by the layers of a "
        "smaller successor, which then fine-tunes alone and exports as a plain model."
    )
    Config = TheseusConfig
    default_lr = 1e-4  # the paper's 2e-5 suits BERT-base on GLUE-length runs; short CPU runs need more
    reference_fields = ("predecessor",)
    exports_plain_model = True
    presets = {"official": OFFICIAL_PRESET}
    varying_graph = True  # a module that draws the predecessor's block leaves its successor layers idle
    stops_early_itself = True
    tasks = TASKS  # on causal-lm the successor keeps the predecessor's embeddings and LM head

    def __init__(self, config: TheseusConfig | None = None):
        super().__init__(config)
        self._draws: list[int] | None = None
        self._p = 0.0
        self._phase = 1
        self._phase2_step: int | None = None
        self._switch_step: int | None = None
        self._linear_k = self.config.linear_k
        self._best_key: tuple[float, float] | None = None
        self._best_state: dict[str, torch.Tensor] | None = None
        self._best_step: int | None = None
        self._evals_without_gain = 0
        self._stopped_early = False
        self._predecessor_info: dict = {}
        self._successor_info: dict = {}
        self._task = CLASSIFICATION

    # -- checks and building -------------------------------------------------------------------
    def check_compatible(self, backbone, label_names: list[str]) -> None:
        if not self.config.predecessor:
            raise ConfigError(
                "theseus needs a predecessor: set predecessor to a finished run id (e.g. a full_ft run "
                "on this dataset) or a model folder"
            )
        depth = _folder_depth(self.config.predecessor)
        if depth is not None:
            successor_layer_count(depth, self.config.layers, f"predecessor '{self.config.predecessor}'")
        else:
            # A predecessor run is normally fine-tuned from this backbone, so it has its depth; the
            # exact depth is checked again once the predecessor is loaded.
            successor_layer_count(backbone.num_layers, self.config.layers,
                                  f"a predecessor fine-tuned from backbone '{backbone.name}'")

    def build(self, ctx: BuildContext) -> nn.Module:
        if ctx.load_reference is None:
            raise ConfigError("theseus needs its predecessor, but this context cannot load other runs")
        ctx.progress("loading the predecessor")
        self._task = ctx.task
        reference = ctx.load_reference(self.config.predecessor)
        check_reference_labels(reference, ctx.label_names, "predecessor")
        predecessor = require_plain_model(reference, "predecessor")
        check_same_vocabulary(predecessor, ctx.backbone, "predecessor", reference.source)
        predecessor_layers = layer_list(predecessor)
        n = len(predecessor_layers)
        m = successor_layer_count(n, self.config.layers, f"predecessor '{reference.source}'")

        if self.config.successor_init == "backbone" and not ctx.restoring:
            check_same_layer_shape(
                predecessor.config, ctx.backbone.config,
                f"successor_init=backbone needs the backbone's layers to fit the predecessor "
                f"'{reference.source}'",
            )
            encoder = ctx.backbone.load_encoder()
            layers = [layer_list(encoder)[i] for i in range(m)]
        else:
            # When restoring, the trained weights overwrite these copies right after the build.
            k = n // m
            chosen = [k * i + k - 1 for i in range(m)] if self.config.successor_init == "block_last" else range(m)
            layers = [copy.deepcopy(predecessor_layers[i]) for i in chosen]
        successor = shallow_copy_with_layers(predecessor, layers, share_rest=True)
        for p in predecessor.parameters():
            p.requires_grad_(False)
        model = TheseusModel(successor, predecessor, block_size=n // m)
        for _, p in self.trainable_parameters(model):
            p.requires_grad_(True)

        self._predecessor_info = {
            "source": reference.source,
            "val_accuracy": None,
            "params": count_parameters(predecessor),
            "layers": n,
        }
        self._successor_info = {"params": count_parameters(successor), "layers": m}
        if not ctx.restoring and ctx.validation_batches is not None:
            ctx.progress("scoring the predecessor on the validation split")
            if ctx.task == CAUSAL_LM:
                self._predecessor_info["val_perplexity"] = _perplexity(predecessor, ctx.validation_batches())
            else:
                self._predecessor_info["val_accuracy"] = _accuracy(predecessor, ctx.validation_batches(), ctx.device)
        return model

    def trainable_parameters(self, model: TheseusModel) -> list[tuple[str, nn.Parameter]]:
        chosen = []
        in_layers = layer_name_fragment(model.successor)
        for name, p in model.successor.named_parameters():
            if in_layers in f".{name}" or self.config.train_embeddings_and_head:
                chosen.append((f"successor.{name}", p))
        return chosen

    # -- the replacement schedule --------------------------------------------------------------
    def replacement_probability(self, step: int) -> float:
        """p for a 1-based step (the schedulers count t = step - 1 from 0, like the official code)."""
        if self._phase2_step is not None and step >= self._phase2_step:
            return 1.0
        t = step - 1
        if self.config.scheduler == "constant":
            if self._switch_step is not None and step >= self._switch_step:
                return 1.0
            return float(self.config.replace_rate)
        k = self._linear_k if self._linear_k is not None else 0.0
        return float(min(1.0, k * t + self.config.linear_b))

    def on_train_start(self, model: nn.Module, state: TrainState) -> None:
        self._phase2_step = phase2_start_step(self.config.phase2_start, state.total_steps)
        self._switch_step = self.config.constant_switch_step or self._phase2_step
        if self.config.linear_k is None:
            # Reach p = 1 on the last step of phase 1 (or of the run when there is no phase 2).
            last_phase1_step = (self._phase2_step or state.total_steps + 1) - 1
            self._linear_k = (1.0 - self.config.linear_b) / max(1, last_phase1_step - 1)
        self._best_key = None
        self._best_state = None
        self._best_step = None
        self._evals_without_gain = 0
        self._stopped_early = False

    def estimate_steps(self, model: TheseusModel, state: TrainState):
        """The two extreme steps. A step's memory is linear in how many modules draw their
        successor layer, once the first successor layer (where gradients start) is fixed; moving
        that first one later only drops activations. So the largest step is either the successor
        alone (every gradient, phase 2) or successor module 0 followed by predecessor blocks only
        (the longest stretch autograd must keep)."""
        self.on_train_start(model, state)
        modules = model.num_modules
        self._p, self._phase, self._draws = 1.0, 2, [1] * modules
        state.phase = "successor alone"
        yield "successor alone"
        if modules > 1:
            self._p, self._phase, self._draws = 0.0, 1, [1] + [0] * (modules - 1)
            state.phase = "module replacement"
            yield "module replacement: successor module 0, predecessor blocks after it"

    def on_step_start(self, model: TheseusModel, state: TrainState) -> None:
        p = self.replacement_probability(state.step)
        in_phase2 = self._phase2_step is not None and state.step >= self._phase2_step
        modules = model.num_modules
        if in_phase2 or p >= 1.0:
            draws = [1] * modules
        else:
            draws = (torch.rand(modules, generator=state.generator) < p).int().tolist()
        self._p, self._draws, self._phase = p, draws, 2 if in_phase2 else 1
        state.phase = "successor alone" if in_phase2 else "module replacement"

    def training_step(self, model: TheseusModel, batch: dict, state: TrainState) -> StepOutput:
        logits = None
        if has_token_labels(batch):
            draws = self._draws if self._draws is not None else [1] * model.num_modules
            loss = causal_lm_loss(*model.mixed_language_model_outputs(batch, draws), batch["labels"])
        else:
            logits = model(**model_inputs(batch), draws=self._draws)
            loss = F.cross_entropy(logits.float(), batch["labels"])
        if not loss.requires_grad:
            # Every module drew the predecessor's block and nothing it ran trains: the step is
            # recorded but changes no weight (a leaf loss leaves every gradient empty).
            loss = loss.detach().requires_grad_(True)
        return StepOutput(loss, logits)

    def predict(self, model: TheseusModel, batch: dict) -> torch.Tensor:
        return logits_of(model.successor(**model_inputs(batch)))

    def lm_outputs(self, model: TheseusModel, batch: dict) -> tuple[torch.Tensor, nn.Module]:
        return language_model_outputs(model.successor, batch)

    def step_telemetry(self, model: nn.Module, state: TrainState) -> dict | None:
        if self._draws is None:
            return None
        return {"theseus": {"p": float(self._p), "draws": [int(d) for d in self._draws], "phase": self._phase}}

    # -- phase 2: keep the best successor, stop when validation stops improving ----------------
    def after_eval(self, model: TheseusModel, state: TrainState, metrics: dict) -> None:
        if self._phase2_step is None or state.step < self._phase2_step:
            return
        # A language model keeps its lowest validation loss, as the run's early stopping does.
        key = ((-float(metrics["loss"]), float(metrics["accuracy"])) if self._task == CAUSAL_LM
               else (float(metrics["accuracy"]), -float(metrics["loss"])))
        if self._best_key is None or key > self._best_key:
            self._best_key = key
            self._best_step = state.step
            self._best_state = {n: p.detach().clone() for n, p in self.trainable_parameters(model)}
            self._evals_without_gain = 0
            return
        self._evals_without_gain += 1
        if self.config.patience and self._evals_without_gain >= self.config.patience:
            self._stopped_early = True
            state.stop_requested = True

    def on_train_end(self, model: TheseusModel, state: TrainState) -> None:
        if self._best_state is None or self._best_step == state.step:
            return
        with torch.no_grad():
            for name, p in self.trainable_parameters(model):
                p.copy_(self._best_state[name])
        state.extra["restored_best"] = True

    def run_summary(self, model: nn.Module) -> dict:
        return {
            "predecessor": dict(self._predecessor_info),
            "successor": dict(self._successor_info),
            "phase2_start_step": self._phase2_step,
            "best_step": self._best_step,
            "stopped_early": self._stopped_early,
            "scheduler": {
                "kind": self.config.scheduler,
                "linear_b": self.config.linear_b,
                "linear_k": self._linear_k,
                "replace_rate": self.config.replace_rate,
                "switch_step": self._switch_step,
            },
        }

    # -- after training ------------------------------------------------------------------------
    def inference_model(self, model: TheseusModel) -> nn.Module:
        return model.successor


@torch.no_grad()
def _accuracy(model: nn.Module, batches, device: torch.device) -> float:
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for batch in batches:
            logits = logits_of(model(**model_inputs(batch)))
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
            total += int(batch["labels"].numel())
    finally:
        model.train(was_training)
    return correct / total if total else float("nan")


@torch.no_grad()
def _perplexity(model: nn.Module, batches) -> float:
    """A causal LM's perplexity over labelled tokens of the given batches."""
    was_training = model.training
    model.eval()
    loss = tokens = 0
    try:
        for batch in batches:
            part_loss, part_tokens, _, _ = causal_lm_sums(*language_model_outputs(model, batch), batch["labels"])
            loss, tokens = loss + part_loss, tokens + part_tokens
    finally:
        model.train(was_training)
    return perplexity(loss / max(1, tokens))
