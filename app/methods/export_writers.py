"""Writing a trained model out of the lab: a plain transformers folder where the method's result is
one, else the trained state as safetensors with the method's settings and a note on how to load it.
The methods' `export` hooks call these; `app.export` drives them for a stored run."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file



def _is_plain_transformer(model) -> bool:
    # Not at module level: importing transformers from two threads at once (the app's warm-up)
    # can fail; see app.backbones.TRANSFORMERS_IMPORTS.
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel) and type(model).__name__.endswith(("ForSequenceClassification",
                                                                                   "ForCausalLM", "LMHeadModel"))


def unique_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each storage once (safetensors refuses tied weights twice)."""
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen and tensor.numel() > 0:
            continue
        seen.add(tensor.data_ptr())
        state[name] = tensor
    return state


def export_plain_or_state(method, model: torch.nn.Module, out_dir: Path, ctx) -> dict:
    """A plain transformers folder when the model is one (`app.export` keeps it only where
    transformers' own class predicts the same), else the full state for this lab to rebuild."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if _is_plain_transformer(model):
        model.save_pretrained(out_dir, safe_serialization=True)
        ctx.backbone.tokenizer.save_pretrained(out_dir)
        auto_class = ("AutoModelForSequenceClassification" if type(model).__name__.endswith("ForSequenceClassification")
                      else "AutoModelForCausalLM")
        return {"format": "transformers", "path": str(out_dir), "load": f"{auto_class}.from_pretrained('{out_dir}')"}
    return save_lab_state(
        method, unique_state(model), out_dir, ctx,
        f"# Exported {method.name} model\n\n"
        f"This method's result is not a plain transformers model. `model.safetensors` holds its full state dict;\n"
        f"`lab_config.json` its method, settings, backbone and class names. Load it with this lab:\n\n"
        "    from app.export import load_exported\n    model = load_exported('PATH')\n\n"
        f"or rebuild the module yourself and call `load_state_dict(safetensors.torch.load_file(...))`.\n",
    )


def save_lab_state(method, state: dict[str, torch.Tensor], out_dir: Path, ctx, readme: str) -> dict:
    """A state dict that only this lab's code rebuilds: safetensors, the tokenizer, the method's
    settings with backbone and class names (what `load_exported` reads), and a loading note."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state.items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"method": method.name})
    ctx.backbone.tokenizer.save_pretrained(out_dir)
    (out_dir / "lab_config.json").write_text(json.dumps(
        {"method": method.name, "method_config": method.config.as_dict(), "backbone": ctx.backbone.name,
         "label_names": ctx.label_names, "decoder_pooling": ctx.decoder_pooling, "task": ctx.task}, indent=2))
    (out_dir / "README.md").write_text(readme)
    return {"format": "state_dict", "path": str(out_dir), "load": "app.export.load_exported(path)"}
