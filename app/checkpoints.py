"""Checkpoints of finished runs, and rebuilding a run's model from them.

A checkpoint holds the trained (trainable) tensors as safetensors plus the run's configuration;
frozen weights come back from the backbone (or the referenced run) when the model is rebuilt.
Nothing here unpickles: tensors are safetensors, the rest JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .backbones import Backbone, get_backbone
from .config import RunConfig
from .errors import ConfigError, LabError, RunNotFound
from .methods import create_method
from .methods.base import BuildContext, Method, Reference
from .methods.layer_surgery import GENERIC_LABEL
from .pooling import restore_pooling, set_decoder_pooling
from .precision import apply_backbone_precision
from .store import RUN_ID_PATTERN, RunStore
from .tasks import CAUSAL_LM, CLASSIFICATION

WEIGHTS_FILE = "trainable.safetensors"
RUN_FILE = "run.json"


def save_checkpoint(store: RunStore, run_id: str, method: Method, model: torch.nn.Module, config: RunConfig,
                    label_names: list[str]) -> Path:
    folder = store.run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: p.detach().to("cpu").contiguous()
        for name, p in method.trainable_parameters(model)
    }
    partial = folder / (WEIGHTS_FILE + ".partial")
    save_file(tensors, str(partial), metadata={"run_id": run_id, "method": method.name})
    partial.replace(folder / WEIGHTS_FILE)
    (folder / RUN_FILE).write_text(
        json.dumps(
            {
                "run_id": run_id,
                "config": config.as_dict(),
                "method_config": method.config.as_dict(),
                "label_names": list(label_names),
            },
            indent=2,
        )
    )
    return folder


def rebuild_exported(folder: str | Path) -> tuple[Method, torch.nn.Module, Backbone]:
    """A model exported as the lab's state, rebuilt with this lab's code: its method, the model that
    serves predictions (in eval mode, on the CPU) and its backbone."""
    folder = Path(folder)
    info = json.loads((folder / "lab_config.json").read_text())
    method = create_method(info["method"], info["method_config"])
    backbone = get_backbone(info["backbone"])
    ctx = BuildContext(backbone=backbone, label_names=info["label_names"], device=torch.device("cpu"), seed=0,
                       restoring=True, decoder_pooling=info.get("decoder_pooling", "last"),
                       task=info.get("task", CLASSIFICATION))
    model = method.inference_model(set_decoder_pooling(method.build(ctx), ctx.decoder_pooling))
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    return method, model.eval(), backbone


def refuse_language_model(record: dict, action: str) -> None:
    """`action` (exporting, compressing, explaining) reads a classifier; say so for a causal-lm run."""
    if record["config"].get("task") == CAUSAL_LM:
        raise LabError(f"run '{record['id']}' is a language model (task causal-lm): {action} covers classifiers "
                       f"only so far; its trained weights are in the run's folder, and python -m app generate "
                       f"{record['id']} --prompt TEXT writes with them")


@dataclass
class LoadedRun:
    record: dict
    method: Method
    model: torch.nn.Module
    label_names: list[str]
    config: RunConfig
    context: BuildContext  # what the model was rebuilt with

    @property
    def backbone(self) -> Backbone:
        return self.context.backbone


def load_run_model(store: RunStore, run_id: str, device: torch.device | str = "cpu", *,
                   fp32_backbone: bool = False) -> LoadedRun:
    """Rebuild a finished run's model with its trained weights, in eval mode; its frozen backbone in the
    run's precision, or in fp32 with `fp32_backbone` (for tools that need plain layers)."""
    record = store.get_run(run_id)
    if record["status"] != "finished":
        raise LabError(f"run '{run_id}' is {record['status']}, not finished: it has no trained model")
    weights = store.run_dir(run_id) / WEIGHTS_FILE
    if not weights.exists():
        raise LabError(f"run '{run_id}' has no checkpoint ({weights.name} is missing; a run imported from a bundle "
                       "made without checkpoints has its charts but not its weights)")
    config = RunConfig.from_dict(record["config"])
    label_names = record["summary"].get("dataset", {}).get("label_names")
    if not label_names:
        label_names = json.loads((store.run_dir(run_id) / RUN_FILE).read_text())["label_names"]
    method = create_method(config.method, record["summary"].get("method_config", config.method_config))
    device = torch.device(device)
    ctx = BuildContext(backbone=get_backbone(config.backbone), label_names=list(label_names), device=device,
                       seed=config.seed, restoring=True,
                       load_reference=lambda ref: load_reference(store, ref, device, config.task),
                       max_length=config.max_length, decoder_pooling=config.decoder_pooling, task=config.task)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = set_decoder_pooling(method.build(ctx), ctx.decoder_pooling)
    state = load_file(str(weights))
    missing = [n for n, _ in method.trainable_parameters(model) if n not in state]
    if missing:
        raise LabError(f"checkpoint of run '{run_id}' lacks {len(missing)} trained tensors (e.g. {missing[0]})")
    model.load_state_dict(state, strict=False)
    model.to(device)
    # Trained against a quantized backbone, the run answers with that backbone.
    apply_backbone_precision(model, "fp32" if fp32_backbone else config.backbone_precision,
                             method.trainable_parameters(model),
                             forward_only=method.trains_side_network, device=device)
    model.eval()
    return LoadedRun(record, method, model, list(label_names), config, ctx)


