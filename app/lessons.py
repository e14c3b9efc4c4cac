"""Lessons: one-click recipes that queue runs on a preset sized for the device, and the numbers that
check, on those very runs, the claim each lesson teaches.

A lesson is plain data (`Lesson`): its presets (run settings per device), the runs it queues (one
`Role` each, later roles naming earlier ones as "@role:NAME"), or, for `shrink`, a compression plan
over one finished run. `submit_lesson` queues it (reusing any finished run with the very same
settings, so a lesson run twice with one seed trains nothing twice) and tags every run with a
`lesson` record; `lesson_findings` reads the runs back and checks the claim, saying plainly when
a run came out against the paper. Pages and the CLI both go through these two functions, so a
button and `python -m app lesson NAME` queue the same configs.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass, field
from typing import Callable

from .errors import ConfigError, LabError
from .store import ACTIVE_STATUSES

RECORD_KIND = "lesson"
ROLE_REF = "@role:"


@dataclass(frozen=True)
class Role:
    """One run of a lesson: a method on the preset's setup, with its own overrides."""

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
    # shrink: the compression plan of the sweep.
    plan: dict = field(default_factory=dict)


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
        if value is None:
            return "n/a"
        if self.unit == "points":
            return f"{100 * value:+.1f} points"
        if self.unit == "%":
            return f"{100 * value:.1f}%"
        return f"{value:.3f}×"

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
    check: Callable[["LessonRuns"], Findings] | None = None
    # The runs a page should open on when no link names one (e.g. Explain: predecessor and successor).
    main_roles: tuple = ()

    def preset(self, name: str | None) -> tuple[str, Preset]:
        chosen = name or default_preset_name()
        if chosen not in self.presets:
            raise ConfigError(f"lesson '{self.name}' has no preset '{chosen}'; its presets: {', '.join(self.presets)}")
        return chosen, self.presets[chosen]

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
    points: list = field(default_factory=list)  # shrink: the sweep's points

    def metric(self, role: str, key: str):
        return ((self.records.get(role) or {}).get("metrics") or {}).get(key)

    def majority_accuracy(self, split: str = "test") -> float | None:
        for record in self.records.values():
            counts = (((record.get("summary") or {}).get("dataset") or {}).get("class_counts") or {}).get(split)
            if counts and sum(counts):
                return max(counts) / sum(counts)
        return None


