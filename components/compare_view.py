"""Comparing runs: a filterable table, the accuracy/cost Pareto scatter (perplexity for language models),
overlaid curves, CSV export."""

from __future__ import annotations

import csv
import io

import streamlit as st

from components import figures
from components.common import get_store, run_label

COSTS = {
    "peak memory (MiB)": ("peak_mib", False),
    "trainable parameters": ("trainable", True),
    "training time (s)": ("train_seconds", False),
}
SCORE_COLUMNS = ("test_accuracy", "val_accuracy", "test_macro_f1", "test_perplexity", "val_perplexity")
CURVES = ("validation accuracy (%)", "validation perplexity", "training loss", "peak memory (MiB)")
# Pareto scores: what a classifier and a language model are judged by (a language model's test_accuracy is
# its next-token accuracy, another quantity than a classifier's)
SCORES = {"test accuracy": ("test_accuracy", "classification"), "test perplexity": ("test_perplexity", "causal-lm")}


def table_rows(runs: list[dict]) -> list[dict]:
    rows = []
    for r in runs:
        metrics, summary = dict(r.get("metrics") or {}), r.get("summary") or {}
        if r["config"].get("task") == "causal-lm":  # its accuracy is next-token accuracy: not a classifier's
            metrics.update(test_accuracy=None, val_accuracy=None)
        peak = metrics.get("peak_memory_bytes")
        rows.append({
            "run": r["id"],
            "name": r.get("name") or "",
            "method": r["method"],
            "task": r["config"].get("task", "classification"),
            "backbone": r["backbone"],
            "dataset": r["dataset"].rsplit("/", 1)[-1],
            "status": r["status"],
            "test_accuracy": metrics.get("test_accuracy"),
            "val_accuracy": metrics.get("val_accuracy"),
            "test_macro_f1": metrics.get("test_macro_f1"),
            "test_perplexity": metrics.get("test_perplexity"),
            "val_perplexity": metrics.get("val_perplexity"),
            "peak_mib": None if peak is None else round(peak / figures.MIB, 2),
            "trainable": summary.get("trainable_params"),
            "total_params": summary.get("total_params"),
            "train_seconds": None if metrics.get("train_seconds") is None else round(metrics["train_seconds"], 1),
            "steps": metrics.get("steps_done", r.get("step")),
            "created": r["created_at"],
        })
    return rows


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def _filter(label: str, values: list[str], key: str, default: list[str] | None = None) -> list[str]:
    options = sorted(set(values))
    return st.multiselect(label, options, default=[d for d in (default or []) if d in options], key=key,
                          placeholder="all")


