"""Linear probe: one linear layer on the frozen backbone's pooled final hidden state.

The floor of every method that leaves the backbone frozen: what the backbone's last layer already
says about the task. Beside LST it tells how much of LST's gap to full fine-tuning belongs to the
backbone's features and how much to the side network. The state is pooled as LST pools it (the
mean over real tokens on encoders, the last real token on decoders), after the final norm on
decoders, and the backbone runs without autograd, so training keeps none of its activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..layer_stack import LayerStack
from ..options import option
from ..pooling import FIRST, LAST, MEAN, pool_tokens
from .base import BuildContext, Method, MethodConfig, StepOutput, TrainState, model_inputs
from .export_writers import save_lab_state


@dataclass
class LinearProbeConfig(MethodConfig):
    pooling: str = option(
        "auto", "How the final states become one vector: auto (the mean over tokens on encoders, the last real "
        "token on decoders, as LST pools), mean, first (encoders) or last token.",
        choices=["auto", MEAN, FIRST, LAST],
    )
    classifier_dropout: float = option(0.1, "Dropout before the linear layer.", min=0.0, max=0.9)


class ProbedBackbone(nn.Module):
    """A frozen backbone in eval mode and a trained linear head on its pooled final state."""

    def __init__(self, backbone: nn.Module, label_names: list[str], *, pooling: str, dropout: float):
        super().__init__()
        self.backbone = backbone
        self.view = LayerStack(backbone)
        self.label_names = list(label_names)
        if pooling == "auto":
            pooling = LAST if self.view.family.causal else MEAN
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.view.config.hidden_size, len(label_names))
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # a fixed feature source: no dropout inside it
        return self

    @torch.no_grad()
    def final_state(self, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
        hidden = self.view.final_state(input_ids, attention_mask, token_type_ids)
        return pool_tokens(hidden, attention_mask, self.pooling)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        features = self.final_state(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.dropout(features))


class LinearProbe(Method):
    name = "linear_probe"
    title = "Linear probe"
    summary = ("One linear layer on the frozen backbone's pooled final state: the floor of every frozen-backbone "
               "method, and how much of a gap to full fine-tuning belongs to the backbone's features.")
    Config = LinearProbeConfig
    # One linear layer on fixed features. On SmolLM2's normed last-token state 3e-3 overshoots
    # (the loss rose over 40 steps); 1e-3 learns there. MiniLM's mean state takes 1e-2.
    default_lr = 1e-3
    # Not a side network, but the same memory story: the backbone runs without autograd and the
    # trained part sits outside it, so a forward-only quantized backbone serves it too.
    trains_side_network = True

    def check_compatible(self, backbone, label_names: list[str]) -> None:
        if backbone.family.causal and self.config.pooling == FIRST:
            raise ConfigError("pooling 'first' reads a decoder's first token, which has seen no other token; "
                              "use last, mean or auto")

    def build(self, ctx: BuildContext) -> nn.Module:
        model = ProbedBackbone(ctx.backbone.load_encoder(), ctx.label_names, pooling=self.config.pooling,
                               dropout=self.config.classifier_dropout)
        std = getattr(model.view.config, "initializer_range", 0.02)
        with torch.no_grad():
            model.classifier.weight.normal_(0.0, std)
            model.classifier.bias.zero_()
        return model.to(ctx.device)

    def training_step(self, model: nn.Module, batch: dict, state: TrainState) -> StepOutput:
        logits = model(**model_inputs(batch))
        return StepOutput(F.cross_entropy(logits.float(), batch["labels"]), logits)

    def export(self, model: nn.Module, out_dir: Path, ctx: BuildContext) -> dict:
        """The linear layer as safetensors; the frozen backbone is only named (its weights reload
        from that backbone)."""
        state = {n: t for n, t in model.state_dict().items() if not n.startswith("backbone.")}
        return save_lab_state(
            self, state, out_dir, ctx,
            "# Exported linear probe\n\n"
            "`model.safetensors` holds the trained linear layer; the frozen backbone is not included: its weights "
            f"load from backbone `{ctx.backbone.name}` (named in `lab_config.json` with the settings and class "
            "names).\nLoad it with this lab:\n\n"
            "    from app.export import load_exported\n    model = load_exported('PATH')\n",
        )
