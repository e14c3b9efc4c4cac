"""Every page of the app through streamlit's AppTest, against stores holding real runs made by the engine."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT, tiny_config, train_now

MIB = 1024 * 1024
PAGES = ("home", "launch", "run", "ladder", "theseus", "memory", "plan", "compare", "compress", "explain")


def open_app(runs_dir: Path, monkeypatch, page: str | None = "launch", query: dict | None = None) -> AppTest:
    monkeypatch.setenv("LAB_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=240)
    if query:
        at.query_params.update(query)
    if page and page != "home":
        at.switch_page(f"../pages/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def follow(at: AppTest, page: str) -> AppTest:
    """A browser follows the script's st.switch_page; AppTest reruns the page it was last
    pointed at, so point it at the page the script moved to (query parameters stay)."""
    at.switch_page(f"../pages/{page}.py")
    return at


def charts(at: AppTest) -> dict[str, dict]:
    """Plotly specs on the page by title."""
    out = {}
    for element in at.get("plotly_chart"):
        spec = json.loads(element.proto.spec)
        title = (spec["layout"].get("title") or {}).get("text") or f"untitled {len(out)}"
        out[title] = spec
    return out


def trace(spec: dict, name: str) -> dict:
    return next(t for t in spec["data"] if t.get("name") == name)


def wait_for(condition, timeout: float = 180.0, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


@pytest.fixture(autouse=True)
def stop_new_managers():
    """Managers the app created during a test stop (their runs cancelled) when the test ends: a
    training thread left running at interpreter exit would abort the process."""
    from app import manager as manager_module

    before = set(manager_module._managers)
    yield
    for path in set(manager_module._managers) - before:
        manager_module._managers.pop(path).shutdown(wait=True, cancel_running=True)


@pytest.fixture(scope="session")
def ui_runs(tmp_path_factory):
    """A runs folder with real finished tiny runs: full fine-tuning, LST, and Theseus (whose
    predecessor is the full fine-tuning run)."""
    from app.store import RunStore

    path = tmp_path_factory.mktemp("ui-runs")
    store = RunStore(path)
    quick = dict(steps=4, eval_every=2, max_eval_examples=48)
    runs = {"full_ft": train_now(store, method="full_ft", **quick)}
    runs["lst"] = train_now(store, method="lst", method_config={"final_merge": True}, **quick)
    runs["theseus"] = train_now(store, method="theseus", method_config={"predecessor": runs["full_ft"]["id"]}, **quick)
    for method, record in runs.items():
        assert record["status"] == "finished", (method, record.get("error"))
    return path, store, runs


# --- empty store -----------------------------------------------------------------------------


def test_every_page_guides_the_user_when_there_are_no_runs(tmp_path, monkeypatch):
    at = open_app(tmp_path / "empty", monkeypatch)
    assert any("No runs yet" in info.value for info in at.info)
    expected = {"home": "No runs yet", "run": "No runs yet", "ladder": "No LST runs yet", "theseus": "No Theseus runs yet",
                "memory": "No runs yet", "compare": "No runs yet", "compress": "No finished runs yet",
                "explain": "No finished runs yet"}
    for page, message in expected.items():
        at.switch_page(f"../pages/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert any(message in info.value for info in at.info), (page, [i.value for i in at.info])
        assert not at.get("plotly_chart")


# --- launch ------------------------------------------------------------------------------------


def _tiny_form(at: AppTest, steps: int = 4000) -> AppTest:
    at.button(key="preset.1").click().run()
    at.number_input(key="run.steps").set_value(steps).run()
    at.checkbox(key="launch.open").uncheck().run()
    return at


def test_launch_queues_a_run_and_the_queue_cancel_button_stops_it(runs_dir, monkeypatch):
    from app.manager import get_manager
    from app.store import RunStore

    at = _tiny_form(open_app(runs_dir, monkeypatch))
    at.button(key="launch.submit").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    [run] = RunStore(runs_dir).list_runs()
    assert run["status"] in ("queued", "running")
    assert (run["backbone"], run["dataset"], run["config"]["steps"], run["config"]["batch_size"]) == (
        "tiny-random", "sms-spam", 4000, 8)
    assert run["id"] in at.success[0].value
    at.run()  # the queue now lists the active run with its cancel button
    at.button(key=f"queue.cancel.{run['id']}").click().run()
    final = get_manager(runs_dir).wait(run["id"], timeout=180)
    assert final["status"] == "cancelled"


def test_the_launch_form_keeps_its_settings_across_page_switches(runs_dir, monkeypatch):
    at = _tiny_form(open_app(runs_dir, monkeypatch), steps=123)
    at.selectbox(key="launch.method").set_value("lora").run()
    at.number_input(key="method.lora.rank").set_value(2).run()
    for page in ("memory", "run", "launch"):
        at.switch_page(f"../pages/{page}.py").run()
        assert not at.exception, page
    assert at.selectbox(key="launch.backbone").value == "tiny-random"
    assert at.selectbox(key="launch.dataset").value == "sms-spam"
    assert at.selectbox(key="launch.method").value == "lora"
    assert at.number_input(key="method.lora.rank").value == 2
    assert (at.number_input(key="run.steps").value, at.number_input(key="run.batch_size").value) == (123, 8)
    assert at.checkbox(key="launch.open").value is False
    assert not at.warning, [w.value for w in at.warning]


def test_every_method_launches_from_the_form_with_its_defaults(runs_dir, monkeypatch):
    """Each method's default settings go through the form's widgets (an empty list field included)
    and are accepted by the engine."""
    from app.manager import get_manager
    from app.methods import METHODS
    from app.store import RunStore

    at = _tiny_form(open_app(runs_dir, monkeypatch), steps=2)
    launchable = [name for name, cls in METHODS.items() if not cls.reference_fields]
    for name in launchable:
        at.selectbox(key="launch.method").set_value(name).run()
        at.button(key="launch.submit").click().run()
        assert not at.exception and not at.error, (name, [e.value for e in at.error])
    runs = RunStore(runs_dir).list_runs()
    assert sorted(r["method"] for r in runs) == sorted(launchable)
    for run in runs:
        assert get_manager(runs_dir).wait(run["id"], timeout=180)["status"] == "finished", run["method"]


def test_a_decoder_backbone_is_picked_launched_and_its_unsupported_methods_flagged(runs_dir, monkeypatch):
    from app.manager import get_manager
    from app.store import RunStore

    at = _tiny_form(open_app(runs_dir, monkeypatch), steps=3)
    at.selectbox(key="launch.backbone").set_value("tiny-random-llama").run()
    assert any("llama decoder" in caption.value for caption in at.caption)
    at.selectbox(key="launch.method").set_value("bitfit").run()  # LLaMA layers have no bias terms
    assert any("cannot train on tiny-random-llama" in w.value for w in at.warning), [w.value for w in at.warning]
    at.button(key="launch.submit").click().run()
    assert any("has no bias terms" in e.value for e in at.error), [e.value for e in at.error]
    assert RunStore(runs_dir).list_runs() == []
    at.selectbox(key="launch.method").set_value("lora").run()
    assert not at.warning, [w.value for w in at.warning]
    at.button(key="launch.submit").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    [run] = RunStore(runs_dir).list_runs()
    final = get_manager(runs_dir).wait(run["id"], timeout=180)
    assert (final["status"], final["backbone"], final["method"]) == ("finished", "tiny-random-llama", "lora")


def test_bad_input_shows_the_engines_message_and_stores_nothing(runs_dir, monkeypatch):
    from app.store import RunStore

    at = _tiny_form(open_app(runs_dir, monkeypatch))
    at.number_input(key="run.max_train_examples").set_value(4).run()
    at.button(key="launch.submit").click().run()
    assert not at.exception
    assert any("batch_size 8 is larger than the training set" in e.value for e in at.error)
    assert RunStore(runs_dir).list_runs() == []


def _upload(content: bytes, name: str = "data.csv"):
    def act(at: AppTest, _reference: str) -> None:
        at.selectbox(key="launch.dataset").set_value("Upload a file…").run()
        at.file_uploader[0].set_value((name, content, "text/csv")).run()
    return act


def _backbone(name: str):
    def act(at: AppTest, _reference: str) -> None:
        # Typed into the selectbox (it accepts new options). AppTest only sends values listed in
        # the element's options, so list the typed one before each rerun, launch included.
        box = at.selectbox(key="launch.backbone")
        box.options.append(name)
        box.set_value(name).run()
        at.selectbox(key="launch.backbone").options.append(name)
        at.button(key="launch.submit").click().run()
    return act


def _method(name: str, dataset: str | None = None, **settings):
    def act(at: AppTest, reference: str) -> None:
        if dataset:
            at.selectbox(key="launch.dataset").set_value(dataset).run()
        at.selectbox(key="launch.method").set_value(name).run()
        for field_name, value in settings.items():
            widget = at.selectbox if field_name in ("predecessor", "teacher") else at.number_input
            widget(key=f"method.{name}.{field_name}").set_value(reference if value == "REF" else value).run()
    return act


# What a user can type or upload on the launch page that the engine must refuse: (act, message).
BAD_LAUNCHES = {
    "unknown backbone folder": (_backbone("/nowhere/model"), "not an existing model folder"),
    "uncached hub id, offline": (_backbone("someone/not-a-cached-model"), "cannot be reached"),
    "empty file": (_upload(b""), "empty"),
    "file that is not UTF-8": (_upload("text,label\ncaf\xe9,1\nthe,0\n".encode("latin-1")), "UTF-8"),
    "single class": (_upload(b"text,label\n" + b"same again,1\n" * 40), "single class"),
    "labels that are not single values": (
        _upload(b"".join(b'{"text": "t%d", "label": [%d, 2]}\n' % (i, i % 2) for i in range(40)), "d.jsonl"),
        "single values"),
    "Theseus layers that do not divide": (_method("theseus", "trec-6", predecessor="REF", layers=3),
                                           "do not split into 3"),
    "predecessor with other classes": (_method("theseus", predecessor="REF", layers=2), "trained on classes"),
    "teacher with other classes": (_method("distill", teacher="REF", layers=2), "trained on classes"),
}


@pytest.fixture
def other_labels_run(runs_dir) -> str:
    """A finished tiny run on TREC-6: six classes, unlike the form's two-class SMS spam."""
    from app.store import RunStore

    record = train_now(RunStore(runs_dir), dataset="trec-6", steps=2, eval_every=2)
    assert record["status"] == "finished", record.get("error")
    return record["id"]


