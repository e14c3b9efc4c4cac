"""End to end in a real browser: a live streamlit server driven by Debian's chromium.

Launches a run by clicking, watches its live chart gain points, cancels a second run, opens every
page by deep link and from the sidebar, uploads a CSV, and saves screenshots (light and dark) to
`LAB_ARTIFACTS_DIR` (default: a temporary folder)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from streamlit_server import CHROMIUM, launch_chromium, plotly_point_count, streamlit_server, wait_for_render

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (scripts/setup.sh --test)"),
]
playwright_api = pytest.importorskip("playwright.sync_api")

TIMEOUT_MS = 120_000
PAGE_TITLES = {
    "": "Ladder & Theseus Lab",
    "launch": "Launch a run",
    "run": "Run",
    "ladder": "Ladder Side-Tuning",
    "theseus": "BERT-of-Theseus",
    "memory": "Training memory",
    "plan": "Plan: will it fit?",
    "compare": "Compare runs",
    "compress": "Compress",
    "explain": "Explain predictions",
}
SIDEBAR = {"Home": "", "Launch": "launch", "Run": "run", "Ladder (LST)": "ladder", "Theseus": "theseus", "Memory": "memory",
           "Plan": "plan", "Compare": "compare", "Compress": "compress", "Explain": "explain"}


@pytest.fixture
def artifacts(tmp_path) -> Path:
    folder = Path(os.environ.get("LAB_ARTIFACTS_DIR") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def settle(page) -> None:
    """Let a click start its rerun, then wait until the page has rendered completely."""
    page.wait_for_timeout(400)
    wait_for_render(page, TIMEOUT_MS)


def heading(page) -> str:
    return page.locator("h1").first.inner_text().strip()


def assert_no_exception(page, where: str) -> None:
    errors = page.locator('[data-testid="stException"]')
    assert errors.count() == 0, f"{where}: {errors.first.inner_text()}"


def set_number(page, label: str, value: int) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")
    settle(page)


def test_the_app_end_to_end_in_chromium(tmp_path, artifacts):
    runs_dir = tmp_path / "runs"
    data = tmp_path / "reviews.csv"
    data.write_text("review,sentiment\n" + "\n".join(
        f"\"{'a warm, funny film' if i % 2 else 'a dull, slow film'} ({i})\",{'pos' if i % 2 else 'neg'}"
        for i in range(40)))
    with streamlit_server(runs_dir, artifacts / "server.log") as url, playwright_api.sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            # the app must work offline: every request it makes goes to its own server
            outside: list[str] = []
            page.on("request", lambda request: outside.append(request.url)
                    if not request.url.startswith((url, "data:", "blob:")) else None)

            # Launch a tiny run by clicking; the app opens its page and the live chart gains points.
            page.goto(url + "/launch")
            wait_for_render(page, TIMEOUT_MS)
            assert heading(page) == "Launch a run"
            page.get_by_role("button", name="Tiny smoke test (seconds)").click()
            settle(page)
            # Long enough to be still training however slowly the browser draws its first chart.
            set_number(page, "steps", 100000)
            page.get_by_role("button", name="Launch", exact=True).click()
            page.wait_for_url("**/run?run=*", timeout=TIMEOUT_MS)
            page.wait_for_function(
                """() => { const c = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
                           return c && c.data && c.data[0].x && c.data[0].x.length >= 1; }""", timeout=TIMEOUT_MS)
            seen = plotly_point_count(page)
            page.wait_for_function(
                """(n) => { const c = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
                            return c && c.data && c.data[0].x.length > n; }""", arg=seen, timeout=TIMEOUT_MS)
            assert plotly_point_count(page) > seen
            page.screenshot(path=str(artifacts / "run-live.png"))

            # Cancel it from its page.
            cancelled_run = page.url.split("run=")[1]
            page.get_by_role("button", name="Cancel run").click()
            # The live part shows the end of the run, then reruns the whole page, which alone draws the
            # reason below the charts. A sidebar click that lands during that rerun is lost (streamlit
            # coalesces the two requests and keeps the newer one's page, the run page), so wait for it.
            page.locator('[data-testid="stAlert"]', has_text="Cancelled: cancelled by the user").wait_for(
                timeout=TIMEOUT_MS)
            settle(page)
            assert_no_exception(page, "cancel")

            # A second, short run: the tiny LLaMA-style decoder learns film dialogue (task causal-lm) and
            # finishes while we watch its page, which shows the model's answers from step 0 on.
            page.locator('[data-testid="stSidebarNav"] a', has_text="Launch").click()
            settle(page)
            page.get_by_label("Backbone", exact=True).click()
            page.get_by_role("option", name=re.compile(r"^tiny-random-llama")).click()
            settle(page)
            page.get_by_text("llama decoder", exact=False).first.wait_for(timeout=TIMEOUT_MS)
            page.get_by_text("causal-lm", exact=True).click()
            settle(page)
            page.get_by_label("Dataset", exact=True).click()
            page.get_by_role("option", name=re.compile(r"^movie-dialog")).click()
            settle(page)
            for label, value in (("steps", 6), ("eval every", 3), ("max length", 32), ("max train examples", 64),
                                 ("generations", 1), ("max new tokens", 4)):
                set_number(page, label, value)
            page.get_by_role("button", name="Launch", exact=True).click()
            page.wait_for_url(lambda u: "run=" in u and cancelled_run not in u, timeout=TIMEOUT_MS)
            finished_run = page.url.split("run=")[1]
            page.get_by_text("finished at step", exact=False).first.wait_for(timeout=300_000)
            # The live part saw the run end and reran the whole page, which now offers the model export
            # and the answers at steps 0, 3 and 6.
            page.get_by_role("button", name="Export the model").wait_for(timeout=TIMEOUT_MS)
            settle(page)
            assert page.get_by_text("tiny-random-llama", exact=False).count() >= 1
            page.get_by_text("Prompt 1:", exact=False).first.wait_for(timeout=TIMEOUT_MS)
            assert page.get_by_text("step 0 is the untuned model", exact=False).count() == 1
            assert page.get_by_text("validation perplexity", exact=False).count() >= 1
            page.screenshot(path=str(artifacts / "run-finished.png"), full_page=True)

            # Every page by deep link, then from the sidebar.
            for path, title in PAGE_TITLES.items():
                page.goto(f"{url}/{path}")
                wait_for_render(page, TIMEOUT_MS)
                assert heading(page) == title, path
                assert_no_exception(page, path or "home")
            for label, path in SIDEBAR.items():
                page.locator('[data-testid="stSidebarNav"] a', has_text=label).first.click()
                settle(page)
                assert heading(page) == PAGE_TITLES[path], label
                assert_no_exception(page, label)
                page.screenshot(path=str(artifacts / f"{path or 'home'}-light.png"))

            # Plan: the batch slider redraws the curves from the measured surfaces.
            page.goto(url + "/plan")
            wait_for_render(page, TIMEOUT_MS)
            curve = """() => document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot').data[0].y"""
            before = page.evaluate(curve)
            page.get_by_role("slider").first.focus()
            page.keyboard.press("ArrowRight")
            settle(page)
            after = page.evaluate(curve)
            assert len(after) == len(before) and all(a > b for a, b in zip(after, before))
            assert_no_exception(page, "plan")
            page.screenshot(path=str(artifacts / "plan.png"), full_page=True)

            # Upload a CSV and map its columns.
            page.goto(url + "/launch")
            wait_for_render(page, TIMEOUT_MS)
            page.get_by_label("Dataset", exact=True).click()
            page.get_by_role("option", name="Upload a file…").click()
            settle(page)
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(data))
            page.get_by_text("Text column", exact=True).wait_for(timeout=TIMEOUT_MS)
            settle(page)
            assert page.get_by_text("First rows", exact=False).count() == 1
            assert list((runs_dir / "uploads").glob("upload-*.csv"))
            page.screenshot(path=str(artifacts / "upload.png"))

            # Dark theme: the charts must stay readable.
            dark = browser.new_context(viewport={"width": 1400, "height": 1100}, color_scheme="dark").new_page()
            dark.set_default_timeout(TIMEOUT_MS)
            dark.goto(f"{url}/run?run={finished_run}")
            wait_for_render(dark, TIMEOUT_MS)
            assert_no_exception(dark, "dark run page")
            dark.screenshot(path=str(artifacts / "run-dark.png"))
            assert outside == [], outside
        finally:
            browser.close()