def default_preset_name() -> str:
    """The preset sized for this machine: bigger where CUDA is present."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --- the claims, checked on the runs ------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f} points"


ACTIVATION_KEEPERS = ("adapter", "lora", "prompt_tuning")


def check_lst_memory(runs: LessonRuns) -> Findings:
    findings = Findings("lst-memory", "done")
    full_peak = runs.metric("full_ft", "peak_memory_bytes")
    full_parts = runs.metric("full_ft", "memory_breakdown") or {}
    lst_peak = runs.metric("lst", "peak_memory_bytes")
    ratio = lst_peak / full_peak if lst_peak and full_peak else None
    full_acc, lst_acc = runs.metric("full_ft", "test_accuracy"), runs.metric("lst", "test_accuracy")
    gap = lst_acc - full_acc if lst_acc is not None and full_acc is not None else None
    majority = runs.majority_accuracy()
    values = {"lst_peak_ratio": ratio, "lst_minus_full_ft_test": gap, "majority_test": majority}
    for role in runs.lesson.roles:
        values[f"{role.name}_test_accuracy"] = runs.metric(role.name, "test_accuracy")
        values[f"{role.name}_peak_bytes"] = runs.metric(role.name, "peak_memory_bytes")
    checks = [Check("lst_peak_ratio", ratio, 0.30, True, "LST's peak training memory ≤ 0.30 × full fine-tuning's",
                    "a longer max_length or a bigger batch makes activations, which LST avoids, a larger share")]
    shares = []
    for method in ACTIVATION_KEEPERS:
        acts = (runs.metric(method, "memory_breakdown") or {}).get("activations")
        share = acts / full_parts["activations"] if acts is not None and full_parts.get("activations") else None
        values[f"{method}_activation_share"] = share
        shares.append(share)
        checks.append(Check(f"{method}_activation_share", share, 0.70, False,
                            f"{method} keeps ≥ 70% of full fine-tuning's activations", unit="%"))
    learned = full_acc - majority if full_acc is not None and majority is not None else None
    values["full_ft_minus_majority"] = learned
    checks.append(Check("full_ft_minus_majority", learned, 0.05, False,
                        "full fine-tuning beats the majority class by ≥ 5 points, so the accuracy comparison "
                        "means something", "give the runs more steps", unit="points"))
    checks.append(Check("lst_minus_full_ft_test", gap, -0.03, False,
                        "LST's test accuracy within 3 points of full fine-tuning's",
                        "give both more steps, or LST a higher learning rate (its side network starts small)",
                        unit="points"))
    findings.findings, findings.checks = values, checks
    if ratio is not None:
        findings.notice.append(
            f"LST trained with {ratio:.2f}× the peak memory of full fine-tuning"
            + (": its backbone runs without autograd, so only the thin side network keeps activations."
               if ratio <= 0.5 else ", not the saving the paper reports: look at the breakdown for the part that "
               "did not shrink."))
    if all(s is not None for s in shares):
        findings.notice.append(
            "Adapter, LoRA and prompt tuning train few parameters yet keep "
            + ", ".join(f"{s:.0%}" for s in shares)
            + " of full fine-tuning's activations: backprop still crosses the whole backbone to reach them.")
    if gap is not None:
        findings.notice.append(f"At this budget LST reached {_pct(lst_acc)} test accuracy against full "
                               f"fine-tuning's {_pct(full_acc)} ({_points(gap)}); always answering the majority "
                               f"class scores {_pct(majority)}.")
    prompt_acc = runs.metric("prompt_tuning", "test_accuracy")
    if prompt_acc is not None and majority is not None and prompt_acc < majority + 0.05:
        findings.notice.append(
            f"Prompt tuning ended at {_pct(prompt_acc)}, near the majority class ({_pct(majority)}): on a 22M-parameter "
            "encoder its 20 virtual tokens need hundreds of steps to steer the frozen model (the paper's results are on "
            "models of billions of parameters). This lesson is about memory, which it shows from the first step.")
    return findings


def check_theseus(runs: LessonRuns) -> Findings:
    findings = Findings("theseus", "done")
    predecessor = runs.metric("predecessor", "test_accuracy")
    successor = runs.metric("theseus", "test_accuracy")
    truncation = runs.metric("truncate", "test_accuracy")
    majority = runs.majority_accuracy()
    gap = successor - truncation if successor is not None and truncation is not None else None
    lowest = min(successor, truncation) if gap is not None else None
    above_majority = lowest - majority if lowest is not None and majority is not None else None
    findings.findings = {"predecessor_test": predecessor, "successor_test": successor, "truncation_test": truncation,
                         "successor_minus_truncation": gap, "majority_test": majority,
                         "lowest_minus_majority": above_majority,
                         "successor_retention": successor / predecessor if successor and predecessor else None}
    findings.checks = [
        Check("predecessor_test", predecessor, 0.75, False, "the predecessor reaches ≥ 75% test accuracy",
              "give the predecessor more steps: Theseus can only pass on what it knows", unit="%"),
        Check("successor_minus_truncation", gap, 0.01, False,
              "the Theseus successor beats fine-tuning the first layers directly (truncation) by ≥ 1 point",
              "run it again with another seed; the margin is the successor's head start, which shrinks "
              "as truncation trains longer (the paper's margin at convergence is 1-2 points)", unit="points"),
        Check("lowest_minus_majority", above_majority, 0.10, False,
              "successor and truncation both beat always answering the majority class by ≥ 10 points",
              "give the compressed runs more steps", unit="points"),
    ]
    if gap is not None and 0 < gap < 0.01:
        findings.notice.append(
            f"The successor ({_pct(successor)}) was ahead of truncation ({_pct(truncation)}) by only "
            f"{100 * gap:.1f} points: less than the one point that would stand out from the noise of one seed.")
    elif gap is not None and gap > 0:
        findings.notice.append(
            f"The successor ({_pct(successor)}) beat truncation ({_pct(truncation)}) by {_points(gap)[1:]} with the "
            "same layers, steps and data: it started from the fine-tuned predecessor's modules and learned to "
            "stand in for them next to the others.")
    elif gap is not None:
        findings.notice.append(
            f"The successor ({_pct(successor)}) did not beat truncation ({_pct(truncation)}) this time "
            f"({_points(gap)}).")
    if predecessor and successor:
        findings.notice.append(f"The successor keeps {successor / predecessor:.1%} of the predecessor's accuracy "
                               f"({_pct(predecessor)}) with half the layers; the majority class scores "
                               f"{_pct(majority)}.")
    return findings


def check_shrink(runs: LessonRuns) -> Findings:
    findings = Findings("shrink", "done")
    by_key = {p.get("key"): p for p in runs.points}
    baseline = by_key.get("baseline") or {}
    base_acc = baseline.get("test_accuracy")
    majority = runs.majority_accuracy()

    def lost(point):  # accuracy points lost against the uncompressed model
        acc = (point or {}).get("test_accuracy")
        return base_acc - acc if acc is not None and base_acc is not None else None

    int8 = by_key.get("int8")
    masked = [p for p in runs.points if p.get("kind") == "unstructured"]
    slowest_mask = max((p.get("speedup") for p in masked if p.get("speedup")), default=None)
    collapse = [lost(by_key.get(k)) for k in ("2bit", "1bit")]
    smallest_collapse = min((c for c in collapse if c is not None), default=None) if all(
        c is not None for c in collapse) else None
    findings.findings = {"baseline_test": base_acc, "majority_test": majority,
                         "int8_speedup": (int8 or {}).get("speedup"), "int8_points_lost": lost(int8),
                         "2bit_points_lost": collapse[0], "1bit_points_lost": collapse[1],
                         "fastest_mask_speedup": slowest_mask,
                         "mask_speedups": {p["setting"]: p.get("speedup") for p in masked}}
    findings.checks = [
        Check("int8_speedup", (int8 or {}).get("speedup"), 1.5, False, "dynamic int8 runs ≥ 1.5× faster on the CPU",
              "close other programs: latency is timed on this machine's shared cores"),
        Check("int8_points_lost", lost(int8), 0.015, True, "dynamic int8 loses ≤ 1.5 points of test accuracy",
              unit="points"),
        Check("kbit_collapse", smallest_collapse, 0.08, False,
              "2-bit and binary weights collapse: each loses ≥ 8 points (8-bit loses well under 1)", unit="points"),
        Check("fastest_mask_speedup", slowest_mask, 1.15, True,
              "masks alone make nothing faster: no pruned model runs more than 1.15× faster"),
    ]
    speed = (int8 or {}).get("speedup")
    if speed is not None:
        findings.notice.append(f"int8 ran {speed:.2f}× as fast as fp32 and lost {_points(lost(int8))[1:]} "
                               f"({_pct((int8 or {}).get('test_accuracy'))} against {_pct(base_acc)}).")
    if smallest_collapse is not None:
        findings.notice.append(
            f"2-bit weights lost {100 * collapse[0]:.1f} points and binary weights {100 * collapse[1]:.1f}"
            + (": rounding every weight to a few levels destroys what fine-tuning stored." if smallest_collapse >= 0.08
               else f" (the majority class scores {_pct(majority)})."))
    if masked:
        findings.notice.append(
            "Pruned models ran at " + ", ".join(f"{p.get('speedup', 0):.2f}×" for p in masked)
            + " the fp32 speed: zeroed weights still sit in dense matrices, so the same kernels do the same work.")
    return findings


# --- the recipes (plain data) -------------------------------------------------------------------

_CPU_DATA = {"backbone": "minilm-l6", "dataset": "rotten-tomatoes", "device": "cpu"}
_CUDA_DATA = {"backbone": "minilm-l6", "dataset": "rotten-tomatoes", "device": "cuda"}

# The fine-tuned model the Theseus lesson starts from is also what `shrink` compresses when it is
# given no run: one configuration, so either lesson reuses the other's finished run.
_CPU_FINE_TUNE = {"steps": 200, "eval_every": 50}
_CUDA_FINE_TUNE = {"steps": 1200, "eval_every": 200}
_CPU_THESEUS_RUN = dict(_CPU_DATA, batch_size=16, max_length=48, max_train_examples=4000, max_eval_examples=1000,
                        steps=80, eval_every=20)
# Every lesson also has this preset: the whole path in seconds, for trying the app and for tests.
# Its random 4-layer backbone shows nothing about the papers, and the verdict says so.
_TINY_RUN = {"backbone": "tiny-random", "dataset": "sms-spam", "device": "cpu", "batch_size": 8, "max_length": 32,
             "steps": 12, "eval_every": 6, "max_train_examples": 128, "max_eval_examples": 64}
_TINY_HELP = ("Tiny smoke test: the random 4-layer tiny-random backbone on SMS spam, seconds per run. It checks "
              "that everything works, not the claim: expect a verdict that says it was not shown.")
_CUDA_THESEUS_RUN = dict(_CUDA_DATA, batch_size=32, max_length=128, max_train_examples=None, max_eval_examples=None,
                         steps=1200, eval_every=100)

LESSONS = {
    lesson.name: lesson
    for lesson in (
        Lesson(
            name="lst-memory",
            title="Why LST saves memory",
            claim=("Ladder Side-Tuning trains at a fraction of full fine-tuning's memory, because backprop never "
                   "enters the backbone; Adapters, LoRA and prompt tuning train few parameters but still keep "
                   "most of the activations."),
            page="memory",
            roles=(Role("full_ft", "full_ft", title="full fine-tuning"), Role("adapter", "adapter", title="Adapter"),
                   Role("prompt_tuning", "prompt_tuning", title="prompt tuning"), Role("lora", "lora", title="LoRA"),
                   Role("lst", "lst", title="LST")),
            presets={
                "cpu": Preset(
                    help="MiniLM-L6 on SMS spam, batch 16 padded to 32 tokens (one shape for every method), 60 steps "
                         "each on the CPU. SMS spam, not Rotten Tomatoes: at this budget LST trails full fine-tuning "
                         "on the film reviews by 1-5 points, while on SMS both reach about 97%, so the accuracy "
                         "check is about the method, not about which one learns sentiment faster.",
                    run=dict(_CPU_DATA, dataset="sms-spam", batch_size=16, max_length=32, padding="max", steps=60,
                             eval_every=30, max_train_examples=2000, max_eval_examples=1000),
                ),
                "cuda": Preset(
                    help="MiniLM-L6 on the whole of Rotten Tomatoes, batch 32 padded to 128 tokens, 600 steps each "
                         "on the GPU.",
                    run=dict(_CUDA_DATA, batch_size=32, max_length=128, padding="max", steps=600, eval_every=100,
                             max_train_examples=None, max_eval_examples=None),
                ),
                "smollm2": Preset(
                    help="SmolLM2-135M, a 30-layer LLaMA-style decoder, on SMS spam: batch 8 padded to 32 tokens, "
                         "40 steps each, 200 evaluation examples. The five runs of this 135M-parameter model take "
                         "about 5 minutes on a 2-core CPU. Memory is shown on every seed; at 40 steps LST's side "
                         "network is often still 3-4 points behind full fine-tuning, and the verdict says so.",
                    run=dict(backbone="smollm2-135m", dataset="sms-spam", device="auto", batch_size=8, max_length=32,
                             padding="max", steps=40, eval_every=40, max_train_examples=1000, max_eval_examples=200),
                ),
                "tiny": Preset(help=_TINY_HELP, run=dict(_TINY_RUN, padding="max")),
            },
            check=check_lst_memory,
            main_roles=("full_ft", "lst"),
        ),
        Lesson(
            name="theseus",
            title="Theseus: halve the layers",
            claim=("A BERT-of-Theseus successor with half the layers beats fine-tuning the first half of the "
                   "layers directly, given the same steps and data."),
            page="theseus",
            # Theseus and truncation both keep half the layers (their default).
            roles=(Role("predecessor", "full_ft", title="predecessor (full fine-tuning)"),
                   Role("theseus", "theseus", {"predecessor": ROLE_REF + "predecessor"},
                        title="Theseus to half the layers"),
                   Role("truncate", "truncate", title="truncation to half the layers")),
            presets={
                "cpu": Preset(
                    help="MiniLM-L6 on Rotten Tomatoes, batch 16, 48 tokens: a 200-step predecessor, then 80 steps "
                         "each for Theseus and truncation on the CPU.",
                    run=_CPU_THESEUS_RUN, roles={"predecessor": _CPU_FINE_TUNE},
                ),
                "cuda": Preset(
                    help="MiniLM-L6 on the whole of Rotten Tomatoes, batch 32, 128 tokens, 1,200 steps per run on "
                         "the GPU.",
                    run=_CUDA_THESEUS_RUN, roles={"predecessor": _CUDA_FINE_TUNE},
                ),
                "tiny": Preset(help=_TINY_HELP, run=_TINY_RUN),
            },
            check=check_theseus,
            main_roles=("predecessor", "theseus"),
        ),
        Lesson(
            name="shrink",
            title="Shrink a model",
            claim=("Dynamic int8 quantization makes a fine-tuned model faster on a CPU at almost no cost; 2-bit and "
                   "binary weights collapse; pruning masks alone make nothing faster."),
            page="compress",
            roles=(Role("model", "full_ft", title="the fine-tuned model"),),
            presets={
                "cpu": Preset(
                    help="A sweep over a finished run: magnitude pruning to 50% and 90%, int8, 8/4/2/1-bit weights, latency "
                         "timed against fp32 in alternating rounds (fp16 is left out: this CPU has no fast fp16 "
                         "kernels). Without a run it first fine-tunes the Theseus lesson's predecessor.",
                    run=_CPU_THESEUS_RUN, roles={"model": _CPU_FINE_TUNE},
                    plan={"sparsities": [0.5, 0.9], "quantize": ["int8", "8bit", "4bit", "2bit", "1bit"],
                          "latency_repeats": 5, "latency_warmup": 2},
                ),
                "cuda": Preset(
                    help="The same sweep (latency is always timed on the CPU, where int8 kernels run), with fp16 and "
                         "bf16; without a run it first fine-tunes the Theseus lesson's GPU predecessor.",
                    run=_CUDA_THESEUS_RUN, roles={"model": _CUDA_FINE_TUNE},
                    plan={"sparsities": [0.3, 0.5, 0.7, 0.9],
                          "quantize": ["fp16", "bf16", "int8", "8bit", "4bit", "2bit", "1bit"],
                          "latency_repeats": 9, "latency_warmup": 2},
                ),
                "tiny": Preset(help=_TINY_HELP, run=_TINY_RUN,
                               plan={"sparsities": [0.5], "quantize": ["int8", "2bit", "1bit"], "latency_repeats": 3,
                                     "latency_warmup": 1}),
            },
            check=check_shrink,
            main_roles=("model",),
        ),
    )
}


def get_lesson(name: str) -> Lesson:
    if name not in LESSONS:
        raise ConfigError(f"unknown lesson '{name}'; lessons: {', '.join(LESSONS)}")
    return LESSONS[name]


def describe_lessons() -> list[dict]:
    return [lesson.describe() for lesson in LESSONS.values()]


# --- queueing -----------------------------------------------------------------------------------


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
    from .config import RunConfig

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
    every run with the lesson. `given` maps roles to existing runs to use as they are (shrink's
    model). Every check runs before anything is queued."""
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
    configs = role_configs(lesson, preset_name, seed, chosen_roles)
    run_ids: dict[str, str] = dict(given)
    chain: list[dict] = []
    chain_roles: list[str] = []
    reused: list[str] = []
    for role, config in zip(chosen_roles, configs):
        settings = dict(config["method_config"])
        pending = False
        for key, value in settings.items():
            if isinstance(value, str) and value.startswith(ROLE_REF):
                target = value[len(ROLE_REF):]
                if target in run_ids:
                    settings[key] = run_ids[target]
                elif target in chain_roles:
                    settings[key] = f"@chain:{chain_roles.index(target)}"
                    pending = True
                else:
                    raise ConfigError(f"lesson '{name}': role '{role.name}' names '{target}', which is not before it")
        config["method_config"] = settings
        existing = None if pending else find_identical_run(manager.store, config)
        if existing:
            run_ids[role.name] = existing
            reused.append(role.name)
        else:
            chain.append(config)
            chain_roles.append(role.name)
    if chain:
        for role_name, run_id in zip(chain_roles, manager.submit_chain(chain)):
            run_ids[role_name] = run_id
    launch = LessonLaunch(lesson_id=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}", lesson=name,
                          preset=preset_name, seed=seed, runs={r.name: run_ids[r.name] for r in lesson.roles},
                          reused=reused, created_at=time.time())
    for role_name, run_id in launch.runs.items():
        manager.store.put_record(run_id, RECORD_KIND, launch.lesson_id, launch.as_record(role_name))
    return launch


