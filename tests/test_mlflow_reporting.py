"""Reporting runs to MLflow, against a real `mlflow server` on this machine (127.0.0.1 only).

A real server rather than a mock: what matters is what an MLflow user reads back (params, metric
histories with their steps, status, artifacts), and that a server that is not there costs nothing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, train_now

MLFLOW = Path(sys.executable).parent / "mlflow"
# Set by the reporter for its own process when the user has not; restored after every test.
REPORTER_ENV = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A tracking server in its own process group (it starts a uvicorn worker), stopped as a group."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The job runner would start seven huey consumer processes that these tests never use.
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log = open(folder / "server.log", "wb")
    server = subprocess.Popen(
        [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts")],
        cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        # The server takes seconds to boot: load what the first run needs meanwhile.
        import app.training  # noqa: F401
        import mlflow.tracking  # noqa: F401

        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited ({server.returncode}): {(folder / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer in 120 s: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.25)
        yield url
    finally:
        if _group_alive(server.pid):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        # The worker may outlive the process that started it for a moment.
        for _ in range(100):
            if not _group_alive(server.pid):
                break
            time.sleep(0.1)
        else:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


@pytest.fixture
def mlflow_env(monkeypatch, request):
    """Point MLflow at `uri` with an experiment of this test's own; the reporter's own settings of
    the environment are undone afterwards."""
    for name in REPORTER_ENV:
        monkeypatch.setenv(name, "")  # records the old value so that the undo restores it
        monkeypatch.delenv(name)

    def use(uri: str) -> str:
        experiment = f"lab-{request.node.name}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
        return experiment

    return use


def steps_of(history) -> list[int]:
    return sorted(metric.step for metric in history)


def test_a_run_reads_back_from_mlflow_as_it_trained(store, mlflow_server, mlflow_env, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    experiment = mlflow_env(mlflow_server)
    record = train_now(store, method="full_ft", steps=3, eval_every=2, report_to="mlflow", name="mirrored")
    assert record["status"] == "finished", record.get("error")
    reporting = record["summary"]["reporting"]
    assert reporting["ok"] is True, reporting["note"]
    assert reporting["tracking_uri"] == mlflow_server and reporting["experiment"] == experiment
    assert reporting["url"].startswith(mlflow_server)
    assert "View run" not in capsys.readouterr().out  # the CLI's stdout stays one JSON line

    client = MlflowClient(mlflow_server)
    run = client.get_run(reporting["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "mirrored"
    assert client.get_experiment(run.info.experiment_id).name == experiment
    params, tags = run.data.params, run.data.tags
    assert params["method"] == "full_ft" and params["batch_size"] == "8" and params["steps"] == "3"
    assert params["report_to"] == "mlflow"
    assert int(params["trainable_params"]) == record["summary"]["trainable_params"]
    assert "method_config.classifier_dropout" in params  # resolved method settings, defaults included
    assert tags["method"] == "full_ft" and tags["backbone"] == "tiny-random" and tags["dataset"] == "sms-spam"
    assert tags["lab_run_id"] == record["id"] and tags["lab_status"] == "finished"

    losses = client.get_metric_history(run.info.run_id, "loss")
    assert steps_of(losses) == [1, 2, 3]
    stored = {row["step"]: row["loss"] for row in store.steps(record["id"])}
    assert {m.step: m.value for m in losses} == pytest.approx(stored)
    for name in ("lr", "examples_per_second", "tokens_per_second", "memory_peak_bytes", "memory_activations_bytes"):
        assert steps_of(client.get_metric_history(run.info.run_id, name)) == [1, 2, 3], name
    assert steps_of(client.get_metric_history(run.info.run_id, "validation_accuracy")) == [2, 3]
    assert steps_of(client.get_metric_history(run.info.run_id, "validation_loss")) == [2, 3]
    test_accuracy = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert [(m.step, m.value) for m in test_accuracy] == [(3, pytest.approx(record["metrics"]["test_accuracy"]))]
    assert run.data.metrics["val_accuracy"] == pytest.approx(record["metrics"]["val_accuracy"])
    assert run.data.metrics["overall_examples_per_second"] == pytest.approx(record["metrics"]["examples_per_second"])
    assert run.data.metrics["memory_breakdown.weights"] == record["metrics"]["memory_breakdown"]["weights"]

    top = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"lab_run.json", "model"} <= top
    model_files = {Path(item.path).name for item in client.list_artifacts(run.info.run_id, "model")}
    assert {"config.json", "model.safetensors"} <= model_files
    saved = json.loads(Path(client.download_artifacts(run.info.run_id, "lab_run.json", str(tmp_path))).read_text())
    assert saved["run"]["id"] == record["id"] and saved["run"]["status"] == "finished"
    assert len(saved["steps"]) == 3 and {e["split"] for e in saved["evals"]} == {"validation", "test"}


def test_a_server_that_is_not_there_costs_the_run_nothing(store, mlflow_env):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    mlflow_env(uri)
    started = time.monotonic()
    train_now(store, steps=3, eval_every=3)
    plain_seconds = time.monotonic() - started
    started = time.monotonic()
    record = train_now(store, steps=3, eval_every=3, report_to="mlflow")
    reported_seconds = time.monotonic() - started

    assert record["status"] == "finished", record.get("error")
    assert len(store.steps(record["id"])) == 3 and record["metrics"]["test_accuracy"] is not None
    reporting = record["summary"]["reporting"]
    assert reporting["ok"] is False and reporting["mlflow_run_id"] is None
    assert uri in reporting["note"] and "unreachable" in reporting["note"]
    assert "went on without it" in reporting["note"]
    # Loose on purpose: one refused connection, not MLflow's default minutes of retries.
    assert reported_seconds < plain_seconds + 20, (plain_seconds, reported_seconds)


def test_a_server_that_never_answers_is_given_up_on(store, mlflow_env, monkeypatch):
    with socket.socket() as hung:  # accepts connections (the kernel's backlog) and never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        uri = f"http://127.0.0.1:{hung.getsockname()[1]}"
        mlflow_env(uri)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")  # the user's own setting wins over the lab's
        started = time.monotonic()
        record = train_now(store, steps=3, eval_every=3, report_to="mlflow")
        elapsed = time.monotonic() - started
    assert record["status"] == "finished", record.get("error")
    reporting = record["summary"]["reporting"]
    assert reporting["ok"] is False and uri in reporting["note"] and "timed out" in reporting["note"]
    assert elapsed < 60


def test_a_failed_run_ends_failed_in_mlflow(store, mlflow_server, mlflow_env, monkeypatch):
    from mlflow.tracking import MlflowClient

    from app.methods.full_ft import FullFineTuning

    def explode(self, model, batch, state):
        if state.step == 2:
            raise RuntimeError("boom inside the method")
        return FullFineTuning.__mro__[1].training_step(self, model, batch, state)

    monkeypatch.setattr(FullFineTuning, "training_step", explode)
    mlflow_env(mlflow_server)
    record = train_now(store, steps=3, report_to="mlflow")
    assert record["status"] == "failed"
    reporting = record["summary"]["reporting"]
    assert reporting["ok"] is True, reporting["note"]

    client = MlflowClient(mlflow_server)
    run = client.get_run(reporting["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["lab_status"] == "failed" and "boom inside the method" in run.data.tags["lab_error"]
    assert steps_of(client.get_metric_history(run.info.run_id, "loss")) == [1]
    top = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert "lab_run.json" in top and "model" not in top  # only a finished run has a model to export


def test_the_launch_forms_checkbox_reports_the_run(runs_dir, mlflow_server, mlflow_env, monkeypatch):
    """The Launch page's checkbox all the way to MLflow: form, manager, training thread, server."""
    from mlflow.tracking import MlflowClient
    from streamlit.testing.v1 import AppTest

    from app import manager as manager_module
    from app.manager import get_manager
    from app.store import RunStore
    from conftest import ROOT

    mlflow_env(mlflow_server)
    before = set(manager_module._managers)
    try:
        at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=240)
        at.switch_page("../pages/launch.py")
        at.run()
        at.button(key="preset.1").click().run()  # the tiny smoke test
        at.number_input(key="run.steps").set_value(3).run()
        at.checkbox(key="launch.open").uncheck().run()
        box = at.checkbox(key="run.report_to_mlflow")
        assert box.label == "Report to MLflow" and "MLFLOW_TRACKING_URI" in box.help and box.value is False
        box.check().run()
        at.button(key="launch.submit").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        [run] = RunStore(runs_dir).list_runs()
        assert run["config"]["report_to"] == "mlflow"
        get_manager(runs_dir).wait(run["id"], timeout=180)
        # The run's status is final before the reporter closes (training never waits on MLflow).
        deadline = time.monotonic() + 90
        while "reporting" not in (record := RunStore(runs_dir).get_run(run["id"]))["summary"]:
            assert time.monotonic() < deadline, "the reporter never recorded its outcome"
            time.sleep(0.1)
        at.query_params["run"] = run["id"]
        at.switch_page("../pages/run.py").run()
        assert not at.exception, [e.value for e in at.exception]
        assert any(c.value.startswith("MLflow: reported to MLflow at") for c in at.caption), \
            [c.value for c in at.caption]
    finally:
        for path in set(manager_module._managers) - before:
            manager_module._managers.pop(path).shutdown(wait=True, cancel_running=True)
    assert record["status"] == "finished", record.get("error")
    reporting = record["summary"]["reporting"]
    assert reporting["ok"] is True, reporting["note"]
    assert MlflowClient(mlflow_server).get_run(reporting["mlflow_run_id"]).info.status == "FINISHED"


def test_train_report_to_mlflow_under_torchrun_makes_one_mlflow_run(tmp_path, mlflow_server, mlflow_env):
    """The CLI flag as a user types it, on 2 data-parallel processes: rank 0 alone reports."""
    from mlflow.tracking import MlflowClient

    from app.store import RunStore

    experiment = mlflow_env(mlflow_server)
    runs_dir = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "app", "train",
         "--runs-dir", str(runs_dir), "--backbone", "tiny-random", "--dataset", "sms-spam", "--steps", "4",
         "--batch-size", "8", "--max-length", "32", "--eval-every", "2", "--max-train-examples", "64",
         "--max-eval-examples", "32", "--device", "cpu", "--quiet", "--json", "--report-to", "mlflow"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    [record] = RunStore(runs_dir).list_runs()
    assert record["summary"]["reporting"]["ok"] is True, record["summary"]["reporting"]["note"]
    client = MlflowClient(mlflow_server)
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["processes"] == "2" and run.data.tags["lab_run_id"] == record["id"]
    assert steps_of(client.get_metric_history(run.info.run_id, "loss")) == [1, 2, 3, 4]
