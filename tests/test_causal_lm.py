"""The causal-LM task: decoders that learn to continue text.

One matrix over the methods that train language models, on both tiny decoder families: each builds
from the untuned model (step 0 computes what the backbone computes), trains only what it declares,
and lowers the loss on an easy text; a run through the engine records the untuned model's
perplexity and answers, then its own, and a finished run writes text from the CLI. Around it: the
chunked loss against the plain one, every refusal before anything is stored, and SmolLM2 (real
weights) learning film dialogue.
"""

from __future__ import annotations

import json
import math
import tempfile

import pytest
import torch
import torch.nn.functional as F

from app.methods import METHODS, create_method
from app.methods.base import BuildContext, Reference, TrainState
from app.tasks import CAUSAL_LM
from conftest import train_now

# row -> (method settings, lr, loss ratio): the rows every causal-lm method trains through, and how far
# the loss must fall in 40 steps on the easy text. A row named method+setting runs a setting that
# changes the model through the same checks.
LM_MATRIX: dict[str, tuple[dict, float, float | None]] = {
    "full_ft": ({}, 1e-3, 0.8),
    # The tiny random decoders read their final-normed state through tied embeddings of std 0.02: with
    # those frozen (LoRA, LST), no logit can grow far, which puts a floor near 10.5 under the loss
    # (uniform: 10.8). These methods reach it within 40 steps and go no further here; on SmolLM2
    # (test_real_weights_learn_film_dialogue) they learn for real.
    "lora": ({"rank": 8, "target_modules": ["query", "value", "ffn_in"]}, 3e-2, 0.98),
    "lst": ({}, 3e-3, 0.98),
    "lst+side_output": ({"lm_output": "side"}, 3e-3, 0.98),
    "lst+fisher": ({"init": "fisher", "fisher_samples": 8}, 3e-3, 0.98),
    "bitfit": ({}, 3e-2, 0.98),
    "truncate": ({"layers": 2}, 1e-3, 0.8),
    # Four virtual tokens steering a frozen random model move its loss by under 1% (None: the loss
    # must move, no more); on SmolLM2 prompt tuning learns for real.
    "prompt_tuning": ({"num_virtual_tokens": 4}, 3e-2, None),
    "p_tuning": ({"num_virtual_tokens": 4, "encoder_hidden_size": 32}, 3e-2, None),
    "adapter": ({"bottleneck": 16}, 3e-3, 0.98),
    # The predecessor and the teacher are the untuned backbone here (`_build`); through the engine they
    # are finished runs (test_a_smaller_language_model_learns_from_a_finished_one).
    # Theseus trains the successor's layers only (the predecessor's embeddings and head stay frozen): the
    # same floor as LoRA's, reached from further up since half the layers start as copies.
    "theseus": ({"predecessor": "untuned", "layers": 2}, 1e-3, 0.95),
    "distill": ({"teacher": "untuned", "layers": 2}, 1e-3, 0.8),
}
DECODERS = ("tiny-random-llama", "tiny-random-gpt2")
# Rows whose step 0 is the backbone (LST's side output is added to the backbone's final state through
# an upsampling that starts at zero; LoRA's B starts at zero).
STARTS_AT_BACKBONE = {"full_ft", "lora", "lst", "lst+fisher", "bitfit", "adapter"}


def method_of(row: str) -> str:
    return row.split("+", 1)[0]


def _supported(backbone_name: str, row: str) -> bool:
    from app.backbones import get_backbone

    return METHODS[method_of(row)].backbone_refusal(get_backbone(backbone_name)) is None


def _pairs(rows) -> list:
    return [pytest.param(backbone, row, id=f"{backbone}-{row}") for backbone in DECODERS for row in rows
            if _supported(backbone, row)]


@pytest.fixture(scope="session")
def easy_text(tmp_path_factory):
    """A text a tiny model learns to continue within a few dozen steps: one sentence, repeated."""
    path = tmp_path_factory.mktemp("lm") / "easy.csv"
    path.write_text("text\n" + "".join(f"the cat sat on the mat and the dog ran after it number {i % 3}\n"
                                        for i in range(120)))
    return path


def _lm_batches(backbone, dataset_path, max_length=32, batch_size=8, count=4):
    from app.lm_data import load_lm_dataset, tokenize_lm_split

    tensors = tokenize_lm_split(backbone.tokenizer, load_lm_dataset(str(dataset_path)), "train", max_length).tensors
    return [{k: v[i * batch_size:(i + 1) * batch_size] for k, v in tensors.items()} for i in range(count)]


def _untuned_reference(backbone):
    """A predecessor or teacher: the backbone's own language model, as a finished run's would load."""
    def load(value: str) -> Reference:
        model = backbone.load_for_causal_lm().eval()
        return Reference(model=model, label_names=[], source=value, plain_model=model)
    return load


def _build(backbone_name: str, row: str, dataset_path):
    from app.backbones import get_backbone

    backbone = get_backbone(backbone_name)
    batches = _lm_batches(backbone, dataset_path)
    method = create_method(method_of(row), LM_MATRIX[row][0])
    method.check_task(CAUSAL_LM)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = method.build(BuildContext(backbone=backbone, label_names=[], device=torch.device("cpu"), seed=0,
                                          max_length=32, task=CAUSAL_LM, load_reference=_untuned_reference(backbone),
                                          train_batches=lambda: iter(batches)))
    return backbone, method, model.train()


def test_every_method_says_whether_it_trains_language_models():
    takes = {name for name, cls in METHODS.items() if CAUSAL_LM in cls.tasks}
    assert takes == {method_of(row) for row in LM_MATRIX}
    for name in set(METHODS) - takes:
        assert "causal-lm" in METHODS[name].task_refusal(CAUSAL_LM)


@pytest.mark.parametrize("backbone_name,row", _pairs(LM_MATRIX))
def test_step_zero_writes_what_the_backbone_writes(backbone_name, row, easy_text):
    backbone, method, model = _build(backbone_name, row, easy_text)
    plain = backbone.load_for_causal_lm().eval()
    model.eval()
    batch = _lm_batches(backbone, easy_text)[0]
    with torch.no_grad():
        hidden, head = method.lm_outputs(model, batch)
        logits = head(hidden)
        expected = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if row in STARTS_AT_BACKBONE:
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    else:  # the official side-only head starts from the pruned copy: somewhere else
        assert not torch.allclose(logits, expected, atol=1e-2)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("backbone_name,row", _pairs(LM_MATRIX))
