"""The run store: one SQLite database in WAL mode inside the runs folder, plus a folder per run.

Every write commits at once, so a run is readable while it trains (WAL lets readers in other
threads and processes see committed rows without blocking the writer) and everything written
before a crash survives it. Values are plain JSON; nothing here ever unpickles anything.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import LabError, RunNotFound

STATUSES = ("queued", "running", "finished", "failed", "cancelled", "interrupted")
ACTIVE_STATUSES = ("queued", "running")
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
DB_NAME = "lab.sqlite3"
TABLES = ("runs", "steps", "evals", "telemetry", "records")  # a run's rows: `runs`, then those keyed by run_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    status TEXT NOT NULL,
    method TEXT NOT NULL,
    backbone TEXT NOT NULL,
    dataset TEXT NOT NULL,
    config TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    traceback TEXT,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    phase TEXT NOT NULL DEFAULT '',
    owner_pid INTEGER,
    owner_token TEXT,
    chain_id TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    elapsed REAL NOT NULL,
    loss REAL,
    lr REAL,
    examples_per_second REAL,
    peak_bytes INTEGER,
    data TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS evals (
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    split TEXT NOT NULL,
    accuracy REAL,
    macro_f1 REAL,
    loss REAL,
    data TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, split, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS telemetry (
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, kind, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    created_at REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, kind, key)
) WITHOUT ROWID;
"""


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"telemetry must be plain data, got {type(value).__name__}")


