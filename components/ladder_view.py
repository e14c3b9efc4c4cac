"""The LST view: gates, side activations, side vs ladder norms, PCA of side representations, diagram."""

from __future__ import annotations

import streamlit as st

from app.store import ACTIVE_STATUSES
from components import figures
from components.common import get_store

STATS = ("rms", "mean", "std")


def lst_series(store, run_id: str) -> dict:
    rows = [r for r in store.telemetry(run_id, "step") if isinstance(r.get("lst"), dict)]
    steps = [r["step"] for r in rows]
    data = [r["lst"] for r in rows]
    pca = [{"step": r["step"], **r["lst_pca"]} for r in store.telemetry(run_id, "eval:validation")
           if isinstance(r.get("lst_pca"), dict)]
    return {"steps": steps, "data": data, "pca": pca}


def start_phrase(start: list[float]) -> str:
    """How the gates started, from the first recorded step (taken before its update)."""
    low, high = min(start), max(start)
    if high - low < 5e-3:
        return f"Every gate started at {low:.2f}"
    return f"The gates started between {low:.2f} and {high:.2f}"


def render_ladder(run_id: str) -> bool:
    store = get_store()
    record = store.get_run(run_id)
    active = record["status"] in ACTIVE_STATUSES
    series = lst_series(store, run_id)
    steps, data = series["steps"], series["data"]
    backbone_layers_total = ((record.get("summary") or {}).get("backbone") or {}).get("num_layers")
    if not steps:
        if active:
            st.info("Waiting for the first training step's ladder telemetry…")
        else:
            st.warning("This run recorded no ladder telemetry.")
        return active
    latest = data[-1]
    feeds = latest.get("backbone_layers") or list(range(1, len(latest["gates"]) + 1))
    # Telemetry names feeding layers 0-based (the output of layer i); the diagram counts layers from 1.
    levels = [layer + 1 for layer in feeds]
    names = figures.block_names([lv for lv in levels], len(latest["gates"]))
    total_layers = backbone_layers_total or (max(levels) if levels else len(latest["gates"]))

    top_left, top_right = st.columns([2, 3])
    with top_left:
        st.plotly_chart(figures.ladder_diagram(total_layers, levels, latest["gates"]), key="ladder.diagram")
        st.caption(f"Gates at step {steps[-1]}. μ near 1: the block keeps its own side stream; near 0: it takes the "
                   "backbone's (down-projected) layer output instead.")
    with top_right:
        st.plotly_chart(figures.gates_heatmap(steps, [d["gates"] for d in data], levels), key="ladder.gates")
        gates, start = latest["gates"], data[0]["gates"]
        st.caption(f"{start_phrase(start)}; the colours span what this run reached ({min(gates):.2f} to "
                   f"{max(gates):.2f} now). Blue: the block keeps more of its side stream; red: it takes more of "
                   "the backbone. In a short run the gates move by hundredths; the direction is the signal.")
    if "merge_gate" in latest:
        share = latest["merge_gate"]
        st.caption(f"Final merge at step {steps[-1]}: the head reads {share:.2f} of the side network's output and "
                   f"{1 - share:.2f} of the backbone's own final state (half each at the start).")

    st.subheader("Side activations")
    stat = st.segmented_control("Statistic", STATS, default="rms", key="ladder.stat",
                                format_func=lambda s: {"rms": "RMS", "mean": "mean", "std": "std"}[s]) or "rms"
    left, right = st.columns(2)
    with left:
        values = [[layer.get(stat) for layer in d.get("layers", [])] for d in data]
        st.plotly_chart(figures.layer_stat_figure(steps, values, names, stat), key="ladder.stats")
    with right:
        edges = latest.get("hist_edges")
        hists = [layer.get("hist") for layer in latest.get("layers", [])]
        if edges and hists and all(hists):
            st.plotly_chart(figures.histogram_figure(edges, hists, names, steps[-1]), key="ladder.hist")

    st.subheader("Side stream vs ladder input")
    # First and last block by default: all of them at once crowd the chart.
    shown = st.multiselect("Blocks", list(range(len(names))), default=sorted({0, len(names) - 1}),
                           format_func=lambda i: names[i], key="ladder.norm_blocks")
    st.plotly_chart(figures.norms_figure(steps, [d.get("side_norm", []) for d in data],
                                         [d.get("ladder_norm", []) for d in data], names, shown), key="ladder.norms")

    st.subheader("Side representations (PCA of the validation sample)")
    pca = series["pca"]
    if not pca:
        st.info("The PCA scatter appears after the first validation pass.")
    else:
        eval_steps = [p["step"] for p in pca]
        chosen = eval_steps[-1]
        if len(eval_steps) > 1:
            chosen = st.select_slider("Validation pass at step", eval_steps, value=eval_steps[-1], key="ladder.pca_step")
        point = next(p for p in pca if p["step"] == chosen)
        st.plotly_chart(figures.pca_figure(point["points"], point["labels"], point["label_names"],
                                           point.get("explained_variance"), chosen), key="ladder.pca")
    return active
