"""What a transformer family tells the lab about its models: where the layer stack is, how one
layer is called, and how the classifier reads the last hidden states.

Methods that rewire a backbone (ladder side networks, module replacement, truncation,
distillation) are written once against `app.layer_stack.LayerStack`, which asks the backbone's
family for these details. Adding a family is one module here and one line in `FAMILIES`.
"""

from __future__ import annotations

import operator
from typing import ClassVar

import torch
from torch import nn

from .parts import DecoderLayerParts, LayerParts


class Family:
    name: ClassVar[str]
    title: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    # Decoders attend to earlier tokens only and classify from the last real token's state.
    causal: ClassVar[bool] = False
    # Attribute path of the layer list inside the bare model (`AutoModel`).
    layers_path: ClassVar[str]
    # peft roles (query, key, value, attention_output, ffn_in, ffn_out) -> module path in a layer.
    roles: ClassVar[dict[str, str]] = {}
    # Modules of a *ForSequenceClassification model (relative names) that make its task head.
    head_modules: ClassVar[tuple[str, ...]] = ("classifier",)
    # Where Houlsby adapters go in a layer: after these dropouts (which keep their place), or,
    # for layers without a dropout there, on the outputs of these blocks (a forward hook).
    adapter_after_dropouts: ClassVar[tuple[str, ...]] = ()
    adapter_after_blocks: ClassVar[tuple[str, ...]] = ()

    # -- the layer stack ---------------------------------------------------------------------
    def layers(self, bare: nn.Module) -> nn.ModuleList:
        return operator.attrgetter(self.layers_path)(bare)

    def set_layers(self, bare: nn.Module, layers: nn.ModuleList) -> None:
        parent_path, _, attribute = self.layers_path.rpartition(".")
        parent = operator.attrgetter(parent_path)(bare) if parent_path else bare
        setattr(parent, attribute, layers)

    def layer_name_fragment(self) -> str:
        """What every parameter name of a layer contains, e.g. '.encoder.layer.' or '.layers.'."""
        return f".{self.layers_path}."

    # -- one forward pass, layer by layer ----------------------------------------------------
    def embed(self, bare: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def layer_mask(self, bare: nn.Module, attention_mask: torch.Tensor | None, hidden: torch.Tensor):
        raise NotImplementedError

    def layer_context(self, bare: nn.Module, hidden: torch.Tensor) -> dict:
        """Extra per-forward inputs every layer takes (position bias, rotary embeddings)."""
        return {}

    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, mask, context: dict) -> torch.Tensor:
        out = layer(hidden, mask, **context)
        return out[0] if isinstance(out, (tuple, list)) else out

    def layer_parts(self, layer: nn.Module) -> "LayerParts | DecoderLayerParts":
        """The layer's projections and norms under family-independent names (`.parts`)."""
        raise NotImplementedError

    def final_norm(self, bare: nn.Module) -> nn.Module | None:
        """The norm applied after the last layer (pre-norm decoders), or None."""
        return None

    # -- the classification head -------------------------------------------------------------
    def classify(self, model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Logits of a sequence classifier's head on its last layer's hidden states."""
        raise NotImplementedError
