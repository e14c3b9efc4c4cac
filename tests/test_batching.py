"""Dynamic padding and length-grouped order: batches do only the work their tokens need, and a
run still repeats exactly for its seed."""

from __future__ import annotations

import json

import pytest
import torch

from app.batching import Batcher, length_grouped_batches, pad_multiple_for, padded_length
from conftest import train_now


def _split(lengths: list[int], width: int) -> dict:
    n = len(lengths)
    mask = torch.zeros(n, width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    ids = torch.where(mask.bool(), torch.randint(5, 100, (n, width)), torch.zeros(n, width, dtype=torch.long))
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.arange(n) % 2}


def test_a_batch_is_padded_to_its_longest_example_rounded_to_8_on_cuda_and_never_past_max_length():
    tensors = _split([3, 9, 17, 20, 64, 61], width=64)
    cuda = Batcher("dynamic", pad_multiple=pad_multiple_for("cuda"))
    assert cuda.batch(tensors, torch.tensor([0]))["input_ids"].shape == (1, 8)
    assert cuda.batch(tensors, torch.tensor([0, 1]))["input_ids"].shape == (2, 16)
    assert cuda.batch(tensors, torch.tensor([2, 3]))["input_ids"].shape == (2, 24)
    assert cuda.batch(tensors, torch.tensor([0, 5]))["attention_mask"].shape == (2, 64)  # 61 -> 64 = max
    cpu = Batcher("dynamic", pad_multiple=pad_multiple_for("cpu"))  # no rounding: every token costs time
    assert cpu.batch(tensors, torch.tensor([0, 1]))["input_ids"].shape == (2, 9)
    assert cpu.batch(tensors, torch.tensor([0, 5]))["input_ids"].shape == (2, 61)
    for batcher in (cuda, cpu):
        for rows in ([0], [0, 1], [2, 3], [0, 4]):
            got = batcher.batch(tensors, torch.tensor(rows))
            assert got["input_ids"].shape[1] <= 64
            # nothing real is cut off
            assert int(got["attention_mask"].sum()) == int(tensors["attention_mask"][rows].sum())
            assert got["token_type_ids"].shape == got["input_ids"].shape
    assert Batcher("max").batch(tensors, torch.tensor([0, 1]))["input_ids"].shape == (2, 64)
    assert padded_length(61, 60, multiple=8) == 60  # a max_length that is not a multiple of 8 stays the cap


def test_left_padded_batches_keep_their_right_end():
    tensors = _split([3, 5], width=32)
    tensors = {k: v.flip(1) if v.ndim == 2 else v for k, v in tensors.items()}
    got = Batcher("dynamic", padding_side="left", pad_multiple=8).batch(tensors, torch.tensor([0, 1]))
    assert got["attention_mask"].shape == (2, 8)
    assert int(got["attention_mask"].sum()) == 8
    assert torch.equal(got["input_ids"], tensors["input_ids"][:, -8:])


def test_length_grouping_sees_every_example_once_groups_lengths_and_repeats_for_a_seed():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, 200, (1000,), generator=generator)
    tensors = _split(lengths.tolist(), width=200)
    batcher = Batcher("dynamic")

    epoch = batcher.epoch(tensors, 16, torch.Generator().manual_seed(7))
    seen = torch.cat(epoch)
    assert sorted(seen.tolist()) == list(range(1000))  # once each
    assert all(len(b) == 16 for b in epoch[:-1])

    def mean_spread(batches):
        return sum(float(lengths[b].max() - lengths[b].min()) for b in batches) / len(batches)

    random_batches = list(torch.randperm(1000, generator=torch.Generator().manual_seed(7)).split(16))
    assert mean_spread(epoch) < 0.25 * mean_spread(random_batches)
    padded = sum(len(b) * padded_length(int(lengths[b].max()), 200) for b in epoch)
    padded_random = sum(len(b) * padded_length(int(lengths[b].max()), 200) for b in random_batches)
    assert padded < 0.7 * padded_random

    again = batcher.epoch(tensors, 16, torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(epoch, again))
    other = batcher.epoch(tensors, 16, torch.Generator().manual_seed(8))
    assert not all(torch.equal(a, b) for a, b in zip(epoch, other))
    # the batches are not served longest-first or in any length order
    firsts = [int(lengths[b].max()) for b in epoch[:-1]]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)


