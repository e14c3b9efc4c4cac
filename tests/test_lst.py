"""Ladder Side-Tuning: what makes it LST (no backbone activation kept for backward, gates, pruning
init with consistent indices, layer dropping, Fisher importance, the hidden-state cache), the
telemetry the UI draws, and the backbones it must work on."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from app.backbones import get_backbone
from app.errors import ConfigError
from app.layer_stack import LayerStack
from app.methods import create_method
from app.methods.base import BuildContext, TrainState, model_inputs
from app.methods import lst_init
from app.methods.lst import HIST_EDGES, HiddenStateCache
from conftest import train_now

LABELS = ["ham", "spam"]


def tiny_context(batches=None, progress=None, **kwargs) -> BuildContext:
    return BuildContext(
        backbone=get_backbone("tiny-random"), label_names=LABELS, device=torch.device("cpu"), seed=0,
        train_batches=(lambda: iter(batches)) if batches is not None else None,
        progress=progress or (lambda message: None), **kwargs,
    )


def tiny_batches(n_batches=3, batch_size=8, length=24):
    from app.data import load_dataset, tokenize_split

    backbone = get_backbone("tiny-random")
    tensors = tokenize_split(backbone.tokenizer, load_dataset("sms-spam", max_train_examples=256), "train", length)
    out = []
    for i in range(n_batches):
        idx = torch.arange(i * batch_size, (i + 1) * batch_size)
        batch = {k: v[idx] for k, v in tensors.items()}
        batch["index"] = idx
        out.append(batch)
    return out


def build(settings=None, **ctx_kwargs):
    method = create_method("lst", settings or {})
    torch.manual_seed(0)
    model = method.build(tiny_context(**ctx_kwargs))
    model.train()
    return method, model


# --- backprop never enters the backbone --------------------------------------------------------


def _saves_inside(model, modules, run):
    """(tensors saved for backward while one of `modules` was running, tensors saved elsewhere)."""
    depth = {"n": 0}
    handles = []
    for module in modules:
        handles.append(module.register_forward_pre_hook(lambda *a: depth.__setitem__("n", depth["n"] + 1)))
        handles.append(module.register_forward_hook(lambda *a: depth.__setitem__("n", depth["n"] - 1)))
    inside, outside = [], []

    def pack(tensor):
        (inside if depth["n"] > 0 else outside).append(tuple(tensor.shape))
        return tensor

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = run()
    finally:
        for handle in handles:
            handle.remove()
    return inside, outside, loss


def test_backbone_saves_nothing_for_backward_and_gets_no_gradient():
    method, model = build()
    batch = tiny_batches(1)[0]
    view = LayerStack(model.backbone)
    backbone_modules = [view.model.embeddings, *view.layers]
    inside, outside, loss = _saves_inside(
        model, backbone_modules, lambda: method.training_step(model, batch, TrainState(1, 1, torch.device("cpu"),
                                                                                        torch.Generator())).loss)
    assert inside == [], f"the backbone saved {len(inside)} tensors for backward, e.g. {inside[:3]}"
    assert outside, "the side network saved nothing: the probe is not seeing the forward pass"
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for _, p in method.trainable_parameters(model))
    assert not any(n.startswith("backbone.") for n, _ in method.trainable_parameters(model))

    # The same probe on a backbone that runs with autograd does see its saved activations.
    full = create_method("full_ft").build(tiny_context())
    full.train()
    full_view = LayerStack(full)
    inside, _, _ = _saves_inside(full, [full_view.model.embeddings, *full_view.layers],
                                 lambda: full(**model_inputs(batch)).logits.sum())
    assert len(inside) > 20


def test_engine_memory_breakdown_shows_the_saving(store):
    lst = train_now(store, method="lst", steps=2, eval_every=2)
    full = train_now(store, method="full_ft", steps=2, eval_every=2)
    for record in (lst, full):
        assert record["status"] == "finished", record.get("traceback")
    a, b = lst["metrics"]["memory_breakdown"], full["metrics"]["memory_breakdown"]
    assert a["activations"] < 0.35 * b["activations"], (a, b)
    assert a["gradients"] < 0.2 * b["gradients"]
    assert a["optimizer"] < 0.2 * b["optimizer"]
    assert lst["metrics"]["peak_memory_bytes"] < 0.5 * full["metrics"]["peak_memory_bytes"]
    assert lst["summary"]["trainable_params"] < 0.2 * full["summary"]["trainable_params"]


# --- gates -------------------------------------------------------------------------------------


def test_gates_start_at_one_half_and_learn():
    method, model = build()
    assert torch.equal(model.gate_alpha.detach(), torch.zeros(4))
    assert torch.allclose(model.gates(), torch.full((4,), 0.5))
    state = TrainState(1, 1, torch.device("cpu"), torch.Generator())
    method.training_step(model, tiny_batches(1)[0], state).loss.backward()
    telemetry = method.step_telemetry(model, state)["lst"]
    assert telemetry["gates"] == [0.5] * 4
    assert model.gate_alpha.grad is not None and model.gate_alpha.grad.abs().sum() > 0


@pytest.mark.parametrize("blocks, expected", [(4, 0.5), (12, 0.5), (24, 0.5 ** 0.25), (30, 0.5 ** 0.16)])
def test_gates_start_nearer_one_on_stacks_deeper_than_the_papers(blocks, expected):
    from app.methods.lst import LSTConfig, starting_gate

    assert starting_gate(LSTConfig(), blocks) == pytest.approx(expected)
    assert starting_gate(LSTConfig(gate_init=0.3), blocks) == 0.3  # a value set is a value kept


def test_a_gate_start_set_by_the_user_is_where_every_gate_starts():
    _, model = build({"gate_init": 0.8})
    torch.testing.assert_close(model.gates(), torch.full((4,), 0.8))


def _deep_decoder(tmp_path, layers=30):
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=get_backbone("tiny-random-llama").config.vocab_size, hidden_size=64,
                         intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=4, max_position_embeddings=64)
    folder = tmp_path / "deep-llama"
    torch.manual_seed(0)
    from transformers import AutoModel

    AutoModel.from_config(config).save_pretrained(folder)
    get_backbone("tiny-random-llama").tokenizer.save_pretrained(folder)
    return get_backbone(str(folder))


@pytest.mark.parametrize("settings, all_above", [({}, True), ({"gate_init": 0.5}, False)])
def test_every_gate_of_a_30_layer_decoder_gets_a_gradient_at_the_defaults(tmp_path, settings, all_above):
    import torch.nn.functional as F

    backbone = _deep_decoder(tmp_path)
    method = create_method("lst", {"reduction_factor": 4, **settings})
    torch.manual_seed(0)
    model = method.build(BuildContext(backbone=backbone, label_names=LABELS, device=torch.device("cpu"), seed=0))
    model.train()
    inputs = backbone.tokenizer(["a fine film", "a dull one, far too long"] * 4, padding="max_length", max_length=12,
                                return_tensors="pt")
    F.cross_entropy(model(**inputs), torch.tensor([1, 0] * 4)).backward()
    smallest = model.gate_alpha.grad.abs().min().item()
    # At 0.5 the first block's output reaches the head scaled by 0.5^29: its gate's gradient vanishes.
    assert (smallest > 1e-6) == all_above, smallest


@pytest.mark.parametrize("backbone_name", ["tiny-random", "tiny-random-llama", "tiny-random-gpt2"])
def test_final_merge_starts_at_half_and_leaves_the_backbone_untouched(backbone_name):
    backbone = get_backbone(backbone_name)
    method = create_method("lst", {"final_merge": True, "layer_dropping": "list", "layer_indices": [0]})
    torch.manual_seed(0)
    model = method.build(BuildContext(backbone=backbone, label_names=LABELS, device=torch.device("cpu"), seed=0))
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    inputs = backbone.tokenizer(["a fine film", "a dull one, far too long"] * 2, padding="max_length", max_length=12,
                                return_tensors="pt")
    model.train()
    logits = model(**inputs)
    assert torch.isfinite(logits).all() and model.merge_gate().item() == 0.5
    logits.sum().backward()
    assert model.merge_alpha.grad is not None and model.merge_alpha.grad.abs() > 0
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.backbone.named_parameters())
    # The merged state is the backbone's final one, computed past the last layer that feeds a ladder.
    states = model.backbone_states(inputs["input_ids"], inputs["attention_mask"], None)
    assert len(states) == model.state_count == 3
    with torch.no_grad():
        final = model.backbone(**inputs).last_hidden_state
    real = inputs["attention_mask"].bool()  # padded positions differ and are never read
    torch.testing.assert_close(states[-1][real], final[real], rtol=1e-4, atol=1e-5)
    assert "merge_gate" in method.step_telemetry(model, TrainState(1, 1, torch.device("cpu"), torch.Generator()))["lst"]
    assert method.run_summary(model)["merge_gate"] == 0.5


def test_the_cache_holds_the_merged_final_state_too(store):
    common = dict(steps=12, eval_every=12, max_train_examples=32, batch_size=8)
    plain = train_now(store, method="lst", method_config={"final_merge": True}, **common)
    cached = train_now(store, method="lst", method_config={"final_merge": True, "cache_hidden_states": True}, **common)
    a = [s["loss"] for s in store.steps(plain["id"])]
    b = [s["loss"] for s in store.steps(cached["id"])]
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-5, atol=1e-6)
    assert cached["summary"]["method_summary"]["hidden_state_cache"]["hits"] > 0


# --- pruning init ------------------------------------------------------------------------------


def _hand_made_encoder(hidden=16, heads=2, ffn=32, layers=2):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=50, hidden_size=hidden, num_attention_heads=heads, intermediate_size=ffn,
                        num_hidden_layers=layers, max_position_embeddings=32)
    torch.manual_seed(0)
    model = BertModel(config).eval()
    with torch.no_grad():
        for p in model.encoder.parameters():
            if p.ndim == 2:
                p.copy_(torch.rand_like(p) * 0.01)  # small, so the planted weights below decide
    return model


def test_magnitude_pruning_keeps_the_most_important_indices():
    model = _hand_made_encoder()
    view = LayerStack(model)
    with torch.no_grad():
        for layer in view.layers:
            parts = view.family.layer_parts(layer)
            parts.query.weight[:, [3, 12]] = 1.0  # hidden dims 3 and 12 are read strongly
            parts.query.weight[[2, 9]] = 3.0  # head 0 (dims 0..7): dim 2; head 1 (8..15): dim 9
            parts.ffn_in.weight[[5, 20, 30, 31]] = 1.0  # FFN neurons 5, 20, 30, 31
    indices = lst_init.choose_indices(lst_init.magnitude_scores(view, [0, 1]), num_heads=2, reduction_factor=8)
    assert indices.hidden.tolist() == [3, 12]
    assert indices.heads[0].tolist() == [2, 9] and indices.heads[1].tolist() == [2, 9]
    assert indices.ffn[0].tolist() == [5, 20, 30, 31]


def test_kept_indices_are_consistent_through_a_layer():
    model = _hand_made_encoder(hidden=32, heads=4, ffn=64)
    view = LayerStack(model)
    indices = lst_init.choose_indices(lst_init.magnitude_scores(view, [0]), num_heads=4, reduction_factor=4)
    hidden, heads, ffn = indices.hidden, indices.heads[0], indices.ffn[0]
    assert len(hidden) == 8 and len(heads) == 8 and len(ffn) == 16
    for h in range(4):  # two dims kept inside each head's own range
        assert ((heads[2 * h:2 * h + 2] // 8) == h).all()
    side = lst_init.build_side_layers(view, lst_init.side_config(view.config, 4), 1)[0]
    lst_init.copy_pruned_layer(view.family, view.layers[0], side, hidden, heads, ffn)
    src, dst = view.family.layer_parts(view.layers[0]), view.family.layer_parts(side)

    # A backbone input living only on the kept hidden dims gives, on the kept q/k/v rows and FFN
    # neurons, exactly what the side layer computes from the projected input.
    x = torch.zeros(3, 32)
    x[:, hidden] = torch.randn(3, 8)
    with torch.no_grad():
        for name in ("query", "key", "value"):
            torch.testing.assert_close(getattr(dst, name)(x[:, hidden]), getattr(src, name)(x)[:, heads])
        torch.testing.assert_close(dst.ffn_in(x[:, hidden]), src.ffn_in(x)[:, ffn])
        context = torch.zeros(3, 32)
        context[:, heads] = torch.randn(3, 8)
        torch.testing.assert_close(dst.attn_out(context[:, heads]), src.attn_out(context)[:, hidden])
        inner = torch.zeros(3, 64)
        inner[:, ffn] = torch.randn(3, 16)
        torch.testing.assert_close(dst.ffn_out(inner[:, ffn]), src.ffn_out(inner)[:, hidden])
    torch.testing.assert_close(dst.attn_norm.weight, src.attn_norm.weight[hidden])
    torch.testing.assert_close(dst.ffn_norm.bias, src.ffn_norm.bias[hidden])


def test_reduction_factor_one_reproduces_the_backbone_layers():
    method, model = build({"reduction_factor": 1})
    model.eval()
    batch = tiny_batches(1)[0]
    with torch.no_grad():
        states = model.backbone_states(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        mask = model.view.layer_mask(batch["attention_mask"], states[0])
        for k, layer in enumerate(model.side_layers):
            torch.testing.assert_close(model.view.run_layer(layer, states[k], mask, {}), states[k + 1])
        # ...and the ladder projections start as the identity on the kept dims
        torch.testing.assert_close(model.downs[1](states[1]), states[1])


def test_side_network_widths_follow_the_reduction_factor():
    _, model = build({"reduction_factor": 4})
    parts = model.view.family.layer_parts(model.side_layers[0])
    assert parts.query.weight.shape == (16, 16)  # hidden 64/4, 4 heads of 16/4
    assert parts.ffn_in.weight.shape == (32, 16)  # FFN 128/4
    assert model.downs[0].weight.shape == (16, 64) and model.upsample.weight.shape == (64, 16)
    assert type(model.side_layers[0]) is type(LayerStack(model.backbone).layers[0])


def test_reduction_factor_that_does_not_divide_is_refused(store):
    from app.preparation import prepare_run
    from conftest import tiny_config

    with pytest.raises(ConfigError, match="reduction_factor 3 does not divide"):
        prepare_run(tiny_config(method="lst", method_config={"reduction_factor": 3}), store)


def test_random_init_differs_from_pruning_init():
    _, pruned = build()
    _, random = build({"init": "random"})
    a = pruned.view.family.layer_parts(pruned.side_layers[0]).query.weight
    b = random.view.family.layer_parts(random.side_layers[0]).query.weight
    assert not torch.allclose(a, b)
    assert (pruned.downs[0].weight != 0).sum() == 8  # a selection: one 1 per side dim


def test_fisher_init_scores_with_training_batches_and_differs_from_magnitude():
    messages = []
    batches = tiny_batches(3)
    _, fisher = build({"init": "fisher", "fisher_samples": 20}, batches=batches, progress=messages.append)
    _, magnitude = build()
    assert any("Fisher importance" in m for m in messages)
    assert any("20/20" in m for m in messages)  # stopped at the asked number of examples
    assert not torch.equal(fisher.downs[0].weight, magnitude.downs[0].weight)  # other hidden dims kept
    assert all(p.grad is None and not p.requires_grad for p in fisher.backbone.parameters())
    assert not fisher.backbone.training


def _fisher(batches, num_samples):
    view = LayerStack(get_backbone("tiny-random").load_encoder())
    return lst_init.fisher_scores(view, [0, 1], iter(batches), num_samples=num_samples, num_labels=2,
                                  pooling="mean", seed=0)


def test_fisher_sums_squared_per_example_gradients():
    """Additive over examples (a squared batch-mean gradient is not), and padding changes nothing."""
    batch = tiny_batches(1, batch_size=4)[0]
    together = _fisher([batch], 4)
    alone = [_fisher([{k: v[i : i + 1] for k, v in batch.items()}], 1) for i in range(4)]
    for part in ("query", "ffn_out"):
        summed = sum(scores[1][part] for scores in alone)
        torch.testing.assert_close(together[1][part], summed, rtol=1e-4, atol=1e-12)
    longer = tiny_batches(1, batch_size=4, length=40)[0]
    assert longer["input_ids"].shape[1] > batch["input_ids"].shape[1]
    torch.testing.assert_close(_fisher([longer], 4)[0]["key"], together[0]["key"], rtol=1e-4, atol=1e-12)


def test_fisher_on_a_language_model_scores_its_own_next_token_loss_on_labelled_tokens():
    """With the LM head the score is the squared gradient of the run's next-token loss, example by
    example; tokens labelled -100 (a prompt, padding) add nothing."""
    lm = get_backbone("tiny-random-llama").load_for_causal_lm()
    view = LayerStack(lm.base_model)
    tokens = get_backbone("tiny-random-llama").tokenizer(["the cat sat on the mat and the dog ran after it"] * 2,
                                                          max_length=8, truncation=True, return_tensors="pt")
    labels = tokens["input_ids"].clone()
    labels[1, :5] = -100  # the second example's loss is on its last 3 tokens only
    batch = {**tokens, "labels": labels}

    def scores(batch):
        return lst_init.fisher_scores(view, [0], iter([batch]), num_samples=2, num_labels=0, pooling="last", seed=0,
                                      lm_head=lm.get_output_embeddings())

    query = view.family.layer_parts(view.layers[0]).query.weight
    expected = torch.zeros_like(query)
    for row in range(2):
        logits = lm(input_ids=tokens["input_ids"][row:row + 1]).logits[0, :-1]
        loss = F.cross_entropy(logits, labels[row, 1:], ignore_index=-100)
        expected += torch.autograd.grad(loss, query)[0].pow(2)
    torch.testing.assert_close(scores(batch)[0]["query"], expected, rtol=1e-3, atol=1e-10)
    unlabelled = scores({**tokens, "labels": torch.full_like(labels, -100)})
    assert all(bool((part == 0).all()) for part in unlabelled[0].values())


def test_fisher_defaults_to_1024_samples():
    assert create_method("lst", {}).config.fisher_samples == 1024


def test_fisher_init_needs_training_batches():
    with pytest.raises(ConfigError, match="Fisher"):
        build({"init": "fisher"})


def test_restoring_skips_the_init_and_needs_no_data():
    method = create_method("lst", {"init": "fisher"})
    model = method.build(tiny_context(restoring=True))  # no train_batches: would fail if it scored
    assert len(model.side_layers) == 4


# --- layer dropping ----------------------------------------------------------------------------


@pytest.mark.parametrize("settings, feeds", [
    ({}, [0, 1, 2, 3]),
    ({"layer_dropping": "every_other"}, [1, 3]),
    ({"layer_dropping": "list", "layer_indices": [2, 0]}, [0, 2]),
])
def test_layer_dropping_builds_the_intended_side_blocks(settings, feeds):
    method, model = build(settings)
    assert model.feeds == feeds
    assert len(model.side_layers) == len(feeds) and len(model.downs) == len(feeds) + 1
    assert model.gate_alpha.shape == (len(feeds),)
    calls = []
    handles = [layer.register_forward_hook(lambda m, *a, i=i: calls.append(i))
               for i, layer in enumerate(model.view.layers)]
    state = TrainState(1, 1, torch.device("cpu"), torch.Generator())
    method.training_step(model, tiny_batches(1)[0], state)
    for handle in handles:
        handle.remove()
    assert calls == list(range(feeds[-1] + 1))  # layers after the last feeding one never run
    telemetry = method.step_telemetry(model, state)["lst"]
    assert telemetry["backbone_layers"] == feeds and len(telemetry["gates"]) == len(feeds)


@pytest.mark.parametrize("settings, message", [
    ({"layer_dropping": "list"}, "needs layer_indices"),
    ({"layer_dropping": "list", "layer_indices": [1, 1]}, "must not repeat"),
    ({"layer_dropping": "list", "layer_indices": [-1]}, "0 or more"),
    ({"layer_indices": [1]}, "only used with layer_dropping 'list'"),
])
def test_bad_layer_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        create_method("lst", settings)


def test_layer_index_beyond_the_backbone_is_refused_before_the_run(store):
    from app.preparation import prepare_run
    from conftest import tiny_config

    config = tiny_config(method="lst", method_config={"layer_dropping": "list", "layer_indices": [1, 4]})
    with pytest.raises(ConfigError, match=r"\[4\] do not exist: the backbone has 4 layers \(0..3\)"):
        prepare_run(config, store)
    assert store.list_runs() == []


# --- the hidden-state cache ------------------------------------------------------------------


def test_cache_gives_the_same_losses_and_skips_the_backbone_after_the_first_epoch(store):
    common = dict(steps=12, eval_every=12, max_train_examples=32, batch_size=8)
    plain = train_now(store, method="lst", **common)
    cached = train_now(store, method="lst", method_config={"cache_hidden_states": True}, **common)
    for record in (plain, cached):
        assert record["status"] == "finished", record.get("traceback")
    a = [s["loss"] for s in store.steps(plain["id"])]
    b = [s["loss"] for s in store.steps(cached["id"])]
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-5, atol=1e-6)
    assert cached["metrics"]["val_accuracy"] == plain["metrics"]["val_accuracy"]
    summary = store.get_run(cached["id"])["summary"]["method_summary"]["hidden_state_cache"]
    train_size = store.get_run(cached["id"])["summary"]["dataset"]["sizes"]["train"]
    epoch_steps = train_size // 8
    assert summary["backbone_passes"] == epoch_steps  # only the first epoch ran the backbone
    assert summary["examples"] == epoch_steps * 8 and summary["hits"] == (12 - epoch_steps) * 8
    assert "hidden_state_cache" not in store.get_run(plain["id"])["summary"]["method_summary"]


def test_cache_respects_its_memory_limit_and_stores_only_real_tokens():
    cache = HiddenStateCache(limit_bytes=3 * 2 * 5 * 4 * 4)  # three examples: 2 states x 5 tokens x 4 floats
    states = torch.randn(2, 4, 6, 4)
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[:, 5:] = 0
    cache.store(torch.tensor([10, 11, 12, 13]), mask, states)
    assert sorted(cache.entries) == [10, 11, 12] and cache.bytes <= cache.limit_bytes
    assert cache.lookup(torch.tensor([10, 13]), mask[:2], (2, 4)) is None
    got = cache.lookup(torch.tensor([12, 10]), mask[:2], (2, 4))
    torch.testing.assert_close(got[:, :, :5], states[:, [2, 0], :5])
    assert (got[:, :, 5:] == 0).all()


def test_predictions_never_use_the_cache():
    method, model = build({"cache_hidden_states": True})
    batch = tiny_batches(1)[0]
    state = TrainState(1, 1, torch.device("cpu"), torch.Generator())
    method.training_step(model, batch, state)
    assert len(model.cache.entries) == 8
    model.eval()
    with torch.no_grad():
        other = dict(batch, input_ids=batch["input_ids"].flip(0))  # same indices, other texts
        expected = model(**model_inputs(other))
        torch.testing.assert_close(method.predict(model, other), expected)
        assert model.cache.hits == 0


# --- telemetry ---------------------------------------------------------------------------------


def test_telemetry_schema_is_recorded_in_the_store(store):
    record = train_now(store, method="lst", method_config={"layer_dropping": "every_other"}, steps=3, eval_every=3)
    assert record["status"] == "finished", record.get("traceback")
    steps = store.telemetry(record["id"], "step")
    assert [row["step"] for row in steps] == [1, 2, 3]
    lst = steps[0]["lst"]
    assert set(lst) == {"gates", "layers", "hist_edges", "side_norm", "ladder_norm", "backbone_layers"}
    assert lst["backbone_layers"] == [1, 3]
    assert lst["hist_edges"] == HIST_EDGES and len(lst["hist_edges"]) == 21
    assert lst["hist_edges"] == steps[-1]["lst"]["hist_edges"]
    assert len(lst["gates"]) == len(lst["layers"]) == len(lst["side_norm"]) == len(lst["ladder_norm"]) == 2
    for layer in lst["layers"]:
        assert set(layer) == {"mean", "std", "rms", "hist"}
        assert len(layer["hist"]) == 20 and all(isinstance(c, int) for c in layer["hist"])
        assert layer["rms"] ** 2 == pytest.approx(layer["mean"] ** 2 + layer["std"] ** 2, rel=1e-3)
    # every value of the real tokens is counted once (side width 64/8 = 8)
    totals = {sum(layer["hist"]) for layer in lst["layers"]}
    assert len(totals) == 1 and totals.pop() % 8 == 0
    assert all(v > 0 for v in lst["side_norm"] + lst["ladder_norm"])

    (evaluation,) = store.telemetry(record["id"], "eval:validation")
    pca = evaluation["lst_pca"]
    assert set(pca) == {"points", "labels", "label_names", "explained_variance"}
    assert len(pca["points"]) == len(pca["labels"]) == min(64, record["summary"]["dataset"]["sizes"]["validation"])
    assert all(len(p) == 2 for p in pca["points"])
    assert pca["label_names"] == record["summary"]["dataset"]["label_names"]
    assert set(pca["labels"]) <= {0, 1}
    assert 0 <= pca["explained_variance"][1] <= pca["explained_variance"][0] <= 1
    json.dumps(steps), json.dumps(evaluation)  # plain data


# --- backbones and export --------------------------------------------------------------------


def _save_tiny(folder, config):
    from transformers import AutoModel

    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    get_backbone("tiny-random").tokenizer.save_pretrained(folder)
    return folder


def test_roberta_folder_trains_and_exports(store, tmp_path):
    from transformers import RobertaConfig

    from app.export import export_run, load_exported

    tokenizer = get_backbone("tiny-random").tokenizer
    folder = _save_tiny(tmp_path / "tiny-roberta", RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=80, type_vocab_size=1, pad_token_id=tokenizer.pad_token_id))
    record = train_now(store, backbone=str(folder), method="lst", steps=3, eval_every=3)
    assert record["status"] == "finished", record.get("traceback")
    assert record["summary"]["backbone"]["model_type"] == "roberta"
    out = export_run(store, record["id"], tmp_path / "export")
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "export" / "model.safetensors")).keys()
    assert keys and not any(k.startswith("backbone.") for k in keys)  # the backbone is named, not copied
    assert out["format"] == "state_dict"
    exported = load_exported(tmp_path / "export")
    from app.checkpoints import load_run_model

    loaded = load_run_model(store, record["id"])
    batch = tiny_batches(1)[0]
    with torch.no_grad():
        torch.testing.assert_close(exported(**model_inputs(batch)), loaded.model(**model_inputs(batch)))


def test_mpnet_layers_run_with_the_backbones_position_bias(tmp_path):
    from transformers import MPNetConfig

    tokenizer = get_backbone("tiny-random").tokenizer
    folder = _save_tiny(tmp_path / "tiny-mpnet", MPNetConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=80, pad_token_id=tokenizer.pad_token_id))
    method = create_method("lst", {"reduction_factor": 1})
    ctx = BuildContext(backbone=get_backbone(str(folder)), label_names=LABELS, device=torch.device("cpu"), seed=0)
    model = method.build(ctx).eval()
    batch = tiny_batches(1)[0]
    with torch.no_grad():
        states = model.backbone_states(batch["input_ids"], batch["attention_mask"], None)
        mask = model.view.layer_mask(batch["attention_mask"], states[0])
        context = model.view.layer_context(states[0])
        assert "position_bias" in context
        # at r = 1 the side layer is the backbone layer, so it must see the same bias to agree
        torch.testing.assert_close(model.view.run_layer(model.side_layers[0], states[0], mask, context), states[1])
    model.train()
    loss = method.training_step(model, batch, TrainState(1, 1, torch.device("cpu"), torch.Generator())).loss
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())


@pytest.mark.real
def test_mpnet_base_builds_and_takes_a_step():
    from app.backbones import REGISTRY

    available, hint = REGISTRY["mpnet-base"].availability()
    if not available:
        pytest.skip(f"mpnet-base is an optional extra: {hint}")
    backbone = get_backbone("mpnet-base")
    method = create_method("lst")
    model = method.build(BuildContext(backbone=backbone, label_names=LABELS, device=torch.device("cpu"), seed=0))
    model.train()
    texts = ["a fine film", "dull and far too long"]
    batch = dict(backbone.tokenizer(texts, padding="max_length", max_length=16, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0])
    batch["index"] = torch.arange(2)
    assert model.view.family.layer_parts(model.side_layers[0]).query.weight.shape == (96, 96)  # 768/8, 12 heads of 8
    out = method.training_step(model, batch, TrainState(1, 1, torch.device("cpu"), torch.Generator()))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is None for p in model.backbone.parameters())


# --- decoders ------------------------------------------------------------------------------------


def _decoder_lst(reduction_factor: int, backbone_name: str = "tiny-random-llama", **settings):
    backbone = get_backbone(backbone_name)
    method = create_method("lst", {"reduction_factor": reduction_factor, **settings})
    batches = [{k: v for k, v in backbone.tokenizer(["a fine film", "a dull one"] * 4, padding="max_length",
                                                     max_length=12, return_tensors="pt").items()}]
    batches[0]["labels"] = torch.tensor([1, 0] * 4)
    model = method.build(BuildContext(backbone=backbone, label_names=["a", "b"], device=torch.device("cpu"), seed=0,
                                      train_batches=lambda: iter(batches)))
    return backbone, model.eval()


@pytest.mark.parametrize("backbone_name,init", [("tiny-random-llama", "magnitude"), ("tiny-random-llama", "fisher"),
                                                ("tiny-random-gpt2", "magnitude"), ("tiny-random-gpt2", "fisher")])
def test_a_decoder_side_layer_pruned_at_r1_computes_its_backbone_layer(backbone_name, init):
    backbone, model = _decoder_lst(1, backbone_name, init=init, fisher_samples=8)
    view = model.view
    batch = backbone.tokenizer(["a causal model reads left to right", "short"], padding="max_length",
                               max_length=12, return_tensors="pt")
    torch.manual_seed(0)
    hidden = torch.randn(2, 12, view.config.hidden_size)
    mask = view.layer_mask(batch["attention_mask"], hidden)
    with torch.no_grad():
        for k, backbone_index in enumerate(model.feeds):
            expected = view.run_layer(view.layers[backbone_index], hidden, mask, view.layer_context(hidden))
            got = view.run_layer(model.side_layers[k], hidden, mask, model.side_contexts(hidden)[k])
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
        final_norm = view.family.final_norm(view.model)
        torch.testing.assert_close(model.side_norm(hidden), final_norm(hidden), rtol=0, atol=0)


def test_decoder_side_heads_keep_rotary_pairs_with_their_own_frequencies():
    """Rotating a pruned query equals pruning the rotated backbone query: the side head keeps
    dimension pairs (j, j + d_head/2) and rotates them at the backbone's frequency for j."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from app.methods.lst_init import head_size_of

    backbone, model = _decoder_lst(2)
    view = model.view
    config = view.config
    head, side_head = head_size_of(config), head_size_of(config) // 2
    layer_index = model.feeds[1]
    backbone_q = view.layers[layer_index].self_attn.q_proj
    side_q = model.side_layers[1].self_attn.q_proj
    # the side layer's query rows are backbone rows: find which ones, head by head
    rows = [int((backbone_q.weight[:, model.downs[0].weight.argmax(1)] == side_row).all(1).nonzero()[0])
            for side_row in side_q.weight]
    dims = torch.tensor(rows[:side_head]) % head
    half = head // 2
    assert torch.equal(dims[side_head // 2:], dims[: side_head // 2] + half)  # pairs kept together
    torch.manual_seed(0)
    x = torch.randn(1, 7, config.hidden_size)
    kept_hidden = model.downs[0].weight.argmax(1)
    x_side = x[..., kept_hidden]
    x_zeroed = torch.zeros_like(x)
    x_zeroed[..., kept_hidden] = x_side
    with torch.no_grad():
        full = backbone_q(x_zeroed).view(1, 7, -1, head).transpose(1, 2)
        cos, sin = view.layer_context(x)["position_embeddings"]
        rotated_full, _ = apply_rotary_pos_emb(full, full, cos, sin)
        side = side_q(x_side).view(1, 7, -1, side_head).transpose(1, 2)
        side_cos, side_sin = model.side_contexts(x_side)[1]["position_embeddings"]
        rotated_side, _ = apply_rotary_pos_emb(side, side, side_cos, side_sin)
    torch.testing.assert_close(rotated_side, rotated_full[..., dims], rtol=1e-5, atol=1e-5)


def test_decoder_lst_refuses_what_it_cannot_prune():
    with pytest.raises(ConfigError, match="rotary pairs"):
        create_method("lst", {"reduction_factor": 16}).check_compatible(get_backbone("tiny-random-llama"), ["a", "b"])
    with pytest.raises(ConfigError, match="first token"):
        create_method("lst", {"pooling": "first"}).check_compatible(get_backbone("tiny-random-gpt2"), ["a", "b"])


def test_fisher_on_gpt2_reads_query_key_and_value_off_the_fused_matrix():
    """GPT-2 computes q, k and v with one Conv1D ([in, 3 * out]): each projection's Fisher score is
    its own third of that parameter's squared gradient, in Linear layout ([out, in])."""
    from app.layer_stack import LayerStack

    backbone = get_backbone("tiny-random-gpt2")
    model = backbone.load_encoder()
    view = LayerStack(model)
    tokens = backbone.tokenizer(["a fine film"], return_tensors="pt")
    batch = dict(tokens, labels=torch.tensor([1]))
    scores = lst_init.fisher_scores(view, [0], iter([batch]), num_samples=1, num_labels=2, pooling="last", seed=0)[0]

    fused = view.layers[0].attn.c_attn.weight
    head = torch.nn.Linear(view.config.hidden_size, 2)
    with torch.no_grad():  # the same seeded temporary head fisher_scores draws
        head.weight.copy_(torch.randn(2, view.config.hidden_size, generator=torch.Generator().manual_seed(0))
                          * view.config.initializer_range)
        head.bias.zero_()
    fused.requires_grad_(True)
    try:
        last = view.family.final_norm(model)(view.hidden_states(tokens["input_ids"], tokens["attention_mask"])[-1])
        loss = torch.nn.functional.cross_entropy(head(last[:, -1]), batch["labels"])
        (grad,) = torch.autograd.grad(loss, [fused])
    finally:
        fused.requires_grad_(False)
    squared = grad.pow(2).t()  # [3 * out, in]
    width = view.config.hidden_size
    for third, name in enumerate(("query", "key", "value")):
        torch.testing.assert_close(scores[name], squared[third * width:(third + 1) * width])
    assert all(scores[name].sum() > 0 for name in ("query", "key", "value", "attn_out", "ffn_in", "ffn_out"))


def test_the_convergence_preset_is_the_official_schedule_and_a_valid_run(store):
    from app.config import RunConfig
    from app.methods.lst import LadderSideTuning

    preset = LadderSideTuning.presets["convergence"]
    run = RunConfig.from_dict(dict(preset["run"], method="lst", method_config=preset["method_config"]))
    assert (run.lr, run.weight_decay, run.patience_from) == (1e-3, 0.0, 0.5)
    record = train_now(store, method="lst", **dict(preset["run"], steps=8, eval_every=2, batch_size=8,
                                                    max_train_examples=32))
    assert record["status"] == "finished", record.get("traceback")
    early = record["summary"]["early_stopping"]
    assert early["patience_from"] == 0.5 and early["stopped_at_step"] >= 4
    assert record["summary"]["lr"] == 1e-3
