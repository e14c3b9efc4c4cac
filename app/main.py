"""Streamlit entry script: `streamlit run app/main.py`. The only file under app/ that imports streamlit.

The page scripts live in pages/ at the project root, next to components/ and assets/. The entry
script sits in app/ rather than beside pages/ on purpose: a pages/ folder next to the entry script
puts Streamlit in its legacy auto-pages mode, where a deep link skips the entry script.

Nothing this script or Home imports pulls in torch or transformers (tests/test_first_draw.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from components.common import page_setup, start_after_first_draw  # noqa: E402
from components.navigation import all_pages  # noqa: E402

# a local file: a material-symbol page icon makes the browser fetch the favicon from a font server
st.set_page_config(page_title="Ladder & Theseus Lab", page_icon=str(ROOT / "assets" / "icon.png"), layout="wide")
page_setup()
try:
    st.navigation(all_pages()).run()
finally:  # also when the page stopped, switched page or failed
    # Only now, with the page drawn: the run manager and the warm-up import torch and transformers,
    # seconds a fresh server's first page must not wait for.
    start_after_first_draw()
