"""Lessons: one-click recipes that queue runs on a preset sized for the device, and the numbers that
check, on those very runs, the claim each lesson teaches.

A lesson is plain data (`Lesson`, in `base`) in a module of its own (`lst_memory`, `theseus`, `shrink`,
`lst_language_model`): its presets (run settings per device), the runs it queues (one `Role` each, later roles
naming earlier ones as "@role:NAME"), optionally a compression sweep over one of them, its check
and what to notice, and the page that shows it. `registry.LESSONS` lists them; the Launch page,
the lesson panels and the CLI (`lessons`, `lesson NAME`) loop over it. `runner` queues a lesson
(reusing any finished run with the very same settings, so a lesson run twice with one seed trains
nothing twice) and reads it back, saying plainly when a run came out against the paper.
"""

from ..run_refs import ROLE_REF
from .base import Check, Findings, Lesson, LessonRuns, Prediction, Preset, Role, default_preset_name
from .lst_memory import check_lst_memory
from .registry import LESSONS, describe_lessons, get_lesson, lessons_with_given_role
from .runner import (
    RECORD_KIND,
    LessonLaunch,
    featured_runs,
    find_identical_run,
    latest_lesson,
    lesson_findings,
    lesson_of_run,
    lesson_record,
    prediction_estimate,
    role_configs,
    run_lesson,
    save_guess,
    saved_guess,
    submit_lesson,
    sweep_points,
    wall_seconds,
)
from .shrink import check_shrink, shrink_plan
from .theseus import check_theseus

__all__ = [
    "Check", "Findings", "LESSONS", "Lesson", "LessonLaunch", "LessonRuns", "Prediction", "Preset", "RECORD_KIND", "ROLE_REF",
    "Role", "check_lst_memory", "check_shrink", "check_theseus", "default_preset_name", "describe_lessons",
    "featured_runs", "find_identical_run", "get_lesson", "latest_lesson", "lesson_findings", "lesson_of_run",
    "lesson_record", "lessons_with_given_role", "prediction_estimate", "role_configs", "run_lesson", "save_guess",
    "saved_guess", "shrink_plan", "submit_lesson",
    "sweep_points", "wall_seconds",
]
