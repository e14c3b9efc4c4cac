"""The layer-stack view runs every supported family exactly as transformers does, and decoder
classifiers pool the last real token whatever the padding.

Each family is checked on a small seeded model built from a config and saved as a local folder
(the path a hub id or a user's folder takes), borrowing SmolLM2's tokenizer.
"""

from __future__ import annotations

import pytest
import torch

FAMILY_CONFIGS = {
    "llama": dict(num_key_value_heads=2),
    "mistral": dict(num_key_value_heads=2, sliding_window=4),
    "qwen2": dict(num_key_value_heads=2),
    "qwen3": dict(num_key_value_heads=2, head_dim=16),
    "gpt2": dict(n_embd=64, n_layer=3, n_head=4, n_positions=128, n_inner=128),
}


@pytest.fixture(scope="module")
def decoder_folder(tmp_path_factory):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from app.backbones import _locate_smollm2_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(_locate_smollm2_tokenizer()))
    folders = {}

    def make(model_type: str):
        if model_type not in folders:
            extra = FAMILY_CONFIGS[model_type]
            common = {} if model_type == "gpt2" else dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                                         intermediate_size=128, max_position_embeddings=128)
            config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                          **common, **extra)
            torch.manual_seed(0)
            folder = tmp_path_factory.mktemp(model_type)
            AutoModel.from_config(config).save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            folders[model_type] = str(folder)
        return folders[model_type]
    return make


TEXTS = ["a long and rather wonderful film about nothing", "bad", "fine, I suppose"]


@pytest.mark.parametrize("model_type", sorted(FAMILY_CONFIGS))
def test_layer_by_layer_forward_matches_transformers_and_ignores_padding(model_type, decoder_folder):
    from app.backbones import get_backbone
    from app.layer_stack import LayerStack, classify_hidden

    backbone = get_backbone(decoder_folder(model_type))
    assert backbone.info().family == ("gpt2" if model_type == "gpt2" else "llama")
    assert backbone.info().causal
    model = backbone.load_for_classification(["no", "yes"]).eval()
    batch = backbone.tokenizer(TEXTS, padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        reference = model(**batch).logits
        states = LayerStack(model).hidden_states(batch["input_ids"], batch["attention_mask"])
        assert len(states) == 4
        torch.testing.assert_close(classify_hidden(model, states[-1], batch["attention_mask"]), reference)
        for i, text in enumerate(TEXTS):  # each example alone, unpadded, gives the same logits
            alone = model(**backbone.tokenizer([text], return_tensors="pt")).logits[0]
            torch.testing.assert_close(alone, reference[i], rtol=1e-4, atol=1e-5)
        # Right padding runs on causality alone (no padding mask); left padding needs the mask,
        # and keeps it: both give the reference logits.
        backbone.tokenizer.padding_side = "left"
        try:
            left = backbone.tokenizer(TEXTS, padding="max_length", max_length=16, return_tensors="pt")
        finally:
            backbone.tokenizer.padding_side = "right"
        left_states = LayerStack(model).hidden_states(left["input_ids"], left["attention_mask"])
        left_logits = classify_hidden(model, left_states[-1], left["attention_mask"])
        if model_type != "gpt2":  # GPT-2's learned positions shift with left padding; rotary ones do not matter
            torch.testing.assert_close(left_logits, reference, rtol=1e-4, atol=1e-5)


def test_decoder_pooling_reads_the_mask_not_pad_ids(decoder_folder):
    """An end-of-text token inside a text is the pad token too; pooling by the mask still finds
    the last real token, and left padding gives the same answer on a rotary model."""
    from app.backbones import get_backbone

    backbone = get_backbone(decoder_folder("llama"))
    model = backbone.load_for_classification(["no", "yes"]).eval()
    tokenizer = backbone.tokenizer
    eos = tokenizer.eos_token
    texts = [f"first part {eos} second part", "short"]
    right = tokenizer(texts, padding="max_length", max_length=12, return_tensors="pt")
    ids, mask = right["input_ids"], right["attention_mask"]
    lengths = mask.sum(1)
    left_ids, left_mask = torch.full_like(ids, tokenizer.pad_token_id), torch.zeros_like(mask)
    for row, length in enumerate(lengths.tolist()):
        left_ids[row, -length:] = ids[row, :length]
        left_mask[row, -length:] = 1
    with torch.no_grad():
        right_logits = model(input_ids=ids, attention_mask=mask).logits
        left_logits = model(input_ids=left_ids, attention_mask=left_mask).logits
        alone = model(**tokenizer([texts[0]], return_tensors="pt")).logits[0]
    torch.testing.assert_close(right_logits[0], alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(left_logits, right_logits, rtol=1e-4, atol=1e-4)
