"""A run's live view (progress, curves, cancel) and its exports."""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from pathlib import Path

import streamlit as st

from app.errors import LabError
from app.store import ACTIVE_STATUSES
from components import figures
from components.common import STATUS_ICONS, fmt_mib, fmt_pct, fmt_seconds, get_manager_for_app, method_title
from components.generations_view import render_generations, render_try_it


def progress_text(record: dict, steps: list[dict]) -> tuple[float, str]:
    total = record["total_steps"] or record["config"].get("steps") or 1
    done = record["step"] or 0
    fraction = min(1.0, done / total)
    if record["status"] == "queued":
        return 0.0, "queued: waiting for the worker"
    if record["status"] == "running" and steps and done:
        elapsed = steps[-1]["elapsed"]
        eta = elapsed / done * (total - done)
        phase = f" · phase {record['phase']}" if record.get("phase") and record["phase"] != "train" else ""
        return fraction, f"step {done} / {total} · {fmt_seconds(elapsed)} elapsed · about {fmt_seconds(eta)} left{phase}"
    if record["status"] == "running":
        return fraction, "running: preparing data and model"
    return fraction, f"{record['status']} at step {done} / {total}"


def render_live(run_id: str) -> bool:
    manager = get_manager_for_app()
    store = manager.store
    record = store.get_run(run_id)
    steps = store.steps(run_id)
    evals = store.evals(run_id)
    active = record["status"] in ACTIVE_STATUSES
    head, button = st.columns([6, 1])
    fraction, text = progress_text(record, steps)
    head.progress(fraction, text=f"{STATUS_ICONS.get(record['status'], '')} {text}")
    if active and button.button("Cancel run", key=f"run.cancel.{run_id}", type="secondary"):
        manager.cancel(run_id)
    val = [e for e in evals if e["split"] == "validation"]
    test = [e for e in evals if e["split"] == "test"]
    causal_lm = record["config"].get("task") == "causal-lm"
    cols = st.columns(5)
    cols[0].metric("loss", f"{steps[-1]['loss']:.4f}" if steps and steps[-1].get("loss") is not None else "–")
    if causal_lm:
        cols[1].metric("validation perplexity", f"{val[-1]['perplexity']:.2f}" if val else "–",
                       help="exp of the mean next-token loss on the validation split's labelled tokens")
        cols[2].metric("test perplexity", f"{test[-1]['perplexity']:.2f}" if test else "–")
    else:
        cols[1].metric("validation accuracy", fmt_pct(val[-1]["accuracy"]) if val else "–")
        cols[2].metric("test accuracy", fmt_pct(test[-1]["accuracy"]) if test else "–")
    cols[3].metric("examples / s", f"{steps[-1]['examples_per_second']:.1f}"
                   if steps and steps[-1].get("examples_per_second") else "–")
    peak = max((s["peak_bytes"] for s in steps if s.get("peak_bytes")), default=None)
    cols[4].metric("peak memory", fmt_mib(peak))
    if not steps:
        st.info("No steps yet: the curves appear with the first step." if active else "This run recorded no steps.")
        return active
    # Between two steps a refresh finds nothing new: reuse the figures instead of rebuilding them
    # (plotly figure construction is the costliest part of a refresh).
    stamp = (run_id, len(steps), len(evals), record["status"])
    cached = st.session_state.get("run.figures")
    if not cached or cached[0] != stamp:
        quality = figures.perplexity_figure(evals) if causal_lm else figures.accuracy_figure(evals)
        cached = (stamp, [figures.loss_figure(steps), quality, figures.throughput_figure(steps),
                          figures.memory_parts_figure(steps)])
        st.session_state["run.figures"] = cached
    loss, accuracy, throughput, memory = cached[1]
    left, right = st.columns(2)
    left.plotly_chart(loss, key="run.loss")
    right.plotly_chart(accuracy, key="run.accuracy")
    left.plotly_chart(throughput, key="run.throughput")
    right.plotly_chart(memory, key="run.memory")
    if causal_lm:
        render_generations(run_id)
    return active


def metrics_csv(store, run_id: str) -> str:
    steps = store.steps(run_id)
    evals = {e["step"]: e for e in store.evals(run_id, "validation")}
    terms = sorted({name for s in steps for name in (s.get("terms") or {})})
    columns = ["step", "elapsed_s", "loss", "lr", "examples_per_second", "peak_bytes", "weights_bytes",
               "gradients_bytes", "optimizer_bytes", "activations_bytes", "val_accuracy", "val_macro_f1", "val_loss"]
    columns += [f"term_{t}" for t in terms]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for s in steps:
        memory = s.get("memory") or {}
        e = evals.get(s["step"], {})
        writer.writerow([s["step"], s.get("elapsed"), s.get("loss"), s.get("lr"), s.get("examples_per_second"),
                         s.get("peak_bytes"), memory.get("weights"), memory.get("gradients"), memory.get("optimizer"),
                         memory.get("activations"), e.get("accuracy"), e.get("macro_f1"), e.get("loss")]
                        + [(s.get("terms") or {}).get(t) for t in terms])
    return out.getvalue()


