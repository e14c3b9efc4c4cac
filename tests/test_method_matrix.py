"""One matrix over every registered method on each tiny random backbone family (a BERT encoder,
a LLaMA-style decoder, a GPT-2 decoder).

For each method: it builds; forward and backward run; only the parameters the method declares
trainable receive gradients; every other parameter stays bit-identical after optimizer steps; the
loss falls over a few steps on an easy task; a run through the engine exports and the export
reloads to the same predictions.

Adding a method means adding its row to MATRIX (settings that make it learn the easy task fast);
adding a backbone family means adding its tiny model to BACKBONES. A method a family cannot train
is refused before anything is stored, with its reason.
"""

from __future__ import annotations

import pytest
import torch

from app.methods import METHODS, create_method, supported_methods
from app.methods.base import BuildContext, TrainState, model_inputs
from conftest import train_now

# method name -> (method settings, run settings) for the matrix. A run setting
# "learning_backbone" moves the loss-falls check to another backbone: on the tiny random encoder
# attention is near uniform and the [CLS] state hardly varies between inputs, so methods that
# leave the backbone's weights frozen (BitFit, adapters, prompts) have nothing to amplify there.
# "loss_ratio" (default 0.8) is how far the loss must fall over the 40 steps.
# "trainable_exactly", where a row has it, maps a built model's parameter names to the exact set
# the method's paper trains; the matrix checks the method declares that set, no more, no less.
MATRIX: dict[str, tuple[dict, dict]] = {
    "full_ft": ({}, {"lr": 1e-3}),
    "truncate": ({}, {"lr": 1e-3}),
    # The successor starts from a fine-tuned predecessor's layers, so it starts near the predecessor's
    # low loss: asking for the same 20% fall as from scratch would ask it to beat a converged model.
    "theseus": ({"scheduler": "constant", "replace_rate": 1.0}, {"lr": 1e-3, "loss_ratio": 0.95}),
    "distill": ({"hidden_weight": 1.0, "attention_weight": 1.0}, {"lr": 1e-3}),
    "bitfit": ({}, {"lr": 3e-2, "learning_backbone": "minilm-l6", "trainable_exactly": lambda names: {
        n for n in names if n.rsplit(".", 1)[-1] == "bias" or n.split(".", 1)[0] in ("classifier", "score")}}),
    # The layer norms train too (the reference's default): 1e-2 overshoots on them, 3e-3 does not.
    "adapter": ({"bottleneck": 16}, {"lr": 3e-3, "learning_backbone": "minilm-l6"}),
    "prompt_tuning": ({"num_virtual_tokens": 4}, {"lr": 3e-2, "learning_backbone": "minilm-l6"}),
    "p_tuning": ({"num_virtual_tokens": 4, "encoder_hidden_size": 32}, {"lr": 3e-2, "learning_backbone": "minilm-l6"}),
    "lora": ({"rank": 4}, {"lr": 1e-2}),
    "lst": ({}, {"lr": 3e-3}),
    # Rows named method+setting put a setting that changes the model through the same checks.
    "lst+final_merge": ({"final_merge": True}, {"lr": 3e-3}),
    "lst+gate_init": ({"gate_init": 0.9}, {"lr": 3e-3}),
    "linear_probe": ({}, {"lr": 3e-2, "learning_backbone": "minilm-l6", "trainable_exactly": lambda names: {
        n for n in names if n.startswith("classifier.")}}),
}

def method_of(row: str) -> str:
    return row.split("+", 1)[0]


TEST_ONLY_KEYS = ("lr", "learning_backbone", "loss_ratio", "trainable_exactly")  # not run settings
BACKBONES = ("tiny-random", "tiny-random-llama", "tiny-random-gpt2")


def _supported(backbone_name: str, method_name: str) -> bool:
    from app.backbones import get_backbone

    return METHODS[method_of(method_name)].backbone_refusal(get_backbone(backbone_name)) is None


def _pairs(methods) -> list:
    return [pytest.param(backbone, name, id=f"{backbone}-{name}") for backbone in BACKBONES for name in sorted(methods)
            if _supported(backbone, name)]

@pytest.fixture(scope="module")
def reference_runs(matrix_store, easy_csv):
    """A finished full fine-tuning run per backbone, for methods that need a predecessor or teacher."""
    runs = {}

    def get(backbone: str) -> str:
        if backbone not in runs:
            record = train_now(matrix_store, backbone=backbone, method="full_ft", dataset=str(easy_csv), steps=60,
                               lr=1e-3, eval_every=60, batch_size=16, max_train_examples=None)
            assert record["status"] == "finished", record.get("error")
            runs[backbone] = record["id"]
        return runs[backbone]
    return get


