"""BitFit (Ben Zaken, Ravfogel, Goldberg, ACL 2022): only the bias terms of the backbone train,
with the classification head. The result is still a plain transformers classifier."""

from __future__ import annotations

from dataclasses import dataclass

from .base import BuildContext, Method, MethodConfig
from .peft_support import head_parameter_names


@dataclass
class BitFitConfig(MethodConfig):
    pass


def is_bias(name: str) -> bool:
    return name.endswith(".bias") or name == "bias"


class BitFit(Method):
    name = "bitfit"
    title = "BitFit"
    summary = "Only the bias terms of every layer (and the classification head) train: well under 1% of the weights."
    Config = BitFitConfig
    # Biases move the activations only a little per unit of change: they need a larger step than
    # full fine-tuning (the paper used 1e-4..1e-3 on BERT; short CPU runs sit at the high end).
    default_lr = 3e-3
    exports_plain_model = True

    def build(self, ctx: BuildContext):
        model = ctx.backbone.load_for_classification(ctx.label_names)
        head = head_parameter_names(model)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(is_bias(name) or name in head)
        return model
