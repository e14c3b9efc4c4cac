"""Why a causal-lm run wrote what it wrote: each prompt token's share in the answer, through captum's
LLM attribution API (`LLMAttribution` over `FeatureAblation`: every prompt token is taken out in turn
and the log-probability of the answer's tokens measured again).

captum drives a transformers-style model; every method's model answers through the lab's own forward
pass (`Method.lm_outputs`), so a small adapter gives it that face: `forward(input_ids, attention_mask)`
returns an output with `.logits`.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from .errors import LabError
from .predict import TextWriter, load_writer


class CaptumLanguageModel(nn.Module):
    """A method's language model as captum reads a transformers causal LM."""

    def __init__(self, writer: TextWriter):
        super().__init__()
        self.writer = writer
        self.inner = writer.model  # registered, so captum finds its parameters and device

    @property
    def device(self) -> torch.device:
        return next(self.inner.parameters()).device

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_ignored):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden, head = self.writer.method.lm_outputs(self.inner, {"input_ids": input_ids,
                                                                  "attention_mask": attention_mask})
        return SimpleNamespace(logits=head(hidden).float())


def explain_writer(writer: TextWriter, prompt: str, *, max_new_tokens: int = 16) -> dict:
    """The greedy answer to `prompt` and each prompt token's attribution to it (in log-probability of
    the whole answer, and per answer token)."""
    from captum.attr import FeatureAblation, LLMAttribution, TextTokenInput

    answer = writer.generate(prompt, max_new_tokens=max_new_tokens)
    if not answer.text.strip():
        raise LabError("the model ends its answer at once, so there is nothing to attribute; try another prompt")
    tokenizer = writer.backbone.tokenizer
    writer.model.eval()
    attribution = LLMAttribution(FeatureAblation(CaptumLanguageModel(writer)), tokenizer)
    # No key/value cache: the forward recomputes the sequence for each answer token, as generation does.
    result = attribution.attribute(TextTokenInput(prompt, tokenizer), target=answer.text, use_cached_outputs=False)
    per_token = result.token_attr

    def readable(tokens) -> list[str]:  # "Ġcat" -> " cat": byte-level pieces as the text they stand for
        return [tokenizer.convert_tokens_to_string([token]) for token in tokens]

    return {
        "prompt": prompt,
        "answer": answer.text,
        "prompt_tokens": readable(result.input_tokens),
        "answer_tokens": readable(result.output_tokens),
        "sequence": [float(v) for v in result.seq_attr.tolist()],
        "per_answer_token": per_token.tolist() if per_token is not None else None,
        "method": "captum LLMAttribution(FeatureAblation): the answer's log-probability without each prompt token",
    }


def explain_generation(store, run_id: str, prompt: str, *, max_new_tokens: int = 16) -> dict:
    if not isinstance(prompt, str) or not prompt.strip():
        raise LabError("give a non-empty prompt")
    return {"run_id": run_id, **explain_writer(load_writer(store, run_id), prompt, max_new_tokens=max_new_tokens)}
