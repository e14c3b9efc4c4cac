"""One way to step through the layers of any supported transformer, encoder or decoder.

Methods that rewire a backbone (ladder side networks, module replacement, truncation,
distillation on hidden states) need the embeddings, the layer list, a call that runs one layer
and the head that reads the last states. Families differ in those details (MPNet's relative
position bias, ELECTRA's embedding projection, rotary positions and causal masks in decoders, a
final norm after the last decoder layer); `app.families` holds them, and this view hides them.
"""

from __future__ import annotations

import torch
from torch import nn

from .families import Family, family_of


def bare_model(model: nn.Module) -> nn.Module:
    """The `AutoModel` part of a model with a task head (or the model itself)."""
    base = getattr(model, "base_model", model)
    family_of(base)  # a clear error for an unsupported architecture
    return base


class LayerStack:
    def __init__(self, model: nn.Module):
        self.model = bare_model(model)
        self.config = self.model.config
        self.model_type = self.config.model_type
        self.family: Family = family_of(self.config)

    @property
    def layers(self) -> nn.ModuleList:
        return self.family.layers(self.model)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.family.embed(self.model, input_ids, token_type_ids)

    def layer_mask(self, attention_mask: torch.Tensor | None, hidden: torch.Tensor):
        """The mask in the form this model's attention implementation expects."""
        return self.family.layer_mask(self.model, attention_mask, hidden)

    def layer_context(self, hidden: torch.Tensor) -> dict:
        return self.family.layer_context(self.model, hidden)

    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, mask, context: dict) -> torch.Tensor:
        return self.family.run_layer(layer, hidden, mask, context)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """[embeddings, after layer 1, ..., after layer n] (before a decoder's final norm)."""
        hidden = self.embed(input_ids, token_type_ids)
        mask = self.layer_mask(attention_mask, hidden)
        context = self.layer_context(hidden)
        states = [hidden]
        for layer in self.layers:
            hidden = self.run_layer(layer, hidden, mask, context)
            states.append(hidden)
        return states

    def normed(self, hidden: torch.Tensor) -> torch.Tensor:
        """The last layer's output as the model's head reads it: after a decoder's final norm."""
        return self.family.final_norm(self.model)(hidden) if self.family.causal else hidden

    def final_state(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The model's final hidden state (after a decoder's final norm), keeping no earlier layer's."""
        hidden = self.embed(input_ids, token_type_ids)
        mask = self.layer_mask(attention_mask, hidden)
        context = self.layer_context(hidden)
        for layer in self.layers:
            hidden = self.run_layer(layer, hidden, mask, context)
        return self.normed(hidden)


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The layer stack of a model with or without a task head."""
    return LayerStack(model).layers


def set_layer_list(model: nn.Module, layers: nn.ModuleList) -> None:
    base = bare_model(model)
    family_of(base).set_layers(base, layers)


def layer_name_fragment(model: nn.Module) -> str:
    """What the full name of every parameter inside the layer stack contains."""
    base = bare_model(model)
    return family_of(base).layer_name_fragment()


def classify_hidden(model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Logits of a sequence-classification model's head applied to its last layer's states."""
    return family_of(model).classify(model, hidden, attention_mask)
