"""BERT-style encoders: BERT, RoBERTa, XLM-RoBERTa, ELECTRA (and MPNet, which differs in its
relative position bias and its attention's module names)."""

from __future__ import annotations

import torch
from torch import nn

from ..pooling import pool_with_mask
from .base import Family
from .parts import LayerParts


class BertFamily(Family):
    name = "bert"
    title = "BERT-style encoder"
    model_types = ("bert", "roberta", "xlm-roberta", "electra")
    layers_path = "encoder.layer"
    roles = {
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attention_output": "attention.output.dense",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
    }
    adapter_after_dropouts = ("attention.output.dropout", "output.dropout")

    def embed(self, bare, input_ids, token_type_ids=None):
        kwargs = {"input_ids": input_ids}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = bare.embeddings(**kwargs)
        project = getattr(bare, "embeddings_project", None)  # ELECTRA's embedding width differs
        return project(hidden) if project is not None else hidden

    def layer_mask(self, bare, attention_mask, hidden):
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(config=bare.config, inputs_embeds=hidden, attention_mask=attention_mask)

    def layer_parts(self, layer):
        attention = layer.attention
        heads = attention.self
        return LayerParts(heads.query, heads.key, heads.value, attention.output.dense, attention.output.LayerNorm,
                          layer.intermediate.dense, layer.output.dense, layer.output.LayerNorm)

    def classify(self, model: nn.Module, hidden: torch.Tensor, attention_mask) -> torch.Tensor:
        """BERT pools (dense + tanh) and applies dropout before its classifier; RoBERTa, ELECTRA and
        MPNet heads take the whole sequence. Either picks the first token, or the masked mean for a
        mean-pooled model (`app.pooling`), which is why the mask goes along."""
        pool_with_mask(model, attention_mask)
        pooler = getattr(model.base_model, "pooler", None)
        if pooler is not None:
            pooled = pooler(hidden)
            dropout = getattr(model, "dropout", None)
            return model.classifier(dropout(pooled) if dropout is not None else pooled)
        return model.classifier(hidden)


class MPNetFamily(BertFamily):
    name = "mpnet"
    title = "MPNet encoder"
    model_types = ("mpnet",)
    roles = {
        "query": "attention.attn.q",
        "key": "attention.attn.k",
        "value": "attention.attn.v",
        "attention_output": "attention.attn.o",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
    }
    adapter_after_dropouts = ("attention.dropout", "output.dropout")

    def embed(self, bare, input_ids, token_type_ids=None):
        return bare.embeddings(input_ids=input_ids)  # MPNet has no token types

    def layer_parts(self, layer):
        attention = layer.attention
        heads = attention.attn
        return LayerParts(heads.q, heads.k, heads.v, heads.o, attention.LayerNorm,
                          layer.intermediate.dense, layer.output.dense, layer.output.LayerNorm)

    def layer_context(self, bare, hidden):
        return {"position_bias": bare.encoder.compute_position_bias(hidden)}


BERT = BertFamily()
MPNET = MPNetFamily()
