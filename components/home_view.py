"""The home page's lesson cards and run counts."""

from __future__ import annotations

import streamlit as st

from app.lessons import LESSONS
from app.store import STATUSES
from components.navigation import page


def lesson_cards() -> None:
    columns = st.columns(len(LESSONS))
    for column, lesson in zip(columns, LESSONS.values()):
        with column.container(border=True):
            st.markdown(f"**{lesson.title}**")
            st.caption(lesson.claim)
            st.page_link(page("launch"), label="Start it on Launch", icon=":material/arrow_forward:")


def run_counts(runs: list[dict]) -> None:
    if not runs:
        st.info("No runs yet: open Launch, pick a preset and press Launch.")
        return
    counts = {status: sum(r["status"] == status for r in runs) for status in STATUSES}
    columns = st.columns(len(STATUSES))
    for column, status in zip(columns, STATUSES):
        column.metric(status, counts[status])
    st.page_link(page("compare"), label="Compare finished runs", icon=":material/compare_arrows:")
