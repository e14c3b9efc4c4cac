"""Process-wide resources shared by every page and browser session, and small display helpers.

The run manager and the job board are `st.cache_resource` singletons keyed by the runs folder:
runs and compression sweeps belong to them (and to the store), never to a browser session, so
they keep going across page switches, reloads and second tabs.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import streamlit as st

from app.manager import default_runs_dir, get_manager
from app.warmup import start_warm_up
from app.store import ACTIVE_STATUSES

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


def runs_dir() -> str:
    return str(default_runs_dir().expanduser().resolve())


@st.cache_resource(show_spinner=False)
def _manager(path: str):
    # the app's first run would otherwise pay the imports and tokenization before its first step
    start_warm_up()
    return get_manager(path)


@st.cache_resource(show_spinner=False)
def _job_board(path: str):
    from components.jobs import JobBoard

    return JobBoard()


def get_manager_for_app():
    return _manager(runs_dir())


def get_store():
    return get_manager_for_app().store


def get_job_board():
    """Background jobs (compression sweeps) of this process for the current runs folder."""
    return _job_board(runs_dir())


LAUNCH_FORM_KEYS = ("launch.backbone", "launch.dataset", "launch.device", "launch.method", "launch.open")


def keep_launch_form() -> None:
    """Streamlit forgets a widget's value once a script run does not draw it, so a visit to
    another page would reset the Launch form to its defaults. Assigning the values back before
    any widget is drawn makes them plain session state, which survives page switches."""
    from dataclasses import fields

    from app.config import RunConfig

    settings = {f"run.{f.name}" for f in fields(RunConfig)}
    for key in list(st.session_state.keys()):
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


def active_runs() -> list[dict]:
    return [r for r in list_runs() if r["status"] in ACTIVE_STATUSES]


def finished_runs(method: str | None = None) -> list[dict]:
    return list_runs(status="finished", method=method)


@st.cache_data(show_spinner=False, ttl=600)
def method_titles() -> dict[str, str]:
    from app.methods import describe_methods

    return {m["name"]: m["title"] for m in describe_methods()}


def method_title(name: str) -> str:
    return method_titles().get(name, name)


def method_registered(name: str) -> bool:
    from app.methods import METHODS

    return name in METHODS


# --- formatting -------------------------------------------------------------------------------


def mib(value) -> float | None:
    return None if value is None else value / MIB


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
    return f"{record['id']}{name} · {record['method']} · {record['backbone']} · {dataset}"


def short_run_label(record: dict) -> str:
    """A compact name for chips of multiselects and chart legends."""
    return f"{record['method']} · {record['id'][-6:]}"


def run_link(run_id: str) -> str:
    """A relative link to the Run page that works from any page of the app."""
    return f"run?run={run_id}"
