"""Lessons in the app: the Launch page's buttons (one per lesson of the registry, with every preset
of every lesson), and a lesson on its page: the claim, the preset and seed, and what the runs on
screen show about it, computed by the engine from those runs (never a canned sentence), with a
button that runs it again with another seed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import streamlit as st

from app.errors import LabError
from app.lessons import (
    LESSONS, Lesson, default_preset_name, get_lesson, lesson_findings, lesson_of_run, lesson_record,
    prediction_estimate, save_guess, saved_guess, submit_lesson,
)
from app.lessons.base import format_value
from components.common import finished_runs, get_job_board, get_manager_for_app, get_store, run_label, run_link
from components.compress_view import start_lesson_sweep
from components.live import live
from components.navigation import page

NEW_RUN = "new"  # a picker's choice of training the run instead of taking a finished one


@dataclass
class LessonChoice:
    """What the Launch page's lesson panel was asked for on this rerun."""

    preset: str
    seed: int
    clicked: str | None = None  # the lesson whose button was pressed
    given: dict = field(default_factory=dict)  # lesson -> {role: finished run} picked for it


def lesson_presets() -> list[str]:
    """Every preset of every lesson, in registry order."""
    return list(dict.fromkeys(preset for lesson in LESSONS.values() for preset in lesson.presets))


def lesson_preset_label(preset: str) -> str:
    """A preset only some lessons have says which."""
    having = [lesson.title for lesson in LESSONS.values() if preset in lesson.presets]
    return preset if len(having) == len(LESSONS) else f"{preset} · {', '.join(having)} only"


def lesson_button(column, lesson: Lesson, preset: str) -> bool:
    if preset not in lesson.presets:
        return column.button(lesson.title, key=f"lesson.{lesson.name}", width="stretch", disabled=True,
                             help=f"No {preset} preset for this lesson; its presets: {', '.join(lesson.presets)}.")
    return column.button(lesson.title, key=f"lesson.{lesson.name}", width="stretch",
                         help=f"{lesson.claim}\n\n{lesson.presets[preset].help}")


def lesson_launcher() -> LessonChoice:
    """The preset and seed, then a button per lesson; a lesson that can start from a finished run
    gets a picker of that run beside its button."""
    left, right = st.columns([3, 1])
    presets = lesson_presets()
    if st.session_state.get("lesson.preset") not in presets:
        st.session_state["lesson.preset"] = default_preset_name()
    choice = LessonChoice(
        preset=left.selectbox(
            "Lesson preset", presets, key="lesson.preset", format_func=lesson_preset_label,
            help="cpu and cuda are sized to finish in minutes on such a machine (the default is the one for this "
                 "machine); tiny checks the path in seconds and shows nothing about the papers; a preset only "
                 "some lessons have says which."),
        seed=int(right.number_input("Seed", min_value=0, value=0, step=1, key="lesson.seed")))
    plain = [lesson for lesson in LESSONS.values() if not lesson.given_role]
    for column, lesson in zip(st.columns(len(plain)) if plain else (), plain):
        if lesson_button(column, lesson, choice.preset):
            choice.clicked = lesson.name
    done = {r["id"]: r for r in finished_runs()}
    for lesson in (lesson for lesson in LESSONS.values() if lesson.given_role):
        pick, button = st.columns([3, 2], vertical_alignment="bottom")
        picked = pick.selectbox(
            lesson.given_role_label, [NEW_RUN, *done], key=f"lesson.{lesson.name}_run",
            format_func=lambda rid: "train a new one first" if rid == NEW_RUN else run_label(done[rid]))
        if picked != NEW_RUN:
            choice.given[lesson.name] = {lesson.given_role: picked}
        if lesson_button(button, lesson, choice.preset):
            choice.clicked = lesson.name
    return choice


def lesson_for_page(page_name: str, run_ids: list[str]) -> dict | None:
    """The lesson named in the link (`?lesson=ID`) when this page shows it, else the newest lesson
    shown on this page that one of these runs belongs to."""
    store = get_store()
    shown_here = [name for name, lesson in LESSONS.items() if lesson.page == page_name]
    wanted = st.query_params.get("lesson")
    if wanted:
        record = lesson_record(store, wanted)
        if record is not None and record["lesson"] in shown_here:
            return record
    for run_id in run_ids:
        records = [r for name in shown_here if (r := lesson_of_run(store, run_id, name)) is not None]
        if records:
            return max(records, key=lambda r: r["created_at"])
    return None


def show_lesson(record: dict | None, key: str = "lesson.again") -> None:
    """The lesson panel (live while its runs train) and its run-again button."""
    if record is None:
        return
    store = get_store()
    findings = lesson_findings(store, record)
    render_guess_panel(record, findings)
    live(render_lesson, record, active=findings.status == "pending")
    again_button(record, key)


