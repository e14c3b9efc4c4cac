import streamlit as st

from components.common import list_runs
from components.compare_view import render_compare
from components.navigation import page

st.title("Compare runs")
runs = list_runs()
if not runs:
    st.info("No runs yet — launch one.")
    st.page_link(page("launch"), label="Go to Launch", icon=":material/rocket_launch:")
    st.stop()
render_compare(runs)
