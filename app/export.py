"""Exporting a stored run's trained model so that it loads outside the lab and predicts what the
lab predicts, and rebuilding a model exported as the lab's own state.

An export folder holds, checked on a fixed set of texts against the run's own prediction:
- at its top, a plain transformers folder when transformers' own class, loaded with no lab code,
  gives the same logits (first-token encoders, last-token decoders); otherwise the lab's state
  (`model.safetensors` + `lab_config.json`), never a plain folder that would predict differently;
- `onnx/`: the whole prediction, pooling included, as an ONNX graph run by ONNX Runtime;
- `README.md`: a model card from the run's record saying how to load each format.
The writers of the first part live beside the methods (`app.methods.export_writers`).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from .checkpoints import rebuild_exported
from .data import encode
from .errors import LabError
from .methods.base import MODEL_INPUTS
from .methods.export_writers import save_lab_state, unique_state
from .lm_export import export_language_model
from .model_card import model_card
from .onnx_export import TOLERANCE, write_onnx
from .predict import Predictor, load_predictor
from .tasks import CAUSAL_LM

# Texts every export is checked on: short and long (padding inside a batch), punctuation, and, where
# the tokenizer has one, its padding or end-of-text token inside a text, which decoder classifiers
# that find the last token by its id would mistake for padding.
PROBE_TEXTS = (
    "A warm, funny and moving film.",
    "Dull.",
    "It was fine, I suppose, though the second half dragged on for far longer than it had any need to.",
)


def probe_texts(tokenizer) -> list[str]:
    texts = list(PROBE_TEXTS)
    special = getattr(tokenizer, "pad_token", None) or getattr(tokenizer, "eos_token", None)
    if special:
        texts.append(f"Good start {special} and a weak ending.")
    return texts


def load_exported(folder: str | Path) -> torch.nn.Module:
    """Rebuild a model exported as the lab's state with this lab's code."""
    return rebuild_exported(folder)[1]


@torch.no_grad()
def plain_logits(folder: Path, texts: list[str], max_length: int) -> torch.Tensor:
    """What transformers alone computes from a plain folder: its own class and tokenizer, no lab code."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    batch = encode(tokenizer, texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}).logits.float()


def _method_note(readme: str) -> str:
    """A method's own note on its files, its title dropped, for the model card."""
    return "\n".join(line for line in readme.splitlines() if not line.startswith("# ")).strip()


# The files of a plain transformers classifier folder (the tokenizer stays in every format).
PLAIN_MODEL_FILES = ("config.json", "model.safetensors", "generation_config.json")


def _write_primary(predictor: Predictor, out_dir: Path, probe: list[str], expected: torch.Tensor, notes: list[str],
                   sections: list[str]) -> dict:
    """The method's own export into a scratch folder; a plain folder is kept only when transformers
    predicts as the lab does, else the lab's state takes its place (beside whatever else the method
    wrote, such as a peft adapter folder)."""
    loaded = predictor.loaded
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as scratch:
        staged = Path(scratch) / "model"
        written = loaded.method.export(loaded.model, staged, loaded.context)
        method_note = staged / "README.md"
        if method_note.exists():  # what the method says of its own files (a peft adapter, a side network)
            sections.append(_method_note(method_note.read_text()))
        result = {k: str(out_dir) + v[len(str(staged)):] if isinstance(v, str) and v.startswith(str(staged)) else v
                  for k, v in written.items()}  # paths the method reported, as they will lie under out_dir
        if written["format"] == "transformers":
            difference = float((plain_logits(staged, probe, predictor.max_length) - expected).abs().max())
            if difference <= TOLERANCE:
                shutil.copytree(staged, out_dir, dirs_exist_ok=True)
                return {**result, "max_difference": difference,
                        "load": f"pipeline('text-classification', model='{out_dir}')"}
            notes.append(f"No plain transformers folder: transformers' own {loaded.model.__class__.__name__} "
                         f"pools differently from this run's classifier (largest logit difference {difference:.2e} "
                         "on the check texts), so it would load without a warning and predict differently. Use "
                         "the ONNX export, or the lab's state.")
            for name in PLAIN_MODEL_FILES:
                (staged / name).unlink(missing_ok=True)
            shutil.copytree(staged, out_dir, dirs_exist_ok=True)
            save_lab_state(loaded.method, unique_state(loaded.method.inference_model(loaded.model)), out_dir,
                           loaded.context, "")
            return {**result, "format": "state_dict", "load": "app.export.load_exported(path)"}
        shutil.copytree(staged, out_dir, dirs_exist_ok=True)
        return result


def export_run(store, run_id: str, out_dir: str | Path, *, onnx: bool = True) -> dict:
    """Write a finished run's model in every format that predicts what the lab predicts."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise LabError(f"'{out_dir}' exists and is not empty; choose a new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    record = store.get_run(run_id)
    if record["config"].get("task") == CAUSAL_LM:
        result = export_language_model(store, run_id, out_dir)
        method_note = out_dir / "README.md"
        sections = [_method_note(method_note.read_text())] if method_note.exists() else []
        notes = ["No ONNX export: a language model's export is checked by generating, which the ONNX graph of a "
                 "single forward pass does not do."]
        (out_dir / "README.md").write_text(model_card(record, [result], notes, sections))
        return {**result, "run_id": run_id, "path": str(out_dir), "formats": [result], "notes": notes}
    # Every format holds fp32 weights: deployment tools load plain tensors, not a training library's
    # quantized layers. A run trained on a quantized backbone says how far that moves its answers.
    predictor = load_predictor(store, run_id, allow_pairs=True, fp32_backbone=True)
    probe = probe_texts(predictor.tokenizer)
    notes: list[str] = []
    sections: list[str] = []
    expected = predictor.logits(probe)  # the lab's own prediction, which every format is checked against
    trained_in = predictor.loaded.config.backbone_precision
    if trained_in != "fp32":
        as_trained = load_predictor(store, run_id, allow_pairs=True).logits(probe)
        notes.append(f"Trained with its frozen backbone in {trained_in}; exported with the backbone's fp32 weights and "
                     f"the trained weights as they are. On the check texts the logits differ from the {trained_in} "
                     f"model's by at most {float((as_trained - expected).abs().max()):.3g}.")
    formats = [_write_primary(predictor, out_dir, probe, expected, notes, sections)]
    if onnx:
        try:
            formats.append(write_onnx(predictor, out_dir / "onnx", probe, expected))
        except LabError as exc:
            shutil.rmtree(out_dir / "onnx", ignore_errors=True)
            notes.append(f"No ONNX export: {exc}")
    if predictor.loaded.backbone.family.causal:
        notes.append("transformers' decoder classifiers find the last token by its id: a text that ends with the "
                     "padding token itself is pooled one token earlier there than here.")
    (out_dir / "README.md").write_text(model_card(predictor.loaded.record, formats, notes, sections))
    return {**formats[0], "run_id": run_id, "path": str(out_dir), "formats": formats, "notes": notes}
