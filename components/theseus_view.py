"""The Theseus view: replacement schedule, per-module draws, successor accuracy, size."""

from __future__ import annotations

import streamlit as st

from app.store import ACTIVE_STATUSES
from components import figures
from components.common import fmt_count, fmt_pct, get_store


def predecessor_reference(store, record: dict) -> tuple[float | None, dict]:
    """The predecessor's validation accuracy (from the run summary, else from its own run)."""
    summary = ((record.get("summary") or {}).get("method_summary") or {})
    predecessor = summary.get("predecessor") or {}
    accuracy = predecessor.get("val_accuracy")
    source = predecessor.get("source") or (record["config"].get("method_config") or {}).get("predecessor")
    if accuracy is None and source and store.has_run(source):
        accuracy = (store.get_run(source).get("metrics") or {}).get("val_accuracy")
    return accuracy, dict(predecessor, source=source)


def truncation_baselines(store, record: dict, layers: int | None) -> list[dict]:
    """Finished truncation runs on the same backbone and dataset with the successor's depth."""
    out = []
    for r in store.list_runs(status="finished", method="truncate"):
        if r["backbone"] != record["backbone"] or r["dataset"] != record["dataset"]:
            continue
        run_layers = ((r.get("summary") or {}).get("method_summary") or {}).get("layers") \
            or (r["config"].get("method_config") or {}).get("layers")
        if layers is None or run_layers in (None, layers):
            out.append(r)
    return out


def pending_baselines(store, record: dict) -> list[dict]:
    """Truncation runs on the same backbone and dataset that are still queued or running: the page
    keeps refreshing until their numbers are in."""
    return [r for r in store.list_runs(method="truncate") if r["status"] in ACTIVE_STATUSES
            and r["backbone"] == record["backbone"] and r["dataset"] == record["dataset"]]


def theseus_page_active(store, record: dict) -> bool:
    return record["status"] in ACTIVE_STATUSES or bool(pending_baselines(store, record))


def render_theseus(run_id: str) -> bool:
    store = get_store()
    record = store.get_run(run_id)
    active = record["status"] in ACTIVE_STATUSES
    rows = [r for r in store.telemetry(run_id, "step") if isinstance(r.get("theseus"), dict)]
    summary = (record.get("summary") or {}).get("method_summary") or {}
    pred_acc, predecessor = predecessor_reference(store, record)
    successor = summary.get("successor") or {}

    source = predecessor.get("source")
    if record["status"] == "queued" and source and store.has_run(source):
        upstream = store.get_run(source)
        if upstream["status"] in ACTIVE_STATUSES:
            st.info(f"Waiting for the predecessor [{source}](run?run={source}) to finish "
                    f"({upstream['status']}, step {upstream['step']} / {upstream['total_steps'] or '?'}).")
    if rows:
        steps = [r["step"] for r in rows]
        left, right = st.columns(2)
        left.plotly_chart(figures.theseus_p_figure(steps, [r["theseus"]["p"] for r in rows],
                                                   [r["theseus"].get("phase", 1) for r in rows]), key="theseus.p")
        right.plotly_chart(figures.draws_heatmap(steps, [r["theseus"]["draws"] for r in rows]), key="theseus.draws")
    elif active:
        st.info("Waiting for the first training step…")
    else:
        st.warning("This run recorded no Theseus telemetry.")

    evals = store.evals(run_id)
    reference = (pred_acc, "predecessor") if pred_acc is not None else None
    st.plotly_chart(figures.accuracy_figure(evals, reference, title="Successor validation accuracy"),
                    key="theseus.accuracy")
    baselines = truncation_baselines(store, record, successor.get("layers"))
    metrics = record.get("metrics") or {}
    cols = st.columns(4)
    cols[0].metric("predecessor (validation)", fmt_pct(pred_acc))
    cols[1].metric("successor (validation)", fmt_pct(metrics.get("val_accuracy")),
                   delta=None if pred_acc is None or metrics.get("val_accuracy") is None
                   else f"{100 * (metrics['val_accuracy'] - pred_acc):+.1f} pts")
    if baselines:
        best = max(baselines, key=lambda r: (r.get("metrics") or {}).get("val_accuracy") or 0)
        base_acc = (best.get("metrics") or {}).get("val_accuracy")
        cols[2].metric("truncation baseline (validation)", fmt_pct(base_acc),
                       help=f"Run {best['id']}: the first layers fine-tuned directly; Theseus must beat it.")
    elif waiting := next(iter(pending_baselines(store, record)), None):
        cols[2].metric("truncation baseline", waiting["status"],
                       help=f"Run {waiting['id']} is {waiting['status']}; its accuracy appears here when it ends.")
    else:
        cols[2].metric("truncation baseline", "–", help="Run the truncation method with the successor's depth "
                                                         "on the same backbone and dataset to compare.")
    cols[3].metric("successor (test)", fmt_pct(metrics.get("test_accuracy")))

    st.subheader("Size and speed")
    if predecessor.get("layers") and successor.get("layers"):
        st.plotly_chart(figures.size_speed_figure([
            {"name": "predecessor", "params": predecessor.get("params"), "layers": predecessor.get("layers")},
            {"name": "successor", "params": successor.get("params"), "layers": successor.get("layers")},
        ]), key="theseus.size")
        ratio = predecessor["layers"] / successor["layers"]
        st.markdown(
            f"The successor keeps **{successor['layers']} of {predecessor['layers']}** layers "
            f"({fmt_count(successor.get('params'))} parameters against {fmt_count(predecessor.get('params'))}). "
            f"Encoder time scales with depth, so expect up to about **{ratio:.1f}×** faster encoder layers "
            "(embeddings and head cost the same); measure real latency on the Compress page."
        )
        if summary.get("phase2_start_step") is not None:
            st.caption(f"Phase 2 began at step {summary['phase2_start_step']}; the kept successor is from step "
                       f"{summary.get('best_step')}" + (" (stopped early: validation stopped improving)."
                                                        if summary.get("stopped_early") else "."))
    else:
        st.info("Sizes appear when the run has finished.")
    return theseus_page_active(store, record)
