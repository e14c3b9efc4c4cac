"""UI latency in a real browser (Debian chromium) against a live streamlit server, tiny-random runs.

Prints three figures:
  * fresh server -> Home first heading: from a newly started server answering its health check to
    Home's title visible in a browser that has never seen the app (a new server, runs folder and
    browser context each time; target: at most 1.5 s);
  * launch -> first live point: from the click on Launch to the first training step drawn on the
    Run page's loss chart (target: under 3 s);
  * page switch: from a click in the sidebar to the page fully drawn (script run over, every
    chart rendered; target: under 1 s);
  * Plan: the first view of the default plan (Llama-3.1-8B, three methods: their surfaces are
    measured), then from a key press on the batch slider to the curves redrawn (target: under 1 s).

    .venv/bin/python benchmarks/ui_latency.py [--homes 3] [--launches 3] [--switches 3] [--plan-moves 5] [--json]

`--launches 0 --switches 0` measures the Home figure alone.
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
HOME_TITLE = "Ladder & Theseus Lab"


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


def measure_fresh_home(pw, tmp: Path, index: int) -> float:
    """Seconds from a new server's first healthy answer to Home's title visible in a new browser
    context. The browser starts before the server, so its own start-up is not counted."""
    browser = launch_chromium(pw)
    try:
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto("about:blank")
        folder = tmp / f"home-{index}"
        folder.mkdir()
        with streamlit_server(folder / "runs", folder / "server.log") as url:
            start = time.perf_counter()  # the server has just answered its health check
            page.goto(url)
            page.get_by_role("heading", name=HOME_TITLE, level=1).wait_for(state="visible", timeout=TIMEOUT_MS)
            seconds = time.perf_counter() - start
            wait_for_render(page, TIMEOUT_MS)  # let the run end before the server stops
            return seconds
    finally:
        browser.close()


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "all": values}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--homes", type=int, default=3, help="fresh servers opened on Home")
    parser.add_argument("--launches", type=int, default=3)
    parser.add_argument("--switches", type=int, default=3, help="rounds through the sidebar pages")
    parser.add_argument("--steps", type=int, default=200, help="steps of each launched tiny run (it is cancelled "
                        "after its first point)")
    parser.add_argument("--plan-moves", type=int, default=5, help="batch slider moves timed on the Plan page")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    home_times, launch_times, switch_times, plan_times = [], [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        with sync_playwright() as pw:
            for index in range(args.homes):
                home_times.append(measure_fresh_home(pw, Path(tmp), index))
        if args.launches or args.switches or args.plan_moves:
            measure_running_app(args, Path(tmp), launch_times, switch_times, plan_times)
    result = {}
    if home_times:
        result["fresh_server_to_home_heading_s"] = spread(home_times)
    if launch_times:
        totals = [t["total"] for t in launch_times]
        result["launch_to_first_point_s"] = {"first": totals[0], "median": statistics.median(totals),
                                             "all": launch_times}
    if switch_times:
        every_switch = [t for times in switch_times.values() for t in times]
        result["page_switch_s"] = {"median": statistics.median(every_switch), "max": max(every_switch),
                                   "per_page_median": {k: statistics.median(v) for k, v in switch_times.items()}}
    if plan_times:
        result["plan_first_view_s"] = plan_times["first_view"]
        result["plan_slider_redraw_s"] = spread(plan_times["redraws"])
    if args.json:
        print(json.dumps(result))
        return 0
    if home_times:
        home = result["fresh_server_to_home_heading_s"]
        print(f"fresh server -> Home first heading (s): min {home['min']:.2f}, median {home['median']:.2f}, "
              f"max {home['max']:.2f} over {len(home_times)} servers (target <= 1.5)")
    if launch_times:
        print(f"launch click -> first live point (s): first (cold browser and server) {totals[0]:.2f}, "
              f"median of the rest {statistics.median(totals[1:] or totals):.2f} (target < 3)")
        for t in launch_times:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in t.items() if k != "total")
            print(f"  {t['total']:.2f}  ({parts})")
    if switch_times:
        print(f"page switch (s): median {result['page_switch_s']['median']:.2f}, "
              f"max {result['page_switch_s']['max']:.2f} (target < 1)")
        for label, value in result["page_switch_s"]["per_page_median"].items():
            print(f"  {label:<8} {value:.2f}")
    if plan_times:
        redraw = result["plan_slider_redraw_s"]
        print(f"Plan first view, surfaces measured (s): {plan_times['first_view']:.2f}")
        print(f"Plan batch slider -> curves redrawn (s): min {redraw['min']:.2f}, median {redraw['median']:.2f}, "
              f"max {redraw['max']:.2f} over {len(redraw['all'])} moves (target < 1)")
    return 0


CURVE = """() => { const c = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
                   return c && c.data ? JSON.stringify(c.data[0].y) : null; }"""


def measure_plan(page, url: str, moves: int) -> dict:
    """The Plan page's first view (its surfaces measured), then key press -> curves redrawn."""
    started = time.perf_counter()
    page.goto(url + "/plan")
    wait_for_render(page, TIMEOUT_MS)
    page.wait_for_function(CURVE, timeout=TIMEOUT_MS)
    first_view = time.perf_counter() - started
    redraws = []
    slider = page.get_by_role("slider").first
    for _ in range(moves):
        before = page.evaluate(CURVE)
        slider.focus()
        started = time.perf_counter()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(f"(b) => ({CURVE})() !== b", arg=before, timeout=TIMEOUT_MS, polling=20)
        redraws.append(time.perf_counter() - started)
        settle(page)  # the direct check of the point finishes before the next move
    return {"first_view": first_view, "redraws": redraws}


def measure_running_app(args, tmp: Path, launch_times: list, switch_times: dict, plan_times: dict) -> None:
    """Launch and page-switch figures, on one server and browser session."""
    from playwright.sync_api import sync_playwright

    runs_dir = tmp / "runs"
    with streamlit_server(runs_dir, tmp / "server.log") as url, sync_playwright() as pw:
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
            if args.switches:
                click_and_wait(page, "Launch")  # warm every page once
                for label in ROUND_TRIP:
                    click_and_wait(page, label)
            for _ in range(args.switches):
                for label in ROUND_TRIP:
                    switch_times.setdefault(label, []).append(click_and_wait(page, label))
            if args.plan_moves:
                plan_times.update(measure_plan(page, url, args.plan_moves))
        finally:
            browser.close()


if __name__ == "__main__":
    sys.exit(main())
