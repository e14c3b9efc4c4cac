"""A run's classifier as ONNX, pooling and all, checked in ONNX Runtime against the lab.

The graph is traced from the method's own prediction (`Method.predict`), so whatever the lab adds
to a transformers model (mean pooling, last-token pooling, LST's side network, virtual tokens) is
in it; batch and sequence length stay dynamic. The folder holds `model.onnx`, the tokenizer and
`labels.json`, and loads with `onnxruntime` and `transformers.AutoTokenizer` alone.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch

from .errors import LabError
from .predict import Predictor

OPSET = 17
TOLERANCE = 1e-4  # the largest logit difference an export may have from the lab's own prediction


class _LogitsOf(torch.nn.Module):
    """The method's prediction as a module of positional tensors (what the exporter traces)."""

    def __init__(self, predictor: Predictor, names: list[str]):
        super().__init__()
        self.model = predictor.loaded.model
        self._method = predictor.loaded.method
        self._names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self._method.predict(self.model, dict(zip(self._names, tensors))).float()


@contextlib.contextmanager
def _single_sequence_rows():
    """transformers looks for several sequences packed in one row when a mask is built from position
    ids alone (LST's side network on a decoder); it uses `torch.diff`, which ONNX opset 17 lacks. A
    classifier's batch never packs sequences, so the export answers that question itself: none."""
    from transformers import masking_utils

    found = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = found


@contextlib.contextmanager
def _eager_attention(model: torch.nn.Module):
    """PyTorch's fused attention with grouped key/value heads (LLaMA-style decoders) has no ONNX
    conversion; transformers' eager attention computes the same with plain matrix products."""
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None
               and hasattr(c, "_attn_implementation")}
    before = {key: config._attn_implementation for key, config in configs.items()}
    try:
        for config in configs.values():
            config._attn_implementation = "eager"
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = before[key]


def _session(folder: Path):
    import onnxruntime  # imported on first use: only exports need it

    return onnxruntime.InferenceSession(str(Path(folder) / "model.onnx"), providers=["CPUExecutionProvider"])


def _run_graph(session, predictor: Predictor, texts: list[str]) -> torch.Tensor:
    wanted = {i.name for i in session.get_inputs()}
    batch = predictor.encode(texts, return_tensors="np")
    return torch.from_numpy(session.run(["logits"], {k: v for k, v in batch.items() if k in wanted})[0])


def onnx_logits(folder: Path, predictor: Predictor, texts: list[str]) -> torch.Tensor:
    """What ONNX Runtime computes for these texts from the exported folder's graph."""
    return _run_graph(_session(folder), predictor, texts)


def write_onnx(predictor: Predictor, out_dir: Path, probe: list[str], expected: torch.Tensor | None = None) -> dict:
    """Export, then check on `probe` as one padded batch (against `expected`, the lab's logits
    there, computed when not given) and on its first text alone (another batch size and length);
    raises `LabError` when ONNX Runtime disagrees with the lab."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    example = predictor.encode(probe)
    names = list(example)
    module = _LogitsOf(predictor, names).eval()
    config = getattr(predictor.loaded.model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    if use_cache:
        config.use_cache = False  # no key/value cache in a classifier's graph
    try:
        with warnings.catch_warnings(), torch.no_grad(), _single_sequence_rows(), _eager_attention(module):
            warnings.simplefilter("ignore")  # the tracer's notes on Python branches it fixed
            torch.onnx.export(
                module, tuple(example[n] for n in names), str(out_dir / "model.onnx"), input_names=names,
                output_names=["logits"], opset_version=OPSET, dynamo=False,
                dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}},
            )
    except Exception as exc:  # the exporter's failures name the operator it could not write
        raise LabError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    finally:
        if use_cache:
            config.use_cache = use_cache
    predictor.tokenizer.save_pretrained(out_dir)
    labels = list(predictor.loaded.label_names)
    (out_dir / "labels.json").write_text(json.dumps({"labels": labels, "inputs": names,
                                                     "max_length": predictor.max_length}, indent=2))
    session = _session(out_dir)  # loaded once: a 135M-parameter graph is half a gigabyte
    checks = ((probe, predictor.logits(probe) if expected is None else expected), (probe[:1], predictor.logits(probe[:1])))
    difference = max(float((_run_graph(session, predictor, texts) - lab).abs().max()) for texts, lab in checks)
    if difference > TOLERANCE:
        raise LabError(f"the ONNX graph predicts differently from the lab (largest logit difference {difference:.2e})")
    return {"format": "onnx", "path": str(out_dir), "max_difference": difference, "inputs": names,
            "load": "onnxruntime.InferenceSession('onnx/model.onnx') with AutoTokenizer.from_pretrained('onnx')"}
