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


def test_decoder_run_compresses_its_layers(decoder_store, decoder_run):
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
    # 4 query heads in 2 key/value groups: heads go equally from each group
    with pytest.raises(LabError, match="multiple of 2"):
        compress_run(decoder_store, decoder_run["id"], {"structured_heads": 1})
    with pytest.raises(LabError, match="multiple of 2 up to 8"):
        compress_run(decoder_store, decoder_run["id"], {"structured_heads_total": 3})
    heads, total, ffn = compress_run(decoder_store, decoder_run["id"], {
        "structured_heads": 2, "structured_heads_total": 6, "structured_ffn": 0.5,
        "latency_repeats": 1, "latency_warmup": 0})[1:]
    assert heads["heads_left"] == [2, 2, 2, 2]
    # 6 of 16 heads in all, in rounds of one per group: every layer keeps 2 or 4, 10 in all
    assert sum(total["heads_left"]) == 10 and set(total["heads_left"]) <= {2, 4}
    assert all(len(removed) % 2 == 0 for removed in total["heads_removed"].values())
    assert heads["params"] < points[0]["params"] and ffn["params"] < points[0]["params"]


def test_a_total_of_decoder_heads_comes_first_from_the_least_important_layer():
    from app.backbones import get_backbone
    from app.compression.decoder_pruning import heads_per_layer, prune_heads
    from app.layer_stack import LayerStack

    model = get_backbone("tiny-random-llama").load_for_classification(["a", "b"]).eval()
    layers = LayerStack(model).layers
    size = layers[0].self_attn.head_dim
    with torch.no_grad():  # layer 2's heads 0 and 3 (one in each group) barely matter
        for h in (0, 3):
            layers[2].self_attn.q_proj.weight[h * size:(h + 1) * size] *= 1e-3
            layers[2].self_attn.o_proj.weight[:, h * size:(h + 1) * size] *= 1e-3
    plan = prune_heads(model, total=2)
    assert plan == {0: [], 1: [], 2: [0, 3], 3: []}
    assert heads_per_layer(model) == [4, 4, 2, 4]


def test_grouped_query_head_pruning_keeps_the_kept_heads_exact():
    """With two of four query heads gone (one from each key/value group), the attention output of the
    pruned layer equals the full layer's with those heads' output columns zeroed."""
    from app.backbones import get_backbone
    from app.compression.decoder_pruning import prune_heads
    from app.layer_stack import LayerStack

    model = get_backbone("tiny-random-llama").load_for_classification(["a", "b"]).eval()
    view = LayerStack(model)
    torch.manual_seed(0)
    hidden = torch.randn(2, 6, view.config.hidden_size)
    attention = view.layers[0].self_attn
    context = view.layer_context(hidden)
    size = attention.head_dim
    with torch.no_grad():
        plan = prune_heads(model, 2)
        removed = plan[0]
        assert len(removed) == 2 and {h // 2 for h in removed} == {0, 1}  # one head from each group
    full = get_backbone("tiny-random-llama").load_for_classification(["a", "b"]).eval()
    full_attention = LayerStack(full).layers[0].self_attn
    with torch.no_grad():
        for h in removed:
            full_attention.o_proj.weight[:, h * size:(h + 1) * size] = 0
        expected = full_attention(hidden, position_embeddings=context["position_embeddings"], attention_mask=None)[0]
        got = attention(hidden, position_embeddings=context["position_embeddings"], attention_mask=None)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


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


def test_decoder_pooling_mean_is_a_run_setting_kept_through_checkpoint_and_export(decoder_store, tmp_path):
    from app.backbones import get_backbone
    from app.checkpoints import load_run_model
    from app.errors import ConfigError
    from app.export import export_run, load_exported
    from app.preparation import prepare_run
    from conftest import tiny_config

    record = train_now(decoder_store, backbone="tiny-random-llama", decoder_pooling="mean", steps=3)
    assert record["status"] == "finished", record.get("error")
    loaded = load_run_model(decoder_store, record["id"])
    tokenizer = get_backbone("tiny-random-llama").tokenizer
    alone = {k: v for k, v in tokenizer(["a fine film indeed"], return_tensors="pt").items()}
    padded = {k: v for k, v in tokenizer(["a fine film indeed", "x"], padding="max_length", max_length=12,
                                         return_tensors="pt").items()}
    with torch.no_grad():
        mean_logits = loaded.method.predict(loaded.model, alone)
        torch.testing.assert_close(loaded.method.predict(loaded.model, padded)[0], mean_logits[0],
                                   rtol=1e-4, atol=1e-5)
    result = export_run(decoder_store, record["id"], tmp_path / "export")
    # plain transformers reads the last token: no plain folder that would predict differently
    assert result["format"] == "state_dict" and not (tmp_path / "export" / "config.json").exists()
    with torch.no_grad():
        exported = load_exported(tmp_path / "export")
        torch.testing.assert_close(exported(**alone).logits, mean_logits, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="applies to decoder backbones"):
        prepare_run(tiny_config(decoder_pooling="mean"), decoder_store)
