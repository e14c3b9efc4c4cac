"""Reporting a run to an MLflow tracking server, beside the lab's own store.

The lab's store stays the source of truth; MLflow gets a copy. Hence the rules here:

* Nothing MLflow does may slow down or break training. Every MLflow call runs in one background
  daemon thread fed by a queue; the training loop only appends to that queue. Metrics are sent in
  batches (a few requests a minute, not one per step).
* A tracking server that is down, slow or refuses us is noted once, in the run's summary
  (`summary.reporting`) and on stderr, and the run goes on without it: the first failure ends
  reporting for that run, so a dead server costs one short timeout, not one per step.
* `Reporter.close()` is bounded in time and never raises: the run has already ended by then.

MLflow is configured the way its users expect: MLFLOW_TRACKING_URI (else MLflow's own default)
and MLFLOW_EXPERIMENT_NAME (else MLFLOW_EXPERIMENT_ID, else MLflow's "Default" experiment).
Only the client is needed (mlflow-skinny) when the URI names a tracking server.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from .config import RunConfig
from .store import RunStore, to_json

# The lab's final statuses as MLflow's terminal ones; anything unknown (a store that failed) is FAILED.
TERMINAL_STATUS = {"finished": "FINISHED", "failed": "FAILED", "cancelled": "KILLED", "interrupted": "KILLED"}
# MLflow's defaults (120 s timeout, 7 retries with exponential backoff) would let one dead server hold
# a run's end for many minutes. Applied to this process only where the user has not chosen their own.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    # MLflow prints "View run ... at: URL" to stdout when a run ends, which would break the CLI's
    # one-JSON-line output; the URL goes into the run's summary instead.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
CLOSE_TIMEOUT_S = 60.0  # the longest close() waits for MLflow to take what is queued
FLUSH_EVERY_S = 5.0  # metrics wait at most this long for a batch to fill
BATCH_METRICS = 1000  # MLflow's own per-request limit for log_batch
MAX_QUEUED = 100_000  # a stalled server must not grow memory without bound: later metrics are dropped
ARTIFACT_RECORD = "lab_run.json"
ARTIFACT_MODEL = "model"
MEMORY_PARTS = ("peak", "weights", "quantized", "gradients", "optimizer", "activations", "loss", "cuda_max_allocated")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def open_reporter(store: RunStore, run_id: str, config: RunConfig,
                  export_model: Callable[[Path], object] | None = None) -> "Reporter":
    """A reporter for this run; starts talking to MLflow in the background and never raises.
    `export_model(folder)` writes the finished run's model into a folder, which is uploaded."""
    try:
        return Reporter(store, run_id, config, export_model=export_model)
    except Exception as exc:  # a broken reporter must not cost the run
        return Reporter.disabled(store, run_id, f"reporting could not start: {type(exc).__name__}: {exc}")


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _metric_name(name: str) -> str:
    return _NAME_CHARS.sub("_", str(name))[:250]


def _param_value(value) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def config_params(config: RunConfig) -> dict[str, str]:
    """The run's settings as MLflow params; method settings flattened so each one can be filtered on."""
    values = config.as_dict()
    params = {name: _param_value(value) for name, value in values.items() if name != "method_config"}
    for name, value in (values.get("method_config") or {}).items():
        params[f"method_config.{name}"] = _param_value(value)
    return params


def safe_uri(uri: str | None) -> str | None:
    """The URI without user name and password, fit for a summary and a note."""
    if not uri:
        return uri
    try:
        parts = urlsplit(uri)
        if parts.username or parts.password:
            host = parts.hostname or ""
            netloc = host + (f":{parts.port}" if parts.port else "")
            return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        pass
    return uri


def _unreachable(exc: BaseException) -> bool:
    """Whether the failure means no server answered (as opposed to a server that refused us)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name = type(exc).__name__
        if name in ("ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "MaxRetryError",
                    "NewConnectionError", "ConnectionRefusedError", "TimeoutError"):
            return True
        text = str(exc)
        if "Max retries exceeded" in text or "Failed to establish a new connection" in text or "timed out" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _reason(exc: BaseException) -> str:
    """The gist of an MLflow failure: the OS-level cause where there is one, else its first line."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\][^\"'()]*", text)
    if found:
        return found.group(0).strip()
    if "timed out" in text.lower():
        return "timed out"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first if len(first) <= 300 else first[:297] + "..."