@pytest.mark.parametrize("case", sorted(BAD_LAUNCHES))
def test_launch_refuses_bad_input_with_a_clear_message_and_queues_nothing(case, runs_dir, other_labels_run,
                                                                          monkeypatch):
    from app.store import RunStore

    act, message = BAD_LAUNCHES[case]
    at = _tiny_form(open_app(runs_dir, monkeypatch))
    act(at, other_labels_run)
    if not at.error:  # some input is refused as it is entered, the rest when launching
        at.button(key="launch.submit").click().run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert any(message in e for e in errors), errors
    assert [r["id"] for r in RunStore(runs_dir).list_runs()] == [other_labels_run]


def test_launch_caps_max_length_at_the_backbones_limit(runs_dir, monkeypatch):
    from app.backbones import get_backbone

    at = _tiny_form(open_app(runs_dir, monkeypatch))
    assert at.number_input(key="run.max_length").max == get_backbone("tiny-random").max_length


def test_links_to_runs_the_lab_does_not_hold_say_so(ui_runs, monkeypatch):
    path, store, runs = ui_runs
    for page, query in (("run", {"run": "../../etc/passwd"}), ("memory", {"runs": f"no-such-run,{runs['full_ft']['id']}"})):
        at = open_app(path, monkeypatch, page, query)
        assert not at.exception and not at.error, page
        assert any("No run" in w.value and "in this lab" in w.value for w in at.warning), page
    at = open_app(path, monkeypatch, "run", {"run": runs["full_ft"]["id"]})
    assert not any("No run" in w.value for w in at.warning)


