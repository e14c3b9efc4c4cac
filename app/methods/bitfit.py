"""BitFit (Ben Zaken, Ravfogel, Goldberg, ACL 2022): only the bias terms of the backbone train,
with the classification head. The result is still a plain transformers classifier.

The head is the model's `classifier` module, as in the reference code (its `glue_evaluator.py`
trains every bias, BERT's pooler bias included, and `classifier`). BERT's pooler weight (147k
of MiniLM-L6's parameters, five times all its biases) stays frozen: training it would no longer
be bias-only tuning. RoBERTa, ELECTRA and MPNet keep their dense + projection head under
`classifier`, so there the whole head trains, as it does for the reference. Decoders keep their
head in `score`. A backbone without bias terms (LLaMA-family decoders) is refused: BitFit would
train the head alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..families import family_of
from ..tasks import CAUSAL_LM, TASKS
from .base import BuildContext, Method, MethodConfig


@dataclass
class BitFitConfig(MethodConfig):
    pass


def is_bias(name: str) -> bool:
    return name.endswith(".bias") or name == "bias"


def head_prefixes(model) -> tuple[str, ...]:
    return tuple(f"{name}." for name in family_of(model).head_modules)


class BitFit(Method):
    name = "bitfit"
    title = "BitFit"
    summary = "Only the bias terms of every layer (and the classification head) train: well under 1% of the weights."
    Config = BitFitConfig
    # Biases move the activations only a little per unit of change: they need a larger step than
    # full fine-tuning (the paper used 1e-4..1e-3 on BERT; short CPU runs sit at the high end).
    default_lr = 3e-3
    exports_plain_model = True
    backprop_crosses_frozen_backbone = True
    memory_grows_by_layer = True
    tasks = TASKS

    @classmethod
    def backbone_refusal(cls, backbone) -> str | None:
        import torch
        from transformers import AutoModel

        with torch.device("meta"):  # names only: no weights are read or allocated
            bare = AutoModel.from_config(backbone.config)
        if not any(is_bias(name) for name, _ in bare.named_parameters()):
            return (f"backbone '{backbone.name}' ({backbone.config.model_type}) has no bias terms, so BitFit "
                    "would train the classification head alone; choose another method")
        return None

    def build(self, ctx: BuildContext):
        if ctx.task == CAUSAL_LM:  # the biases alone: the LM head is the (tied, frozen) input embedding
            model = ctx.backbone.load_for_causal_lm()
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(is_bias(name))
            return model
        model = ctx.backbone.load_for_classification(ctx.label_names)
        head = head_prefixes(model)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(is_bias(name) or name.startswith(head))
        return model
