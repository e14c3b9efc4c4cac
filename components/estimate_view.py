"""The memory estimate beside the launch form and beside a finished run's measurement."""

from __future__ import annotations

import json

import streamlit as st

from app.errors import LabError
from components import figures
from components.common import fmt_mib

PARTS = figures.PARTS
CUDA_GAP_NOTE = (
    "Why a GPU shows more: the estimate (like the LST paper's figures) is what `torch.cuda.max_memory_allocated` "
    "reports, the tensors a step holds. On top of it the CUDA context (kernels, cuBLAS/cuDNN handles) takes a few "
    "hundred MiB, and the caching allocator keeps freed blocks reserved for reuse and rounds every block up, so "
    "`torch.cuda.memory_reserved` and nvidia-smi read higher. The fits column adds {context} for the context and "
    "{slack:.0%} for the allocator: a documented allowance, not measured by this lab."
)


@st.cache_data(show_spinner=False, max_entries=512)
def cached_estimate(backbone: str, method: str, batch_size: int, max_length: int, method_config_json: str,
                    bf16: bool, num_labels: int, device: str, processes: int = 1,
                    backbone_precision: str = "fp32", task: str = "classification") -> dict:
    """The engine's estimate as plain data, or {"error": message}; cached so the form stays responsive."""
    # imported on first use: it loads torch (1.0 s here), which a page's first draw does not wait for
    from app.estimate import estimate_memory

    try:
        estimate = estimate_memory(backbone, method, batch_size, max_length, json.loads(method_config_json),
                                   bf16=bf16, label_names=[f"class_{i}" for i in range(num_labels)],
                                   device=device, processes=processes, backbone_precision=backbone_precision,
                                   task=task)
    except LabError as exc:
        return {"error": str(exc)}
    return estimate.as_dict()


def _estimate_device(device: str) -> str:
    """Where the run would train: 'auto' takes CUDA when present, like the engine."""
    import torch

    if device in ("auto", "cuda") or device.startswith("cuda:"):
        if torch.cuda.is_available():
            return "cuda" if device == "auto" else device
    return "cpu"


def estimate_for(config: dict, *, num_labels: int = 2, shape: list[int] | None = None) -> dict:
    batch_size, max_length = (shape or [config.get("batch_size"), config.get("max_length")])[:2]
    if not isinstance(batch_size, int) or not isinstance(max_length, int):
        return {"error": "batch size and max length are needed for an estimate"}
    # A form's batch is shared by its data-parallel processes (the estimate gives one process's share and
    # DDP's gradient buckets); a measured shape already is one process's.
    processes = max(1, int(config.get("processes") or 1)) if shape is None else 1
    method_config = {k: v for k, v in (config.get("method_config") or {}).items() if v is not None}
    return cached_estimate(str(config.get("backbone", "")), str(config.get("method", "")), batch_size, max_length,
                           json.dumps(method_config, sort_keys=True, default=str), bool(config.get("bf16")),
                           num_labels, _estimate_device(str(config.get("device", "auto"))), processes,
                           str(config.get("backbone_precision") or "fp32"), str(config.get("task") or "classification"))


