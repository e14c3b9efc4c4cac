"""Exporting a stored run's trained model (the writers live beside the methods, in
`app.methods.export_writers`), and rebuilding a model exported as a state dict."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .backbones import get_backbone
from .checkpoints import load_run_model
from .errors import LabError
from .methods import create_method
from .methods.base import BuildContext
from .pooling import set_decoder_pooling


def load_exported(folder: str | Path) -> torch.nn.Module:
    """Rebuild a model exported as a state dict (the non-plain case) with this lab's code."""
    folder = Path(folder)
    info = json.loads((folder / "lab_config.json").read_text())
    method = create_method(info["method"], info["method_config"])
    ctx = BuildContext(backbone=get_backbone(info["backbone"]), label_names=info["label_names"],
                       device=torch.device("cpu"), seed=0, restoring=True,
                       decoder_pooling=info.get("decoder_pooling", "last"))
    model = method.inference_model(set_decoder_pooling(method.build(ctx), ctx.decoder_pooling))
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    return model.eval()


def export_run(store, run_id: str, out_dir: str | Path) -> dict:
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise LabError(f"'{out_dir}' exists and is not empty; choose a new folder")
    loaded = load_run_model(store, run_id, "cpu")
    result = loaded.method.export(loaded.model, out_dir, loaded.context)
    result["run_id"] = run_id
    return result
