"""Explaining a finished run's predictions: class probabilities, Integrated Gradients token
attributions (captum's LayerIntegratedGradients on the word-embedding outputs) and attention maps.

Works for any method whose model takes `input_ids`: the word-embedding layer the prediction
really uses is found by watching a forward pass, so wrapped models (peft, side networks,
module replacement) need no special case. Everything returned is plain data.
"""

from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass

import torch
from torch import nn

from .checkpoints import load_run_model, refuse_language_model
from .data import ColumnMap, encode, join_pairs, load_dataset
from .errors import LabError
from .families import BY_MODEL_TYPE, family_of
from .precision import QUANTIZED

DEFAULT_IG_STEPS = 32
WORD_START_MARKERS = ("Ġ", "▁")  # byte-level BPE and sentencepiece mark the start of a word


@dataclass
class Explainer:
    """A finished run's model with what explaining it needs."""

    run_id: str
    method: object
    model: nn.Module
    tokenizer: object
    label_names: list[str]
    max_length: int
    record: dict
    note: str = ""  # how the model explained differs from the run's own, when it does

    def encode(self, text: str, pair: str | None = None) -> dict:
        if not text or not text.strip():
            raise LabError("type a sentence to explain")

        (text,), pairs = join_pairs(self.tokenizer, [text], [pair] if pair else None)
        encoded = encode(self.tokenizer, text, pairs[0] if pairs else None, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        return {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def tokens(self, batch: dict) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())

    @torch.no_grad()
    def probabilities(self, texts: list[str], pairs: list[str] | None = None) -> list[list[float]]:
        out = []
        for i, text in enumerate(texts):
            batch = self.encode(text, pairs[i] if pairs else None)
            logits = self.method.predict(self.model, batch).float()
            out.append(torch.softmax(logits, -1)[0].tolist())
        return out


def load_explainer(store, run_id: str) -> Explainer:
    """A finished run's model, ready to attribute. Integrated Gradients needs gradients through the
    backbone, which quantized layers do not all give (torchao's dynamic int8 gives none): a run trained
    on an int8/int4 backbone is explained with the backbone's fp32 weights, and says so."""
    refuse_language_model(store.get_run(run_id), "explaining")
    loaded = load_run_model(store, run_id, "cpu", fp32_backbone=True)
    precision = loaded.config.backbone_precision
    quantized = precision in QUANTIZED
    return Explainer(
        note=(f"This run trained with its frozen backbone in {precision}; it is explained with the backbone's fp32 "
              "weights and its trained weights as they are (Integrated Gradients needs gradients through the "
              "backbone, which not every quantized layer gives).") if quantized else "",
        run_id=run_id,
        method=loaded.method,
        model=loaded.model,
        tokenizer=loaded.backbone.tokenizer,
        label_names=loaded.label_names,
        max_length=loaded.config.max_length,
        record=loaded.record,
    )


def used_word_embeddings(explainer: Explainer, batch: dict) -> nn.Embedding:
    """The token-embedding table the prediction reads `input_ids` from."""
    vocab = len(explainer.tokenizer)
    candidates = [m for m in explainer.model.modules()
                  if isinstance(m, nn.Embedding) and m.num_embeddings >= vocab - 1 and m.num_embeddings <= vocab + 512]
    if not candidates:
        raise LabError(f"run '{explainer.run_id}': no token-embedding table found in its model")
    fired: list[nn.Embedding] = []
    handles = [m.register_forward_hook(lambda module, args, output: fired.append(module)) for m in candidates]
    try:
        with torch.no_grad():
            explainer.method.predict(explainer.model, batch)
    finally:
        for handle in handles:
            handle.remove()
    if not fired:
        raise LabError(f"run '{explainer.run_id}': its prediction does not read token embeddings")
    return fired[0]


def _is_gradient_free_wrapper(function) -> bool:
    """A method wrapped by `@torch.no_grad()` or `@torch.inference_mode()`."""
    if getattr(function, "__wrapped__", None) is None or getattr(function, "__code__", None) is None:
        return False
    cells = dict(zip(function.__code__.co_freevars, function.__closure__ or ()))
    factory = cells.get("ctx_factory")
    owner = getattr(factory.cell_contents, "__self__", factory.cell_contents) if factory else None
    return isinstance(owner, (torch.no_grad, torch.inference_mode)) or owner in (torch.no_grad, torch.inference_mode)


@contextlib.contextmanager
def gradients_through_frozen_paths(model: nn.Module):
    """Integrated Gradients needs d(prediction)/d(embeddings). Methods that run a frozen part without
    autograd (LST's backbone) cut that path, so while attributing, their gradient-free methods run
    undecorated on this model instance. No weight changes; the instances get their methods back."""
    patched = []
    for module in model.modules():
        seen = set()
        for cls in type(module).__mro__:
            if cls is nn.Module or cls is object:
                break
            for name, function in vars(cls).items():
                if name in seen:
                    continue
                seen.add(name)
                if _is_gradient_free_wrapper(function):
                    setattr(module, name, types.MethodType(function.__wrapped__, module))
                    patched.append((module, name))
    try:
        yield len(patched)
    finally:
        for module, name in patched:
            delattr(module, name)


def merge_wordpieces(tokens: list[str], scores: list[float], special: set[str]) -> tuple[list[str], list[float]]:
    """Word-level tokens and summed scores: '##' pieces join the word before them; with BPE or
    sentencepiece tokens a marked piece starts a word."""
    bpe = any(t.startswith(WORD_START_MARKERS) for t in tokens)
    words: list[str] = []
    merged: list[float] = []
    for index, (token, score) in enumerate(zip(tokens, scores)):
        continues = (
            token not in special and words and words[-1] not in special and (
                token.startswith("##") if not bpe else not token.startswith(WORD_START_MARKERS)
            )
            and index > 0 and tokens[index - 1] not in special
        )
        if continues:
            words[-1] += token[2:] if token.startswith("##") else token
            merged[-1] += score
        else:
            words.append(token.lstrip("".join(WORD_START_MARKERS)) if bpe else token)
            merged.append(score)
    return words, merged


def attribute(explainer: Explainer, text: str, pair: str | None = None, *, target: int | None = None,
              n_steps: int = DEFAULT_IG_STEPS, merge_words: bool = True) -> dict:
    """Integrated Gradients of the target class probability with respect to each token's embedding,
    from a baseline where every non-special token is [PAD]."""
    from captum.attr import LayerIntegratedGradients

    batch = explainer.encode(text, pair)
    layer = used_word_embeddings(explainer, batch)
    input_ids = batch["input_ids"]
    attention_mask = batch.get("attention_mask")
    token_type_ids = batch.get("token_type_ids")
    tokenizer = explainer.tokenizer
    special_ids = set(tokenizer.all_special_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    baseline = torch.where(
        torch.tensor([[i in special_ids for i in input_ids[0].tolist()]]), input_ids, torch.full_like(input_ids, pad_id)
    )

    def forward(ids, mask, types):
        inputs = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            inputs["token_type_ids"] = types
        return torch.softmax(explainer.method.predict(explainer.model, inputs).float(), -1)

    with torch.no_grad():
        probabilities = forward(input_ids, attention_mask, token_type_ids)[0]
    chosen = int(probabilities.argmax()) if target is None else int(target)
    if not 0 <= chosen < len(explainer.label_names):
        raise LabError(f"target class {chosen} does not exist; this run has {len(explainer.label_names)} classes")
    ig = LayerIntegratedGradients(forward, layer)
    try:
        with torch.enable_grad(), gradients_through_frozen_paths(explainer.model):
            attributions, delta = ig.attribute(
                inputs=input_ids, baselines=baseline, target=chosen,
                additional_forward_args=(attention_mask, token_type_ids), n_steps=n_steps,
                internal_batch_size=max(1, min(n_steps, 16)), return_convergence_delta=True,
            )
    except RuntimeError as exc:
        if "does not require grad" in str(exc) or "not have been used in the graph" in str(exc):
            raise LabError(
                f"Integrated Gradients needs the prediction to depend differentiably on the token embeddings; "
                f"method '{explainer.method.name}' computes that path without autograd"
            ) from exc
        raise
    per_token = attributions.sum(-1)[0]
    scale = float(per_token.abs().max()) or 1.0
    scores = (per_token / scale).tolist()
    tokens = explainer.tokens(batch)
    special_tokens = set(tokenizer.all_special_tokens)
    words, word_scores = (merge_wordpieces(tokens, scores, special_tokens) if merge_words else (tokens, scores))
    return {
        "run_id": explainer.run_id,
        "tokens": words,
        "scores": word_scores,
        "special": [w in special_tokens for w in words],
        "target": chosen,
        "target_name": explainer.label_names[chosen],
        "probabilities": probabilities.tolist(),
        "label_names": list(explainer.label_names),
        "total": float(per_token.sum()),  # IG completeness: p(target | text) - p(target | baseline)
        "convergence_delta": float(delta.abs().max()),
        "n_steps": n_steps,
        "note": explainer.note,
    }


def _attention_encoder(model: nn.Module) -> nn.Module:
    """The bare transformer (encoder or decoder without its head) that serves predictions."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if (isinstance(module, PreTrainedModel) and getattr(module, "base_model", None) is module
                and module.config.model_type in BY_MODEL_TYPE):
            return module
    raise LabError("this run's model holds no transformer whose attention can be read")


def attention_maps(explainer: Explainer, text: str, pair: str | None = None) -> dict:
    """Attention weights of the encoder that serves predictions: [layer][head][query][key]."""
    batch = explainer.encode(text, pair)
    encoder = _attention_encoder(explainer.method.inference_model(explainer.model))
    try:
        encoder.set_attn_implementation("eager")  # fused kernels do not return attention weights
    except (AttributeError, ValueError):
        encoder.config._attn_implementation = "eager"
    with torch.no_grad():
        outputs = encoder(**batch, output_attentions=True, return_dict=True)
    attentions = getattr(outputs, "attentions", None)
    if not attentions:
        raise LabError(f"the encoder of run '{explainer.run_id}' did not return attention weights")
    return {
        # word-start markers of byte-level BPE and sentencepiece are not part of what a reader sees
        "tokens": [token.lstrip("".join(WORD_START_MARKERS)) or token for token in explainer.tokens(batch)],
        "attentions": [layer[0].float().tolist() for layer in attentions],
        "num_layers": len(attentions),
        "num_heads": int(attentions[0].shape[1]),
        "note": " ".join(filter(None, [_attention_note(explainer.method), _causal_note(encoder)])),
    }


def _causal_note(encoder: nn.Module) -> str:
    if not family_of(encoder).causal:
        return ""
    return ("A decoder attends causally: each token sees itself and the tokens before it, so every map is "
            "triangular, and the classifier reads the last token's state.")


def _attention_note(method) -> str:
    if method.trains_side_network:
        return (f"These are the frozen backbone's attention maps: {method.title} leaves them unchanged; its side "
                "network has its own.")
    if method.prepends_virtual_tokens:
        return "Attention of the backbone over the typed tokens only (the learned virtual tokens are left out)."
    return ""


def sample_texts(record: dict, split: str = "test", limit: int = 50) -> list[dict]:
    """Examples of a run's own dataset split (text, optional pair, gold label name)."""
    config = record["config"]
    dataset = load_dataset(
        config["dataset"],
        columns=ColumnMap(config.get("text_column", "text"), config.get("label_column", "label"),
                          config.get("text_pair_column") or None),
        split_seed=config.get("split_seed", 0),
        max_eval_examples=config.get("max_eval_examples"),
        max_train_examples=config.get("max_train_examples"),
    )
    part = dataset.split(split)
    return [
        {"text": part.texts[i], "pair": part.pairs[i] if part.pairs is not None else None,
         "label": dataset.label_names[part.labels[i]]}
        for i in range(min(limit, len(part)))
    ]
