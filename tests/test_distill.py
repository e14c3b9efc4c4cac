"""Knowledge distillation on the tiny random backbone.

Each loss term measures what it claims: zero when the student is an exact copy of the teacher,
falling when a different student trains; widths and head counts that differ are bridged; teachers
with other classes are refused before training; every term is recorded per step.
"""

from __future__ import annotations

import json

import pytest
import torch

from app.errors import ConfigError
from app.methods import create_method
from app.methods.base import BuildContext, TrainState, model_inputs
from conftest import tiny_config, train_now

ALL_TERMS = dict(ce_weight=1.0, kl_weight=1.0, hidden_weight=1.0, attention_weight=1.0)


def _context(store, backbone_name="tiny-random"):
    from app.backbones import get_backbone
    from app.checkpoints import load_reference

    device = torch.device("cpu")
    return BuildContext(backbone=get_backbone(backbone_name), label_names=["ham", "spam"], device=device, seed=0,
                        load_reference=lambda ref: load_reference(store, ref, device), max_length=32)


def _batch(size=16, offset=0):
    from app.backbones import get_backbone
    from app.data import load_dataset, tokenize_split

    data = load_dataset("sms-spam", max_train_examples=256, max_eval_examples=64)
    tensors = tokenize_split(get_backbone("tiny-random").tokenizer, data, "train", 32)
    index = torch.arange(offset, offset + size)
    batch = {k: v[index] for k, v in tensors.items()}
    batch["index"] = index
    return batch


def _built(store, teacher, **settings):
    method = create_method("distill", {"teacher": teacher, **settings})
    torch.manual_seed(0)
    return method, method.build(_context(store))


def _terms(method, model, batch):
    model.eval()  # no dropout: the terms are then a deterministic function of the weights
    with torch.no_grad():
        return method.training_step(model, batch, TrainState(0, 1, torch.device("cpu"), torch.Generator())).terms


@pytest.mark.parametrize("attention_loss", ["probability_kl", "probability_mse", "score_mse", "kl"])
def test_every_term_is_zero_when_the_student_is_a_copy_of_the_teacher(session_store, finished_full_ft,
                                                                       attention_loss):
    method, model = _built(session_store, finished_full_ft["id"], student_init="teacher", layers=4,
                           attention_loss=attention_loss, **ALL_TERMS)
    assert method.run_summary(model)["layer_map"] == [1, 2, 3, 4]
    terms = _terms(method, model, _batch())
    assert terms["kl"] == pytest.approx(0.0, abs=1e-6)
    assert terms["hidden"] == pytest.approx(0.0, abs=1e-6)
    assert terms["attention"] == pytest.approx(0.0, abs=1e-6)
    assert terms["ce"] > 0
    assert terms["total"] == pytest.approx(sum(terms[k] for k in ("ce", "kl", "hidden", "attention")), rel=1e-5)


@pytest.mark.parametrize("term, extra", [("ce", {}), ("kl", {}), ("hidden", {}), ("attention", {}),
                                         ("attention", {"attention_loss": "score_mse"})])
def test_each_term_falls_when_a_different_student_trains_on_it(session_store, finished_full_ft, term, extra):
    weights = {f"{name}_weight": float(name == term) for name in ("ce", "kl", "hidden", "attention")}
    method, model = _built(session_store, finished_full_ft["id"], layers=2, **weights, **extra)
    assert method.run_summary(model)["layer_map"] == [2, 4]
    batch = _batch()
    before = _terms(method, model, batch)
    assert before[term] > 0 and before["total"] == before[term]
    optimizer = torch.optim.AdamW([p for _, p in method.trainable_parameters(model)], lr=1e-3, weight_decay=0.0)
    state = TrainState(0, 10, torch.device("cpu"), torch.Generator().manual_seed(0))
    # no dropout: each step then descends the very term measured before and after (with dropout a
    # term already near zero, like the hidden-state MSE of a student copied from teacher layers, can rise)
    model.eval()
    for step in range(1, 11):
        state.step = step
        out = method.training_step(model, batch, state)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
    after = _terms(method, model, batch)
    assert after[term] < 0.9 * before[term], (term, before[term], after[term])
    assert not any(p.requires_grad for p in model.teacher.parameters())  # the teacher never moves


