"""The start-up warm-up pays the imports and tokenization a first run would otherwise pay."""

from __future__ import annotations

from app import data, warmup
from app.backbones import get_backbone
from app.config import RunConfig
from app.training import load_run_dataset
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