def test_only_declared_parameters_train_and_the_loss_falls(backbone_name, row, easy_text):
    from app.training import adamw, select_trainable

    backbone, method, model = _build(backbone_name, row, easy_text)
    named = select_trainable(method, model)
    trained = {id(p) for _, p in named}
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in trained}
    _, lr, loss_ratio = LM_MATRIX[row]
    optimizer = adamw([p for _, p in named], lr=lr, weight_decay=0.0)
    batches = _lm_batches(backbone, easy_text)
    state = TrainState(step=0, total_steps=40, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    method.on_train_start(model, state)
    losses = []
    for step in range(40):
        state.step = step + 1
        method.on_step_start(model, state)  # Theseus draws which modules run its successor's layers
        out = method.training_step(model, batches[step % len(batches)], state)
        out.loss.backward()
        if step == 0 and not method.varying_graph:
            without_gradient = [n for n, p in named if p.grad is None]
            assert not without_gradient, without_gradient[:3]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
    for name, parameter in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(parameter, frozen_before[name]), f"{name} changed but is not trainable"
    if method_of(row) in ("lora", "lst", "bitfit", "adapter", "theseus"):
        assert frozen_before, "a frozen backbone has frozen parameters"
        assert not any("embed" in n or "wte" in n for n, _ in named), "the (tied) LM head stays frozen"
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    if loss_ratio is None:
        assert last < first - 1e-3, (first, last)
    else:
        assert last < loss_ratio * first, (first, last)


@pytest.mark.parametrize("head_kind", ["trained", "frozen", "with_bias", "hooked"])
def test_the_chunked_loss_is_the_plain_loss_in_value_and_gradient(head_kind, monkeypatch):
    """Chunk by chunk, the loss and its gradients (states, and the head's weight and bias when they
    train) equal the plain loss's on the whole logits: the fused path for a plain linear head, and
    the checkpointed one for any other head (here, one with a forward hook)."""
    from app import lm_loss

    monkeypatch.setattr(lm_loss, "LOGITS_CHUNK_BYTES", 4 * 100 * 7)  # 7 positions per chunk: several chunks
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 100, bias=head_kind == "with_bias")
    head.requires_grad_(head_kind != "frozen")
    if head_kind == "hooked":
        head.register_forward_hook(lambda module, inputs, output: None)
    hidden = torch.randn(3, 20, 16, requires_grad=True)
    labels = torch.randint(0, 100, (3, 20))
    labels[0, :5] = lm_loss.IGNORE_INDEX  # a prompt
    labels[2, 15:] = lm_loss.IGNORE_INDEX  # padding
    assert lm_loss.chunk_positions(100) == 7
    wrt = [hidden] + [p for p in head.parameters() if p.requires_grad]
    chunked = lm_loss.causal_lm_loss(hidden, head, labels)
    chunked_grads = torch.autograd.grad(2.5 * chunked, wrt)  # an outer factor, as a weighted loss has
    plain = F.cross_entropy(head(hidden[:, :-1]).reshape(-1, 100), labels[:, 1:].reshape(-1), ignore_index=-100)
    plain_grads = torch.autograd.grad(2.5 * plain, wrt)
    torch.testing.assert_close(chunked, plain)
    for got, want in zip(chunked_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want)
    total, tokens, correct, whole = lm_loss.causal_lm_sums(hidden.detach(), head, labels)
    assert tokens == int((labels[:, 1:] != -100).sum())
    assert total / tokens == pytest.approx(float(plain), rel=1e-5)
    assert 0 <= correct <= tokens and 0 <= whole <= labels.shape[0]


def test_the_chunked_distillation_loss_is_the_token_level_kl_in_value_and_gradient(monkeypatch):
    """Distilling a language model: the mean next-token CE and T²·KL(teacher ‖ student) over labelled
    positions, chunk by chunk, equal the plain computation on whole logits, and only the student learns."""
    from app import lm_loss

    monkeypatch.setattr(lm_loss, "LOGITS_CHUNK_BYTES", 4 * 100 * 7)
    torch.manual_seed(0)
    student_head, teacher_head = torch.nn.Linear(16, 100, bias=False), torch.nn.Linear(24, 100, bias=False)
    student = torch.randn(3, 20, 16, requires_grad=True)
    teacher = torch.randn(3, 20, 24)
    labels = torch.randint(0, 100, (3, 20))
    labels[0, :5] = lm_loss.IGNORE_INDEX
    labels[2, 15:] = lm_loss.IGNORE_INDEX
    t = 2.0
    ce, kl = lm_loss.causal_lm_distillation_loss(student, student_head, teacher, teacher_head, labels, t)
    (grad,) = torch.autograd.grad(ce + kl, student)

    targets = labels[:, 1:].reshape(-1)
    kept = targets != -100
    s_logits = student_head(student[:, :-1]).reshape(-1, 100)[kept]
    t_logits = teacher_head(teacher[:, :-1]).reshape(-1, 100)[kept].detach()
    plain_ce = F.cross_entropy(s_logits, targets[kept])
    plain_kl = F.kl_div(F.log_softmax(s_logits / t, -1), F.softmax(t_logits / t, -1), reduction="batchmean") * t * t
    (plain_grad,) = torch.autograd.grad(plain_ce + plain_kl, student)
    torch.testing.assert_close(ce, plain_ce)
    torch.testing.assert_close(kl, plain_kl)
    torch.testing.assert_close(grad, plain_grad)
    assert teacher_head.weight.grad is None
    _, none = lm_loss.causal_lm_distillation_loss(student, student_head, student.detach(), student_head, labels, t)
    assert float(none) == pytest.approx(0.0, abs=1e-6)  # a student that is its teacher has nothing to learn


@pytest.mark.parametrize("backbone_name,method", [("tiny-random-llama", "lst"), ("tiny-random-gpt2", "lora"),
                                                   ("tiny-random-llama", "full_ft")])
