"""The pages of the app, in menu order; pages link to each other through `page(name)`."""

from __future__ import annotations

import streamlit as st

# (url path, file, title, icon); the first is the default page. Streamlit serves the default page
# at "/" only, so it is a small home page and every working page keeps a deep link of its own.
PAGES = [
    ("home", "home.py", "Home", ":material/home:"),
    ("launch", "launch.py", "Launch", ":material/rocket_launch:"),
    ("run", "run.py", "Run", ":material/monitoring:"),
    ("ladder", "ladder.py", "Ladder (LST)", ":material/stairs:"),
    ("theseus", "theseus.py", "Theseus", ":material/sailing:"),
    ("memory", "memory.py", "Memory", ":material/memory:"),
    ("plan", "plan.py", "Plan", ":material/straighten:"),
    ("compare", "compare.py", "Compare", ":material/compare_arrows:"),
    ("compress", "compress.py", "Compress", ":material/compress:"),
    ("explain", "explain.py", "Explain", ":material/lightbulb:"),
]


def page(url_path: str) -> st.Page:
    for index, (path, file, title, icon) in enumerate(PAGES):
        if path == url_path:
            # Paths resolve against the entry script's folder (app/); see app/main.py.
            return st.Page(f"../pages/{file}", title=title, icon=icon, url_path=path, default=index == 0)
    raise KeyError(url_path)


def all_pages() -> list[st.Page]:
    return [page(path) for path, *_ in PAGES]
