"""Faults and load: a failing method, out of memory, a full disk, a busy store, concurrent runs,
and a soak of many runs. The app must go on and the record must stay true."""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import torch

from conftest import tiny_config, train_now


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_failing_run_does_not_stop_the_next_one(store, monkeypatch):
    from app.manager import RunManager
    from app.methods.base import Method
    from app.methods.full_ft import FullFineTuning

    def fail_on_step_two(self, model, batch, state):
        if state.step == 2 and self.config.classifier_dropout == 0.3:
            raise ValueError("method exploded at step 2")
        return Method.training_step(self, model, batch, state)

    monkeypatch.setattr(FullFineTuning, "training_step", fail_on_step_two)
    manager = RunManager(store, workers=1)
    try:
        bad = manager.submit(tiny_config(method_config={"classifier_dropout": 0.3}))
        good = manager.submit(tiny_config())
        bad_record = manager.wait(bad, timeout=120)
        assert bad_record["status"] == "failed"
        assert "method exploded at step 2" in bad_record["error"]
        assert len(store.steps(bad)) == 1
        assert manager.wait(good, timeout=120)["status"] == "finished"
    finally:
        manager.shutdown()


def test_out_of_memory_fails_with_advice(store, monkeypatch):
    from app.methods.full_ft import FullFineTuning

    def out_of_memory(self, model, batch, state):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(FullFineTuning, "training_step", out_of_memory)
    record = train_now(store)
    assert record["status"] == "failed"
    assert "smaller batch size or max length" in record["error"]


def test_cpu_memory_error_is_reported_the_same_way(store, monkeypatch):
    from app.methods.full_ft import FullFineTuning

    def no_memory(self, model, batch, state):
        raise MemoryError()

    monkeypatch.setattr(FullFineTuning, "training_step", no_memory)
    record = train_now(store)
    assert record["status"] == "failed" and "out of memory" in record["error"]


def test_full_disk_while_writing_fails_the_run_cleanly(store, monkeypatch):
    """SQLite's page limit raises the same SQLITE_FULL error a full disk does."""
    from app.store import RunStore

    earlier = train_now(store)
    earlier_steps = store.steps(earlier["id"])

    original_conn = RunStore._conn
    limit = {"pages": None}

    def limited_conn(self):
        conn = original_conn(self)
        if limit["pages"] is not None:
            conn.execute(f"PRAGMA max_page_count={limit['pages']}")
        return conn

    monkeypatch.setattr(RunStore, "_conn", limited_conn)
    from app.preparation import prepare_run
    from app.runner import execute_run

    prepared = prepare_run(tiny_config(steps=400, eval_every=400), store)
    run_id = store.create_run(prepared.config.as_dict())
    page_count = store._conn().execute("PRAGMA page_count").fetchone()[0]
    limit["pages"] = page_count + 2  # room for a few steps, then "database or disk is full"
    record = execute_run(store, run_id, prepared=prepared)
    limit["pages"] = None
    store._conn().execute("PRAGMA max_page_count=1073741823")
    assert record["status"] == "failed", record
    assert "full" in record["error"] and "disk" in record["error"]
    store.flush_deferred()
    assert store.get_run(run_id)["status"] == "failed"
    assert store.get_run(earlier["id"])["metrics"] == earlier["metrics"]
    assert store.steps(earlier["id"]) == earlier_steps
    assert store.integrity_ok()


