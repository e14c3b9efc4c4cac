"""The home page's lesson cards and run counts."""

from __future__ import annotations

import streamlit as st

from app.store import STATUSES
from components.navigation import page

LESSONS = [
    ("Why LST saves memory", "launch",
     "Queue full fine-tuning, Adapter, prompt tuning, LoRA and LST on one setup, then read the Memory "
     "page: Adapter and prompt tuning train few parameters yet still pay for every activation."),
    ("Theseus: halve the layers", "launch",
     "Fine-tune a predecessor, replace its layer blocks by half as many successor layers, and compare with "
     "fine-tuning the first half directly."),
    ("Shrink a model", "launch",
     "Sweep pruning and quantization over a finished run and see where accuracy collapses."),
]


def lesson_cards() -> None:
    columns = st.columns(len(LESSONS))
    for column, (title, target, text) in zip(columns, LESSONS):
        with column.container(border=True):
            st.markdown(f"**{title}**")
            st.caption(text)
            st.page_link(page(target), label="Open the lessons on Launch", icon=":material/arrow_forward:")


def run_counts(runs: list[dict]) -> None:
    if not runs:
        st.info("No runs yet: open Launch, pick a preset and press Launch.")
        return
    counts = {status: sum(r["status"] == status for r in runs) for status in STATUSES}
    columns = st.columns(len(STATUSES))
    for column, status in zip(columns, STATUSES):
        column.metric(status, counts[status])
    st.page_link(page("compare"), label="Compare finished runs", icon=":material/compare_arrows:")