def test_every_registered_method_has_a_matrix_row():
    assert set(METHODS) <= set(MATRIX) and {method_of(row) for row in MATRIX} == set(METHODS)


def method_settings(name: str, reference_run: str | None) -> dict:
    settings = dict(MATRIX[name][0])
    for field_name in METHODS[method_of(name)].reference_fields:
        settings.setdefault(field_name, reference_run)
    return settings


def _needs_reference(name: str) -> bool:
    return bool(METHODS[method_of(name)].reference_fields)


@pytest.fixture
def reference_for(reference_runs):
    def get(name, backbone="tiny-random"):
        return reference_runs(backbone) if _needs_reference(name) else None
    return get


def _context(matrix_store, backbone, batches, device=torch.device("cpu")):
    from app.checkpoints import load_reference

    return BuildContext(
        backbone=backbone, label_names=["0", "1"], device=device, seed=0,  # the easy CSV's classes
        train_batches=lambda: iter(batches), load_reference=lambda ref: load_reference(matrix_store, ref, device),
        max_length=24,
    )


def _easy_batches(backbone, easy_csv, n_batches=6, batch_size=16):
    from app.data import load_dataset, tokenize_split

    data = load_dataset(str(easy_csv))
    tensors = tokenize_split(backbone.tokenizer, data, "train", 24)
    batches = []
    for i in range(n_batches):
        idx = torch.arange(i * batch_size, (i + 1) * batch_size)
        batch = {k: v[idx] for k, v in tensors.items()}
        batch["index"] = idx
        batches.append(batch)
    return batches


def _learning_backbone(backbone_name: str, name: str) -> str:
    """The backbone the loss-falls check runs on: the row's learning backbone stands in for the
    tiny random encoder only."""
    learning = MATRIX[name][1].get("learning_backbone")
    return learning if learning and backbone_name == "tiny-random" else backbone_name


