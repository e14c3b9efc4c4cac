"""A decoder run after training: text pairs, compression and explanations on the tiny LLaMA."""

from __future__ import annotations

import pytest
import torch

from conftest import train_now


@pytest.fixture(scope="module")
def decoder_store(tmp_path_factory):
    from app.store import RunStore

    return RunStore(tmp_path_factory.mktemp("decoder-runs"))


@pytest.fixture(scope="module")
def decoder_run(decoder_store):
    record = train_now(decoder_store, backbone="tiny-random-llama", steps=6, lr=1e-3)
    assert record["status"] == "finished", record.get("error")
    return record


def test_text_pairs_are_joined_with_the_decoders_end_of_text_token(decoder_store, tmp_path):
    from app.backbones import get_backbone
    from app.data import ColumnMap, load_dataset, tokenize_split

    path = tmp_path / "pairs.csv"
    path.write_text("premise,hypothesis,label\n" + "\n".join(
        f"a cat sat number {i},the cat {'sat' if i % 2 else 'flew'},{i % 2}" for i in range(60)))
    tokenizer = get_backbone("tiny-random-llama").tokenizer
    data = load_dataset(str(path), columns=ColumnMap("premise", "label", "hypothesis"))
    tensors = tokenize_split(tokenizer, data, "train", 32)
    first = tokenizer.decode(tensors["input_ids"][0][tensors["attention_mask"][0].bool()])
    assert first.count(tokenizer.eos_token) == 1 and first.index(tokenizer.eos_token) > 0
    record = train_now(decoder_store, backbone="tiny-random-llama", dataset=str(path), text_column="premise",
                       text_pair_column="hypothesis", steps=2)
    assert record["status"] == "finished", record.get("error")


def test_decoder_run_compresses_its_layers_and_refuses_structured_pruning(decoder_store, decoder_run):
    from app.compression.sweep import compress_run
    from app.errors import LabError

    points = compress_run(decoder_store, decoder_run["id"], {"sparsities": [0.5], "quantize": ["int8", "4bit"],
                                                             "latency_repeats": 1, "latency_warmup": 0})
    kinds = [p["kind"] for p in points]
    assert kinds == ["baseline", "unstructured", "int8", "kbit"]
    unstructured = points[1]
    assert "decoder layers" in unstructured["targets"]
    assert unstructured["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert points[2]["agreement"] >= 0.9  # int8 barely changes predictions
    with pytest.raises(LabError, match="decoder layers is not available yet"):
        compress_run(decoder_store, decoder_run["id"], {"structured_heads": 1})


def test_decoder_explanations_attribute_words_and_show_causal_attention(decoder_store, decoder_run):
    from app.explain import attention_maps, attribute, load_explainer

    explainer = load_explainer(decoder_store, decoder_run["id"])
    result = attribute(explainer, "free entry to win a prize", n_steps=16)
    assert result["tokens"] == ["free", "entry", "to", "win", "a", "prize"]  # byte-level pieces merged to words
    maps = attention_maps(explainer, "free entry to win")
    assert maps["tokens"] == ["free", "entry", "to", "win"]
    assert "causally" in maps["note"]
    for layer in maps["attentions"]:
        for head in layer:
            weights = torch.tensor(head)
            assert torch.all(weights.triu(1) == 0)  # no token attends to a later one
            torch.testing.assert_close(weights.sum(-1), torch.ones(len(weights)))
