"""Why LST saves memory: full fine-tuning, three methods that train few parameters inside the
backbone, and Ladder Side-Tuning, side by side on one padded batch shape; shown on the Memory page."""

from __future__ import annotations

from .base import (
    TINY_HELP, TINY_RUN, Check, Findings, Lesson, LessonRuns, Prediction, Preset, Role, percent_text, points_text,
)


def _keeps_backbone_activations(runs: LessonRuns) -> list[Role]:
    """The roles whose method backprops through the frozen backbone to reach what it trains."""
    from ..methods import method_class  # loads transformers: listing the lessons does not need it

    return [role for role in runs.lesson.roles if method_class(role.method).backprop_crosses_frozen_backbone]


def _names(titles: list[str]) -> str:
    return titles[0] if len(titles) == 1 else ", ".join(titles[:-1]) + " and " + titles[-1]


def _shared_precision(runs: LessonRuns, *roles: str) -> str | None:
    """The frozen-backbone precision these roles' runs share, when it is below fp32."""
    found = {((runs.records.get(role) or {}).get("config") or {}).get("backbone_precision", "fp32") for role in roles}
    return found.pop() if len(found) == 1 and found != {"fp32"} else None


def check_lst_memory(runs: LessonRuns) -> Findings:
    findings = Findings(runs.lesson.name, "done")
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
    keepers = _keeps_backbone_activations(runs)
    shares = []
    for role in keepers:
        acts = (runs.metric(role.name, "memory_breakdown") or {}).get("activations")
        share = acts / full_parts["activations"] if acts is not None and full_parts.get("activations") else None
        values[f"{role.name}_activation_share"] = share
        shares.append(share)
        checks.append(Check(f"{role.name}_activation_share", share, 0.70, False,
                            f"{role.name} keeps ≥ 70% of full fine-tuning's activations", unit="%"))
    learned = full_acc - majority if full_acc is not None and majority is not None else None
    values["full_ft_minus_majority"] = learned
    checks.append(Check("full_ft_minus_majority", learned, 0.05, False,
                        "full fine-tuning beats the majority class by ≥ 5 points, so the accuracy comparison "
                        "means something", "give the runs more steps", unit="points"))
    checks.append(Check("lst_minus_full_ft_test", gap, -0.03, False,
                        "LST's test accuracy within 3 points of full fine-tuning's",
                        "give both more steps, or LST a higher learning rate (its side network starts small)",
                        unit="points"))
    quantized = _shared_precision(runs, "lora", "lst")
    if quantized:
        lora_peak, lora_acc = runs.metric("lora", "peak_memory_bytes"), runs.metric("lora", "test_accuracy")
        over_lora = lst_peak / lora_peak if lst_peak and lora_peak else None
        lora_gap = lst_acc - lora_acc if lst_acc is not None and lora_acc is not None else None
        values.update(lst_over_lora_peak=over_lora, lst_minus_lora_test=lora_gap)
        checks.append(Check("lst_over_lora_peak", over_lora, 0.5, True,
                            f"with the same {quantized} backbone, LST's peak ≤ 0.5 × LoRA's (QLoRA's)",
                            "a longer max_length or a bigger batch: LoRA's activations grow, LST's stay thin"))
        checks.append(Check("lst_minus_lora_test", lora_gap, -0.03, False,
                            f"LST's test accuracy within 3 points of LoRA's, both with the {quantized} backbone",
                            "give both more steps", unit="points"))
        if over_lora is not None:
            findings.notice.append(
                f"With both frozen backbones in {quantized}, LST trained with {over_lora:.2f}× LoRA's peak memory: "
                "quantizing shrinks the frozen weights for both, but LoRA's backprop still keeps the backbone's activations.")
    findings.findings, findings.checks = values, checks
    if ratio is not None:
        findings.notice.append(
            f"LST trained with {ratio:.2f}× the peak memory of full fine-tuning"
            + (": its backbone runs without autograd, so only the thin side network keeps activations."
               if ratio <= 0.5 else ", not the saving the paper reports: look at the breakdown for the part that "
               "did not shrink."))
    if shares and all(s is not None for s in shares):
        names = _names([role.title or role.name for role in keepers])
        findings.notice.append(
            f"{names[:1].upper()}{names[1:]} train few parameters yet keep "
            + ", ".join(f"{s:.0%}" for s in shares)
            + " of full fine-tuning's activations: backprop still crosses the whole backbone to reach them.")
    if gap is not None:
        findings.notice.append(f"At this budget LST reached {percent_text(lst_acc)} test accuracy against full "
                               f"fine-tuning's {percent_text(full_acc)} ({points_text(gap)}); always answering the "
                               f"majority class scores {percent_text(majority)}.")
    prompt_acc = runs.metric("prompt_tuning", "test_accuracy")
    if prompt_acc is not None and majority is not None and prompt_acc < majority + 0.05:
        steps = ((runs.records.get("prompt_tuning") or {}).get("config") or {}).get("steps")
        findings.notice.append(
            f"Prompt tuning ended at {percent_text(prompt_acc)}, near the majority class ({percent_text(majority)})"
            + (f" after {steps} steps" if steps else "") + ": its virtual tokens need hundreds of steps to steer a "
            "frozen model (the paper's results are on models of billions of parameters). This lesson is about "
            "memory, which it shows from the first step.")
    return findings


