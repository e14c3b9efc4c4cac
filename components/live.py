"""Live page parts: a fragment that refreshes every second only while something is running.

`render(*args)` draws the part and returns whether what it shows is still active. When it stops
being active the whole page reruns once, which recreates the fragment without a timer, so an idle
page never polls.
"""

from __future__ import annotations

from typing import Callable

import streamlit as st

REFRESH_SECONDS = 1.0


def live(render: Callable[..., bool], *args, active: bool) -> None:
    def body(*inner_args):
        still_active = render(*inner_args)
        if active and not still_active:
            st.rerun()

    st.fragment(body, run_every=REFRESH_SECONDS if active else None)(*args)
