import streamlit as st

from components.common import method_title
from components.plan_view import (
    BATCHES, DEFAULT_METHODS, DEFAULT_MODEL, LORA_RANKS, LST_REDUCTIONS, OWN_CONFIG, device_choices, precision_choices,
    length_choices, measure, method_settings, model_choices, precisions_of, render_plan, supported_methods_of, tasks_of,
)

st.title("Plan: will it fit?")
st.caption("Training memory of models this machine need not hold: each method's peak against sequence length on the "
           "device you pick, the parts of one point, and the largest batch that fits. Estimated on fake tensors from "
           "the model's config alone, the way a run would build it.")

choices = model_choices()
wanted = st.query_params.get("model")  # a plan's deep link names its model
if wanted in choices and st.session_state.get("plan.model_from_url") != wanted:
    st.session_state["plan.model"] = st.session_state["plan.model_from_url"] = wanted
st.session_state.setdefault("plan.model", DEFAULT_MODEL)
left, right = st.columns([2, 1])
model = left.selectbox("Model", list(choices), format_func=choices.get, key="plan.model")
backbone = model
if model == OWN_CONFIG:
    typed = left.text_input("A config.json path, or a hub id where the network allows", key="plan.own_config").strip()
    if not typed:
        st.info("Type the path of a model's config.json (no weights needed), or pick a model above.")
        st.stop()
    backbone = typed if typed.startswith("config:") else f"config:{typed}"
tasks = tasks_of(backbone)
if st.session_state.get("plan.task") not in tasks:
    st.session_state["plan.task"] = tasks[0]
task = left.radio("Task", tasks, key="plan.task", horizontal=True,
                  help="classification: a label per text. causal-lm (decoders): a language model learns to continue "
                       "text, with a label at every token and the chunked loss's own part in the breakdown.")
supported = supported_methods_of(backbone, task)
if isinstance(supported, str):
    st.error(supported)
    st.stop()
st.session_state.setdefault("plan.methods", [m for m in DEFAULT_METHODS if m in supported])
if any(m not in supported for m in st.session_state["plan.methods"]):  # a task that some do not train for
    st.session_state["plan.methods"] = [m for m in st.session_state["plan.methods"] if m in supported]
methods = left.multiselect("Methods", supported, format_func=method_title, key="plan.methods")
devices = device_choices()
st.session_state.setdefault("plan.device", "24 GB GPU")
device = right.selectbox("Device", list(devices), key="plan.device")
bf16 = right.toggle("bf16 autocast", key="plan.bf16", help="The forward under bf16 autocast (approximate off CUDA).")
chosen_precision = right.selectbox(
    "Frozen backbone", precision_choices(), key="plan.precision",
    help="How the frozen backbone's linear weights are stored (int8: torchao for LST, bitsandbytes otherwise; int4: "
         "bitsandbytes NF4, QLoRA's format). Applies to methods that keep a frozen backbone; the others stay fp32.")

lengths = length_choices(backbone)
if st.session_state.get("plan.length") not in lengths:
    st.session_state["plan.length"] = 2048 if 2048 in lengths else lengths[-1]
st.session_state.setdefault("plan.batch", 1)
shape_left, shape_right = st.columns(2)
batch = shape_left.select_slider("Batch size (per device)", BATCHES, key="plan.batch")
length = shape_right.select_slider("Sequence length (tokens)", lengths, key="plan.length")
with st.expander("Method settings"):
    columns = st.columns(3)
    lst_reduction = columns[0].select_slider("LST: side network width divisor r", LST_REDUCTIONS, value=8,
                                             key="plan.lst_r")
    lst_dropping = columns[1].radio("LST: side blocks on", ["all", "every_other"], key="plan.lst_dropping",
                                    format_func={"all": "every layer", "every_other": "every other layer"}.get)
    lora_rank = columns[2].select_slider("LoRA: rank", LORA_RANKS, value=8, key="plan.lora_rank")
if not methods:
    st.info("Pick one or more methods above.")
    st.stop()

settings = {m: method_settings(m, lst_reduction, lst_dropping, lora_rank) for m in methods}
precisions = precisions_of(methods, chosen_precision)
surfaces = measure(backbone, methods, settings, bf16, precisions, task)
render_plan(backbone, surfaces, batch=batch, length=length, device_label=device, device=devices[device], bf16=bf16,
            settings=settings, precisions=precisions)