def test_launch_opens_the_run_page_and_its_cancel_button_acts_on_the_manager(runs_dir, monkeypatch):
    from app.manager import get_manager

    at = open_app(runs_dir, monkeypatch)
    at.button(key="preset.1").click().run()
    at.number_input(key="run.steps").set_value(4000).run()
    at.button(key="launch.submit").click().run()
    assert not at.exception
    manager = get_manager(runs_dir)
    [run] = manager.store.list_runs()
    assert at.title[0].value == "Run"
    assert at.selectbox(key="picked_run").value == run["id"]
    assert at.query_params["run"] == run["id"]
    wait_for(lambda: manager.store.get_run(run["id"])["step"] >= 1)
    follow(at, "run").run()  # a refresh: the live curves now hold the first steps
    assert at.title[0].value == "Run"
    loss = charts(at)["Training loss"]
    steps = manager.store.steps(run["id"])
    assert trace(loss, "loss")["x"][: len(steps)] == [s["step"] for s in steps][: len(trace(loss, "loss")["x"])]
    at.button(key=f"run.cancel.{run['id']}").click().run()
    assert manager.wait(run["id"], timeout=180)["status"] == "cancelled"
    at.run()
    assert "cancelled" in at.progress[0].proto.text


def test_uploaded_file_is_saved_under_a_generated_name_and_its_columns_are_mapped(runs_dir, monkeypatch):
    from app.manager import get_manager

    rows = ["review,sentiment,source"] + [
        f"\"{'great fun' if i % 2 else 'dull and slow'} film number {i}\",{'pos' if i % 2 else 'neg'},web"
        for i in range(60)
    ]
    at = _tiny_form(open_app(runs_dir, monkeypatch))
    at.selectbox(key="launch.dataset").set_value("Upload a file…").run()
    at.file_uploader[0].set_value(("../../My Reviews.csv", "\n".join(rows).encode(), "text/csv")).run()
    assert not at.exception
    by_label = {s.label: s for s in at.selectbox}
    assert by_label["Text column"].options == ["review", "sentiment", "source"]
    by_label["Text column"].set_value("review")
    by_label["Label column"].set_value("sentiment")
    at.run()
    at.button(key="launch.submit").click().run()
    assert not at.error, [e.value for e in at.error]
    manager = get_manager(runs_dir)
    [run] = manager.store.list_runs()
    saved = Path(run["config"]["dataset"])
    assert saved.parent == runs_dir.resolve() / "uploads"
    assert saved.name.startswith("upload-") and saved.suffix == ".csv" and "Reviews" not in saved.name
    assert (run["config"]["text_column"], run["config"]["label_column"]) == ("review", "sentiment")
    manager.cancel(run["id"])
    assert manager.wait(run["id"], timeout=180)["status"] == "cancelled"


def test_upload_names_never_come_from_the_user():
    from app.errors import LabError
    from components.launch_form import _safe_upload_name

    assert _safe_upload_name(b"a,b\n", "../../etc/passwd.csv").startswith("upload-")
    assert "/" not in _safe_upload_name(b"a,b\n", "x/y.TSV")
    with pytest.raises(LabError, match="not read"):
        _safe_upload_name(b"#!/bin/sh", "run.sh")


def _lesson_panel(at: AppTest) -> str:
    return next((m.value for m in at.markdown if m.value.startswith("**Lesson:")), "")


def _follow_lesson(at: AppTest, page: str, manager, timeout: float = 240) -> AppTest:
    """Follow the lesson's page until its runs are done and the verdict is on it."""
    follow(at, page)

    deadline = time.monotonic() + timeout
    while True:
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        shown = [e.value for e in (*at.success, *at.warning) if "Shown on" in e.value or "Not shown" in e.value]
        if shown:
            return at
        if time.monotonic() > deadline:
            raise TimeoutError(f"no verdict on the {page} page")
        time.sleep(0.5)


@pytest.mark.parametrize("lesson, page, methods", [
    ("lst-memory", "memory", ["full_ft", "adapter", "prompt_tuning", "lora", "lst"]),
    ("theseus", "theseus", ["full_ft", "theseus", "truncate"]),
    ("lst-language-model", "memory", ["full_ft", "lora", "lst"]),
])
def test_a_lesson_button_queues_its_recipe_and_its_page_checks_the_claim_on_those_runs(
        runs_dir, monkeypatch, lesson, page, methods):
    from app.lessons import get_lesson, lesson_findings, role_configs
    from app.manager import get_manager

    from app.lessons.base import format_value

    manager = get_manager(runs_dir)
    # a long run ahead in the queue keeps the lesson's runs waiting while the learner guesses
    blocker = manager.submit(tiny_config(steps=1_000_000, eval_every=100_000))
    at = open_app(runs_dir, monkeypatch)
    at.selectbox(key="lesson.preset").set_value("tiny").run()
    at.number_input(key="lesson.seed").set_value(3).run()
    at.button(key=f"lesson.{lesson}").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    queued = [r for r in manager.store.list_runs() if r["id"] != blocker]
    assert sorted(r["method"] for r in queued) == sorted(methods)
    follow(at, page).run()
    prediction = get_lesson(lesson).prediction
    at.number_input(key="lesson.guess").set_value(0.1 * prediction.scale)
    at.button(key="lesson.guess_submit").click().run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Your guess"] == format_value(0.1, prediction.unit)
    manager.cancel(blocker)
    # exactly the recipe's configs (what `python -m app lesson` queues too), seeded as asked
    expected = role_configs(get_lesson(lesson), "tiny", 3)
    by_name = {r["config"]["name"]: r["config"] for r in queued}
    for config in expected:
        stored = by_name[config["name"]]
        assert {k: stored[k] for k in ("backbone", "dataset", "steps", "batch_size", "seed", "padding")} == \
            {k: config.get(k, stored[k]) for k in ("backbone", "dataset", "steps", "batch_size", "seed", "padding")}
    lesson_id = at.query_params["lesson"]
    at = _follow_lesson(at, page, manager)
    panel = _lesson_panel(at)
    assert "preset `tiny`" in panel and "seed **3**" in panel
    record = manager.store.records_of_kind("lesson", key=lesson_id)[0]
    findings = lesson_findings(manager.store, record)
    assert findings.status == "done"
    page_text = " ".join(m.value for m in at.markdown)
    for check in findings.checks:  # every check is on the page with the runs' own number
        assert check.says in page_text and check.format(check.value) in page_text
    # the guess stays, beside the estimate before any step and the measurement
    metrics = {m.label: m.value for m in at.metric}
    measured = next(c for c in findings.checks if c.name == prediction.check)
    assert metrics["Your guess"] == format_value(0.1, prediction.unit)
    assert metrics["Measured"] == measured.format(measured.value)
    if prediction.estimate:  # memory: the estimate before any step equals what the runs measured
        assert metrics["Estimate before any step"] == measured.format(measured.value)
    else:
        assert metrics["Estimate before any step"] == "none"
    # run it again with the next seed: a new lesson on the same page
    at.button(key="lesson.again").click().run()
    assert not at.exception and not at.error
    assert at.query_params["lesson"] != lesson_id
    again = manager.store.records_of_kind("lesson")[0]
    assert again["seed"] == 4 and again["lesson"] == lesson
    for run_id in again["runs"].values():
        manager.cancel(run_id)
        manager.wait(run_id, timeout=180)