class MirroredStore:
    """The run store as `train` sees it: every call goes to the real store; the series that MLflow
    shows are also queued for the reporter. The real store is written first so that its errors
    surface exactly as without reporting."""

    def __init__(self, store: RunStore, reporter: "Reporter"):
        object.__setattr__(self, "_store", store)
        object.__setattr__(self, "_reporter", reporter)

    def __getattr__(self, name):
        if name in ("_store", "_reporter"):  # not set yet (copy, pickle): no endless recursion
            raise AttributeError(name)
        return getattr(self._store, name)

    def __setattr__(self, name, value):
        setattr(self._store, name, value)

    def log_step(self, run_id: str, step: int, **fields) -> None:
        self._store.log_step(run_id, step, **fields)
        self._reporter.step(run_id, step, fields)

    def log_eval(self, run_id: str, step: int, split: str, metrics: dict, telemetry: dict | None = None) -> None:
        self._store.log_eval(run_id, step, split, metrics, telemetry)
        self._reporter.evaluated(run_id, step, split, metrics)

    def merge_summary(self, run_id: str, **items) -> None:
        self._store.merge_summary(run_id, **items)
        self._reporter.summarised(run_id, items)

    def update_run(self, run_id: str, **fields) -> None:
        self._store.update_run(run_id, **fields)
        if "metrics" in fields:
            self._reporter.final_metrics(run_id, fields["metrics"])


