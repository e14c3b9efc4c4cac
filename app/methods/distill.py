"""Knowledge distillation: a small student learns from a fine-tuned teacher and the labels.

loss = α·CE(student, labels) + β·T²·KL(teacher_T ‖ student_T) + γ·hidden-state MSE + δ·attention loss

- KL compares the temperature-softened class distributions (Hinton et al.; the T² keeps its
  gradient scale independent of T). It is computed as `F.kl_div(log_softmax(s/T), log_softmax(t/T))`,
  the form DistilBERT uses.
- Hidden states and attention maps are matched layer to layer with a uniform map (student layer j
  to teacher layer round(j·n/m), last to last). A learned Linear projects the student's hidden
  states when the widths differ (TinyBERT's W_h); it trains with the student and is not exported.
  `hidden_include_embeddings` adds the embedding layer's output (student to teacher embeddings)
  as one more mapped pair, as TinyBERT's hidden-state loss does.
- Three attention losses (`attention_loss`), each named for what it compares:
  `score_mse` is TinyBERT's: MSE between the attention scores q·kᵀ/√d_head before softmax, with
  masked positions set to 0 (here padded keys and padded queries; TinyBERT zeroes the masked
  keys and keeps padded query rows). The scores are read from each layer's query and key
  projections through forward hooks, so the attention kernel stays as it is.
  `probability_kl` (KL of each query's attention distribution, teacher to student; the old `kl`)
  and `probability_mse` (squared error of the probabilities summed over keys; the old `mse`)
  compare the softmax probabilities, which need eager attention.
  When the head counts differ, both sides are averaged over heads first.
The student is the backbone's first m layers (default), another smaller backbone sharing the
tokenizer, or a copy of uniformly chosen teacher layers (DistilBERT-style init). It exports as a
plain transformers model.

On a decoder's causal-lm task teacher and student are language models: CE is the next-token loss and
KL compares the two next-token distributions at every labelled position (token-level distillation),
both computed chunk by chunk over positions (`app.lm_loss`) so neither model's whole logits tensor
exists at once; the student is the backbone's first m layers with its final norm and LM head.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import get_backbone
from ..errors import ConfigError
from ..families import family_of
from ..lm_loss import causal_lm_distillation_loss
from ..memory import count_parameters
from ..options import option
from ..tasks import CAUSAL_LM, TASKS
from .base import (
    BuildContext, Method, MethodConfig, StepOutput, TrainState, has_token_labels, language_model_outputs,
    language_model_parts, logits_of, model_inputs,
)
from .layer_surgery import (
    check_reference_labels,
    check_same_vocabulary,
    layer_list,
    require_plain_model,
    shallow_copy_with_layers,
    uniform_layer_map,
)
from .truncate import kept_layers

ATTENTION_LOSSES = ("probability_kl", "probability_mse", "score_mse")
ATTENTION_LOSS_ALIASES = {"kl": "probability_kl", "mse": "probability_mse"}


@dataclass
class DistillConfig(MethodConfig):
    teacher: str | None = option(
        None,
        "The model to learn from: id of a finished run of this lab on this dataset, or a model folder. "
        "Frozen; hidden-state and attention terms need a plain transformers classifier.",
    )
    layers: int | None = option(
        None,
        "Student layers m (default: half the backbone's, or all of student_backbone's).",
        min=1,
    )
    student_backbone: str | None = option(
        None,
        "Another (smaller) backbone for the student; it must use the run backbone's tokenizer vocabulary. "
        "Empty: the run's backbone.",
    )
    student_init: str = option(
        "backbone",
        "backbone: the pretrained first m layers and a new head; teacher: embeddings, head and m "
        "uniformly chosen layers copied from the teacher (DistilBERT-style).",
        choices=["backbone", "teacher"],
    )
    ce_weight: float = option(0.5, "α: weight of cross-entropy with the true labels.", min=0.0)
    kl_weight: float = option(0.5, "β: weight of T²·KL between the softened teacher and student outputs.", min=0.0)
    temperature: float = option(2.0, "T: softmax temperature of the KL term.", min=0.05, max=100.0)
    hidden_weight: float = option(
        0.0, "γ: weight of the hidden-state MSE over mapped layers (padding excluded).", min=0.0
    )
    attention_weight: float = option(
        0.0,
        "δ: weight of the attention-map loss over mapped layers (runs eager attention, without the "
        "student's attention dropout).",
        min=0.0,
    )
    attention_loss: str = option(
        "probability_kl",
        "Attention loss: probability_kl (KL of each query's softmax attention distribution, teacher to "
        "student), probability_mse (squared error of the softmax probabilities summed over keys), or "
        "score_mse (TinyBERT's: MSE of the scores before softmax, padded positions set to 0). "
        "The old names kl and mse still mean probability_kl and probability_mse.",
        choices=list(ATTENTION_LOSSES), aliases=dict(ATTENTION_LOSS_ALIASES),
    )
    hidden_include_embeddings: bool = option(
        False, "Add the embedding layer's output to the hidden-state MSE as one more mapped pair "
        "(TinyBERT includes it). Used when hidden_weight > 0.",
    )
    classifier_dropout: float = option(0.1, "Dropout before the student's classification head.", min=0.0, max=0.9)

    def validate(self) -> None:
        weights = (self.ce_weight, self.kl_weight, self.hidden_weight, self.attention_weight)
        if not any(w > 0 for w in weights):
            raise ConfigError("every distillation weight is 0: set at least one of ce_weight, kl_weight, "
                              "hidden_weight, attention_weight above 0")
        if self.student_init == "teacher" and self.student_backbone:
            raise ConfigError("student_init=teacher copies the teacher's layers; leave student_backbone empty")


class DistillModel(nn.Module):
    """The student (what trains and exports), the frozen teacher and an optional projection."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, projection: nn.Module | None):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.projection = projection

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher's targets must not carry dropout noise
        return self

    def forward(self, **inputs):
        return logits_of(self.student(**inputs))


