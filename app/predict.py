"""A finished run's predictions on texts typed by hand: the reference every export is checked
against, and `python -m app predict`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checkpoints import LoadedRun, load_run_model
from .data import encode
from .errors import LabError
from .generation import Generated, generate_text
from .backbones import Backbone
from .methods.base import MODEL_INPUTS, Method
from .tasks import CAUSAL_LM


@dataclass
class Predictor:
    """A run's model with the tokenizer and length it was trained with."""

    loaded: LoadedRun

    @property
    def tokenizer(self):
        return self.loaded.backbone.tokenizer

    @property
    def max_length(self) -> int:
        return self.loaded.config.max_length

    def encode(self, texts: list[str], return_tensors: str = "pt") -> dict:
        """One padded batch, truncated to the run's max_length, as the run's tokenizer pads it."""
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise LabError("give one or more non-empty texts to predict")
        encoded = encode(self.tokenizer, texts, truncation=True, max_length=self.max_length, padding=True,
                                 return_tensors=return_tensors)
        return {k: encoded[k] for k in MODEL_INPUTS if k in encoded}

    @torch.no_grad()
    def logits(self, texts: list[str]) -> torch.Tensor:
        return self.loaded.method.predict(self.loaded.model, self.encode(texts)).float()

    def predict(self, texts: list[str]) -> dict:
        logits = self.logits(texts)
        probabilities = torch.softmax(logits, -1)
        names = list(self.loaded.label_names)
        return {"run_id": self.loaded.record["id"], "label_names": names, "texts": list(texts),
                "logits": logits.tolist(), "probabilities": probabilities.tolist(),
                "labels": [names[i] for i in probabilities.argmax(-1).tolist()]}


def load_predictor(store, run_id: str, *, allow_pairs: bool = False, fp32_backbone: bool = False) -> Predictor:
    """`allow_pairs`: also a sentence-pair run (an export's check feeds any text through the same
    function; typed predictions on single texts would not match its training). `fp32_backbone`: the
    frozen backbone in fp32 whatever the run trained with (an export carries fp32 weights)."""
    loaded = load_run_model(store, run_id, "cpu", fp32_backbone=fp32_backbone)
    if loaded.config.task == CAUSAL_LM:
        raise LabError(f"run '{run_id}' is a language model (task causal-lm): it writes text rather than predicting "
                       f"a class; try python -m app generate {run_id} --prompt TEXT")
    if loaded.config.text_pair_column and not allow_pairs:
        raise LabError(f"run '{run_id}' classifies sentence pairs; predicting typed single texts would not match "
                       "what it was trained on")
    return Predictor(loaded)


@dataclass
class TextWriter:
    """A causal-LM model with its method and backbone: continuations of typed prompts."""

    method: Method
    model: torch.nn.Module
    backbone: Backbone

    def generate(self, prompt: str, *, max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0,
                 on_text=None) -> Generated:
        """Greedy at temperature 0, else sampled with `seed`; `on_text` sees the answer grow token by token."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise LabError("give a non-empty prompt")
        if max_new_tokens < 1:
            raise LabError(f"max new tokens must be at least 1, got {max_new_tokens}")
        if not 0 <= temperature <= 10:
            raise LabError(f"temperature must be between 0 (greedy) and 10, got {temperature}")
        return generate_text(self.method, self.model, self.backbone.tokenizer, prompt,
                             max_new_tokens=max_new_tokens, max_positions=self.backbone.max_length,
                             temperature=temperature, seed=seed, on_text=on_text)


def load_writer(store, run_id: str) -> TextWriter:
    """A finished causal-LM run, ready to continue prompts (on the CPU, in the run's backbone precision)."""
    loaded = load_run_model(store, run_id, "cpu")
    if loaded.config.task != CAUSAL_LM:
        raise LabError(f"run '{run_id}' is a classifier (task {loaded.config.task}): it predicts classes rather than "
                       f"writing text; try python -m app predict {run_id} --text TEXT")
    return TextWriter(loaded.method, loaded.model, loaded.backbone)