def test_busy_store_fails_the_run_cleanly(runs_dir):
    from app.store import RunStore
    from app.preparation import prepare_run
    from app.runner import execute_run

    store = RunStore(runs_dir, busy_timeout=0.5)
    earlier = train_now(store)
    prepared = prepare_run(tiny_config(steps=50, eval_every=50), store)
    run_id = store.create_run(prepared.config.as_dict())

    locked, release = threading.Event(), threading.Event()

    def hold_lock():  # another writer (say, a second app process) holding the database
        blocker = sqlite3.connect(store.db_path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(30)
        blocker.execute("COMMIT")
        blocker.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert locked.wait(5)
    try:
        record = execute_run(store, run_id, prepared=prepared)
    finally:
        release.set()
        holder.join()
    assert record["status"] == "failed"
    assert "could not be written" in record["error"]
    store.flush_deferred()
    assert RunStore(runs_dir).get_run(run_id)["status"] == "failed"
    assert RunStore(runs_dir).get_run(earlier["id"])["status"] == "finished"


def test_two_workers_keep_every_runs_numbers_apart(store):
    """Runs on different datasets and lengths, two at a time, read meanwhile by two readers."""
    from app.manager import RunManager
    from app.store import RunStore

    configs = [
        tiny_config(dataset="sms-spam", steps=8, batch_size=8),
        tiny_config(dataset="trec-6", steps=11, batch_size=4),
        tiny_config(dataset="sms-spam", steps=5, batch_size=16, max_length=16),
        tiny_config(dataset="trec-6", steps=7, batch_size=8, max_length=24),
    ]
    manager = RunManager(store, workers=2)
    readers_done = threading.Event()
    reads = {"count": 0, "errors": []}

    def reader():
        own = RunStore(store.runs_dir)
        while not readers_done.is_set():
            try:
                for run in own.list_runs():
                    own.steps(run["id"])
                    own.evals(run["id"])
                reads["count"] += 1
            except Exception as exc:  # any read error is a failure of the store
                reads["errors"].append(repr(exc))
            time.sleep(0.01)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        ids = [manager.submit(c) for c in configs]
        deadline = time.monotonic() + 60
        saw_two_running = False
        while time.monotonic() < deadline and not saw_two_running:
            saw_two_running = sum(store.get_run(i)["status"] == "running" for i in ids) == 2
            time.sleep(0.02)
        records = [manager.wait(i, timeout=300) for i in ids]
    finally:
        readers_done.set()
        for t in threads:
            t.join()
        manager.shutdown()
    assert saw_two_running
    assert reads["errors"] == [] and reads["count"] > 5
    for config, record in zip(configs, records):
        assert record["status"] == "finished", record.get("error")
        steps = store.steps(record["id"])
        assert [s["step"] for s in steps] == list(range(1, config["steps"] + 1))
        classes = 2 if config["dataset"] == "sms-spam" else 6
        assert len(record["summary"]["dataset"]["label_names"]) == classes
        assert record["summary"]["dataset"]["name"] == config["dataset"]
        test_eval = store.evals(record["id"], "test")
        assert len(test_eval) == 1 and test_eval[0]["examples"] == 64
        # the activation bytes scale with this run's own batch and length, not another run's
        activations = steps[0]["memory"]["activations"]
        per_token = activations / (config["batch_size"] * config["max_length"])
        assert 1_000 < per_token < 100_000


def test_soak_fifty_runs(store):
    from app.manager import RunManager

    manager = RunManager(store, workers=1)
    rss = {}
    try:
        ids = []
        for i in range(50):
            ids.append(manager.submit(tiny_config(steps=2, eval_every=2, max_train_examples=32,
                                                  max_eval_examples=16, seed=i)))
            if i == 4:
                for run_id in ids:
                    manager.wait(run_id, timeout=120)
                rss["after_5"] = _rss_bytes()
        records = [manager.wait(run_id, timeout=600) for run_id in ids]
        rss["after_50"] = _rss_bytes()
    finally:
        manager.shutdown()
    assert [r["status"] for r in records] == ["finished"] * 50
    assert store.integrity_ok()
    assert all(len(store.steps(r["id"])) == 2 for r in records)
    assert all(len(store.evals(r["id"], "test")) == 1 for r in records)
    growth = rss["after_50"] - rss["after_5"]
    print(f"RSS after 5 runs {rss['after_5'] / 2**20:.0f} MiB, after 50 runs {rss['after_50'] / 2**20:.0f} MiB "
          f"(growth {growth / 2**20:.0f} MiB)")
    assert growth < 150 * 2**20


def test_process_exit_interrupts_running_and_queued_runs_cleanly(tmp_path):
    """A process that exits (a stopped server) records its runs as interrupted on the way out."""
    import subprocess
    import sys
    from pathlib import Path

    from app.store import RunStore

    root = Path(__file__).resolve().parent.parent
    script = f"""
import sys, time
sys.path.insert(0, {str(root)!r}); sys.path.insert(0, {str(root / 'tests')!r})
from conftest import tiny_config
from app.manager import get_manager
manager = get_manager({str(tmp_path)!r})
running = manager.submit(tiny_config(steps=100000, eval_every=100000))
queued = manager.submit(tiny_config(steps=5))
while manager.store.get_run(running)["step"] < 2:
    time.sleep(0.05)
sys.exit(0)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr
    assert "terminate called" not in result.stderr
    runs = sorted(RunStore(tmp_path).list_runs(), key=lambda r: r["created_at"])
    assert [r["status"] for r in runs] == ["interrupted", "interrupted"]
    assert "stopped while this run was training" in runs[0]["error"]
    assert runs[0]["step"] >= 2 and len(RunStore(tmp_path).steps(runs[0]["id"])) == runs[0]["step"]


def test_process_exit_cancels_background_jobs_before_torch_tears_down(tmp_path):
    """A compression sweep still running when the server stops is cancelled and joined on the
    way out: the process exits 0 instead of aborting with a thread inside torch."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    script = f"""
import atexit, sys, time
sys.path.insert(0, {str(root)!r})
import torch
seen = {{}}
atexit.register(lambda: print("job status at exit:", seen["job"].status))  # runs after the board's stop
from components.jobs import JobBoard
board = JobBoard()

def sweep(job):
    weights = torch.randn(256, 256)
    for i in range(10**9):
        weights = torch.tanh(weights @ weights)
        job.report(i, 10**9, "sweeping")

seen["job"] = board.start("compress", "run-1", "endless sweep", sweep)
while seen["job"].message != "sweeping":
    time.sleep(0.01)
sys.exit(0)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "terminate called" not in result.stderr
    assert "job status at exit: cancelled" in result.stdout


def test_a_run_the_manager_cannot_start_is_recorded_failed_not_left_queued(store, monkeypatch):
    import app.manager as manager_module
    from conftest import tiny_config

    def crash(*args, **kwargs):
        raise RuntimeError("boom before the loop")

    monkeypatch.setattr(manager_module, "execute_run", crash)
    manager = manager_module.RunManager(store, workers=1)
    try:
        # a list-valued setting, as the Launch form sends for LoRA's target modules
        run_id = manager.submit(tiny_config(method="lora", method_config={"target_modules": ["query", "value"]}))
        final = manager.wait(run_id, timeout=60)
    finally:
        manager.shutdown()
    assert final["status"] == "failed"
    assert "boom before the loop" in final["error"]


def test_cancelling_a_run_that_ends_meanwhile_is_no_error_but_another_process_run_is(store, monkeypatch):
    """The manager forgets a run once it ends; a cancel that read it as running just before must
    answer "not active", not "belongs to another process"."""
    import pytest

    from app.errors import LabError
    from app.manager import RunManager

    manager = RunManager(store, workers=1)
    try:
        run_id = store.create_run(tiny_config(method="full_ft"))  # stored, but never queued in this manager
        store.set_status(run_id, "running")
        with pytest.raises(LabError, match="belongs to another process"):
            manager.cancel(run_id)
        real_get_run, reads = store.get_run, []

        def get_run(rid):  # the run ends between the first read and the second
            reads.append(rid)
            record = real_get_run(rid)
            return record if len(reads) == 1 else dict(record, status="finished")

        monkeypatch.setattr(store, "get_run", get_run)
        assert manager.cancel(run_id) is False
    finally:
        manager.shutdown(wait=True)


def test_threads_sharing_a_tokenizer_each_get_their_own_length():
    """A fast tokenizer keeps truncation and padding on its shared Rust object; parallel runs, predictions
    and exports encode through the lab's lock, so none gets another call's length (unlocked, 13 of 90
    such calls failed or came back at the wrong length here)."""
    from app.backbones import get_backbone
    from app.data import encode

    tokenizer = get_backbone("tiny-random").tokenizer
    texts = ["word " * n for n in range(5, 60)] * 20
    wrong = []

    def work(length: int) -> None:
        for _ in range(30):
            try:
                out = encode(tokenizer, texts, truncation=True, padding="max_length", max_length=length,
                             return_tensors="pt")
                if out["input_ids"].shape[1] != length:
                    wrong.append((length, out["input_ids"].shape[1]))
            except ValueError as exc:
                wrong.append((length, str(exc)[:80]))

    threads = [threading.Thread(target=work, args=(length,)) for length in (16, 24, 32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
