"""Background jobs that are not training runs (compression sweeps), owned by the process.

A job runs in its own thread and reports progress through plain attributes that pages read; it
never touches streamlit. The board keeps finished jobs so a page opened later (or in another tab)
still sees how a sweep ended.
"""

from __future__ import annotations

import atexit
import itertools
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

from app.errors import LabError, RunCancelled


@dataclass
class Job:
    id: int
    kind: str
    run_id: str
    title: str
    status: str = "running"  # running, finished, failed, cancelled
    message: str = "starting"
    fraction: float | None = None
    error: str | None = None
    traceback: str | None = None
    result: object = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.status == "running"

    def report(self, *args, **kwargs) -> None:
        """Progress callback accepting `(message)`, `(done, total)`, `(done, total, message)`
        or keyword forms, so an engine function can report in whichever shape it uses."""
        if self.cancel_event.is_set():
            raise RunCancelled()
        numbers = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
        texts = [a for a in args if isinstance(a, str)]
        done = kwargs.get("done", numbers[0] if len(numbers) >= 2 else None)
        total = kwargs.get("total", numbers[1] if len(numbers) >= 2 else None)
        if done is not None and total:
            self.fraction = max(0.0, min(1.0, float(done) / float(total)))
        elif len(numbers) == 1 and 0.0 <= numbers[0] <= 1.0:
            self.fraction = float(numbers[0])
        message = kwargs.get("message") or (texts[0] if texts else None)
        if message:
            self.message = message


class JobBoard:
    def __init__(self):
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        atexit.register(self.stop_for_exit)

    def stop_for_exit(self, timeout: float = 20.0) -> None:
        """At process exit: running jobs are cancelled at their next progress report and joined,
        so no job thread is inside torch while the interpreter tears down."""
        running = self.active()
        for job in running:
            job.cancel_event.set()
        for job in running:
            if job.thread is not None:
                job.thread.join(timeout=timeout)

    def start(self, kind: str, run_id: str, title: str, target: Callable[[Job], object]) -> Job:
        """Run `target(job)` in a daemon thread; its return value becomes `job.result`."""
        with self._lock:
            running = [j for j in self._jobs.values() if j.active and j.kind == kind and j.run_id == run_id]
            if running:
                return running[0]
            job = Job(id=next(self._ids), kind=kind, run_id=run_id, title=title)
            self._jobs[job.id] = job

        def work():
            try:
                job.result = target(job)
                job.status = "finished"
                job.message = "done"
                job.fraction = 1.0
            except RunCancelled:
                job.status = "cancelled"
                job.message = "cancelled"
            except LabError as exc:
                job.status = "failed"
                job.error = str(exc)
            except Exception as exc:  # a failed sweep must never take the app down
                job.status = "failed"
                job.error = f"{type(exc).__name__}: {exc}"
                job.traceback = traceback.format_exc()
            finally:
                job.finished_at = time.time()

        job.thread = threading.Thread(target=work, name=f"lab-job-{job.id}", daemon=True)
        job.thread.start()
        return job

    def jobs(self, run_id: str | None = None, kind: str | None = None) -> list[Job]:
        with self._lock:
            items = list(self._jobs.values())
        return sorted(
            (j for j in items if (run_id is None or j.run_id == run_id) and (kind is None or j.kind == kind)),
            key=lambda j: j.started_at,
            reverse=True,
        )

    def active(self) -> list[Job]:
        return [j for j in self.jobs() if j.active]

    def wait(self, job: Job, timeout: float | None = None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while job.active:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job.id} still running after {timeout}s")
            time.sleep(0.05)
        return job
