import streamlit as st

from app.errors import LabError
from components.common import get_job_board, get_store, list_runs
from components.compress_view import JOB_KIND, render_sweep, start_sweep
from components.forms import settings_form
from components.lessons import SHRINK_PLAN
from components.live import live
from components.navigation import page
from components.pickers import pick_run

st.title("Compress")
st.caption("Shrink a finished run's model directly — pruning and quantization — and see what it costs in accuracy.")
try:
    from app.compression import CompressionPlan
except ImportError:
    st.info("Compression is not installed in this version of the lab.")
    st.stop()
runs = list_runs(status="finished")
if not runs:
    st.info("No finished runs yet — launch one, then compress it here.")
    st.page_link(page("launch"), label="Go to Launch", icon=":material/rocket_launch:")
    st.stop()

record = pick_run(runs, label="Finished run")
board = get_job_board()
live(render_sweep, record["id"], active=any(j.active for j in board.jobs(run_id=record["id"], kind=JOB_KIND)))

st.subheader("Run a sweep")
from app.methods.base import describe_fields  # noqa: E402

with st.form("compress.plan"):
    fields = describe_fields(CompressionPlan)
    overrides = {name: {"default": value} for name, value in SHRINK_PLAN.items()}
    plan = settings_form(fields, "plan", columns=3, overrides=overrides)
    submitted = st.form_submit_button("Start the sweep", type="primary", icon=":material/compress:")
if submitted:
    try:
        start_sweep(get_store(), board, record["id"], plan)
    except LabError as exc:
        st.error(str(exc))
    else:
        st.rerun()
