"""Starting the app as a real streamlit server and driving Debian's chromium against it
(shared by the browser test and benchmarks/ui_latency.py)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(runs_dir: Path, log_path: Path, timeout: float = 90.0):
    """A running `streamlit run app/main.py` on a free port; yields its base URL; always stopped."""
    port = free_port()
    env = dict(os.environ, LAB_RUNS_DIR=str(runs_dir), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"streamlit exited with {process.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"streamlit did not become healthy in {timeout}s; see {log_path}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        log.close()


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def wait_for_app(page, timeout_ms: float = 90_000) -> None:
    """Until the script run has finished: the app container exists and no element is stale/running."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_ms)
    page.wait_for_function(
        """() => {
            const app = document.querySelector('[data-testid="stApp"]');
            return app && app.getAttribute('data-test-script-state') === 'notRunning';
        }""",
        timeout=timeout_ms,
    )


def wait_for_render(page, timeout_ms: float = 90_000) -> None:
    """Until the script run is over, no element is a loading skeleton and every plotly chart has drawn."""
    wait_for_app(page, timeout_ms)
    page.wait_for_function(
        """() => {
            if (document.querySelector('[data-testid="stSkeleton"], [data-testid="stSkeletonElement"]')) return false;
            const charts = document.querySelectorAll('[data-testid="stPlotlyChart"]');
            return Array.from(charts).every(c => c.querySelector('.main-svg'));
        }""",
        timeout=timeout_ms,
    )


def plotly_point_count(page, index: int = 0) -> int:
    """Points drawn by the first trace of the index-th plotly chart on the page (0 when absent)."""
    return page.evaluate(
        """(i) => {
            const charts = document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot');
            const chart = charts[i];
            if (!chart || !chart.data || !chart.data.length) return 0;
            const x = chart.data[0].x;
            return x ? x.length : 0;
        }""",
        index,
    )
