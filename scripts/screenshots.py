"""Retake the README's screenshots from real lesson runs.

Runs each lesson at its default preset into a runs folder (reusing what is already there), starts
the app on 127.0.0.1 over that folder, and saves full-page screenshots of the pages that explain
them to assets/screenshots/ (the ladder in the dark theme), and the Plan page on Llama-3.1-8B. Look at them before committing.

    .venv/bin/python scripts/screenshots.py [--runs-dir runs-screenshots] [--seed 0] [--out assets/screenshots]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from streamlit_server import launch_chromium, streamlit_server, wait_for_render  # noqa: E402

TIMEOUT_MS = 180_000
# The README's screenshot of each lesson's page, by file.
LESSON_SHOTS = {"memory.png": "lst-memory", "theseus.png": "theseus", "compress.png": "shrink"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", default="runs-screenshots")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "assets" / "screenshots"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from app.lessons import get_lesson, run_lesson
    from app.manager import RunManager
    from app.store import RunStore

    runs_dir = Path(args.runs_dir).resolve()
    manager = RunManager(RunStore(runs_dir))
    try:
        results = {}
        for name in LESSON_SHOTS.values():
            results[name] = run_lesson(manager, name, seed=args.seed,
                                       on_progress=lambda message: print(message, file=sys.stderr))
            print(f"{name}: demonstrated={results[name]['demonstrated']} in {results[name]['wall_seconds']:.0f} s")
    finally:
        manager.shutdown(wait=True)
    memory, theseus = results["lst-memory"], results["theseus"]
    pages = {file_name: lesson_page(get_lesson(name), results[name]) for file_name, name in LESSON_SHOTS.items()}
    pages["explain.png"] = f"explain?runs={theseus['runs']['predecessor']},{theseus['runs']['theseus']}"
    pages["plan.png"] = "plan?model=config:llama-3.1-8b"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, streamlit_server(runs_dir, Path(tmp) / "server.log") as url, \
            sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            for scheme, shots in (("light", pages),
                                  ("dark", {"ladder-dark.png": f"ladder?run={memory['runs']['lst']}"})):
                page = browser.new_context(viewport={"width": 1400, "height": 1900}, color_scheme=scheme).new_page()
                page.set_default_timeout(TIMEOUT_MS)
                for file_name, path in shots.items():
                    page.goto(f"{url}/{path}")
                    wait_for_render(page, TIMEOUT_MS)
                    page.wait_for_timeout(1500)  # let plotly finish its transitions
                    page.screenshot(path=str(out / file_name), full_page=True)
                    print(f"saved {out / file_name}")
        finally:
            browser.close()
    return 0


def lesson_page(lesson, result: dict) -> str:
    """The address of the page a lesson's button opens on these runs."""
    query = lesson.page_query(result["lesson_id"], result["runs"])
    return f"{lesson.page}?" + "&".join(f"{key}={value}" for key, value in query.items())


if __name__ == "__main__":
    raise SystemExit(main())
