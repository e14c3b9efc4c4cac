"""The start-up warm-up pays the imports and tokenization a first run would otherwise pay."""

from __future__ import annotations

from app import data, warmup
from app.backbones import get_backbone
from app.config import RunConfig
from app.preparation import load_run_dataset
from conftest import tiny_config


def test_warm_up_leaves_the_run_splits_tokenized_for_the_first_run():
    config = RunConfig(**tiny_config(max_length=24))
    data._token_cache.clear()
    warmup.warm_up(config)
    backbone, dataset = get_backbone(config.backbone), load_run_dataset(config)
    cached_before = len(data._token_cache)
    for split in ("train", "validation", "test"):
        data.tokenize_split(backbone.tokenizer, dataset, split, config.max_length)
    # the run's own calls find the warm-up's tensors: nothing new is tokenized
    assert cached_before == 3 and len(data._token_cache) == 3


def test_start_warm_up_runs_once_per_configuration_and_never_raises():
    config = RunConfig(**tiny_config(max_length=40))
    thread = warmup.start_warm_up(config)
    assert thread is not None
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert warmup.start_warm_up(config) is None
    broken = RunConfig(**tiny_config(max_length=48, dataset="no-such-dataset"))
    failing = warmup.start_warm_up(broken)
    failing.join(timeout=60)
    assert not failing.is_alive()  # the failure was logged, not raised


def test_a_run_and_the_warm_up_importing_transformers_together_both_succeed(tmp_path):
    """A fresh process: the warm-up thread and the first page both reach for transformers at once."""
    import subprocess
    import sys

    from conftest import ROOT

    code = f"""
import sys, threading
sys.path.insert(0, {str(ROOT)!r})
from app.config import RunConfig
from app.warmup import start_warm_up
from app.backbones import get_backbone
thread = start_warm_up(RunConfig(backbone="tiny-random", dataset="sms-spam", max_length=32))
backbone = get_backbone("tiny-random")
model = backbone.load_for_classification(["a", "b"])
thread.join(120)
from app import warmup
print("ok", len(warmup.last_seconds))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ok", "1"], out.stderr[-2000:]
