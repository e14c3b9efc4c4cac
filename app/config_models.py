"""Models known by their published `config.json` alone: no weights, so they can be estimated (the
memory a run would need, on fake tensors) but not trained. Named `config:NAME` wherever a backbone
is named; `config:` may also be followed by a path to any `config.json` or a hub id (where the
network allows).

Each shipped file holds the values of the model's published `config.json`; `published_params` is the
size the model's card states (weights of the released checkpoint, task head included), which the
tests check the configs against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import BackboneError
from .locations import hub_reachable

PREFIX = "config:"
FOLDER = Path(__file__).resolve().parent / "model_configs"
CONFIG_ONLY_NOTE = "config only: estimate, no training"


@dataclass(frozen=True)
class ConfigModel:
    name: str
    title: str
    source: str  # where the published config comes from (its hub id)
    published_params: str  # as the model card states it, e.g. "8.03B"
    # The class of the released checkpoint, when its weights hold more than `architectures` names
    # (BERT's checkpoints keep both pre-training heads).
    checkpoint_class: str | None = None

    @property
    def path(self) -> Path:
        return FOLDER / f"{self.name}.json"


CONFIG_MODELS: dict[str, ConfigModel] = {m.name: m for m in (
    ConfigModel("bert-base", "BERT-base (uncased), 12-layer encoder", "google-bert/bert-base-uncased", "110M",
                "BertForPreTraining"),
    ConfigModel("bert-large", "BERT-large (uncased), 24-layer encoder", "google-bert/bert-large-uncased", "336M",
                "BertForPreTraining"),
    ConfigModel("qwen2.5-0.5b", "Qwen2.5-0.5B, 24-layer decoder", "Qwen/Qwen2.5-0.5B", "494M"),
    ConfigModel("llama-3.2-1b", "Llama-3.2-1B, 16-layer decoder", "meta-llama/Llama-3.2-1B", "1.24B"),
    ConfigModel("qwen2.5-7b", "Qwen2.5-7B, 28-layer decoder", "Qwen/Qwen2.5-7B", "7.62B"),
    ConfigModel("mistral-7b", "Mistral-7B-v0.1, 32-layer decoder", "mistralai/Mistral-7B-v0.1", "7.24B"),
    ConfigModel("llama-3.1-8b", "Llama-3.1-8B, 32-layer decoder", "meta-llama/Llama-3.1-8B", "8.03B"),
    ConfigModel("llama-3.1-70b", "Llama-3.1-70B, 80-layer decoder", "meta-llama/Llama-3.1-70B", "70.6B"),
)}


def is_config_name(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def load_config(name: str):
    """The transformers config that `config:NAME` names: a shipped model, a config.json file, or a hub id."""
    from transformers import AutoConfig

    target = name[len(PREFIX):].strip()
    if target in CONFIG_MODELS:
        return _from_values(json.loads(CONFIG_MODELS[target].path.read_text()), name)
    path = Path(target).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            values = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BackboneError(f"'{name}': {path} is not a readable JSON config ({exc})") from None
        return _from_values(values, name)
    if not target or path.suffix == ".json" or target.count("/") != 1:
        raise BackboneError(f"'{name}' is not a shipped config ({', '.join(CONFIG_MODELS)}), an existing "
                            "config.json file, nor a hub id")
    if not hub_reachable():
        raise BackboneError(f"'{name}' is not a shipped config ({', '.join(CONFIG_MODELS)}) nor a local file, and "
                            "the Hugging Face hub cannot be reached (offline?)")
    try:
        return AutoConfig.from_pretrained(target, trust_remote_code=False)
    except Exception as exc:
        raise BackboneError(f"cannot read the config of '{target}' from the hub: {exc}") from None


def _from_values(values, name: str):
    from transformers import AutoConfig

    if not isinstance(values, dict) or not isinstance(values.get("model_type"), str):
        raise BackboneError(f"'{name}': a config.json needs a \"model_type\" (e.g. \"llama\" or \"bert\")")
    values = dict(values)
    model_type = values.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **values)
    except Exception as exc:
        raise BackboneError(f"'{name}': not a config transformers can read ({type(exc).__name__}: {exc})") from None


def describe_config_models() -> list[dict]:
    return [{"name": PREFIX + m.name, "title": m.title, "source": m.source, "published_params": m.published_params,
             "note": CONFIG_ONLY_NOTE} for m in CONFIG_MODELS.values()]
