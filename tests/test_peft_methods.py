"""The parameter-efficient baselines: BitFit, Houlsby adapters, prompt tuning, P-tuning and LoRA.

What a user relies on beyond the method matrix: each trains exactly the part its paper trains,
adapters start as the backbone, LoRA's merged export is the same model, virtual tokens cannot push
inputs past the backbone's positions, the update telemetry the live page draws is recorded, and
every method works on each supported architecture (tiny random RoBERTa, ELECTRA and MPNet
folders stand in for hub models).
"""

from __future__ import annotations

import pytest
import torch

from app.errors import ConfigError
from app.methods import create_method
from app.methods.base import BuildContext, model_inputs
from conftest import train_now

LABELS = ["negative", "positive"]
PEFT_METHODS = ("bitfit", "adapter", "prompt_tuning", "p_tuning", "lora")
SMALL = {
    "bitfit": {},
    "adapter": {"bottleneck": 8},
    "prompt_tuning": {"num_virtual_tokens": 3},
    "p_tuning": {"num_virtual_tokens": 3, "encoder_hidden_size": 16},
    "lora": {"rank": 2, "target_modules": ["query", "value", "ffn_out"]},
}


def _backbone(name="tiny-random"):
    from app.backbones import get_backbone

    return get_backbone(name)


def _context(backbone, restoring=False, max_length=16):
    return BuildContext(backbone=backbone, label_names=LABELS, device=torch.device("cpu"), seed=0,
                        restoring=restoring, max_length=max_length)


def _build(name, settings=None, backbone=None, seed=0):
    method = create_method(name, settings if settings is not None else SMALL[name])
    backbone = backbone or _backbone()
    torch.manual_seed(seed)
    return method, method.build(_context(backbone))


def _batch(backbone, texts=("a wonderful film", "a terrible film, really", "fine"), max_length=16):
    encoded = backbone.tokenizer(list(texts), truncation=True, padding="max_length", max_length=max_length,
                                 return_tensors="pt")
    batch = {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    batch["labels"] = torch.tensor([1, 0, 1])[: len(texts)]
    return batch


def _logits(method, model, batch):
    model.eval()
    with torch.no_grad():
        return method.predict(model, batch)


# --- tiny random encoders of the other supported architectures ----------------------------------

TINY_ARCH = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=72)


