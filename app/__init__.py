"""Ladder & Theseus Lab: the headless engine (backbones, data, methods, training, store, runs).

Nothing in this package imports streamlit except the UI entry script `app/main.py`.
"""

__version__ = "0.1.0"
