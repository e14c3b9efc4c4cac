"""The memory comparison: rows per run from the store, charts, and a plain-language reading
computed from the numbers of the runs on screen."""

from __future__ import annotations

import streamlit as st

from app.errors import ConfigError
from app.methods import method_class
from components import figures
from components.common import fmt_count, fmt_mib, method_title, precision_suffix, run_precision, short_run_label

PARTS = figures.PARTS


def method_fact(name: str, fact: str) -> bool:
    """A method's class fact (e.g. `trains_side_network`); False for a stored run whose method this
    version no longer has."""
    try:
        return bool(getattr(method_class(name), fact))
    except ConfigError:
        return False


def _title(row: dict) -> str:
    """The method's title, and its frozen backbone's precision when that is not fp32."""
    return method_title(row["method"]) + precision_suffix(row.get("precision", "fp32"))


def memory_row(store, record: dict) -> dict:
    """A run's memory at its peak step (finished runs) or at its largest step so far (running)."""
    metrics, summary = record.get("metrics") or {}, record.get("summary") or {}
    breakdown = metrics.get("memory_breakdown")
    peak = metrics.get("peak_memory_bytes")
    shape = metrics.get("peak_memory_shape")
    if not breakdown:
        samples = [s["memory"] for s in store.steps(record["id"]) if s.get("memory")]
        if samples:
            top = max(samples, key=lambda m: m.get("peak", 0))
            breakdown = {p: top.get(p, 0) for p in PARTS}
            peak = top.get("peak")
            shape = top.get("batch_shape")
    config = record.get("config") or {}
    if shape is None and peak is not None and config.get("batch_size"):
        shape = [config["batch_size"], config.get("max_length")]  # runs from before shapes were recorded
    row = {
        "id": record["id"],
        "name": short_run_label(record),
        "method": record["method"],
        "status": record["status"],
        "peak": peak,
        "trainable": summary.get("trainable_params"),
        "total": summary.get("total_params"),
        "cuda_peak": metrics.get("cuda_max_allocated_bytes"),
        "shape": list(shape) if shape else None,
        "padding": config.get("padding", "max"),
        "precision": run_precision(record),
    }
    for part in PARTS:
        row[part] = (breakdown or {}).get(part)
    return row


def memory_reading(rows: list[dict]) -> list[str]:
    """Sentences that read the chart for these runs, with their own numbers."""
    rows = [r for r in rows if r.get("peak")]
    if not rows:
        return []
    lines: list[str] = [shape_reading(rows)]
    reference = next((r for r in rows if r["method"] == "full_ft"), None)
    ref_name = "full fine-tuning" if reference else None
    if reference is None:
        reference = max(rows, key=lambda r: r["peak"])
        ref_name = f"{_title(reference)} (the largest here)"
    others = [r for r in rows if r is not reference]
    for r in sorted(others, key=lambda r: r["peak"]):
        lines.append(
            f"**{_title(r)}** used **{r['peak'] / reference['peak']:.2f}×** the memory of {ref_name} "
            f"here ({fmt_mib(r['peak'])} against {fmt_mib(reference['peak'])})."
        )
    ref_acts = reference.get("activations") or 0
    ref_state = (reference.get("gradients") or 0) + (reference.get("optimizer") or 0)
    through = [r for r in others if method_fact(r["method"], "backprop_crosses_frozen_backbone")
               and r.get("activations") is not None]
    if through and ref_acts:
        names = ", ".join(_title(r) for r in through)
        acts = ", ".join(f"{fmt_mib(r['activations'])} ({r['activations'] / ref_acts:.0%})" for r in through)
        states = ", ".join(fmt_mib((r.get("gradients") or 0) + (r.get("optimizer") or 0)) for r in through)
        lines.append(
            f"{names} train few parameters, so their gradients and optimizer state shrink ({states} against "
            f"{fmt_mib(ref_state)} for {ref_name}). Their activations do not: {acts} of {ref_name}'s "
            f"{fmt_mib(ref_acts)}. Backprop must cross the whole backbone to reach the trainable parts "
            "(adapters in every layer, virtual tokens at the input), so every layer keeps what it saved for backward."
        )
    for r in others:
        if method_fact(r["method"], "trains_side_network") and r.get("activations") is not None and ref_acts:
            lines.append(
                f"**{_title(r)}** runs its backbone without autograd, so only its thin side network "
                f"keeps activations: "
                f"{fmt_mib(r['activations'])}, {r['activations'] / ref_acts:.0%} of {ref_name}'s. "
                f"Its gradients and optimizer state cover only the side network ({fmt_count(r.get('trainable'))} "
                "parameters)."
            )
    weights_share = (reference.get("weights") or 0) / reference["peak"]
    if weights_share > 0.4:
        lines.append(
            f"Weights are {weights_share:.0%} of {ref_name}'s peak on this backbone and every method keeps "
            "them, so relative savings look smaller here than on a large model trained with long inputs, "
            "where activations dominate."
        )
    return lines


