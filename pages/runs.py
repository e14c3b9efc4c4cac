import streamlit as st

from components.common import get_store

st.title("Runs")
runs = get_store().list_runs()
if not runs:
    st.info("No runs yet. Start one with `python -m app train --backbone tiny-random --steps 20`.")
else:
    st.dataframe(
        [{"run": r["id"], "status": r["status"], "method": r["method"], "backbone": r["backbone"],
          "dataset": r["dataset"], "test accuracy": r["metrics"].get("test_accuracy")} for r in runs],
        hide_index=True,
    )
