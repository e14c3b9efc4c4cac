"""The memory estimate against what real runs measure, its CLI contract, sizes this machine cannot
train, bad input, and the Launch page showing it."""

from __future__ import annotations

import json
import resource

import pytest
from conftest import train_now

from app.methods import METHODS

GiB = 1024**3
# Shapes none of which the estimator was written against (batch 4-32, length 16-128); each method
# is checked at two of them, so every shape is used and every method meets a short and a long one.
SHAPES = [(4, 16), (32, 24), (12, 40), (6, 72), (20, 56), (5, 100), (16, 88), (4, 128), (9, 64), (24, 32)]
TOLERANCE = 0.02


def _shapes_for(index: int, method: str) -> list[tuple[int, int]]:
    picked = [SHAPES[(2 * index) % len(SHAPES)], SHAPES[(2 * index + 5) % len(SHAPES)]]
    if method in ("prompt_tuning", "p_tuning"):  # 20 virtual tokens share tiny-random's 128 positions
        picked = [(b, min(L, 100)) for b, L in picked]
    return picked


def _reference_settings(method: str, reference_id: str) -> dict:
    if method == "theseus":
        # Phase 2 from the first step: every step is the successor alone, one of the two kinds of
        # Theseus step the estimate measures.
        return {"predecessor": reference_id, "phase2_start": 0.0}
    if method == "distill":
        return {"teacher": reference_id}
    return {}


@pytest.fixture(scope="module")
def reference_run(session_store) -> dict:
    """A finished one-step full_ft run: the predecessor and teacher of the matrix (only its shape matters)."""
    record = train_now(session_store, method="full_ft", steps=1, eval_every=10, max_train_examples=64,
                       max_eval_examples=8)
    assert record["status"] == "finished", record.get("error")
    return record


CASES = [(m, b, L) for i, m in enumerate(METHODS) for b, L in _shapes_for(i, m)]


@pytest.mark.parametrize("method,batch,length", CASES, ids=[f"{m}-b{b}-L{L}" for m, b, L in CASES])
def test_estimate_matches_the_measured_step_within_two_percent(method, batch, length, session_store, reference_run):
    from app.estimate import estimate_memory

    settings = _reference_settings(method, reference_run["id"])
    record = train_now(session_store, method=method, method_config=settings, batch_size=batch, max_length=length,
                       padding="max", steps=1, eval_every=10, max_train_examples=64, max_eval_examples=8)
    assert record["status"] == "finished", record.get("error")
    measured = record["metrics"]["memory_breakdown"]
    estimate = estimate_memory("tiny-random", method, batch, length, settings)
    predicted = estimate.breakdown
    if method == "theseus":
        [alone] = [s for s in estimate.steps if s["kind"] == "successor alone"]
        predicted = {part: alone[part] for part in measured}
        assert estimate.predicted_peak_bytes >= alone["total"]
    total_measured, total_predicted = sum(measured.values()), sum(predicted.values())
    assert abs(total_predicted - total_measured) <= TOLERANCE * total_measured, (predicted, measured)
    assert estimate.trainable_params == record["summary"]["trainable_params"]
    assert record["metrics"]["peak_memory_shape"] == [batch, length]


DECODER_CASES = [(backbone, method, batch, length) for backbone in ("tiny-random-llama", "tiny-random-gpt2")
                 for method, batch, length in (("full_ft", 6, 40), ("lst", 12, 72), ("lora", 5, 100))]



@pytest.mark.parametrize("backbone,method,batch,length", DECODER_CASES,
                         ids=[f"{bb}-{m}-b{b}-L{L}" for bb, m, b, L in DECODER_CASES])
def test_estimate_matches_the_measured_step_on_decoders(backbone, method, batch, length, session_store):
    """Decoder layer stacks (LST's backbone and side network) decide from the padding mask whether
    attention needs a mask; the estimate's fake batch has no values to read, and transformers takes
    fake tensors for a traced graph and would build a mask a real run does not have."""
    from app.estimate import estimate_memory

    record = train_now(session_store, backbone=backbone, method=method, batch_size=batch, max_length=length,
                       padding="max", steps=1, eval_every=10, max_train_examples=64, max_eval_examples=8)
    assert record["status"] == "finished", record.get("error")
    measured = record["metrics"]["memory_breakdown"]
    predicted = estimate_memory(backbone, method, batch, length).breakdown
    total_measured, total_predicted = sum(measured.values()), sum(predicted.values())
    assert abs(total_predicted - total_measured) <= TOLERANCE * total_measured, (predicted, measured)



