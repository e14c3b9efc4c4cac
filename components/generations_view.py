"""A causal-LM run's answers: the timeline of its greedy generations at every evaluation, and a box
where the user types a prompt and watches a finished run's answer arrive token by token."""

from __future__ import annotations

import streamlit as st

from app.errors import LabError
from components.common import get_store


def generation_timeline(store, run_id: str) -> list[dict]:
    """[{prompt, reference, answers: [(step, answer), ...]}] in prompt order, the untuned model's (step 0) first."""
    prompts: dict[str, dict] = {}
    for row in store.telemetry(run_id, "eval:validation", after=-1):
        for item in row.get("generations") or []:
            entry = prompts.setdefault(item["prompt"], {"prompt": item["prompt"], "reference": item.get("reference", ""),
                                                        "answers": []})
            entry["answers"].append((row["step"], item["answer"]))
    return list(prompts.values())


def render_generations(run_id: str) -> None:
    timeline = generation_timeline(get_store(), run_id)
    st.subheader("Generations")
    if not timeline:
        st.caption("The model's greedy answers to a few validation prompts appear here at every evaluation, "
                   "starting with the untuned model's.")
        return
    st.caption("Greedy answers to fixed validation prompts at every evaluation; step 0 is the untuned model.")
    for index, entry in enumerate(timeline):
        shown = " ".join(entry["prompt"].split())  # its end: a chat template's prompt starts with the template
        shown = shown if len(shown) <= 80 else "…" + shown[-79:]
        with st.expander(f"Prompt {index + 1}: {shown}", expanded=index == 0):
            st.code(entry["prompt"], language="text", wrap_lines=True)
            if entry["reference"]:
                st.markdown(f"**Reference:** {entry['reference']}")
            st.dataframe([{"step": step, "answer": answer} for step, answer in entry["answers"]],
                         hide_index=True, key=f"run.generations.{run_id}.{index}")


@st.cache_resource(show_spinner=False, max_entries=2)
def _writer(run_id: str):
    from app.predict import load_writer  # loads torch: only when someone asks for an answer

    return load_writer(get_store(), run_id)


def render_try_it(run_id: str) -> None:
    st.subheader("Try it")
    with st.form(f"run.try.{run_id}"):
        prompt = st.text_area("Prompt", key="run.try.prompt", height=100)
        left, right = st.columns(2)
        max_new_tokens = left.number_input("Max new tokens", min_value=1, max_value=512, value=64,
                                           key="run.try.max_new_tokens")
        temperature = right.number_input("Temperature (0: greedy)", min_value=0.0, max_value=10.0, value=0.0,
                                         step=0.1, key="run.try.temperature")
        asked = st.form_submit_button("Generate", icon=":material/edit_note:")
    if not asked:
        return
    answer = st.empty()
    try:
        with st.spinner("Loading the run's model…"):
            writer = _writer(run_id)
        result = writer.generate(prompt, max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                 on_text=lambda text: answer.markdown(text))
    except LabError as exc:
        st.error(str(exc))
        return
    answer.markdown(result.text or "*(the model ended its answer at once)*")
    st.caption(f"{result.tokens} tokens in {result.seconds:.1f} s")
