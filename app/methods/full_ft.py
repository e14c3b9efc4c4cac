"""Full fine-tuning: every weight of the backbone and a new classification head train."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import option
from ..tasks import CAUSAL_LM, TASKS
from .base import BuildContext, Method, MethodConfig


@dataclass
class FullFineTuningConfig(MethodConfig):
    classifier_dropout: float = option(
        0.1, "Dropout before the classification head.", min=0.0, max=0.9
    )


class FullFineTuning(Method):
    name = "full_ft"
    title = "Full fine-tuning"
    summary = "Every backbone weight and a new classification head train (the reference point)."
    Config = FullFineTuningConfig
    default_lr = 1e-4  # small encoders on short CPU budgets; 2e-5..5e-5 suits long BERT-base runs
    exports_plain_model = True
    memory_grows_by_layer = True
    tasks = TASKS

    def build(self, ctx: BuildContext):
        if ctx.task == CAUSAL_LM:
            model = ctx.backbone.load_for_causal_lm()
        else:
            model = ctx.backbone.load_for_classification(
                ctx.label_names, classifier_dropout=self.config.classifier_dropout
            )
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
