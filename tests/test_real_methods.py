"""Real weights, real data: every method on MiniLM-L6 + Rotten Tomatoes with a small CPU budget.

Chance is 50% and the majority class (fresh) is 57.8% of the data, so a method has learned
something when its validation accuracy clears MIN_ACCURACY. Budgets are small on purpose
(CI runs on 2 CPU cores); each row gives the run settings for one method.
"""

from __future__ import annotations

import shutil

import pytest

from conftest import train_now

pytestmark = pytest.mark.real

MIN_ACCURACY = 0.65
BASE = dict(backbone="minilm-l6", dataset="rotten-tomatoes", max_length=40, batch_size=16,
            max_eval_examples=300, seed=0)

# method name -> run settings (method settings under "method_config")
REAL: dict[str, dict] = {
    "full_ft": dict(steps=60, eval_every=60),
    "truncate": dict(steps=100, eval_every=100, lr=3e-4, method_config={"layers": 3}),  # 3 layers: cheap steps
    # The official init (the predecessor's layers 1-3). Before classifiers pooled MiniLM's mean
    # token state, as it was pretrained, a 3-layer successor stayed at the majority class here.
    "theseus": dict(steps=60, eval_every=15, loss_falls_after=30, method_config={"layers": 3}),
    "distill": dict(steps=60, eval_every=60, method_config={"layers": 3, "student_init": "teacher"}),
    "lst": dict(steps=40, eval_every=40),
    # One linear layer on MiniLM's mean final state: the floor of the frozen-backbone methods.
    "linear_probe": dict(steps=60, eval_every=60, lr=1e-2),
    # Frozen-backbone methods at their own default learning rates (each method's default_lr).
    # Bias terms and the classifier alone (the pooler's weight frozen, as in the BitFit reference)
    # need more steps: 0.60 validation after 60 steps here, 0.71 after 100.
    "bitfit": dict(steps=100, eval_every=100),
    "adapter": dict(steps=60, eval_every=60),
    "lora": dict(steps=60, eval_every=60),
    # Virtual tokens steering a frozen 22M-parameter encoder learn slowly (Lester et al. found prompt
    # tuning closes the gap to fine-tuning only at billions of parameters): in 100-150 steps both
    # reach 0.62-0.65 here, so they are held to clearing the majority class (0.578) by a margin.
    "prompt_tuning": dict(steps=100, eval_every=100, min_accuracy=0.60),
    "p_tuning": dict(steps=100, eval_every=100, min_accuracy=0.60),
}


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    from app.store import RunStore

    folder = tmp_path_factory.mktemp("real-runs")
    yield RunStore(folder)
    shutil.rmtree(folder, ignore_errors=True)  # SmolLM2 checkpoints: half a gigabyte each


def test_every_registered_method_has_a_real_row():
    from app.methods import METHODS

    assert set(REAL) == set(METHODS)


@pytest.mark.parametrize("name", sorted(REAL))
def test_method_learns_on_real_weights_and_data(name, real_store, request):
    settings = dict(BASE, **REAL[name])
    method_config = dict(settings.pop("method_config", {}))
    # Steps whose training loss is not the trained model's own (e.g. Theseus phase 1, where the
    # fine-tuned predecessor's blocks are mixed in) are left out of the falling-loss check.
    loss_after = settings.pop("loss_falls_after", 0)
    min_accuracy = settings.pop("min_accuracy", MIN_ACCURACY)
    from app.methods import METHODS

    for field_name in METHODS[name].reference_fields:
        method_config.setdefault(field_name, request.getfixturevalue("real_full_ft_run"))
    record = train_now(real_store, method=name, method_config=method_config, **settings)
    assert record["status"] == "finished", record.get("traceback") or record.get("error")
    losses = [s["loss"] for s in real_store.steps(record["id"]) if s["step"] > loss_after]
    assert record["metrics"]["val_accuracy"] >= min_accuracy, record["metrics"]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10


@pytest.fixture(scope="module")
def real_full_ft_run(real_store):
    """A fine-tuned MiniLM to serve as predecessor or teacher."""
    record = train_now(real_store, method="full_ft", **dict(BASE, **REAL["full_ft"]))
    assert record["status"] == "finished", record.get("error")
    return record["id"]


def test_theseus_lesson_successor_leaves_the_majority_class(tmp_path):
    """The Theseus lesson's recipe at a small budget: its successor, initialised the official way,
    learns (it stayed at the majority class, 56.8% test, before classifiers pooled MiniLM's mean)."""
    from app.lessons import LESSONS, Preset, run_lesson
    from app.manager import RunManager
    from app.store import RunStore
    import dataclasses

    lesson = LESSONS["theseus"]
    small = dict(lesson.presets["cpu"].run, steps=40, eval_every=20, max_train_examples=1000,
                 max_eval_examples=300, max_length=40)
    LESSONS["theseus"] = dataclasses.replace(
        lesson, presets={**lesson.presets, "small": Preset(help="test", run=small,
                                                            roles={"predecessor": {"steps": 60, "eval_every": 60}})})
    manager = RunManager(RunStore(tmp_path / "runs"))
    try:
        result = run_lesson(manager, "theseus", seed=0, preset="small")
    finally:
        manager.shutdown(wait=True)
        LESSONS["theseus"] = lesson
    assert result["status"] == "done", result["reason"]
    found = result["findings"]
    assert found["successor_test"] >= found["majority_test"] + 0.05, found
    assert found["predecessor_test"] >= found["majority_test"] + 0.10, found