def test_grouping_with_fewer_examples_than_a_mega_batch():
    order = torch.arange(10)
    batches = length_grouped_batches(order, torch.arange(10), 4, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert [len(b) for b in batches] == [4, 4, 2]


def test_evaluation_with_dynamic_padding_keeps_each_prediction_with_its_example():
    from app.batching import Batcher as B
    from app.compression.measure import test_logits

    tensors = _split([5, 30, 2, 17, 9, 40, 3], width=48)
    torch.manual_seed(0)
    embed = torch.nn.Embedding(100, 2)

    class MeanOfReal(torch.nn.Module):  # output depends only on real tokens, never on width
        def forward(self, input_ids, attention_mask, token_type_ids=None):
            mask = attention_mask.unsqueeze(-1).float()
            return (embed(input_ids) * mask).sum(1) / mask.sum(1)

    model = MeanOfReal()
    full = test_logits(model, tensors, batch_size=3, batcher=B("max"))
    trimmed = test_logits(model, tensors, batch_size=3, batcher=B("dynamic"))
    torch.testing.assert_close(trimmed, full)


def test_a_trained_model_predicts_the_same_with_either_padding(tmp_path):
    from app.checkpoints import load_run_model
    from app.data import load_dataset, tokenize_split
    from app.store import RunStore
    from app.training import evaluate

    store = RunStore(tmp_path)
    record = train_now(store, method="full_ft", steps=8, max_length=48)
    loaded = load_run_model(store, record["id"])
    data = load_dataset("sms-spam", max_train_examples=256, max_eval_examples=64)
    tensors = tokenize_split(loaded.backbone.tokenizer, data, "test", 48)
    scores = {}
    logits = {}
    for padding in ("max", "dynamic"):
        batcher = Batcher(padding)
        scores[padding] = evaluate(loaded.method, loaded.model, tensors, batch_size=16,
                                   device=torch.device("cpu"), num_labels=2, batcher=batcher)
        out = torch.empty(len(tensors["labels"]), 2)
        with torch.no_grad():
            for batch in batcher.in_order(tensors, 16):
                out[batch["index"]] = loaded.method.predict(loaded.model, batch).float()
        logits[padding] = out
    assert scores["dynamic"]["accuracy"] == scores["max"]["accuracy"]
    assert scores["dynamic"]["loss"] == pytest.approx(scores["max"]["loss"], rel=1e-5)
    torch.testing.assert_close(logits["dynamic"], logits["max"], rtol=1e-4, atol=1e-5)
    assert torch.equal(logits["dynamic"].argmax(-1), logits["max"].argmax(-1))


def test_runs_record_shapes_throughput_and_padding_and_repeat_for_a_seed(tmp_path):
    from app.store import RunStore

    store = RunStore(tmp_path)
    runs = {}
    for label, padding in (("a", "dynamic"), ("b", "dynamic"), ("max", "max")):
        record = train_now(store, method="full_ft", steps=6, max_length=64, padding=padding)
        assert record["status"] == "finished", record.get("error")
        runs[label] = record
    steps = {label: _steps(store, r["id"]) for label, r in runs.items()}

    assert [s["loss"] for s in steps["a"]] == [s["loss"] for s in steps["b"]]  # exactly, same seed
    for step in steps["max"]:
        assert step["batch_shape"] == [8, 64]
        assert step["memory"]["batch_shape"] == [8, 64]
    widths = [s["batch_shape"][1] for s in steps["a"]]
    assert all(w <= 64 for w in widths) and min(widths) < 64
    for s in steps["a"]:
        assert s["tokens"] <= s["batch_shape"][0] * s["batch_shape"][1]
        assert s["tokens_per_second"] > 0

    metrics = {label: store.get_run(r["id"])["metrics"] for label, r in runs.items()}
    peaks = [s["memory"]["peak"] for s in steps["a"]]
    assert metrics["a"]["peak_memory_bytes"] == max(peaks)
    peak_step = steps["a"][peaks.index(max(peaks))]
    assert metrics["a"]["peak_memory_shape"] == peak_step["batch_shape"]
    assert metrics["a"]["peak_memory_bytes"] < metrics["max"]["peak_memory_bytes"]
    assert 0 < metrics["a"]["padding_fraction"] < metrics["max"]["padding_fraction"] < 1
    assert metrics["a"]["tokens_per_second"] > 0 and metrics["a"]["examples_per_second"] > 0
    assert store.get_run(runs["a"]["id"])["config"]["padding"] == "dynamic"


def _steps(store, run_id: str) -> list[dict]:
    return store.steps(run_id)


def test_cli_takes_padding_and_reports_throughput(tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "app", "train", "--backbone", "tiny-random", "--dataset", "sms-spam", "--steps", "4",
         "--batch-size", "8", "--max-length", "64", "--max-train-examples", "128", "--max-eval-examples", "32",
         "--padding", "max", "--runs-dir", str(tmp_path), "--json", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["padding"] == "max"
    assert result["padding_fraction"] > 0.3  # SMS messages are far shorter than 64 tokens
    assert result["tokens_per_second"] > 0
    assert result["peak_memory_shape"] == [8, 64]
    bad = subprocess.run(
        [sys.executable, "-m", "app", "train", "--backbone", "tiny-random", "--padding", "longest",
         "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2 and "padding" in bad.stderr
