"""P-tuning (Liu et al., "GPT Understands, Too", 2021) through the `peft` library: the virtual
tokens in front of every input come out of a small trainable prompt encoder (an MLP or LSTM over
trainable embeddings), which the paper found trains more stably than free embeddings. The
backbone stays frozen, the classification head trains; backpropagation crosses the whole backbone.

Exports like prompt tuning: a state dict for this lab plus a peft adapter folder, where peft stores
the encoder's output embeddings (the encoder itself is only needed while training).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..options import option
from ..tasks import CAUSAL_LM
from .base import BuildContext, MethodConfig
from .prompt_tuning import VirtualTokenMethod

ENCODERS = ("mlp", "lstm")


@dataclass
class PTuningConfig(MethodConfig):
    num_virtual_tokens: int = option(20, "Virtual tokens put before every input.", min=1, max=1024)
    encoder_hidden_size: int = option(
        128, "Hidden width of the prompt encoder that produces the virtual tokens.", min=1, max=8192,
    )
    encoder: str = option("mlp", "Prompt encoder: mlp (two hidden layers) or lstm (a bidirectional LSTM, then an MLP).",
                          choices=list(ENCODERS))
    encoder_dropout: float = option(0.0, "Dropout inside the prompt encoder.", min=0.0, max=0.9)


class PTuning(VirtualTokenMethod):
    name = "p_tuning"
    title = "P-tuning"
    summary = ("Virtual tokens produced by a small trainable prompt encoder (peft); the backbone is frozen but "
               "backpropagation still crosses all of it.")
    Config = PTuningConfig
    # The prompt encoder is a freshly initialised MLP feeding a frozen model: like prompt tuning
    # it needs a far larger step than full fine-tuning to move within a short run.
    default_lr = 3e-3

    def peft_config(self, ctx: BuildContext, token_dim: int, head_modules: list[str] | None):
        from peft import PromptEncoderConfig, PromptEncoderReparameterizationType, TaskType

        kinds = {"mlp": PromptEncoderReparameterizationType.MLP, "lstm": PromptEncoderReparameterizationType.LSTM}
        return PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM if ctx.task == CAUSAL_LM else TaskType.SEQ_CLS,
            num_virtual_tokens=self.config.num_virtual_tokens,
            token_dim=token_dim,
            encoder_hidden_size=self.config.encoder_hidden_size,
            encoder_reparameterization_type=kinds[self.config.encoder],
            encoder_dropout=self.config.encoder_dropout,
            modules_to_save=head_modules,
        )