class Reporter:
    """Mirrors one lab run to one MLflow run. `store` goes to `train`; `close()` after the run ends."""

    close_timeout_s = CLOSE_TIMEOUT_S
    flush_every_s = FLUSH_EVERY_S

    def __init__(self, store: RunStore, run_id: str, config: RunConfig, *, start: bool = True,
                 export_model: Callable[[Path], object] | None = None):
        self.real_store = store
        self.run_id = run_id
        self.config = config
        self.export_model = export_model
        self.store = MirroredStore(store, self)
        self.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or None  # the worker fills in MLflow's default
        self.experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or None
        self.experiment_id: str | None = None
        self.mlflow_run_id: str | None = None
        self.url: str | None = None
        self.error: str | None = None  # the first failure; nothing more is sent after it
        self.unreachable = False
        self.terminated = False
        self.dropped = 0
        self._closed = False
        self._abandoned = False  # close() stopped waiting: the worker must not start anything new
        self._queue: queue.Queue = queue.Queue()
        self._sent_params: dict[str, str] = {}
        self._last_metric: dict[str, tuple[int, float]] = {}
        self._last_step = 0
        self._step_series: set[str] = set()
        self._thread: threading.Thread | None = None
        if not start:
            return
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        self._params(config_params(config))
        self._thread = threading.Thread(target=self._work, name=f"mlflow-report-{run_id}", daemon=True)
        self._thread.start()
        # execute_run re-raises a KeyboardInterrupt without calling close(): mark the MLflow run
        # KILLED on the way out rather than leave it RUNNING forever.
        atexit.register(self._at_exit)

    @classmethod
    def disabled(cls, store: RunStore, run_id: str, note: str) -> "Reporter":
        """A reporter that sends nothing; close() records `note` as the reason."""
        reporter = cls(store, run_id, RunConfig(), start=False)
        reporter.store = store  # nothing to mirror: train talks to the store directly
        reporter.error = note
        return reporter

    # -- the training side: cheap, never raises ------------------------------------------------
    @property
    def active(self) -> bool:
        return self._thread is not None and self.error is None and not self._closed

    def _put(self, kind: str, payload) -> None:
        if kind == "metrics" and self._queue.qsize() >= MAX_QUEUED:
            self.dropped += len(payload)
            return
        self._queue.put((kind, payload))

    def _metrics(self, values: dict, step: int) -> None:
        now = int(time.time() * 1000)
        batch = []
        for name, value in values.items():
            number = _number(value)
            if number is None:
                continue
            name = _metric_name(name)
            self._last_metric[name] = (step, number)
            batch.append((name, number, now, step))
        if batch:
            self._put("metrics", batch)

    def _params(self, params: dict) -> None:
        fresh = {}
        for name, value in params.items():
            name = _metric_name(name)
            value = _param_value(value)[:6000]
            if name in self._sent_params:
                continue  # MLflow refuses to change a param; the first value stays
            self._sent_params[name] = value
            fresh[name] = value
        if fresh:
            self._put("params", fresh)

    def step(self, run_id: str, step: int, fields: dict) -> None:
        if run_id != self.run_id or not self.active:
            return
        try:
            self._last_step = max(self._last_step, step)
            values = {name: fields.get(name) for name in ("loss", "lr", "examples_per_second")}
            data = fields.get("data") or {}
            values["tokens_per_second"] = data.get("tokens_per_second")
            values["step_seconds"] = data.get("step_seconds")
            for term, value in (data.get("terms") or {}).items():
                values[f"loss_{term}"] = value
            for part in MEMORY_PARTS:
                values[f"memory_{part}_bytes"] = (fields.get("memory") or {}).get(part)
            self._step_series.update(_metric_name(name) for name in values)
            self._metrics(values, step)
        except Exception:  # mirroring is best effort; the store already has the step
            pass

    def evaluated(self, run_id: str, step: int, split: str, metrics: dict) -> None:
        if run_id != self.run_id or not self.active:
            return
        try:
            self._metrics({f"{split}_{name}": value for name, value in metrics.items()}, step)
        except Exception:
            pass

    def summarised(self, run_id: str, items: dict) -> None:
        """What the run resolved at its start (parameter counts, the learning rate and device it
        really uses, every method setting with its default) becomes params, filterable in MLflow."""
        if run_id != self.run_id or not self.active:
            return
        try:
            params = {}
            for name in ("trainable_params", "total_params"):
                if name in items:
                    params[name] = items[name]
            for name in ("lr", "device", "bf16"):
                if name in items:
                    params[f"{name}_used"] = items[name]
            for name, value in (items.get("method_config") or {}).items():
                params[f"method_config.{name}"] = value  # ones set in the config were sent first and stay
            self._params(params)
        except Exception:
            pass

    def final_metrics(self, run_id: str, metrics: dict) -> None:
        if run_id != self.run_id or not self.active:
            return
        try:
            step = int(metrics.get("steps_done") or self._last_step)
            flat = {}
            for name, value in metrics.items():
                if isinstance(value, dict):
                    flat.update({f"{name}.{k}": v for k, v in value.items()})
                else:
                    flat[name] = value
            fresh = {}
            for name, value in flat.items():
                if self._last_metric.get(_metric_name(name)) == (step, _number(value)):
                    continue  # test_accuracy and the like: just logged by the final evaluation
                if _metric_name(name) in self._step_series:
                    name = f"overall_{name}"  # a whole-run figure must not join the per-step series
                fresh[name] = value
            self._metrics(fresh, step)
        except Exception:
            pass

    # -- the worker thread: the only place that talks to MLflow -------------------------------
    def _work(self) -> None:
        client = None
        try:
            client = self._start()
        except Exception as exc:
            self._fail("starting the MLflow run", exc)
        try:
            self._loop(client)
        except Exception as exc:  # a bug here must still end up in the note, not in a silent thread
            self._fail("reporting", exc)

    def _loop(self, client) -> None:
        metrics: list = []
        params: dict = {}
        last_flush = time.monotonic()

        def flush():
            nonlocal metrics, params, last_flush
            if (metrics or params) and client is not None:
                batch_metrics, batch_params = metrics, params
                self._call("sending metrics", lambda: self._send(client, batch_metrics, batch_params))
            metrics, params, last_flush = [], {}, time.monotonic()

        while True:
            wait = max(0.05, self.flush_every_s - (time.monotonic() - last_flush))
            try:
                kind, payload = self._queue.get(timeout=wait)
            except queue.Empty:
                flush()
                continue
            if kind == "metrics":
                metrics.extend(payload)
                if len(metrics) >= BATCH_METRICS:
                    flush()
            elif kind == "params":
                params.update(payload)
            elif kind == "finish":
                flush()
                if client is not None:
                    self._finish(client, payload)
            elif kind == "stop":
                return

    def _start(self):
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient()  # resolves MLFLOW_TRACKING_URI, or MLflow's default, itself
        self.tracking_uri = client.tracking_uri
        if self.experiment:
            experiment = client.get_experiment_by_name(self.experiment)
            if experiment is None:
                try:
                    self.experiment_id = client.create_experiment(self.experiment)
                except MlflowException:  # another run created it meanwhile
                    experiment = client.get_experiment_by_name(self.experiment)
                    if experiment is None:
                        raise
                    self.experiment_id = experiment.experiment_id
            else:
                self.experiment_id = experiment.experiment_id
        else:
            experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
            experiment = client.get_experiment(experiment_id) if experiment_id else \
                client.get_experiment_by_name("Default")
            if experiment is None:
                raise RuntimeError("no experiment given (MLFLOW_EXPERIMENT_NAME) and no 'Default' experiment")
            self.experiment_id, self.experiment = experiment.experiment_id, experiment.name
        config = self.config
        tags = {"method": config.method, "backbone": config.backbone, "dataset": config.dataset,
                "lab_run_id": self.run_id}
        run = client.create_run(self.experiment_id, tags=tags, run_name=config.name or self.run_id)
        self.mlflow_run_id = run.info.run_id
        if str(self.tracking_uri).startswith(("http://", "https://")):
            base = safe_uri(str(self.tracking_uri)).rstrip("/")
            self.url = f"{base}/#/experiments/{self.experiment_id}/runs/{self.mlflow_run_id}"
        return client

    def _send(self, client, metrics: list, params: dict, tags: dict | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        client.log_batch(
            self.mlflow_run_id,
            metrics=[Metric(name, value, timestamp, step) for name, value, timestamp, step in metrics],
            params=[Param(name, value) for name, value in params.items()],
            tags=[RunTag(name, value) for name, value in (tags or {}).items()],
        )

    def _finish(self, client, payload: dict) -> None:
        if payload.get("tags"):
            self._call("tagging the run", lambda: self._send(client, [], {}, payload["tags"]))
        folder = payload.get("artifacts")
        if folder:
            self._call("uploading artifacts", lambda: client.log_artifacts(self.mlflow_run_id, folder))
        # A server that answered gets told how the run ended even after an earlier refusal (a run
        # left RUNNING forever misleads more than a missing metric); a silent one is not tried again.
        if self.mlflow_run_id and not self.unreachable and not self._abandoned:
            try:
                client.set_terminated(self.mlflow_run_id, payload["status"])
                self.terminated = True
            except Exception as exc:
                self._fail("ending the MLflow run", exc)

    def _call(self, what: str, action) -> None:
        if self.error is not None or self._abandoned:
            return
        try:
            action()
        except Exception as exc:
            self._fail(what, exc)

    def _fail(self, what: str, exc: BaseException) -> None:
        if self.error is not None:
            return
        uri = safe_uri(self.tracking_uri) or "MLflow's default tracking URI"
        remote = str(self.tracking_uri or "").startswith(("http://", "https://", "databricks"))
        if isinstance(exc, ImportError) and (getattr(exc, "name", None) or "").split(".")[0] == "mlflow":
            note = "mlflow is not installed (pip install -r requirements.txt brings mlflow-skinny)"
        elif isinstance(exc, ImportError) or (not remote and "unsupported URI" in str(exc)):
            # mlflow-skinny (what the lab installs) speaks to tracking servers only; MLflow's default,
            # a local sqlite:///mlflow.db, needs the full package.
            reason = _reason(exc) if isinstance(exc, ImportError) else "mlflow-skinny has no local stores"
            note = (f"MLflow cannot use {uri} with the packages installed ({reason}): set MLFLOW_TRACKING_URI "
                    f"to a tracking server (http://host:port), or pip install mlflow for a local store")
        elif _unreachable(exc):
            self.unreachable = True
            note = f"tracking server at {uri} unreachable: {_reason(exc)}"
        else:
            note = f"MLflow at {uri} failed while {what}: {_reason(exc)}"
        self.error = note + "; the run went on without it"
        try:
            print(f"[lab] run {self.run_id}: {self.error}", file=sys.stderr)
        except Exception:
            pass

    # -- the end ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Send the run's end to MLflow (status, record, exported model), wait a bounded time for it,
        and record in the run's summary what happened. Never raises."""
        if self._closed:
            return
        self._closed = True
        try:
            atexit.unregister(self._at_exit)
        except Exception:
            pass
        try:
            self._close()
        except Exception as exc:
            self.error = self.error or f"reporting could not finish: {type(exc).__name__}: {exc}"
            self._record()

    def _close(self) -> None:
        deadline = time.monotonic() + self.close_timeout_s
        store = self.real_store
        record = None
        try:
            record = store.get_run(self.run_id)
        except Exception:
            pass
        lab_status = (record or {}).get("status")
        export_note = None
        folder = None
        if self._thread is not None:
            tags = {"lab_status": str(lab_status)}
            if record and record.get("error"):
                tags["lab_error"] = str(record["error"])[:5000]
            if self.error is None:  # no need to build artifacts for a server that is gone
                folder = Path(tempfile.mkdtemp(prefix="lab-mlflow-"))
                export_note = self._write_artifacts(folder, record, lab_status)
            self._queue.put(("finish", {"status": TERMINAL_STATUS.get(lab_status, "FAILED"), "tags": tags,
                                        "artifacts": str(folder) if folder else None}))
            self._queue.put(("stop", None))
            self._thread.join(max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive():
                self._abandoned = True
                if self.error is None:
                    self.error = (f"MLflow at {safe_uri(self.tracking_uri)} did not take everything within "
                                  f"{self.close_timeout_s:g} s; the MLflow run may be incomplete")
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        self._record(export_note)

    def _write_artifacts(self, folder: Path, record: dict | None, lab_status: str | None) -> str | None:
        """The run's full record as JSON and, for a finished run, its exported model. Returns a note
        when the model could not be exported (the rest is still reported)."""
        store = self.real_store
        try:
            full = {"run": record, "steps": store.steps(self.run_id), "evals": store.evals(self.run_id)}
            (folder / ARTIFACT_RECORD).write_text(to_json(full))
        except Exception as exc:
            return f"the run's record was not uploaded: {type(exc).__name__}: {exc}"
        if lab_status != "finished" or self.export_model is None:
            return None
        try:
            self.export_model(folder / ARTIFACT_MODEL)
        except Exception as exc:
            shutil.rmtree(folder / ARTIFACT_MODEL, ignore_errors=True)
            return f"the model was not uploaded: it could not be exported ({type(exc).__name__}: {exc})"
        return None

    def _record(self, extra_note: str | None = None) -> None:
        ok = self.error is None and self.terminated
        if ok:
            note = (f"reported to MLflow at {safe_uri(self.tracking_uri)}, experiment '{self.experiment}', "
                    f"run {self.mlflow_run_id}")
        else:
            note = self.error or "the MLflow run was not ended"
        if extra_note:
            note += f"; {extra_note}"
        if self.dropped:
            note += f"; {self.dropped} metric values were dropped while the server lagged behind"
        summary = {"to": "mlflow", "tracking_uri": safe_uri(self.tracking_uri), "experiment": self.experiment,
                   "experiment_id": self.experiment_id, "mlflow_run_id": self.mlflow_run_id, "url": self.url,
                   "ok": ok, "note": note}
        try:
            self.real_store.merge_summary(self.run_id, reporting=summary)
        except Exception as exc:  # the store itself failed: at least say it where someone can see it
            try:
                print(f"[lab] run {self.run_id}: could not record the MLflow report ({exc}): {note}", file=sys.stderr)
            except Exception:
                pass

    def _at_exit(self) -> None:
        """The process ends before close() ran: tell MLflow the run was killed, briefly."""
        if self._closed or self._thread is None:
            return
        self._closed = True
        try:
            self._queue.put(("finish", {"status": "KILLED", "tags": {"lab_status": "interrupted"}}))
            self._queue.put(("stop", None))
            self._thread.join(5.0)
        except Exception:
            pass
