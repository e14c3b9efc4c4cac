"""Every lesson, in the order the app and the CLI list them: adding a lesson is its module and one line here."""

from __future__ import annotations

from ..errors import ConfigError
from . import lst_language_model, lst_memory, shrink, theseus
from .base import Lesson

LESSONS: dict[str, Lesson] = {
    lesson.name: lesson
    for lesson in (
        lst_memory.LESSON,
        theseus.LESSON,
        shrink.LESSON,
        lst_language_model.LESSON,
    )
}


def get_lesson(name: str) -> Lesson:
    if name not in LESSONS:
        raise ConfigError(f"unknown lesson '{name}'; lessons: {', '.join(LESSONS)}")
    return LESSONS[name]


def describe_lessons() -> list[dict]:
    return [lesson.describe() for lesson in LESSONS.values()]


def lessons_with_given_role() -> list[str]:
    """The lessons that can take an existing finished run for one of their roles."""
    return [name for name, lesson in LESSONS.items() if lesson.given_role]
