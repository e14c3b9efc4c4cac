"""Pay a process's one-time start-up costs before the first run is submitted.

The first run of a fresh process spends seconds before its first step on work that never
repeats: importing transformers' config and model modules (about 4 s on two CPU cores for a
BERT-family model), reading the default corpus and tokenizing its splits. The app starts this
warm-up in a background thread when it opens, so a user who spends a few seconds on the Launch
form finds those costs already paid. Everything it touches is cached by the modules it calls.
"""

from __future__ import annotations

import logging
import threading
import time

from app.config import RunConfig

log = logging.getLogger(__name__)

_started: set[tuple[str, str, int]] = set()
_lock = threading.Lock()
last_seconds: dict[tuple[str, str, int], float] = {}


def warm_up(config: RunConfig) -> float:
    """Load what a run of `config` needs before its first step; returns the seconds it took."""
    from app.backbones import TRANSFORMERS_IMPORTS, get_backbone
    from app.data import tokenize_split
    from app.preparation import load_run_dataset

    start = time.perf_counter()
    backbone = get_backbone(config.backbone)
    with TRANSFORMERS_IMPORTS:
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

        # resolving the class imports its modeling module, the largest single start-up cost
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(backbone.config)]
    dataset = load_run_dataset(config)
    for split in ("train", "validation", "test"):
        tokenize_split(backbone.tokenizer, dataset, split, config.max_length)
    return time.perf_counter() - start


def start_warm_up(config: RunConfig | None = None) -> threading.Thread | None:
    """Warm up once per process and configuration, in a daemon thread; failures are only logged
    (the run that needs the same thing will report it properly)."""
    config = config or RunConfig()
    key = (config.backbone, config.dataset, config.max_length)
    with _lock:
        if key in _started:
            return None
        _started.add(key)

    def work() -> None:
        try:
            last_seconds[key] = warm_up(config)
        except Exception as exc:  # noqa: BLE001 - a warm-up never fails the app
            log.info("warm-up for %s skipped: %s", key, exc)

    thread = threading.Thread(target=work, name="lab-warm-up", daemon=True)
    thread.start()
    return thread
