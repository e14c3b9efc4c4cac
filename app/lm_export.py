"""Exporting a causal-lm run: a plain `AutoModelForCausalLM` folder where the method's result is one
(full fine-tuning; LoRA merged into the weights, with its peft adapter beside it), else the lab's
state (LST's side network, which needs its frozen backbone). Every export is checked by generating
greedily from fixed prompts: a plain folder through transformers' own `pipeline("text-generation")`,
the lab's state through the lab's rebuild; both must write the tokens the run writes.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoints import load_run_model, rebuild_exported
from .errors import LabError
from .generation import stop_tokens
from .predict import TextWriter

# Prompts every export is checked on: plain prose, a line of dialogue, a letter's opening.
PROBE_PROMPTS = ("The film opens on a quiet street where", "where were you last night?\n", "Dear members of the committee,")
CHECK_TOKENS = 8


def plain_generations(folder: Path, prompts: tuple[str, ...], stops: set[int]) -> list[str]:
    """What transformers alone writes from a plain folder: its pipeline, greedy, no lab code."""
    from transformers import pipeline

    writer = pipeline("text-generation", model=str(folder), tokenizer=str(folder), device="cpu")
    return [writer(prompt, max_new_tokens=CHECK_TOKENS, do_sample=False, return_full_text=False,
                   eos_token_id=sorted(stops), pad_token_id=writer.tokenizer.pad_token_id)[0]["generated_text"]
            for prompt in prompts]


def lab_state_generations(folder: Path, prompts: tuple[str, ...]) -> list[str]:
    """What the lab's rebuild of an exported state writes."""
    writer = TextWriter(*rebuild_exported(folder))
    return [writer.generate(prompt, max_new_tokens=CHECK_TOKENS).text for prompt in prompts]


def export_language_model(store, run_id: str, out_dir: Path) -> dict:
    loaded = load_run_model(store, run_id, "cpu", fp32_backbone=True)
    writer = TextWriter(loaded.method, loaded.model, loaded.backbone)
    expected = [writer.generate(prompt, max_new_tokens=CHECK_TOKENS).text for prompt in PROBE_PROMPTS]
    written = loaded.method.export(loaded.model, out_dir, loaded.context)
    if written["format"] == "transformers":
        answers = plain_generations(out_dir, PROBE_PROMPTS, stop_tokens(loaded.backbone.tokenizer))
        load = f"pipeline('text-generation', model='{out_dir}')"
    else:
        answers = lab_state_generations(out_dir, PROBE_PROMPTS)
        load = "app.export.load_exported(path)"
    differing = [prompt for prompt, got, want in zip(PROBE_PROMPTS, answers, expected) if got != want]
    if differing:
        raise LabError(f"the export of run '{run_id}' writes differently from the run on {len(differing)} of "
                       f"{len(PROBE_PROMPTS)} check prompts (e.g. {differing[0]!r}); nothing should be used from "
                       f"{out_dir}")
    return {**written, "load": load, "checked": f"writes the run's greedy {CHECK_TOKENS} tokens on "
                                                f"{len(PROBE_PROMPTS)} prompts"}
