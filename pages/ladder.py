import streamlit as st

from app.store import ACTIVE_STATUSES
from components.common import list_runs
from components.ladder_view import render_ladder
from components.live import live
from components.navigation import page
from components.pickers import pick_run

st.title("Ladder Side-Tuning")
st.caption("A thin side network reads the frozen backbone's layer outputs through gated ladders: "
           "h_side ← μᵢ·h_side + (1 − μᵢ)·downᵢ(h_backbone). Only the side network, ladders, gates and head train.")
runs = list_runs(method="lst")
if not runs:
    st.info("No LST runs yet — launch one (method: Ladder Side-Tuning).")
    st.page_link(page("launch"), label="Launch an LST run", icon=":material/rocket_launch:",
                 query_params={"method": "lst"})
    st.stop()

record = pick_run(runs, label="LST run")
live(render_ladder, record["id"], active=record["status"] in ACTIVE_STATUSES)