def shrink_plan(preset: str | None = None) -> dict:
    return dict(get_lesson("shrink").preset(preset)[1].plan)


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


def lesson_findings(store, record: dict) -> Findings:
    """Check the lesson's claim on its runs as stored now: pending while any is queued or running,
    failed when one did not finish, else the findings with every check."""
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
    points = []
    if lesson.name == "shrink":
        from .compression import stored_points

        # this lesson's sweep only: points of an earlier sweep with another plan stay stored with the run
        points = [p for p in stored_points(store, record["runs"]["model"]) if p["created_at"] >= record["created_at"]]
        if not any(p.get("key") == "int8" for p in points):
            return Findings(lesson.name, "pending", reason="the compression sweep has not measured int8 yet")
    findings = lesson.check(LessonRuns(lesson, records, points))
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
    notice). shrink's sweep runs here, in the caller's thread."""
    started = time.perf_counter()
    launch = submit_lesson(manager, name, seed=seed, preset=preset, given=given)
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
    if name == "shrink" and states["model"]["status"] == "finished":
        from .compression import compress_run

        compress_run(manager.store, launch.runs["model"], shrink_plan(launch.preset),
                     progress=(lambda done, total, message: on_progress(f"sweep {done}/{total}: {message}"))
                     if on_progress else None)
    findings = lesson_findings(manager.store, record)
    result = findings.as_dict()
    result.update(lesson=name, preset=launch.preset, seed=seed, lesson_id=launch.lesson_id,
                  runs=launch.runs, reused=launch.reused, wall_seconds=time.perf_counter() - started)
    return result
