"""Seconds from submitting a run to its first logged step, in a fresh process, with and without
the app's start-up warm-up (app/warmup.py).

Each measurement is a new Python process, as when the app has just been started: it creates the
run manager, optionally starts the warm-up and waits `--form-seconds` (a user filling in the
Launch form), then submits the default run and records the time until the store holds step 1.
Modes alternate so machine load affects both alike; the figure is the median per mode.

    python benchmarks/first_step_latency.py [--repeats 3] [--form-seconds 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import sys, tempfile, time
sys.path.insert(0, {root!r})
from app.config import RunConfig
from app.manager import RunManager
from app.store import RunStore
from app.warmup import start_warm_up
warm, form_seconds = {warm!r}, {form_seconds!r}
config = RunConfig(steps=3, eval_every=10**6, max_eval_examples=64)
manager = RunManager(RunStore(tempfile.mkdtemp()))
if warm:
    start_warm_up(config)
time.sleep(form_seconds)
submitted = time.perf_counter()
run_id = manager.submit(config)
while not manager.store.steps(run_id):
    time.sleep(0.01)
print(time.perf_counter() - submitted)
manager.cancel(run_id)
manager.shutdown()
"""


def measure(warm: bool, form_seconds: float) -> float:
    code = CHILD.format(root=str(ROOT), warm=warm, form_seconds=form_seconds)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--form-seconds", type=float, default=8.0)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"cold": [], "warmed": []}
    for repeat in range(args.repeats):
        for mode in ("cold", "warmed"):
            times[mode].append(measure(mode == "warmed", args.form_seconds))
            print(f"repeat {repeat + 1} {mode}: {times[mode][-1]:.2f} s", file=sys.stderr)
    cold, warmed = statistics.median(times["cold"]), statistics.median(times["warmed"])
    print(f"submit -> first step, fresh process, default run, {args.form_seconds:g} s on the form: "
          f"without warm-up {cold:.2f} s, with warm-up {warmed:.2f} s ({cold / warmed:.1f}x faster)")
    if args.json:
        Path(args.json).write_text(json.dumps({"form_seconds": args.form_seconds, "seconds": times,
                                               "cold_median": cold, "warmed_median": warmed}, indent=2))


if __name__ == "__main__":
    main()
