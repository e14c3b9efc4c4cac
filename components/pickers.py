"""Run pickers kept in step with the URL (`?run=ID`, `?runs=A,B`), so links to a run work."""

from __future__ import annotations

import streamlit as st

from components.common import run_label, short_run_label


def _warn_unknown(param: str, ids: list[str]) -> None:
    """A link naming runs this lab does not hold (deleted, mistyped, another lab's) says so
    instead of silently showing something else."""
    if ids:
        shown = ", ".join(repr(rid[:60]) for rid in ids[:5])
        st.warning(f"No run {shown} in this lab (from the link's `{param}=`); pick one below.")


def _sync_single(key: str, param: str):
    value = st.session_state.get(key)
    if value:
        st.query_params[param] = value


def default_run(runs: list[dict]) -> dict:
    """The run a page opens on without a link: the one training now, else the newest finished one
    (a queued run has nothing to show yet), else the newest."""
    for wanted in ("running", "finished"):
        match = next((r for r in runs if r["status"] == wanted), None)
        if match:
            return match
    return runs[0]


def pick_run(runs: list[dict], *, label: str = "Run", key: str = "picked_run", param: str = "run",
             preferred: list[str] = ()) -> dict | None:
    """A selectbox of runs (newest first); starts from `?run=` when it names one of them, else from
    the first of `preferred` it holds (a lesson's main run), else from `default_run`."""
    if not runs:
        return None
    by_id = {r["id"]: r for r in runs}
    wanted = st.query_params.get(param)
    if wanted and wanted not in by_id and st.session_state.get(key) is None:
        _warn_unknown(param, [wanted])
    if wanted in by_id and st.session_state.get(key) != wanted:
        st.session_state[key] = wanted
    if st.session_state.get(key) not in by_id:
        st.session_state[key] = next((rid for rid in preferred if rid in by_id), None) or default_run(runs)["id"]
    chosen = st.selectbox(label, list(by_id), key=key, format_func=lambda rid: run_label(by_id[rid]),
                          on_change=_sync_single, args=(key, param))
    if st.query_params.get(param) != chosen:
        st.query_params[param] = chosen
    return by_id[chosen]


def _sync_multi(key: str, param: str):
    st.query_params[param] = ",".join(st.session_state.get(key) or [])


def pick_runs(runs: list[dict], *, label: str = "Runs", key: str = "picked_runs", param: str = "runs",
              default: list[str] | None = None, max_selections: int | None = None) -> list[dict]:
    """A multiselect of runs; starts from `?runs=A,B` when it names some of them."""
    if not runs:
        return []
    by_id = {r["id"]: r for r in runs}
    linked = [rid for rid in (st.query_params.get(param) or "").split(",") if rid]
    if key not in st.session_state:
        _warn_unknown(param, [rid for rid in linked if rid not in by_id])
    wanted = [rid for rid in linked if rid in by_id][:max_selections]
    if wanted and st.session_state.get(key) != wanted:
        st.session_state[key] = wanted
    if key not in st.session_state or any(rid not in by_id for rid in st.session_state[key]):
        st.session_state[key] = [rid for rid in (default or []) if rid in by_id][:max_selections]
    chosen = st.multiselect(label, list(by_id), key=key, format_func=lambda rid: short_run_label(by_id[rid]),
                            on_change=_sync_multi, args=(key, param), max_selections=max_selections)
    return [by_id[rid] for rid in chosen]


def latest_per_method(runs: list[dict], limit: int = 6) -> list[str]:
    """Default selection: the newest finished run of each method (up to `limit`)."""
    seen, ids = set(), []
    for r in runs:
        if r["status"] == "finished" and r["method"] not in seen:
            seen.add(r["method"])
            ids.append(r["id"])
        if len(ids) >= limit:
            break
    return ids
