"""The engine: backbones, datasets, the training loop, memory measurement, store and run manager."""

from __future__ import annotations

import json
import time

import pytest
import torch

from conftest import tiny_config, train_now


# --- backbones -----------------------------------------------------------------------------


def test_registry_backbones_report_their_shape():
    from app.backbones import get_backbone

    minilm = get_backbone("minilm-l6").info()
    assert (minilm.num_layers, minilm.hidden_size, minilm.num_heads) == (6, 384, 12)
    assert 22_000_000 < minilm.num_params < 23_500_000
    tiny = get_backbone("tiny-random").info()
    assert (tiny.num_layers, tiny.hidden_size, tiny.num_heads, tiny.max_length) == (4, 64, 4, 128)


def test_tiny_random_weights_are_the_same_every_time():
    from app.backbones import get_backbone

    a = get_backbone("tiny-random").load_encoder()
    b = get_backbone("tiny-random").load_encoder()
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name


def test_local_model_folder_loads_like_a_registry_backbone(tmp_path):
    from app.backbones import get_backbone

    model = get_backbone("tiny-random").load_encoder()
    model.save_pretrained(tmp_path / "mine")
    get_backbone("tiny-random").tokenizer.save_pretrained(tmp_path / "mine")
    folder = get_backbone(str(tmp_path / "mine"))
    assert folder.info().num_layers == 4
    reloaded = folder.load_encoder()
    assert torch.equal(reloaded.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)


def test_unknown_backbone_and_offline_hub_id_fail_fast_with_a_clear_message():
    from app.backbones import get_backbone
    from app.errors import BackboneError

    with pytest.raises(BackboneError, match="not an existing model folder"):
        get_backbone("/no/such/folder/anywhere")
    start = time.monotonic()
    with pytest.raises(BackboneError, match="cannot be reached"):
        get_backbone("some-org/some-model-that-is-not-cached")
    assert time.monotonic() - start < 10


def test_unsupported_architecture_folder_is_refused_with_the_families_it_could_be(tmp_path):
    from app.backbones import get_backbone
    from app.errors import BackboneError

    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(BackboneError, match="'t5' models are not supported.*llama, mistral, qwen2, qwen3.*gpt2"):
        get_backbone(str(tmp_path / "t5"))


# --- datasets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, size, labels",
    [
        ("rotten-tomatoes", 12808, ["rotten", "fresh"]),
        ("sms-spam", 4837, ["ham", "spam"]),
        ("trec-6", 5382, ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]),
        ("bbc-news", 2225, ["business", "entertainment", "politics", "sports", "tech"]),
    ],
)
def test_packaged_datasets_have_their_documented_size_and_classes(name, size, labels):
    from app.data import load_dataset

    data = load_dataset(name)
    assert data.label_names == labels
    assert len(data.train) + len(data.validation) + len(data.test) == size
    assert set(data.train.labels) == set(range(len(labels)))


def test_split_is_seeded_and_independent_of_the_training_seed():
    from app.data import load_dataset

    a = load_dataset("sms-spam", split_seed=0)
    b = load_dataset("sms-spam", split_seed=0)
    c = load_dataset("sms-spam", split_seed=1)
    assert a.test.texts == b.test.texts
    assert a.test.texts != c.test.texts


def test_split_partitions_the_examples():
    from app.data import RawCorpus, split_corpus

    corpus = RawCorpus([f"text {i}" for i in range(100)], [i % 2 for i in range(100)], ["a", "b"])
    train, validation, test = split_corpus(corpus, split_seed=3)
    assert (len(train), len(validation), len(test)) == (80, 10, 10)
    seen = train.texts + validation.texts + test.texts
    assert sorted(seen) == sorted(corpus.texts)


def test_csv_with_column_mapping_and_pairs(tmp_path):
    from app.data import ColumnMap, load_dataset

    path = tmp_path / "pairs.csv"
    rows = ["premise,hypothesis,gold"] + [f"sentence {i},other {i},{'yes' if i % 2 else 'no'}" for i in range(40)]
    path.write_text("\n".join(rows))
    data = load_dataset(str(path), columns=ColumnMap(text="premise", label="gold", text_pair="hypothesis"))
    assert data.label_names == ["no", "yes"]
    assert data.has_pairs and len(data.train.pairs) == len(data.train)


