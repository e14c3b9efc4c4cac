"""UI latency in a real browser (Debian chromium) against a live streamlit server, tiny-random runs.

Prints two figures:
  * launch -> first live point: from the click on Launch to the first training step drawn on the
    Run page's loss chart (target: under 3 s);
  * page switch: from a click in the sidebar to the page fully drawn (script run over, every
    chart rendered; target: under 1 s).

    .venv/bin/python benchmarks/ui_latency.py [--launches 3] [--switches 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from streamlit_server import launch_chromium, streamlit_server, wait_for_render  # noqa: E402

TIMEOUT_MS = 180_000
FIRST_POINT = """() => {
    const c = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
    return c && c.data && c.data[0].x && c.data[0].x.length >= 1;
}"""
ROUND_TRIP = ["Memory", "Compare", "Run", "Explain", "Launch", "Run"]


def settle(page) -> None:
    page.wait_for_timeout(300)
    wait_for_render(page, TIMEOUT_MS)


def measure_launch(page, url: str, steps: int, store, first: bool) -> dict:
    """Seconds from the Launch click to the first point drawn, split into the engine's part (until
    the first step is in the store) and the UI's (until the browser has drawn it)."""
    if first:
        page.goto(url + "/launch")
        wait_for_render(page, TIMEOUT_MS)
    else:  # as a user would: through the sidebar, in the same browser session
        click_and_wait(page, "Launch")
    page.get_by_role("button", name="Tiny smoke test (seconds)").click()
    settle(page)
    field = page.get_by_label("steps", exact=True)
    field.fill(str(steps))
    field.press("Enter")
    settle(page)
    known = {r["id"] for r in store.list_runs()}
    stored_at: list[float] = []
    done = threading.Event()

    def watch_store():
        while not done.is_set():
            new = [r["id"] for r in store.list_runs() if r["id"] not in known]
            if new and store.steps(new[0]):
                stored_at.append(time.perf_counter())
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_store, daemon=True)
    start = time.perf_counter()
    page.get_by_role("button", name="Launch", exact=True).click()
    watcher.start()
    page.wait_for_url("**/run?run=*", timeout=TIMEOUT_MS)
    on_run_page = time.perf_counter()
    page.wait_for_function(FIRST_POINT, timeout=TIMEOUT_MS, polling=50)
    drawn = time.perf_counter()
    done.set()
    watcher.join(timeout=5)
    result = {"total": drawn - start, "to_run_page": on_run_page - start}
    if stored_at:
        result["engine_to_first_step"] = stored_at[0] - start
        result["ui_after_step_stored"] = drawn - stored_at[0]
    return result


def click_and_wait(page, label: str) -> float:
    link = page.locator('[data-testid="stSidebarNav"] a', has_text=label).first
    start = time.perf_counter()
    link.click()
    # The click starts a rerun; wait for it to begin, then for the page to be fully drawn.
    try:
        page.wait_for_function(
            "() => document.querySelector('[data-testid=\"stApp\"]').getAttribute('data-test-script-state') === 'running'",
            timeout=2_000, polling=10,
        )
    except Exception:
        pass  # the run was already over before we looked
    wait_for_render(page, TIMEOUT_MS)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launches", type=int, default=3)
    parser.add_argument("--switches", type=int, default=3, help="rounds through the sidebar pages")
    parser.add_argument("--steps", type=int, default=200, help="steps of each launched tiny run (it is cancelled "
                        "after its first point)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    launch_times, switch_times = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(tmp) / "runs"
        with streamlit_server(runs_dir, Path(tmp) / "server.log") as url, sync_playwright() as pw:
            browser = launch_chromium(pw)
            try:
                page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                page.set_default_timeout(TIMEOUT_MS)
                from app.store import RunStore

                store = RunStore(runs_dir)
                for index in range(args.launches):
                    launch_times.append(measure_launch(page, url, args.steps, store, first=index == 0))
                    page.get_by_role("button", name="Cancel run").click()  # only the first point matters
                    # The whole page reruns once the run has stopped: its details show why.
                    page.get_by_text("Cancelled: cancelled by the user").wait_for(timeout=TIMEOUT_MS)
                    settle(page)
                click_and_wait(page, "Launch")  # warm every page once
                for label in ROUND_TRIP:
                    click_and_wait(page, label)
                for _ in range(args.switches):
                    for label in ROUND_TRIP:
                        switch_times.setdefault(label, []).append(click_and_wait(page, label))
            finally:
                browser.close()
    every_switch = [t for times in switch_times.values() for t in times]
    totals = [t["total"] for t in launch_times]
    result = {
        "launch_to_first_point_s": {"first": totals[0], "median": statistics.median(totals), "all": launch_times},
        "page_switch_s": {"median": statistics.median(every_switch), "max": max(every_switch),
                          "per_page_median": {k: statistics.median(v) for k, v in switch_times.items()}},
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"launch click -> first live point (s): first (cold browser and server) "
              f"{result['launch_to_first_point_s']['first']:.2f}, median of the rest "
              f"{statistics.median(totals[1:] or totals):.2f} (target < 3)")
        for t in launch_times:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in t.items() if k != "total")
            print(f"  {t['total']:.2f}  ({parts})")
        print(f"page switch (s): median {result['page_switch_s']['median']:.2f}, max {result['page_switch_s']['max']:.2f}"
              " (target < 1)")
        for label, value in result["page_switch_s"]["per_page_median"].items():
            print(f"  {label:<8} {value:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