def _task_noun(task: str) -> str:
    return "language model" if task == CAUSAL_LM else "classifier"


def _is_folder_reference(value: str) -> bool:
    path = Path(value).expanduser()
    return path.is_dir()


def _folder_task(config: dict) -> str | None:
    """What a model folder's saved architecture was trained for, when its name says."""
    architectures = config.get("architectures") or []
    if any(name.endswith("ForCausalLM") or name.endswith("LMHeadModel") for name in architectures):
        return CAUSAL_LM
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return CLASSIFICATION
    return None


def check_reference(store: RunStore | None, value: str, label_names: list[str], field_name: str,
                    *, pending_ids: set[str] = frozenset(), task: str = CLASSIFICATION) -> None:
    """A predecessor/teacher must be a finished run (or one queued before it in a chain) or a
    model folder trained for the same task: a language model for a causal-lm run, else a classifier
    with the same classes as the dataset being trained."""
    if _is_folder_reference(value):
        config_file = Path(value).expanduser() / "config.json"
        if not config_file.exists():
            raise ConfigError(f"{field_name} '{value}' is a folder without config.json")
        config = json.loads(config_file.read_text())
        saved_for = _folder_task(config)
        if saved_for is not None and saved_for != task:
            raise ConfigError(f"{field_name} '{value}' holds a {_task_noun(saved_for)} "
                              f"({', '.join(config['architectures'])}); this run trains a {_task_noun(task)}")
        if task == CAUSAL_LM:
            return
        id2label = config.get("id2label") or {}
        names = [id2label[k] for k in sorted(id2label, key=int)] if id2label else []
        if names and len(names) != len(label_names):
            raise ConfigError(
                f"{field_name} '{value}' predicts {len(names)} classes; this dataset has {len(label_names)}"
            )
        # Folders saved without class names carry placeholders (LABEL_0, ...): only the count compares.
        if names and not all(GENERIC_LABEL.match(str(n)) for n in names) and names != list(label_names):
            raise ConfigError(
                f"{field_name} '{value}' was trained on classes {names}; this dataset has {list(label_names)}"
            )
        return
    if not RUN_ID_PATTERN.match(value or ""):
        raise ConfigError(f"{field_name} '{value}' is neither a run id nor an existing model folder")
    if value in pending_ids:
        return
    if store is None or not store.has_run(value):
        raise ConfigError(f"{field_name} '{value}' is neither a run of this store nor an existing model folder")
    record = store.get_run(value)
    if record["status"] != "finished":
        raise ConfigError(f"{field_name} run '{value}' is {record['status']}; it must be finished")
    trained_for = record["config"].get("task", CLASSIFICATION)
    if trained_for != task:
        raise ConfigError(f"{field_name} run '{value}' trained a {_task_noun(trained_for)} (task {trained_for}); "
                          f"this run trains a {_task_noun(task)} (task {task}): use a {task} run")
    if task == CAUSAL_LM:
        return
    names = record["summary"].get("dataset", {}).get("label_names") or []
    if names != list(label_names):
        raise ConfigError(
            f"{field_name} run '{value}' was trained on classes {names}; this dataset has {list(label_names)}"
        )


def load_reference(store: RunStore | None, value: str, device: torch.device,
                   task: str = CLASSIFICATION) -> Reference:
    """The model of a finished run, or of a model folder, ready to predict (or to write, on causal-lm)."""
    if _is_folder_reference(value):
        # Not at module level: importing transformers from two threads at once (the app's warm-up)
        # can fail; see app.backbones.TRANSFORMERS_IMPORTS.
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        auto = AutoModelForCausalLM if task == CAUSAL_LM else AutoModelForSequenceClassification
        try:
            model = auto.from_pretrained(str(Path(value).expanduser()), trust_remote_code=False)
        except Exception as exc:
            raise LabError(f"cannot load model folder '{value}': {exc}") from exc
        if task == CAUSAL_LM:
            return Reference(model=model.to(device).eval(), label_names=[], source=str(value), plain_model=model)
        restore_pooling(model).to(device).eval()
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        return Reference(model=model, label_names=names, source=str(value), plain_model=model)
    if store is None:
        raise RunNotFound(f"no run store to find run '{value}' in")
    loaded = load_run_model(store, value, device)
    inference = loaded.method.inference_model(loaded.model)
    plain = inference if hasattr(inference, "save_pretrained") and hasattr(inference, "config") else None
    return Reference(model=inference, label_names=loaded.label_names, source=value, plain_model=plain,
                     record=loaded.record)
