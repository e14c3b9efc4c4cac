"""Streamlit entry script: `streamlit run app/main.py`. The only engine file that imports streamlit."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

st.set_page_config(page_title="Ladder & Theseus Lab", layout="wide")

PAGES = [
    st.Page("../pages/runs.py", title="Runs", url_path="runs", default=True),
]
st.navigation(PAGES).run()
