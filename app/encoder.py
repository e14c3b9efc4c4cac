"""One way to step through the layers of any supported encoder (BERT, RoBERTa, ELECTRA, MPNet).

Methods that rewire an encoder (ladder side networks, module replacement, truncation,
distillation on hidden states) need the embeddings, the layer list and a call that runs one
layer; the architectures differ in small ways (MPNet's relative position bias, ELECTRA's
embedding projection, layers returning tuples or tensors). This module hides those differences.
"""

from __future__ import annotations

import torch
from torch import nn


def bare_encoder(model: nn.Module) -> nn.Module:
    """The `AutoModel` part of a model with a task head (or the model itself)."""
    base = getattr(model, "base_model", model)
    if not hasattr(base, "encoder"):
        raise TypeError(f"{type(model).__name__} has no encoder with layers")
    return base


class EncoderView:
    def __init__(self, model: nn.Module):
        self.model = bare_encoder(model)
        self.config = self.model.config
        self.model_type = self.config.model_type

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.encoder.layer

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids}
        if token_type_ids is not None and self.model_type != "mpnet":
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.model.embeddings(**kwargs)
        project = getattr(self.model, "embeddings_project", None)
        return project(hidden) if project is not None else hidden

    def layer_mask(self, attention_mask: torch.Tensor | None, hidden: torch.Tensor):
        """The mask in the form this model's attention implementation expects."""
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)

    def layer_context(self, hidden: torch.Tensor) -> dict:
        """Extra per-forward inputs every layer takes (MPNet's relative position bias)."""
        if self.model_type == "mpnet":
            return {"position_bias": self.model.encoder.compute_position_bias(hidden)}
        return {}

    @staticmethod
    def run_layer(layer: nn.Module, hidden: torch.Tensor, mask, context: dict) -> torch.Tensor:
        out = layer(hidden, mask, **context)
        return out[0] if isinstance(out, (tuple, list)) else out

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """[embeddings, after layer 1, ..., after layer n]."""
        hidden = self.embed(input_ids, token_type_ids)
        mask = self.layer_mask(attention_mask, hidden)
        context = self.layer_context(hidden)
        states = [hidden]
        for layer in self.layers:
            hidden = self.run_layer(layer, hidden, mask, context)
            states.append(hidden)
        return states


def pool_first_token(hidden: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
