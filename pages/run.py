import streamlit as st

from app.store import ACTIVE_STATUSES
from components.common import get_store, list_runs
from components.live import live
from components.navigation import page
from components.pickers import pick_run
from components.run_view import header, render_details, render_live

st.title("Run")
runs = list_runs()
if not runs:
    st.info("No runs yet — launch one.")
    st.page_link(page("launch"), label="Go to Launch", icon=":material/rocket_launch:")
    st.stop()

record = pick_run(runs)
header(record)
live(render_live, record["id"], active=record["status"] in ACTIVE_STATUSES)
# Read again: the live part may have seen the run end during this script run.
render_details(get_store().get_run(record["id"]))