def test_attention_loss_old_names_are_aliases_and_unknown_names_are_refused():
    assert create_method("distill", {"attention_loss": "kl"}).config.attention_loss == "probability_kl"
    assert create_method("distill", {"attention_loss": "mse"}).config.attention_loss == "probability_mse"
    with pytest.raises(ConfigError, match="score_mse"):
        create_method("distill", {"attention_loss": "scores"})


def test_score_mse_reads_the_scores_softmax_turns_into_the_attention_maps(session_store, finished_full_ft):
    """The recorded scores are the pre-softmax ones: softmax over real keys gives eager attention's maps."""
    from app.methods.distill import AttentionScoreRecorder

    method, model = _built(session_store, finished_full_ft["id"], layers=2, attention_weight=1.0,
                           attention_loss="score_mse")
    teacher = model.teacher
    teacher.set_attn_implementation("eager")
    batch = _batch(4)
    recorder = AttentionScoreRecorder(teacher, [1, 3])
    recorder.active = True
    with torch.no_grad():
        maps = teacher(**model_inputs(batch), output_attentions=True).attentions
    recorder.active = False
    keys = batch["attention_mask"][:, None, None, :].bool()
    for number in (1, 3):
        scores = recorder.scores(number)
        probabilities = torch.softmax(scores.masked_fill(~keys, float("-inf")), -1)
        torch.testing.assert_close(probabilities, maps[number - 1], rtol=1e-4, atol=1e-5)
    recorder.remove()


def test_score_mse_term_is_the_mean_over_layers_of_masked_score_mse(session_store, finished_full_ft):
    from app.methods.distill import AttentionScoreRecorder, attention_score_mse

    method, model = _built(session_store, finished_full_ft["id"], layers=2, ce_weight=0.0, kl_weight=0.0,
                           attention_weight=1.0, attention_loss="score_mse")
    batch = _batch(4)
    terms = _terms(method, model, batch)
    student_rec, teacher_rec = AttentionScoreRecorder(model.student, [1, 2]), AttentionScoreRecorder(model.teacher, [2, 4])
    student_rec.active = teacher_rec.active = True
    with torch.no_grad():
        model.student(**model_inputs(batch))
        model.teacher(**model_inputs(batch))
    mask = batch["attention_mask"].float()
    pairs = mask[:, None, :, None] * mask[:, None, None, :]
    expected = []
    for j, t in ((1, 2), (2, 4)):
        diff = (student_rec.scores(j) - teacher_rec.scores(t)) * pairs  # padded positions set to 0
        expected.append(diff.pow(2).mean(1).sum() / pairs.sum())
    assert terms["attention"] == pytest.approx(float(torch.stack(expected).mean()), rel=1e-5)
    assert terms["attention"] > 0
    assert attention_score_mse(student_rec.scores(1), student_rec.scores(1), batch["attention_mask"]) == 0


def test_hidden_term_can_include_the_embedding_layer(session_store, finished_full_ft):
    from app.methods.distill import masked_hidden_mse

    batch = _batch(8)
    settings = dict(layers=2, ce_weight=0.0, kl_weight=0.0, hidden_weight=1.0)
    method, model = _built(session_store, finished_full_ft["id"], **settings)
    layers_only = _terms(method, model, batch)["hidden"]
    method, model = _built(session_store, finished_full_ft["id"], hidden_include_embeddings=True, **settings)
    with_embeddings = _terms(method, model, batch)["hidden"]
    with torch.no_grad():
        student = model.student(**model_inputs(batch), output_hidden_states=True).hidden_states[0]
        teacher = model.teacher(**model_inputs(batch), output_hidden_states=True).hidden_states[0]
    embedding_mse = float(masked_hidden_mse(student, teacher, batch["attention_mask"]))
    assert embedding_mse > 0  # the student's embeddings are the pretrained backbone's, not the teacher's
    assert with_embeddings == pytest.approx((2 * layers_only + embedding_mse) / 3, rel=1e-5)


def test_weights_scale_the_terms_and_zero_weights_skip_them(session_store, finished_full_ft):
    batch = _batch()
    method, model = _built(session_store, finished_full_ft["id"], layers=2, ce_weight=1.0, kl_weight=1.0,
                           hidden_weight=1.0, attention_weight=1.0, temperature=3.0)
    base = _terms(method, model, batch)
    method, model = _built(session_store, finished_full_ft["id"], layers=2, ce_weight=0.5, kl_weight=2.0,
                           hidden_weight=0.0, attention_weight=0.25, temperature=3.0)
    scaled = _terms(method, model, batch)
    assert scaled["ce"] == pytest.approx(0.5 * base["ce"], rel=1e-5)
    assert scaled["kl"] == pytest.approx(2.0 * base["kl"], rel=1e-5)
    assert scaled["hidden"] == 0.0
    assert scaled["attention"] == pytest.approx(0.25 * base["attention"], rel=1e-5)