@pytest.mark.parametrize("backbone_name,name", _pairs(MATRIX))
def test_method_trains_only_what_it_declares(backbone_name, name, matrix_store, easy_csv, reference_for):
    from app.backbones import get_backbone

    backbone_name = _learning_backbone(backbone_name, name)
    backbone = get_backbone(backbone_name)
    batches = _easy_batches(backbone, easy_csv)
    method = create_method(method_of(name), method_settings(name, reference_for(name, backbone_name)))
    torch.manual_seed(0)
    model = method.build(_context(matrix_store, backbone, batches))
    model.train()
    trainable = method.trainable_parameters(model)
    assert trainable, "no trainable parameters"
    trainable_ids = {id(p) for _, p in trainable}
    for p in model.parameters():
        if id(p) not in trainable_ids:
            p.requires_grad_(False)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in trainable_ids}

    run_lr = MATRIX[name][1].get("lr", method.default_lr)
    optimizer = torch.optim.AdamW([p for _, p in trainable], lr=run_lr, weight_decay=0.0)
    state = TrainState(step=0, total_steps=40, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    method.on_train_start(model, state)
    losses = []
    for step in range(1, 41):
        state.step = step
        batch = batches[step % len(batches)]
        method.on_step_start(model, state)
        out = method.training_step(model, batch, state)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if step == 1:
            got_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
            declared = {n for n, _ in trainable}
            assert got_grad <= declared, f"undeclared parameters got gradients: {sorted(got_grad - declared)[:5]}"
            assert got_grad, "no parameter received a gradient"
        optimizer.step()
        losses.append(out.loss.item())
    for n, p in model.named_parameters():
        if n in frozen_before:
            assert torch.equal(p.detach(), frozen_before[n]), f"frozen parameter {n} changed"
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < MATRIX[name][1].get("loss_ratio", 0.8) * first, f"loss did not fall: {first:.4f} -> {last:.4f}"
    model.eval()
    with torch.no_grad():
        logits = method.predict(model, batches[0])
    assert logits.shape == (16, 2)


@pytest.mark.parametrize("backbone_name,name", _pairs(n for n, row in MATRIX.items() if "trainable_exactly" in row[1]))
def test_method_trains_exactly_what_its_paper_trains(backbone_name, name, matrix_store, easy_csv, reference_for):
    from app.backbones import get_backbone

    backbone = get_backbone(backbone_name)
    method = create_method(method_of(name), method_settings(name, reference_for(name, backbone_name)))
    model = method.build(_context(matrix_store, backbone, _easy_batches(backbone, easy_csv, n_batches=1)))
    names = [n for n, _ in model.named_parameters()]
    declared = {n for n, _ in method.trainable_parameters(model)}
    expected = MATRIX[name][1]["trainable_exactly"](names)
    assert declared == expected, (f"extra: {sorted(declared - expected)[:5]}, "
                                  f"missing: {sorted(expected - declared)[:5]}")
    requires_grad = {n for n, p in model.named_parameters() if p.requires_grad}
    assert requires_grad == expected


@pytest.mark.parametrize("backbone_name,name", _pairs(MATRIX))
def test_method_runs_in_the_engine_and_export_round_trips(backbone_name, name, matrix_store, easy_csv, reference_for,
                                                          tmp_path):
    from app.checkpoints import load_run_model
    from app.export import export_run, load_exported

    method_config, run_config = MATRIX[name]
    settings = method_settings(name, reference_for(name, backbone_name))
    record = train_now(matrix_store, backbone=backbone_name, method=method_of(name), dataset=str(easy_csv), method_config=settings,
                       steps=6, eval_every=3, batch_size=8, max_length=24, max_train_examples=None,
                       **{k: v for k, v in run_config.items() if k not in TEST_ONLY_KEYS})
    assert record["status"] == "finished", record.get("traceback") or record.get("error")
    assert record["summary"]["trainable_params"] > 0
    assert record["metrics"]["memory_breakdown"]["weights"] > 0

    loaded = load_run_model(matrix_store, record["id"])
    reference_model = loaded.method.inference_model(loaded.model)
    result = export_run(matrix_store, record["id"], tmp_path / "export")
    from app.backbones import get_backbone

    batch = _easy_batches(get_backbone(backbone_name), easy_csv, n_batches=1, batch_size=8)[0]
    with torch.no_grad():
        expected = loaded.method.predict(loaded.model, batch)
        if result["format"] == "transformers":
            from transformers import AutoModelForSequenceClassification

            exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
            got = exported(**model_inputs(batch)).logits
        else:
            exported = load_exported(tmp_path / "export")
            out = exported(**model_inputs(batch))
            got = out.logits if hasattr(out, "logits") else out
    assert reference_model is not None
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert METHODS[method_of(name)].exports_plain_model == (result["format"] == "transformers")
    # the ONNX graph, run by ONNX Runtime alone, on a batch it was not traced on
    import onnxruntime

    onnx = next(f for f in result["formats"] if f["format"] == "onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "export" / "onnx" / "model.onnx"))
    fed = {k: v.numpy() for k, v in model_inputs(batch).items() if k in onnx["inputs"]}
    torch.testing.assert_close(torch.from_numpy(session.run(["logits"], fed)[0]), expected.float(),
                               rtol=1e-4, atol=1e-4)
    card = (tmp_path / "export" / "README.md").read_text()
    assert card.startswith("---\n") and f"| method | {method_of(name)} |" in card and "## How to load it" in card


@pytest.mark.parametrize("backbone_name,name", [
    pytest.param(backbone, name, id=f"{backbone}-{name}") for backbone in BACKBONES for name in sorted(METHODS)
    if not _supported(backbone, name)])
def test_method_refuses_a_backbone_it_cannot_train_before_storing_anything(backbone_name, name, matrix_store,
                                                                           easy_csv):
    from app.errors import ConfigError
    from app.manager import RunManager

    manager = RunManager(matrix_store, workers=1)
    before = len(matrix_store.list_runs())
    try:
        with pytest.raises(ConfigError, match=backbone_name):
            manager.submit(dict(backbone=backbone_name, dataset=str(easy_csv), method=name,
                                method_config=method_settings(name, "unused-reference"), steps=2))
    finally:
        manager.shutdown()
    assert len(matrix_store.list_runs()) == before


def test_every_family_refuses_only_what_it_says_it_cannot_do():
    from app.backbones import get_backbone

    llama = supported_methods(get_backbone("tiny-random-llama"))
    assert "bitfit" not in llama  # no bias terms
    assert {"full_ft", "lora", "prompt_tuning", "p_tuning", "truncate", "theseus"} <= set(llama)
    assert "bitfit" in supported_methods(get_backbone("tiny-random-gpt2"))
    assert set(supported_methods(get_backbone("tiny-random"))) == set(METHODS)

