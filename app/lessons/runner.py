"""Queueing a lesson (reusing identical finished runs) and reading it back from the store.

`submit_lesson` queues a lesson's roles as one recipe (app.pipelines) and tags every run with a
`lesson` record; `lesson_findings` reads the runs back and has the lesson check its claim on them.
Pages and the CLI both go through these, so a button and `python -m app lesson NAME` queue the same
configs.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Callable

from ..errors import ConfigError, LabError
from ..pipelines import queue_recipe
from ..store import ACTIVE_STATUSES
from ..tasks import CAUSAL_LM
from .base import Findings, Lesson, LessonRuns
from .registry import get_lesson

RECORD_KIND = "lesson"
GUESS_KIND = "lesson-guess"


@dataclass
class LessonLaunch:
    lesson_id: str
    lesson: str
    preset: str
    seed: int
    runs: dict  # role -> run id
    reused: list  # roles whose identical finished run was taken instead of training again
    created_at: float

    def as_record(self, role: str) -> dict:
        return {"lesson_id": self.lesson_id, "lesson": self.lesson, "preset": self.preset, "seed": self.seed,
                "role": role, "runs": self.runs, "reused": self.reused, "created_at": self.created_at}


def role_configs(lesson: Lesson, preset_name: str | None, seed: int, roles: tuple | None = None) -> list[dict]:
    """The run config of each role, in order; method settings may still name roles ("@role:NAME")."""
    _, preset = lesson.preset(preset_name)
    configs = []
    for role in roles if roles is not None else lesson.roles:
        values = dict(preset.run, **preset.roles.get(role.name, {}))
        values.update(method=role.method, method_config=dict(role.method_config), seed=seed,
                      name=f"lesson: {lesson.title} · {role.title or role.name}")
        configs.append(values)
    return configs


def _comparable(config: dict) -> dict:
    from ..config import RunConfig  # loads torch: only when a lesson is queued

    values = RunConfig.from_dict(config).as_dict()
    values.pop("name")
    return values


def find_identical_run(store, config: dict) -> str | None:
    """A finished run with exactly these settings (the name aside), newest first."""
    wanted = _comparable(config)
    for record in store.list_runs(status="finished", method=config["method"]):
        try:
            if _comparable(record["config"]) == wanted:
                return record["id"]
        except LabError:  # a run stored by an older version with settings this one no longer has
            continue
    return None


def submit_lesson(manager, name: str, *, seed: int = 0, preset: str | None = None,
                  given: dict | None = None) -> LessonLaunch:
    """Queue a lesson's runs as one chain (identical finished runs are reused, not retrained) and tag
    every run with the lesson. `given` maps roles to existing runs to use as they are (the lesson's
    `given_role`). Every check runs before anything is queued."""
    lesson = get_lesson(name)
    preset_name, _ = lesson.preset(preset)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a whole number ≥ 0, got {seed!r}")
    given = dict(given or {})
    for role_name, run_id in given.items():
        if role_name not in {r.name for r in lesson.roles}:
            raise ConfigError(f"lesson '{name}' has no run called '{role_name}'")
        record = manager.store.get_run(run_id)
        if record["status"] != "finished":
            raise ConfigError(f"run '{run_id}' is {record['status']}; the lesson needs a finished run")
    chosen_roles = tuple(r for r in lesson.roles if r.name not in given)
    if given and not chosen_roles:
        seed = int(manager.store.get_run(next(iter(given.values())))["config"].get("seed", seed))
    recipe = {role.name: config
              for role, config in zip(chosen_roles, role_configs(lesson, preset_name, seed, chosen_roles))}
    queued = queue_recipe(manager, recipe, given=given, name=f"lesson '{name}'",
                          reuse=lambda config: find_identical_run(manager.store, config))
    launch = LessonLaunch(lesson_id=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}", lesson=name,
                          preset=preset_name, seed=seed, runs={r.name: queued.runs[r.name] for r in lesson.roles},
                          reused=queued.reused, created_at=time.time())
    for role_name, run_id in launch.runs.items():
        manager.store.put_record(run_id, RECORD_KIND, launch.lesson_id, launch.as_record(role_name))
    return launch


# --- reading a lesson back ----------------------------------------------------------------------


def lesson_of_run(store, run_id: str, name: str | None = None) -> dict | None:
    """The newest lesson (of this name) this run belongs to (its record), or None."""
    records = [r for r in store.records(run_id, RECORD_KIND) if name is None or r["lesson"] == name]
    return max(records, key=lambda r: r["created_at"]) if records else None


def lesson_record(store, lesson_id: str) -> dict | None:
    for record in store.records_of_kind(RECORD_KIND, key=lesson_id):
        return record
    return None


def latest_lesson(store, name: str | None = None) -> dict | None:
    for record in store.records_of_kind(RECORD_KIND):
        if name is None or record["lesson"] == name:
            return record
    return None


def featured_runs(store, name: str | None = None) -> list[str]:
    """The finished main runs of the newest lesson (of this name): what a page opens on by default."""
    record = latest_lesson(store, name)
    if record is None:
        return []
    ids = [record["runs"][role] for role in get_lesson(record["lesson"]).main_roles if role in record["runs"]]
    return [run_id for run_id in ids if store.has_run(run_id) and store.get_run(run_id)["status"] == "finished"]


def sweep_points(store, lesson: Lesson, record: dict) -> list[dict]:
    """The points of this launch's sweep; points of an earlier sweep with another plan stay stored
    with the run and are left out."""
    if not lesson.sweep_role:
        return []
    from ..compression import stored_points  # loads torch: only when a sweep is read

    return [p for p in stored_points(store, record["runs"][lesson.sweep_role]) if p["created_at"] >= record["created_at"]]


def validation_passes(store, run_id: str) -> list[dict]:
    """A run's validation passes in step order, each with what its model wrote then (a language
    model's `generations`, stored as the pass's telemetry)."""
    written = {row["step"]: row.get("generations") for row in store.telemetry(run_id, "eval:validation", after=-1)}
    return [dict(row, generations=written.get(row["step"]) or []) for row in store.evals(run_id, "validation")]


def lesson_findings(store, record: dict) -> Findings:
    """Check the lesson's claim on its runs as stored now: pending while any is queued or running
    (or its sweep has not measured what the claim needs), failed when one did not finish, else the
    findings with every check."""
    lesson = get_lesson(record["lesson"])
    records = {}
    for role, run_id in record["runs"].items():
        if not store.has_run(run_id):
            return Findings(lesson.name, "failed", reason=f"its {role} run {run_id} was deleted")
        records[role] = store.get_run(run_id)
    active = [role for role, r in records.items() if r["status"] in ACTIVE_STATUSES]
    if active:
        return Findings(lesson.name, "pending", reason=f"still training: {', '.join(active)}")
    broken = [(role, r) for role, r in records.items() if r["status"] != "finished"]
    if broken:
        role, r = broken[0]
        return Findings(lesson.name, "failed",
                        reason=f"its {role} run {r['id']} ended {r['status']}: {r.get('error') or 'no reason given'}")
    # Only a language model's checks read its passes (step 0's answers against the last's); a page
    # rechecks the lesson on every refresh, so a classifier lesson reads nothing more.
    validation = {role: validation_passes(store, run_id) for role, run_id in record["runs"].items()
                  if (records[role].get("config") or {}).get("task") == CAUSAL_LM}
    findings = lesson.check(LessonRuns(lesson, records, sweep_points(store, lesson, record), validation))
    if findings.status != "done":
        return findings
    failed = [c for c in findings.checks if not c.passed]
    if failed:
        first = failed[0]
        findings.reason = (f"Not shown this time: {first.says} did not hold ({first.format(first.value)}, target "
                           f"{'≤' if first.at_most else '≥'} {first.format(first.target)})."
                           + (f" Try: {first.advice}." if first.advice else ""))
    else:
        findings.reason = f"Shown on these runs: {lesson.claim}"
    if record.get("preset") == "tiny":
        findings.reason = ("The tiny preset's random 4-layer backbone shows nothing about the paper; it checks that "
                           "the lesson runs. " + findings.reason)
    return findings


def wall_seconds(store, record: dict) -> float | None:
    """From the lesson's click to its last run's end (reused runs count from the click)."""
    ends = [store.get_run(run_id).get("finished_at") for run_id in record["runs"].values() if store.has_run(run_id)]
    ends = [e for e in ends if e]
    return max(ends) - record["created_at"] if ends else None


def run_lesson(manager, name: str, *, seed: int = 0, preset: str | None = None, given: dict | None = None,
               on_progress: Callable[[str], None] | None = None, poll_seconds: float = 0.25) -> dict:
    """Run a lesson headless exactly as its button does, wait for it, and return the CLI's JSON
    contract: lesson, preset, seed, runs, wall_seconds, findings, demonstrated, reason (and checks,
    notice). A lesson's sweep runs here, in the caller's thread."""
    started = time.perf_counter()
    launch = submit_lesson(manager, name, seed=seed, preset=preset, given=given)
    lesson = get_lesson(name)
    seen: dict[str, tuple] = {}
    while True:
        states = {role: manager.store.get_run(run_id) for role, run_id in launch.runs.items()}
        for role, r in states.items():
            state = (r["status"], r["step"])
            if on_progress and seen.get(role) != state:
                on_progress(f"{role} {r['id']}: {r['status']}, step {r['step']} / {r['total_steps']}")
            seen[role] = state
        if not any(r["status"] in ACTIVE_STATUSES for r in states.values()):
            break
        time.sleep(poll_seconds)
    record = lesson_record(manager.store, launch.lesson_id)
    if lesson.sweep_role and states[lesson.sweep_role]["status"] == "finished":
        from ..compression import compress_run  # loads torch: only when a sweep runs

        compress_run(manager.store, launch.runs[lesson.sweep_role], lesson.sweep_plan(launch.preset),
                     progress=(lambda done, total, message: on_progress(f"sweep {done}/{total}: {message}"))
                     if on_progress else None)
    findings = lesson_findings(manager.store, record)
    result = findings.as_dict()
    result.update(lesson=name, preset=launch.preset, seed=seed, lesson_id=launch.lesson_id,
                  runs=launch.runs, reused=launch.reused, wall_seconds=time.perf_counter() - started)
    return result


def save_guess(store, record: dict, value: float) -> None:
    """Keep a learner's guess with the lesson (beside its first run), so a reload shows it."""
    first_run = next(iter(record["runs"].values()))
    store.put_record(first_run, GUESS_KIND, record["lesson_id"], {"value": float(value)})


def saved_guess(store, record: dict) -> float | None:
    found = store.records_of_kind(GUESS_KIND, key=record["lesson_id"])
    return found[0]["value"] if found else None


def prediction_estimate(record: dict) -> float | None:
    """The engine's figure for the lesson's prediction before any step, on the lesson's own run
    settings; None where the lesson has none."""
    lesson = get_lesson(record["lesson"])
    if lesson.prediction is None or lesson.prediction.estimate is None:
        return None
    configs = dict(zip((role.name for role in lesson.roles),
                       role_configs(lesson, record["preset"], int(record["seed"]))))
    return lesson.prediction.estimate(configs)
