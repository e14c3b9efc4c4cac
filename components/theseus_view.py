"""The Theseus view: replacement schedule, per-module draws, the successor's validation accuracy
(perplexity for a language model) against the predecessor's and truncation's, size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import streamlit as st

from app.store import ACTIVE_STATUSES
from app.tasks import CAUSAL_LM, CLASSIFICATION
from components import figures
from components.common import fmt_count, fmt_pct, get_store


@dataclass(frozen=True)
class Score:
    """What a Theseus run is judged on: a classifier's accuracy, or a language model's perplexity."""

    metric: str  # the metrics' key after "val_" / "test_"
    better: Callable  # max or min: picks the better of several runs

    @staticmethod
    def of(record: dict) -> "Score":
        return Score("perplexity", min) if _task(record) == CAUSAL_LM else Score("accuracy", max)

    def text(self, value) -> str:
        if self.metric == "accuracy":
            return fmt_pct(value)
        return "–" if value is None else f"{value:.2f}"

    def difference(self, value, reference) -> str | None:
        if value is None or reference is None:
            return None
        if self.metric == "accuracy":
            return f"{100 * (value - reference):+.1f} pts"
        return f"{value - reference:+.2f}"


def _task(record: dict) -> str:
    return (record.get("config") or {}).get("task", CLASSIFICATION)


def predecessor_reference(store, record: dict) -> tuple[float | None, dict]:
    """The predecessor's validation accuracy, or perplexity for a language model (from the run summary,
    else from its own run)."""
    metric = Score.of(record).metric
    summary = ((record.get("summary") or {}).get("method_summary") or {})
    predecessor = summary.get("predecessor") or {}
    value = predecessor.get(f"val_{metric}")
    source = predecessor.get("source") or (record["config"].get("method_config") or {}).get("predecessor")
    if value is None and source and store.has_run(source):
        value = (store.get_run(source).get("metrics") or {}).get(f"val_{metric}")
    return value, dict(predecessor, source=source)


def truncation_baselines(store, record: dict, layers: int | None) -> list[dict]:
    """Finished truncation runs on the same backbone, dataset and task with the successor's depth."""
    out = []
    for r in store.list_runs(status="finished", method="truncate"):
        if r["backbone"] != record["backbone"] or r["dataset"] != record["dataset"] or _task(r) != _task(record):
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
    score = Score.of(record)
    pred_value, predecessor = predecessor_reference(store, record)
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
    reference = (pred_value, "predecessor") if pred_value is not None else None
    if score.metric == "perplexity":
        quality = figures.perplexity_figure(evals, reference, title="Successor validation perplexity")
    else:
        quality = figures.accuracy_figure(evals, reference, title="Successor validation accuracy")
    st.plotly_chart(quality, key="theseus.accuracy")
    baselines = truncation_baselines(store, record, successor.get("layers"))
    metrics = record.get("metrics") or {}
    value = metrics.get(f"val_{score.metric}")
    cols = st.columns(4)
    cols[0].metric("predecessor (validation)", score.text(pred_value))
    cols[1].metric("successor (validation)", score.text(value), delta=score.difference(value, pred_value),
                   delta_color="normal" if score.better is max else "inverse")
    if baselines:
        known = [r for r in baselines if (r.get("metrics") or {}).get(f"val_{score.metric}") is not None] or baselines
        best = score.better(known, key=lambda r: (r.get("metrics") or {}).get(f"val_{score.metric}") or 0)
        base_value = (best.get("metrics") or {}).get(f"val_{score.metric}")
        cols[2].metric("truncation baseline (validation)", score.text(base_value),
                       help=f"Run {best['id']}: the first layers fine-tuned directly; Theseus must beat it.")
    elif waiting := next(iter(pending_baselines(store, record)), None):
        cols[2].metric("truncation baseline", waiting["status"],
                       help=f"Run {waiting['id']} is {waiting['status']}; its {score.metric} appears here when it ends.")
    else:
        cols[2].metric("truncation baseline", "–", help="Run the truncation method with the successor's depth "
                                                         "on the same backbone and dataset to compare.")
    cols[3].metric("successor (test)", score.text(metrics.get(f"test_{score.metric}")))

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
