"""Attribution and attention views of the Explain page. Text from datasets or users is escaped
before it is placed in HTML."""

from __future__ import annotations

import html

import streamlit as st

from components import figures
from components.common import get_store, runs_dir


@st.cache_resource(show_spinner=False, max_entries=4)
def _explainer(path: str, run_id: str):
    # imported on first use: it loads torch (1.0 s here), which a page's first draw does not wait for
    from app.explain import load_explainer

    return load_explainer(get_store(), run_id)


def explainer(run_id: str):
    return _explainer(runs_dir(), run_id)


@st.cache_data(show_spinner=False, max_entries=32)
def attributions(path: str, run_id: str, text: str, pair: str | None, n_steps: int, merge: bool) -> dict:
    # imported on first use: it loads torch (1.0 s here), which a page's first draw does not wait for
    from app.explain import attribute

    return attribute(explainer(run_id), text, pair, n_steps=n_steps, merge_words=merge)


@st.cache_data(show_spinner=False, max_entries=32)
def prediction(path: str, run_id: str, text: str, pair: str | None) -> dict:
    model = explainer(run_id)
    return {"label_names": list(model.label_names),
            "probabilities": model.probabilities([text], [pair] if pair else None)[0]}


@st.cache_data(show_spinner=False, max_entries=32)
def attention(path: str, run_id: str, text: str, pair: str | None) -> dict:
    # imported on first use: it loads torch (1.0 s here), which a page's first draw does not wait for
    from app.explain import attention_maps

    return attention_maps(explainer(run_id), text, pair)


@st.cache_data(show_spinner=False, max_entries=16)
def examples(path: str, run_id: str) -> list[dict]:
    # imported on first use: it loads torch (1.0 s here), which a page's first draw does not wait for
    from app.explain import sample_texts

    return sample_texts(get_store().get_run(run_id))


def highlighted_html(tokens: list[str], scores: list[float], special: list[bool]) -> str:
    """Tokens as spans shaded by attribution (green: towards the class, red: against)."""
    spans = []
    for token, score, is_special in zip(tokens, scores, special):
        alpha = min(0.75, abs(score) * 0.75)
        colour = f"rgba(84,162,75,{alpha:.2f})" if score >= 0 else f"rgba(228,87,86,{alpha:.2f})"
        css = "lab-token lab-special" if is_special else "lab-token"
        spans.append(f'<span class="{css}" style="background:{colour}" title="{score:+.3f}">{html.escape(token)}</span>')
    return '<div class="lab-attribution">' + " ".join(spans) + "</div>"


def render_prediction(run_id: str, result: dict) -> None:
    st.plotly_chart(figures.probability_bars(result["label_names"], result["probabilities"], "Prediction"),
                    key=f"explain.probs.{run_id}")


def render_attribution(result: dict) -> None:
    st.markdown(f"Attributions towards **{html.escape(result['target_name'])}** "
                f"(Integrated Gradients, {result['n_steps']} steps, convergence error "
                f"{result['convergence_delta']:.1e}):")
    st.markdown(highlighted_html(result["tokens"], result["scores"], result["special"]), unsafe_allow_html=True)
    st.caption("Green pushes towards the predicted class, red away from it; shading ∝ |attribution| "
               "(scaled to the largest). Baseline: every word replaced by [PAD]." + (
                   f" {result['note']}" if result.get("note") else ""))


def render_attention(maps: dict, key: str) -> None:
    cols = st.columns(2)
    layer = cols[0].selectbox("Layer", list(range(maps["num_layers"])), index=maps["num_layers"] - 1,
                              format_func=lambda i: f"layer {i + 1}", key=f"{key}.layer")
    head = cols[1].selectbox("Head", ["mean"] + list(range(maps["num_heads"])),
                             format_func=lambda h: "mean of heads" if h == "mean" else f"head {h + 1}",
                             key=f"{key}.head")
    heads = maps["attentions"][layer]
    if head == "mean":
        n = len(heads)
        matrix = [[sum(heads[h][i][j] for h in range(n)) / n for j in range(len(heads[0][i]))]
                  for i in range(len(heads[0]))]
        head_label = "mean of heads"
    else:
        matrix = heads[head]
        head_label = head
    st.plotly_chart(figures.attention_heatmap(maps["tokens"], matrix, layer, head_label), key=f"{key}.heatmap")
    if maps.get("note"):
        st.caption(maps["note"])


@st.cache_data(show_spinner=False, max_entries=16)
def generation_attributions(path: str, run_id: str, prompt: str, max_new_tokens: int) -> dict:
    # imported on first use: it loads torch and captum, which a page's first draw does not wait for
    from app.lm_explain import explain_generation

    return explain_generation(get_store(), run_id, prompt, max_new_tokens=max_new_tokens)


def render_generation_attribution(result: dict, key: str) -> None:
    st.markdown(f"**Answer:** {html.escape(result['answer'])}")
    st.markdown("Each prompt token's attribution to the whole answer:")
    largest = max((abs(v) for v in result["sequence"]), default=0.0) or 1.0
    st.markdown(highlighted_html(result["prompt_tokens"], [v / largest for v in result["sequence"]],
                                 [False] * len(result["sequence"])), unsafe_allow_html=True)
    st.caption("Green: taking the token out makes the answer less likely (it helped); red: more likely. Shading ∝ "
               f"|attribution|, scaled to the largest. {result['method']}.")
    if result.get("per_answer_token"):
        st.plotly_chart(figures.generation_attribution_heatmap(result["prompt_tokens"], result["answer_tokens"],
                                                               result["per_answer_token"]), key=key)