def _clean(value):
    """JSON has no NaN/inf: store them as null so every reader can parse the row."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def to_json(value) -> str:
    plain = json.loads(json.dumps(value, default=_json_default))
    return json.dumps(_clean(plain), separators=(",", ":"), allow_nan=False)


def _finite(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def process_token(pid: int | None = None) -> str:
    """Identifies a process beyond its pid (pids are reused): pid plus its start time."""
    pid = pid or os.getpid()
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            start_ticks = handle.read().rsplit(")", 1)[1].split()[19]
        return f"{pid}:{start_ticks}"
    except OSError:
        return f"{pid}:?"


def process_alive(pid: int, token: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if token and not token.endswith(":?"):
        return process_token(pid) == token
    return True


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id):
        raise RunNotFound(f"'{run_id}' is not a valid run id (letters, digits, '-' and '_' only)")
    return run_id


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class StoreError(LabError):
    """The store could not be written (disk full, database locked too long, ...)."""


class RunStore:
    def __init__(self, runs_dir: str | os.PathLike, *, busy_timeout: float = 30.0):
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.runs_dir / DB_NAME
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        # Final statuses that could not be written (disk full, database locked): readers in this
        # process still see the truth, and the next successful write records them.
        self._deferred_final: dict[str, tuple[str, str | None, str | None, float]] = {}
        self._deferred_lock = threading.Lock()
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                self._conn().executescript(SCHEMA)
                break
            except sqlite3.OperationalError as exc:
                # Two processes opening a new store at once (the processes of a data-parallel run):
                # switching to WAL does not wait on SQLite's busy handler, so wait here.
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise StoreError(f"cannot open the run store in {self.runs_dir}: {exc}") from exc
                self.close()
                time.sleep(0.05)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the run store in {self.runs_dir}: {exc}") from exc

    # -- connections ------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=True)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def _write(self):
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise StoreError(self._explain(exc)) from exc
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise

    def _explain(self, exc: sqlite3.Error) -> str:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return (f"the run store could not be written ({text}): another process held it for over "
                    f"{self.busy_timeout:g} s")
        if "full" in text:
            return f"the run store could not be written ({text}): free some disk space in {self.runs_dir}"
        return f"the run store could not be written ({text})"

    def _read(self, sql: str, params=()) -> list[sqlite3.Row]:
        return self._conn().execute(sql, params).fetchall()

    # -- runs -------------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        path = (self.runs_dir / check_run_id(run_id)).resolve()
        if path.parent != self.runs_dir:
            raise RunNotFound(f"'{run_id}' is not a valid run id")
        return path

    def create_run(self, config: dict, *, run_id: str | None = None, chain_id: str | None = None) -> str:
        run_id = check_run_id(run_id or new_run_id())
        with self._write() as conn:
            conn.execute(
                "INSERT INTO runs (id, name, created_at, status, method, backbone, dataset, config, total_steps,"
                " owner_pid, owner_token, chain_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    config.get("name") or "",
                    time.time(),
                    "queued",
                    config["method"],
                    config["backbone"],
                    config["dataset"],
                    to_json(config),
                    int(config.get("steps") or 0),
                    os.getpid(),
                    process_token(),
                    chain_id,
                ),
            )
        return run_id

    def set_status(self, run_id: str, status: str, *, error: str | None = None, traceback: str | None = None) -> None:
        assert status in STATUSES, status
        now = time.time()
        if status not in ACTIVE_STATUSES:
            try:
                self._write_final(run_id, status, error, traceback, now)
            except StoreError:
                with self._deferred_lock:
                    self._deferred_final[run_id] = (status, error, traceback, now)
                raise
            return
        with self._write() as conn:
            if status == "running":
                conn.execute(
                    "UPDATE runs SET status=?, started_at=?, owner_pid=?, owner_token=? WHERE id=?",
                    (status, now, os.getpid(), process_token(), run_id),
                )
            else:
                conn.execute("UPDATE runs SET status=? WHERE id=?", (status, run_id))
        self.flush_deferred()

    def _write_final(self, run_id, status, error, traceback, when) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE runs SET status=?, finished_at=?, error=?, traceback=? WHERE id=?",
                (status, when, error, traceback, run_id),
            )

    def flush_deferred(self) -> None:
        """Write final statuses that an earlier failure kept in memory."""
        with self._deferred_lock:
            pending = list(self._deferred_final.items())
        for run_id, (status, error, traceback, when) in pending:
            try:
                self._write_final(run_id, status, error, traceback, when)
            except StoreError:
                return
            with self._deferred_lock:
                self._deferred_final.pop(run_id, None)

    def update_run(self, run_id: str, **fields) -> None:
        allowed = {"summary", "metrics", "step", "total_steps", "phase", "name"}
        assert set(fields) <= allowed, fields
        assignments, values = [], []
        for key, value in fields.items():
            assignments.append(f"{key}=?")
            values.append(to_json(value) if key in ("summary", "metrics") else value)
        with self._write() as conn:
            conn.execute(f"UPDATE runs SET {', '.join(assignments)} WHERE id=?", (*values, run_id))

    def merge_summary(self, run_id: str, **items) -> None:
        with self._write() as conn:
            row = conn.execute("SELECT summary FROM runs WHERE id=?", (run_id,)).fetchone()
            summary = json.loads(row["summary"]) if row else {}
            summary.update(items)
            conn.execute("UPDATE runs SET summary=? WHERE id=?", (to_json(summary), run_id))

    def mark_orphans_interrupted(self) -> list[str]:
        """Runs left queued or running by a process that no longer exists become `interrupted`."""
        orphans = [
            row["id"]
            for row in self._read("SELECT id, owner_pid, owner_token FROM runs WHERE status IN ('queued','running')")
            if not process_alive(row["owner_pid"] or -1, row["owner_token"])
        ]
        for run_id in orphans:
            with self._write() as conn:
                conn.execute(
                    "UPDATE runs SET status='interrupted', finished_at=?, error=? WHERE id=? AND status IN ('queued','running')",
                    (time.time(), "the process running this run stopped before it ended", run_id),
                )
        return orphans

    def _run_row(self, row: sqlite3.Row) -> dict:
        run = dict(row)
        for key in ("config", "summary", "metrics"):
            run[key] = json.loads(run[key]) if run[key] else {}
        deferred = self._deferred_final.get(run["id"])
        if deferred is not None:
            run["status"], run["error"], run["traceback"], run["finished_at"] = deferred
        return run

    def get_run(self, run_id: str) -> dict:
        check_run_id(run_id)
        rows = self._read("SELECT * FROM runs WHERE id=?", (run_id,))
        if not rows:
            raise RunNotFound(f"no run '{run_id}' in {self.runs_dir}")
        return self._run_row(rows[0])

    def has_run(self, run_id: str) -> bool:
        return bool(RUN_ID_PATTERN.match(run_id or "")) and bool(self._read("SELECT 1 FROM runs WHERE id=?", (run_id,)))

    def list_runs(self, *, status: str | None = None, method: str | None = None, limit: int | None = None) -> list[dict]:
        sql, params = "SELECT * FROM runs", []
        clauses = []
        if status:
            clauses.append("status=?")
            params.append(status)
        if method:
            clauses.append("method=?")
            params.append(method)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY created_at DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [self._run_row(row) for row in self._read(sql, params)]

    def delete_run(self, run_id: str) -> None:
        import shutil

        run = self.get_run(run_id)
        if run["status"] in ACTIVE_STATUSES:
            raise LabError(f"run '{run_id}' is {run['status']}; cancel it before deleting")
        with self._write() as conn:
            for table in ("steps", "evals", "telemetry", "records"):
                conn.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))
            conn.execute("DELETE FROM runs WHERE id=?", (run_id,))
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    # -- series ------------------------------------------------------------------------------
    def log_step(self, run_id: str, step: int, *, elapsed: float, loss: float, lr: float,
                 examples_per_second: float, memory: dict | None = None, data: dict | None = None,
                 telemetry: dict | None = None, total_steps: int | None = None, phase: str | None = None) -> None:
        """One training step, its optional telemetry and the run's progress, in one transaction."""
        payload = dict(data or {})
        if memory is not None:
            payload["memory"] = memory
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO steps (run_id, step, elapsed, loss, lr, examples_per_second, peak_bytes, data)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (run_id, step, elapsed, _finite(loss), _finite(lr), _finite(examples_per_second),
                 memory.get("peak") if memory else None, to_json(payload)),
            )
            if telemetry:
                conn.execute(
                    "INSERT OR REPLACE INTO telemetry (run_id, step, kind, data) VALUES (?,?,?,?)",
                    (run_id, step, "step", to_json(telemetry)),
                )
            if phase is not None:
                conn.execute("UPDATE runs SET step=?, phase=? WHERE id=?", (step, phase, run_id))
            else:
                conn.execute("UPDATE runs SET step=? WHERE id=?", (step, run_id))
            if total_steps is not None:
                conn.execute("UPDATE runs SET total_steps=? WHERE id=?", (total_steps, run_id))

    def log_eval(self, run_id: str, step: int, split: str, metrics: dict, telemetry: dict | None = None) -> None:
        extra = {k: v for k, v in metrics.items() if k not in ("accuracy", "macro_f1", "loss")}
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO evals (run_id, step, split, accuracy, macro_f1, loss, data) VALUES (?,?,?,?,?,?,?)",
                (run_id, step, split, _finite(metrics.get("accuracy")), _finite(metrics.get("macro_f1")),
                 _finite(metrics.get("loss")), to_json(extra)),
            )
            if telemetry:
                conn.execute(
                    "INSERT OR REPLACE INTO telemetry (run_id, step, kind, data) VALUES (?,?,?,?)",
                    (run_id, step, f"eval:{split}", to_json(telemetry)),
                )

    def log_telemetry(self, run_id: str, step: int, kind: str, data: dict) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO telemetry (run_id, step, kind, data) VALUES (?,?,?,?)",
                (run_id, step, kind, to_json(data)),
            )

    def steps(self, run_id: str, *, after: int = 0) -> list[dict]:
        rows = self._read("SELECT * FROM steps WHERE run_id=? AND step>? ORDER BY step", (run_id, after))
        out = []
        for row in rows:
            item = dict(row)
            item.update(json.loads(item.pop("data")))
            item.pop("run_id")
            out.append(item)
        return out

    def evals(self, run_id: str, split: str | None = None) -> list[dict]:
        sql = "SELECT * FROM evals WHERE run_id=?"
        params: list = [run_id]
        if split:
            sql += " AND split=?"
            params.append(split)
        out = []
        for row in self._read(sql + " ORDER BY step", params):
            item = dict(row)
            item.update(json.loads(item.pop("data")))
            item.pop("run_id")
            out.append(item)
        return out

    def telemetry(self, run_id: str, kind: str = "step", *, after: int = 0) -> list[dict]:
        rows = self._read(
            "SELECT step, data FROM telemetry WHERE run_id=? AND kind=? AND step>? ORDER BY step", (run_id, kind, after)
        )
        return [{"step": row["step"], **json.loads(row["data"])} for row in rows]

    def telemetry_kinds(self, run_id: str) -> list[str]:
        return [row["kind"] for row in self._read("SELECT DISTINCT kind FROM telemetry WHERE run_id=?", (run_id,))]

    # -- records (compression sweeps and other per-run results) -------------------------------
    def put_record(self, run_id: str, kind: str, key: str, data: dict) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO records (run_id, kind, key, created_at, data) VALUES (?,?,?,?,?)",
                (run_id, kind, key, time.time(), to_json(data)),
            )

    def records(self, run_id: str, kind: str) -> list[dict]:
        rows = self._read(
            "SELECT key, created_at, data FROM records WHERE run_id=? AND kind=? ORDER BY created_at, key", (run_id, kind)
        )
        return [{"key": row["key"], "created_at": row["created_at"], **json.loads(row["data"])} for row in rows]

    def records_of_kind(self, kind: str, *, key: str | None = None) -> list[dict]:
        """Records of one kind over every run, newest first (optionally only those with this key)."""
        sql = "SELECT run_id, key, created_at, data FROM records WHERE kind=?"
        params: tuple = (kind,)
        if key is not None:
            sql, params = sql + " AND key=?", (kind, key)
        rows = self._read(sql + " ORDER BY created_at DESC, run_id", params)
        return [{"run_id": row["run_id"], "key": row["key"], "created_at": row["created_at"], **json.loads(row["data"])}
                for row in rows]

    # -- whole runs, row for row (run bundles) ------------------------------------------------
    def table_columns(self) -> dict[str, list[str]]:
        return {table: [row["name"] for row in self._read(f"PRAGMA table_info({table})")] for table in TABLES}

    def raw_rows(self, run_id: str) -> dict[str, list[dict]]:
        """Every row of a run in every table, column for column as stored (JSON columns as text)."""
        self.get_run(run_id)
        out = {"runs": [dict(row) for row in self._read("SELECT * FROM runs WHERE id=?", (run_id,))]}
        for table in TABLES[1:]:
            out[table] = [dict(row) for row in self._read(f"SELECT * FROM {table} WHERE run_id=?", (run_id,))]
        return out

    def insert_raw_rows(self, runs: list[dict[str, list[dict]]]) -> None:
        """Rows written by `raw_rows` (of another store), every run in one transaction: all of them
        or none. Columns must be this store's; a run id already here is refused."""
        columns = self.table_columns()
        for rows in runs:
            for table, items in rows.items():
                if table not in columns:
                    raise LabError(f"unknown table '{table}'")
                for item in items:
                    unknown = set(item) - set(columns[table])
                    if unknown:
                        raise LabError(f"unknown column(s) {', '.join(sorted(unknown))} in table '{table}'")
        with self._write() as conn:
            for rows in runs:
                for table in TABLES:
                    for item in rows.get(table, []):
                        names = list(item)
                        conn.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                                     [item[n] for n in names])

    def integrity_ok(self) -> bool:
        return self._read("PRAGMA integrity_check")[0][0] == "ok"