def metrics_json(store, run_id: str) -> str:
    record = store.get_run(run_id)
    return json.dumps({"run": record, "steps": store.steps(run_id), "evals": store.evals(run_id)}, default=str)


def early_stopping_caption(early: dict) -> str:
    how = (f"stopped at step {early['stopped_at_step']} after {early['patience']} validation passes without a "
           "better accuracy" if early.get("stopped_early") else "took every step")
    best = early.get("best_val_accuracy")
    kept = (f"; the weights kept are step {early['best_step']}'s (validation accuracy {best:.1%}), and the test "
            "accuracy is theirs" if best is not None else "")
    return f"Early stopping (patience {early['patience']}): {how}{kept}."


def render_details(record: dict) -> None:
    store = get_manager_for_app().store
    run_id = record["id"]
    if record["status"] == "failed":
        st.error(f"This run failed: {record.get('error') or 'no reason recorded'}")
        if record.get("traceback"):
            with st.expander("Traceback"):
                st.code(record["traceback"], language="text")
    elif record["status"] in ("cancelled", "interrupted") and record.get("error"):
        st.warning(f"{record['status'].capitalize()}: {record['error']}")
    notes = (record.get("summary") or {}).get("notes") or []
    if notes:
        st.caption("Notes: " + "; ".join(notes) + ".")
    parallel = (record.get("summary") or {}).get("data_parallel")
    if parallel:
        peaks = [fmt_mib(rank["peak_memory_bytes"]) for rank in parallel.get("ranks", [])
                 if rank.get("peak_memory_bytes")]
        st.caption(f"Data-parallel: {parallel['world_size']} processes ({parallel['backend']}), each on its share "
                   "of every batch; the charts show process 0's memory"
                   + (f"; peak memory per process: {', '.join(peaks)}." if peaks else "."))
    early = (record.get("summary") or {}).get("early_stopping")
    if early:
        st.caption(early_stopping_caption(early))
    reporting = (record.get("summary") or {}).get("reporting")
    if reporting:  # a tracking server that failed is only ever said here, so say it up front
        link = f" [Open in MLflow]({reporting['url']})" if reporting.get("ok") and reporting.get("url") else ""
        st.caption(f"MLflow: {reporting.get('note') or ''}.{link}")
    if record["status"] == "finished" and record["config"].get("task") == "causal-lm":
        render_try_it(run_id)
    with st.expander("Configuration"):
        st.json(record["config"], expanded=2)
        summary = {k: v for k, v in (record.get("summary") or {}).items() if k not in ("notes",)}
        if summary:
            st.markdown("**Summary**")
            st.json(summary, expanded=1)
    st.subheader("Export")
    cols = st.columns(3)
    cols[0].download_button("Metrics (CSV)", data=metrics_csv(store, run_id), file_name=f"{run_id}-metrics.csv",
                            mime="text/csv", key="run.export.csv", icon=":material/download:")
    cols[1].download_button("Metrics (JSON)", data=metrics_json(store, run_id), file_name=f"{run_id}-metrics.json",
                            mime="application/json", key="run.export.json", icon=":material/download:")
    if record["status"] != "finished":
        cols[2].caption("The model can be exported once the run has finished.")
        return
    exports = st.session_state.setdefault("run.exports", {})
    if cols[2].button("Export the model", key="run.export.model", icon=":material/save:"):
        # imported on first use: it loads torch (1.0 s here), which a page's first draw does not wait for
        from app.export import export_run

        folder = Path(store.runs_dir) / "exports" / f"{run_id}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            with st.spinner("Rebuilding the model and writing it…"):
                result = export_run(store, run_id, folder)
                archive = shutil.make_archive(str(folder), "zip", root_dir=folder)
        except LabError as exc:
            st.error(str(exc))
        else:
            exports[run_id] = {"folder": str(folder), "zip": archive,
                               "formats": [f["format"] for f in result["formats"]], "notes": result["notes"]}
    exported = exports.get(run_id)
    if exported and Path(exported["zip"]).exists():
        st.success(f"Exported to `{exported['folder']}` as {', '.join(exported['formats'])}, each checked to predict "
                   "what this run predicts; its README.md (a model card) says how to load each.")
        for note in exported["notes"]:
            st.caption(note)
        zip_path = exported["zip"]
        st.download_button("Download the model (zip)", data=lambda: Path(zip_path).read_bytes(),
                           file_name=Path(zip_path).name, mime="application/zip", key="run.export.zip",
                           icon=":material/download:")


def header(record: dict) -> None:
    dataset = record["dataset"].rsplit("/", 1)[-1]
    st.markdown(f"**{method_title(record['method'])}** on **{record['backbone']}** · dataset **{dataset}** · "
                f"{record['config'].get('steps')} steps, batch {record['config'].get('batch_size')}, "
                f"length {record['config'].get('max_length')}"
                + (f" · {processes} processes" if (processes := record["config"].get("processes") or 1) > 1 else ""))