@pytest.mark.parametrize("backbone", ["tiny-random", "tiny-random-llama"])
def test_estimate_matches_lst_with_the_final_merge(backbone, session_store):
    """The merge adds a gate and reads the backbone's final state: past the last ladder layer when
    the ladders stop early."""
    from app.estimate import estimate_memory

    settings = {"final_merge": True, "layer_dropping": "list", "layer_indices": [0]}
    record = train_now(session_store, backbone=backbone, method="lst", method_config=settings, batch_size=6,
                       max_length=40, padding="max", steps=1, eval_every=10, max_train_examples=64, max_eval_examples=8)
    assert record["status"] == "finished", record.get("error")
    measured = record["metrics"]["memory_breakdown"]
    estimate = estimate_memory(backbone, "lst", 6, 40, settings)
    total_measured, total_predicted = sum(measured.values()), sum(estimate.breakdown.values())
    assert abs(total_predicted - total_measured) <= TOLERANCE * total_measured, (estimate.breakdown, measured)
    assert estimate.trainable_params == record["summary"]["trainable_params"]

def test_theseus_peak_is_its_longest_autograd_stretch():
    """Successor module 0 followed by predecessor blocks keeps more activations than the successor
    alone; the estimate reports that step as the peak and keeps the other one beside it."""
    from app.estimate import estimate_memory

    estimate = estimate_memory("tiny-random", "theseus", 16, 64)
    kinds = {s["kind"]: s for s in estimate.steps}
    assert len(kinds) == 2
    mixed = next(s for k, s in kinds.items() if k.startswith("module replacement"))
    assert mixed["activations"] > kinds["successor alone"]["activations"]
    assert estimate.step_kind == max(estimate.steps, key=lambda s: s["total"])["kind"]


def test_lst_and_prompt_tokens_change_what_is_kept():
    from app.estimate import estimate_memory

    full = estimate_memory("tiny-random", "full_ft", 16, 64)
    lst = estimate_memory("tiny-random", "lst", 16, 64)
    prompt = estimate_memory("tiny-random", "prompt_tuning", 16, 64, {"num_virtual_tokens": 30})
    assert lst.activations < full.activations / 3  # the backbone runs without autograd
    assert prompt.input_length == 94
    assert prompt.activations > full.activations  # 30 more positions, backprop still crosses everything


