"""Draw the README's plot of Theseus against truncation by training-set size, from the benchmarks'
JSON: `benchmarks/results/theseus_data_size.json` (subsets) and, for the whole training split,
`benchmarks/results/theseus_convergence.json`. Renders a plotly figure in the headless browser the
tests use and saves it as a PNG.

    .venv/bin/python scripts/plot_theseus_data_size.py [--out assets/screenshots/theseus-data-size.png]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from streamlit_server import launch_chromium  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SCHEDULERS = {"theseus linear": "linear scheduler (the lab's default)", "theseus constant": "constant p = 0.5 (the paper's)"}


def points() -> dict[str, list[tuple[int, float, float, int]]]:
    """Per scheduler: (training examples, mean successor − truncation in points, std, seeds)."""
    sizes = json.loads((RESULTS / "theseus_data_size.json").read_text())
    out = {role: [] for role in SCHEDULERS}
    for size, entry in sizes["summary"].items():
        for role in SCHEDULERS:
            over = entry["over_truncation_points"][role]
            out[role].append((int(size), over["mean"], over["std"], len(over["values"])))
    whole = json.loads((RESULTS / "theseus_convergence.json").read_text())
    examples = whole["settings"]["train_examples"]
    for role in SCHEDULERS:
        over = whole["summary"][role]["over_truncation_points"]
        out[role].append((examples, over["mean"], over["std"], len(over["values"])))
    return out


def figure(data: dict):
    import plotly.graph_objects as go

    fig = go.Figure()
    sizes = sorted({r[0]: r[3] for rows in data.values() for r in rows}.items())
    whole = max(size for size, _ in sizes)
    ticks = [f"{size:,}" + (" (all, 3 epochs)" if size == whole else "") + f"<br>{seeds} seeds" for size, seeds in sizes]
    for role, label in SCHEDULERS.items():
        rows = sorted(data[role])
        fig.add_trace(go.Scatter(
            x=[r[0] for r in rows], y=[r[1] for r in rows], mode="lines+markers", name=label,
            error_y=dict(type="data", array=[r[2] for r in rows], visible=True),
        ))
    fig.add_hline(y=0, line_dash="dot", line_color="grey")
    fig.add_hline(y=1, line_dash="dash", line_color="green", annotation_text="+1 point",
                  annotation_position="top left")
    fig.update_layout(
        title="BERT-of-Theseus 6 → 3 minus truncation to 3 layers (MiniLM-L6, Rotten Tomatoes, test accuracy, "
              "mean ± std over seeds)",
        xaxis=dict(title="training examples", type="log", tickvals=[size for size, _ in sizes], ticktext=ticks), yaxis=dict(title="successor − truncation (points)"),
        width=1000, height=540, template="plotly_white", legend=dict(x=0.01, y=0.02),
    )
    return fig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "assets" / "screenshots" / "theseus-data-size.png"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    html = figure(points()).to_html(include_plotlyjs=True, full_html=True)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        page_file = Path(tmp) / "plot.html"
        page_file.write_text(html)
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1020, "height": 540})
            page.goto(page_file.as_uri())
            page.wait_for_selector(".main-svg")
            page.locator(".plotly-graph-div").screenshot(path=args.out)
        finally:
            browser.close()
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