# --- the shipped decoder -------------------------------------------------------------------------
# SmolLM2-135M (30 layers) on Rotten Tomatoes: batch 8, length 40, one evaluation on 200 examples.
# Its majority class is 57% of them, so MIN_DECODER_ACCURACY is clearly above it. Measured here:
# full_ft 0.705, p_tuning 0.645. The other methods' real rows on the decoder family are language
# models (tests/test_causal_lm.py: SmolLM2 learning film dialogue, compressed by Theseus and
# distillation); full fine-tuning is held here as a classifier too, the linear probe and P-tuning only
# here. LST as a SmolLM2 classifier on these reviews is held by tests/test_precision.py, on the int8
# frozen backbone its successors use (60 steps, above 0.6 where the majority class scores 0.5).
MIN_DECODER_ACCURACY = 0.62
DECODER_BASE = dict(backbone="smollm2-135m", dataset="rotten-tomatoes", max_length=40, batch_size=8,
                    max_train_examples=None, max_eval_examples=200, seed=0)
DECODER_REAL: dict[str, dict] = {
    # 1e-4 (the encoders' default) overshoots on a 135M-parameter decoder with batch 8.
    "full_ft": dict(steps=30, eval_every=30, lr=3e-5),
    "p_tuning": dict(steps=40, eval_every=40),
    # Its batch-8 losses on frozen SmolLM2 features start near their floor (first five 0.58) and stay
    # noisy for 40 steps, so only validation accuracy is held here.
    "linear_probe": dict(steps=40, eval_every=40, loss_falls=False),
}


def test_every_method_has_a_real_row_on_the_decoder_or_is_refused_there():
    from app.backbones import get_backbone
    from app.methods import METHODS, supported_methods
    from test_causal_lm import REAL_LANGUAGE_MODEL_METHODS

    backbone = get_backbone("smollm2-135m")
    refused = {name for name, cls in METHODS.items() if cls.backbone_refusal(backbone)}
    assert set(DECODER_REAL) | REAL_LANGUAGE_MODEL_METHODS == set(METHODS) - refused
    assert set(supported_methods(backbone)) == set(METHODS) - refused


@pytest.fixture(scope="module")
def decoder_full_ft_run(real_store):
    record = train_now(real_store, method="full_ft", **dict(DECODER_BASE, **DECODER_REAL["full_ft"]))
    assert record["status"] == "finished", record.get("error")
    return record


@pytest.mark.parametrize("name", sorted(DECODER_REAL))
def test_method_learns_on_the_shipped_decoder(name, real_store, decoder_full_ft_run):
    if name == "full_ft":
        record = decoder_full_ft_run
    else:
        settings = dict(DECODER_BASE, **DECODER_REAL[name])
        settings.pop("loss_falls", None)
        record = train_now(real_store, method=name, **settings)
    assert record["status"] == "finished", record.get("traceback") or record.get("error")
    assert record["metrics"]["val_accuracy"] >= MIN_DECODER_ACCURACY, record["metrics"]
    losses = [s["loss"] for s in real_store.steps(record["id"])]
    if DECODER_REAL[name].get("loss_falls", True):
        assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


# --- exports that leave the lab ------------------------------------------------------------------
REVIEWS = ["A warm, funny and moving film.", "Dull, slow and far too long.", "It has its moments.",
           "The best thing I have seen this year", "I walked out."]


def test_a_mean_pooled_minilm_exports_to_onnx_and_refuses_a_plain_folder(real_store, real_full_ft_run, tmp_path):
    """MiniLM mean-pools; transformers' BERT head reads the first token through its pooler, so a
    plain folder would load without a warning and predict differently (up to 0.10 in probability)."""
    import numpy as np
    import onnxruntime
    from transformers import AutoTokenizer

    from app.export import export_run
    from app.predict import load_predictor

    result = export_run(real_store, real_full_ft_run, tmp_path / "export")
    assert result["format"] == "state_dict" and not (tmp_path / "export" / "config.json").exists()
    assert any("No plain transformers folder" in note for note in result["notes"])
    onnx = next(f for f in result["formats"] if f["format"] == "onnx")
    assert onnx["max_difference"] <= 1e-4
    # loaded as a user would, with no lab code: ONNX Runtime and the tokenizer saved beside the graph
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "export" / "onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "export" / "onnx" / "model.onnx"))
    batch = tokenizer(REVIEWS, truncation=True, max_length=40, padding=True, return_tensors="np")
    logits = session.run(["logits"], {k: batch[k] for k in onnx["inputs"]})[0]
    lab = load_predictor(real_store, real_full_ft_run).predict(REVIEWS)
    np.testing.assert_allclose(logits, np.array(lab["logits"]), atol=1e-4)


def test_the_shipped_decoder_exports_a_folder_that_pipeline_loads(real_store, decoder_full_ft_run, tmp_path):
    from transformers import pipeline

    from app.export import export_run
    from app.predict import load_predictor

    result = export_run(real_store, decoder_full_ft_run["id"], tmp_path / "export", onnx=False)
    assert result["format"] == "transformers" and result["formats"][0]["max_difference"] <= 1e-4
    classify = pipeline("text-classification", model=str(tmp_path / "export"), top_k=None)
    lab = load_predictor(real_store, decoder_full_ft_run["id"]).predict(REVIEWS)
    for scores, expected in zip(classify(REVIEWS), lab["probabilities"]):
        got = {s["label"]: s["score"] for s in scores}
        assert [got[name] for name in lab["label_names"]] == pytest.approx(expected, abs=1e-4)
    card = (tmp_path / "export" / "README.md").read_text()
    assert card.startswith("---\nbase_model: \"HuggingFaceTB/SmolLM2-135M-Instruct\"\nlibrary_name: transformers\n")
    assert "pipeline_tag: text-classification" in card and "| method | full_ft |" in card