def masked_hidden_mse(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    squared = (student.float() - teacher.float()).pow(2).mean(-1)  # [batch, tokens]
    if attention_mask is None:
        return squared.mean()
    weights = attention_mask.to(squared.dtype)
    return (squared * weights).sum() / weights.sum().clamp_min(1.0)


def attention_map_loss(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor | None,
                       kind: str) -> torch.Tensor:
    """Loss between attention probabilities [batch, heads, queries, keys] over real query tokens."""
    student, teacher = student.float(), teacher.float()
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    if kind == "probability_kl":
        tiny = torch.finfo(torch.float32).tiny
        per_query = (torch.xlogy(teacher, teacher) - torch.xlogy(teacher, student.clamp_min(tiny))).sum(-1)
    else:
        per_query = (student - teacher).pow(2).sum(-1)
    per_query = per_query.mean(1)  # over heads -> [batch, queries]
    if attention_mask is None:
        return per_query.mean()
    weights = attention_mask.to(per_query.dtype)
    return (per_query * weights).sum() / weights.sum().clamp_min(1.0)


def attention_score_mse(student: torch.Tensor, teacher: torch.Tensor,
                        attention_mask: torch.Tensor | None) -> torch.Tensor:
    """TinyBERT's attention loss: MSE of pre-softmax scores [batch, heads, queries, keys], with
    every pair that touches a padded position set to 0 on both sides, averaged over real pairs."""
    student, teacher = student.float(), teacher.float()
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    squared = (student - teacher).pow(2).mean(1)  # over heads -> [batch, queries, keys]
    if attention_mask is None:
        return squared.mean()
    real = attention_mask.to(squared.dtype)
    pairs = real.unsqueeze(2) * real.unsqueeze(1)
    return (squared * pairs).sum() / pairs.sum().clamp_min(1.0)


class AttentionScoreRecorder:
    """Records q·kᵀ/√d_head of chosen layers during a forward pass, from forward hooks on each
    layer's query and key projections (the attention kernel itself never exposes its scores)."""

    def __init__(self, model: nn.Module, layer_numbers: list[int]):
        config = model.config
        self.heads = config.num_attention_heads
        self.head_size = config.hidden_size // self.heads
        self.outputs: dict[tuple[int, str], torch.Tensor] = {}
        self.active = False
        self.layer_numbers = list(layer_numbers)
        self.handles = []
        layers, family = layer_list(model), family_of(model)
        for number in self.layer_numbers:  # 1-based, as in the layer map
            parts = family.layer_parts(layers[number - 1])
            for role, linear in (("query", parts.query), ("key", parts.key)):
                self.handles.append(linear.register_forward_hook(self._keep(number, role)))

    def _keep(self, number: int, role: str):
        def hook(module, inputs, output):
            if self.active:  # only inside a training step: evaluation and export keep nothing
                self.outputs[(number, role)] = output
        return hook

    def scores(self, number: int) -> torch.Tensor:
        q, k = self.outputs[(number, "query")], self.outputs[(number, "key")]
        b, t, _ = q.shape
        q = q.view(b, t, self.heads, self.head_size).transpose(1, 2)
        k = k.view(b, t, self.heads, self.head_size).transpose(1, 2)
        return q @ k.transpose(-1, -2) * self.head_size ** -0.5

    def clear(self) -> None:
        self.outputs.clear()
        self.active = False

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class Distill(Method):
    name = "distill"
    title = "Knowledge distillation"
    summary = (
        "A smaller student learns from a fine-tuned teacher: labels, softened outputs, hidden states and "
        "attention maps, each with its own weight."
    )
    Config = DistillConfig
    default_lr = 1e-4
    reference_fields = ("teacher",)
    exports_plain_model = True
    tasks = TASKS

    def __init__(self, config: DistillConfig | None = None):
        super().__init__(config)
        self._teacher_is_plain = False
        self._layer_map: list[int] = []
        self._summary: dict = {}
        self._score_recorders: tuple[AttentionScoreRecorder, AttentionScoreRecorder] | None = None

    @property
    def _needs_probabilities(self) -> bool:
        return self.config.attention_weight > 0 and self.config.attention_loss != "score_mse"

    @property
    def _needs_states(self) -> bool:
        return self.config.hidden_weight > 0 or self.config.attention_weight > 0

    # -- checks and building -------------------------------------------------------------------
    def check_compatible(self, backbone, label_names: list[str]) -> None:
        if not self.config.teacher:
            raise ConfigError(
                "distill needs a teacher: set teacher to a finished run id (e.g. a full_ft run on this "
                "dataset) or a model folder"
            )
        if self.config.student_backbone:
            student_backbone = get_backbone(self.config.student_backbone)
            if student_backbone.tokenizer.get_vocab() != backbone.tokenizer.get_vocab():
                raise ConfigError(
                    f"student_backbone '{self.config.student_backbone}' tokenizes differently from backbone "
                    f"'{backbone.name}'; the student must read the same token ids as the teacher"
                )
            kept_layers(student_backbone.num_layers, self.config.layers)
        elif self.config.student_init == "backbone":
            kept_layers(backbone.num_layers, self.config.layers)
        if (backbone.family.causal and self.config.attention_weight > 0
                and self.config.attention_loss == "score_mse"):
            raise ConfigError("attention_loss score_mse reads q·k from the query and key projections, but a "
                              "decoder rotates them by position first; use probability_kl or probability_mse")

    def build(self, ctx: BuildContext) -> nn.Module:
        config = self.config
        teacher = teacher_plain = None
        source = config.teacher
        # A restored student needs nothing from the teacher unless its shape comes from it.
        if not ctx.restoring or config.student_init == "teacher":
            if ctx.load_reference is None:
                raise ConfigError("distill needs its teacher, but this context cannot load other runs")
            ctx.progress("loading the teacher")
            reference = ctx.load_reference(config.teacher)
            source = reference.source
            check_reference_labels(reference, ctx.label_names, "teacher")
            # A language model's teacher gives its final states and LM head, which only a plain model has.
            if self._needs_states or config.student_init == "teacher" or ctx.task == CAUSAL_LM:
                teacher_plain = require_plain_model(reference, "teacher")
            if teacher_plain is None:
                teacher_plain = reference.plain_model
            teacher = teacher_plain if teacher_plain is not None else reference.model
            if teacher_plain is not None:
                check_same_vocabulary(teacher_plain, ctx.backbone, "teacher", source)
            for p in teacher.parameters():
                p.requires_grad_(False)
            teacher.eval()

        student, student_name = self._build_student(ctx, teacher_plain)
        for p in student.parameters():
            p.requires_grad_(True)
        if self._needs_probabilities:
            _use_eager_attention(student, "student")
            _without_attention_dropout(student)
            if teacher_plain is not None:
                _use_eager_attention(teacher_plain, "teacher")

        projection = None
        student_layers = len(layer_list(student))
        if teacher_plain is not None:
            teacher_layers = len(layer_list(teacher_plain))
            self._layer_map = uniform_layer_map(teacher_layers, student_layers)
            d_student, d_teacher = student.config.hidden_size, teacher_plain.config.hidden_size
            if config.hidden_weight > 0 and d_student != d_teacher:
                projection = nn.Linear(d_student, d_teacher)
            self._summary["teacher"] = {"source": source, "params": count_parameters(teacher_plain),
                                        "layers": teacher_layers}
        elif teacher is not None:
            self._summary["teacher"] = {"source": source, "params": count_parameters(teacher), "layers": None}
        self._teacher_is_plain = teacher_plain is not None
        self._summary["student"] = {"params": count_parameters(student), "layers": student_layers,
                                    "init": student_name}
        self._summary["layer_map"] = self._layer_map
        self._score_recorders = None
        if config.attention_weight > 0 and config.attention_loss == "score_mse" and teacher_plain is not None:
            self._score_recorders = (
                AttentionScoreRecorder(student, list(range(1, student_layers + 1))),
                AttentionScoreRecorder(teacher_plain, sorted(set(self._layer_map))),
            )
        return DistillModel(student, teacher, projection)

    def _build_student(self, ctx: BuildContext, teacher_plain: nn.Module | None) -> tuple[nn.Module, str]:
        config = self.config
        if config.student_init == "teacher":
            teacher_layers = layer_list(teacher_plain)
            m = kept_layers(len(teacher_layers), config.layers)
            chosen = uniform_layer_map(len(teacher_layers), m)
            layers = [copy.deepcopy(teacher_layers[j - 1]) for j in chosen]
            student = shallow_copy_with_layers(teacher_plain, layers, share_rest=False)
            return student, f"teacher layers {chosen}"
        if config.student_backbone:
            backbone = get_backbone(config.student_backbone)
            m = kept_layers(backbone.num_layers, config.layers if config.layers is not None else backbone.num_layers)
        else:
            backbone = ctx.backbone
            m = kept_layers(backbone.num_layers, config.layers)
        kwargs = {"num_hidden_layers": m}
        if self._needs_probabilities:
            kwargs["attn_implementation"] = "eager"
        if ctx.task == CAUSAL_LM:  # the final norm and LM head stay, reading layer m
            student = backbone.load_for_causal_lm(**kwargs)
        else:
            student = backbone.load_for_classification(ctx.label_names, classifier_dropout=config.classifier_dropout,
                                                       **kwargs)
        return student, f"{backbone.name} first {m} layers"

    def trainable_parameters(self, model: DistillModel) -> list[tuple[str, nn.Parameter]]:
        chosen = [(f"student.{n}", p) for n, p in model.student.named_parameters()]
        if model.projection is not None:
            chosen += [(f"projection.{n}", p) for n, p in model.projection.named_parameters()]
        return chosen

    # -- training ------------------------------------------------------------------------------
    def training_step(self, model: DistillModel, batch: dict, state: TrainState) -> StepOutput:
        config = self.config
        if model.teacher is None:
            raise ConfigError("this distillation model was rebuilt without its teacher and cannot train")
        inputs = model_inputs(batch)
        want_hidden = config.hidden_weight > 0 and self._teacher_is_plain
        want_attention = config.attention_weight > 0 and self._teacher_is_plain
        want_scores = want_attention and config.attention_loss == "score_mse"
        if want_scores and self._score_recorders is None:
            raise ConfigError("attention_loss=score_mse needs the model built by this method")
        extra = {}
        if want_hidden:
            extra["output_hidden_states"] = True
        if want_attention and not want_scores:
            extra["output_attentions"] = True
        if want_scores:
            for recorder in self._score_recorders:
                recorder.active = True
        language_model = has_token_labels(batch)
        if language_model:  # the bodies alone: the heads run chunk by chunk in the loss
            extra["use_cache"] = False
        try:
            with torch.no_grad():
                teacher_out = _body(model.teacher, language_model)(**inputs, **extra)
            student_out = _body(model.student, language_model)(**inputs, **extra)
        finally:
            if want_scores:
                for recorder in self._score_recorders:
                    recorder.active = False
        mask = batch.get("attention_mask")
        t = config.temperature
        if language_model:
            student_logits = None
            ce, kl = causal_lm_distillation_loss(
                student_out.last_hidden_state, language_model_parts(model.student)[1],
                teacher_out.last_hidden_state, language_model_parts(model.teacher)[1], batch["labels"], t)
            zero = ce.new_zeros(())
        else:
            student_logits = logits_of(student_out).float()
            teacher_logits = logits_of(teacher_out).float()
            zero = student_logits.new_zeros(())
            ce = F.cross_entropy(student_logits, batch["labels"]) if config.ce_weight > 0 else zero
            kl = zero
            if config.kl_weight > 0:
                kl = F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                              reduction="batchmean", log_target=True) * (t * t)
        hidden = zero
        if want_hidden:
            losses = []
            pairs = list(enumerate(self._layer_map, start=1))
            if config.hidden_include_embeddings:
                pairs.insert(0, (0, 0))  # embedding outputs, student to teacher
            for j, teacher_index in pairs:
                student_state = student_out.hidden_states[j]
                if model.projection is not None:
                    student_state = model.projection(student_state)
                losses.append(masked_hidden_mse(student_state, teacher_out.hidden_states[teacher_index], mask))
            hidden = torch.stack(losses).mean()
        attention = zero
        if want_scores:
            student_scores, teacher_scores = self._score_recorders
            losses = [attention_score_mse(student_scores.scores(j), teacher_scores.scores(teacher_index), mask)
                      for j, teacher_index in enumerate(self._layer_map, start=1)]
            attention = torch.stack(losses).mean()
            student_scores.clear()
            teacher_scores.clear()
        elif want_attention:
            if not student_out.attentions or not teacher_out.attentions:
                raise ConfigError("this backbone returns no attention maps; set attention_weight=0")
            losses = [
                attention_map_loss(student_out.attentions[j - 1], teacher_out.attentions[teacher_index - 1],
                                   mask, config.attention_loss)
                for j, teacher_index in enumerate(self._layer_map, start=1)
            ]
            attention = torch.stack(losses).mean()

        weighted = {
            "ce": config.ce_weight * ce,
            "kl": config.kl_weight * kl,
            "hidden": config.hidden_weight * hidden,
            "attention": config.attention_weight * attention,
        }
        total = weighted["ce"] + weighted["kl"] + weighted["hidden"] + weighted["attention"]
        terms = {}
        if not state.shapes_only:
            terms = {name: float(value.detach()) for name, value in weighted.items()}
            terms["total"] = float(total.detach())
        return StepOutput(total, student_logits, terms)

    def predict(self, model: DistillModel, batch: dict) -> torch.Tensor:
        return logits_of(model.student(**model_inputs(batch)))

    def lm_outputs(self, model: DistillModel, batch: dict) -> tuple[torch.Tensor, nn.Module]:
        return language_model_outputs(model.student, batch)

    def run_summary(self, model: nn.Module) -> dict:
        return dict(self._summary, weights={
            "ce": self.config.ce_weight, "kl": self.config.kl_weight, "hidden": self.config.hidden_weight,
            "attention": self.config.attention_weight, "temperature": self.config.temperature,
            "attention_loss": self.config.attention_loss,
            "hidden_include_embeddings": self.config.hidden_include_embeddings,
        })

    def inference_model(self, model: DistillModel) -> nn.Module:
        return model.student


