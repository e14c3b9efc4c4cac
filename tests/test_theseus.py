"""BERT-of-Theseus on the tiny random backbone: 4 predecessor layers, a 2-layer successor.

Covers what a user relies on: the mixed forward really switches between predecessor blocks and
successor layers, the schedulers give their formulas, only the successor trains, phase 2 keeps the
best successor and stops by patience, the export is a plain 2-layer model with the same logits,
and bad predecessors are refused with a clear message. Also the predecessor -> Theseus chain.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from app.errors import ConfigError
from app.methods import create_method
from app.methods.base import BuildContext, TrainState, model_inputs
from conftest import tiny_config, train_now

# Theseus runs on the predecessor's data settings (TINY: sms-spam, 64 eval examples).
THESEUS_RUN = dict(steps=8, eval_every=2, lr=1e-3)


@pytest.fixture(scope="module")
def theseus_run(session_store, finished_full_ft):
    record = train_now(session_store, method="theseus", **THESEUS_RUN,
                       method_config={"predecessor": finished_full_ft["id"], "patience": 0})
    assert record["status"] == "finished", record.get("traceback") or record.get("error")
    return record


def _context(store, backbone_name="tiny-random", label_names=("ham", "spam")):
    from app.backbones import get_backbone
    from app.checkpoints import load_reference

    device = torch.device("cpu")
    return BuildContext(backbone=get_backbone(backbone_name), label_names=list(label_names), device=device,
                        seed=0, load_reference=lambda ref: load_reference(store, ref, device), max_length=32)


def _validation_batch(size=8):
    from app.backbones import get_backbone
    from app.data import load_dataset, tokenize_split

    data = load_dataset("sms-spam", max_train_examples=256, max_eval_examples=64)
    tensors = tokenize_split(get_backbone("tiny-random").tokenizer, data, "validation", 32)
    batch = {k: v[:size] for k, v in tensors.items()}
    batch["index"] = torch.arange(size)
    return batch


def _built(store, predecessor, **settings):
    method = create_method("theseus", {"predecessor": predecessor, **settings})
    torch.manual_seed(0)
    model = method.build(_context(store))
    return method, model


def test_label_names_of_the_tiny_dataset_match_the_context(finished_full_ft):
    # The helpers above assume sms-spam's classes; a change there should fail here, not obscurely.
    assert finished_full_ft["summary"]["dataset"]["label_names"] == ["ham", "spam"]


def test_draws_switch_between_predecessor_blocks_and_successor_layers(session_store, finished_full_ft):
    method, model = _built(session_store, finished_full_ft["id"])
    model.eval()
    batch = model_inputs(_validation_batch())
    with torch.no_grad():
        predecessor = model.predecessor(**batch).logits
        successor = model.successor(**batch).logits
        all_predecessor = model(**batch, draws=[0, 0])
        all_successor = model.mixed_logits(**batch, draws=[1, 1])
        mixed = model(**batch, draws=[1, 0])
    torch.testing.assert_close(all_predecessor, predecessor, rtol=0, atol=1e-6)
    torch.testing.assert_close(all_successor, successor, rtol=0, atol=1e-6)
    # The successor starts as predecessor layers 0..1, so it differs from the 4-layer predecessor.
    assert not torch.allclose(successor, predecessor, atol=1e-4)
    assert not torch.allclose(mixed, predecessor, atol=1e-6) and not torch.allclose(mixed, successor, atol=1e-6)
    # Module 0 replaces predecessor layers 0-1; module 1 replaces layers 2-3.
    assert model.block_size == 2 and model.num_modules == 2


def test_successor_init_copies_predecessor_layers_or_backbone_layers(session_store, finished_full_ft):
    from app.backbones import get_backbone

    _, from_predecessor = _built(session_store, finished_full_ft["id"])
    _, from_block_ends = _built(session_store, finished_full_ft["id"], successor_init="block_last")
    _, from_backbone = _built(session_store, finished_full_ft["id"], successor_init="backbone")
    fresh = get_backbone("tiny-random").load_encoder()
    for i in range(2):
        ours = from_predecessor.successor.bert.encoder.layer[i].state_dict()
        theirs = from_predecessor.predecessor.bert.encoder.layer[i].state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
        # Module i replaces layers 2i and 2i+1 and starts as layer 2i+1.
        ours = from_block_ends.successor.bert.encoder.layer[i].state_dict()
        theirs = from_block_ends.predecessor.bert.encoder.layer[2 * i + 1].state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
        ours = from_backbone.successor.bert.encoder.layer[i].state_dict()
        pretrained = fresh.encoder.layer[i].state_dict()
        assert all(torch.equal(ours[k], pretrained[k]) for k in ours)
    # Embeddings and head are the predecessor's very tensors.
    assert from_predecessor.successor.classifier.weight is from_predecessor.predecessor.classifier.weight


def test_linear_scheduler_gives_the_formula():
    method = create_method("theseus", {"predecessor": "x", "linear_k": 0.1, "linear_b": 0.3, "phase2_start": 50})
    state = TrainState(step=0, total_steps=100, device=torch.device("cpu"), generator=torch.Generator())
    method.on_train_start(None, state)
    for step in range(1, 50):
        assert method.replacement_probability(step) == pytest.approx(min(1.0, 0.1 * (step - 1) + 0.3))
    assert method.replacement_probability(50) == 1.0  # phase 2


def test_linear_scheduler_default_reaches_one_when_phase2_starts():
    method = create_method("theseus", {"predecessor": "x"})  # b = 0.3, k chosen for the run
    state = TrainState(step=0, total_steps=40, device=torch.device("cpu"), generator=torch.Generator())
    method.on_train_start(None, state)
    p = [method.replacement_probability(step) for step in range(1, 41)]
    assert p[0] == pytest.approx(0.3)
    assert all(a <= b for a, b in zip(p, p[1:]))
    assert p[19] == pytest.approx(1.0) and p[18] < 1.0  # step 20 is phase 1's last step
    assert method.run_summary(None)["phase2_start_step"] == 21


def test_official_preset_follows_the_readme_schedule_and_the_automatic_slope_is_steeper():
    from app.config import RunConfig
    from app.methods.theseus import Theseus

    preset = Theseus.presets["official"]
    run = RunConfig.from_dict(dict(preset["run"], method="theseus", method_config={}))
    method = create_method("theseus", {"predecessor": "x", **preset["method_config"]})
    method.on_train_start(None, TrainState(step=0, total_steps=run.steps, device=torch.device("cpu"),
                                           generator=torch.Generator()))
    assert method.replacement_probability(1) == pytest.approx(0.3)
    assert method.replacement_probability(1001) == pytest.approx(0.3 + 0.0006 * 1000)
    assert method.replacement_probability(1167) < 1.0 <= method.replacement_probability(1168)
    assert method.run_summary(None)["phase2_start_step"] == 1168 < run.steps
    assert run.lr == 2e-5 and run.batch_size == 32 and run.warmup_ratio == 0.0

    automatic = create_method("theseus", {"predecessor": "x"})  # a 300-step run, phase 2 at half
    automatic.on_train_start(None, TrainState(step=0, total_steps=300, device=torch.device("cpu"),
                                              generator=torch.Generator()))
    slope = automatic.replacement_probability(3) - automatic.replacement_probability(2)
    assert 7 < slope / 0.0006 < 9  # what the linear_k help says


def test_constant_scheduler_switches_to_one():
    method = create_method("theseus", {"predecessor": "x", "scheduler": "constant", "replace_rate": 0.5,
                                       "constant_switch_step": 5, "phase2_start": 0.9})
    state = TrainState(step=0, total_steps=10, device=torch.device("cpu"), generator=torch.Generator())
    method.on_train_start(None, state)
    assert [method.replacement_probability(s) for s in range(1, 8)] == [0.5] * 4 + [1.0] * 3


def test_draws_are_seeded_bernoulli_per_module(session_store, finished_full_ft):
    def draws(seed):
        method, model = _built(session_store, finished_full_ft["id"], scheduler="constant", replace_rate=0.3,
                               phase2_start=0.99)
        state = TrainState(step=0, total_steps=400, device=torch.device("cpu"),
                           generator=torch.Generator().manual_seed(seed))
        method.on_train_start(model, state)
        rows = []
        for step in range(1, 301):
            state.step = step
            method.on_step_start(model, state)
            telemetry = method.step_telemetry(model, state)["theseus"]
            assert telemetry["p"] == 0.3 and telemetry["phase"] == 1
            rows.append(telemetry["draws"])
        return rows

    first = draws(1)
    assert first == draws(1)
    assert first != draws(2)
    rate = sum(map(sum, first)) / (2 * len(first))
    assert 0.22 < rate < 0.38


def test_only_successor_layers_train(session_store, finished_full_ft, theseus_run):
    from app.checkpoints import WEIGHTS_FILE, load_run_model

    saved = load_file(str(session_store.run_dir(theseus_run["id"]) / WEIGHTS_FILE))
    assert saved and all(k.startswith("successor.bert.encoder.layer.") for k in saved)
    theseus = load_run_model(session_store, theseus_run["id"]).model
    predecessor = load_run_model(session_store, finished_full_ft["id"]).model
    for name, tensor in predecessor.state_dict().items():
        assert torch.equal(theseus.predecessor.state_dict()[name], tensor), f"predecessor {name} changed"
    for name in ("bert.embeddings.word_embeddings.weight", "bert.pooler.dense.weight", "classifier.weight"):
        assert torch.equal(theseus.successor.state_dict()[name], predecessor.state_dict()[name])
    moved = [name for name, tensor in theseus.successor.bert.encoder.layer.state_dict().items()
             if not torch.equal(tensor, predecessor.bert.encoder.layer.state_dict()[name])]
    assert moved, "the successor layers did not train"


def test_run_records_schedule_summary_and_the_predecessor_reference(session_store, finished_full_ft, theseus_run):
    steps = session_store.telemetry(theseus_run["id"])
    assert [row["step"] for row in steps] == list(range(1, 9))
    summary = theseus_run["summary"]["method_summary"]
    assert summary["phase2_start_step"] == 5
    for row in steps:
        item = row["theseus"]
        assert len(item["draws"]) == 2 and set(item["draws"]) <= {0, 1}
        assert item["phase"] == (2 if row["step"] >= 5 else 1)
        if item["phase"] == 2:
            assert item["p"] == 1.0 and item["draws"] == [1, 1]
    assert steps[0]["theseus"]["p"] == pytest.approx(0.3)
    assert summary["predecessor"] == {
        "source": finished_full_ft["id"],
        # Same dataset settings, so the predecessor scores what its own run recorded.
        "val_accuracy": pytest.approx(finished_full_ft["metrics"]["val_accuracy"]),
        "params": summary["predecessor"]["params"],
        "layers": 4,
    }
    assert summary["successor"]["layers"] == 2
    assert summary["successor"]["params"] < summary["predecessor"]["params"]
    assert summary["best_step"] in (6, 8)  # the phase-2 evaluations


def test_phase2_restores_the_best_successor_for_the_final_metrics(session_store, theseus_run):
    summary = theseus_run["summary"]["method_summary"]
    evals = {row["step"]: row for row in session_store.evals(theseus_run["id"], "validation")}
    best = evals[summary["best_step"]]
    phase2 = [row for step, row in evals.items() if step >= summary["phase2_start_step"]]
    assert best["accuracy"] == max(row["accuracy"] for row in phase2)
    assert theseus_run["metrics"]["val_accuracy"] == best["accuracy"]
    assert theseus_run["metrics"]["val_loss"] == pytest.approx(best["loss"], rel=1e-5)


def test_phase2_stops_by_patience_and_keeps_the_best(session_store, finished_full_ft):
    method, model = _built(session_store, finished_full_ft["id"], phase2_start=0, patience=2)
    state = TrainState(step=0, total_steps=100, device=torch.device("cpu"), generator=torch.Generator())
    method.on_train_start(model, state)
    layer = model.successor.bert.encoder.layer[0].output.dense.weight
    history = [(10, 0.50, 0.7), (20, 0.60, 0.6), (30, 0.55, 0.6), (40, 0.60, 0.65)]
    kept = None
    for step, accuracy, loss in history:
        with torch.no_grad():
            layer.add_(0.01)  # training moves the weights between evaluations
        state.step = step
        method.after_eval(model, state, {"accuracy": accuracy, "loss": loss})
        if step == 20:
            kept = layer.detach().clone()
        assert state.stop_requested == (step == 40)
    method.on_train_end(model, state)
    assert state.extra.get("restored_best") is True
    assert torch.equal(layer, kept)
    assert method.run_summary(model)["best_step"] == 20
    assert method.run_summary(model)["stopped_early"] is True


def test_checkpoint_restores_the_successor_exactly(session_store, theseus_run):
    from app.checkpoints import load_run_model
    from app.data import load_dataset, tokenize_split
    from app.training import evaluate

    loaded = load_run_model(session_store, theseus_run["id"])
    data = load_dataset("sms-spam", max_train_examples=256, max_eval_examples=64)
    tensors = tokenize_split(loaded.backbone.tokenizer, data, "validation", 32)
    metrics = evaluate(loaded.method, loaded.model, tensors, batch_size=32, device=torch.device("cpu"),
                       num_labels=2)
    assert metrics["accuracy"] == theseus_run["metrics"]["val_accuracy"]
    assert metrics["loss"] == pytest.approx(theseus_run["metrics"]["val_loss"], rel=1e-5)


def test_export_is_a_plain_successor_with_the_same_logits(session_store, theseus_run, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from app.checkpoints import load_run_model
    from app.export import export_run

    result = export_run(session_store, theseus_run["id"], tmp_path / "successor")
    assert result["format"] == "transformers"
    config = json.loads((tmp_path / "successor" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and "auto_map" not in config
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "successor").eval()
    assert len(exported.bert.encoder.layer) == 2
    loaded = load_run_model(session_store, theseus_run["id"])
    batch = _validation_batch()
    with torch.no_grad():
        expected = loaded.method.predict(loaded.model, batch)
        got = exported(**model_inputs(batch)).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_a_model_folder_works_as_predecessor(session_store, finished_full_ft, tmp_path):
    from app.export import export_run

    export_run(session_store, finished_full_ft["id"], tmp_path / "predecessor")
    method, model = _built(session_store, str(tmp_path / "predecessor"))
    model.eval()
    batch = model_inputs(_validation_batch())
    with torch.no_grad():
        torch.testing.assert_close(model(**batch, draws=[0, 0]), model.predecessor(**batch).logits)
    assert method.run_summary(model)["predecessor"]["source"] == str(tmp_path / "predecessor")


def test_layer_count_that_does_not_divide_is_refused(session_store, finished_full_ft, tmp_path):
    from app.export import export_run
    from app.preparation import prepare_run

    with pytest.raises(ConfigError, match=r"backbone 'tiny-random' has 4 layers, which do not split into 3 "
                                          r"equal modules; choose layers from \[1, 2, 4\]"):
        prepare_run(tiny_config(method="theseus", method_config={"predecessor": finished_full_ft["id"],
                                                                 "layers": 3}), session_store)
    export_run(session_store, finished_full_ft["id"], tmp_path / "predecessor")
    with pytest.raises(ConfigError, match=r"predecessor '.*predecessor' has 4 layers, which do not split into 3"):
        prepare_run(tiny_config(method="theseus", method_config={"predecessor": str(tmp_path / "predecessor"),
                                                                 "layers": 3}), session_store)


def test_missing_predecessor_is_refused(session_store):
    from app.preparation import prepare_run

    with pytest.raises(ConfigError, match="theseus needs a predecessor"):
        prepare_run(tiny_config(method="theseus"), session_store)


def test_predecessor_with_other_classes_is_refused(session_store, finished_full_ft, tmp_path):
    from app.export import export_run
    from app.preparation import prepare_run

    with pytest.raises(ConfigError, match="trained on classes"):
        prepare_run(tiny_config(method="theseus", dataset="trec-6",
                                method_config={"predecessor": finished_full_ft["id"]}), session_store)
    folder = tmp_path / "renamed"
    export_run(session_store, finished_full_ft["id"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "negative", "1": "positive"}
    config["label2id"] = {"negative": 0, "positive": 1}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"trained on classes \['negative', 'positive'\]"):
        prepare_run(tiny_config(method="theseus", method_config={"predecessor": str(folder)}), session_store)
    # The method checks again once the folder is loaded (e.g. when it is rebuilt elsewhere).
    with pytest.raises(ConfigError, match="trained on classes"):
        _built(session_store, str(folder))


def test_a_predecessor_that_is_not_a_plain_model_is_refused():
    from app.methods.base import Reference
    from app.methods.layer_surgery import require_plain_model

    reference = Reference(model=torch.nn.Linear(2, 2), label_names=["ham", "spam"], source="run-x",
                          plain_model=None, record={"method": "lst"})
    with pytest.raises(ConfigError, match="'lst' run whose model is not a plain transformers model"):
        require_plain_model(reference, "predecessor")


# --- the one-step chain: fine-tune a predecessor, then Theseus it ------------------------------


@pytest.fixture
def manager(runs_dir):
    from app.manager import RunManager
    from app.store import RunStore

    manager = RunManager(RunStore(runs_dir))
    yield manager
    manager.shutdown()


def test_chain_trains_predecessor_then_theseus_and_truncation(manager):
    from app.pipelines import submit_theseus_chain

    ids = submit_theseus_chain(manager, tiny_config(steps=4, eval_every=2, name="demo"), layers=2,
                               predecessor_overrides={"steps": 6})
    assert set(ids) == {"predecessor", "theseus", "truncate"}
    records = {role: manager.wait(run_id, timeout=600) for role, run_id in ids.items()}
    for role, record in records.items():
        assert record["status"] == "finished", (role, record.get("error"))
    assert records["predecessor"]["config"]["steps"] == 6 and records["predecessor"]["method"] == "full_ft"
    theseus = records["theseus"]
    assert theseus["config"]["method_config"]["predecessor"] == ids["predecessor"]
    assert theseus["summary"]["method_summary"]["predecessor"]["source"] == ids["predecessor"]
    assert theseus["summary"]["method_summary"]["successor"]["layers"] == 2
    assert records["truncate"]["summary"]["method_summary"]["layers"] == 2
    assert theseus["config"]["name"] == "demo · Theseus → 2 layers"


def test_chain_fails_theseus_when_the_predecessor_fails(manager, monkeypatch):
    from app.errors import LabError
    from app.methods.full_ft import FullFineTuning
    from app.pipelines import submit_theseus_chain

    def broken_step(self, model, batch, state):
        raise LabError("the predecessor broke on purpose")

    monkeypatch.setattr(FullFineTuning, "training_step", broken_step)
    ids = submit_theseus_chain(manager, tiny_config(steps=2), include_truncate=False)
    predecessor = manager.wait(ids["predecessor"], timeout=300)
    theseus = manager.wait(ids["theseus"], timeout=300)
    assert predecessor["status"] == "failed" and "broke on purpose" in predecessor["error"]
    assert theseus["status"] == "failed"
    assert ids["predecessor"] in theseus["error"] and "did not finish" in theseus["error"]
    assert theseus["step"] in (0, None)


def test_chain_settings_are_checked_before_anything_is_queued(manager):
    from app.pipelines import submit_theseus_chain

    with pytest.raises(ConfigError, match="do not split into 3"):
        submit_theseus_chain(manager, tiny_config(), layers=3, include_truncate=False)
    assert manager.store.list_runs() == []


def test_cli_trains_a_new_predecessor_then_theseus(runs_dir, capsys):
    from app.cli import main

    code = main(["train", "--backbone", "tiny-random", "--dataset", "sms-spam", "--method", "theseus",
                 "--set", "predecessor=new", "--set", "layers=2", "--steps", "4", "--batch-size", "8",
                 "--max-length", "32", "--max-train-examples", "128", "--max-eval-examples", "32",
                 "--eval-every", "2", "--quiet", "--json", "--runs-dir", str(runs_dir)])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["method"] == "theseus" and result["status"] == "finished"
    assert result["predecessor_run"]["method"] == "full_ft" and result["predecessor_run"]["status"] == "finished"
    from app.store import RunStore

    record = RunStore(runs_dir).get_run(result["run_id"])
    assert record["config"]["method_config"]["predecessor"] == result["predecessor_run"]["run_id"]


@pytest.fixture(scope="module")
def thirty_layer_decoder(tmp_path_factory) -> str:
    """A 30-layer LLaMA-style classifier folder (SmolLM2's depth at a tiny width), as a predecessor."""
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    from app.backbones import get_backbone

    tokenizer = get_backbone("tiny-random-llama").tokenizer
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=30,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id, num_labels=2, id2label={0: "ham", 1: "spam"},
                         label2id={"ham": 0, "spam": 1})
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("thirty") / "llama-30"
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("successor_layers", [15, 10, 6, 5, 3])
def test_a_thirty_layer_decoder_shrinks_to_every_divisor_and_exports_that_many_layers(
        session_store, thirty_layer_decoder, successor_layers, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from app.backbones import get_backbone
    from app.data import load_dataset, tokenize_split

    method = create_method("theseus", {"predecessor": thirty_layer_decoder, "layers": successor_layers})
    method.check_backbone(get_backbone(thirty_layer_decoder), ["ham", "spam"])
    torch.manual_seed(0)
    model = method.build(_context(session_store, thirty_layer_decoder)).eval()
    assert model.num_modules == successor_layers and model.block_size == 30 // successor_layers
    data = load_dataset("sms-spam", max_train_examples=16, max_eval_examples=8)
    tensors = tokenize_split(get_backbone(thirty_layer_decoder).tokenizer, data, "validation", 24)
    batch = model_inputs({k: v[:4] for k, v in tensors.items()})
    with torch.no_grad():
        torch.testing.assert_close(model(**batch, draws=[0] * successor_layers), model.predecessor(**batch).logits,
                                   rtol=0, atol=1e-6)
        successor = model.successor(**batch).logits
        torch.testing.assert_close(model.mixed_logits(**batch, draws=[1] * successor_layers), successor,
                                   rtol=0, atol=1e-6)
    model.successor.save_pretrained(tmp_path / "successor")
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "successor").eval()
    assert exported.config.num_hidden_layers == successor_layers == len(exported.model.layers)
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch).logits, successor, rtol=1e-5, atol=1e-6)