def test_an_engine_run_records_perplexity_and_answers_from_the_untuned_model_on(backbone_name, method, store,
                                                                               easy_text, capsys):
    from app.cli import main

    record = train_now(store, backbone=backbone_name, method=method, task="causal-lm", dataset=str(easy_text),
                       steps=12, eval_every=6, batch_size=8, lr=LM_MATRIX[method][1], generations=2,
                       max_new_tokens=6, max_train_examples=None)
    assert record["status"] == "finished", record.get("error")
    validation = store.evals(record["id"], "validation")
    assert [e["step"] for e in validation] == [0, 6, 12]
    assert validation[-1]["perplexity"] < validation[0]["perplexity"]
    assert all(e["perplexity"] == pytest.approx(torch.tensor(e["loss"]).exp().item(), rel=1e-4) for e in validation)
    metrics = record["metrics"]
    assert metrics["test_perplexity"] > 1 and 0 <= metrics["test_token_accuracy"] <= 1
    assert metrics["val_perplexity"] == pytest.approx(validation[-1]["perplexity"])
    answers = store.telemetry(record["id"], "eval:validation", after=-1)
    assert [row["step"] for row in answers] == [0, 6, 12]
    assert all(len(row["generations"]) == 2 for row in answers)
    last = answers[-1]["generations"][0]

    assert main(["generate", record["id"], "--prompt", last["prompt"], "--max-new-tokens", "6", "--json"]) == 0
    written = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert written["text"] == last["answer"]  # greedy: the CLI writes what the run's last evaluation wrote
    assert written["tokens"] <= 6 and written["seconds"] > 0

    assert main(["predict", record["id"], "--text", "hello"]) != 0
    assert "generate" in capsys.readouterr().err


def test_a_classifier_run_does_not_write_text(store, capsys):
    from app.cli import main

    record = train_now(store, steps=2, eval_every=2)
    assert main(["generate", record["id"], "--prompt", "hello"]) != 0
    assert "predict" in capsys.readouterr().err


@pytest.mark.parametrize("overrides,reason", [
    (dict(backbone="tiny-random", method="full_ft"), "needs a decoder"),
    (dict(method="linear_probe"), "not causal-lm"),
    (dict(method="lst", method_config={"final_merge": True}), "final_merge"),
    (dict(method="full_ft", decoder_pooling="mean"), "decoder_pooling"),
    (dict(method="full_ft", max_length=16, dataset="LONG_PROMPTS"), "max_length"),
])
def test_what_cannot_train_is_refused_before_anything_is_stored(overrides, reason, store, easy_text, tmp_path):
    from app.errors import LabError
    from app.preparation import prepare_run

    if overrides.get("dataset") == "LONG_PROMPTS":
        long_prompts = tmp_path / "long.csv"
        long_prompts.write_text("prompt,response\n" + "".join(f"{'a very long question ' * 10} {i},yes\n"
                                                               for i in range(40)))
        overrides = dict(overrides, dataset=str(long_prompts))
    config = dict(backbone="tiny-random-llama", task="causal-lm", dataset=str(easy_text), steps=2, batch_size=4,
                  max_length=32, max_train_examples=None, max_eval_examples=16, **{"method": "full_ft"})
    config.update(overrides)
    with pytest.raises(LabError, match=reason):
        prepare_run(config, store)
    assert store.list_runs() == []


# The methods each real-weights test of this file trains on SmolLM2 (tests/test_real_methods.py counts
# them as the decoder family's real rows).
REAL_FILM_DIALOGUE = {"lst": (None, {}), "lora": (None, {}), "full_ft": (1e-4, {}), "adapter": (None, {}),
                      "truncate": (1e-4, {"layers": 15}), "prompt_tuning": (None, {})}
REAL_COMPRESSION = {"theseus": {"layers": 15, "patience": 0}, "distill": {"layers": 15}}  # of a finished run
REAL_LANGUAGE_MODEL_METHODS = set(REAL_FILM_DIALOGUE) | set(REAL_COMPRESSION)


@pytest.mark.parametrize("method,lr,settings", [(m, lr, s) for m, (lr, s) in REAL_FILM_DIALOGUE.items()])
def test_real_weights_learn_film_dialogue(method, lr, settings, store):
    """Real weights and real data: SmolLM2-135M on the shipped film dialogue lowers its validation
    perplexity within 10 steps, and its answers change from the untuned model's."""
    record = train_now(store, backbone="smollm2-135m", method=method, task="causal-lm", dataset="movie-dialog",
                       steps=10, eval_every=10, batch_size=8, max_length=64, max_train_examples=400,
                       max_eval_examples=40, generations=2, max_new_tokens=8, lr=lr, method_config=settings)
    assert record["status"] == "finished", record.get("error")
    validation = store.evals(record["id"], "validation")
    assert validation[-1]["perplexity"] < 0.75 * validation[0]["perplexity"], [e["perplexity"] for e in validation]
    answers = store.telemetry(record["id"], "eval:validation", after=-1)
    assert [g["answer"] for g in answers[0]["generations"]] != [g["answer"] for g in answers[-1]["generations"]]


def test_real_weights_compress_a_film_dialogue_model():
    """Real weights and real data for the methods that need a finished language model: SmolLM2-135M
    fine-tuned on film dialogue is the predecessor of a 15-layer Theseus successor and the teacher of a
    15-layer student; each lowers its validation perplexity by a quarter within 10 steps. Then it is
    quantized to int8 and its feed-forward layers pruned."""
    from app.compression import compress_run
    from app.store import RunStore

    data = dict(backbone="smollm2-135m", task="causal-lm", dataset="movie-dialog", batch_size=8, max_length=64,
                max_train_examples=400, max_eval_examples=24, generations=0)
    with tempfile.TemporaryDirectory() as folder:
        store = RunStore(folder)
        source = train_now(store, method="full_ft", steps=10, eval_every=10, lr=1e-4, **data)
        assert source["status"] == "finished", source.get("error")
        for method, settings in REAL_COMPRESSION.items():
            settings = dict(settings, **{field: source["id"] for field in METHODS[method].reference_fields})
            record = train_now(store, method=method, method_config=settings, steps=10, eval_every=10, **data)
            assert record["status"] == "finished", (method, record.get("error"))
            validation = store.evals(record["id"], "validation")
            assert validation[-1]["perplexity"] < 0.75 * validation[0]["perplexity"], (
                method, [e["perplexity"] for e in validation])
        timing = {"latency_repeats": 1, "latency_warmup": 0, "latency_batch_size": 4}
        # One sweep measures Wanda (|w| x input norm, per row) at 30%, a quarter of every layer's
        # feed-forward neurons ranked by what they write, and int8 with one activation scale per batch
        # and per token; a second the same pruning ranked by weight magnitude.
        points = {p["key"]: p for p in compress_run(store, source["id"], {
            "sparsities": [0.3], "unstructured_score": "wanda", "structured_ffn": 0.25,
            "quantize": ["int8", "int8_per_token"], **timing})}
        _, magnitude, by_weight = compress_run(store, source["id"], {
            "sparsities": [0.3], "structured_ffn": 0.25, "structured_importance": "weight", **timing})
        baseline, wanda, by_activation = points["baseline"], points["sparsity=0.3/wanda"], points["ffn=0.25"]
        per_batch, per_token = points["int8"], points["int8_per_token"]
        # Quantized after training: one activation scale per token keeps a decoder's perplexity, one per
        # batch does not (a few tokens' huge feed-forward activations set the batch's scale).
        assert per_token["test_perplexity"] < 1.15 * baseline["test_perplexity"], (baseline, per_token)
        assert per_token["agreement"] > 0.8 and per_token["test_perplexity"] < per_batch["test_perplexity"]
        # A quarter of every layer's feed-forward neurons removed: ranked by what they write the model keeps
        # its perplexity near the fine-tuned one's; ranked by weight magnitude it loses the few neurons of
        # the first and last layers whose huge activations go through small weights, and breaks.
        assert by_weight["key"] == "ffn=0.25/weight"
        assert by_activation["test_perplexity"] < 2 * baseline["test_perplexity"], by_activation
        assert by_weight["test_perplexity"] > 10 * by_activation["test_perplexity"], by_weight
        assert wanda["test_perplexity"] < 1.3 * baseline["test_perplexity"], wanda
        assert magnitude["test_perplexity"] > 1.5 * wanda["test_perplexity"], magnitude


