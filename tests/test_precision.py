"""Frozen backbones in bf16, int8 and int4 (`backbone_precision`): every method that keeps a frozen
backbone on each tiny backbone family, the bytes really stored, the estimate against measurement,
step-0 agreement with fp32, refusals, exports, the Launch form's field, and a real-weights LST int8
run on SmolLM2."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import train_now
from test_method_matrix import BACKBONES, MATRIX, _context, _easy_batches, _learning_backbone, _supported

from app.errors import ConfigError
from app.memory import MemoryMeter, component_tensors
from app.methods import METHODS, create_method
from app.methods.base import TrainState
from app.precision import PRECISIONS, allowed_precisions, apply_backbone_precision, quantized_linear_bytes

LOWER = ("bf16", "int8", "int4")
FROZEN_BACKBONE_METHODS = sorted(n for n, cls in METHODS.items() if len(allowed_precisions(cls)) > 1)
CASES = [pytest.param(b, m, p, id=f"{b}-{m}-{p}") for b in BACKBONES for m in FROZEN_BACKBONE_METHODS for p in LOWER
         if _supported(b, m)]


def test_the_methods_that_take_a_lower_precision_are_those_with_a_frozen_backbone():
    assert FROZEN_BACKBONE_METHODS == ["adapter", "bitfit", "linear_probe", "lora", "lst", "p_tuning", "prompt_tuning"]


def _build(backbone_name: str, name: str, easy_csv, matrix_store):
    from app.backbones import get_backbone

    backbone = get_backbone(backbone_name)
    batches = _easy_batches(backbone, easy_csv)
    method = create_method(name, dict(MATRIX[name][0]))
    torch.manual_seed(0)
    model = method.build(_context(matrix_store, backbone, batches))
    trainable = method.trainable_parameters(model)
    ids = {id(p) for _, p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    return method, model, trainable, batches


@pytest.mark.parametrize("backbone_name,name,precision", CASES)
def test_frozen_backbone_in_lower_precision_is_smaller_stays_frozen_and_learns(backbone_name, name, precision,
                                                                              easy_csv, matrix_store):
    backbone_name = _learning_backbone(backbone_name, name)
    method, model, trainable, batches = _build(backbone_name, name, easy_csv, matrix_store)
    model.train()
    fp32 = MemoryMeter(model, None, torch.device("cpu"))
    changed = apply_backbone_precision(model, precision, trainable, forward_only=method.trains_side_network,
                                       device=torch.device("cpu"))
    assert changed > 0
    stored = MemoryMeter(model, None, torch.device("cpu"))
    assert stored.weights + stored.quantized < 0.75 * fp32.weights  # the frozen linear layers hold most of it
    assert (stored.quantized > 0) == (precision != "bf16")
    trainable_ids = {id(p) for _, p in trainable}
    frozen = [t for p in model.parameters() if id(p) not in trainable_ids for t in component_tensors(p)]
    frozen_before = [t.detach().clone() for t in frozen]

    optimizer = torch.optim.AdamW([p for _, p in trainable], lr=MATRIX[name][1]["lr"], weight_decay=0.0)
    state = TrainState(step=0, total_steps=40, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    method.on_train_start(model, state)
    losses = []
    for step in range(1, 41):
        state.step = step
        if step == 20:  # a validation pass midway, as the loop makes: training must go on learning after it
            model.eval()
            with torch.no_grad():
                method.predict(model, batches[0])
            model.train()
        method.on_step_start(model, state)
        out = method.training_step(model, batches[step % len(batches)], state)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert all(torch.equal(t, before) for t, before in zip(frozen, frozen_before)), "a frozen weight changed"
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < MATRIX[name][1].get("loss_ratio", 0.8) * first, f"loss did not fall: {first:.4f} -> {last:.4f}"


@pytest.mark.parametrize("precision,forward_only", [("int8", True), ("int8", False), ("int4", False),
                                                    ("bf16", False)])
@pytest.mark.parametrize("shape", [(64, 256), (576, 1536), (37, 100), (1000, 3)])
def test_the_byte_formula_is_what_the_library_stores(precision, forward_only, shape):
    """The estimate cannot run the libraries on fake tensors; it uses this formula instead."""
    layer = torch.nn.Sequential(torch.nn.Linear(*shape, bias=False))
    for p in layer.parameters():
        p.requires_grad_(False)
    apply_backbone_precision(layer, precision, [], forward_only=forward_only, device=torch.device("cpu"))
    meter = MemoryMeter(layer, None, torch.device("cpu"))
    assert meter.weights + meter.quantized == quantized_linear_bytes(precision, *shape, forward_only=forward_only)


ESTIMATE_CASES = [("tiny-random", m, p) for m in ("lst", "lora", "adapter", "bitfit") for p in PRECISIONS] + [
    (b, m, p) for b in ("tiny-random-llama", "tiny-random-gpt2") for m in ("lst", "lora") for p in ("int8", "int4")]


@pytest.mark.parametrize("backbone,method,precision", ESTIMATE_CASES, ids=["-".join(c) for c in ESTIMATE_CASES])
def test_the_estimate_predicts_each_precision_within_two_percent(backbone, method, precision, session_store):
    from app.estimate import estimate_memory

    record = train_now(session_store, backbone=backbone, method=method, batch_size=6, max_length=40, padding="max",
                       steps=1, eval_every=10, max_train_examples=64, max_eval_examples=8, backbone_precision=precision)
    assert record["status"] == "finished", record.get("error")
    measured = record["metrics"]["memory_breakdown"]
    predicted = estimate_memory(backbone, method, 6, 40, backbone_precision=precision).breakdown
    assert abs(sum(predicted.values()) - sum(measured.values())) <= 0.02 * sum(measured.values()), (predicted, measured)
    assert abs(predicted["quantized"] - measured["quantized"]) <= 0.02 * max(measured["quantized"], 1)
    assert (measured["quantized"] > 0) == (precision in ("int8", "int4"))
    assert record["summary"]["backbone_precision"]["precision"] == precision


@pytest.mark.parametrize("backbone_name", ["minilm-l6", "tiny-random-llama"])
def test_lst_on_an_int8_backbone_predicts_what_fp32_predicts_at_step_0(backbone_name, easy_csv, matrix_store):
    """Stated tolerance: class probabilities within 0.02 of fp32's, and the same predicted class wherever
    fp32's two probabilities are further apart than that (an untrained head sits near 0.5, where a tie
    may break either way)."""
    import copy

    method, model, trainable, batches = _build(backbone_name, "lst", easy_csv, matrix_store)
    model.eval()
    quantized = copy.deepcopy(model)
    apply_backbone_precision(quantized, "int8", [(n, p) for n, p in quantized.named_parameters() if p.requires_grad],
                             forward_only=True, device=torch.device("cpu"))
    with torch.no_grad():
        reference = method.predict(model, batches[0]).softmax(-1)
        got = method.predict(quantized, batches[0]).softmax(-1)
    assert (got - reference).abs().max() <= 0.02
    clear = (reference.max(-1).values - reference.min(-1).values) > 0.04
    assert torch.equal(got.argmax(-1)[clear], reference.argmax(-1)[clear])


REFUSED = [(m, p) for m in ("full_ft", "truncate", "theseus", "distill") for p in LOWER]


@pytest.mark.parametrize("method,precision", REFUSED[::3] + [("full_ft", "int4")])
def test_methods_without_a_frozen_backbone_refuse_a_lower_precision_before_anything_is_stored(method, precision,
                                                                                              tmp_path):
    from app.preparation import prepare_run
    from app.store import RunStore

    store = RunStore(tmp_path)
    with pytest.raises(ConfigError, match="no frozen backbone"):
        prepare_run(dict(backbone="tiny-random", dataset="sms-spam", method=method, backbone_precision=precision,
                         method_config={"predecessor": "x"} if method == "theseus" else
                         {"teacher": "x"} if method == "distill" else {}), store)
    assert store.list_runs() == []


def test_bad_precision_input_gets_one_clear_line(tmp_path, capsys, monkeypatch):
    from app.cli import main
    from app.precision import check_precision

    assert main(["train", "--backbone", "tiny-random", "--method", "lst", "--backbone-precision", "int3",
                 "--runs-dir", str(tmp_path)]) != 0
    assert "must be one of fp32, bf16, int8, int4; got 'int3'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown backbone_precision 'int3'"):
        check_precision(METHODS["lst"](), "int3")
    with pytest.raises(ConfigError, match="runs on cpu and cuda"):
        check_precision(METHODS["lora"](), "int4", torch.device("mps"))
    assert main(["train", "--backbone", "tiny-random", "--method", "full_ft", "--backbone-precision", "int8",
                 "--runs-dir", str(tmp_path)]) != 0
    assert "no frozen backbone to store in int8" in capsys.readouterr().err
    assert main(["train", "--backbone", "tiny-random", "--method", "lst", "--backbone-precision", "int8",
                 "--processes", "2", "--runs-dir", str(tmp_path)]) != 0
    assert "runs in one process" in capsys.readouterr().err
    import builtins

    real_import = builtins.__import__

    def no_bitsandbytes(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bitsandbytes)
    with pytest.raises(ConfigError, match="needs bitsandbytes"):
        check_precision(METHODS["lora"](), "int4")


def test_a_model_without_frozen_linear_layers_is_refused_with_its_reason():
    from app.precision import quantized_weight_bytes

    model = torch.nn.Sequential(torch.nn.Embedding(10, 4))
    for precision in LOWER:
        with pytest.raises(ConfigError, match=f"no frozen linear layer to store in {precision}"):
            apply_backbone_precision(model, precision, [], forward_only=True, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="no frozen linear layer to store in int4"):
        quantized_weight_bytes(model, "int4", [], forward_only=False)


def test_cli_reports_the_precision_and_the_quantized_part(tmp_path, capsys):
    from app.cli import main

    code = main(["train", "--backbone", "tiny-random", "--method", "lora", "--dataset", "sms-spam", "--steps", "2",
                 "--batch-size", "4", "--max-length", "32", "--max-train-examples", "32", "--max-eval-examples", "8",
                 "--backbone-precision", "int4", "--runs-dir", str(tmp_path), "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["backbone_precision"] == "int4"
    assert out["memory_breakdown"]["quantized"] > 0
    assert main(["estimate", "--backbone", "tiny-random", "--method", "lst", "--backbone-precision", "int8",
                 "--json"]) == 0
    estimate = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert estimate["backbone_precision"] == "int8" and estimate["breakdown"]["quantized"] > 0
    assert any("torchao dynamic int8" in note for note in estimate["notes"])


def test_a_quantized_run_reloads_quantized_and_exports_fp32_with_a_note(session_store, tmp_path):
    from app.checkpoints import load_run_model
    from app.export import export_run
    from app.memory import is_quantized

    record = train_now(session_store, method="lora", steps=3, eval_every=3, backbone_precision="int8")
    assert record["status"] == "finished", record.get("error")
    loaded = load_run_model(session_store, record["id"])
    assert any(is_quantized(p) for p in loaded.model.parameters())
    result = export_run(session_store, record["id"], tmp_path / "export")
    assert any(note.startswith("Trained with its frozen backbone in int8") for note in result["notes"])
    assert "Trained with its frozen backbone in int8" in (tmp_path / "export" / "README.md").read_text()


def test_an_int8_lst_run_is_explained_through_its_fp32_backbone_and_says_so(session_store):
    from app.explain import attribute, load_explainer

    record = train_now(session_store, method="lst", steps=3, eval_every=3, backbone_precision="int8")
    assert record["status"] == "finished", record.get("error")
    result = attribute(load_explainer(session_store, record["id"]), "a warm and funny film", n_steps=8)
    assert "frozen backbone in int8" in result["note"]
    assert any(abs(score) > 0 for score in result["scores"])


def test_the_launch_form_sends_the_precision_to_the_run(runs_dir, monkeypatch):
    from test_ui_pages import _tiny_form, open_app

    from app.manager import get_manager
    from app.store import RunStore

    at = _tiny_form(open_app(runs_dir, monkeypatch), steps=2)
    at.selectbox(key="launch.method").set_value("lst").run()
    at.selectbox(key="run.backbone_precision").set_value("int8").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(m.label == "quantized" for m in at.metric), [m.label for m in at.metric]  # the estimate's own part
    at.button(key="launch.submit").click().run()
    assert not at.error, [e.value for e in at.error]
    [run] = RunStore(runs_dir).list_runs()
    assert run["config"]["backbone_precision"] == "int8"
    final = get_manager(runs_dir).wait(run["id"], timeout=180)
    assert final["status"] == "finished", final.get("error")
    assert final["metrics"]["memory_breakdown"]["quantized"] > 0


@pytest.mark.real
def test_lst_on_an_int8_smollm2_beats_the_majority_class(session_store):
    record = train_now(session_store, backbone="smollm2-135m", dataset="rotten-tomatoes", method="lst",
                       backbone_precision="int8", steps=60, batch_size=8, max_length=64, lr=3e-3, eval_every=60,
                       max_train_examples=480, max_eval_examples=200, seed=0)
    assert record["status"] == "finished", record.get("error")
    assert record["metrics"]["test_accuracy"] > 0.6  # balanced classes: the majority class scores 0.5
    assert record["metrics"]["memory_breakdown"]["quantized"] > 0


def test_the_ladder_page_shows_an_int8_lst_runs_gates(runs_dir, monkeypatch):
    from test_ui_pages import charts, open_app

    from app.store import RunStore

    store = RunStore(runs_dir)
    record = train_now(store, method="lst", steps=4, eval_every=2, backbone_precision="int8")
    assert record["status"] == "finished", record.get("error")
    at = open_app(runs_dir, monkeypatch, "ladder", {"run": record["id"]})
    assert not at.error, [e.value for e in at.error]
    gates = next(s for t, s in charts(at).items() if t.startswith("Ladder gates"))
    assert [row[-1] for row in gates["data"][0]["customdata"]] == pytest.approx(
        store.telemetry(record["id"], "step")[-1]["lst"]["gates"])
