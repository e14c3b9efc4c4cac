"""The process-wide run manager: a queue, worker threads, start, cancel, status.

Runs belong to the manager and the store, not to whoever submitted them: a browser tab that
closes or a page that reloads changes nothing. A chain (e.g. "fine-tune a predecessor, then
Theseus it") is one queue item whose runs execute in order; a run whose reference did not
finish is failed with that reason instead of starting.
"""

from __future__ import annotations

import atexit
import os
import queue
import signal
import subprocess
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from .config import RunConfig
from .distributed import CANCEL_REQUEST, launch_command, launch_environment
from .errors import ConfigError, LabError
from .preparation import PreparedRun, prepare_run
from .run_refs import resolve_role_refs
from .runner import execute_run
from .store import ACTIVE_STATUSES, RunStore, new_run_id
from .training import LoopHooks

DEFAULT_RUNS_DIR = "runs"
# How long processes asked to stop get to record it before they are ended by signal.
STOP_GRACE_S = 30.0
PROCESS_LOG = "processes.log"


def default_runs_dir() -> Path:
    return Path(os.environ.get("LAB_RUNS_DIR") or DEFAULT_RUNS_DIR)


@dataclass
class _QueueItem:
    run_ids: list[str]


class RunManager:
    def __init__(self, store: RunStore, workers: int = 1):
        self.store = store
        self.interrupted_at_start = store.mark_orphans_interrupted()
        self._queue: queue.Queue[_QueueItem | None] = queue.Queue()
        self._cancel: dict[str, threading.Event] = {}
        self._prepared: dict[str, PreparedRun] = {}
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"lab-worker-{i}", daemon=True) for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    # -- submitting ---------------------------------------------------------------------------
    def submit(self, config: RunConfig | dict) -> str:
        """Check a run's configuration, store it as queued and enqueue it; returns its id."""
        return self.submit_chain({"run": config})["run"]

    def submit_chain(self, recipe: dict[str, RunConfig | dict]) -> dict[str, str]:
        """Queue runs by role that execute in order; a method setting "@role:NAME" names the run of
        an earlier role of the chain. Every run is checked before any is stored; returns the ids by role."""
        if not recipe:
            raise ConfigError("nothing to run")
        ids = {role: new_run_id() for role in recipe}
        roles = list(recipe)
        prepared_runs = []
        for position, (role, config) in enumerate(recipe.items()):
            values = config.as_dict() if isinstance(config, RunConfig) else dict(config)
            earlier = {r: ids[r] for r in roles[:position]}
            values["method_config"], _ = resolve_role_refs(dict(values.get("method_config") or {}), earlier, [],
                                                           whose=f"run '{role}' of the chain")
            prepared_runs.append(prepare_run(values, self.store, pending_ids=set(earlier.values())))  # raises before storing
        chain_id = ids[roles[0]] if len(roles) > 1 else None
        for role, prepared in zip(roles, prepared_runs):
            run_id = ids[role]
            self.store.create_run(prepared.config.as_dict(), run_id=run_id, chain_id=chain_id)
            with self._lock:
                self._cancel[run_id] = threading.Event()
                self._prepared[run_id] = prepared  # the worker trains it as checked here: no second preparation
        self._queue.put(_QueueItem([ids[role] for role in roles]))
        return ids

    # -- control ------------------------------------------------------------------------------
    def cancel(self, run_id: str) -> bool:
        """Ask a queued or running run to stop; True if it was active."""
        record = self.store.get_run(run_id)
        if record["status"] not in ACTIVE_STATUSES:
            return False
        with self._lock:
            event = self._cancel.get(run_id)
            running = run_id in self._running
        if event is None:
            # This manager forgets a run once it ends: one that ended after the status was read
            # above is simply no longer active. Only a run still active here is someone else's.
            if self.store.get_run(run_id)["status"] not in ACTIVE_STATUSES:
                return False
            raise LabError(f"run '{run_id}' belongs to another process; cancel it there")
        event.set()
        if not running and record["status"] == "queued":
            self.store.set_status(run_id, "cancelled", error="cancelled before it started")
        return True

    def status(self, run_id: str) -> str:
        return self.store.get_run(run_id)["status"]

    def active_ids(self) -> list[str]:
        with self._lock:
            return [rid for rid, event in self._cancel.items()]

    def is_busy(self) -> bool:
        return bool(self.active_ids())

    def wait(self, run_id: str, timeout: float | None = None) -> dict:
        """Block until a run reaches a final state (for tests and scripts)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.store.get_run(run_id)
            if record["status"] not in ACTIVE_STATUSES:
                return record
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {record['status']} after {timeout}s")
            time.sleep(0.05)

    def stop_for_exit(self, timeout: float = 20.0) -> None:
        """At process exit: running runs end as `interrupted` at their next step, and the worker
        threads are joined so no thread is inside torch while the interpreter tears down."""
        self._stopping.set()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=timeout)

    def shutdown(self, wait: bool = True, cancel_running: bool = True) -> None:
        if cancel_running:
            with self._lock:
                events = list(self._cancel.values())
            for event in events:
                event.set()
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join(timeout=60)

    # -- workers ------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            failed: dict[str, str] = {}
            for run_id in item.run_ids:
                try:
                    self._run_one(run_id, failed)
                except Exception as exc:  # the manager must outlive any run, and no run may stay queued
                    failed[run_id] = str(exc)
                    self._record_crash(run_id, exc)
                finally:
                    with self._lock:
                        self._cancel.pop(run_id, None)
                        self._prepared.pop(run_id, None)
                        self._running.discard(run_id)

    def _record_crash(self, run_id: str, exc: Exception) -> None:
        try:
            if self.store.get_run(run_id)["status"] in ACTIVE_STATUSES:
                self.store.set_status(run_id, "failed", error=f"the run manager could not run it: {exc!r}",
                                      traceback=traceback.format_exc())
        except Exception:  # the store itself is failing; the run is marked at the next start
            pass

    def _run_one(self, run_id: str, failed_in_chain: dict[str, str]) -> None:
        with self._lock:
            event = self._cancel.get(run_id)
            prepared = self._prepared.get(run_id)
        if event is None:
            return
        self.store.flush_deferred()
        record = self.store.get_run(run_id)
        if record["status"] != "queued":
            return  # cancelled while waiting
        if self._stopping.is_set():
            self.store.set_status(run_id, "interrupted", error="the app stopped before this run started")
            return
        blockers = [v for v in record["config"].get("method_config", {}).values()
                    if isinstance(v, str) and v in failed_in_chain]
        if blockers:
            self.store.set_status(
                run_id, "failed", error=f"run '{blockers[0]}' it builds on did not finish ({failed_in_chain[blockers[0]]})"
            )
            failed_in_chain[run_id] = "its reference did not finish"
            return
        with self._lock:
            self._running.add(run_id)
        if int(record["config"].get("processes") or 1) > 1:
            final = self._run_in_processes(run_id, int(record["config"]["processes"]), event)
        else:
            final = execute_run(self.store, run_id, LoopHooks(cancel=event, shutdown=self._stopping), prepared)
        if final.get("status") != "finished":
            failed_in_chain[run_id] = final.get("status", "failed")

    def _run_in_processes(self, run_id: str, processes: int, cancel: threading.Event) -> dict:
        """A data-parallel run: torchrun starts the processes, they write the store like any run,
        and this thread relays cancel / app exit through a file and ends them if they do not stop."""
        run_dir = self.store.run_dir(run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        log_path = run_dir / PROCESS_LOG
        with open(log_path, "ab") as log:
            child = subprocess.Popen(launch_command(run_id, self.store.runs_dir, processes), stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True, cwd=PROJECT_ROOT,
                                     env=launch_environment(processes))
        asked_at = None
        while child.poll() is None:
            if asked_at is None and (cancel.is_set() or self._stopping.is_set()):
                asked_at = time.monotonic()
                request = run_dir / (CANCEL_REQUEST + ".part")  # renamed whole: never read half-written
                request.write_text("interrupted" if self._stopping.is_set() else "cancelled", encoding="utf-8")
                request.replace(run_dir / CANCEL_REQUEST)
            if asked_at is not None and time.monotonic() - asked_at > STOP_GRACE_S:
                _end_process_group(child, signal.SIGTERM if time.monotonic() - asked_at < STOP_GRACE_S + 10
                                   else signal.SIGKILL)
            time.sleep(0.2)
        record = self.store.get_run(run_id)
        if record["status"] in ACTIVE_STATUSES:  # the processes died before recording an end
            tail = _last_lines(log_path)
            if asked_at is not None:
                status = "interrupted" if self._stopping.is_set() else "cancelled"
                self.store.set_status(run_id, status, error=f"ended after {STOP_GRACE_S:g} s without stopping")
            else:
                self.store.set_status(run_id, "failed", error=f"the {processes} training processes exited with "
                                                              f"code {child.returncode}: {tail}")
            record = self.store.get_run(run_id)
        return record


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _end_process_group(child: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(child.pid, sig)
    except ProcessLookupError:
        pass


def _last_lines(path: Path, count: int = 3) -> str:
    try:
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-count:])[-600:] or "(no output)"


_managers: dict[str, RunManager] = {}
_managers_lock = threading.Lock()


def get_manager(runs_dir: str | Path | None = None, workers: int | None = None) -> RunManager:
    """The one manager of this process for a runs folder (created on first use)."""
    path = str(Path(runs_dir or default_runs_dir()).expanduser().resolve())
    with _managers_lock:
        manager = _managers.get(path)
        if manager is None:
            count = workers if workers is not None else int(os.environ.get("LAB_WORKERS", "1"))
            manager = RunManager(RunStore(path), workers=count)
            _managers[path] = manager
            atexit.register(manager.stop_for_exit)
        return manager