def _body(model: nn.Module, language_model: bool) -> nn.Module:
    """What a distillation step runs: a classifier whole, a language model without its head."""
    return language_model_parts(model)[0] if language_model else model


def _use_eager_attention(model: nn.Module, role: str) -> None:
    if getattr(model.config, "_attn_implementation", "eager") == "eager":
        return
    try:
        model.set_attn_implementation("eager")
    except Exception as exc:  # transformers refuses for some architectures
        raise ConfigError(f"the {role} cannot switch to eager attention ({exc}); set attention_weight=0") from exc
    if model.config._attn_implementation != "eager":
        raise ConfigError(f"the {role} cannot return attention maps; set attention_weight=0")


def _without_attention_dropout(model: nn.Module) -> None:
    """Eager attention returns its probabilities after dropout: zeroed entries would make the
    attention loss compare noise (a dropped key costs log(0) in KL), so the student's attention
    dropout is turned off while it learns the teacher's maps."""
    model.config.attention_probs_dropout_prob = 0.0
    for module in model.modules():
        if type(module).__name__.endswith("SelfAttention") and isinstance(getattr(module, "dropout", None), nn.Dropout):
            module.dropout.p = 0.0
        if isinstance(getattr(module, "attn_dropout", None), nn.Dropout):  # GPT-2
            module.attn_dropout.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):  # LLaMA family
            module.attention_dropout = 0.0
