"""Truncation: fine-tune only the first m layers of the backbone, the rest dropped.

The plain baseline every layer-compression method must beat (the BERT-of-Theseus paper's
"fine-tune the first 6 layers" row): a small model with no help from a bigger one.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..options import option
from ..tasks import CAUSAL_LM, TASKS
from .base import BuildContext, Method, MethodConfig


@dataclass
class TruncateConfig(MethodConfig):
    layers: int | None = option(
        None, "Backbone layers kept, counted from the embeddings (default: half of them).", min=1
    )
    classifier_dropout: float = option(
        0.1, "Dropout before the classification head.", min=0.0, max=0.9
    )


def kept_layers(total: int, requested: int | None) -> int:
    kept = requested if requested is not None else max(1, total // 2)
    if kept > total:
        raise ConfigError(f"layers={kept} is more than the backbone's {total} layers")
    return kept


class Truncate(Method):
    name = "truncate"
    title = "Truncation (first m layers)"
    summary = "Fine-tunes the backbone's first m layers only and drops the rest: the baseline for Theseus and distillation."
    Config = TruncateConfig
    default_lr = 1e-4  # as full fine-tuning: the same weights, fewer of them
    exports_plain_model = True
    tasks = TASKS

    def check_compatible(self, backbone, label_names: list[str]) -> None:
        kept_layers(backbone.num_layers, self.config.layers)

    def build(self, ctx: BuildContext):
        kept = kept_layers(ctx.backbone.num_layers, self.config.layers)
        # Loading with a smaller num_hidden_layers reads layers 0..kept-1 and skips the others.
        if ctx.task == CAUSAL_LM:  # the final norm and LM head stay, now reading layer `kept`
            model = ctx.backbone.load_for_causal_lm(num_hidden_layers=kept)
        else:
            model = ctx.backbone.load_for_classification(
                ctx.label_names, num_hidden_layers=kept, classifier_dropout=self.config.classifier_dropout
            )
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        self._layers = (kept, ctx.backbone.num_layers)
        return model

    def run_summary(self, model) -> dict:
        kept, total = getattr(self, "_layers", (None, None))
        return {"layers": kept, "backbone_layers": total}