def test_wider_student_with_other_head_count_gets_a_projection(session_store, finished_full_ft):
    # MiniLM (hidden 384, 12 heads) shares tiny-random's tokenizer; the teacher has hidden 64, 4 heads.
    method, model = _built(session_store, finished_full_ft["id"], student_backbone="minilm-l6", layers=1,
                           **ALL_TERMS)
    assert model.projection is not None
    assert (model.projection.in_features, model.projection.out_features) == (384, 64)
    names = {name for name, _ in method.trainable_parameters(model)}
    assert "projection.weight" in names
    model.train()
    out = method.training_step(model, _batch(8), TrainState(1, 1, torch.device("cpu"), torch.Generator()))
    out.loss.backward()
    assert model.projection.weight.grad is not None
    assert all(torch.isfinite(torch.tensor(v)) for v in out.terms.values())
    assert method.run_summary(model)["layer_map"] == [4]


def test_teacher_with_other_classes_is_refused(session_store, finished_full_ft, tmp_path):
    from app.export import export_run
    from app.preparation import prepare_run

    with pytest.raises(ConfigError, match="trained on classes"):
        prepare_run(tiny_config(method="distill", dataset="trec-6",
                                method_config={"teacher": finished_full_ft["id"]}), session_store)
    folder = tmp_path / "teacher"
    export_run(session_store, finished_full_ft["id"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "spam", "1": "ham"}  # the same names in another order
    config["label2id"] = {"spam": 0, "ham": 1}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"trained on classes \['spam', 'ham'\]"):
        prepare_run(tiny_config(method="distill", method_config={"teacher": str(folder)}), session_store)
    with pytest.raises(ConfigError, match="trained on classes"):
        _built(session_store, str(folder))
    with pytest.raises(ConfigError, match="predicts 2 classes"):
        prepare_run(tiny_config(method="distill", dataset="trec-6", method_config={"teacher": str(folder)}),
                    session_store)


def test_settings_that_cannot_work_are_refused(session_store, finished_full_ft):
    from app.preparation import prepare_run

    with pytest.raises(ConfigError, match="distill needs a teacher"):
        prepare_run(tiny_config(method="distill"), session_store)
    with pytest.raises(ConfigError, match="every distillation weight is 0"):
        create_method("distill", {"teacher": "x", "ce_weight": 0, "kl_weight": 0})
    with pytest.raises(ConfigError, match="leave student_backbone empty"):
        create_method("distill", {"teacher": "x", "student_init": "teacher", "student_backbone": "minilm-l6"})
    with pytest.raises(ConfigError, match="more than the backbone's 4 layers"):
        prepare_run(tiny_config(method="distill", method_config={"teacher": finished_full_ft["id"], "layers": 5}),
                    session_store)


def test_engine_run_records_every_term_and_exports_the_student(session_store, finished_full_ft, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from app.checkpoints import load_run_model
    from app.export import export_run

    record = train_now(session_store, method="distill", steps=4, eval_every=4, lr=1e-3,
                       method_config={"teacher": finished_full_ft["id"], "layers": 2, **ALL_TERMS})
    assert record["status"] == "finished", record.get("traceback") or record.get("error")
    steps = session_store.steps(record["id"])
    assert len(steps) == 4
    for step in steps:
        terms = step["terms"]
        assert set(terms) == {"ce", "kl", "hidden", "attention", "total"}
        assert terms["total"] == pytest.approx(step["loss"], rel=1e-5)
    summary = record["summary"]["method_summary"]
    assert summary["teacher"]["source"] == finished_full_ft["id"] and summary["student"]["layers"] == 2

    # The restored student needs no teacher: export it and reload it with plain transformers.
    export_run(session_store, record["id"], tmp_path / "student")
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student").eval()
    assert exported.config.num_hidden_layers == 2
    loaded = load_run_model(session_store, record["id"])
    assert loaded.model.teacher is None
    batch = _batch(8)
    with torch.no_grad():
        torch.testing.assert_close(exported(**model_inputs(batch)).logits, loaded.method.predict(loaded.model, batch),
                                   rtol=1e-5, atol=1e-6)
