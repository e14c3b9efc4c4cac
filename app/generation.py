"""Text from a causal-LM run's model, token by token, through the method's own forward pass.

Every method's model answers the same way (`Method.lm_outputs`: the final states and the head that
reads them), so LST's side network, a LoRA-wrapped model and a fully tuned one generate through
one loop. It recomputes the whole sequence each token (no key/value cache): the lab generates a
few dozen tokens from short prompts, where that costs little, and it keeps the answer exactly what
the trained forward pass computes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from .methods.base import Method


@dataclass
class Generated:
    text: str  # the continuation alone, without the prompt
    tokens: int
    seconds: float


def _next_token(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probabilities = torch.softmax(logits.float() / temperature, dim=-1)
    return int(torch.multinomial(probabilities.cpu(), 1, generator=generator))


@torch.no_grad()
def stream_tokens(method: Method, model, prompt_ids: list[int], *, max_new_tokens: int, stop_ids: set[int],
                  max_positions: int, device: torch.device | str = "cpu", temperature: float = 0.0,
                  seed: int = 0) -> Iterator[int]:
    """The new tokens one at a time: greedy at temperature 0, else sampled (seeded). Stops at a stop
    token (not yielded) or after `max_new_tokens`; a sequence longer than the backbone's positions
    keeps its latest `max_positions` tokens."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed) if temperature > 0 else None
    ids = list(prompt_ids)
    try:
        for _ in range(max_new_tokens):
            window = torch.tensor([ids[-max_positions:]], device=device)
            hidden, head = method.lm_outputs(model, {"input_ids": window, "attention_mask": torch.ones_like(window)})
            token = _next_token(head(hidden[0, -1]), temperature, generator)
            if token in stop_ids:
                return
            ids.append(token)
            yield token
    finally:
        model.train(was_training)


def stop_tokens(tokenizer) -> set[int]:
    """End-of-text and, for chat templates, end-of-turn tokens."""
    stops = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for token in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            stops.add(token_id)
    return stops


def generate_text(method: Method, model, tokenizer, prompt: str, *, max_new_tokens: int, max_positions: int,
                  device: torch.device | str = "cpu", temperature: float = 0.0, seed: int = 0,
                  on_text: Callable[[str], None] | None = None) -> Generated:
    """The continuation of `prompt` as text; `on_text` sees the text so far after every token."""
    started = time.perf_counter()
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not prompt_ids:
        prompt_ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    new: list[int] = []
    for token in stream_tokens(method, model, prompt_ids, max_new_tokens=max_new_tokens, stop_ids=stop_tokens(tokenizer),
                               max_positions=max_positions, device=device, temperature=temperature, seed=seed):
        new.append(token)
        if on_text is not None:
            on_text(tokenizer.decode(new, skip_special_tokens=True))
    return Generated(tokenizer.decode(new, skip_special_tokens=True), len(new), time.perf_counter() - started)
