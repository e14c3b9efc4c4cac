"""The CLI contract other tools rely on, run as a user runs it: a subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_ARGS = ["--backbone", "tiny-random", "--dataset", "sms-spam", "--batch-size", "8", "--max-length", "32",
             "--max-train-examples", "128", "--max-eval-examples", "32"]


def lab(*args, runs_dir: Path, timeout=300, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "app", *args, "--runs-dir", str(runs_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env,
    )


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_train_json_contract(tmp_path):
    result = lab("train", *TINY_ARGS, "--steps", "4", "--eval-every", "2", "--set", "classifier_dropout=0.2",
                 "--json", runs_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    out = last_json(result.stdout)
    for key in ("run_id", "status", "method", "backbone", "dataset", "steps", "metrics", "trainable_params",
                "total_params", "peak_memory_bytes", "memory_breakdown", "train_seconds", "steps_per_second"):
        assert key in out, key
    assert out["status"] == "finished" and out["steps"] == 4 and out["task"] == "classification"
    assert set(out["metrics"]) >= {"val_accuracy", "test_accuracy"}
    assert set(out["memory_breakdown"]) == {"weights", "quantized", "gradients", "optimizer", "activations", "loss"}
    assert out["memory_breakdown"]["quantized"] == 0 and out["backbone_precision"] == "fp32"
    assert "step" in result.stderr  # the progress bar goes to stderr

    listed = last_json(lab("runs", "list", "--json", runs_dir=tmp_path).stdout)
    assert [r["run_id"] for r in listed["runs"]] == [out["run_id"]]
    shown = last_json(lab("runs", "show", out["run_id"], "--json", runs_dir=tmp_path).stdout)
    assert shown["config"]["method_config"] == {"classifier_dropout": "0.2"} or \
        shown["summary"]["method_config"]["classifier_dropout"] == 0.2
    assert len(shown["step_series"]) == 4 and len(shown["eval_series"]) == 3

    export = lab("export", out["run_id"], "--out", str(tmp_path / "exported"), "--json", runs_dir=tmp_path)
    assert export.returncode == 0, export.stderr
    assert (tmp_path / "exported" / "config.json").exists()
    written = last_json(export.stdout)
    assert [f["format"] for f in written["formats"]] == ["transformers", "onnx"]
    assert all(f["max_difference"] <= 1e-4 for f in written["formats"])

    texts = ["WINNER! claim your free prize now", "see you at lunch"]
    predicted = lab("predict", out["run_id"], "--text", texts[0], "--text", texts[1], "--json", runs_dir=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    answer = last_json(predicted.stdout)
    assert answer["texts"] == texts and answer["label_names"] == ["ham", "spam"]
    assert len(answer["logits"]) == 2 and all(len(row) == 2 for row in answer["logits"])
    assert all(abs(sum(row) - 1) < 1e-6 for row in answer["probabilities"])
    assert answer["labels"] == [answer["label_names"][max(range(2), key=row.__getitem__)]
                                for row in answer["probabilities"]]
    # the exported folder, loaded by transformers alone, gives the same logits
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "exported")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "exported").eval()
    with torch.no_grad():
        logits = model(**tokenizer(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(logits, torch.tensor(answer["logits"]), rtol=1e-4, atol=1e-4)
    for bad, says in ((["predict", "no-such-run", "--text", "x"], "run"),
                      (["predict", out["run_id"], "--text", "  "], "non-empty texts")):
        refused = lab(*bad, runs_dir=tmp_path)
        assert refused.returncode == 2 and says in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_listing_commands_answer_json(tmp_path):
    methods = last_json(lab("methods", "--json", runs_dir=tmp_path).stdout)["methods"]
    full = next(m for m in methods if m["name"] == "full_ft")
    assert full["fields"][0]["help"]
    backbones = last_json(lab("backbones", "--json", runs_dir=tmp_path).stdout)["backbones"]
    assert {"minilm-l6", "tiny-random"} <= {b["name"] for b in backbones if b["available"]}
    datasets = last_json(lab("datasets", "--json", runs_dir=tmp_path).stdout)["datasets"]
    assert {d["name"] for d in datasets} >= {"rotten-tomatoes", "trec-6", "sms-spam"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "no_such_method"], "unknown method"),
        (["--backbone", "/nowhere/model"], "unknown backbone"),
        (["--dataset", "/nowhere/data.csv"], "does not exist"),
        (["--lr", "nan"], "finite"),
        (["--lr", "-1"], "at least"),
        (["--steps", "0"], "at least 1"),
        (["--batch-size", "1000"], "larger than the training set"),
        (["--max-length", "4096"], "above what backbone"),
        (["--set", "classifier_dropout=lots"], "expects float"),
        (["--set", "no_such_setting=1"], "unknown setting"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(tmp_path, args, message):
    base = TINY_ARGS + ["--steps", "2"]
    # later flags win in argparse, so the bad value overrides the tiny default
    result = lab("train", *base, *args, runs_dir=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert last_json(lab("runs", "list", "--json", runs_dir=tmp_path).stdout)["runs"] == []


def test_file_dataset_with_column_flags(tmp_path):
    path = tmp_path / "reviews.tsv"
    path.write_text("review\tstars\n" + "\n".join(f"text number {i}\t{i % 3}" for i in range(60)))
    result = lab("train", "--backbone", "tiny-random", "--dataset", str(path), "--text-column", "review",
                 "--label-column", "stars", "--steps", "2", "--batch-size", "4", "--max-length", "16", "--json",
                 runs_dir=tmp_path / "runs")
    assert result.returncode == 0, result.stderr
    run_id = last_json(result.stdout)["run_id"]
    shown = last_json(lab("runs", "show", run_id, "--json", runs_dir=tmp_path / "runs").stdout)
    assert shown["summary"]["dataset"]["label_names"] == ["0", "1", "2"]


def test_unknown_run_id_and_path_escape_are_refused(tmp_path):
    for bad in ("no-such-run", "../../etc"):
        result = lab("runs", "show", bad, "--json", runs_dir=tmp_path)
        assert result.returncode == 2
        assert "run" in result.stderr.lower()


def test_killed_process_leaves_an_interrupted_run_with_its_steps(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    child = subprocess.Popen(
        [sys.executable, "-m", "app", "train", *TINY_ARGS, "--steps", "100000", "--eval-every", "100000",
         "--runs-dir", str(tmp_path), "--quiet"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    from app.store import RunStore

    store = RunStore(tmp_path)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            runs = store.list_runs()
            if runs and runs[0]["step"] >= 5:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the child never reached step 5")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    run_id = store.list_runs()[0]["id"]
    steps_before = len(store.steps(run_id))
    assert store.get_run(run_id)["status"] == "running"  # nobody has looked yet
    listed = last_json(lab("runs", "list", "--json", runs_dir=tmp_path).stdout)["runs"]
    assert listed[0]["status"] == "interrupted"
    assert len(store.steps(run_id)) == steps_before >= 5
    assert store.integrity_ok()


def test_train_preset_fills_settings_and_given_flags_win():
    from app.cli import build_parser, train_values
    from app.config import RunConfig

    args = build_parser().parse_args(["train", "--method", "theseus", "--preset", "official",
                                      "--batch-size", "8", "--set", "patience=1"])
    values = train_values(args)
    assert values["method_config"]["linear_k"] == 0.0006 and values["method_config"]["linear_b"] == 0.3
    assert values["method_config"]["patience"] == "1"
    assert values["lr"] == 2e-5 and values["warmup_ratio"] == 0.0 and values["steps"] == 2400
    assert values["batch_size"] == 8  # the flag, not the preset's 32
    assert RunConfig.from_dict(dict(values, method_config={})).steps == 2400
    plain = train_values(build_parser().parse_args(["train", "--method", "theseus"]))
    assert plain["steps"] == RunConfig().steps and plain["lr"] is None  # no preset: the run config's defaults


def test_unknown_preset_is_refused_with_the_ones_offered(tmp_path):
    result = lab("train", *TINY_ARGS, "--method", "theseus", "--preset", "fast", runs_dir=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "no preset 'fast'" in lines[0] and "official" in lines[0], result.stderr


def _train_help(capsys, monkeypatch) -> str:
    from app.cli import main

    monkeypatch.setenv("COLUMNS", "10000")  # one line per flag, so texts compare whole
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_every_run_setting_is_a_train_flag_with_its_help(capsys, monkeypatch):
    import dataclasses

    from app.config import RunConfig
    from app.options import flag_name

    text = _train_help(capsys, monkeypatch)
    flat = " ".join(text.split())
    fields = [f for f in dataclasses.fields(RunConfig) if f.name != "method_config"]  # that one is --set
    for f in fields:
        assert flag_name(f.name) in text, f.name
        assert " ".join(f.metadata["help"].split()) in flat, f.name
    assert "--split-seed N" in text and "(default: 0; at least 0)" in flat
    first_flags = set(re.findall(r"(?m)^  (--?[\w-]+)", text))
    assert first_flags - {flag_name(f.name) for f in fields} == {
        "-h", "--runs-dir", "--json", "--preset", "--sheet", "--set", "--quiet"}


def test_a_new_run_setting_is_one_field(capsys, monkeypatch):
    from dataclasses import dataclass

    import app.cli
    import app.config
    from app.cli import build_parser, train_values
    from app.errors import ConfigError
    from app.options import option

    @dataclass
    class WithLabelSmoothing(app.config.RunConfig):
        label_smoothing: float = option(0.0, "Share of the target moved off the true class.", min=0.0, max=0.5)

    monkeypatch.setattr(app.config, "RunConfig", WithLabelSmoothing)
    monkeypatch.setattr(app.cli, "RunConfig", WithLabelSmoothing)
    assert train_values(build_parser().parse_args(["train", "--label-smoothing", "0.1"]))["label_smoothing"] == 0.1
    assert train_values(build_parser().parse_args(["train"]))["label_smoothing"] == 0.0
    with pytest.raises(ConfigError, match="'label_smoothing' must be at most 0.5"):
        train_values(build_parser().parse_args(["train", "--label-smoothing", "0.9"]))
    help_text = " ".join(_train_help(capsys, monkeypatch).split())
    assert "--label-smoothing X Share of the target moved off the true class. (default: 0.0;" in help_text


def test_config_flags_of_each_field_type():
    import argparse
    from dataclasses import dataclass

    from app.errors import ConfigError
    from app.options import add_config_flags, checked_values, given_flags, option

    @dataclass
    class Settings:
        cache: bool = option(True, "Keep results between calls.")
        ratios: list[float] = option([], "Ratios to try.")
        mode: str = option("fast", "How hard to try.", choices=["fast", "slow"])
        limit: int | None = option(10, "At most this many.", min=1)
        extra: dict = option({}, "Free-form settings.")

    parser = argparse.ArgumentParser()
    add_config_flags(parser, Settings, skip=["extra"], more_names={"ratios": ["--ratio"]},
                     shortcuts={"mode": {"--slow": "slow"}})

    def given(*argv):
        return checked_values(Settings, given_flags(parser.parse_args(list(argv)), Settings))

    assert given() == {}
    assert given("--no-cache", "--ratio", "0.5,0.25", "--slow", "--limit", "none") == {
        "cache": False, "ratios": [0.5, 0.25], "mode": "slow", "limit": None}
    assert given("--cache", "--mode", "fast", "--limit", "3") == {"cache": True, "mode": "fast", "limit": 3}
    for argv, message in ((["--mode", "slowest"], "'mode' must be one of fast, slow"),
                          (["--limit", "0"], "'limit' must be at least 1"),
                          (["--ratios", "0.5,abc"], "comma-separated list of float")):
        with pytest.raises(ConfigError, match=message):
            given(*argv)
    with pytest.raises(TypeError, match="extra"):
        add_config_flags(argparse.ArgumentParser(), Settings)  # a mapping has no flag form


@pytest.mark.parametrize("args, message", [
    (["train", "--warmup-ratio", "0.9"], "'warmup_ratio' must be at most 0.5, got 0.9"),
    (["train", "--padding", "bogus"], "'padding' must be one of dynamic, max; got 'bogus'"),
    (["train", "--steps", "many"], "'steps' expects int, got 'many'"),
    (["compress", "some-run", "--latency-repeats", "0"], "'latency_repeats' must be at least 1, got 0"),
    (["compress", "some-run", "--scope", "sideways"], "'scope' must be one of global, per_layer"),
])
def test_a_flag_out_of_bounds_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    from app.cli import main

    code = main([*args, "--runs-dir", str(tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not list(tmp_path.iterdir())  # refused before any run was stored
