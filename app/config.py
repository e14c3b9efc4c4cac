"""A run's configuration: what to train, on what, for how long. Plain data, stored with the run."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .backbones import DEFAULT_BACKBONE
from .batching import PADDING_CHOICES
from .data import DEFAULT_DATASET
from .errors import ConfigError
from .lm_data import LM_FORMATS
from .options import check_bounds, describe_fields, option
from .precision import PRECISIONS
from .tasks import TASKS


@dataclass
class RunConfig:
    backbone: str = option(
        DEFAULT_BACKBONE,
        "Registry name, local model folder or hub id (encoder or decoder); config:NAME or a config.json path "
        "names a model known by its config alone, which the memory estimate takes and training refuses.",
    )
    dataset: str = option(
        DEFAULT_DATASET,
        "Registry name, a CSV/TSV/JSON/JSONL/XLSX/Parquet file (book.xlsx#Sheet for one sheet), a folder "
        "written by datasets' save_to_disk, or a hub dataset id.",
    )
    method: str = option("full_ft", "Training method (see `python -m app methods`).")
    task: str = option(
        "classification",
        "What the model learns: classification (a label per text) or causal-lm (decoders: to continue text, "
        "the loss on the tokens it should write; validation perplexity and greedy generations at every "
        "evaluation).",
        choices=list(TASKS),
    )
    method_config: dict = field(default_factory=dict, metadata={"help": "Settings of the method."})
    text_column: str = option("text", "Column holding the text (files and hub datasets).")
    text_pair_column: str | None = option(None, "Column holding a second text for sentence pairs (optional).")
    label_column: str = option("label", "Column holding the class label (files and hub datasets).")
    lm_format: str = option(
        "auto",
        "causal-lm data: text (documents packed into blocks of max_length), prompt_response (the loss on the "
        "response only), alpaca (instruction, input, output), chat (a messages list, rendered with the "
        "tokenizer's chat template, the loss on assistant turns), text_to_text (a classification dataset "
        "as prompt -> label word, scored by exact match); auto picks by the dataset's columns.",
        choices=list(LM_FORMATS),
    )
    prompt_column: str = option("prompt", "causal-lm prompt/response data: the column holding the prompt.")
    response_column: str = option("response", "causal-lm prompt/response data: the column holding the response.")
    steps: int = option(100, "Optimizer steps to take.", min=1, max=1_000_000)
    batch_size: int = option(16, "Examples per step.", min=1, max=4096)
    max_length: int = option(64, "Tokens per example (longer texts are truncated).", min=8, max=8192)
    padding: str = option(
        "dynamic",
        "dynamic: each batch is padded to its own longest example (rounded up to 8) and training batches "
        "group examples of similar length; max: every batch is padded to max_length (one shape every step, "
        "for comparing methods' memory on the same shape).",
        choices=list(PADDING_CHOICES),
    )
    decoder_pooling: str = option(
        "last",
        "How a decoder backbone's classifier reads its token states: the last real token (what transformers' "
        "decoder classifiers do) or the mean over real tokens. Encoders pool the way their backbone was "
        "pretrained, and LST has its own pooling setting.",
        choices=["last", "mean"],
    )
    lr: float | None = option(None, "Peak learning rate; empty takes the method's default.", min=1e-8, max=1.0)
    weight_decay: float = option(0.01, "AdamW weight decay.", min=0.0, max=1.0)
    warmup_ratio: float = option(0.06, "Fraction of steps with linear warm-up.", min=0.0, max=0.5)
    grad_clip: float = option(1.0, "Clip the gradient norm to this (0 turns clipping off).", min=0.0, max=1e4)
    eval_every: int = option(50, "Evaluate on the validation set every N steps (and at the end).", min=1)
    patience: int = option(
        0,
        "Stop once validation has not improved (a higher accuracy, or the same with a lower loss) for this "
        "many evaluations in a row, and keep the weights of the best evaluation (0: take every step and keep "
        "the last weights).",
        min=0, max=1000,
    )
    patience_from: float = option(
        0.0,
        "Fraction of the steps before early stopping may end the run (the best weights are tracked from "
        "the start). With a decaying learning rate, a model often improves again once the rate has "
        "fallen; 0.5 waits for half of the schedule.",
        min=0.0, max=1.0,
    )
    max_train_examples: int | None = option(None, "Use at most this many training examples.", min=1)
    max_eval_examples: int | None = option(1000, "Use at most this many validation and test examples.", min=1)
    generations: int = option(
        4, "causal-lm: validation prompts answered greedily at every evaluation (0: none).", min=0, max=32)
    max_new_tokens: int = option(32, "causal-lm: tokens each of those answers may take.", min=1, max=1024)
    seed: int = option(42, "Seed for weights of new layers, data order and any sampling.", min=0)
    split_seed: int = option(0, "Seed of the train/validation/test split (kept apart so runs compare).", min=0)
    device: str = option("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")
    bf16: bool = option(False, "bf16 autocast (CUDA only).")
    backbone_precision: str = option(
        "fp32",
        "How the frozen backbone's linear weights are stored: fp32, bf16, int8 (torchao for LST's forward-only "
        "backbone, bitsandbytes where backprop crosses it) or int4 (bitsandbytes NF4, QLoRA's format). For methods "
        "that keep a frozen backbone (lst, lora, adapter, bitfit, prompt_tuning, p_tuning); trainable weights stay "
        "fp32.",
        choices=list(PRECISIONS),
    )
    memory_every: int = option(1, "Measure the memory breakdown every N steps.", min=1)
    processes: int = option(
        1,
        "Data-parallel processes (DDP): the batch is split across them. More than 1 runs under torchrun "
        "(the app starts it; from a shell use torchrun --nproc_per_node N -m app train ...).",
        min=1, max=1024,
    )
    report_to: str = option(
        "none",
        "Also report the run to a tracking server: mlflow honours MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME.",
        choices=["none", "mlflow"],
    )
    name: str = option("", "A label for this run (optional).")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        """A checked config from plain values (a stored run, a form, CLI flags)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown run setting(s): {', '.join(unknown)}")
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """Range and type checks that need nothing loaded."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "method_config":
                if not isinstance(value, dict):
                    raise ConfigError("method_config must be a mapping of setting names to values")
                continue
            expected = describe_fields_cache()[f.name]
            if value is None:
                if not expected["optional"]:
                    raise ConfigError(f"'{f.name}' needs a value")
                continue
            kind = expected["type"]
            if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"'{f.name}' must be a whole number, got {value!r}")
            if kind == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"'{f.name}' must be a number, got {value!r}")
                if not math.isfinite(value):
                    raise ConfigError(f"'{f.name}' must be a finite number, got {value!r}")
            if kind == "str" and not isinstance(value, str):
                raise ConfigError(f"'{f.name}' must be text, got {value!r}")
            if kind == "bool" and not isinstance(value, bool):
                raise ConfigError(f"'{f.name}' must be true or false, got {value!r}")
            check_bounds(f.name, value, f.metadata)
        for name in ("backbone", "dataset", "method"):
            if not getattr(self, name).strip():
                raise ConfigError(f"'{name}' must not be empty")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise ConfigError(f"unknown device '{self.device}': use auto, cpu, cuda, cuda:N or mps")


_FIELDS: dict | None = None


def describe_fields_cache() -> dict:
    global _FIELDS
    if _FIELDS is None:
        _FIELDS = {row["name"]: row for row in describe_fields(RunConfig)}
    return _FIELDS
