"""Classifiers pool the way their backbone was pretrained: sentence-transformers encoders (MiniLM,
MPNet) read the masked mean of their token states, other encoders the first token. The choice
survives checkpoints, exports and Theseus' mixed forward pass."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import train_now


@pytest.fixture(scope="module")
def mean_pooled_folder(tmp_path_factory):
    """tiny-random's weights as a sentence-transformers folder that declares mean pooling."""
    from app.backbones import get_backbone

    source = get_backbone("tiny-random").source
    folder = tmp_path_factory.mktemp("mean-pooled") / "tiny-mean"
    shutil.copytree(source, folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True,
                                                                  "pooling_mode_cls_token": False}))
    return folder


def _batch(tokenizer, texts, length=None):
    kwargs = {"padding": "max_length", "max_length": length} if length else {"padding": True}
    return dict(tokenizer(texts, return_tensors="pt", truncation=True, **kwargs))


def test_sentence_transformers_folders_pool_the_mean_and_others_the_first_token(mean_pooled_folder, tmp_path):
    from app.backbones import get_backbone
    from app.pooling import pretrained_pooling

    assert pretrained_pooling(str(mean_pooled_folder)) == "mean"
    assert get_backbone(str(mean_pooled_folder)).info().pooling == "mean"
    assert get_backbone("tiny-random").pooling == "first"
    cls_folder = tmp_path / "cls"
    shutil.copytree(mean_pooled_folder, cls_folder)
    (cls_folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert pretrained_pooling(str(cls_folder)) == "first"
    assert pretrained_pooling(None) == "first"


def test_the_shipped_minilm_is_mean_pooled():
    from app.backbones import get_backbone

    assert get_backbone("minilm-l6").pooling == "mean"


def test_a_mean_pooled_classifier_reads_the_masked_mean_and_ignores_padding(mean_pooled_folder):
    from app.backbones import get_backbone

    backbone = get_backbone(str(mean_pooled_folder))
    torch.manual_seed(0)
    model = backbone.load_for_classification(["a", "b"]).eval()
    tokenizer = backbone.tokenizer
    texts = ["win a free prize now", "see you at lunch tomorrow, ok?"]
    batch = _batch(tokenizer, texts)
    with torch.no_grad():
        logits = model(**batch).logits
        hidden = model.bert(**batch).last_hidden_state  # the hooks leave the bare encoder's output alone
        mask = batch["attention_mask"].unsqueeze(-1).float()
        mean = (hidden * mask).sum(1) / mask.sum(1)
        expected = model.classifier(model.bert.pooler.activation(model.bert.pooler.dense(mean)))
        first = model.classifier(model.bert.pooler(hidden))
        longer = model(**_batch(tokenizer, texts, length=40)).logits
    assert torch.allclose(logits, expected, atol=1e-5)
    assert not torch.allclose(logits, first, atol=1e-3)
    assert torch.allclose(logits, longer, atol=1e-4)  # more padding, same prediction
    assert model.config.classifier_pooling == "mean"


def test_checkpoint_and_export_keep_mean_pooling(store, mean_pooled_folder, tmp_path):
    """transformers' BERT head reads the first token: a plain folder of a mean-pooled classifier would
    load without a warning and predict differently, so the export writes the lab's state and ONNX."""
    from app.backbones import get_backbone
    from app.checkpoints import load_run_model
    from app.export import export_run, load_exported
    from app.onnx_export import onnx_logits
    from app.predict import load_predictor

    record = train_now(store, backbone=str(mean_pooled_folder), method="full_ft", steps=4)
    assert record["status"] == "finished", record.get("error")
    loaded = load_run_model(store, record["id"], "cpu")
    result = export_run(store, record["id"], tmp_path / "export")
    assert result["format"] == "state_dict" and not (tmp_path / "export" / "config.json").exists()
    assert "No plain transformers folder" in (tmp_path / "export" / "README.md").read_text()
    batch = _batch(get_backbone(str(mean_pooled_folder)).tokenizer, ["free entry to win", "call me later"])
    with torch.no_grad():
        trained = loaded.method.inference_model(loaded.model).eval()(**batch).logits
        reloaded = load_exported(tmp_path / "export")(**batch).logits
    assert torch.allclose(trained, reloaded, atol=1e-5)
    texts = ["free entry to win", "call me later, ok?"]
    predictor = load_predictor(store, record["id"])
    assert torch.allclose(onnx_logits(tmp_path / "export" / "onnx", predictor, texts), predictor.logits(texts),
                          atol=1e-4)


def test_theseus_mixed_pass_pools_like_the_successor(store, mean_pooled_folder):
    from app.backbones import get_backbone
    from app.methods.theseus import TheseusModel
    from app.methods.layer_surgery import layer_list, shallow_copy_with_layers
    import copy

    backbone = get_backbone(str(mean_pooled_folder))
    torch.manual_seed(0)
    predecessor = backbone.load_for_classification(["a", "b"]).eval()
    layers = [copy.deepcopy(layer) for layer in layer_list(predecessor)[:2]]
    successor = shallow_copy_with_layers(predecessor, layers, share_rest=True).eval()
    model = TheseusModel(successor, predecessor, block_size=2).eval()
    batch = _batch(backbone.tokenizer, ["free entry to win a prize", "ok"])
    with torch.no_grad():
        alone = model(**batch, draws=[1, 1])
        mixed_all_successor = model.mixed_logits(batch["input_ids"], batch["attention_mask"],
                                                 batch.get("token_type_ids"), draws=[1, 1])
        mixed_all_predecessor = model.mixed_logits(batch["input_ids"], batch["attention_mask"],
                                                   batch.get("token_type_ids"), draws=[0, 0])
        predecessor_logits = predecessor(**batch).logits
    assert torch.allclose(alone, mixed_all_successor, atol=1e-5)
    assert torch.allclose(mixed_all_predecessor, predecessor_logits, atol=1e-5)


def test_a_prompt_tuning_export_on_a_mean_pooled_backbone_loads_as_its_note_says(store, mean_pooled_folder, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from app.backbones import get_backbone
    from app.checkpoints import load_run_model
    from app.export import export_run
    from app.pooling import relink_pooling, use_mean_pooling

    record = train_now(store, backbone=str(mean_pooled_folder), method="prompt_tuning", steps=4, lr=1e-2)
    assert record["status"] == "finished", record.get("error")
    result = export_run(store, record["id"], tmp_path / "export")
    assert "use_mean_pooling" in (tmp_path / "export" / "README.md").read_text()
    assert "relink_pooling" in (tmp_path / "export" / "README.md").read_text()
    loaded = load_run_model(store, record["id"], "cpu")
    batch = _batch(get_backbone(str(mean_pooled_folder)).tokenizer, ["free entry to win", "call me later"])
    base = use_mean_pooling(AutoModelForSequenceClassification.from_pretrained(str(mean_pooled_folder), num_labels=2))
    peft_model = relink_pooling(PeftModel.from_pretrained(base, result["peft_adapter"])).eval()
    with torch.no_grad():
        expected = loaded.method.predict(loaded.model.eval(), batch)
        got = peft_model(**batch).logits
    assert torch.allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("method", ["lora", "prompt_tuning"])
def test_peft_methods_on_a_mean_pooled_backbone_ignore_padding(mean_pooled_folder, method):
    """peft trains a copy of the head modules; the copy must still pool over real tokens only."""
    from app.backbones import get_backbone
    from app.methods import create_method
    from app.methods.base import BuildContext

    backbone = get_backbone(str(mean_pooled_folder))
    model = create_method(method, {}).build(BuildContext(backbone=backbone, label_names=["a", "b"],
                                                         device=torch.device("cpu"), seed=0)).eval()
    tokenizer = backbone.tokenizer
    alone = tokenizer(["bad"], return_tensors="pt")
    padded = tokenizer(["a long and rather wonderful film", "bad"], padding="max_length", max_length=24,
                       return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**padded).logits[1], model(**alone).logits[0], rtol=1e-4, atol=1e-5)
