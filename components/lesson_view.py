"""A lesson on its page: the claim, the preset and seed, and what the runs on screen show about it,
computed by the engine from those runs (never a canned sentence), with a button that runs it again
with another seed."""

from __future__ import annotations

import streamlit as st

from app.errors import LabError
from app.lessons import get_lesson, lesson_findings, lesson_of_run, lesson_record, submit_lesson
from components.common import get_store, run_link
from components.live import live


def lesson_for_page(name: str, run_ids: list[str]) -> dict | None:
    """The lesson `name` named in the link (`?lesson=ID`), else the newest such lesson one of these
    runs belongs to."""
    store = get_store()
    wanted = st.query_params.get("lesson")
    if wanted:
        record = lesson_record(store, wanted)
        if record is not None and record["lesson"] == name:
            return record
    for run_id in run_ids:
        record = lesson_of_run(store, run_id, name)
        if record is not None:
            return record
    return None


def show_lesson(record: dict | None, key: str = "lesson.again") -> None:
    """The lesson panel (live while its runs train) and its run-again button."""
    if record is None:
        return
    store = get_store()
    live(render_lesson, record, active=lesson_findings(store, record).status == "pending")
    again_button(record, key)


def render_lesson(record: dict) -> bool:
    """The lesson's reading of its runs; returns whether any of them is still going."""
    store = get_store()
    lesson = get_lesson(record["lesson"])
    findings = lesson_findings(store, record)
    with st.container(border=True):
        reused = f" · reused: {', '.join(record['reused'])}" if record.get("reused") else ""
        st.markdown(f"**Lesson: {lesson.title}** · preset `{record['preset']}` · seed **{record['seed']}**{reused}")
        st.caption(f"The claim: {lesson.claim}")
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
    from components.common import get_manager_for_app
    from components.navigation import page

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
    """Queue a lesson; shrink also starts its sweep (after its model run when it trains one)."""
    launch = submit_lesson(manager, name, seed=seed, preset=preset, given=given)
    if name == "shrink":
        from components.common import get_job_board
        from components.compress_view import start_lesson_sweep

        start_lesson_sweep(manager.store, get_job_board(), launch.runs["model"], launch.preset)
    return launch


def lesson_query(launch) -> dict:
    runs = launch.runs
    if launch.lesson == "lst-memory":
        return {"lesson": launch.lesson_id, "runs": ",".join(runs.values())}
    if launch.lesson == "theseus":
        return {"lesson": launch.lesson_id, "run": runs["theseus"]}
    return {"lesson": launch.lesson_id, "run": runs["model"]}
