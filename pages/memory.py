import streamlit as st

from app.store import ACTIVE_STATUSES
from components.common import get_store, list_runs
from components.estimate_view import render_estimate_vs_measured
from components.lesson_view import lesson_for_page, show_lesson
from components.live import live
from components.memory_view import render_memory, waiting_sentence
from components.navigation import page
from components.pickers import latest_per_method, pick_runs

st.title("Training memory")
st.caption("Where the memory of a training step goes — weights, gradients, optimizer state and the activations "
           "autograd keeps for backward — for several runs side by side.")
runs = [r for r in list_runs() if r["status"] in ("finished", "running", "queued")]
if not runs:
    st.info("No runs yet — launch one, or the “Why LST saves memory” lesson on the Launch page.")
    st.page_link(page("launch"), label="Go to Launch", icon=":material/rocket_launch:")
    st.stop()

chosen = pick_runs(runs, label="Runs to compare", default=latest_per_method(runs))
show_lesson(lesson_for_page("memory", [r["id"] for r in chosen]))
if not chosen:
    st.info("Pick one or more runs above.")
    st.stop()


def render(ids: list[str]) -> bool:
    store = get_store()
    records = [store.get_run(rid) for rid in ids]
    waiting = [r for r in records if r["status"] in ACTIVE_STATUSES]
    if waiting:
        st.info(waiting_sentence(waiting))
    render_memory(store, records)
    render_estimate_vs_measured(records)
    return bool(waiting)


ids = [r["id"] for r in chosen]
live(render, ids, active=any(r["status"] in ACTIVE_STATUSES for r in chosen))
