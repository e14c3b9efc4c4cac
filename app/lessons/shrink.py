"""Shrink a model: a compression sweep (pruning masks, int8, k-bit weights) over one fine-tuned
model, given or trained first (the Theseus lesson's predecessor); shown on the Compress page."""

from __future__ import annotations

from . import theseus
from .base import (
    TINY_HELP, TINY_RUN, Check, Findings, Lesson, LessonRuns, Prediction, Preset, Role, percent_text, points_text,
)


def check_shrink(runs: LessonRuns) -> Findings:
    if not any(p.get("key") == "int8" for p in runs.points):
        return Findings(runs.lesson.name, "pending", reason="the compression sweep has not measured int8 yet")
    findings = Findings(runs.lesson.name, "done")
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
        findings.notice.append(f"int8 ran {speed:.2f}× as fast as fp32 and lost {points_text(lost(int8))[1:]} "
                               f"({percent_text((int8 or {}).get('test_accuracy'))} against "
                               f"{percent_text(base_acc)}).")
    if smallest_collapse is not None:
        findings.notice.append(
            f"2-bit weights lost {100 * collapse[0]:.1f} points and binary weights {100 * collapse[1]:.1f}"
            + (": rounding every weight to a few levels destroys what fine-tuning stored." if smallest_collapse >= 0.08
               else f" (the majority class scores {percent_text(majority)})."))
    if masked:
        findings.notice.append(
            "Pruned models ran at " + ", ".join(f"{p.get('speedup', 0):.2f}×" for p in masked)
            + " the fp32 speed: zeroed weights still sit in dense matrices, so the same kernels do the same work.")
    return findings


LESSON = Lesson(
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
            run=theseus.CPU_RUN, roles={"model": theseus.CPU_FINE_TUNE},
            plan={"sparsities": [0.5, 0.9], "quantize": ["int8", "8bit", "4bit", "2bit", "1bit"],
                  "latency_repeats": 5, "latency_warmup": 2},
        ),
        "cuda": Preset(
            help="The same sweep (latency is always timed on the CPU, where int8 kernels run), with fp16 and "
                 "bf16; without a run it first fine-tunes the Theseus lesson's GPU predecessor.",
            run=theseus.CUDA_RUN, roles={"model": theseus.CUDA_FINE_TUNE},
            plan={"sparsities": [0.3, 0.5, 0.7, 0.9],
                  "quantize": ["fp16", "bf16", "int8", "8bit", "4bit", "2bit", "1bit"],
                  "latency_repeats": 9, "latency_warmup": 2},
        ),
        "tiny": Preset(help=TINY_HELP, run=TINY_RUN,
                       plan={"sparsities": [0.5], "quantize": ["int8", "2bit", "1bit"], "latency_repeats": 3,
                             "latency_warmup": 1}),
    },
    check=check_shrink,
    prediction=Prediction("int8_speedup", "How many times faster the dynamic int8 model predicts than fp32 on this CPU",
                          low=0.5, high=5.0, default=1.0),
    main_roles=("model",),
    page_roles=("model",),
    given_role="model",
    given_role_label="Model to shrink",
    sweep_role="model",
)


def shrink_plan(preset: str | None = None) -> dict:
    """The compression plan of a preset (the machine's by default): what the lesson's sweep runs."""
    return LESSON.sweep_plan(preset)