def test_the_launch_page_offers_every_preset_of_every_lesson(runs_dir, monkeypatch):
    from app.lessons import LESSONS

    at = open_app(runs_dir, monkeypatch)
    offered = at.selectbox(key="lesson.preset")
    every = {preset for lesson in LESSONS.values() for preset in lesson.presets}
    assert len(offered.options) == len(every)
    for lesson in LESSONS.values():
        for preset in lesson.presets:
            at.selectbox(key="lesson.preset").set_value(preset).run()
            assert not at.exception, [e.value for e in at.exception]
            assert at.selectbox(key="lesson.preset").value == preset
            assert not at.button(key=f"lesson.{lesson.name}").disabled, (lesson.name, preset)
            if lesson.given_role:
                assert at.selectbox(key=f"lesson.{lesson.name}_run").label == lesson.given_role_label
        # a preset only other lessons have leaves this lesson's button off, saying why
        for preset in every - set(lesson.presets):
            at.selectbox(key="lesson.preset").set_value(preset).run()
            button = at.button(key=f"lesson.{lesson.name}")
            assert button.disabled and "No " + preset in button.help
    assert "smollm2" in every  # the memory lesson's decoder preset, chosen like any other


def test_the_theseus_lesson_reuses_a_finished_identical_predecessor(runs_dir, monkeypatch):
    from app.lessons import submit_lesson
    from app.manager import get_manager

    manager = get_manager(runs_dir)
    first = submit_lesson(manager, "theseus", seed=0, preset="tiny")
    manager.wait(first.runs["truncate"], timeout=180)
    second = submit_lesson(manager, "theseus", seed=0, preset="tiny")
    assert second.runs == first.runs and second.reused == ["predecessor", "theseus", "truncate"]
    third = submit_lesson(manager, "theseus", seed=1, preset="tiny")
    assert third.reused == [] and third.runs["predecessor"] != first.runs["predecessor"]
    for run_id in third.runs.values():
        manager.cancel(run_id)
    for run_id in third.runs.values():
        manager.wait(run_id, timeout=180)


# --- pages over finished runs ------------------------------------------------------------------


def test_run_page_without_a_link_opens_the_newest_finished_run_not_a_queued_one(ui_runs, monkeypatch):
    from app.config import RunConfig

    path, store, runs = ui_runs
    newest_finished = next(r for r in store.list_runs() if r["status"] == "finished")
    queued = store.create_run(RunConfig(**tiny_config()).as_dict())
    try:
        assert store.list_runs()[0]["id"] == queued
        at = open_app(path, monkeypatch, "run")
        assert at.selectbox(key="picked_run").value == newest_finished["id"]
    finally:
        store.set_status(queued, "cancelled")
        store.delete_run(queued)


def test_run_page_draws_the_runs_recorded_curves(ui_runs, monkeypatch):
    path, store, runs = ui_runs
    run_id = runs["full_ft"]["id"]
    at = open_app(path, monkeypatch, "run", {"run": run_id})
    assert at.selectbox(key="picked_run").value == run_id
    steps = store.steps(run_id)
    specs = charts(at)
    assert trace(specs["Training loss"], "loss")["y"] == pytest.approx([s["loss"] for s in steps])
    validation = store.evals(run_id, "validation")
    assert trace(specs["Validation accuracy"], "validation accuracy")["y"] == pytest.approx(
        [100 * e["accuracy"] for e in validation])
    memory = specs["Measured training memory"]
    assert trace(memory, "activations")["y"] == pytest.approx([s["memory"]["activations"] / MIB for s in steps])
    assert trace(specs["Throughput"], "examples / s")["x"] == [s["step"] for s in steps]
    csv_text = next(b for b in at.get("download_button") if b.proto.label == "Metrics (CSV)")
    assert csv_text is not None
    assert not at.error


def test_run_page_shows_a_failed_runs_reason_and_traceback(tmp_path, monkeypatch):
    from app.store import RunStore
    from app.preparation import prepare_run
    from app.runner import execute_run

    store = RunStore(tmp_path / "runs")
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\n" + "\n".join(f"review {i},{i % 2}" for i in range(40)))
    prepared = prepare_run(tiny_config(dataset=str(data), steps=2), store)
    run_id = store.create_run(prepared.config.as_dict())
    data.unlink()  # the file vanishes between queueing and training: a real failure
    assert execute_run(store, run_id)["status"] == "failed"
    at = open_app(tmp_path / "runs", monkeypatch, "run", {"run": run_id})
    assert any("does not exist" in e.value for e in at.error), [e.value for e in at.error]
    assert any("Traceback" in c.value for c in at.code)


