"""Process-wide resources shared by every page and browser session, and small display helpers.

The run manager and the job board are `st.cache_resource` singletons keyed by the runs folder:
runs and compression sweeps belong to them (and to the store), never to a browser session, so
they keep going across page switches, reloads and second tabs.

Importing this module stays light (no torch, no transformers): the entry script and Home import
it, and a fresh server must draw Home before anything heavy runs. The run manager and the
warm-up start in the background once the first page has drawn (`start_after_first_draw`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import threading
from pathlib import Path

import streamlit as st

from app.store import RunStore
from components.jobs import JobBoard

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MIB = 1024 * 1024

# Material icons ship with streamlit (emoji glyphs depend on the viewer's fonts); markdown only.
STATUS_ICONS = {
    "queued": ":material/hourglass_empty:",
    "running": ":material/play_circle:",
    "finished": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/cancel:",
    "interrupted": ":material/warning:",
}

# Runs folders whose manager exists, and those whose background start has begun.
_managers: dict[str, object] = {}
_started: set[str] = set()
_start_lock = threading.Lock()


def runs_dir() -> str:
    # app.manager.default_runs_dir says the same (a test holds them together); importing it here
    # would import torch and transformers with app.manager, 3.4 s on two cores, before any page draws
    return str(Path(os.environ.get("LAB_RUNS_DIR") or "runs").expanduser().resolve())


def _build_manager(path: str):
    # imported here: app.manager imports torch and transformers, 3.4 s on two cores, and a fresh
    # server's first page must draw first
    from app.manager import get_manager
    from app.warmup import start_warm_up

    # the app's first run would otherwise pay the imports and tokenization before its first step
    start_warm_up()
    manager = get_manager(path)
    _managers[path] = manager
    return manager


@st.cache_resource(show_spinner=False)
def _manager(path: str):
    return _build_manager(path)


def start_after_first_draw() -> None:
    """Build the run manager (which marks runs a stopped process left behind) and start the warm-up
    in a background thread, once per runs folder. The entry script calls this after the page has
    drawn, so nothing heavy delays a fresh server's first page; a page that needs the manager
    sooner builds it itself (`get_manager_for_app`), and both get the same one."""
    path = runs_dir()
    with _start_lock:
        if path in _started:
            return
        _started.add(path)

    def work() -> None:
        try:
            _build_manager(path)
        except Exception as exc:  # noqa: BLE001 - the page that needs the manager reports it
            log.warning("run manager for %s not started in the background: %s", path, exc)

    threading.Thread(target=work, name="lab-start-up", daemon=True).start()


@st.cache_resource(show_spinner=False)
def _job_board(path: str):
    return JobBoard()


def get_manager_for_app():
    return _manager(runs_dir())


def get_store():
    return get_manager_for_app().store


@st.cache_resource(show_spinner=False)
def _plain_store(path: str) -> RunStore:
    return RunStore(path)


def read_runs() -> list[dict]:
    """Every run, newest first, read without waiting for the run manager: through its store once
    it exists, otherwise straight from the runs folder (Home on a fresh server). Until the manager
    has started, runs a stopped process left queued or running still carry that status."""
    path = runs_dir()
    manager = _managers.get(path)
    return (manager.store if manager is not None else _plain_store(path)).list_runs()


def get_job_board():
    """Background jobs (compression sweeps) of this process for the current runs folder."""
    return _job_board(runs_dir())


LAUNCH_FORM_KEYS = ("launch.backbone", "launch.dataset", "launch.device", "launch.method", "launch.open")


def keep_launch_form() -> None:
    """Streamlit forgets a widget's value once a script run does not draw it, so a visit to
    another page would reset the Launch form to its defaults. Assigning the values back before
    any widget is drawn makes them plain session state, which survives page switches."""
    keys = list(st.session_state.keys())
    settings: set[str] = set()
    if any(key.startswith("run.") for key in keys):  # never on a first visit
        from dataclasses import fields

        # imported here: app.config imports torch (through app.batching), 1 to 1.5 s on two cores,
        # and a first visit must draw before anything imports it
        from app.config import RunConfig

        settings = {f"run.{f.name}" for f in fields(RunConfig)}
    for key in keys:
        if key in settings or key in LAUNCH_FORM_KEYS or key.startswith("method."):
            st.session_state[key] = st.session_state[key]


def page_setup() -> None:
    """Shared look and state of every page (called once per script run by the entry script)."""
    css = ASSETS / "style.css"
    if css.exists():
        st.html(f"<style>{css.read_text()}</style>")
    keep_launch_form()


# --- reading runs -----------------------------------------------------------------------------


def list_runs(**filters) -> list[dict]:
    return get_store().list_runs(**filters)


def finished_runs(method: str | None = None) -> list[dict]:
    return list_runs(status="finished", method=method)


@st.cache_data(show_spinner=False, ttl=600)
def method_titles() -> dict[str, str]:
    # imported on first use: it loads torch (1.0 s here), which a page's first draw does not wait for
    from app.methods import describe_methods

    return {m["name"]: m["title"] for m in describe_methods()}


def method_title(name: str) -> str:
    return method_titles().get(name, name)


# --- formatting -------------------------------------------------------------------------------


def fmt_mib(value) -> str:
    return "–" if value is None else f"{value / MIB:,.1f} MiB"


def fmt_count(value) -> str:
    if value is None:
        return "–"
    if value >= 1e6:
        return f"{value / 1e6:,.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:,.1f}k"
    return f"{value:,}"


def fmt_pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def fmt_seconds(value) -> str:
    if value is None:
        return "–"
    value = float(value)
    if value < 60:
        return f"{value:.0f} s"
    minutes, seconds = divmod(int(round(value)), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def fmt_time(timestamp) -> str:
    if not timestamp:
        return "–"
    return _dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def run_label(record: dict) -> str:
    """One line naming a run in pickers: id, method, backbone, dataset, status."""
    name = f" “{record['name']}”" if record.get("name") else ""
    dataset = Path(record["dataset"]).name if "/" in record["dataset"] else record["dataset"]
    # Nothing that changes over a run's life (its status): a selectbox keeps showing the label its
    # choice had when picked, even after the options are relabelled.
    return f"{record['id']}{name} · {record['method']}{precision_suffix(run_precision(record))} · {record['backbone']} · {dataset}"


def run_precision(record: dict) -> str:
    """How a run stored its frozen backbone (runs from before the setting: fp32)."""
    return (record.get("config") or {}).get("backbone_precision", "fp32")


def precision_suffix(precision: str) -> str:
    """' int8' for a frozen backbone stored below fp32, else nothing."""
    return "" if precision == "fp32" else f" {precision}"


def short_run_label(record: dict) -> str:
    """A compact name for chips of multiselects and chart legends."""
    return f"{record['method']}{precision_suffix(run_precision(record))} · {record['id'][-6:]}"


def run_link(run_id: str) -> str:
    """A relative link to the Run page that works from any page of the app."""
    return f"run?run={run_id}"
