"""Sharing runs between labs: a bundle of ended runs to download, and a bundle to import."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from app.bundles import checkpoint_bytes, export_bundle, import_bundle
from app.errors import LabError
from app.store import ACTIVE_STATUSES
from components.common import get_store, run_label

BUNDLE_UPLOAD_MB = 2048  # larger bundles import with `python -m app runs import`


def render_import() -> None:
    """An uploader that adds a bundle's runs to this runs folder (each upload once)."""
    store = get_store()
    upload = st.file_uploader("Import runs from a bundle (.zip)", type=["zip"], key="share.import",
                              max_upload_size=BUNDLE_UPLOAD_MB,
                              help="A bundle written by `python -m app runs export` or by the button below: runs "
                                   "with their charts, and their weights if it carries checkpoints.")
    if upload is None:
        return
    done = st.session_state.setdefault("share.imported", {})
    key = getattr(upload, "file_id", None) or (upload.name, upload.size)
    if key not in done:  # a rerun shows the upload again: import it once
        try:
            done[key] = import_bundle(store, upload)
        except LabError as exc:
            done[key] = {"error": str(exc)}
    result = done[key]
    if "error" in result:
        st.error(f"Not imported: {result['error']}")
        return
    skipped = f"; already here, skipped: {', '.join(result['skipped'])}" if result["skipped"] else ""
    st.success(f"Imported {len(result['imported'])} run(s) from {upload.name}{skipped}.")


def render_export(runs: list[dict]) -> None:
    """Pick ended runs, optionally with checkpoints (their size shown), and download them as one zip."""
    store = get_store()
    ended = [r for r in runs if r["status"] not in ACTIVE_STATUSES]
    if not ended:
        return
    labels = {r["id"]: run_label(r) for r in ended}
    chosen = st.multiselect("Runs to bundle", list(labels), default=[r["id"] for r in ended if r["status"] == "finished"],
                            format_func=labels.get, key="share.runs")
    weights = checkpoint_bytes(store, chosen) if chosen else 0
    with_weights = st.checkbox(f"Include checkpoints ({weights / 2**20:,.1f} MiB)", key="share.checkpoints",
                               help="Explain, Compress and export need a run's weights; the charts do not.")
    if st.button("Make the bundle", key="share.make", disabled=not chosen, icon=":material/archive:"):
        folder = Path(store.runs_dir) / "bundles"
        path = folder / f"runs-{time.strftime('%Y%m%d-%H%M%S')}.zip"
        try:
            with st.spinner("Writing the bundle…"):
                st.session_state["share.bundle"] = export_bundle(store, chosen, path, checkpoints=with_weights)
        except LabError as exc:
            st.error(str(exc))
    made = st.session_state.get("share.bundle")
    if made and Path(made["path"]).exists():
        st.download_button(f"Download {Path(made['path']).name} ({made['bytes'] / 2**20:,.1f} MiB, "
                           f"{len(made['runs'])} run(s))", data=lambda: Path(made["path"]).read_bytes(),
                           file_name=Path(made["path"]).name, mime="application/zip", key="share.download",
                           icon=":material/download:")