def test_max_train_examples_caps_the_train_split():
    from app.data import load_dataset

    assert len(load_dataset("trec-6", max_train_examples=100).train) == 100


def test_tokenisation_is_cached_per_tokenizer_dataset_and_length():
    from app.backbones import get_backbone
    from app.data import load_dataset, tokenize_split

    tok = get_backbone("tiny-random").tokenizer
    data = load_dataset("sms-spam", max_train_examples=64)
    first = tokenize_split(tok, data, "train", 32)
    assert tokenize_split(tok, data, "train", 32) is first
    assert tokenize_split(tok, data, "train", 16)["input_ids"].shape == (64, 16)


# --- training loop -------------------------------------------------------------------------


def test_tiny_run_records_steps_evals_memory_and_metrics(store):
    record = train_now(store)
    assert record["status"] == "finished", record.get("error")
    steps = store.steps(record["id"])
    assert [s["step"] for s in steps] == list(range(1, 7))
    assert all(s["loss"] > 0 and s["lr"] >= 0 and s["examples_per_second"] > 0 for s in steps)
    evals = store.evals(record["id"], "validation")
    assert [e["step"] for e in evals] == [3, 6]
    assert store.evals(record["id"], "test")[0]["examples"] == 64
    metrics = record["metrics"]
    assert 0 <= metrics["test_accuracy"] <= 1 and 0 <= metrics["val_macro_f1"] <= 1
    summary = record["summary"]
    assert summary["trainable_params"] == summary["total_params"] > 2_000_000


def test_full_fine_tuning_memory_breakdown_is_measured(store):
    record = train_now(store)
    breakdown = record["metrics"]["memory_breakdown"]
    params = record["summary"]["total_params"]
    # fp32: 4 bytes a weight (plus a few buffers), one gradient each, two AdamW moments each.
    assert params * 4 <= breakdown["weights"] < params * 4 * 1.01
    assert breakdown["gradients"] == params * 4
    assert params * 8 <= breakdown["optimizer"] <= params * 8 + 4096
    assert breakdown["activations"] > 0
    first = store.steps(record["id"])[0]["memory"]
    assert first["peak"] == sum(first[k] for k in ("weights", "gradients", "optimizer", "activations"))


def test_activations_grow_with_batch_size(store):
    # one fixed length, so only the batch size differs between the two
    small = train_now(store, steps=2, batch_size=4, padding="max")["metrics"]["memory_breakdown"]["activations"]
    large = train_now(store, steps=2, batch_size=16, padding="max")["metrics"]["memory_breakdown"]["activations"]
    assert 3.0 < large / small < 4.5


def test_memory_sampling_every_n_steps_is_recorded(store):
    record = train_now(store, memory_every=4, steps=9, eval_every=9)
    measured = [s["step"] for s in store.steps(record["id"]) if s.get("memory")]
    assert measured == [1, 4, 8, 9]
    assert "every 4 steps" in record["summary"]["memory_sampling"]["note"]


def test_loss_falls_on_a_learnable_task(store, tmp_path):
    # Two classes told apart by one word: any working loop learns this in a few dozen steps.
    path = tmp_path / "easy.csv"
    lines = ["text,label"] + [f"the movie was {'wonderful' if i % 2 else 'terrible'} number {i},{i % 2}" for i in range(300)]
    path.write_text("\n".join(lines))
    record = train_now(store, dataset=str(path), steps=60, lr=1e-3, eval_every=60, batch_size=16,
                       max_train_examples=None)
    losses = [s["loss"] for s in store.steps(record["id"])]
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert record["metrics"]["test_accuracy"] > 0.9


def test_same_seed_same_losses(store):
    a = train_now(store, steps=3)
    b = train_now(store, steps=3)
    assert [s["loss"] for s in store.steps(a["id"])] == [s["loss"] for s in store.steps(b["id"])]


def test_linear_schedule_warms_up_then_decays():
    from app.training import linear_schedule

    values = [linear_schedule(s, 10, 2) for s in range(10)]
    assert values[0] == 0.5 and values[1] == 1.0
    assert values[2] > values[5] > values[9] > 0
    assert linear_schedule(10, 10, 2) == 0.0


