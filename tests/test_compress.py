"""Post-training compression of finished runs: pruning reaches what was asked, structured pruning
really shrinks a runnable model, quantization changes predictions as little (or as much) as it
should, points are stored with the run, and the CLI keeps its contract."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

from app.errors import LabError
from conftest import train_now

ROOT = Path(__file__).resolve().parent.parent
FAST_TIMING = {"latency_repeats": 1, "latency_warmup": 0, "latency_batch_size": 8}
EASY_WORDS = ("wonderful", "terrible")


@pytest.fixture(scope="module")
def compress_store(tmp_path_factory):
    from app.store import RunStore

    return RunStore(tmp_path_factory.mktemp("compress-runs"))


@pytest.fixture(scope="module")
def easy_run(compress_store, tmp_path_factory) -> dict:
    """A tiny full fine-tuning run trained to high accuracy on an easy two-word task."""
    path = tmp_path_factory.mktemp("easy") / "easy.csv"
    rows = ["text,label"] + [f"the film was {EASY_WORDS[i % 2]} said person {i},{i % 2}" for i in range(600)]
    path.write_text("\n".join(rows))
    record = train_now(compress_store, method="full_ft", dataset=str(path), steps=40, lr=1e-3, eval_every=40,
                       batch_size=16, max_length=16, max_train_examples=None)
    assert record["status"] == "finished", record.get("error")
    assert record["metrics"]["test_accuracy"] >= 0.95
    return record


@pytest.fixture(scope="module")
def easy_sweep(compress_store, easy_run) -> dict:
    """One sweep on the easy run: heavy pruning with a recovery fine-tune, int8 and two bit widths."""
    from app.compression import compress_run

    seen = []
    points = compress_run(
        compress_store, easy_run["id"],
        {"sparsities": [0.9], "recovery_steps": 15, "quantize": ["int8", "8bit", "1bit"], **FAST_TIMING},
        progress=lambda done, total, message: seen.append((done, total, message)),
    )
    return {"points": {p["key"]: p for p in points}, "progress": seen}


def tiny_model():
    from app.backbones import get_backbone

    torch.manual_seed(0)
    return get_backbone("tiny-random").load_for_classification(["a", "b"]).eval()


def tiny_inputs(batch: int = 3, length: int = 12) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(5, 1000, (batch, length), generator=generator),
            "attention_mask": torch.ones(batch, length, dtype=torch.long)}


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --- pruning ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["global", "per_layer"])
def test_magnitude_pruning_reaches_the_asked_sparsity_on_encoder_weights_only(scope):
    from app.compression.pruning import magnitude_prune, make_pruning_permanent

    model = tiny_model()
    untouched = {n: p.detach().clone() for n, p in model.named_parameters()
                 if "embeddings" in n or "classifier" in n or "pooler" in n}
    targets = magnitude_prune(model, 0.6, scope)
    make_pruning_permanent(model)
    assert all(".encoder.layer." in name for name, _ in targets.modules)
    assert len(targets.modules) == model.config.num_hidden_layers * 6  # q, k, v, attn out, FFN in, FFN out
    zeros = [int((m.weight == 0).sum()) for _, m in targets.modules]
    sizes = [m.weight.numel() for _, m in targets.modules]
    assert sum(zeros) / sum(sizes) == pytest.approx(0.6, abs=1e-4)
    if scope == "per_layer":
        for z, n in zip(zeros, sizes):
            assert z / n == pytest.approx(0.6, abs=1 / n)
    else:  # global ranking prunes matrices unevenly
        assert max(z / n for z, n in zip(zeros, sizes)) - min(z / n for z, n in zip(zeros, sizes)) > 0.01
    for name, before in untouched.items():
        assert torch.equal(dict(model.named_parameters())[name], before), name
    assert not any("weight_orig" in n for n, _ in model.named_parameters())  # masks folded in


def test_head_pruning_removes_the_weights_of_whole_heads_and_the_model_still_runs():
    from app.compression.pruning import heads_per_layer, prune_heads

    model = tiny_model()
    config = model.config
    hidden, heads, layers = config.hidden_size, config.num_attention_heads, config.num_hidden_layers
    head_size = hidden // heads
    inputs = tiny_inputs()
    before = count(model)
    removed = prune_heads(model, per_layer=1)
    assert all(len(v) == 1 for v in removed.values())
    # Per removed head: q/k/v rows with their biases and the output projection's columns.
    assert before - count(model) == layers * (4 * hidden * head_size + 3 * head_size)
    assert heads_per_layer(model) == [heads - 1] * layers
    attention = model.bert.encoder.layer[0].attention
    assert attention.self.query.weight.shape == (hidden - head_size, hidden)
    assert attention.output.dense.weight.shape == (hidden, hidden - head_size)
    with torch.no_grad():
        assert model(**inputs).logits.shape == (3, 2)


def test_head_pruning_keeps_the_most_important_heads_and_their_exact_outputs():
    """Removing a head whose output-projection columns are zero must not change the model."""
    from app.compression.pruning import prune_heads

    model = tiny_model()
    size = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.attention.output.dense.weight[:, 2 * size:3 * size] = 0  # head 2 contributes nothing
            for name in ("query", "key", "value"):
                getattr(layer.attention.self, name).weight[2 * size:3 * size] *= 1e-3  # and is least important
        inputs = tiny_inputs()
        expected = model(**inputs).logits
        removed = prune_heads(model, per_layer=1)
        assert all(v == [2] for v in removed.values())
        assert torch.allclose(model(**inputs).logits, expected, atol=1e-5)


def test_global_head_count_spreads_over_layers_and_keeps_a_head_in_each():
    from app.compression.pruning import heads_per_layer, prune_heads

    model = tiny_model()
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    prune_heads(model, total=layers * (heads - 1))
    assert heads_per_layer(model) == [1] * layers
    with torch.no_grad():
        model(**tiny_inputs())
    with pytest.raises(LabError, match="keeps one"):
        prune_heads(tiny_model(), total=layers * (heads - 1) + 1)
    with pytest.raises(LabError, match="heads per layer"):
        prune_heads(tiny_model(), per_layer=heads)


def test_ffn_pruning_really_shrinks_the_intermediate_layers():
    from app.compression.pruning import prune_ffn

    model = tiny_model()
    hidden, width, layers = model.config.hidden_size, model.config.intermediate_size, model.config.num_hidden_layers
    before = count(model)
    kept = prune_ffn(model, 0.5)
    assert kept == [width // 2] * layers
    removed = width - width // 2
    assert before - count(model) == layers * removed * (2 * hidden + 1)
    layer = model.bert.encoder.layer[0]
    assert layer.intermediate.dense.weight.shape == (width // 2, hidden)
    assert layer.output.dense.weight.shape == (hidden, width // 2)
    with torch.no_grad():
        assert model(**tiny_inputs()).logits.shape == (3, 2)


@pytest.mark.parametrize("backbone_name", ["tiny-random", "tiny-random-llama", "tiny-random-gpt2"])
def test_calibration_measures_what_enters_every_output_projection_on_real_tokens_only(backbone_name):
    """The input norms are the root sum of squares over the unpadded tokens of what each layer's
    attention output and FFN down projection read, checked against the inputs captured directly."""
    from app.backbones import get_backbone
    from app.compression.calibration import measure_input_norms
    from app.compression.pruning import output_projections, plain_linears

    torch.manual_seed(0)
    model = get_backbone(backbone_name).load_for_classification(["a", "b"]).eval()
    plain_linears(model)  # GPT-2's Conv1D layers, as the sweep does first
    batch = tiny_inputs(batch=3, length=10)
    batch["attention_mask"][1, 6:] = 0  # padding: left out of the norms
    attention, ffn = output_projections(model, heads=True, ffn=True)
    captured = []
    handle = ffn[1].register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
    norms = measure_input_norms(model, {"attention": attention, "ffn": ffn, "both": [attention[0], ffn[1]]},
                                [batch, batch], lambda m, b: m(**b))
    handle.remove()
    real = batch["attention_mask"].bool()
    expected = torch.cat([x[real] for x in captured]).double().pow(2).sum(0).sqrt().float()
    torch.testing.assert_close(norms.groups["ffn"][1], expected, rtol=1e-5, atol=1e-6)
    assert len(captured) == 2  # a Linear in two groups is measured once per pass
    torch.testing.assert_close(norms.groups["both"][1], norms.groups["ffn"][1])
    assert norms.tokens == 2 * int(real.sum())
    assert len(norms.groups["attention"]) == len(ffn) and all((n > 0).all() for n in norms.groups["ffn"])
    assert not model.training


def test_a_neuron_with_small_weights_and_huge_inputs_is_kept_by_activation_and_removed_by_weight():
    """Decoders have neurons like this (docs/language-models.md): weight L1 ranks them least important,
    what they write (input norm x output weights' norm) ranks them first."""
    import copy

    from app.compression.pruning import feed_forward_parts, prune_ffn

    model = tiny_model()
    with torch.no_grad():
        first = feed_forward_parts(model)[0]
        first.up.weight[0] *= 0.001
        first.down.weight[:, 0] *= 0.001
    marked = first.down.weight[:, 0].clone()
    norms = [torch.ones(parts.down.in_features) for parts in feed_forward_parts(model)]
    norms[0][0] = 1e6  # what enters neuron 0 of layer 0 is huge

    def keeps_the_neuron(pruned) -> bool:
        return any(torch.equal(column, marked) for column in feed_forward_parts(pruned)[0].down.weight.T)

    by_weight, by_activation = copy.deepcopy(model), copy.deepcopy(model)
    prune_ffn(by_weight, 0.5)
    prune_ffn(by_activation, 0.5, norms)
    assert not keeps_the_neuron(by_weight) and keeps_the_neuron(by_activation)


def test_wanda_zeroes_each_rows_lowest_weight_times_input_norm():
    """Within every output row the same share goes; a small weight on a loud input outlives a larger
    weight on a quiet one."""
    from app.compression.pruning import linear_targets, make_pruning_permanent, wanda_prune

    model = tiny_model()
    first = linear_targets(model).modules[0][1]
    with torch.no_grad():
        first.weight[:, 0] = 0.01  # small weights on input 0
        first.weight[:, 1] = 1.0  # large weights on input 1
    norms = [torch.ones(m.in_features) for _, m in linear_targets(model).modules]
    norms[0][0], norms[0][1] = 1e4, 1e-4  # input 0 is loud, input 1 quiet
    targets = wanda_prune(model, 0.5, norms)
    make_pruning_permanent(model)
    weight = linear_targets(model).modules[0][1].weight
    assert ((weight == 0).sum(1) == weight.shape[1] // 2).all()
    assert (weight[:, 0] != 0).all() and (weight[:, 1] == 0).all()
    assert targets.weight_count == sum(m.weight.numel() for _, m in linear_targets(model).modules)


def test_structured_pruning_refuses_a_model_that_is_not_a_plain_transformer():
    from app.compression.pruning import prune_ffn, prune_heads

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny_model()

        def forward(self, **inputs):
            return self.inner(**inputs).logits

    with pytest.raises(LabError, match="plain transformers model"):
        prune_heads(Wrapped(), per_layer=1)
    with pytest.raises(LabError, match="plain transformers model"):
        prune_ffn(Wrapped(), 0.5)


# --- quantization -----------------------------------------------------------------------------


def test_kbit_fake_quant_uses_the_promised_levels():
    from app.compression.quantization import fake_quantize_weight

    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    for bits in (8, 4, 2):
        q = fake_quantize_weight(weight, bits)
        for row in q:
            assert len(torch.unique(row)) <= 2 ** bits - 1  # symmetric: -qmax..qmax
        assert (q.abs().amax(1) - weight.abs().amax(1)).abs().max() < 1e-5  # the row maximum is a level
    binary = fake_quantize_weight(weight, 1)
    assert torch.allclose(binary.abs(), weight.abs().mean(1, keepdim=True).expand_as(weight))
    assert torch.equal(torch.sign(binary), torch.where(weight >= 0, 1.0, -1.0))
    errors = {bits: float((fake_quantize_weight(weight, bits) - weight).norm() / weight.norm()) for bits in (8, 4, 1)}
    assert errors[8] < 0.01 < errors[4] < errors[1]


def test_int8_and_8bit_barely_change_a_trained_model_and_1bit_changes_it_much_more(easy_run, easy_sweep):
    points = easy_sweep["points"]
    baseline = points["baseline"]
    assert baseline["test_accuracy"] == pytest.approx(easy_run["metrics"]["test_accuracy"])
    int8, eight, one = points["int8"], points["8bit"], points["1bit"]
    assert int8["agreement"] >= 0.95
    assert int8["test_accuracy"] >= baseline["test_accuracy"] - 0.05
    assert eight["agreement"] == 1.0 and eight["logit_drift"] < 0.01
    assert one["logit_drift"] > 20 * eight["logit_drift"] and one["logit_drift"] > 0.1
    assert int8["bytes"] < baseline["bytes"]  # int8 Linear weights are written as int8
    assert one["bytes"] < eight["bytes"] < baseline["bytes"]
    assert one["bytes_kind"] == "computed packed size"
    assert "computed, not written" in one["note"]


def test_recovery_fine_tune_keeps_the_sparsity_and_does_not_lower_accuracy(easy_sweep):
    point = easy_sweep["points"]["sparsity=0.9/global+recovery=15"]
    assert point["recovery_steps"] == 15
    assert point["achieved_sparsity"] == pytest.approx(0.9, abs=1e-4)  # masks held during recovery
    assert point["test_accuracy"] >= point["accuracy_before_recovery"]
    assert point["recovery_loss_last"] < point["recovery_loss_first"]
    assert point["bytes"] == easy_sweep["points"]["baseline"]["bytes"]  # masks make nothing smaller
    assert point["sparse_bytes"] < point["bytes"]
    assert point["nonzero_params"] < easy_sweep["points"]["baseline"]["nonzero_params"]


def test_points_are_stored_with_the_run_and_progress_is_reported(compress_store, easy_run, easy_sweep):
    from app.compression import stored_points

    stored = {p["key"]: p for p in stored_points(compress_store, easy_run["id"])}
    for key, point in easy_sweep["points"].items():
        assert key in stored
        for field in ("kind", "setting", "test_accuracy", "params", "nonzero_params", "bytes", "latency_ms", "note"):
            assert stored[key][field] == point[field], (key, field)
        assert point["latency_ms"] > 0
    progress = easy_sweep["progress"]
    total = progress[0][1]
    assert total == 5 and progress[-1][0] == total
    assert [d for d, _, _ in progress] == sorted(d for d, _, _ in progress)


def test_cancelling_a_sweep_stops_it(compress_store, easy_run):
    import threading

    from app.compression import compress_run
    from app.errors import RunCancelled

    cancel = threading.Event()

    def progress(done, total, message):
        if done >= 1:
            cancel.set()

    with pytest.raises(RunCancelled):
        compress_run(compress_store, easy_run["id"], {"sparsities": [0.1, 0.2], **FAST_TIMING},
                     progress=progress, cancel=cancel)


# --- CLI ----------------------------------------------------------------------------------------


def lab(*args, runs_dir, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "app", *args, "--runs-dir", str(runs_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_compress_cli_json_contract(compress_store, easy_run):
    result = lab("compress", easy_run["id"], "--sparsity", "0.3,0.6", "--quantize", "int8,4bit",
                 "--structured-heads", "1", "--structured-ffn", "0.25", "--per-layer",
                 "--latency-repeats", "1", "--latency-warmup", "0", "--latency-batch-size", "8", "--json",
                 runs_dir=compress_store.runs_dir)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["run_id"] == easy_run["id"]
    assert [(p["kind"], p["setting"]) for p in out["points"]] == [
        ("baseline", "fp32"), ("unstructured", "0.3"), ("unstructured", "0.6"), ("heads", "1 per layer"),
        ("ffn", "0.25"), ("int8", "int8"), ("kbit", "4bit")]
    for point in out["points"]:
        for key in ("kind", "setting", "test_accuracy", "params", "bytes", "latency_ms"):
            assert point[key] is not None, (point["kind"], key)
    assert out["points"][1]["scope"] == "per_layer"
    assert out["points"][3]["params"] < out["points"][0]["params"]
    assert "point" in result.stderr  # progress goes to stderr


def test_compress_cli_rejects_an_unknown_run_in_one_line(compress_store):
    result = lab("compress", "no-such-run", "--sparsity", "0.3", "--json", runs_dir=compress_store.runs_dir)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "no-such-run" in result.stderr


@pytest.mark.parametrize("args, words", [
    (["--sparsity", "1.0"], "outside [0, 1)"),
    (["--sparsity", "0.3,abc"], "comma-separated"),
    (["--quantize", "int8,3bit"], "3bit"),
    (["--structured-heads", "4"], "heads per layer"),
    (["--structured-ffn", "1.5"], "structured_ffn"),
])
def test_compress_cli_rejects_bad_settings_with_exit_2(compress_store, easy_run, args, words):
    from app.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["compress", easy_run["id"], *args, "--runs-dir", str(compress_store.runs_dir)])
    assert code == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and words in lines[0], err.getvalue()


def test_compress_refuses_a_run_that_has_not_finished(compress_store):
    from app.cli import main
    from conftest import tiny_config

    run_id = compress_store.create_run(tiny_config(method="full_ft"))  # queued, never trained
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = main(["compress", run_id, "--sparsity", "0.3", "--runs-dir", str(compress_store.runs_dir)])
    assert code == 2 and "not finished" in err.getvalue() and len(err.getvalue().strip().splitlines()) == 1
