import streamlit as st

from components.common import list_runs
from components.compare_view import render_compare
from components.navigation import page
from components.share_view import render_export, render_import

st.title("Compare runs")
with st.expander("Share runs: bundle them, or import a bundle", icon=":material/move_to_inbox:"):
    render_import()
    render_export(list_runs())
runs = list_runs()
if not runs:
    st.info("No runs yet — launch one, or import a bundle of someone else's runs above.")
    st.page_link(page("launch"), label="Go to Launch", icon=":material/rocket_launch:")
    st.stop()
render_compare(runs)