def estimated_peak_ratio(configs: dict) -> float | None:
    """LST's predicted peak over full fine-tuning's, on the roles' own run settings."""
    from ..estimate import estimate_memory  # loads torch: listing the lessons does not need it

    peaks = {}
    for role in ("lst", "full_ft"):
        config = configs[role]
        peaks[role] = estimate_memory(config["backbone"], config["method"], config["batch_size"], config["max_length"],
                                      config.get("method_config") or {},
                                      backbone_precision=config.get("backbone_precision", "fp32")).predicted_peak_bytes
    return peaks["lst"] / peaks["full_ft"]


_CPU_DATA = {"backbone": "minilm-l6", "dataset": "sms-spam", "device": "cpu"}
_CUDA_DATA = {"backbone": "minilm-l6", "dataset": "rotten-tomatoes", "device": "cuda"}
_SMOLLM2_RUN = dict(backbone="smollm2-135m", dataset="sms-spam", device="auto", batch_size=8, max_length=32,
                    padding="max", steps=40, eval_every=40, max_train_examples=1000, max_eval_examples=150)
# The claim checks Adapter, LoRA and prompt tuning on memory only, which their first step already shows
# (one padded shape for all); 10 steps each keep the smollm2 preset within 3 minutes on 2 cores.
_MEMORY_ONLY_ROLES = {role: {"steps": 10, "eval_every": 10} for role in ("adapter", "lora", "prompt_tuning")}

LESSON = Lesson(
    name="lst-memory",
    title="Why LST saves memory",
    claim=("Ladder Side-Tuning trains at a fraction of full fine-tuning's memory, because backprop never "
           "enters the backbone; Adapters, LoRA and prompt tuning train few parameters but still keep "
           "most of the activations."),
    page="memory",
    # In the claim's order: the activation checks and their sentence follow the roles.
    roles=(Role("full_ft", "full_ft", title="full fine-tuning"), Role("adapter", "adapter", title="Adapter"),
           Role("lora", "lora", title="LoRA"), Role("prompt_tuning", "prompt_tuning", title="prompt tuning"),
           Role("lst", "lst", title="LST")),
    presets={
        "cpu": Preset(
            help="MiniLM-L6 on SMS spam, batch 16 padded to 32 tokens (one shape for every method), 60 steps "
                 "each on the CPU. SMS spam, not Rotten Tomatoes: at this budget LST trails full fine-tuning "
                 "on the film reviews by 1-5 points, while on SMS both reach about 97%, so the accuracy "
                 "check is about the method, not about which one learns sentiment faster.",
            run=dict(_CPU_DATA, batch_size=16, max_length=32, padding="max", steps=60, eval_every=30,
                     max_train_examples=2000, max_eval_examples=1000),
        ),
        "cuda": Preset(
            help="MiniLM-L6 on the whole of Rotten Tomatoes, batch 32 padded to 128 tokens, 600 steps each "
                 "on the GPU.",
            run=dict(_CUDA_DATA, batch_size=32, max_length=128, padding="max", steps=600, eval_every=100,
                     max_train_examples=None, max_eval_examples=None),
        ),
        "smollm2": Preset(
            help="SmolLM2-135M, a 30-layer LLaMA-style decoder, on SMS spam: batch 8 padded to 32 tokens, 150 "
                 "evaluation examples; full fine-tuning and LST take 40 steps, Adapter, LoRA and prompt tuning 10, "
                 "since the claim checks them on memory alone, which their first step shows. About 3 minutes on "
                 "a 2-core CPU.",
            run=_SMOLLM2_RUN, roles=_MEMORY_ONLY_ROLES,
        ),
        "smollm2-int8": Preset(
            help="The step after LST: SmolLM2-135M on SMS spam as in the smollm2 preset but padded to 64 tokens, "
                 "with the frozen backbone of Adapter, LoRA, prompt tuning and LST stored in int8 (LoRA on an "
                 "8-bit base is QLoRA's set-up; LST on one is Quantized Side Tuning's). Full fine-tuning stays "
                 "fp32, the reference. Adds the claim LST-int8's peak ≤ 0.5 × LoRA-int8's with accuracy within 3 "
                 "points. 64 tokens, not 32: at 32 LoRA keeps fewer activations and LST-int8 measured 0.566 × its "
                 "peak.",
            run=dict(_SMOLLM2_RUN, max_length=64, max_eval_examples=200),
            roles={role: {"backbone_precision": "int8"} for role in ("adapter", "lora", "prompt_tuning", "lst")},
        ),
        "tiny": Preset(help=TINY_HELP, run=dict(TINY_RUN, padding="max")),
    },
    check=check_lst_memory,
    prediction=Prediction("lst_peak_ratio", "LST's peak training memory, as a fraction of full fine-tuning's",
                          low=0.0, high=1.5, default=0.5, estimate=estimated_peak_ratio),
    main_roles=("full_ft", "lst"),
    page_param="runs",
)