@st.cache_data(show_spinner=False, max_entries=64)
def _estimate_of(record_json: str) -> float | str | None:
    """The engine's figure for the lesson's prediction (or why there is none); once per lesson."""
    try:
        return prediction_estimate(json.loads(record_json))
    except LabError as exc:
        return str(exc)


def render_guess_panel(record: dict, findings) -> None:
    """Predict, then run: the learner's guess, locked in while the runs train, beside the engine's
    estimate before any step and, once the runs end, the measurement."""
    prediction = get_lesson(record["lesson"]).prediction
    if prediction is None:
        return
    store = get_store()
    guess = saved_guess(store, record)
    pending = findings.status == "pending"
    with st.container(border=True):
        st.markdown(f"**Predict, then run.** {prediction.question}?")
        if guess is None and pending:
            with st.form(key="lesson.guess_form", border=False):
                typed = st.number_input(
                    f"Your guess ({'points' if prediction.unit == 'points' else prediction.unit})",
                    min_value=prediction.low * prediction.scale, max_value=prediction.high * prediction.scale,
                    value=prediction.default * prediction.scale, step=0.01 * prediction.scale, format="%.2f", key="lesson.guess")
                if st.form_submit_button("Lock in my guess", key="lesson.guess_submit"):
                    save_guess(store, record, typed / prediction.scale)
                    st.rerun()
        estimate = (_estimate_of(json.dumps(record, sort_keys=True, default=str))
                    if prediction.estimate else None)
        measured = next((c.value for c in findings.checks if c.name == prediction.check), None)
        columns = st.columns(3)
        columns[0].metric("Your guess", format_value(guess, prediction.unit) if guess is not None else
                          ("—" if pending else "none locked in"))
        if isinstance(estimate, str):
            columns[1].metric("Estimate before any step", "n/a", help=estimate)
        else:
            columns[1].metric("Estimate before any step", format_value(estimate, prediction.unit) if estimate
                              is not None else "none", help=None if estimate is not None else
                              "Only training can tell: the memory estimate does not predict accuracy or speed.")
        columns[2].metric("Measured", format_value(measured, prediction.unit) if measured is not None else
                          ("when the runs end" if pending else "n/a"))


def render_lesson(record: dict) -> bool:
    """The lesson's reading of its runs; returns whether any of them is still going."""
    store = get_store()
    lesson = get_lesson(record["lesson"])
    findings = lesson_findings(store, record)
    with st.container(border=True):
        reused = f" · reused: {', '.join(record['reused'])}" if record.get("reused") else ""
        st.markdown(f"**Lesson: {lesson.title}** · preset `{record['preset']}` · seed **{record['seed']}**{reused}")
        st.caption(f"The claim: {lesson.claim}")
        if lesson.measured:
            st.caption(f":orange[{lesson.measured}]")
        runs = " · ".join(f"[{role}]({run_link(run_id)})" for role, run_id in record["runs"].items())
        st.caption(f"Runs: {runs}")
        if findings.status == "pending":
            st.info(f"The verdict comes when every run has finished ({findings.reason}).")
            return True
        if findings.status == "failed":
            st.error(f"This lesson cannot be read: {findings.reason}")
            return False
        if findings.demonstrated:
            st.success(findings.reason, icon=":material/check_circle:")
        else:
            st.warning(findings.reason, icon=":material/warning:")
        if findings.notice:
            st.markdown("**What to notice**\n" + "\n".join(f"- {line}" for line in findings.notice))
        st.markdown("\n".join(
            f"- {':material/check:' if c.passed else ':material/close:'} {c.says}: **{c.format(c.value)}** "
            f"(target {'≤' if c.at_most else '≥'} {c.format(c.target)})" for c in findings.checks))
    return False


def again_button(record: dict, key: str) -> None:
    """Queue the same lesson, same preset, with the next seed, and follow it."""
    if st.button(f"Run again with another seed (seed {record['seed'] + 1})", key=key,
                 icon=":material/replay:"):
        try:
            launch = start_lesson(get_manager_for_app(), record["lesson"], seed=record["seed"] + 1,
                                  preset=record["preset"])
        except LabError as exc:
            st.error(str(exc))
        else:
            st.switch_page(page(get_lesson(launch.lesson).page), query_params=lesson_query(launch))


def start_lesson(manager, name: str, *, seed: int, preset: str | None, given: dict | None = None):
    """Queue a lesson; a lesson with a sweep also starts it (after its run when that still trains)."""
    launch = submit_lesson(manager, name, seed=seed, preset=preset, given=given)
    lesson = get_lesson(name)
    if lesson.sweep_role:
        start_lesson_sweep(manager.store, get_job_board(), launch.runs[lesson.sweep_role],
                           lesson.sweep_plan(launch.preset), name)
    return launch


def lesson_query(launch) -> dict:
    """The query parameters that open the launched lesson's page on its runs."""
    return get_lesson(launch.lesson).page_query(launch.lesson_id, launch.runs)
