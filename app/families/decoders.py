"""Decoder language models: the LLaMA family (LLaMA, Mistral, Qwen2, Qwen3: pre-norm layers with
RMSNorm, rotary positions, grouped-query attention, SwiGLU) and GPT-2 (learned positions, fused
query/key/value projection).

Their classifiers (`*ForSequenceClassification`) put a linear `score` on the final-normed state of
the last real token; `app.pooling.use_token_pooling` finds that token from the attention mask, so
right or left padding and prepended virtual tokens all pool the right state.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch._subclasses.fake_tensor import is_fake, unset_fake_temporarily

from ..pooling import pool_tokens, pooling_of
from .base import Family
from .parts import DecoderLayerParts, LayerParts, conv1d_views


def _positions(hidden: torch.Tensor) -> torch.Tensor:
    return torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)


def _needed_padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The padding mask, or None where causality alone hides every pad from every real token:
    with right padding each real token sees only earlier tokens, all real. Without a padding mask,
    attention takes its causal kernel, which keeps no attention matrix for backward (less memory,
    less time); pad positions then attend to each other, and nothing reads their states (pooling and
    losses look at real tokens only)."""
    if attention_mask is None or is_fake(attention_mask):
        # The memory estimate's batch (fake tensors, no values to read) is a full one: no padding at all.
        return None
    mask = attention_mask.bool()
    if bool((mask[:, 1:] <= mask[:, :-1]).all()):
        return None
    return attention_mask


def _mask_as_a_real_run_builds_it(build: Callable, **kwargs):
    """`build(**kwargs)` (one of transformers' mask builders), answered as it would be for real
    tensors. transformers takes fake tensors (the memory estimate) for a traced graph and always
    materialises the causal mask, where a real run without padding gets None and takes the causal
    kernel, which keeps no mask for backward: so the question is first asked on meta tensors of
    the same shapes."""
    hidden = kwargs["inputs_embeds"]
    if kwargs["attention_mask"] is None and is_fake(hidden):
        with unset_fake_temporarily():
            # No position ids: they are 0..L-1 here, and reading them for packed sequences needs values.
            probe = dict(kwargs, inputs_embeds=torch.empty(hidden.shape, dtype=hidden.dtype, device="meta"),
                         position_ids=None)
            if build(**probe) is None:
                return None
    return build(**kwargs)


class DecoderFamily(Family):
    causal = True
    head_modules = ("score",)

    def layer_mask(self, bare, attention_mask, hidden):
        from transformers.masking_utils import create_causal_mask

        return _mask_as_a_real_run_builds_it(create_causal_mask, config=bare.config, inputs_embeds=hidden,
                                             attention_mask=_needed_padding_mask(attention_mask), cache=None,
                                             position_ids=_positions(hidden))

    def run_layer(self, layer, hidden, mask, context):
        out = layer(hidden, attention_mask=mask, **context)
        return out[0] if isinstance(out, (tuple, list)) else out

    def classify(self, model: nn.Module, hidden: torch.Tensor, attention_mask) -> torch.Tensor:
        normed = self.final_norm(model.base_model)(hidden)
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        return model.score(pool_tokens(normed, attention_mask, pooling_of(model)))


class LlamaFamily(DecoderFamily):
    name = "llama"
    title = "LLaMA-style decoder"
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    layers_path = "layers"
    roles = {
        "query": "self_attn.q_proj",
        "key": "self_attn.k_proj",
        "value": "self_attn.v_proj",
        "attention_output": "self_attn.o_proj",
        "ffn_in": ("mlp.gate_proj", "mlp.up_proj"),
        "ffn_out": "mlp.down_proj",
    }
    # No dropout module after attention or the MLP: adapters transform those blocks' outputs.
    adapter_after_blocks = ("self_attn", "mlp")

    def embed(self, bare, input_ids, token_type_ids=None):
        return bare.embed_tokens(input_ids)

    def layer_mask(self, bare, attention_mask, hidden):
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        kwargs = dict(config=bare.config, inputs_embeds=hidden, attention_mask=_needed_padding_mask(attention_mask),
                      cache=None, position_ids=_positions(hidden))
        config = bare.config
        if config.model_type == "mistral" and getattr(config, "sliding_window", None):
            return _mask_as_a_real_run_builds_it(create_sliding_window_causal_mask, **kwargs)
        if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
            return {"full_attention": _mask_as_a_real_run_builds_it(create_causal_mask, **kwargs),
                    "sliding_attention": _mask_as_a_real_run_builds_it(create_sliding_window_causal_mask, **kwargs)}
        return _mask_as_a_real_run_builds_it(create_causal_mask, **kwargs)

    def layer_context(self, bare, hidden):
        positions = _positions(hidden)
        return {"position_embeddings": bare.rotary_emb(hidden, position_ids=positions), "position_ids": positions}

    def run_layer(self, layer, hidden, mask, context):
        if isinstance(mask, dict):  # Qwen2/Qwen3 with some sliding-window layers
            mask = mask[getattr(layer, "attention_type", "full_attention")]
        return super().run_layer(layer, hidden, mask, context)

    def layer_parts(self, layer):
        attention, mlp = layer.self_attn, layer.mlp
        return DecoderLayerParts(attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj,
                                 mlp.gate_proj, mlp.up_proj, mlp.down_proj, layer.input_layernorm,
                                 layer.post_attention_layernorm, getattr(attention, "q_norm", None),
                                 getattr(attention, "k_norm", None))

    def final_norm(self, bare):
        return bare.norm


class GPT2Family(DecoderFamily):
    name = "gpt2"
    title = "GPT-2 decoder"
    model_types = ("gpt2",)
    layers_path = "h"
    # GPT-2 computes query, key and value with one fused projection.
    roles = {
        "query": "attn.c_attn",
        "key": "attn.c_attn",
        "value": "attn.c_attn",
        "attention_output": "attn.c_proj",
        "ffn_in": "mlp.c_fc",
        "ffn_out": "mlp.c_proj",
    }
    adapter_after_dropouts = ("attn.resid_dropout", "mlp.dropout")

    def embed(self, bare, input_ids, token_type_ids=None):
        hidden = bare.wte(input_ids) + bare.wpe(_positions(input_ids))
        if token_type_ids is not None:
            hidden = hidden + bare.wte(token_type_ids)
        return bare.drop(hidden)

    def layer_parts(self, layer):
        query, key, value = conv1d_views(layer.attn.c_attn, 3)
        return LayerParts(query, key, value, conv1d_views(layer.attn.c_proj)[0], layer.ln_1,
                          conv1d_views(layer.mlp.c_fc)[0], conv1d_views(layer.mlp.c_proj)[0], layer.ln_2)

    def final_norm(self, bare):
        return bare.ln_f


LLAMA = LlamaFamily()
GPT2 = GPT2Family()