def test_run_page_exports_the_model_to_a_folder_under_the_runs_dir(ui_runs, monkeypatch):
    path, store, runs = ui_runs
    run_id = runs["full_ft"]["id"]
    at = open_app(path, monkeypatch, "run", {"run": run_id})
    at.button(key="run.export.model").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    exported = sorted((path / "exports").glob(f"{run_id}-*"))
    folders = [p for p in exported if p.is_dir()]
    assert folders and (folders[-1] / "config.json").exists()
    assert (folders[-1] / "onnx" / "model.onnx").exists() and (folders[-1] / "README.md").exists()
    assert any("as transformers, onnx" in s.value for s in at.success), [s.value for s in at.success]
    assert any(p.suffix == ".zip" for p in exported)
    assert any(b.proto.label == "Download the model (zip)" for b in at.get("download_button"))


def test_ladder_page_shows_the_lst_runs_gates_activations_and_pca(ui_runs, monkeypatch):
    path, store, runs = ui_runs
    if "lst" not in runs:
        at = open_app(path, monkeypatch, "ladder")
        assert any("LST" in info.value for info in at.info)
        return
    run_id = runs["lst"]["id"]
    at = open_app(path, monkeypatch, "ladder", {"run": run_id})
    telemetry = [r["lst"] for r in store.telemetry(run_id, "step")]
    specs = charts(at)
    gates_spec = next(s for t, s in specs.items() if t.startswith("Ladder gates"))
    z, mu = gates_spec["data"][0]["z"], gates_spec["data"][0]["customdata"]
    assert len(z) == len(telemetry[-1]["gates"])
    assert [row[-1] for row in mu] == pytest.approx(telemetry[-1]["gates"])
    # coloured by each gate's change from its start
    assert [row[-1] for row in z] == pytest.approx([g - s for g, s in zip(telemetry[-1]["gates"], telemetry[0]["gates"])])
    captions = [c.value for c in at.caption]
    assert any(c.startswith("Every gate started at 0.50") for c in captions), captions
    share = telemetry[-1]["merge_gate"]
    assert any(f"the head reads {share:.2f} of the side network's output" in c for c in captions), captions
    diagram = next(s for t, s in specs.items() if t.startswith("The ladder"))
    assert diagram["data"][0]["text"] == [f"μ = {g:.2f}" for g in telemetry[-1]["gates"]]
    stats = next(s for t, s in specs.items() if t.startswith("Side activations: rms"))
    assert stats["data"][0]["y"] == pytest.approx([t["layers"][0]["rms"] for t in telemetry])
    at.segmented_control(key="ladder.stat").set_value("std").run()
    stats = next(s for t, s in charts(at).items() if t.startswith("Side activations: std"))
    assert stats["data"][0]["y"] == pytest.approx([t["layers"][0]["std"] for t in telemetry])
    pca = store.telemetry(run_id, "eval:validation")[-1]["lst_pca"]
    scatter = next(s for t, s in specs.items() if t.startswith("Side representations"))
    assert sum(len(tr["x"]) for tr in scatter["data"]) == len(pca["points"])
    assert {tr["name"] for tr in scatter["data"]} <= set(pca["label_names"])


def test_theseus_page_shows_schedule_draws_and_the_predecessor_reference(ui_runs, monkeypatch):
    path, store, runs = ui_runs
    if "theseus" not in runs:
        at = open_app(path, monkeypatch, "theseus")
        assert any("Theseus" in info.value for info in at.info)
        return
    run_id = runs["theseus"]["id"]
    at = open_app(path, monkeypatch, "theseus", {"run": run_id})
    telemetry = [r for r in store.telemetry(run_id, "step") if "theseus" in r]
    specs = charts(at)
    schedule = specs["Replacement schedule pₜ"]
    assert trace(schedule, "replacement rate p")["y"] == pytest.approx([r["theseus"]["p"] for r in telemetry])
    draws = next(s for t, s in specs.items() if t.startswith("Per-module draws"))
    assert [row[0] for row in draws["data"][0]["z"]] == telemetry[0]["theseus"]["draws"]
    accuracy = specs["Successor validation accuracy"]
    predecessor_accuracy = runs["full_ft"]["metrics"]["val_accuracy"]
    reference = [s for s in accuracy["layout"].get("shapes", []) if s.get("y0") is not None]
    assert reference and reference[0]["y0"] == pytest.approx(100 * predecessor_accuracy)
    size = specs["Predecessor vs successor"]
    layers = trace(size, "layers")["y"]
    summary = store.get_run(run_id)["summary"]["method_summary"]
    assert layers == [summary["predecessor"]["layers"], summary["successor"]["layers"]]


def test_theseus_page_keeps_refreshing_while_its_truncation_baseline_waits(ui_runs, monkeypatch):
    from app.config import RunConfig
    from components.theseus_view import theseus_page_active

    path, store, runs = ui_runs
    record = store.get_run(runs["theseus"]["id"])
    assert not theseus_page_active(store, record)
    baseline = store.create_run(RunConfig(**tiny_config(method="truncate")).as_dict())
    try:
        assert store.get_run(baseline)["status"] == "queued"
        assert theseus_page_active(store, record)
        at = open_app(path, monkeypatch, "theseus", {"run": record["id"]})
        shown = {m.label: m.value for m in at.metric}
        assert shown["truncation baseline"] == "queued"
    finally:
        store.set_status(baseline, "cancelled")
        store.delete_run(baseline)


def test_memory_page_overlays_runs_and_reads_the_numbers(ui_runs, monkeypatch):
    path, store, runs = ui_runs
    ids = [r["id"] for r in runs.values()]
    at = open_app(path, monkeypatch, "memory", {"runs": ",".join(ids)})
    specs = charts(at)
    overlay = specs["Peak training memory per step"]
    assert len(overlay["data"]) == len(ids)
    first = store.steps(ids[0])
    assert overlay["data"][0]["y"] == pytest.approx([s["peak_bytes"] / MIB for s in first])
    bars = specs["What the memory holds"]
    full = store.get_run(runs["full_ft"]["id"])["metrics"]["memory_breakdown"]
    assert trace(bars, "optimizer")["y"][0] == pytest.approx(full["optimizer"] / MIB)
    reading = " ".join(m.value for m in at.markdown)
    lst_peak = store.get_run(runs["lst"]["id"])["metrics"]["peak_memory_bytes"]
    ratio = lst_peak / store.get_run(runs["full_ft"]["id"])["metrics"]["peak_memory_bytes"]
    assert f"{ratio:.2f}×" in reading and "without autograd" in reading