def test_cli_estimate_prints_the_json_contract(capsys):
    from app.cli import main

    code = main(["estimate", "--backbone", "tiny-random", "--method", "lora", "--batch-size", "8",
                 "--max-length", "32", "--set", "rank=4", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["breakdown"]) == {"weights", "quantized", "gradients", "optimizer", "activations", "loss"}
    assert result["breakdown"]["quantized"] == 0 and result["backbone_precision"] == "fp32"
    assert result["predicted_peak_bytes"] == sum(result["breakdown"].values())
    assert set(result["fits"]) == {"8GB", "16GB", "24GB", "40GB", "80GB"}
    assert all(result["fits"].values())
    assert result["trainable_params"] > 0 and result["seconds"] >= 0
    assert result["cuda_overhead"]["source"].startswith("documented")


def test_cli_estimate_refuses_bad_input_with_one_line(capsys):
    from app.cli import main

    code = main(["estimate", "--backbone", "tiny-random", "--method", "nope", "--batch-size", "8",
                 "--max-length", "32", "--json"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "unknown method 'nope'" in err


def test_a_backbone_too_large_for_this_machine_is_estimated_without_allocating():
    from app.estimate import bert_config, estimate_memory

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results = {m: estimate_memory(bert_config(), m, 32, 512) for m in ("full_ft", "lora", "lst")}
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    full = results["full_ft"]
    assert full.total_params > 330_000_000
    assert full.weights >= 4 * full.total_params  # fp32 weights alone are 1.3 GB ...
    assert grown < 512 * 1024**2  # ... and the process never held them
    assert full.predicted_peak_bytes > 40 * GiB and not full.fits["40GB"]
    assert results["lora"].predicted_peak_bytes < full.predicted_peak_bytes
    assert results["lst"].predicted_peak_bytes < full.predicted_peak_bytes / 4
    assert results["lst"].fits["16GB"]


@pytest.mark.parametrize("args,message", [
    (("tiny-random", "nope", 8, 32), "unknown method 'nope'"),
    (("no-such-backbone", "full_ft", 8, 32), "backbone 'no-such-backbone' is neither a registry name"),
    (("tiny-random", "full_ft", 8, 200), "max_length 200 is above what backbone 'tiny-random' accepts (128)"),
    (("tiny-random", "prompt_tuning", 8, 120), "plus the 20 virtual tokens"),
    (("tiny-random", "full_ft", 0, 32), "'batch_size' must be at least 1"),
])
def test_bad_input_gets_a_clear_message(args, message):
    from app.errors import LabError
    from app.estimate import estimate_memory

    with pytest.raises(LabError) as caught:
        estimate_memory(*args)
    assert message in str(caught.value)


def test_launch_page_shows_the_estimate_and_warns_when_it_cannot_fit(runs_dir, monkeypatch):
    from test_ui_pages import _tiny_form, open_app

    at = _tiny_form(open_app(runs_dir, monkeypatch))
    labels = {m.label: m.value for m in at.metric}
    assert "Predicted peak" in labels and labels["Predicted peak"].endswith("MiB")
    assert set(labels) >= {"weights", "gradients", "optimizer", "activations"}
    assert any("fits 8 GB, 16 GB, 24 GB, 40 GB, 80 GB" in m.value for m in at.markdown)
    assert not at.warning
    # A setup far beyond any memory here (hundreds of GiB): the warning comes before anything is launched.
    at.selectbox(key="launch.backbone").set_value("minilm-l6").run()
    at.number_input(key="run.batch_size").set_value(4096).run()
    at.number_input(key="run.max_length").set_value(512).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("would likely fail out of memory" in w.value for w in at.warning), [w.value for w in at.warning]


def published_size(count: int) -> str:
    """A parameter count the way model cards state it: three significant digits, M or B."""
    return f"{count / 1e9:.3g}B" if count >= 1e9 else f"{count / 1e6:.3g}M"


@pytest.mark.parametrize("name", ["bert-base", "bert-large", "qwen2.5-0.5b", "llama-3.2-1b", "qwen2.5-7b",
                                  "mistral-7b", "llama-3.1-8b", "llama-3.1-70b"])
def test_each_shipped_config_builds_the_published_model(name):
    """The released checkpoint's architecture (its LM head included), built on the meta device from
    the shipped config, has the size the model card states."""
    import json

    import torch
    import transformers

    from app.config_models import CONFIG_MODELS, load_config
    from app.memory import count_parameters

    model = CONFIG_MODELS[name]
    config = load_config(f"config:{name}")
    name_of_class = model.checkpoint_class or json.loads(model.path.read_text())["architectures"][0]
    architecture = getattr(transformers, name_of_class)
    with torch.device("meta"):
        built = architecture(config)
    assert published_size(count_parameters(built)) == model.published_params


def test_the_cli_sweeps_a_grid_of_shapes_with_the_time_of_each_point(capsys):
    from app.cli import main

    assert main(["estimate", "--backbone", "tiny-random", "--method", "lst", "--sweep", "batch_size=2,4",
                 "--sweep", "max_length=16,32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    shapes = [(row["batch_size"], row["max_length"]) for row in result["rows"]]
    assert shapes == [(2, 16), (2, 32), (4, 16), (4, 32)]
    peaks = {shape: row["predicted_peak_bytes"] for shape, row in zip(shapes, result["rows"])}
    assert peaks[(2, 16)] < peaks[(2, 32)] < peaks[(4, 32)] and peaks[(2, 16)] < peaks[(4, 16)]
    assert all(0 < row["seconds"] < 60 for row in result["rows"])


def test_a_config_only_model_is_estimated_and_refused_for_training(capsys, store):
    from conftest import tiny_config

    from app.cli import main
    from app.errors import ConfigError
    from app.preparation import prepare_run

    assert main(["estimate", "--backbone", "config:qwen2.5-0.5b", "--method", "lora", "--batch-size", "1",
                 "--max-length", "64", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["backbone"] == "config:qwen2.5-0.5b" and result["trainable_params"] < result["total_params"] / 50
    with pytest.raises(ConfigError, match="config only: estimate, no training"):
        prepare_run(tiny_config(backbone="config:qwen2.5-0.5b"), store)
    assert store.list_runs() == []


@pytest.mark.parametrize("backbone, says", [
    ("config:no-such-model", "is not a shipped config"),
    ("config:{tmp}/broken.json", "is not a readable JSON config"),
    ("config:{tmp}/no_type.json", "needs a \"model_type\""),
])
def test_a_bad_config_gets_one_clear_line(backbone, says, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    (tmp_path / "broken.json").write_text('{"model_type": "llama", ')
    (tmp_path / "no_type.json").write_text('{"hidden_size": 64}')
    out = subprocess.run([sys.executable, "-m", "app", "estimate", "--backbone", backbone.format(tmp=tmp_path),
                          "--batch-size", "1", "--max-length", "16"], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 2
    assert says in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
