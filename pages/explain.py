import streamlit as st

from app.errors import LabError
from components.attribution import (
    attention, attributions, examples, generation_attributions, prediction, render_attention, render_attribution,
    render_generation_attribution, render_prediction,
)
from app.lessons import featured_runs
from components.common import get_store, list_runs, method_title, runs_dir
from components.navigation import page
from components.pickers import pick_runs

st.title("Explain predictions")
st.caption("Class probabilities, Integrated Gradients token attributions (captum) and attention maps of one or "
           "two finished runs — e.g. a predecessor and its Theseus successor, or full fine-tuning and LST.")
runs = list_runs(status="finished")
if not runs:
    st.info("No finished runs yet — launch one, then explain its predictions here.")
    st.page_link(page("launch"), label="Go to Launch", icon=":material/rocket_launch:")
    st.stop()

# Without a link: the newest lesson's main runs (a predecessor and its successor), else the newest run.
chosen = pick_runs(runs, label="Runs (one or two)", key="explain.runs",
                   default=featured_runs(get_store())[:2] or [runs[0]["id"]], max_selections=2)
if not chosen:
    st.info("Pick one or two runs above.")
    st.stop()

language_models = [record for record in chosen if record["config"].get("task") == "causal-lm"]
if language_models:
    # A language model's answer is explained by its prompt's tokens, not by class probabilities.
    if len(language_models) < len(chosen):
        st.caption("Classifier runs are explained when picked without a language-model run.")
    cols = st.columns(2)
    prompt = cols[0].text_area("Prompt", value="where were you last night?\n", key="explain.prompt", max_chars=1000)
    new_tokens = cols[1].number_input("Max new tokens", min_value=1, max_value=64, value=12, key="explain.new_tokens")
    if not prompt.strip():
        st.info("Type a prompt to explain the answer to.")
        st.stop()
    for column, record in zip(st.columns(len(language_models)), language_models):
        with column:
            st.subheader(method_title(record["method"]))
            st.caption(record["id"])
            try:
                with st.spinner("Writing the answer and taking out each prompt token in turn…"):
                    result = generation_attributions(runs_dir(), record["id"], prompt, int(new_tokens))
            except LabError as exc:
                st.error(str(exc))
                continue
            render_generation_attribution(result, f"explain.generation.{record['id']}")
    st.stop()

source = st.segmented_control("Sentence", ["Type one", "Pick from the test split"], default="Type one",
                              key="explain.source") or "Type one"
pair = None
if source == "Type one":
    text = st.text_area("Sentence", value="A gripping, beautifully acted film.", key="explain.text", max_chars=2000)
else:
    try:
        samples = examples(runs_dir(), chosen[0]["id"])
    except LabError as exc:
        st.error(str(exc))
        st.stop()
    index = st.selectbox("Test example", list(range(len(samples))), key="explain.example",
                         format_func=lambda i: f"[{samples[i]['label']}] {samples[i]['text'][:120]}")
    text, pair = samples[index]["text"], samples[index]["pair"]
    st.caption(f"Gold label: {samples[index]['label']}")
cols = st.columns(3)
n_steps = cols[0].select_slider("Integration steps", [8, 16, 32, 64], value=32, key="explain.steps",
                                help="More steps: a more exact integral, slower.")
merge = cols[1].toggle("Merge word pieces into words", value=True, key="explain.merge")

if not text or not text.strip():
    st.info("Type a sentence to explain.")
    st.stop()

columns = st.columns(len(chosen))
for column, record in zip(columns, chosen):
    with column:
        st.subheader(f"{method_title(record['method'])}")
        st.caption(record["id"])
        try:
            render_prediction(record["id"], prediction(runs_dir(), record["id"], text, pair))
        except LabError as exc:
            st.error(str(exc))
            continue
        try:
            with st.spinner("Attributing…"):
                result = attributions(runs_dir(), record["id"], text, pair, n_steps, merge)
            render_attribution(result)
        except LabError as exc:
            st.warning(str(exc))
        try:
            maps = attention(runs_dir(), record["id"], text, pair)
        except LabError as exc:
            st.warning(str(exc))
        else:
            render_attention(maps, f"explain.attention.{record['id']}")
