"""What a lesson is made of (plain data) and what its check returns; shared by every lesson module."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ConfigError


@dataclass(frozen=True)
class Role:
    """One run of a lesson: a method on the preset's setup, with its own overrides. A setting that
    names an earlier role's run is written `app.pipelines.role_ref(NAME)` ("@role:NAME")."""

    name: str
    method: str
    method_config: dict = field(default_factory=dict)
    title: str = ""


@dataclass(frozen=True)
class Preset:
    help: str
    run: dict
    # Run-setting overrides per role (e.g. more steps for a predecessor).
    roles: dict = field(default_factory=dict)
    # A lesson with a sweep: the compression plan of the sweep.
    plan: dict = field(default_factory=dict)


def format_value(value: float | None, unit: str) -> str:
    """How a check's value reads: × (a ratio), points (an accuracy difference), % (an accuracy)."""
    if value is None:
        return "n/a"
    if unit == "points":
        return f"{100 * value:+.1f} points"
    if unit == "%":
        return f"{100 * value:.1f}%"
    return f"{value:.3f}×"


@dataclass(frozen=True)
class Check:
    """One number of the claim against its target."""

    name: str
    value: float | None
    target: float
    at_most: bool  # True: value <= target passes; False: value >= target passes
    says: str  # the claim in words, e.g. "LST's peak memory ≤ 0.30 × full fine-tuning's"
    advice: str = ""  # what to try when it fails
    unit: str = "×"  # how a value reads: × (a ratio), points (an accuracy difference), % (an accuracy)

    def format(self, value: float | None) -> str:
        return format_value(value, self.unit)

    @property
    def passed(self) -> bool:
        if self.value is None:
            return False
        return self.value <= self.target if self.at_most else self.value >= self.target

    def as_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "target": self.target,
                "comparison": "<=" if self.at_most else ">=", "passed": self.passed, "says": self.says,
                "advice": self.advice, "unit": self.unit, "shown": self.format(self.value),
                "target_shown": self.format(self.target)}


@dataclass(frozen=True)
class Prediction:
    """What a learner guesses before the runs end: the value one of the lesson's checks will read.

    `estimate` gives the engine's own figure before any step, from the run config of each role
    (None where only training can tell, e.g. an accuracy)."""

    check: str  # the name of the Check whose value the runs measure
    question: str
    low: float
    high: float
    default: float
    unit: str = "×"  # as the check's unit
    estimate: Callable[[dict], float | None] | None = None

    @property
    def scale(self) -> float:
        """Points and percentages are typed as such, stored as fractions."""
        return 100.0 if self.unit in ("points", "%") else 1.0


@dataclass
class Findings:
    lesson: str
    status: str  # pending (runs still going), done, failed (a run did not finish)
    findings: dict = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    notice: list[str] = field(default_factory=list)  # what the class should notice, with the numbers
    reason: str = ""

    @property
    def demonstrated(self) -> bool | None:
        if self.status != "done":
            return None
        return all(check.passed for check in self.checks)

    def as_dict(self) -> dict:
        return {"lesson": self.lesson, "status": self.status, "demonstrated": self.demonstrated,
                "reason": self.reason, "findings": self.findings, "checks": [c.as_dict() for c in self.checks],
                "notice": self.notice}


@dataclass(frozen=True)
class Lesson:
    name: str
    title: str
    claim: str
    page: str  # the page that explains it: memory, theseus or compress
    presets: dict
    roles: tuple = ()
    # Reads the runs back: the numbers, the checks and what to notice (status "pending" while a
    # sweep has not measured what the claim needs yet).
    check: Callable[["LessonRuns"], Findings] | None = None
    # The runs a page should open on when no link names one (e.g. Explain: predecessor and successor).
    main_roles: tuple = ()
    # How a launch opens `page`: the query parameter that names runs there, and the roles whose
    # runs it names (every role when empty).
    page_param: str = "run"
    page_roles: tuple = ()
    # A role that may be given an existing finished run instead of training one, and how a picker
    # of that run is labelled (shrink: the model to compress).
    given_role: str | None = None
    given_role_label: str = ""
    # The role whose finished model the preset's compression plan sweeps once trained; the check
    # reads that sweep's points.
    sweep_role: str | None = None
    # What the learner is asked to guess while the runs train.
    prediction: Prediction | None = None
    # What the lesson's own benchmark found on its default preset, where that differs from the claim:
    # shown beside the claim, so no card states as fact what the measured runs did not show.
    measured: str = ""

    def preset(self, name: str | None) -> tuple[str, Preset]:
        chosen = name or default_preset_name()
        if chosen not in self.presets:
            raise ConfigError(f"lesson '{self.name}' has no preset '{chosen}'; its presets: {', '.join(self.presets)}")
        return chosen, self.presets[chosen]

    def sweep_plan(self, preset: str | None) -> dict:
        """The compression plan the sweep runs on this preset (the machine's by default)."""
        return dict(self.preset(preset)[1].plan)

    def page_query(self, lesson_id: str, runs: dict) -> dict:
        """The query parameters that open this lesson's page on a launch's runs (role -> run id)."""
        roles = self.page_roles or tuple(runs)
        return {"lesson": lesson_id, self.page_param: ",".join(runs[role] for role in roles)}

    def describe(self) -> dict:
        return {"name": self.name, "title": self.title, "claim": self.claim, "page": self.page,
                "default_preset": default_preset_name(),
                "presets": {name: {"help": p.help, "run": p.run, "roles": p.roles, "plan": p.plan}
                            for name, p in self.presets.items()},
                "runs": [dataclasses.asdict(role) for role in self.roles]}


@dataclass
class LessonRuns:
    """A lesson's runs as stored, by role, with what the checks need."""

    lesson: Lesson
    records: dict  # role -> run record
    points: list = field(default_factory=list)  # a lesson with a sweep: the sweep's points
    # role -> the run's validation passes in step order (step 0 first on a language model), each with
    # its metrics and, on a language model, the answers written then (`generations`)
    validation: dict = field(default_factory=dict)

    def metric(self, role: str, key: str):
        return ((self.records.get(role) or {}).get("metrics") or {}).get(key)

    def first_and_last_validation(self, role: str) -> tuple[dict, dict] | None:
        """A run's first and last validation pass, when it has two (a language model's first is its
        untuned step 0)."""
        passes = self.validation.get(role) or []
        return (passes[0], passes[-1]) if len(passes) >= 2 else None

    def majority_accuracy(self, split: str = "test") -> float | None:
        for record in self.records.values():
            counts = (((record.get("summary") or {}).get("dataset") or {}).get("class_counts") or {}).get(split)
            if counts and sum(counts):
                return max(counts) / sum(counts)
        return None


def default_preset_name() -> str:
    """The preset sized for this machine: bigger where CUDA is present."""
    import torch  # importing the lessons (the CLI's listing, every page) stays free of torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def percent_text(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def points_text(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f} points"


# Every lesson also has this preset: the whole path in seconds, for trying the app and for tests.
# Its random 4-layer backbone shows nothing about the papers, and the verdict says so.
TINY_RUN = {"backbone": "tiny-random", "dataset": "sms-spam", "device": "cpu", "batch_size": 8, "max_length": 32,
            "steps": 12, "eval_every": 6, "max_train_examples": 128, "max_eval_examples": 64}
TINY_HELP = ("Tiny smoke test: the random 4-layer tiny-random backbone on SMS spam, seconds per run. It checks "
             "that everything works, not the claim: expect a verdict that says it was not shown.")
