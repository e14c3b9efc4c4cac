"""Compression sweeps: start one in the background, follow it, and draw accuracy (a language model's perplexity)
against size and latency."""

from __future__ import annotations

import time

import streamlit as st

from app.errors import LabError
from app.store import ACTIVE_STATUSES
from components import figures
from components.common import fmt_mib, fmt_pct, get_job_board, get_store

JOB_KIND = "compress"
RECORD_KIND = "compress"


def start_sweep(store, board, run_id: str, plan: dict):
    """Check the plan and the run now (errors reach the page), then sweep in a board-owned thread."""
    # imported on first use: it loads torch (1.0 s here), which a page's first draw does not wait for
    from app.compression import as_plan, compress_run

    checked = as_plan(dict(plan))
    record = store.get_run(run_id)
    if record["status"] != "finished":
        raise LabError(f"run '{run_id}' is {record['status']}; only a finished run can be compressed")
    return board.start(
        JOB_KIND, run_id, f"compression sweep of {run_id}",
        lambda job: compress_run(store, run_id, checked, progress=job.report, cancel=job.cancel_event),
    )


def start_lesson_sweep(store, board, run_id: str, plan: dict, lesson_name: str):
    """A lesson's sweep: waits for its run when that is still training, then sweeps."""
    # imported on first use: it loads torch (1.0 s here), which a page's first draw does not wait for
    from app.compression import compress_run

    def work(job):
        while (record := store.get_run(run_id))["status"] in ACTIVE_STATUSES:
            job.report(f"waiting for run {run_id} to finish training (step {record['step']} / "
                       f"{record['total_steps']})")
            time.sleep(0.5)
        if record["status"] != "finished":
            raise LabError(f"run '{run_id}' ended {record['status']}: nothing to compress")
        return compress_run(store, run_id, plan, progress=job.report, cancel=job.cancel_event)

    return board.start(JOB_KIND, run_id, f"{lesson_name} lesson: compression sweep of {run_id}", work)


def render_sweep(run_id: str) -> bool:
    store = get_store()
    jobs = get_job_board().jobs(run_id=run_id, kind=JOB_KIND)
    job = jobs[0] if jobs else None
    if job is not None:
        if job.active:
            cols = st.columns([6, 1])
            cols[0].progress(job.fraction or 0.0, text=f"Sweeping: {job.message}")
            if cols[1].button("Cancel sweep", key=f"compress.cancel.{job.id}"):
                job.cancel_event.set()
        elif job.status == "failed":
            st.error(f"The last sweep failed: {job.error}")
            if job.traceback:
                with st.expander("Traceback"):
                    st.code(job.traceback, language="text")
        elif job.status == "cancelled":
            st.warning("The last sweep was cancelled; the points it measured are kept.")
    points = store.records(run_id, RECORD_KIND)
    if not points:
        if not (job and job.active):
            st.info("No compression results for this run yet — start a sweep below.")
        return bool(job and job.active)
    baseline = next((p for p in points if p.get("kind") == "baseline"), None)
    others = [p for p in points if p.get("kind") != "baseline"]
    language_model = any("test_perplexity" in p for p in points)
    score, score_name = ("test_perplexity", "Perplexity") if language_model else ("test_accuracy", "Accuracy")
    left, right = st.columns(2)
    with left:
        st.markdown(f"**{score_name} against size**")
        st.plotly_chart(figures.compress_figure(others, "bytes", "model size (MiB)", baseline, score),
                        key="compress.size")
    with right:
        st.markdown(f"**{score_name} against CPU speed-up**")
        timed = [dict(p, speedup=p.get("speedup") or _unpaired_speedup(p, baseline)) for p in others]
        st.plotly_chart(figures.compress_figure(timed, "speedup", "speed-up over fp32 (×, timed side by side)",
                                                dict(baseline, speedup=1.0) if baseline else None, score),
                        key="compress.latency")
    st.dataframe([{"kind": figures.compress_series(p), "setting": p.get("setting"), **_scores(p, language_model),
                   "size": fmt_mib(p.get("bytes")),
                   "latency (ms)": None if p.get("latency_ms") is None else round(p["latency_ms"], 2),
                   "speed-up": None if p.get("speedup") is None else f"{p['speedup']:.2f}×",
                   "parameters": p.get("params"), "nonzero": p.get("nonzero_params"), "note": p.get("note", "")}
                  for p in points], hide_index=True, key="compress.table")
    if language_model:
        st.caption("Scored on the test split's labelled tokens: perplexity, how often the most likely next token "
                   "is the right one, and how often it is the one the uncompressed model picks (agreement). "
                   "Latency: one pass over a batch of prompts up to the next token's scores, as generation "
                   "reads a prompt.")
    st.caption("Masks alone make nothing smaller or faster: unstructured pruning zeroes weights but keeps the "
               "matrices, so only structured pruning (heads, FFN neurons) and casts change size and latency. "
               "Each point is timed in alternating rounds with the fp32 model, so load from other programs falls "
               "on both and the speed-up holds on a busy machine. fp16 and bf16 halve the size but are often "
               "slower on a CPU, which lacks fast half-precision kernels; on a GPU they are the fast path.")
    return bool(job and job.active)


def _scores(point: dict, language_model: bool) -> dict:
    if language_model:
        perplexity = point.get("test_perplexity")
        return {"test perplexity": None if perplexity is None else round(perplexity, 2),
                "token accuracy": fmt_pct(point.get("test_token_accuracy")), "agreement": fmt_pct(point.get("agreement"))}
    return {"test accuracy": fmt_pct(point.get("test_accuracy")), "agreement": fmt_pct(point.get("agreement"))}


def _unpaired_speedup(point: dict, baseline: dict | None):
    """Sweeps stored before points were timed side by side: the ratio of the two medians."""
    if not baseline or not point.get("latency_ms") or not baseline.get("latency_ms"):
        return None
    return baseline["latency_ms"] / point["latency_ms"]
