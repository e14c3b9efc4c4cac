"""A fresh server draws its first page before anything heavy runs: the entry script and Home import
neither torch nor transformers, and the run manager and the warm-up start only once the page has
drawn (in the background, so they still happen)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT

HEAVY = ("torch", "transformers", "accelerate", "peft", "datasets", "sklearn", "scipy")

# A fresh process, as a fresh server is: AppTest runs the entry script with Home, and the hook the
# entry script calls once the page has drawn records what had been imported by then.
FIRST_DRAW = """
import json, os, sys, threading
sys.path.insert(0, {root!r})
from streamlit.testing.v1 import AppTest
import components.common as common
import components.home_view as home_view

home_drawn = []
counts = home_view.run_counts  # Home's last element
def counted(runs):
    counts(runs)
    home_drawn.append(True)
home_view.run_counts = counted

seen = []
start = common.start_after_first_draw
def recorded():
    seen.append({{"home_drawn": bool(home_drawn), "heavy": sorted(n for n in {heavy!r} if n in sys.modules)}})
    start()
common.start_after_first_draw = recorded

at = AppTest.from_file({main!r}, default_timeout=120).run()
drawn = {{
    "exception": [e.value for e in at.exception],
    "titles": [t.value for t in at.title],
    "text": " ".join(m.value for m in at.markdown),
    "info": [i.value for i in at.info],
    "started": seen,
}}
for thread in threading.enumerate():
    if thread.name == "lab-start-up":
        thread.join(240)
from app import warmup
drawn["manager_started"] = common.runs_dir() in common._managers
drawn["warm_up_started"] = warmup.start_warm_up() is None  # None: already started for this configuration
print(json.dumps(drawn), flush=True)
os._exit(0)  # the warm-up thread may still be importing; nothing of it is needed here
"""


def test_entry_script_and_home_draw_before_torch_and_transformers_are_imported(tmp_path):
    code = FIRST_DRAW.format(root=str(ROOT), heavy=HEAVY, main=str(ROOT / "app" / "main.py"))
    env = {**os.environ, "LAB_RUNS_DIR": str(tmp_path / "runs"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    drawn = json.loads(out.stdout.strip().splitlines()[-1])
    assert drawn["exception"] == []
    assert drawn["titles"] == ["Ladder & Theseus Lab"]
    assert "decoder language models" in drawn["text"]
    assert any("No runs yet" in info for info in drawn["info"])
    # the background start ran once, after Home had drawn, and by then nothing heavy was imported
    assert drawn["started"] == [{"home_drawn": True, "heavy": []}]
    # deferred, not dropped: the run manager and the warm-up started after the page
    assert drawn["manager_started"] and drawn["warm_up_started"]


def test_the_apps_runs_folder_is_the_managers(tmp_path, monkeypatch):
    from app.manager import default_runs_dir
    from components.common import runs_dir

    monkeypatch.delenv("LAB_RUNS_DIR", raising=False)
    assert runs_dir() == str(default_runs_dir().expanduser().resolve())
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert runs_dir() == str(default_runs_dir().expanduser().resolve())


def test_home_counts_a_run_a_stopped_process_left_running_as_interrupted():
    from components.home_view import status_now

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    assert status_now({"status": "running", "owner_pid": ended.pid, "owner_token": None}) == "interrupted"
    assert status_now({"status": "queued", "owner_pid": ended.pid, "owner_token": None}) == "interrupted"
    assert status_now({"status": "running", "owner_pid": os.getpid(), "owner_token": None}) == "running"
    assert status_now({"status": "finished", "owner_pid": ended.pid, "owner_token": None}) == "finished"