@pytest.fixture(scope="module")
def arch_folders(tmp_path_factory):
    """Model folders (config, random weights, the tiny backbone's WordPiece tokenizer) per architecture."""
    from transformers import AutoModel, ElectraConfig, MPNetConfig, RobertaConfig

    tokenizer = _backbone().tokenizer
    configs = {
        "roberta": RobertaConfig(**TINY_ARCH, pad_token_id=tokenizer.pad_token_id, type_vocab_size=1),
        # ELECTRA's embeddings are narrower than its hidden size: virtual tokens must take their width
        "electra": ElectraConfig(**TINY_ARCH, embedding_size=16),
        "mpnet": MPNetConfig(**TINY_ARCH),
    }
    folders = {}
    root = tmp_path_factory.mktemp("arch")
    for kind, config in configs.items():
        folder = root / kind
        torch.manual_seed(0)
        AutoModel.from_config(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[kind] = str(folder)
    return folders


# --- BitFit ------------------------------------------------------------------------------------


def test_bitfit_trains_exactly_the_biases_and_the_head():
    method, model = _build("bitfit")
    trainable = {n for n, _ in method.trainable_parameters(model)}
    every = dict(model.named_parameters())
    head = {n for n in every if n.startswith("classifier.")}
    biases = {n for n in every if n.endswith(".bias")}
    assert trainable == biases | head
    assert "bert.encoder.layer.0.attention.self.query.bias" in trainable
    assert "bert.encoder.layer.0.attention.self.query.weight" not in trainable
    # the pooler is part of the backbone: its bias trains, its weight matrix stays frozen
    assert "classifier.weight" in trainable and "bert.pooler.dense.bias" in trainable
    assert "bert.pooler.dense.weight" not in trainable
    share = sum(every[n].numel() for n in trainable) / sum(p.numel() for p in every.values())
    assert share < 0.05


# --- adapters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone_name", ["tiny-random", "tiny-random-llama", "tiny-random-gpt2"])
def test_adapters_start_as_the_backbone_and_sit_on_the_forward_path(backbone_name):
    backbone = _backbone(backbone_name)
    batch = _batch(backbone)
    torch.manual_seed(0)
    plain = backbone.load_for_classification(LABELS).eval()
    with torch.no_grad():
        expected = plain(**model_inputs(batch)).logits
    method, model = _build("adapter", {"bottleneck": 8}, backbone=backbone)
    adapters = model.adapters()
    assert len(adapters) == 2 * backbone.num_layers
    torch.testing.assert_close(_logits(method, model, batch), expected, rtol=0, atol=1e-6)

    with torch.no_grad():  # the last FFN adapter now adds something (not a constant: layer norm removes those)
        adapters[-1].up.bias.copy_(torch.linspace(-1.0, 1.0, adapters[-1].up.bias.numel()))
    assert (_logits(method, model, batch) - expected).abs().max() > 1e-4
    with torch.no_grad():  # and so does the first attention adapter
        adapters[-1].up.bias.zero_()
        adapters[0].up.bias.copy_(torch.linspace(-1.0, 1.0, adapters[0].up.bias.numel()))
    assert (_logits(method, model, batch) - expected).abs().max() > 1e-4


def test_adapters_train_adapters_layer_norms_and_head_by_default_as_the_reference_does():
    method, model = _build("adapter", {"bottleneck": 8})
    names = {n for n, _ in method.trainable_parameters(model)}
    norms = {n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    all_norm_parameters = {f"{m}.{p}" for m in norms for p in ("weight", "bias")}
    assert all_norm_parameters and all_norm_parameters <= names  # embeddings' LayerNorm included
    assert any("embeddings.LayerNorm" in n for n in all_norm_parameters)
    rest = names - all_norm_parameters
    assert all(".adapter." in n or n.startswith(("model.classifier.", "model.bert.pooler.")) for n in rest)
    assert sum(".adapter." in n for n in names) == 4 * 2 * _backbone().num_layers  # down/up weight and bias

    method, model = _build("adapter", {"bottleneck": 8, "train_layer_norms": False})
    without_norms = {n for n, _ in method.trainable_parameters(model)}
    assert without_norms == rest


def test_adapter_init_down_is_truncated_normal_at_the_reference_scale_and_up_is_zero():
    method, model = _build("adapter", {"bottleneck": 32})
    downs = torch.cat([a.down.weight.detach().flatten() for a in model.adapters()])
    assert 0.8e-3 < downs.std().item() < 1.0e-3  # std 1e-3 before cutting at 2 std shrinks it to ~0.88e-3
    assert downs.abs().max().item() <= 2e-3
    assert all(torch.count_nonzero(a.up.weight) == 0 and torch.count_nonzero(a.up.bias) == 0
               and torch.count_nonzero(a.down.bias) == 0 for a in model.adapters())


def test_adapter_bottleneck_wider_than_the_backbone_is_refused():
    method = create_method("adapter", {"bottleneck": 65})
    with pytest.raises(ConfigError, match="hidden size"):
        method.check_compatible(_backbone(), LABELS)


# --- LoRA --------------------------------------------------------------------------------------


def _randomise_lora(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


def test_lora_merged_export_loads_with_plain_transformers_and_gives_the_same_logits(tmp_path):
    from transformers import AutoModelForSequenceClassification

    backbone = _backbone()
    batch = _batch(backbone)
    method, model = _build("lora")
    _randomise_lora(model)  # a trained-looking update, so merging has something to merge
    expected = _logits(method, model, batch)

    result = method.export(model, tmp_path / "out", _context(backbone))
    assert result["format"] == "transformers"
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    assert not any("lora" in n for n, _ in exported.named_parameters())
    with torch.no_grad():
        got = exported(**model_inputs(batch)).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    original = backbone.load_for_classification(LABELS)
    query = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(exported.state_dict()[query], original.state_dict()[query])
    # the lab's model itself is left unmerged and still trainable
    assert any("lora_A" in n for n, _ in method.trainable_parameters(model))
    # and the unmerged updates are a peft adapter folder that loads on the backbone alone
    from peft import PeftModel

    assert "peft" in (tmp_path / "out" / "README.md").read_text()
    torch.manual_seed(123)  # a different random head: the adapter must bring the trained one
    base = AutoModelForSequenceClassification.from_pretrained(backbone.source, num_labels=2)
    adapted = PeftModel.from_pretrained(base, result["peft_adapter"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(adapted(**model_inputs(batch)).logits, expected, rtol=1e-4, atol=1e-5)


def test_lora_targets_are_chosen_by_role_and_checked():
    method, model = _build("lora", {"rank": 2, "target_modules": "key,ffn_out"})
    targeted = {n.rsplit(".lora_A", 1)[0].split("encoder.", 1)[1] for n, _ in model.named_parameters()
                if ".lora_A." in n}
    assert targeted == {f"layer.{i}.{part}" for i in range(4) for part in ("attention.self.key", "output.dense")}
    with pytest.raises(ConfigError, match="must be one of"):
        create_method("lora", {"target_modules": "query,keys"})
    with pytest.raises(ConfigError, match="at least one"):
        create_method("lora", {"target_modules": []})


def test_lora_update_telemetry_is_the_frobenius_norm_of_the_scaled_update():
    method, model = _build("lora", {"rank": 2, "alpha": 6, "target_modules": ["query", "value"]})
    _randomise_lora(model)
    telemetry = method.step_telemetry(model, None)["updates"]
    expected = []
    for layer in range(4):
        squared = 0.0
        for part in ("query", "value"):
            module = model.get_submodule(f"base_model.model.bert.encoder.layer.{layer}.attention.self.{part}")
            delta = module.lora_B["default"].weight @ module.lora_A["default"].weight * (6 / 2)
            squared += float(delta.detach().pow(2).sum())
        expected.append(squared ** 0.5)
    assert telemetry["labels"] == [f"layer {i}" for i in range(4)]
    assert telemetry["values"] == pytest.approx(expected, rel=1e-4)


# --- prompt tuning and P-tuning ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["prompt_tuning", "p_tuning"])
def test_virtual_tokens_must_fit_the_backbone_positions(name):
    from app.preparation import prepare_run
    from conftest import tiny_config

    limit = _backbone().max_length  # 128 for the tiny backbone
    settings = {"num_virtual_tokens": 20}
    with pytest.raises(ConfigError, match=rf"20 virtual tokens.*at most {limit - 20}"):
        prepare_run(tiny_config(method=name, method_config=settings, max_length=limit - 19))
    prepared = prepare_run(tiny_config(method=name, method_config=settings, max_length=limit - 20))
    with pytest.raises(ConfigError, match="no room for text"):
        create_method(name, {"num_virtual_tokens": limit}).check_compatible(_backbone(), LABELS)

    # at the limit the model really runs: every position the virtual tokens take exists
    method = prepared.method
    backbone = _backbone()
    torch.manual_seed(0)
    model = method.build(_context(backbone, max_length=limit - 20))
    batch = _batch(backbone, max_length=limit - 20)
    assert _logits(method, model, batch).shape == (3, 2)


def test_prompt_tuning_trains_the_virtual_tokens_and_the_head_only():
    method, model = _build("prompt_tuning", {"num_virtual_tokens": 5})
    trainable = dict(method.trainable_parameters(model))
    prompt = [n for n in trainable if n.startswith("prompt_encoder.")]
    assert len(prompt) == 1 and trainable[prompt[0]].shape == (5, 64)
    head = [n for n in trainable if "modules_to_save" in n]
    assert {n.split(".modules_to_save")[0] for n in head} == {"base_model.classifier", "base_model.bert.pooler"}
    assert set(trainable) == set(prompt) | set(head)


def test_prompt_tuning_from_class_names_starts_from_their_word_embeddings():
    backbone = _backbone()
    method, model = _build("prompt_tuning", {"num_virtual_tokens": 4, "init": "labels"})
    words = backbone.tokenizer(" ".join(LABELS))["input_ids"]  # [CLS] negative positive [SEP]
    embeddings = model.get_base_model().get_input_embeddings().weight
    prompts = model.prompt_encoder["default"].embedding.weight
    torch.testing.assert_close(prompts, embeddings[torch.tensor(words[:4])])
    with pytest.raises(ConfigError, match="init_text"):
        create_method("prompt_tuning", {"init": "text"})


@pytest.mark.parametrize("name", ["prompt_tuning", "p_tuning"])
def test_prompt_exports_include_a_peft_adapter_that_loads_without_the_lab(name, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    backbone = _backbone()
    batch = _batch(backbone)
    method, model = _build(name)
    with torch.no_grad():  # trained-looking virtual tokens and head
        for _, parameter in method.trainable_parameters(model):
            parameter.add_(torch.randn_like(parameter) * 0.1)
    expected = _logits(method, model, batch)

    result = method.export(model, tmp_path / "out", _context(backbone))
    assert result["format"] == "state_dict"
    assert "peft" in (tmp_path / "out" / "README.md").read_text()
    torch.manual_seed(123)  # a different random head: the adapter must bring the trained one
    base = AutoModelForSequenceClassification.from_pretrained(backbone.source, num_labels=2)
    loaded = PeftModel.from_pretrained(base, result["peft_adapter"]).eval()
    with torch.no_grad():
        got = loaded(**model_inputs(batch)).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# --- telemetry recorded by real runs -----------------------------------------------------------


@pytest.mark.parametrize("name,kind", [("adapter", "adapter output RMS"),
                                       ("lora", "‖ΔW‖ (LoRA B·A·scale, Frobenius)")])
def test_update_telemetry_is_recorded_every_logged_step(name, kind, store):
    record = train_now(store, method=name, method_config=SMALL[name], steps=4, eval_every=4, lr=1e-2)
    assert record["status"] == "finished", record.get("traceback")
    rows = store.telemetry(record["id"])
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    for row in rows:
        updates = row["updates"]
        assert set(updates) == {"labels", "values", "kind"}
        assert updates["kind"] == kind
        assert updates["labels"] == [f"layer {i}" for i in range(4)]
        assert all(isinstance(v, float) and v >= 0 for v in updates["values"])
    # both updates start at zero and grow as training moves them away from the backbone; the adapter
    # RMS is read during a step's forward pass (still the identity at step 1), ‖ΔW‖ after its update
    first, last = sum(rows[0]["updates"]["values"]), sum(rows[-1]["updates"]["values"])
    assert last > first and (first == 0 if name == "adapter" else first > 0)


# --- every supported architecture --------------------------------------------------------------


@pytest.mark.parametrize("arch", ["roberta", "electra", "mpnet"])
@pytest.mark.parametrize("name", PEFT_METHODS)
def test_method_works_on_each_architecture(name, arch, arch_folders, tmp_path):
    from app.export import load_exported
    from transformers import AutoModelForSequenceClassification

    backbone = _backbone(arch_folders[arch])
    method = create_method(name, SMALL[name])
    method.check_compatible(backbone, LABELS)
    torch.manual_seed(0)
    model = method.build(_context(backbone))
    model.train()
    batch = _batch(backbone)
    trainable = dict(method.trainable_parameters(model))
    assert trainable
    loss = method.training_step(model, batch, None).loss
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and with_grad <= set(trainable)
    telemetry = method.step_telemetry(model, None)
    if name in ("adapter", "lora"):
        assert telemetry["updates"]["labels"] == ["layer 0", "layer 1"]

    with torch.no_grad():
        for parameter in trainable.values():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    expected = _logits(method, model, batch)
    result = method.export(model, tmp_path / "out", _context(backbone))
    if result["format"] == "transformers":
        exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
        with torch.no_grad():
            got = exported(**model_inputs(batch)).logits
    else:
        got = _logits(method, load_exported(tmp_path / "out"), batch)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
