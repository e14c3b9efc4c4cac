"""Running a stored run to its end: the run's status from queued to finished, failed (with its
reason and traceback) or cancelled, its optional tracking-server report, and the data-parallel
processes' share of that. The loop itself is `app.training.train`."""

from __future__ import annotations

import sys
import traceback

import torch

from .distributed import DataParallel, RankLost
from .errors import LabError, RunCancelled
from .export import export_run
from .preparation import PreparedRun, prepare_run
from .reporting import open_reporter
from .store import RunStore
from .training import LoopHooks, train

OOM_ADVICE = "out of memory: try a smaller batch size or max length, or a method that stores fewer activations (lst)"


def failure_message(exc: BaseException) -> str:
    if isinstance(exc, LabError):
        return str(exc)
    if isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in str(exc).lower() or isinstance(exc, MemoryError)
    )):
        return f"{OOM_ADVICE} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return f"{type(exc).__name__}: {exc}"


def execute_run(store: RunStore, run_id: str, hooks: LoopHooks | None = None, prepared: PreparedRun | None = None,
                world: DataParallel | None = None) -> dict:
    """Run a stored run to its end; never raises for a failed run, returns its final record.
    In a data-parallel run, the main process calls this and the others `train` alone."""
    hooks = hooks or LoopHooks()
    reporter = None
    try:
        record = store.get_run(run_id)
        if hooks.cancel.is_set():
            store.set_status(run_id, "cancelled", error="cancelled before it started")
            return store.get_run(run_id)
        store.set_status(run_id, "running")
        if prepared is None:
            prepared = prepare_run(record["config"], store)
        if prepared.config.report_to != "none":
            reporter = open_reporter(store, run_id, prepared.config,
                                     export_model=lambda folder: export_run(store, run_id, folder))
        train(prepared, reporter.store if reporter else store, run_id, hooks, world)
        store.set_status(run_id, "finished")
    except RunCancelled as stop:
        _final_status(store, run_id, stop.status, stop.reason, None)
    except BaseException as exc:  # a run's failure must never take the process down
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            _final_status(store, run_id, "cancelled", "interrupted from the keyboard", None)
            raise
        reason = world.explain(exc) if world is not None else exc
        _final_status(store, run_id, "failed", failure_message(reason), traceback.format_exc())
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if reporter is not None:
        reporter.close()  # final status, metrics and artifacts; bounded in time, never raises
    try:
        return store.get_run(run_id)
    except Exception:  # the store itself may be what failed
        return {"id": run_id, "status": "failed"}


def _final_status(store: RunStore, run_id: str, status: str, error: str, tb: str | None) -> None:
    try:
        store.set_status(run_id, status, error=error, traceback=tb)
    except Exception as exc:  # the store is unusable (disk full?): say so where someone can see it
        print(f"[lab] could not record run {run_id} as {status}: {exc}; reason: {error}", file=sys.stderr)


def run_on_every_rank(world: DataParallel, work):
    """Run `work()`; a failure on a process other than 0 leaves its reason for rank 0 and exits
    non-zero, so torchrun ends the rest."""
    try:
        return work()
    except BaseException as exc:
        if not world.is_main:
            world.leave_reason(failure_message(exc))
        raise


def prepare_on_every_rank(world: DataParallel, config, store):
    """Every process checks and loads the run; if one cannot, all stop with its reason (none waits
    forever for a process that already gave up)."""
    error: BaseException | None = None
    prepared = None
    try:
        prepared = prepare_run(config, store)
    except Exception as exc:
        error = exc
    if world.any(error is not None):
        raise error if error is not None else RankLost("another process could not prepare this run; see its message")
    prepared.device = world.device
    return prepared


def train_on_this_rank(world: DataParallel, store, run_id: str, prepared, hooks) -> dict | None:
    """Rank 0 runs the stored run to its final state (it never raises for a failed run); the
    others train alongside it and, when they fail, leave their reason and raise."""
    world.run_dir = store.run_dir(run_id)
    if world.is_main:
        world.fail_on_terminate()
        return execute_run(store, run_id, hooks, prepared, world)
    run_on_every_rank(world, lambda: train(prepared, store, run_id, hooks, world))
    return None
