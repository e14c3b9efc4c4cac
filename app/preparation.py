"""Everything checked before a run is stored or trained: the backbone, dataset and method are
resolved and every setting that can be refused is refused here, with a message that says why.
A run is prepared once: the app, the CLI and the data-parallel processes hand the prepared run to
the loop (`app.training.train`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .backbones import Backbone, ConfigBackbone, get_backbone
from .batching import Batcher
from .checkpoints import check_reference
from .config import RunConfig
from .config_models import CONFIG_ONLY_NOTE
from .data import ColumnMap, TextDataset, load_dataset, tokenize_split
from .errors import ConfigError
from .lm_data import LMColumns, LMDataset, load_lm_dataset, tokenize_lm_split
from .methods import create_method
from .methods.base import Method
from .precision import QUANTIZED, check_precision
from .store import RunStore
from .tasks import CAUSAL_LM


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{name}' asked for, but CUDA is not available on this machine")
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device '{name}' does not exist ({torch.cuda.device_count()} CUDA device(s))")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' asked for, but MPS is not available on this machine")
    return torch.device(name)


def check_length_fits(backbone: Backbone, method: Method, max_length: int) -> None:
    """Every input (max_length tokens plus the method's virtual tokens) must fit the backbone's positions."""
    if max_length > backbone.max_length:
        raise ConfigError(
            f"max_length {max_length} is above what backbone '{backbone.name}' accepts ({backbone.max_length})"
        )
    extra_tokens = method.extra_input_tokens()
    if max_length + extra_tokens > backbone.max_length:
        raise ConfigError(
            f"max_length {max_length} plus the {extra_tokens} virtual tokens of method '{method.name}' is above "
            f"what backbone '{backbone.name}' accepts ({backbone.max_length}); lower max_length to at most "
            f"{backbone.max_length - extra_tokens} or use fewer virtual tokens"
        )


def check_task_fits(backbone: Backbone, method: Method, task: str) -> None:
    """The method must train for the task, and a language model needs a decoder's LM head."""
    method.check_task(task)
    if task == CAUSAL_LM and not backbone.family.causal:
        raise ConfigError(f"task causal-lm needs a decoder (LLaMA, Qwen, Mistral, GPT-2 families); '{backbone.name}' "
                          "is an encoder, which has no language-model head to continue text")


@dataclass
class PreparedRun:
    config: RunConfig
    backbone: Backbone
    dataset: TextDataset | LMDataset
    method: Method
    device: torch.device
    notes: list[str] = field(default_factory=list)

    @property
    def lr(self) -> float:
        return self.config.lr if self.config.lr is not None else self.method.default_lr

    @property
    def causal_lm(self) -> bool:
        return self.config.task == CAUSAL_LM

    @property
    def label_names(self) -> list[str]:
        """The classes a classifier predicts (a language model has none)."""
        return [] if self.causal_lm else list(self.dataset.label_names)

    def tokens(self, split: str) -> dict:
        """One split's padded tensors, cached: `labels` per example, or per token on causal-lm."""
        tokenizer, max_length = self.backbone.tokenizer, self.config.max_length
        if self.causal_lm:
            return tokenize_lm_split(tokenizer, self.dataset, split, max_length).tensors
        return tokenize_split(tokenizer, self.dataset, split, max_length)


def check_processes(config: RunConfig, device: torch.device) -> None:
    """A data-parallel run needs a batch to share and, on CUDA, one GPU per process."""
    if config.processes == 1:
        return
    if config.batch_size < config.processes:
        raise ConfigError(f"batch_size {config.batch_size} cannot be shared by {config.processes} processes: "
                          f"use a batch of at least {config.processes}")
    if device.type == "cuda" and torch.cuda.device_count() < config.processes:
        raise ConfigError(f"{config.processes} processes need {config.processes} GPUs; this machine has "
                          f"{torch.cuda.device_count()}")
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(f"data-parallel runs use cuda or cpu, not {device.type}")


def load_run_dataset(config: RunConfig) -> TextDataset | LMDataset:
    if config.task == CAUSAL_LM:
        return load_lm_dataset(
            config.dataset, format=config.lm_format,
            columns=LMColumns(text=config.text_column, prompt=config.prompt_column, response=config.response_column,
                              label=config.label_column, text_pair=config.text_pair_column or None),
            split_seed=config.split_seed, max_train_examples=config.max_train_examples,
            max_eval_examples=config.max_eval_examples,
        )
    return load_dataset(
        config.dataset,
        columns=ColumnMap(config.text_column, config.label_column, config.text_pair_column or None),
        split_seed=config.split_seed,
        max_train_examples=config.max_train_examples,
        max_eval_examples=config.max_eval_examples,
    )


def prepare_run(config: RunConfig | dict, store: RunStore | None = None, *, pending_ids: set[str] = frozenset()) -> PreparedRun:
    """Every check that can be made before training; raises a `LabError` with a clear message."""
    if isinstance(config, dict):
        config = RunConfig.from_dict(config)
    else:
        config.check()
    method = create_method(config.method, config.method_config)
    device = resolve_device(config.device)
    backbone = get_backbone(config.backbone)
    if isinstance(backbone, ConfigBackbone):
        raise ConfigError(f"backbone '{config.backbone}' is {CONFIG_ONLY_NOTE}: it has no weights here; estimate "
                          f"it with python -m app estimate --backbone {config.backbone}")
    refusal = method.backbone_refusal(backbone)
    if refusal:
        raise ConfigError(refusal)
    check_task_fits(backbone, method, config.task)
    check_length_fits(backbone, method, config.max_length)
    check_precision(method, config.backbone_precision, device)
    if config.processes > 1 and config.backbone_precision in QUANTIZED:
        raise ConfigError(f"backbone_precision {config.backbone_precision} runs in one process: data-parallel runs "
                          "take fp32 or bf16 (DDP's start-up broadcast of the weights has not been checked with "
                          "quantized layers)")
    dataset = load_run_dataset(config)
    notes = list(dataset.notes)
    if config.task == CAUSAL_LM:
        # Tokenising says how many blocks packing makes and refuses what cannot be trained on (a prompt
        # that fills max_length, chat data without a chat template) before anything is stored.
        tokens = {split: tokenize_lm_split(backbone.tokenizer, dataset, split, config.max_length)
                  for split in ("train", "validation", "test")}
        train_examples = len(tokens["train"].tensors["labels"])
        notes += [note for part in tokens.values() for note in part.notes]
    else:
        train_examples = len(dataset.train)
    if config.batch_size > train_examples:
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the training set ({train_examples} examples)"
        )
    check_processes(config, device)
    if config.decoder_pooling != "last" and config.task == CAUSAL_LM:
        raise ConfigError("decoder_pooling applies to classifiers; a causal-lm run reads every token")
    if config.decoder_pooling != "last" and not backbone.family.causal:
        raise ConfigError(f"decoder_pooling applies to decoder backbones; '{backbone.name}' is an encoder, whose "
                          "classifier pools the way it was pretrained")
    if config.patience and method.stops_early_itself:
        raise ConfigError(f"{method.title} stops early on its own (its 'patience' setting); leave the run's "
                          "patience at 0")
    if config.bf16 and device.type != "cuda":
        notes.append("bf16 autocast asked for but ignored: it runs on CUDA only")
    for field_name in method.reference_fields:
        value = getattr(method.config, field_name, None)
        if value:
            check_reference(store, value, dataset.label_names or [], field_name, pending_ids=pending_ids,
                            task=config.task)
    prepared = PreparedRun(config, backbone, dataset, method, device, notes)
    method.check_compatible(backbone, prepared.label_names)
    return prepared


def batcher_for(prepared: PreparedRun) -> Batcher:
    return Batcher.for_tokenizer(prepared.config.padding, prepared.backbone.tokenizer, prepared.device)
