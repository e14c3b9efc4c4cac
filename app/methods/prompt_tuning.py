"""Prompt tuning (Lester, Al-Rfou, Constant, EMNLP 2021) through the `peft` library: trainable
virtual token embeddings are put in front of every input; the backbone stays frozen, the
classification head trains.

Backpropagation still runs through the whole backbone to reach the virtual tokens, so training
memory stays close to that of full fine-tuning's activations (the point the lab's memory page
shows). The virtual tokens lengthen every input: `max_length + num_virtual_tokens` must fit the
backbone's positions.

The trained model is a peft model, not a plain transformers one: it exports as a state dict (for
this lab) plus a standard peft adapter folder that loads on top of the backbone with peft alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..options import option
from ..tasks import CAUSAL_LM, TASKS
from .base import BuildContext, Method, MethodConfig, language_model_outputs
from .peft_support import export_with_adapter, extra_head_modules, wrap_with_peft

MIN_TEXT_TOKENS = 8  # the smallest max_length a run accepts


class VirtualTokenMethod(Method):
    """Shared by prompt tuning and P-tuning: peft prompt learning on a sequence classifier."""

    exports_plain_model = False
    backprop_crosses_frozen_backbone = True
    prepends_virtual_tokens = True
    memory_grows_by_layer = True
    tasks = TASKS

    def extra_input_tokens(self) -> int:
        return self.config.num_virtual_tokens

    def check_compatible(self, backbone, label_names: list[str]) -> None:
        limit = backbone.max_length
        if self.config.num_virtual_tokens + MIN_TEXT_TOKENS > limit:
            raise ConfigError(
                f"{self.config.num_virtual_tokens} virtual tokens leave no room for text in backbone "
                f"'{backbone.name}' ({limit} positions); use at most {limit - MIN_TEXT_TOKENS}"
            )

    def peft_config(self, ctx: BuildContext, token_dim: int, head_modules: list[str]):
        raise NotImplementedError

    def build(self, ctx: BuildContext):
        if ctx.task == CAUSAL_LM:  # the virtual tokens alone train; the LM head is the backbone's
            language_model = ctx.backbone.load_for_causal_lm()
            token_dim = language_model.get_input_embeddings().embedding_dim
            return wrap_with_peft(language_model, self.peft_config(ctx, token_dim, None))
        classifier = ctx.backbone.load_for_classification(ctx.label_names)
        # ELECTRA's word embeddings can be narrower than its hidden size: the virtual tokens
        # join the word embeddings, so they take the embeddings' width.
        token_dim = classifier.get_input_embeddings().embedding_dim
        config = self.peft_config(ctx, token_dim, extra_head_modules(classifier) or None)
        return wrap_with_peft(classifier, config)

    def lm_outputs(self, model, batch: dict):
        """The virtual tokens' embeddings before the text's, the text's states after them: the same
        sequence peft's own forward builds, read as states for the chunked loss."""
        return language_model_outputs(model, batch, prefix=model.get_prompt(batch_size=batch["input_ids"].shape[0]))

    def export(self, model, out_dir: Path, ctx: BuildContext) -> dict:
        return export_with_adapter(self, model, out_dir, ctx, "virtual tokens and the trained head")


PROMPT_INITS = ("labels", "text", "random", "vocab")


@dataclass
class PromptTuningConfig(MethodConfig):
    num_virtual_tokens: int = option(
        20, "Virtual tokens put before every input (the paper used 1 to 150; 20 is a common choice).",
        min=1, max=1024,
    )
    init: str = option(
        "labels",
        "Starting embeddings: labels (the words of the class names, the paper's best start; vocab on causal-lm, "
        "which has none), text (init_text), "
        "random, or vocab (embeddings of random vocabulary words).",
        choices=list(PROMPT_INITS),
    )
    init_text: str | None = option(None, "Text whose token embeddings start the virtual tokens (init 'text'); "
                                         "repeated or cut to fit.")

    def validate(self) -> None:
        if self.init == "text" and not (self.init_text or "").strip():
            raise ConfigError("init 'text' needs an init_text, e.g. 'Is this review positive or negative?'")


class PromptTuning(VirtualTokenMethod):
    name = "prompt_tuning"
    title = "Prompt tuning"
    summary = ("Trainable virtual token embeddings in front of every input (peft); the backbone is frozen but "
               "backpropagation still crosses all of it.")
    Config = PromptTuningConfig
    # A handful of embedding vectors steering a frozen model: the paper trained them at 0.3 with
    # Adafactor; with AdamW on short runs about 1e-2 learns without blowing up the head.
    default_lr = 1e-2

    def peft_config(self, ctx: BuildContext, token_dim: int, head_modules: list[str] | None):
        from peft import PromptTuningConfig as PeftPromptTuningConfig
        from peft import PromptTuningInit, TaskType

        init, text = self.config.init, None
        if init == "labels" and ctx.task == CAUSAL_LM:
            init = "vocab"  # a language model has no class names to start from
        if ctx.shapes_only:
            init = "random"  # same parameters; a text init would read the tokenizer and real embeddings
        if init == "labels":
            text = " ".join(ctx.label_names)
        elif init == "text":
            text = self.config.init_text
        kinds = {"labels": PromptTuningInit.TEXT, "text": PromptTuningInit.TEXT,
                 "random": PromptTuningInit.RANDOM, "vocab": PromptTuningInit.SAMPLE_VOCAB}
        return PeftPromptTuningConfig(
            task_type=TaskType.CAUSAL_LM if ctx.task == CAUSAL_LM else TaskType.SEQ_CLS,
            num_virtual_tokens=self.config.num_virtual_tokens,
            token_dim=token_dim,
            prompt_tuning_init=kinds[init],
            prompt_tuning_init_text=text,
            tokenizer_name_or_path=ctx.backbone.source if text is not None else None,
            modules_to_save=head_modules,
        )