def test_macro_f1_matches_hand_computation():
    import numpy as np

    from app.training import macro_f1

    predictions = np.array([0, 0, 1, 1, 1])
    labels = np.array([0, 1, 1, 1, 0])
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn1 -> 4/6
    assert macro_f1(predictions, labels, 2) == pytest.approx((0.5 + 4 / 6) / 2)


def test_a_crash_inside_a_method_is_recorded_as_failed(store, monkeypatch):
    from app.methods.full_ft import FullFineTuning

    def explode(self, model, batch, state):
        if state.step == 3:
            raise RuntimeError("boom inside the method")
        return FullFineTuning.__mro__[1].training_step(self, model, batch, state)

    monkeypatch.setattr(FullFineTuning, "training_step", explode)
    record = train_now(store)
    assert record["status"] == "failed"
    assert "boom inside the method" in record["error"]
    assert "Traceback" in record["traceback"]
    assert len(store.steps(record["id"])) == 2  # what was written before the crash stays


def test_store_survives_reopening(runs_dir):
    from app.store import RunStore

    first = RunStore(runs_dir)
    record = train_now(first)
    first.close()
    again = RunStore(runs_dir)
    assert again.get_run(record["id"])["metrics"] == record["metrics"]
    assert len(again.steps(record["id"])) == 6


def test_checkpoint_reloads_to_the_same_predictions(store):
    from app.checkpoints import load_run_model
    from app.data import load_dataset, tokenize_split
    from app.training import evaluate

    record = train_now(store)
    loaded = load_run_model(store, record["id"])
    data = load_dataset("sms-spam", max_train_examples=256, max_eval_examples=64)
    tensors = tokenize_split(loaded.backbone.tokenizer, data, "test", 32)
    metrics = evaluate(loaded.method, loaded.model, tensors, batch_size=32, device=torch.device("cpu"), num_labels=2)
    assert metrics["accuracy"] == pytest.approx(record["metrics"]["test_accuracy"])
    assert metrics["loss"] == pytest.approx(record["metrics"]["test_loss"], rel=1e-5)


def test_export_writes_a_plain_transformers_folder(store, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from app.export import export_run

    record = train_now(store)
    result = export_run(store, record["id"], tmp_path / "export")
    assert result["format"] == "transformers"
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export")
    assert model.config.id2label == {0: "ham", 1: "spam"}


# --- run manager ---------------------------------------------------------------------------


def test_manager_runs_queued_runs_in_the_background_and_cancels(store):
    from app.manager import RunManager

    manager = RunManager(store, workers=1)
    try:
        long_id = manager.submit(tiny_config(steps=5000, eval_every=5000))
        queued_id = manager.submit(tiny_config(steps=2))
        deadline = time.monotonic() + 60
        while store.get_run(long_id)["step"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.get_run(long_id)["status"] == "running"
        assert store.get_run(queued_id)["status"] == "queued"
        assert manager.cancel(long_id)
        cancelled = manager.wait(long_id, timeout=30)
        assert cancelled["status"] == "cancelled"
        assert cancelled["step"] < 5000
        assert manager.wait(queued_id, timeout=120)["status"] == "finished"
    finally:
        manager.shutdown()


def test_cancelling_a_queued_run_never_starts_it(store):
    from app.manager import RunManager

    manager = RunManager(store, workers=1)
    try:
        first = manager.submit(tiny_config(steps=200))
        second = manager.submit(tiny_config(steps=2))
        assert manager.cancel(second)
        assert store.get_run(second)["status"] == "cancelled"
        manager.cancel(first)
        manager.wait(first, timeout=60)
        time.sleep(0.3)
        assert store.get_run(second)["status"] == "cancelled"
        assert store.steps(second) == []
    finally:
        manager.shutdown()


def test_bad_config_is_refused_before_anything_is_stored(store):
    from app.errors import ConfigError
    from app.manager import RunManager

    manager = RunManager(store, workers=1)
    try:
        with pytest.raises(ConfigError, match="batch_size"):
            manager.submit(tiny_config(batch_size=100000))
        with pytest.raises(ConfigError, match="unknown method"):
            manager.submit(tiny_config(method="nope"))
        assert store.list_runs() == []
    finally:
        manager.shutdown()


def test_hub_dataset_code_reads_a_local_dataset_folder(tmp_path):
    """The hub path goes through `datasets.load_dataset`; a folder in hub layout needs no network."""
    from app.data import ColumnMap, load_dataset

    folder = tmp_path / "my-dataset"
    folder.mkdir()
    (folder / "train.csv").write_text("sentence,label\n" + "\n".join(f"train text {i},{i % 2}" for i in range(40)))
    (folder / "test.csv").write_text("sentence,label\n" + "\n".join(f"test text {i},{i % 2}" for i in range(10)))
    data = load_dataset(str(folder), columns=ColumnMap(text="sentence", label="label"))
    assert len(data.train) + len(data.validation) + len(data.test) == 50
    assert data.label_names == ["0", "1"]


def test_offline_hub_dataset_id_fails_fast():
    from app.data import load_dataset
    from app.errors import DatasetError

    start = time.monotonic()
    with pytest.raises(DatasetError, match="cannot be reached"):
        load_dataset("some-org/no-such-dataset")
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"text,label\n", "no rows"),
        ("text,label\ncaf\xe9,1\n".encode("latin-1"), "not UTF-8"),
        (b"words,label\nhello,1\nbye,0\n", "no column 'text'"),
        (b"text,label\nhello,1\nbye,1\nagain,1\n", "single class"),
    ],
)
def test_bad_csv_files_get_clear_messages(tmp_path, content, message):
    from app.data import load_dataset
    from app.errors import DatasetError

    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        load_dataset(str(path))


