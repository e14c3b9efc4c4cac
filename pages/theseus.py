import streamlit as st

from components.common import get_store, list_runs
from components.lesson_view import lesson_for_page, show_lesson
from components.live import live
from components.navigation import page
from components.pickers import pick_run
from components.theseus_view import render_theseus, theseus_page_active

st.title("BERT-of-Theseus")
st.caption("Predecessor modules are replaced at random by successor layers (probability pₜ) while only the "
           "successor trains; in phase 2 the successor runs alone until validation stops improving.")
runs = list_runs(method="theseus")
if not runs:
    st.info("No Theseus runs yet — launch one: the “Theseus: halve the layers” lesson on the Launch page "
            "queues a predecessor, Theseus and the truncation baseline.")
    st.page_link(page("launch"), label="Go to Launch", icon=":material/rocket_launch:")
    st.stop()

record = pick_run(runs, label="Theseus run")
show_lesson(lesson_for_page("theseus", [record["id"]]))
live(render_theseus, record["id"], active=theseus_page_active(get_store(), record))