def test_the_launch_form_trains_a_language_model_and_the_run_page_shows_its_answers(runs_dir, monkeypatch):
    """Through the app: pick a decoder, the causal-lm task and the film dialogue, launch; the Run page
    then shows perplexity from step 0, the answers at every evaluation, and writes text in Try it."""
    from streamlit.testing.v1 import AppTest

    from app.manager import get_manager
    from app.store import RunStore
    from conftest import ROOT

    monkeypatch.setenv("LAB_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=240)
    at.switch_page("../pages/launch.py")
    at.run()
    assert [r.options for r in at.radio if r.key == "launch.task"] == [["classification"]]  # an encoder
    at.selectbox(key="launch.backbone").set_value("tiny-random-llama").run()
    at.radio(key="launch.task").set_value("causal-lm").run()
    assert any(option.startswith("movie-dialog") for option in at.selectbox(key="launch.dataset").options)
    at.selectbox(key="launch.dataset").set_value("movie-dialog").run()
    at.selectbox(key="launch.method").set_value("linear_probe").run()
    assert any("does not train for causal-lm" in w.value for w in at.warning), [w.value for w in at.warning]
    at.selectbox(key="launch.method").set_value("lst").run()
    for key, value in (("run.steps", 4), ("run.batch_size", 4), ("run.max_length", 32), ("run.eval_every", 2),
                       ("run.max_train_examples", 64), ("run.generations", 2), ("run.max_new_tokens", 4)):
        at.number_input(key=key).set_value(value).run()
    at.checkbox(key="launch.open").uncheck().run()
    assert not at.exception, [e.value for e in at.exception]
    at.button(key="launch.submit").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    [run] = RunStore(runs_dir).list_runs()
    final = get_manager(runs_dir).wait(run["id"], timeout=240)
    assert final["status"] == "finished", final.get("error")
    assert final["config"]["task"] == "causal-lm" and final["config"]["generations"] == 2

    at.switch_page("../pages/run.py")
    at.query_params["run"] = run["id"]
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(m.label == "validation perplexity" for m in at.metric)
    assert "Generations" in [s.value for s in at.subheader]
    timeline = [frame.value for frame in at.dataframe if list(frame.value.columns) == ["step", "answer"]]
    assert len(timeline) == 2, [frame.value for frame in at.dataframe] and list(timeline[0]["step"]) == [0, 2, 4]
    at.text_area(key="run.try.prompt").input("hello there")
    at.number_input(key="run.try.max_new_tokens").set_value(3)
    at.button[[b.label for b in at.button].index("Generate")].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("tokens in" in c.value for c in at.caption), [c.value for c in at.caption]


def test_a_language_model_is_compressed_and_scored_on_its_labelled_tokens(store, easy_text, capsys):
    """A sweep over a causal-lm run scores every point by test perplexity, next-token accuracy and
    agreement with the uncompressed model; recovery trains on the next-token loss."""
    from app.cli import main
    from app.compression import compress_run

    record = train_now(store, backbone="tiny-random-llama", method="full_ft", task="causal-lm", dataset=str(easy_text),
                       steps=6, eval_every=6, batch_size=8, lr=1e-3, generations=0, max_train_examples=None)
    assert record["status"] == "finished", record.get("error")
    points = compress_run(store, record["id"], {"sparsities": [0.5], "unstructured_score": "wanda",
                                                 "quantize": ["int8", "int8_per_token", "1bit"],
                                                 "structured_ffn": 0.5, "recovery_steps": 2, "latency_repeats": 1,
                                                 "latency_warmup": 0})
    by_kind = {p["kind"]: p for p in points}
    assert list(by_kind) == ["baseline", "unstructured", "ffn", "int8", "int8_per_token", "kbit"]
    baseline = by_kind["baseline"]
    assert baseline["test_perplexity"] == pytest.approx(record["metrics"]["test_perplexity"], rel=1e-4)
    assert baseline["test_token_accuracy"] == pytest.approx(record["metrics"]["test_token_accuracy"])
    assert baseline["agreement"] == 1.0 and baseline["logit_drift"] == 0.0 and baseline["test_tokens"] > 0
    for point in points:
        assert "test_accuracy" not in point and point["test_perplexity"] > 1 and "error" not in point
        assert 0 <= point["test_token_accuracy"] <= 1 and point["latency_ms"] > 0
    for kind in ("int8", "int8_per_token"):  # 8 bits move the logits less than 1
        assert by_kind[kind]["logit_drift"] < by_kind["kbit"]["logit_drift"]
        assert by_kind[kind]["agreement"] > by_kind["kbit"]["agreement"]
    # both store every Linear as int8 beside its scales (a tied LM head as an int8 copy beside the embeddings)
    assert by_kind["int8_per_token"]["params"] == by_kind["int8"]["params"] > baseline["params"]
    assert by_kind["unstructured"]["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)  # kept through recovery
    assert by_kind["unstructured"]["key"] == "sparsity=0.5/wanda+recovery=2"
    assert by_kind["ffn"]["params"] < baseline["params"]
    for kind in ("unstructured", "ffn"):  # recovery: the next-token loss, from the pruned model's perplexity
        assert by_kind[kind]["perplexity_before_recovery"] > 1 and by_kind[kind]["recovery_steps"] == 2
    # neurons ranked by what they write on the first training batches, prompts' padding left out
    assert by_kind["ffn"]["importance"] == "activation" and by_kind["ffn"]["calibration_tokens"] > 0
    assert [p["key"] for p in store.records(record["id"], "compress")] == [p["key"] for p in points]

    assert main(["compress", record["id"], "--quantize", "bf16,int8_per_token", "--latency-repeats", "1",
                 "--latency-warmup", "0", "--quiet"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "perplexity" in table[1] and "bf16" in table[3]
    # the longest kind still leaves its setting a column of its own
    assert table[4].split()[:2] == ["int8_per_token", "int8_per_token"]
    column = table[1].index("setting")
    assert all(row[column - 1] == " " and row[column] != " " for row in table[2:]), table


def test_gpt2s_transposed_layers_are_pruned_and_quantized_like_linear_ones(store, easy_text):
    """GPT-2 keeps its layers as Conv1D (weight transposed): the sweep turns them into the same Linear
    function first, so masks, int8 and the removal of heads and neurons reach the layers, not only the
    LM head."""
    from app.compression import compress_run
    from app.errors import LabError

    record = train_now(store, backbone="tiny-random-gpt2", method="full_ft", task="causal-lm", dataset=str(easy_text),
                       steps=4, eval_every=4, batch_size=8, lr=1e-3, generations=0, max_train_examples=None)
    assert record["status"] == "finished", record.get("error")
    with pytest.raises(LabError, match="at most 12"):  # 4 layers of 4 heads, each keeping one
        compress_run(store, record["id"], {"structured_heads_total": 13})
    baseline, masked, heads, total, ffn, quantized = compress_run(store, record["id"], {
        "sparsities": [0.5], "unstructured_score": "wanda", "structured_heads": 1, "structured_heads_total": 6,
        "structured_ffn": 0.5, "quantize": ["int8_per_token"], "latency_repeats": 1, "latency_warmup": 0})
    assert baseline["test_perplexity"] == pytest.approx(record["metrics"]["test_perplexity"], rel=1e-4)
    assert masked["achieved_sparsity"] == pytest.approx(0.5, abs=0.01) and "Linear" in masked["targets"]
    assert masked["nonzero_params"] < baseline["nonzero_params"]
    assert heads["heads_left"] == [3, 3, 3, 3] and sum(total["heads_left"]) == 10 and min(total["heads_left"]) >= 1
    # each head is 16 of the 64 columns: its q, k and v rows and output columns go
    assert baseline["params"] - heads["params"] == 4 * (3 * 16 * 64 + 3 * 16 + 16 * 64)
    assert baseline["params"] - ffn["params"] == 4 * 64 * (64 + 1 + 64)  # half of 128 neurons per layer
    for point in (heads, total, ffn):
        assert math.isfinite(point["test_perplexity"]) and point["agreement"] > 0
    assert 0 < quantized["logit_drift"] < 0.2


def test_gpt2_head_removal_keeps_the_kept_heads_exact():
    """With heads gone from GPT-2's fused q|k|v projection, the attention output equals the full
    layer's with those heads' output columns zeroed."""
    from app.backbones import get_backbone
    from app.compression.pruning import plain_linears, prune_heads

    def attention_of(model):
        plain_linears(model)
        return model.transformer.h[0].attn

    pruned = get_backbone("tiny-random-gpt2").load_for_classification(["a", "b"]).eval()
    full = get_backbone("tiny-random-gpt2").load_for_classification(["a", "b"]).eval()
    attention, full_attention = attention_of(pruned), attention_of(full)
    torch.manual_seed(0)
    hidden = torch.randn(2, 6, 64)
    with torch.no_grad():
        removed = prune_heads(pruned, per_layer=2)[0]
        size = full_attention.head_dim
        for h in removed:
            full_attention.c_proj.weight[:, h * size:(h + 1) * size] = 0
        got, expected = attention(hidden)[0], full_attention(hidden)[0]
    assert len(removed) == 2 and attention.num_heads == 2
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_an_lst_language_model_is_compressed_through_its_own_side_stream(store, easy_text):
    """LST's inference model is its side network on the frozen backbone: the sweep scores it the way
    the run does, and structured pruning, which needs a plain transformers model, is refused first."""
    from app.compression import compress_run
    from app.errors import LabError

    record = train_now(store, backbone="tiny-random-llama", method="lst", task="causal-lm", dataset=str(easy_text),
                       steps=4, eval_every=4, batch_size=8, generations=0, max_train_examples=None)
    assert record["status"] == "finished", record.get("error")
    with pytest.raises(LabError, match="plain transformers model"):
        compress_run(store, record["id"], {"structured_ffn": 0.5})
    assert store.records(record["id"], "compress") == []
    baseline, int8 = compress_run(store, record["id"], {"quantize": ["int8"], "latency_repeats": 1,
                                                        "latency_warmup": 0})
    assert baseline["test_perplexity"] == pytest.approx(record["metrics"]["test_perplexity"], rel=1e-4)
    assert 0 < int8["logit_drift"] < 0.2 and int8["test_perplexity"] > 1


@pytest.mark.parametrize("page", ["home", "run", "ladder", "memory", "compare", "compress", "explain"])
def test_every_page_opens_on_a_language_model_run(page, lm_run_dir, monkeypatch):
    """No page breaks on a causal-lm run; those that read classifiers say so instead."""
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT

    from app.store import RunStore

    runs_dir, run_id = lm_run_dir
    lm_record = RunStore(runs_dir).get_run(run_id)
    monkeypatch.setenv("LAB_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=240)
    at.query_params["run"] = run_id
    if page != "home":
        at.switch_page(f"../pages/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if page == "compress":  # a language model's sweep is drawn by perplexity
        assert not at.error, [e.value for e in at.error]
        assert any("test perplexity" in c.value for c in at.caption), [c.value for c in at.caption]
        assert any(m.value == "**Perplexity against size**" for m in at.markdown), [m.value for m in at.markdown]
        assert "test perplexity" in at.dataframe[0].value.columns
    if page == "compare":  # a language model is judged by perplexity, its curve by validation perplexity
        assert list(at.dataframe[0].value["test_perplexity"]) == [pytest.approx(lm_record["metrics"]["test_perplexity"])]
        specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
        titles = [(s["layout"].get("title") or {}).get("text", "") for s in specs]
        pareto = next((s for s, t in zip(specs, titles) if t.startswith("Perplexity")), titles)
        assert isinstance(pareto, dict), pareto
        assert pareto["data"][0]["y"] == [pytest.approx(lm_record["metrics"]["test_perplexity"])]
        assert pareto["layout"]["yaxis"]["type"] == "log"
        curve = specs[-1]["data"][0]
        validation = [e["perplexity"] for e in RunStore(runs_dir).evals(run_id, "validation")]
        assert curve["y"] == pytest.approx(validation)
    if page == "explain":  # the answer to the default prompt, its tokens' attributions and their heatmap
        assert not at.error, [e.value for e in at.error]
        assert any(m.value.startswith("**Answer:**") for m in at.markdown), [m.value for m in at.markdown]
        assert any("attribution" in (c.proto.spec or "") for c in at.get("plotly_chart"))


def test_compare_judges_classifiers_by_accuracy_and_language_models_by_perplexity(lm_run_dir, tmp_path, monkeypatch):
    import shutil

    import pandas as pd
    from streamlit.testing.v1 import AppTest

    from app.store import RunStore
    from conftest import ROOT

    runs_dir, lm_id = lm_run_dir
    mixed = tmp_path / "runs"
    shutil.copytree(runs_dir, mixed)
    classifier = train_now(RunStore(mixed), steps=2, eval_every=2)
    monkeypatch.setenv("LAB_RUNS_DIR", str(mixed))
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=240)
    at.switch_page("../pages/compare.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]

    def pareto():
        specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
        return next(s for s in specs if "against cost" in (s["layout"].get("title") or {}).get("text", ""))

    table = at.dataframe[0].value.set_index("run")
    assert pd.isna(table.loc[lm_id, "test_accuracy"])  # next-token accuracy is not put among classifiers
    assert pd.isna(table.loc[classifier["id"], "test_perplexity"]) and table.loc[lm_id, "test_perplexity"] > 1
    assert pareto()["layout"]["title"]["text"].startswith("Accuracy")
    assert [p["text"][0].endswith(classifier["id"][-6:]) for p in pareto()["data"] if p["name"] != "Pareto front"] == [True]
    at.segmented_control(key="compare.score").set_value("test perplexity").run()
    assert pareto()["layout"]["title"]["text"].startswith("Perplexity")
    assert [p["text"][0].endswith(lm_id[-6:]) for p in pareto()["data"] if p["name"] != "Pareto front"] == [True]


@pytest.fixture(scope="module")
def lm_run_dir(tmp_path_factory, easy_text):
    from app.compression import compress_run
    from app.store import RunStore

    runs_dir = tmp_path_factory.mktemp("lm-runs")
    store = RunStore(runs_dir)
    record = train_now(store, backbone="tiny-random-llama", method="lst", task="causal-lm",
                       dataset=str(easy_text), steps=4, eval_every=2, batch_size=8, generations=1, max_new_tokens=3,
                       max_train_examples=None)
    assert record["status"] == "finished", record.get("error")
    compress_run(store, record["id"], {"quantize": ["int8"], "latency_repeats": 1, "latency_warmup": 0})
    return runs_dir, record["id"]


@pytest.mark.parametrize("backbone_name,method,expected_format", [
    ("tiny-random-llama", "full_ft", "transformers"), ("tiny-random-gpt2", "lora", "transformers"),
    ("tiny-random-llama", "lst", "state_dict"), ("tiny-random-gpt2", "bitfit", "transformers"),
    ("tiny-random-llama", "adapter", "state_dict"), ("tiny-random-llama", "truncate", "transformers"),
    ("tiny-random-gpt2", "p_tuning", "state_dict")])
def test_an_export_writes_what_the_run_writes_outside_the_lab(backbone_name, method, expected_format, store,
                                                             easy_text, tmp_path):
    """full fine-tuning and LoRA (merged) export a plain AutoModelForCausalLM folder that transformers'
    own text-generation pipeline loads and that writes the run's tokens; LST exports its side network."""
    from transformers import pipeline

    from app.export import export_run
    from app.predict import load_writer

    record = train_now(store, backbone=backbone_name, method=method, task="causal-lm", dataset=str(easy_text),
                       steps=6, eval_every=6, batch_size=8, lr=LM_MATRIX[method][1], generations=0,
                       max_train_examples=None)
    assert record["status"] == "finished", record.get("error")
    result = export_run(store, record["id"], tmp_path / "export")
    assert result["format"] == expected_format and "writes the run's greedy" in result["checked"]
    card = (tmp_path / "export" / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "language model" in card
    if expected_format == "transformers":
        prompt = "the cat sat on"
        lab = load_writer(store, record["id"]).generate(prompt, max_new_tokens=6).text
        writer = pipeline("text-generation", model=str(tmp_path / "export"), device="cpu")
        plain = writer(prompt, max_new_tokens=6, do_sample=False, return_full_text=False)[0]["generated_text"]
        assert plain == lab or lab.startswith(plain)  # the pipeline stops only at its own end-of-text
    if method == "lora":
        assert (tmp_path / "export" / "peft_adapter" / "adapter_config.json").exists()
        assert "AutoModelForCausalLM" in card


def test_a_smaller_language_model_learns_from_a_finished_one(store, runs_dir, easy_text, tmp_path, monkeypatch):
    """Theseus (predecessor) and distillation (teacher) take a finished causal-lm run: the smaller model
    trains on the language-model loss, records perplexity from step 0, and exports as a plain folder
    that transformers' pipeline loads and that writes the run's tokens. The Theseus page judges the
    successor by perplexity against its predecessor's. A classifier run is refused."""
    from streamlit.testing.v1 import AppTest

    from app.errors import LabError
    from app.export import export_run
    from app.preparation import prepare_run

    from app.estimate import estimate_memory

    common = dict(backbone="tiny-random-llama", task="causal-lm", dataset=str(easy_text), batch_size=8,
                  max_length=32, padding="max", generations=1, max_new_tokens=4, max_train_examples=None)
    teacher = train_now(store, method="full_ft", steps=12, eval_every=12, lr=1e-3, **common)
    assert teacher["status"] == "finished", teacher.get("error")
    for method, settings in (("theseus", {"predecessor": teacher["id"], "layers": 2, "patience": 0}),
                             ("distill", {"teacher": teacher["id"], "layers": 2, "hidden_weight": 1.0})):
        record = train_now(store, method=method, method_config=settings, steps=12, eval_every=6, lr=1e-3, **common)
        assert record["status"] == "finished", (method, record.get("error"))
        validation = store.evals(record["id"], "validation")
        assert [e["step"] for e in validation] == [0, 6, 12]
        assert validation[-1]["perplexity"] < validation[0]["perplexity"], method
        result = export_run(store, record["id"], tmp_path / method)
        assert result["format"] == "transformers" and "writes the run's greedy" in result["checked"]
        config = json.loads((tmp_path / method / "config.json").read_text())
        assert config["num_hidden_layers"] == 2 and config["architectures"] == ["LlamaForCausalLM"]
        # The estimate before launch (the reference of the backbone's shape) covers the measured steps.
        measured = sum(record["metrics"]["memory_breakdown"].values())
        estimate = estimate_memory("tiny-random-llama", method, 8, 32, settings, task="causal-lm", padding="max")
        assert measured <= estimate.predicted_peak_bytes <= 1.1 * measured, (method, estimate.breakdown)
        if method == "theseus":
            successor = record
    summary = store.get_run(record["id"])["summary"]
    assert summary["method_summary"]["teacher"]["source"] == teacher["id"]
    predecessor_perplexity = store.get_run(successor["id"])["summary"]["method_summary"]["predecessor"]["val_perplexity"]
    assert predecessor_perplexity == pytest.approx(teacher["metrics"]["val_perplexity"], rel=1e-4)

    from conftest import ROOT

    monkeypatch.setenv("LAB_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(ROOT / "pages" / "theseus.py"), default_timeout=120)
    at.query_params["run"] = successor["id"]
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = {m.label: m.value for m in at.metric}
    assert shown["predecessor (validation)"] == f"{predecessor_perplexity:.2f}"
    assert shown["successor (validation)"] == f"{successor['metrics']['val_perplexity']:.2f}"
    assert any("perplexity" in (c.proto.spec or "") for c in at.get("plotly_chart"))

    classifier = train_now(store, backbone="tiny-random-llama", steps=2, eval_every=2)
    with pytest.raises(LabError, match="trained a classifier"):
        prepare_run(dict(common, method="theseus", steps=2, method_config={"predecessor": classifier["id"]}), store)
    with pytest.raises(LabError, match="trained a language model"):
        prepare_run(dict(backbone="tiny-random-llama", method="distill", steps=2,
                         method_config={"teacher": teacher["id"]}), store)


CHAT_ROWS = [{"messages": [{"role": "user", "content": f"how many cats, {i}?"},
                           {"role": "assistant", "content": f"there are {i % 3} cats"}]} for i in range(48)]
ALPACA_ROWS = [{"instruction": "Name the number.", "input": f"{i % 3}", "output": f"number {i % 3}"} for i in range(48)]
PAIR_ROWS = "question,answer\n" + "".join(f"how are you {i}?,fine thanks {i % 3}\n" for i in range(48))


def _lines(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


@pytest.mark.parametrize("name,content,format_choice,columns,stored", [
    ("chat.jsonl", _lines(CHAT_ROWS), "auto", {}, {"lm_format": "auto"}),
    ("alpaca.jsonl", _lines(ALPACA_ROWS), "alpaca", {}, {"lm_format": "alpaca"}),
    ("pairs.csv", PAIR_ROWS.encode(), "prompt_response", {"Prompt column": "question", "Response column": "answer"},
     {"lm_format": "prompt_response", "prompt_column": "question", "response_column": "answer"}),
])
def test_an_uploaded_file_of_each_format_trains_a_language_model(name, content, format_choice, columns, stored,
                                                                 runs_dir, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from app.manager import get_manager
    from conftest import ROOT

    monkeypatch.setenv("LAB_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=240)
    at.switch_page("../pages/launch.py")
    at.run()
    at.selectbox(key="launch.backbone").set_value("tiny-random-llama").run()
    at.radio(key="launch.task").set_value("causal-lm").run()
    at.selectbox(key="launch.dataset").set_value("Upload a file…").run()
    at.file_uploader[0].set_value((name, content, "application/octet-stream")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    by_label = {s.label: s for s in at.selectbox}
    by_label["Format"].set_value(format_choice).run()
    by_label = {s.label: s for s in at.selectbox}
    for label, column in columns.items():
        by_label[label].set_value(column)
    at.run()
    at.selectbox(key="launch.method").set_value("full_ft").run()
    for key, value in (("run.steps", 2), ("run.batch_size", 4), ("run.eval_every", 2), ("run.generations", 1),
                       ("run.max_new_tokens", 3)):
        at.number_input(key=key).set_value(value).run()
    at.checkbox(key="launch.open").uncheck().run()
    at.button(key="launch.submit").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    manager = get_manager(runs_dir)
    [run] = manager.store.list_runs()
    assert {k: run["config"][k] for k in stored} == stored
    final = manager.wait(run["id"], timeout=240)
    assert final["status"] == "finished", final.get("error")
    answers = manager.store.telemetry(run["id"], "eval:validation", after=-1)
    assert answers and answers[0]["generations"]


@pytest.mark.parametrize("rows,reason", [
    ([{"messages": [{"role": "narrator", "content": "once"}, {"role": "assistant", "content": "upon"}]}] * 20,
     "narrator"),
    ([{"messages": [{"role": "user", "content": "hello"}]}] * 20, "assistant"),
])
def test_a_bad_chat_file_is_refused_with_its_reason_before_anything_is_stored(rows, reason, store, tmp_path, capsys):
    from app.cli import main

    path = tmp_path / "chat.jsonl"
    path.write_bytes(_lines(rows))
    code = main(["train", "--backbone", "tiny-random-llama", "--task", "causal-lm", "--dataset", str(path),
                 "--method", "full_ft", "--steps", "2", "--batch-size", "4", "--runs-dir", str(store.runs_dir)])
    assert code == 2
    assert reason in capsys.readouterr().err
    assert store.list_runs() == []


def test_train_json_reports_the_task_perplexity_and_token_accuracy_and_the_list_shows_perplexity(store, easy_text, capsys):
    from app.cli import main

    code = main(["train", "--backbone", "tiny-random-llama", "--task", "causal-lm", "--dataset", str(easy_text),
                 "--method", "lora", "--steps", "2", "--batch-size", "4", "--max-length", "16", "--generations", "0",
                 "--max-eval-examples", "8", "--runs-dir", str(store.runs_dir), "--json", "--quiet"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = out["metrics"]
    assert out["task"] == "causal-lm"
    assert metrics["val_perplexity"] == pytest.approx(math.exp(metrics["val_loss"]), rel=1e-6)
    assert metrics["test_perplexity"] == pytest.approx(math.exp(metrics["test_loss"]), rel=1e-6)
    assert 0 <= metrics["val_token_accuracy"] <= 1 and 0 <= metrics["test_token_accuracy"] <= 1
    assert 0 <= metrics["val_exact_match"] <= 1  # every labelled token of an example right under greedy decoding

    assert main(["runs", "list", "--runs-dir", str(store.runs_dir)]) == 0
    assert f"test_ppl={metrics['test_perplexity']:.2f}" in capsys.readouterr().out


@pytest.mark.parametrize("backbone_name,method", [(b, m) for b in DECODERS for m in ("full_ft", "lora", "lst")])
def test_the_estimate_before_launch_matches_a_language_model_step(backbone_name, method, store, easy_text):
    """The memory estimate of a causal-lm step (a label at every position, the chunked loss) against the
    measured step on packed text: never below it, and at most 3% above. The estimate's step is the
    worst case, a batch with padding, for which transformers' own decoder forward (full fine-tuning,
    LoRA) builds a causal mask; packed text has no padding and no mask (2.3% of LoRA's tiny LLaMA
    step). LST steps its own layers and asks for a mask only where a real batch needs one."""
    from app.estimate import estimate_memory

    record = train_now(store, backbone=backbone_name, method=method, task="causal-lm", dataset=str(easy_text),
                       steps=1, eval_every=10, batch_size=8, max_length=32, padding="max", generations=0,
                       max_train_examples=None)
    assert record["status"] == "finished", record.get("error")
    measured = sum(record["metrics"]["memory_breakdown"].values())
    estimate = estimate_memory(backbone_name, method, 8, 32, task="causal-lm")
    assert measured <= estimate.predicted_peak_bytes <= 1.03 * measured, (estimate.breakdown,
                                                                          record["metrics"]["memory_breakdown"])
    if method == "lst":
        assert estimate.predicted_peak_bytes == measured
    classifier = estimate_memory(backbone_name, method, 8, 32)
    assert classifier.predicted_peak_bytes != estimate.predicted_peak_bytes  # the task changes the step
    # The loss's own part: the gradients its chunks computed in the forward pass (8 × 31 positions),
    # kept for backward, and the labelled-token count it divides by; a classifier has none.
    from app.backbones import get_backbone

    config = get_backbone(backbone_name).config
    kept = 8 * 31 * 4 * config.hidden_size + 8  # the states' fp32 gradient, and the token count
    if method == "full_ft":  # and the (tied, trained) head's gradient
        kept += 4 * config.vocab_size * config.hidden_size
    assert record["metrics"]["memory_breakdown"]["loss"] == estimate.breakdown["loss"] == kept
    assert classifier.breakdown["loss"] == 0


@pytest.mark.parametrize("method,precision", [("lst", "int8"), ("lora", "int4"), ("adapter", "int8")])
def test_a_language_model_trains_on_a_quantized_backbone(method, precision, store, easy_text):
    """The frozen backbone in int8 or int4 while its LM head stays unquantized (bf16, as the embeddings it
    is tied to): the run learns past its first validation pass, and its LM head is not among the
    quantized layers."""
    record = train_now(store, backbone="tiny-random-llama", method=method, task="causal-lm", dataset=str(easy_text),
                       steps=8, eval_every=4, batch_size=8, lr=3e-2 if method == "lora" else 3e-3,
                       backbone_precision=precision, generations=0, max_train_examples=None)
    assert record["status"] == "finished", record.get("error")
    assert record["summary"]["backbone_precision"]["layers"] == 4 * 7  # every layer's projections, no head
    losses = [e["loss"] for e in store.evals(record["id"], "validation")]
    assert losses[2] < losses[1] < losses[0], losses


def test_an_answer_is_explained_by_its_prompt_tokens_with_captum(store, easy_text):
    """captum's LLMAttribution (feature ablation) over the run's own forward pass: one attribution per
    prompt token, one row per answer token, and taking out a token the answer leans on matters."""
    from app.errors import LabError
    from app.lm_explain import explain_generation

    record = train_now(store, backbone="tiny-random-llama", method="lst", task="causal-lm", dataset=str(easy_text),
                       steps=2, eval_every=2, batch_size=8, generations=0, max_train_examples=None)
    result = explain_generation(store, record["id"], "the cat sat on the", max_new_tokens=4)
    assert "".join(result["prompt_tokens"]) == "the cat sat on the"
    assert len(result["sequence"]) == len(result["prompt_tokens"])
    assert len(result["per_answer_token"]) == len(result["answer_tokens"]) > 0
    assert all(len(row) == len(result["prompt_tokens"]) for row in result["per_answer_token"])
    assert any(abs(v) > 1e-4 for v in result["sequence"])
    with pytest.raises(LabError, match="non-empty prompt"):
        explain_generation(store, record["id"], "  ")


def test_text_to_text_accuracy_is_what_greedy_answers_get_right(store, easy_csv):
    """A classification set as prompt -> label word: the run's accuracy is the exact match of greedy
    decoding (computed in one teacher-forced pass) and equals answering each prompt for real."""
    from app.config import RunConfig
    from app.lm_data import exact_match, generation_prompts
    from app.predict import load_writer
    from app.preparation import load_run_dataset

    record = train_now(store, backbone="tiny-random-llama", method="full_ft", task="causal-lm", dataset=str(easy_csv),
                       lm_format="text_to_text", steps=80, eval_every=80, batch_size=16, lr=3e-3, max_length=32,
                       generations=0, max_train_examples=None, max_eval_examples=24)
    assert record["status"] == "finished", record.get("error")
    first, last = store.evals(record["id"], "validation")
    assert first["exact_match"] == 0 and last["exact_match"] > 0.5  # the untuned model writes no label word
    assert last["accuracy"] == last["exact_match"]
    assert record["metrics"]["val_exact_match"] == last["exact_match"]
    writer = load_writer(store, record["id"])
    config = RunConfig.from_dict(record["config"])
    prompts = generation_prompts(writer.backbone.tokenizer, load_run_dataset(config), 24, config.max_length)
    answered = [exact_match(writer.generate(p["prompt"], max_new_tokens=4).text, p["reference"]) for p in prompts]
    assert sum(answered) / len(answered) == pytest.approx(last["exact_match"])
