"""The home page's lesson cards and run counts."""

from __future__ import annotations

import streamlit as st

from app.lessons import LESSONS
from app.store import ACTIVE_STATUSES, STATUSES, process_alive
from components.navigation import page


def lesson_cards() -> None:
    columns = st.columns(len(LESSONS))
    for column, lesson in zip(columns, LESSONS.values()):
        with column.container(border=True):
            st.markdown(f"**{lesson.title}**")
            st.caption(lesson.claim)
            if lesson.measured:
                st.caption(f":orange[{lesson.measured}]")
            st.page_link(page("launch"), label="Start it on Launch", icon=":material/arrow_forward:")


def status_now(run: dict) -> str:
    """A run's status, counting one that a stopped process left queued or running as interrupted:
    the run manager records it so when it starts, which on a fresh server is after Home has drawn."""
    if run["status"] in ACTIVE_STATUSES and not process_alive(run.get("owner_pid") or -1, run.get("owner_token")):
        return "interrupted"
    return run["status"]


def run_counts(runs: list[dict]) -> None:
    if not runs:
        st.info("No runs yet: open Launch, pick a preset and press Launch.")
        return
    statuses = [status_now(r) for r in runs]
    counts = {status: statuses.count(status) for status in STATUSES}
    columns = st.columns(len(STATUSES))
    for column, status in zip(columns, STATUSES):
        column.metric(status, counts[status])
    st.page_link(page("compare"), label="Compare finished runs", icon=":material/compare_arrows:")