def fmt_shape(shape) -> str:
    return f"{shape[0]} × {shape[1]}" if shape else "?"


def shape_reading(rows: list[dict]) -> str:
    """Which batch shape each peak came from, and whether the runs compare like for like."""
    shapes = {tuple(r["shape"]) for r in rows if r.get("shape")}
    if len(shapes) == 1:
        (shape,) = shapes
        how = ("every batch padded to the maximum length" if all(r["padding"] == "max" for r in rows)
               else "the largest batch each run met")
        return (f"Every peak here comes from a batch of **{fmt_shape(shape)}** (examples × tokens; {how}), "
                "so the runs compare like for like.")
    per_run = ", ".join(f"{method_title(r['method'])} {fmt_shape(r.get('shape'))}" for r in rows)
    return (f"The peaks come from batches of different shapes (examples × tokens: {per_run}). With dynamic "
            "padding each batch is only as long as its longest example, so memory also depends on which batches "
            "a run met: compare methods with padding = max (the memory lesson does).")


def waiting_sentence(waiting: list[dict]) -> str:
    """'LST is training (step 12 / 60); Adapter and LoRA are queued.': who runs and who waits."""
    running = [r for r in waiting if r["status"] == "running"]
    queued = [r for r in waiting if r["status"] == "queued"]
    parts = [f"{method_title(r['method'])} is training (step {r['step']} / {r['total_steps'] or '?'})"
             for r in running]
    if queued:
        names = [method_title(r["method"]) for r in queued]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        parts.append(f"{listed} {'is' if len(names) == 1 else 'are'} queued (one run trains at a time)")
    return "; ".join(parts) + ". The charts grow as they train."


def render_memory(store, records: list[dict]) -> None:
    rows = [memory_row(store, r) for r in records]
    series = []
    for r, row in zip(records, rows):
        steps = [s for s in store.steps(r["id"]) if s.get("peak_bytes") is not None]
        if steps:  # a run that has not stepped yet has nothing to draw (and no legend entry)
            series.append({"name": row["name"], "steps": [s["step"] for s in steps],
                           "peak": [s["peak_bytes"] for s in steps]})
    if not series:
        st.info("Memory is measured at every training step; the charts appear with the first run's first step.")
        return
    st.plotly_chart(figures.memory_overlay(series), key="memory_overlay")
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(figures.memory_breakdown_bars([r for r in rows if r.get("peak")]), key="memory_breakdown")
    with right:
        st.plotly_chart(figures.trainable_bars([r for r in rows if r.get("trainable")]), key="memory_trainable")
    reading = memory_reading(rows)
    if reading:
        st.subheader("What this shows")
        for line in reading:
            st.markdown("- " + line)
    st.caption(
        "Memory is measured, not estimated from a formula: bytes of the weights, of the gradients backward "
        "allocated, of the optimizer state, and of every tensor autograd saved for backward in the forward "
        "pass. Peak = their sum at the end of the forward pass. On CUDA the allocator's own peak is shown too."
    )
    on_cuda = any(r.get("cuda_peak") for r in rows)
    st.dataframe(
        [{"method": _title(r),
          "status": r["status"], "peak (MiB)": _round_mib(r["peak"]),
          "peak batch": fmt_shape(r.get("shape")) if r.get("shape") else "–",
          **{f"{p} (MiB)": _round_mib(r[p]) for p in PARTS if p != "quantized" or any(x.get(p) for x in rows)},
          **({"CUDA max allocated (MiB)": _round_mib(r.get("cuda_peak"))} if on_cuda else {}),
          "trainable": fmt_count(r["trainable"]) if r.get("trainable") else "–", "run": r["id"]}
         for r in rows if r.get("peak")],
        hide_index=True, width="stretch",
        column_config={"peak batch": st.column_config.TextColumn(help="examples × tokens of the step the peak came from")},
    )


def _round_mib(value):
    return None if value is None else round(value / figures.MIB, 2)
