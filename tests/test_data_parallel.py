"""Data-parallel runs on the CPU: 2 processes with gloo under torchrun, as a user starts them.

The strongest check DDP allows: with dropout off, 2 processes sharing a global batch take the
same steps as 1 process with that batch, so their loss curves agree to rounding, for every method.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, tiny_config, train_now
from test_method_matrix import MATRIX, method_of

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
WORKER = str(ROOT / "tests" / "data_parallel_worker.py")
# Settings that turn off each method's own dropout (the backbone's is off in its folder).
NO_DROPOUT = {"full_ft": {"classifier_dropout": 0.0}, "truncate": {"classifier_dropout": 0.0},
              "distill": {"classifier_dropout": 0.0}, "lst": {"classifier_dropout": 0.0},
              "linear_probe": {"classifier_dropout": 0.0}, "lora": {"dropout": 0.0}}
# Distillation's hidden-state and attention terms are means over a batch's real tokens; DDP
# averages each process's mean, and shares of a batch hold different numbers of tokens, so its
# loss is the same quantity only up to that weighting (the gradient is DDP's, as in any trainer).
TOLERANCE = {"distill": 3e-3}


def torchrun(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(TORCHRUN + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    return result


@pytest.fixture(scope="module")
def no_dropout_backbone(tmp_path_factory) -> str:
    """tiny-random with its dropout off, as a local model folder (backbone folders load like any)."""
    from app.backbones import get_backbone

    folder = tmp_path_factory.mktemp("no-dropout") / "tiny-random-no-dropout"
    backbone = get_backbone("tiny-random")
    encoder = backbone.load_encoder()
    encoder.config.hidden_dropout_prob = 0.0
    encoder.config.attention_probs_dropout_prob = 0.0
    encoder.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    return str(folder)


def losses(store, run_id: str) -> list[float]:
    return [row["loss"] for row in store.steps(run_id)]


def test_every_method_takes_the_same_steps_on_two_processes_as_on_one(tmp_path, no_dropout_backbone):
    from app.store import RunStore

    store = RunStore(tmp_path / "runs")
    # batch 7 over 2 processes: unequal shares (4 + 3), and a smaller last batch in every epoch.
    base = tiny_config(backbone=no_dropout_backbone, steps=6, batch_size=7, max_train_examples=40,
                       eval_every=3, device="cpu")
    reference = train_now(store, **dict(base, method="full_ft", steps=20, lr=1e-3,
                                        method_config=NO_DROPOUT["full_ft"]))
    assert reference["status"] == "finished", reference.get("error")
    configs = []
    for row, (settings, run_settings) in MATRIX.items():  # a row is a method, or a method with a setting
        method = method_of(row)
        method_config = dict(settings, **NO_DROPOUT.get(method, {}))
        if method == "theseus":
            method_config["predecessor"] = reference["id"]
        if method == "distill":
            method_config["teacher"] = reference["id"]
        configs.append(dict(base, method=method, method_config=method_config, lr=run_settings["lr"],
                            name=f"ddp {row}"))
    configs_path = tmp_path / "configs.json"
    configs_path.write_text(json.dumps(configs))
    result = torchrun([WORKER, "runs", str(store.runs_dir), str(configs_path)])
    assert result.returncode == 0, result.stderr[-3000:]

    by_name = {run["name"]: run for run in store.list_runs()}
    for config in configs:
        method, row = config["method"], config["name"].removeprefix("ddp ")
        parallel = by_name[f"ddp {row}"]
        assert parallel["status"] == "finished", (method, parallel.get("error"))
        assert parallel["config"]["processes"] == 2
        ranks = parallel["summary"]["data_parallel"]["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1] and all(r["peak_memory_bytes"] > 0 for r in ranks), method
        assert len(store.evals(parallel["id"], "validation")) == 2  # evaluated once per eval step, by rank 0
        single = train_now(store, **dict(config, name=f"single {row}"))
        assert single["status"] == "finished", (method, single.get("error"))
        one, two = losses(store, single["id"]), losses(store, parallel["id"])
        assert len(one) == len(two) == 6, method
        assert max(abs(a - b) for a, b in zip(one, two)) < TOLERANCE.get(method, 1e-4), (method, one, two)
        if method not in TOLERANCE:
            assert parallel["metrics"]["test_accuracy"] == single["metrics"]["test_accuracy"], method


def test_a_process_that_fails_ends_the_run_failed_with_its_reason(tmp_path):
    from app.store import RunStore

    runs_dir = tmp_path / "runs"
    args = ["train", "--runs-dir", str(runs_dir), "--backbone", "tiny-random", "--dataset", "sms-spam",
            "--steps", "50", "--batch-size", "8", "--max-length", "32", "--max-train-examples", "128",
            "--max-eval-examples", "32", "--device", "cpu", "--quiet"]
    started = time.monotonic()
    result = torchrun([WORKER, "fail-at", "4", "--", *args], timeout=120)
    assert result.returncode != 0
    assert time.monotonic() - started < 60
    [run] = RunStore(runs_dir).list_runs()
    assert run["status"] == "failed"
    assert "process 1 failed: ValueError: a deliberate failure at step 4" in run["error"]
    assert run["step"] == 3  # no step is recorded past the failure


def test_a_killed_process_ends_the_run_failed_within_30_seconds(tmp_path):
    from app.store import RunStore

    runs_dir = tmp_path / "runs"
    args = ["-m", "app", "train", "--runs-dir", str(runs_dir), "--backbone", "tiny-random", "--dataset",
            "sms-spam", "--steps", "1000000", "--batch-size", "8", "--max-length", "32", "--max-train-examples",
            "128", "--max-eval-examples", "32", "--eval-every", "100000", "--device", "cpu", "--quiet"]
    launcher = subprocess.Popen(TORCHRUN + args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "log", "w"),
                                start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 120
        run = None
        while time.monotonic() < deadline:
            runs = RunStore(runs_dir).list_runs() if (runs_dir / "lab.sqlite3").exists() else []
            if runs and (runs[0].get("step") or 0) >= 3 and "data_parallel" in runs[0]["summary"]:
                run = runs[0]
                break
            time.sleep(0.2)
        assert run is not None, "the run never started"
        [rank_one] = [r["pid"] for r in run["summary"]["data_parallel"]["ranks"] if r["rank"] == 1]
        os.kill(rank_one, signal.SIGKILL)
        killed_at = time.monotonic()
        store = RunStore(runs_dir)
        while store.get_run(run["id"])["status"] == "running" and time.monotonic() - killed_at < 30:
            time.sleep(0.1)
        final = store.get_run(run["id"])
        assert final["status"] == "failed", final["status"]
        assert "2-process run" in final["error"]
        assert launcher.wait(timeout=60) != 0
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()


def test_the_app_runs_a_data_parallel_run_and_cancels_it_through_the_store(tmp_path, monkeypatch):
    from app.manager import RunManager
    from app.store import RunStore
    from test_ui_pages import open_app

    # As on a 4-core machine: each of the 2 processes gets 2 CPU threads, not torchrun's default of 1.
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("app.distributed.torch.get_num_threads", lambda: 4)
    manager = RunManager(RunStore(tmp_path / "runs"))
    try:
        finished = manager.wait(manager.submit(tiny_config(processes=2, device="cpu", steps=12)), timeout=180)
        assert finished["status"] == "finished", finished.get("error")
        assert finished["metrics"]["torch_threads"] == 2
        assert [row["step"] for row in manager.store.steps(finished["id"])] == list(range(1, 13))
        assert finished["summary"]["data_parallel"]["world_size"] == 2
        page = open_app(tmp_path / "runs", monkeypatch, page="run", query={"run": finished["id"]})
        assert any(c.value.startswith("Data-parallel: 2 processes (gloo)") for c in page.caption)
        assert any(m.value.endswith("· 2 processes") for m in page.markdown)

        long_run = manager.submit(tiny_config(processes=2, device="cpu", steps=1_000_000, eval_every=100_000))
        deadline = time.monotonic() + 120
        while not manager.store.steps(long_run) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert manager.cancel(long_run)
        cancelled = manager.wait(long_run, timeout=60)
        assert cancelled["status"] == "cancelled", cancelled.get("error")
        pids = [r["pid"] for r in cancelled["summary"]["data_parallel"]["ranks"]]
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in pids), "a training process outlived its cancelled run"

        stopping = manager.submit(tiny_config(processes=2, device="cpu", steps=1_000_000, eval_every=100_000))
        while not manager.store.steps(stopping) and time.monotonic() < deadline + 120:
            time.sleep(0.2)
        manager.stop_for_exit()  # the app exits: the run ends interrupted, its processes with it
        interrupted = manager.wait(stopping, timeout=60)
        assert interrupted["status"] == "interrupted", interrupted.get("error")
    finally:
        manager.shutdown()


def test_each_launched_process_gets_its_share_of_the_cpu_threads_unless_the_user_set_them(monkeypatch):
    from app.distributed import launch_environment

    monkeypatch.setattr("app.distributed.torch.get_num_threads", lambda: 16)
    assert launch_environment(2, {"PATH": "/bin"}) == {"PATH": "/bin", "OMP_NUM_THREADS": "8"}
    assert launch_environment(3, {})["OMP_NUM_THREADS"] == "5"
    assert launch_environment(32, {})["OMP_NUM_THREADS"] == "1"
    assert launch_environment(2, {"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


@pytest.mark.parametrize("overrides, message", [
    (dict(processes=2, batch_size=1), "cannot be shared by 2 processes"),
    (dict(processes=2, device="cuda"), "CUDA is not available"),
])
def test_a_data_parallel_run_that_cannot_work_is_refused_before_it_is_stored(store, overrides, message):
    from app.errors import ConfigError
    from app.manager import RunManager

    manager = RunManager(store)
    try:
        with pytest.raises(ConfigError, match=message):
            manager.submit(tiny_config(**overrides))
        assert store.list_runs() == []
    finally:
        manager.shutdown()


def test_train_outside_torchrun_refuses_a_run_set_for_several_processes(store):
    record = train_now(store, processes=2, device="cpu")
    assert record["status"] == "failed"
    assert "torchrun --nproc_per_node 2" in record["error"]


def test_accelerate_launch_runs_one_run_over_its_processes(tmp_path):
    """accelerate's multi-process launch starts torchrun's processes; the lab joins them the same way."""
    import socket

    from app.store import RunStore

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runs_dir = tmp_path / "runs"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend",
         "no", "-m", "app", "train", "--runs-dir", str(runs_dir), "--backbone", "tiny-random", "--dataset",
         "sms-spam", "--steps", "4", "--batch-size", "8", "--max-length", "32", "--max-train-examples", "64",
         "--max-eval-examples", "32", "--device", "cpu", "--quiet", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = RunStore(runs_dir).list_runs()
    assert run["status"] == "finished"
    assert run["summary"]["data_parallel"]["world_size"] == 2
    assert json.loads(result.stdout.strip().splitlines()[-1])["run_id"] == run["id"]  # rank 0 alone prints