def test_memory_reading_uses_the_selected_runs_numbers():
    from components.memory_view import memory_reading

    rows = [
        {"method": "full_ft", "peak": 100 * MIB, "weights": 20 * MIB, "gradients": 20 * MIB, "optimizer": 40 * MIB,
         "activations": 20 * MIB, "trainable": 1000},
        {"method": "adapter", "peak": 45 * MIB, "weights": 21 * MIB, "gradients": 1 * MIB, "optimizer": 2 * MIB,
         "activations": 21 * MIB, "trainable": 50},
        {"method": "lst", "peak": 31 * MIB, "weights": 22 * MIB, "gradients": 2 * MIB, "optimizer": 4 * MIB,
         "activations": 3 * MIB, "trainable": 80},
    ]
    text = " ".join(memory_reading(rows))
    assert "0.31×" in text and "0.45×" in text
    assert "105%" in text  # the adapter's activations against full fine-tuning's
    assert "15%" in text  # LST's
    assert memory_reading([]) == []


def test_compare_page_filters_runs_and_marks_the_pareto_front(ui_runs, monkeypatch):
    path, store, runs = ui_runs
    at = open_app(path, monkeypatch, "compare")
    finished = store.list_runs(status="finished")
    table = at.dataframe[0].value
    assert len(table) == len(finished)
    pareto = next(s for t, s in charts(at).items() if t.startswith("Accuracy against cost"))
    names = {tr["name"] for tr in pareto["data"]}
    assert "Pareto front" in names and set(runs) <= names
    at.multiselect(key="compare.method").set_value(["full_ft"]).run()
    assert set(at.dataframe[0].value["method"]) == {"full_ft"}


def test_pareto_front_keeps_only_undominated_points():
    from components.figures import pareto_front

    points = [(10, 0.8), (5, 0.7), (20, 0.9), (12, 0.75), (5, 0.6)]
    assert pareto_front(points) == [1, 0, 2]


def test_compress_page_runs_a_sweep_in_the_background_and_draws_it(ui_runs, monkeypatch):
    path, store, runs = ui_runs
    run_id = runs["full_ft"]["id"]
    at = open_app(path, monkeypatch, "compress", {"run": run_id})
    at.text_input(key="plan.sparsities").set_value("0.5")
    at.multiselect(key="plan.quantize").set_value(["fp16"])
    at.form_submit_button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]

    def finished():
        at.run()
        return not at.get("progress") and store.records(run_id, "compress") and at.get("plotly_chart")

    wait_for(finished, timeout=300, interval=1.0)
    points = store.records(run_id, "compress")
    kinds = {p["kind"] for p in points}
    assert {"fp16", "unstructured"} <= kinds
    size = charts(at)
    size_spec = next(iter(size.values()))
    fp16 = next(p for p in points if p["kind"] == "fp16")
    assert trace(size_spec, "fp16")["x"] == pytest.approx([fp16["bytes"] / MIB])


def test_shrink_lesson_sweeps_in_the_background_and_its_cancel_button_stops_it(ui_runs, monkeypatch):
    from app.lessons import shrink_plan

    path, store, runs = ui_runs
    target = runs["full_ft"]["id"]
    at = open_app(path, monkeypatch)
    at.selectbox(key="lesson.preset").set_value("tiny").run()
    at.selectbox(key="lesson.shrink_run").set_value(target).run()
    at.button(key="lesson.shrink").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.title[0].value == "Compress" and at.query_params["run"] == target
    follow(at, "compress")
    cancel = [b for b in at.button if b.key and b.key.startswith("compress.cancel.")]
    if cancel:  # still sweeping: stop it from the page
        cancel[0].click().run()

    def over():
        at.run()
        return not any(b.key and b.key.startswith("compress.cancel.") for b in at.button)

    wait_for(over, timeout=300, interval=1.0)
    assert not at.exception and at.title[0].value == "Compress"
    if cancel:
        assert any("cancelled" in w.value for w in at.warning), [w.value for w in at.warning]
    else:
        plan = shrink_plan("tiny")
        assert len(store.records(target, "compress")) >= 1 + len(plan["sparsities"]) + len(plan["quantize"])
        assert any(m.value.startswith("**Lesson: Shrink a model**") for m in at.markdown)


def test_explain_page_predicts_attributes_and_escapes_text(ui_runs, monkeypatch):
    path, store, runs = ui_runs
    run_id = runs["full_ft"]["id"]
    at = open_app(path, monkeypatch, "explain", {"runs": run_id})
    at.text_area(key="explain.text").set_value("free <b>prize</b> & <script>alert(1)</script> now").run()
    assert not at.exception
    specs = charts(at)
    probabilities = specs["Prediction"]["data"][0]["x"]
    assert sum(probabilities) == pytest.approx(100.0, abs=1e-3)
    highlighted = next(m.value for m in at.markdown if "lab-attribution" in m.value)
    # Tokens of the typed markup come back escaped, never as live tags.
    assert "&lt;" in highlighted and "&gt;" in highlighted and "&amp;" in highlighted
    assert "<script" not in highlighted and "<b>" not in highlighted
    attention = next(s for t, s in specs.items() if t.startswith("Attention"))
    tokens = attention["layout"]["xaxis"]["ticktext"]
    assert tokens[0] == "[CLS]" and len(attention["data"][0]["z"]) == len(tokens)
    at.multiselect(key="explain.runs").set_value([run_id, runs["theseus"]["id"]]).run()
    assert not at.exception
    titles = [(json.loads(c.proto.spec)["layout"].get("title") or {}).get("text") for c in at.get("plotly_chart")]
    assert titles.count("Prediction") == 2


