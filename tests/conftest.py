"""Shared fixtures: an isolated runs folder per test and helpers that train tiny runs for real."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network

# A tiny, fast run: tiny-random backbone, a packaged dataset, few short steps.
TINY = dict(
    backbone="tiny-random",
    dataset="sms-spam",
    steps=6,
    batch_size=8,
    max_length=32,
    eval_every=3,
    max_train_examples=256,
    max_eval_examples=64,
    seed=0,
)


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "runs"
    monkeypatch.setenv("LAB_RUNS_DIR", str(path))
    return path


@pytest.fixture
def store(runs_dir):
    from app.store import RunStore

    return RunStore(runs_dir)


def tiny_config(**overrides) -> dict:
    config = dict(TINY)
    config.update(overrides)
    return config


def train_now(store, **overrides) -> dict:
    """Store a tiny run and train it in this thread; returns its final record."""
    from app.preparation import prepare_run
    from app.runner import execute_run

    config = tiny_config(**overrides)
    prepared = prepare_run(config, store)
    run_id = store.create_run(prepared.config.as_dict())
    return execute_run(store, run_id, prepared=prepared)


@pytest.fixture(scope="session")
def session_store(tmp_path_factory):
    """A store shared by tests that only read finished runs (trained once per session)."""
    from app.store import RunStore

    return RunStore(tmp_path_factory.mktemp("shared-runs"))


@pytest.fixture(scope="session")
def finished_full_ft(session_store) -> dict:
    record = train_now(session_store, method="full_ft", steps=12, eval_every=6)
    assert record["status"] == "finished", record.get("error")
    return record


# The easy two-class task of the method matrices (tests/test_method_matrix.py, tests/test_precision.py).
EASY_WORDS = ("wonderful", "terrible")


@pytest.fixture(scope="session")
def easy_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("easy") / "easy.csv"
    lines = ["text,label"] + [
        f"the film was {EASY_WORDS[i % 2]} said person {i},{i % 2}" for i in range(240)
    ]
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="session")
def matrix_store(tmp_path_factory):
    from app.store import RunStore

    return RunStore(tmp_path_factory.mktemp("matrix-runs"))