def render_compare(runs: list[dict]) -> None:
    rows = table_rows(runs)
    cols = st.columns(4)
    with cols[0]:
        methods = _filter("Method", [r["method"] for r in rows], "compare.method")
    with cols[1]:
        backbones = _filter("Backbone", [r["backbone"] for r in rows], "compare.backbone")
    with cols[2]:
        datasets = _filter("Dataset", [r["dataset"] for r in rows], "compare.dataset")
    with cols[3]:
        statuses = _filter("Status", [r["status"] for r in rows], "compare.status", default=["finished"])
    shown = [r for r in rows if (not methods or r["method"] in methods) and (not backbones or r["backbone"] in backbones)
             and (not datasets or r["dataset"] in datasets) and (not statuses or r["status"] in statuses)]
    sort_cols = st.columns([2, 1, 3])
    sort_key = sort_cols[0].selectbox("Sort by", ["created", "test_accuracy", "val_accuracy", "test_perplexity",
                                                  "peak_mib", "trainable", "train_seconds", "method"],
                                      key="compare.sort")
    descending = sort_cols[1].toggle("Descending", value=True, key="compare.desc")
    present = sorted((r for r in shown if r[sort_key] is not None), key=lambda r: r[sort_key], reverse=descending)
    shown = present + [r for r in shown if r[sort_key] is None]
    if not shown:
        st.info("No run matches these filters.")
        return
    # a score no shown run has (accuracy among language models only, perplexity among classifiers) takes no room
    empty = {column for column in SCORE_COLUMNS if all(r[column] is None for r in shown)}
    st.dataframe(
        shown, hide_index=True, key="compare.table", column_order=[c for c in shown[0] if c not in empty],
        column_config={
            "test_accuracy": st.column_config.NumberColumn("test accuracy", format="percent"),
            "val_accuracy": st.column_config.NumberColumn("validation accuracy", format="percent"),
            "test_macro_f1": st.column_config.NumberColumn("test macro-F1", format="percent"),
            "test_perplexity": st.column_config.NumberColumn("test perplexity", format="%.2f"),
            "val_perplexity": st.column_config.NumberColumn("validation perplexity", format="%.2f"),
            "peak_mib": st.column_config.NumberColumn("peak memory (MiB)"),
            "trainable": st.column_config.NumberColumn("trainable params", format="compact"),
            "total_params": st.column_config.NumberColumn("total params", format="compact"),
            "train_seconds": st.column_config.NumberColumn("training time (s)"),
            "created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm:ss"),
        },
    )
    sort_cols[2].download_button("Table as CSV", data=to_csv(shown), file_name="runs.csv", mime="text/csv",
                                 key="compare.csv", icon=":material/download:")

    scored = [name for name, (_, task) in SCORES.items() if any(r["task"] == task for r in shown)] or ["test accuracy"]
    st.subheader("Perplexity against cost" if scored == ["test perplexity"] else "Accuracy against cost")
    cols = st.columns(2)
    cost = cols[0].segmented_control("Cost", list(COSTS), default="peak memory (MiB)", key="compare.cost") \
        or "peak memory (MiB)"
    # classifiers and language models are judged apart: a choice only when both are shown
    score = (cols[1].segmented_control("Judged by", scored, default=scored[0], key="compare.score")
             if len(scored) > 1 else None) or scored[0]
    x_key, log_x = COSTS[cost]
    score_key, task = SCORES[score]
    points = [dict(r, name=f"{r['method']} · {r['run'][-6:]}") for r in shown if r["task"] == task]
    st.plotly_chart(figures.pareto_figure(points, x_key, cost + (" (log scale)" if log_x else ""), log_x,
                                          score_key), key="compare.pareto")
    st.caption(f"The dashed line is the Pareto front: runs no other run beats on both {score} and this cost.")

    st.subheader("Curves")
    by_id = {r["id"]: r for r in runs}
    options = [r["run"] for r in shown]
    default = options[:5]
    picked = st.multiselect("Runs", options, default=default, key="compare.curves_runs",
                            format_func=lambda rid: run_label(by_id[rid]))
    default_curve = CURVES[1] if scored == ["test perplexity"] else CURVES[0]
    metric = st.segmented_control("Metric", CURVES, default=default_curve, key="compare.curve_metric") or default_curve
    st.plotly_chart(curves_figure(picked, metric), key="compare.curves")


def curves_figure(run_ids: list[str], metric: str):
    store = get_store()
    traces = []
    for rid in run_ids:
        record = store.get_run(rid)
        name = f"{record['method']} · {rid[-6:]}"
        if metric.startswith("validation"):
            evals = store.evals(rid, "validation")
            key, factor = ("perplexity", 1) if metric == "validation perplexity" else ("accuracy", 100)
            traces.append({"name": name, "x": [e["step"] for e in evals],
                           "y": [None if e.get(key) is None else factor * e[key] for e in evals],
                           "mode": "lines+markers"})
        elif metric == "training loss":
            steps = store.steps(rid)
            traces.append({"name": name, "x": [s["step"] for s in steps], "y": [s.get("loss") for s in steps]})
        else:
            steps = [s for s in store.steps(rid) if s.get("peak_bytes")]
            traces.append({"name": name, "x": [s["step"] for s in steps],
                           "y": [s["peak_bytes"] / figures.MIB for s in steps]})
    y_title = {"training loss": "loss", "validation perplexity": "validation perplexity (log scale)"}.get(metric, metric)
    fig = figures.lines(traces, "step", y_title, None, height=360)
    if metric == "validation perplexity":
        fig.update_yaxes(type="log")
    return fig
