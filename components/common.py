"""Process-wide resources shared by every page and browser session."""

from __future__ import annotations

import streamlit as st

from app.manager import default_runs_dir, get_manager


@st.cache_resource
def _manager(runs_dir: str):
    return get_manager(runs_dir)


def get_manager_for_app():
    return _manager(str(default_runs_dir().expanduser().resolve()))


def get_store():
    return get_manager_for_app().store