def render_estimate(config: dict) -> dict | None:
    """The launch form's estimate: breakdown, devices it fits, and a warning when it will not fit here."""
    # imported on first use: it loads torch (1.0 s here), which a page's first draw does not wait for
    from app.estimate import ALLOCATOR_SLACK, CUDA_CONTEXT_BYTES, available_memory

    with st.container(border=True):
        st.markdown("**Memory estimate** (before launch, nothing is computed)")
        result = estimate_for(config)
        if "error" in result:
            st.caption(f"No estimate for this setup: {result['error']}")
            return None
        peak = result["predicted_peak_bytes"]
        # A frozen backbone in int8/int4 and a language model's loss have parts only where they apply.
        shown = [part for part in PARTS if part not in ("quantized", "loss") or result["breakdown"].get(part)]
        cols = st.columns(1 + len(shown))
        cols[0].metric("Predicted peak", fmt_mib(peak))
        for col, part in zip(cols[1:], shown):
            col.metric(part, fmt_mib(result["breakdown"][part]))
        # Also the page's first plotly chart: a fresh browser loads plotly here, not after the click
        # on Launch, when the run's first point is waiting to be drawn.
        st.plotly_chart(figures.estimate_bar(result["breakdown"]), key="launch.estimate_bar",
                        config={"displayModeBar": False})
        fits = [size for size, ok in result["fits"].items() if ok]
        processes = int(config.get("processes") or 1)
        share = f" on each of {processes} GPUs (they share a batch of {config.get('batch_size')})" if processes > 1 else ""
        st.markdown(
            f"Batch {result['batch_size']} × {result['input_length']} tokens{share}, "
            f"{result['trainable_params']:,} trainable "
            f"parameters. On CUDA about **{fmt_mib(result['cuda_requirement_bytes'])}**: fits "
            + (", ".join(f"{s[:-2]} GB" for s in fits) if fits else "none of 8, 16, 24, 40, 80 GB") + "."
        )
        device = _estimate_device(str(config.get("device", "auto")))
        free, source = available_memory(device)
        need = result["cuda_requirement_bytes"] if device.startswith("cuda") else peak
        if free is not None and need > free:
            st.warning(
                f"This setup needs about {fmt_mib(need)} but {device} has {fmt_mib(free)} free ({source}): the run "
                "would likely fail out of memory. Lower the batch size or max length, or pick a method that keeps "
                "fewer activations (LST)."
            )
        # the engine's notes are sentences without a closing full stop
        notes = " ".join(f"{n.rstrip('.')}." for n in result["notes"])
        st.caption(notes[:1].upper() + notes[1:] + " " + CUDA_GAP_NOTE.format(
            context=fmt_mib(CUDA_CONTEXT_BYTES), slack=ALLOCATOR_SLACK))
        return result


def render_estimate_vs_measured(records: list[dict]) -> None:
    """For finished runs: the estimate at the batch shape the measured peak came from, side by side."""
    rows = []
    for record in records:
        metrics = record.get("metrics") or {}
        measured = metrics.get("peak_memory_bytes")
        if record.get("status") != "finished" or not measured:
            continue
        config = record.get("config") or {}
        labels = ((record.get("summary") or {}).get("dataset") or {}).get("label_names") or []
        shape = metrics.get("peak_memory_shape")
        at_shape = estimate_for(config, num_labels=max(1, len(labels)) if labels else 2, shape=shape)
        worst = estimate_for(config, num_labels=max(1, len(labels)) if labels else 2)
        row = {"run": record["id"], "method": record["method"],
               "peak batch": f"{shape[0]} × {shape[1]}" if shape else None,
               "measured (MiB)": round(measured / 2**20, 2)}
        if "error" in at_shape:
            row["estimate (MiB)"] = None
            row["note"] = at_shape["error"]
        else:
            row["estimate (MiB)"] = round(at_shape["predicted_peak_bytes"] / 2**20, 2)
            row["difference"] = f"{(at_shape['predicted_peak_bytes'] - measured) / measured:+.1%}"
        if "error" not in worst:
            row["worst batch estimate (MiB)"] = round(worst["predicted_peak_bytes"] / 2**20, 2)
        if metrics.get("cuda_max_allocated_bytes"):
            row["CUDA max allocated (MiB)"] = round(metrics["cuda_max_allocated_bytes"] / 2**20, 2)
        rows.append(row)
    if not rows:
        return
    st.subheader("Estimate and measurement")
    st.dataframe(rows, hide_index=True, key="memory.estimates")
    st.caption(
        "The estimate is made before any step, from the model's shapes alone, at the batch shape each run's peak "
        "came from; the worst batch column is a full batch of max_length tokens, the figure the Launch page "
        "shows. Predecessors and teachers are estimated with the backbone's shape."
    )
