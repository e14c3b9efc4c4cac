"""Theseus: halve the layers. A fine-tuned predecessor, its BERT-of-Theseus successor with half the
layers, and the truncation baseline with the same layers, steps and data; shown on the Theseus page."""

from __future__ import annotations

from ..run_refs import role_ref
from .base import (
    TINY_HELP, TINY_RUN, Check, Findings, Lesson, LessonRuns, Prediction, Preset, Role, percent_text, points_text,
)


# From benchmarks/theseus_data_size.py and benchmarks/theseus_convergence.py (docs/lessons.md).
CONVERGENCE_NOTE = (
    "Where the claim holds: at this budget. Trained to convergence with the same early stopping for both, on "
    "MiniLM-L6 and Rotten Tomatoes, the successor was at most 0.4 points ahead of truncation (500 training "
    "examples, 3 seeds), within 0.4 points either way on 2,000 (3 seeds, which ranged from -1.7 to +2.7) and "
    "behind it on all 10,246 (3 seeds): no training-set size "
    "gave the paper's 1-2 points. Those were measured on BERT-base, whose 12 layers hold most of its "
    "weights; a 3-layer MiniLM keeps 12M of its 17M parameters in the embeddings every compressed model "
    "inherits, and 3 layers of a sentence encoder already carry most of what these short reviews need.")


def check_theseus(runs: LessonRuns) -> Findings:
    findings = Findings(runs.lesson.name, "done")
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
            f"The successor ({percent_text(successor)}) was ahead of truncation ({percent_text(truncation)}) by only "
            f"{100 * gap:.1f} points: less than the one point that would stand out from the noise of one seed.")
    elif gap is not None and gap > 0:
        findings.notice.append(
            f"The successor ({percent_text(successor)}) beat truncation ({percent_text(truncation)}) by "
            f"{points_text(gap)[1:]} with the same layers, steps and data: it started from the fine-tuned "
            "predecessor's modules and learned to stand in for them next to the others.")
    elif gap is not None:
        findings.notice.append(
            f"The successor ({percent_text(successor)}) did not beat truncation ({percent_text(truncation)}) this "
            f"time ({points_text(gap)}).")
    findings.notice.append(CONVERGENCE_NOTE)
    if predecessor and successor:
        findings.notice.append(f"The successor keeps {successor / predecessor:.1%} of the predecessor's accuracy "
                               f"({percent_text(predecessor)}) with half the layers; the majority class scores "
                               f"{percent_text(majority)}.")
    return findings


_CPU_DATA = {"backbone": "minilm-l6", "dataset": "rotten-tomatoes", "device": "cpu"}
_CUDA_DATA = {"backbone": "minilm-l6", "dataset": "rotten-tomatoes", "device": "cuda"}

# The fine-tuned model this lesson starts from is also what `shrink` compresses when it is given no
# run: one configuration, so either lesson reuses the other's finished run.
CPU_FINE_TUNE = {"steps": 200, "eval_every": 50}
CUDA_FINE_TUNE = {"steps": 1200, "eval_every": 200}
CPU_RUN = dict(_CPU_DATA, batch_size=16, max_length=48, max_train_examples=4000, max_eval_examples=1000,
               steps=80, eval_every=20)
CUDA_RUN = dict(_CUDA_DATA, batch_size=32, max_length=128, max_train_examples=None, max_eval_examples=None,
                steps=1200, eval_every=100)

LESSON = Lesson(
    name="theseus",
    title="Theseus: halve the layers",
    claim=("Given the same short budget and data, a BERT-of-Theseus successor with half the layers beats "
           "fine-tuning the first half of the layers directly (truncation): it starts from the fine-tuned "
           "predecessor's modules. That is a head start, not a better model: trained to convergence, "
           "truncation caught up at every training-set size measured."),
    page="theseus",
    # Theseus and truncation both keep half the layers (their default).
    roles=(Role("predecessor", "full_ft", title="predecessor (full fine-tuning)"),
           Role("theseus", "theseus", {"predecessor": role_ref("predecessor")}, title="Theseus to half the layers"),
           Role("truncate", "truncate", title="truncation to half the layers")),
    presets={
        "cpu": Preset(
            help="MiniLM-L6 on Rotten Tomatoes, batch 16, 48 tokens: a 200-step predecessor, then 80 steps "
                 "each for Theseus and truncation on the CPU.",
            run=CPU_RUN, roles={"predecessor": CPU_FINE_TUNE},
        ),
        "cuda": Preset(
            help="MiniLM-L6 on the whole of Rotten Tomatoes, batch 32, 128 tokens, 1,200 steps per run on "
                 "the GPU.",
            run=CUDA_RUN, roles={"predecessor": CUDA_FINE_TUNE},
        ),
        "tiny": Preset(help=TINY_HELP, run=TINY_RUN),
    },
    check=check_theseus,
    prediction=Prediction("successor_minus_truncation",
                          "How many points of test accuracy the Theseus successor gains over truncation",
                          low=-0.2, high=0.2, default=0.0, unit="points"),
    main_roles=("predecessor", "theseus"),
    page_roles=("theseus",),
)