def test_explain_takes_at_most_two_runs_even_from_a_link(ui_runs, monkeypatch):
    path, store, runs = ui_runs
    three = [runs[m]["id"] for m in ("full_ft", "lst", "theseus")]
    at = open_app(path, monkeypatch, "explain", {"runs": ",".join(three)})
    assert not at.exception
    picker = at.multiselect(key="explain.runs")
    assert picker.value == three[:2] and picker.proto.max_selections == 2


def test_integrated_gradients_add_up_to_the_change_in_probability(ui_runs):
    import torch

    from app.explain import attribute, load_explainer

    path, store, runs = ui_runs
    explainer = load_explainer(store, runs["full_ft"]["id"])
    text = "win a free prize now"
    result = attribute(explainer, text, n_steps=64)
    assert len(result["tokens"]) == len(result["scores"]) and max(abs(v) for v in result["scores"]) == 1.0
    probabilities = explainer.probabilities([text])[0]
    assert result["target"] == max(range(len(probabilities)), key=probabilities.__getitem__)
    batch = explainer.encode(text)
    special = set(explainer.tokenizer.all_special_ids)
    baseline = batch["input_ids"].clone()
    baseline[0, [i not in special for i in baseline[0].tolist()]] = explainer.tokenizer.pad_token_id
    with torch.no_grad():
        start = torch.softmax(explainer.method.predict(explainer.model, dict(batch, input_ids=baseline)), -1)[0]
    assert result["total"] == pytest.approx(probabilities[result["target"]] - float(start[result["target"]]), abs=2e-3)


def test_lst_runs_are_attributed_through_their_frozen_backbone_and_left_unchanged(ui_runs):
    from app.explain import attention_maps, attribute, load_explainer

    path, store, runs = ui_runs
    explainer = load_explainer(store, runs["lst"]["id"])
    before = explainer.probabilities(["call now to claim"])[0]
    result = attribute(explainer, "call now to claim", n_steps=32)
    assert any(abs(v) > 0 for v in result["scores"]) and result["convergence_delta"] < 0.05
    assert explainer.probabilities(["call now to claim"])[0] == pytest.approx(before)
    assert not any(name in vars(m) for m in explainer.model.modules() for name in ("_backbone_states",))
    maps = attention_maps(explainer, "call now to claim")
    for row in maps["attentions"][0][0]:
        assert sum(row) == pytest.approx(1.0, abs=1e-4)


def test_word_pieces_merge_into_words_with_summed_scores():
    from app.explain import merge_wordpieces

    words, scores = merge_wordpieces(["[CLS]", "un", "##believ", "##able", "film", "[SEP]"],
                                     [0.0, 0.1, 0.2, 0.3, -0.5, 0.0], {"[CLS]", "[SEP]"})
    assert words == ["[CLS]", "unbelievable", "film", "[SEP]"]
    assert scores == pytest.approx([0.0, 0.6, -0.5, 0.0])
    words, _ = merge_wordpieces(["<s>", "Ġgreat", "ly", "Ġdone", "</s>"], [0, 1, 1, 1, 0], {"<s>", "</s>"})
    assert words == ["<s>", "greatly", "done", "</s>"]


def test_pages_open_by_deep_link_with_the_run_from_the_url(ui_runs, monkeypatch):
    path, store, runs = ui_runs
    for page in PAGES:
        query = {"run": runs["full_ft"]["id"]} if page in ("run", "compress") else None
        if page == "plan":
            query = {"model": "tiny-random"}  # the default 8B plan measures for 15 s
        at = open_app(path, monkeypatch, page, query)
        assert not at.exception, page
        if page in ("run", "compress"):
            assert at.selectbox(key="picked_run").value == runs["full_ft"]["id"]


def test_theseus_official_preset_is_one_click_on_the_launch_form(runs_dir, monkeypatch):
    at = open_app(runs_dir, monkeypatch)
    at.selectbox(key="launch.method").set_value("theseus").run()
    assert at.number_input(key="method.theseus.linear_k").value is None  # automatic slope by default
    at.button(key="method_preset.theseus.official").click().run()
    assert not at.exception
    assert at.number_input(key="method.theseus.linear_k").value == pytest.approx(0.0006)
    assert at.number_input(key="method.theseus.linear_b").value == pytest.approx(0.3)
    assert at.number_input(key="run.lr").value == pytest.approx(2e-5)
    assert at.number_input(key="run.batch_size").value == 32
    assert at.number_input(key="run.steps").value == 2400


def test_with_several_gpus_launch_offers_all_gpus_and_queues_one_data_parallel_run(runs_dir, monkeypatch):
    """No GPU here: torch is told there are two, and the manager's submit records what it is given."""
    import torch

    import components.estimate_view as estimate_view
    from app.manager import RunManager
    from components.launch_form import ALL_GPUS

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(estimate_view, "_estimate_device", lambda device: "cpu")
    submitted = []
    monkeypatch.setattr(RunManager, "submit", lambda self, config: submitted.append(config) or "20261203-000000-abcdef")
    at = _tiny_form(open_app(runs_dir, monkeypatch))
    assert ALL_GPUS in at.selectbox(key="launch.device").options
    at.selectbox(key="launch.device").set_value(ALL_GPUS).run()
    assert any("on each of 2 GPUs (they share a batch of 8)" in m.value for m in at.markdown)
    at.button(key="launch.submit").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    [config] = submitted
    assert (config["device"], config["processes"], config["batch_size"]) == ("cuda", 2, 8)


# --- plan ------------------------------------------------------------------------------------


