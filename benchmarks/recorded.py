"""What a benchmark writes about how it was run: its settings, without the paths of the machine
that ran it (where it wrote its JSON, its scratch folders), which say nothing about the figures."""

from __future__ import annotations

import argparse

MACHINE_PATHS = ("json", "runs_dir")


def recorded_settings(args: argparse.Namespace, **extra) -> dict:
    settings = {k: str(v) if hasattr(v, "__fspath__") else v for k, v in vars(args).items() if k not in MACHINE_PATHS}
    return {**settings, **extra}
