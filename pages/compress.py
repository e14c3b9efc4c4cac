import streamlit as st

from app.compression import CompressionPlan
from app.errors import LabError
from app.lessons import featured_runs, shrink_plan
from app.options import describe_fields
from components.common import get_job_board, get_store, list_runs
from components.compress_view import JOB_KIND, render_sweep, start_sweep
from components.forms import settings_form
from components.lesson_view import lesson_for_page, show_lesson
from components.live import live
from components.navigation import page
from components.pickers import pick_run

st.title("Compress")
st.caption("Shrink a finished run's model directly — pruning and quantization — and see what it costs in accuracy "
           "(in perplexity for a language model).")
runs = list_runs(status="finished")
lesson = lesson_for_page("compress", [])
if lesson and lesson["runs"]["model"] not in {r["id"] for r in runs}:
    runs = [get_store().get_run(lesson["runs"]["model"]), *runs]  # the lesson's model, still training
if not runs:
    st.info("No finished runs yet — launch one, then compress it here.")
    st.page_link(page("launch"), label="Go to Launch", icon=":material/rocket_launch:")
    st.stop()

record = pick_run(runs, label="Finished run", preferred=featured_runs(get_store(), "shrink") or featured_runs(get_store()))
if record["config"].get("task") == "causal-lm":
    st.caption("A language model: each point is scored by its test perplexity on the split's labelled tokens.")
show_lesson(lesson if lesson and lesson["runs"]["model"] == record["id"] else lesson_for_page("compress", [record["id"]]))
board = get_job_board()
live(render_sweep, record["id"], active=any(j.active for j in board.jobs(run_id=record["id"], kind=JOB_KIND)))

st.subheader("Run a sweep")

with st.form("compress.plan"):
    fields = describe_fields(CompressionPlan)
    defaults = shrink_plan()
    if record["config"].get("task") == "causal-lm":  # a decoder's few huge activations: measure them
        defaults["quantize"] = [kind for q in defaults["quantize"]
                                for kind in ((q, "int8_per_token") if q == "int8" else (q,))]
        defaults["unstructured_score"] = "wanda"
    overrides = {name: {"default": value} for name, value in defaults.items()}
    plan = settings_form(fields, "plan", columns=3, overrides=overrides)
    submitted = st.form_submit_button("Start the sweep", type="primary", icon=":material/compress:")
if submitted:
    try:
        start_sweep(get_store(), board, record["id"], plan)
    except LabError as exc:
        st.error(str(exc))
    else:
        st.rerun()