def test_the_plan_page_redraws_from_its_sliders_and_refuses_a_bad_config(tmp_path, monkeypatch):
    import json as _json

    at = open_app(tmp_path / "runs", monkeypatch, "plan", {"model": "tiny-random"})
    assert at.selectbox(key="plan.model").value == "tiny-random"
    assert at.radio(key="plan.task").options == ["classification"]  # an encoder writes no text
    curves = at.get("plotly_chart")[0]
    before = {t["name"]: t["y"] for t in _json.loads(curves.proto.spec)["data"] if t.get("y")}
    assert set(before) == {"Full fine-tuning", "LoRA", "Ladder Side-Tuning (LST)"}
    assert before["Ladder Side-Tuning (LST)"][-1] < before["Full fine-tuning"][-1]
    assert any("equals the surface to the byte" in c.value for c in at.caption)

    at.select_slider(key="plan.batch").set_value(32).run()
    after = {t["name"]: t["y"] for t in _json.loads(at.get("plotly_chart")[0].proto.spec)["data"] if t.get("y")}
    assert all(a > b for name in before for a, b in zip(after[name], before[name]))  # more examples, more memory
    table = at.dataframe[0].value
    assert list(table["method"]) == ["Full fine-tuning", "LoRA", "Ladder Side-Tuning (LST)"]
    assert table.filter(like="largest batch").iloc[:, 0].tolist()[0] != "does not fit"

    lora_before = table.set_index("method").loc["LoRA", "trainable"]
    at.select_slider(key="plan.lora_rank").set_value(64).run()
    assert at.dataframe[0].value.set_index("method").loc["LoRA", "trainable"] != lora_before

    fp32 = at.dataframe[0].value.set_index("method")
    at.selectbox(key="plan.precision").set_value("int4").run()
    assert not at.exception, [e.value for e in at.exception]
    int4 = at.dataframe[0].value.set_index("method")
    assert int4["frozen backbone"].to_dict() == {"Full fine-tuning": "fp32", "LoRA": "int4",
                                                 "Ladder Side-Tuning (LST)": "int4"}  # full FT has nothing frozen
    assert int4.loc["Full fine-tuning", "peak"] == fp32.loc["Full fine-tuning", "peak"]
    bars = _json.loads(at.get("plotly_chart")[1].proto.spec)["data"]
    quantized = dict(zip(*(next(t for t in bars if t["name"] == "quantized")[axis] for axis in ("y", "x"))))
    assert quantized["Full fine-tuning"] == 0 < quantized["Ladder Side-Tuning (LST)"]
    assert any("equals the surface to the byte" in c.value for c in at.caption)

    at.selectbox(key="plan.model").set_value("Your own config.json…").run()
    at.text_input(key="plan.own_config").input(str(tmp_path / "missing.json")).run()
    assert not at.exception
    assert len(at.error) == 1 and "config" in at.error[0].value and "\n" not in at.error[0].value


def test_the_plan_page_plans_a_decoder_as_a_language_model(tmp_path, monkeypatch):
    """A decoder offers the causal-lm task: its methods are those that train language models, the
    breakdown gains the loss's own part, and the point on screen still equals a direct estimate."""
    import json as _json

    at = open_app(tmp_path / "runs", monkeypatch, "plan", {"model": "tiny-random-llama"})
    assert at.radio(key="plan.task").options == ["classification", "causal-lm"]
    bars = _json.loads(at.get("plotly_chart")[1].proto.spec)["data"]
    assert "loss" not in {t["name"] for t in bars}  # a classifier's loss keeps nothing worth a bar
    at.radio(key="plan.task").set_value("causal-lm").run()
    assert not at.exception, [e.value for e in at.exception]
    offered = at.multiselect(key="plan.methods").options
    assert "BERT-of-Theseus" in offered and not any("probe" in title for title in offered)
    bars = _json.loads(at.get("plotly_chart")[1].proto.spec)["data"]
    loss = dict(zip(*(next(t for t in bars if t["name"] == "loss")[axis] for axis in ("y", "x"))))
    assert set(loss) == {"Full fine-tuning", "LoRA", "Ladder Side-Tuning (LST)"} and min(loss.values()) > 0
    assert any("equals the surface to the byte" in c.value for c in at.caption)


# --- run bundles -----------------------------------------------------------------------------


def test_a_bundle_uploaded_on_compare_fills_an_empty_lab_and_every_page_renders_its_runs(ui_runs, tmp_path,
                                                                                         monkeypatch):
    from app.bundles import export_bundle

    path, store, runs = ui_runs
    ids = [r["id"] for r in runs.values()]
    export_bundle(store, ids, tmp_path / "class.zip", checkpoints=True)
    empty = tmp_path / "student-runs"
    at = open_app(empty, monkeypatch, "compare")
    assert any("import a bundle" in i.value for i in at.info)
    at.file_uploader(key="share.import").set_value(("class.zip", (tmp_path / "class.zip").read_bytes(),
                                                    "application/zip")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(f"Imported {len(ids)} run(s)" in s.value for s in at.success)
    pages = {"run": {"run": runs["lst"]["id"]}, "ladder": {"run": runs["lst"]["id"]},
             "theseus": {"run": runs["theseus"]["id"]}, "memory": {"runs": ",".join(ids)}, "compare": None,
             "compress": {"run": runs["full_ft"]["id"]},
             "explain": {"runs": f"{runs['full_ft']['id']},{runs['theseus']['id']}"}}
    for page_name, query in pages.items():
        shown = open_app(empty, monkeypatch, page_name, query)
        assert not shown.exception and not shown.error, (page_name, [e.value for e in shown.error])
    # a second upload of the same bundle adds nothing
    again = open_app(empty, monkeypatch, "compare")
    again.file_uploader(key="share.import").set_value(("class.zip", (tmp_path / "class.zip").read_bytes(),
                                                       "application/zip")).run()
    assert any("already here, skipped" in s.value for s in again.success)


def test_home_shows_beside_a_lessons_claim_that_its_measured_runs_did_not_show_it(runs_dir, monkeypatch):
    import json

    from app.lessons import LESSONS
    from conftest import ROOT

    results = json.loads((ROOT / "benchmarks" / "results" / "lessons_language_model.json").read_text())
    assert not any(row["demonstrated"] for row in results["rows"])  # what the note on the card says
    lesson = LESSONS["lst-language-model"]
    assert "not shown" in lesson.measured
    at = open_app(runs_dir, monkeypatch, page="home")
    captions = [c.value for c in at.caption]
    assert any(lesson.measured in c for c in captions), captions
    assert sum("not shown" in c for c in captions) == sum(bool(x.measured) for x in LESSONS.values())
