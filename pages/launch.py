import streamlit as st

from app.config import RunConfig
from app.errors import LabError
from app.methods import describe_methods
from app.store import ACTIVE_STATUSES
from app.tasks import CLASSIFICATION
from app.lessons import get_lesson
from components import presets as form_presets
from components.common import (
    STATUS_ICONS, finished_runs, fmt_pct, fmt_time, get_manager_for_app, method_title, run_label,
    run_link,
)
from components.estimate_view import render_estimate
from components.forms import settings_form
from components.launch_form import (backbone_picker, dataset_picker, device_settings, devices, general_settings,
                                    method_preset_buttons, task_picker)
from components.lesson_view import lesson_launcher, lesson_query, start_lesson
from components.live import live
from components.navigation import page

st.title("Launch a run")
manager = get_manager_for_app()
store = manager.store
methods = {m["name"]: m for m in describe_methods()}

wanted_method = st.query_params.get("method")
if wanted_method in methods and st.session_state.get("launch.method_from_url") != wanted_method:
    st.session_state["launch.method"] = wanted_method
    st.session_state["launch.method_from_url"] = wanted_method


def apply_preset(name: str) -> None:
    for key, value in form_presets.PRESETS[name].items():
        st.session_state[key] = value


# --- presets and lessons ----------------------------------------------------------------------
top_left, top_right = st.columns([1, 2])
with top_left.container(border=True):
    st.markdown("**Start from a preset**")
    for i, name in enumerate(form_presets.PRESETS):
        st.button(name, key=f"preset.{i}", on_click=apply_preset, args=(name,), help=form_presets.PRESET_HELP[name],
                  width="stretch")
with top_right.container(border=True):
    st.markdown("**Lessons** — one click queues a lesson's runs on a preset sized for this machine, then opens "
                "the page that explains them and checks the claim on those runs")
    lesson_choice = lesson_launcher()
    lesson_messages = st.container()

# --- the form ---------------------------------------------------------------------------------
with st.container(border=True):
    st.subheader("Model and data")
    left, right = st.columns(2)
    with left:
        backbone, info = backbone_picker()
        task = task_picker(info)
    with right:
        data_part = dataset_picker(task)

with st.container(border=True):
    st.subheader("Method")
    if st.session_state.get("launch.method") not in methods:
        st.session_state["launch.method"] = RunConfig.method if RunConfig.method in methods else next(iter(methods))
    supported = set(info["methods"]) if info else set(methods)
    for_task = {n for n in methods if task in methods[n]["tasks"]}
    method_name = st.selectbox(
        "Method", list(methods), key="launch.method",
        format_func=lambda n: f"{methods[n]['title']} ({n})" + ("" if n in supported else " · not for this backbone")
        + ("" if n in for_task else f" · not for {task}"))
    described = methods[method_name]
    st.caption(described["summary"])
    if method_name not in supported:
        st.warning(f"{described['title']} cannot train on {backbone}; on this backbone choose one of: "
                   + ", ".join(methods[n]["title"] for n in methods if n in supported) + ".")
    elif method_name not in for_task:
        st.warning(f"{described['title']} does not train for {task} yet; for {task} choose one of: "
                   + ", ".join(methods[n]["title"] for n in methods if n in for_task and n in supported) + ".")
    method_preset_buttons(method_name, described)
    references = {}
    if described["reference_fields"]:
        # A predecessor or teacher is trained for the same task (a language model for a causal-lm run).
        ref_runs = [r for r in finished_runs() if r["config"].get("task", CLASSIFICATION) == task]
        labels = {r["id"]: run_label(r) for r in ref_runs}
        references = {name: ([r["id"] for r in ref_runs], labels) for name in described["reference_fields"]}
    method_values = settings_form(described["fields"], f"method.{method_name}", references=references)

with st.container(border=True):
    st.subheader("Training")
    general = general_settings(info["max_length"] if info else None, described["default_lr"], task)
    device_options = devices()
    if st.session_state.get("launch.device") not in device_options:
        st.session_state["launch.device"] = "auto"
    device = st.selectbox("Device", device_options, key="launch.device",
                          help="auto takes CUDA when present, else the CPU. With several GPUs, all GPUs (DDP) "
                               "trains one run on every GPU: the batch is split between them.")


def run_config(method: str, method_config: dict) -> dict:
    return {"backbone": backbone, "task": task, **data_part, "method": method, "method_config": method_config, **general,
            **device_settings(device)}


render_estimate(run_config(method_name, method_values))

if "launch.open" not in st.session_state:
    st.session_state["launch.open"] = True
open_after = st.checkbox("Open the run's page after launch", key="launch.open")
if st.button("Launch", type="primary", key="launch.submit", icon=":material/rocket_launch:"):
    try:
        run_id = manager.submit(run_config(method_name, method_values))
    except LabError as exc:
        st.error(str(exc))
    else:
        st.session_state["launch.last"] = run_id
        if open_after:
            st.switch_page(page("run"), query_params={"run": run_id})
if st.session_state.get("launch.last"):
    last = st.session_state["launch.last"]
    st.success(f"Queued run [{last}]({run_link(last)}).")

# --- lessons ----------------------------------------------------------------------------------
with lesson_messages:
    if lesson_choice.clicked:
        try:
            launch = start_lesson(manager, lesson_choice.clicked, seed=lesson_choice.seed,
                                  preset=lesson_choice.preset, given=lesson_choice.given.get(lesson_choice.clicked))
        except LabError as exc:
            st.error(str(exc))
        else:
            st.switch_page(page(get_lesson(launch.lesson).page), query_params=lesson_query(launch))


# --- the queue and recent runs ----------------------------------------------------------------
st.subheader("Queue and recent runs")
if manager.interrupted_at_start:
    st.caption(f"{len(manager.interrupted_at_start)} run(s) were still going when the app last stopped; "
               "they are marked interrupted.")


def render_queue() -> bool:
    runs = store.list_runs(limit=30)
    active = [r for r in runs if r["status"] in ACTIVE_STATUSES]
    for r in active:
        cols = st.columns([5, 3, 1])
        cols[0].markdown(f"{STATUS_ICONS[r['status']]} [{r['id']}]({run_link(r['id'])}) · "
                         f"{method_title(r['method'])} · {r['backbone']}")
        total = r["total_steps"] or r["config"].get("steps") or 1
        cols[1].progress(min(1.0, r["step"] / total), text=f"{r['status']}: step {r['step']} / {total}")
        if cols[2].button("Cancel", key=f"queue.cancel.{r['id']}"):
            manager.cancel(r["id"])
    if not runs:
        st.info("No runs yet. Pick a preset above and press Launch.")
        return False
    st.dataframe(
        [{"open": run_link(r["id"]), "status": r["status"],
          "method": r["method"], "backbone": r["backbone"], "dataset": r["dataset"].rsplit("/", 1)[-1],
          "progress": f"{r['step']} / {r['total_steps'] or r['config'].get('steps')}",
          "test accuracy": fmt_pct((r.get("metrics") or {}).get("test_accuracy")),
          "created": fmt_time(r["created_at"])} for r in runs],
        hide_index=True, key="queue.table",
        column_config={"open": st.column_config.LinkColumn("run", display_text=r"run\?run=(.*)")},
    )
    return bool(active)


live(render_queue, active=any(r["status"] in ACTIVE_STATUSES for r in store.list_runs(limit=30)))