def test_unhashable_labels_and_oversized_files_are_refused(tmp_path, monkeypatch):
    from app.data import load_dataset
    from app.errors import DatasetError

    path = tmp_path / "lists.jsonl"
    path.write_text('{"text": "a", "label": [1, 2]}\n{"text": "b", "label": [3]}\n')
    with pytest.raises(DatasetError, match="single values"):
        load_dataset(str(path))
    big = tmp_path / "big.csv"
    big.write_text("text,label\n" + "x,1\ny,0\n" * 2000)
    monkeypatch.setenv("LAB_MAX_DATASET_MB", "0.01")
    with pytest.raises(DatasetError, match="limit"):
        load_dataset(str(big))


def test_patience_stops_early_and_keeps_the_best_validation_weights(store):
    record = train_now(store, steps=60, eval_every=3, patience=2, lr=3e-2)
    early = record["summary"]["early_stopping"]
    passes = [e for e in store.evals(record["id"]) if e["split"] == "validation"]
    assert early["stopped_early"] and record["metrics"]["steps_done"] < 60
    assert early["stopped_at_step"] == record["metrics"]["steps_done"]
    best = max(passes, key=lambda e: (e["accuracy"], -e["loss"]))
    assert early["best_step"] == best["step"] < early["stopped_at_step"]
    # the two passes after the best one did no better, and the final figures are the best weights' own
    after = [e for e in passes if e["step"] > best["step"]]
    assert len(after) == 2
    assert record["metrics"]["val_accuracy"] == best["accuracy"]
    assert record["metrics"]["val_loss"] == pytest.approx(best["loss"], abs=1e-6)


def test_early_stopping_waits_for_patience_from_but_tracks_the_best_from_the_start(store):
    eager = train_now(store, steps=60, eval_every=3, patience=2, lr=3e-2)
    stopped = eager["summary"]["early_stopping"]["stopped_at_step"]
    assert stopped < 45  # what patience alone does at this setting
    waiting = train_now(store, steps=60, eval_every=3, patience=2, lr=3e-2, patience_from=0.75)
    early = waiting["summary"]["early_stopping"]
    assert early["stopped_at_step"] >= 45 and early["patience_from"] == 0.75
    passes = [e for e in store.evals(waiting["id"]) if e["split"] == "validation"]
    best = max(passes, key=lambda e: (e["accuracy"], -e["loss"]))
    assert early["best_step"] == best["step"] and waiting["metrics"]["val_accuracy"] == best["accuracy"]

def test_patience_is_refused_for_a_method_that_stops_early_itself(store):
    from app.errors import ConfigError
    from app.preparation import prepare_run

    with pytest.raises(ConfigError, match="stops early on its own"):
        prepare_run(tiny_config(method="theseus", patience=2, method_config={"predecessor": "new"}), store)
