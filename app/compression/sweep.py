"""A compression sweep over a finished run: every point is one compressed copy of the run's
inference model, measured on the run's own test split and stored with the run. A language model
(task causal-lm) is scored on its test split's labelled tokens instead of its examples' classes.

Each point is stored as `store.put_record(run_id, "compress", key, point)` as soon as it is
measured, so a page can draw the sweep while it runs. Point fields:

    kind            baseline | unstructured | heads | ffn | fp16 | bf16 | int8 | int8_per_token | kbit
    setting         short label of the setting ("0.3", "2 per layer", "4bit", ...)
    key             the record key (unique per setting; "/weight" on heads and FFN points ranked by weights,
                    "+recovery=N" when a recovery ran)
    importance      heads and FFN points: activation (calibration_tokens: tokens measured) or weight L1 norm
    test_accuracy   accuracy on the run's test split (None when the point could not run); classifiers
    test_perplexity, test_token_accuracy, test_tokens
                    causal-lm: perplexity and next-token accuracy over the test split's labelled tokens
    agreement       fraction of test predictions (next tokens on causal-lm) equal to the uncompressed model's
    logit_drift     mean relative L2 change of the test logits against the uncompressed model's
    params          parameters stored; nonzero_params: of them, the nonzero ones
    bytes           size of the compressed state (bytes_kind says whether written or computed)
    latency_ms      median CPU time of one forward pass over one batch of test examples, padded as the run pads
                    (causal-lm: every position's state, the next token's scores at the last, as generation reads a prompt)
    speedup         fp32 latency / this point's, both timed in the same alternating rounds
    note            what the figures do and do not mean for this kind
"""

from __future__ import annotations

import copy
import gc
import itertools
import threading
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..batching import Batcher
from ..checkpoints import load_run_model
from ..errors import ConfigError, LabError, RunCancelled
from ..lm_loss import causal_lm_loss
from ..methods.base import MethodConfig, language_model_outputs, logits_of, model_inputs
from ..options import option, parse_config
from ..preparation import prepare_run
from ..training import adamw
from . import measure
from .calibration import InputNorms, measure_input_norms
from .pruning import (
    check_heads_request,
    check_ffn_prunable,
    heads_per_layer,
    magnitude_prune,
    linear_targets,
    make_pruning_permanent,
    output_projections,
    plain_linears,
    prune_ffn,
    prune_heads,
    target_sparsity,
    wanda_prune,
)
from .quantization import (
    HALF_KINDS,
    KBIT_KINDS,
    PER_TOKEN_INT8,
    QUANTIZE_KINDS,
    cast_half,
    dynamic_int8,
    fake_quantize,
    per_token_int8,
)


RECORD_KIND = "compress"
ProgressCallback = Callable[[int, int, str], None]


@dataclass
class CompressionPlan(MethodConfig):
    sparsities: list[float] = option(
        [], "Unstructured magnitude-pruning sparsities to try, each in [0, 1) (fraction of target weights zeroed)."
    )
    scope: str = option(
        "global", "Rank weights for unstructured pruning over all target matrices together, or within each.",
        choices=["global", "per_layer"],
    )
    unstructured_score: str = option(
        "magnitude", "How unstructured pruning ranks weights. magnitude: |w|, over the scope. wanda: |w| times the "
        "norm of its input measured on a few training batches, within each output row (Wanda, Sun et al. 2024; "
        "scope does not apply). Decoders need wanda: their few huge activations go through small weights.",
        choices=["magnitude", "wanda"],
    )
    quantize: list[str] = option(
        [], "Quantizations to try: fp16, bf16, int8 (dynamic, one activation scale per batch), int8_per_token "
            "(torchao's dynamic int8, one activation scale per token: what language models need), "
            "8bit/4bit/2bit/1bit (weight fake-quant).",
        choices=list(QUANTIZE_KINDS),
    )
    structured_heads: int | None = option(
        None, "Attention heads to remove from every layer, least important first (structured_importance). On a "
              "decoder with "
              "grouped-query attention, a multiple of its key/value heads (heads go equally from every group).", min=0
    )
    structured_heads_total: int | None = option(
        None, "Attention heads to remove across the whole model, ranked by importance normalised per layer. On a "
              "decoder with grouped-query attention, a multiple of its key/value heads: a layer gives up one head "
              "per group at a time.",
        min=0, advanced=True,
    )
    structured_ffn: float | None = option(
        None, "Fraction of every layer's FFN neurons to remove, least important first (structured_importance).",
        min=0.0, max=0.99
    )
    structured_importance: str = option(
        "activation", "How heads and FFN neurons are ranked for removal. activation: by what each writes into "
        "the residual stream on a few training batches (its inputs' norm times its output weights' norm, as "
        "Wanda scores weights); weight: by the L1 norm of its weights alone, without data. Decoders have a few "
        "neurons with huge activations and small weights, which weight ranking removes first.",
        choices=["activation", "weight"], advanced=True,
    )
    calibration_batches: int = option(
        4, "Training batches run to measure activations (structured_importance = activation, unstructured_score "
        "= wanda).", min=1, max=1000,
        advanced=True,
    )
    recovery_steps: int = option(
        0, "Fine-tune each pruned model for this many steps on the run's training data (0: none).",
        min=0, max=100_000,
    )
    recovery_lr: float | None = option(
        None, "Learning rate of the recovery fine-tune; empty takes the run's.", min=1e-8, max=1.0, advanced=True
    )
    latency_batch_size: int = option(32, "Examples per batch when timing CPU latency.", min=1, max=1024,
                                     advanced=True)
    latency_repeats: int = option(5, "Timed forward passes per point (the median is reported).", min=1, max=100,
                                  advanced=True)
    latency_warmup: int = option(2, "Untimed forward passes before timing.", min=0, max=100, advanced=True)

    def validate(self) -> None:
        for value in self.sparsities:
            if not 0.0 <= float(value) < 1.0:
                raise ConfigError(f"sparsity {value} is outside [0, 1): give the fraction of weights to zero, e.g. 0.3")
        unknown = [q for q in self.quantize if q not in QUANTIZE_KINDS]
        if unknown:
            raise ConfigError(f"unknown quantization '{unknown[0]}': use {', '.join(QUANTIZE_KINDS)}")
        if self.structured_importance not in ("activation", "weight"):
            raise ConfigError(f"unknown structured_importance '{self.structured_importance}': use activation or weight")
        if self.unstructured_score not in ("magnitude", "wanda"):
            raise ConfigError(f"unknown unstructured_score '{self.unstructured_score}': use magnitude or wanda")
        if self.scope not in ("global", "per_layer"):
            raise ConfigError(f"unknown pruning scope '{self.scope}': use global or per_layer")
        if self.structured_ffn is not None and not 0.0 <= self.structured_ffn < 1.0:
            raise ConfigError(f"FFN pruning fraction {self.structured_ffn} is outside [0, 1)")
        for name in ("structured_heads", "structured_heads_total", "recovery_steps"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"'{name}' must be at least 0, got {value}")

    def point_count(self) -> int:
        return (1 + len(_unique(self.sparsities)) + len(_unique(self.quantize))
                + (self.structured_heads is not None) + (self.structured_heads_total is not None)
                + (self.structured_ffn is not None))


def as_plan(plan: CompressionPlan | dict | None) -> CompressionPlan:
    if plan is None:
        plan = CompressionPlan()
    elif isinstance(plan, dict):
        plan = parse_config(CompressionPlan, plan)
    plan.validate()
    return plan


def _unique(values: list) -> list:
    return list(dict.fromkeys(values))


@dataclass
class _Session:
    """What every point of one sweep shares."""

    store: object
    run_id: str
    plan: CompressionPlan
    base: nn.Module
    test: dict
    train_batches: Callable[[], object]
    lr: float
    grad_clip: float
    weight_decay: float
    latency_input: dict
    check_cancel: Callable[[], None]
    report: Callable[[str], None]
    batcher: Batcher = Batcher()
    norms: InputNorms | None = None  # measured once, before the first structured point
    # causal-lm: how the method reads its language model; None on a classifier
    outputs_of: measure.LanguageModelOutputs | None = None
    forward: Callable[[nn.Module, dict], object] = measure.forward_pass  # what latency times
    baseline_logits: torch.Tensor | None = None
    baseline_bytes: int | None = None

    @property
    def score(self) -> str:
        """The point field the run's task is judged by."""
        return "test_perplexity" if self.outputs_of is not None else "test_accuracy"


def compress_run(store, run_id: str, plan: CompressionPlan | dict | None = None, *,
                 progress: ProgressCallback | None = None,
                 cancel: threading.Event | None = None) -> list[dict]:
    """Run a compression sweep on a finished run; returns the points (also stored with the run).

    `progress(done, total, message)` is called as points finish; setting `cancel` stops the
    sweep with `RunCancelled` (points measured so far stay stored). Raises `LabError` for bad
    input before any point is measured.
    """
    plan = as_plan(plan)
    record = store.get_run(run_id)
    if record["status"] != "finished":
        raise LabError(f"run '{run_id}' is {record['status']}, not finished: only a finished run can be compressed")
    cancel = cancel or threading.Event()
    total = plan.point_count()
    done = 0

    def check_cancel() -> None:
        if cancel.is_set():
            raise RunCancelled()

    def report(message: str) -> None:
        check_cancel()
        if progress:
            progress(done, total, message)

    check_cancel()
    # Compression starts from plain fp32 layers (pruning and its own quantization rewrite them); a run
    # trained on a quantized backbone is compressed from its fp32 form.
    loaded = load_run_model(store, run_id, "cpu", fp32_backbone=True)
    trained = {id(p) for _, p in loaded.method.trainable_parameters(loaded.model)}
    for parameter in loaded.model.parameters():
        parameter.requires_grad_(id(parameter) in trained)  # recovery trains what the method trained
    base = loaded.method.inference_model(loaded.model).eval()
    plain_linears(base)  # GPT-2's Conv1D layers are pruned and quantized like any Linear
    prepared = prepare_run(dict(record["config"], device="cpu"), store)
    config = prepared.config
    tokenizer = prepared.backbone.tokenizer

    if plan.structured_heads is not None or plan.structured_heads_total is not None:
        check_heads_request(base, per_layer=plan.structured_heads, total=plan.structured_heads_total)
    if plan.structured_ffn is not None:
        check_ffn_prunable(base)
    if plan.recovery_steps and not any(p.requires_grad for p in base.parameters()):
        raise LabError(f"recovery cannot run: method '{loaded.method.name}' trained no parameter of its inference model")

    batcher = Batcher.for_tokenizer(config.padding, tokenizer)
    outputs_of = None
    if prepared.causal_lm:
        # Where the inference model is the trained model itself (LST's side stream, prompt tuning's
        # virtual tokens), the method reads it; otherwise it is a plain transformers language model
        # (LoRA merged, Theseus's successor, the distilled student).
        outputs_of = loaded.method.lm_outputs if base is loaded.model else language_model_outputs

    def train_batches():
        tensors = prepared.tokens("train")
        generator = torch.Generator().manual_seed(config.seed)
        while True:
            yield from (batcher.batch(tensors, chosen) for chosen in batcher.epoch(tensors, config.batch_size, generator))

    test = prepared.tokens("test")
    session = _Session(
        store=store, run_id=run_id, plan=plan, base=base, test=test, train_batches=train_batches,
        lr=plan.recovery_lr or record["summary"].get("lr") or prepared.lr,
        grad_clip=config.grad_clip, weight_decay=config.weight_decay,
        latency_input=measure.latency_batch(test, plan.latency_batch_size, batcher), batcher=batcher,
        check_cancel=check_cancel, report=report, outputs_of=outputs_of,
        forward=measure.language_model_pass(outputs_of) if outputs_of else measure.forward_pass,
    )
    points: list[dict] = []

    def finish(point: dict) -> None:
        nonlocal done
        store.put_record(run_id, RECORD_KIND, point["key"], point)
        points.append(point)
        done += 1
        value, digits = point.get(session.score), 2 if outputs_of is not None else 4
        report(f"{point['key']}: {session.score.removeprefix('test_')} "
               f"{'n/a' if value is None else f'{value:.{digits}f}'}")

    # Every check above runs before the first report, so bad input fails before any progress shows.
    report("measuring the uncompressed model")
    finish(_baseline_point(session, record))
    for sparsity in _unique([float(s) for s in plan.sparsities]):
        report(f"unstructured pruning to sparsity {sparsity:g} ({plan.scope})")
        finish(_unstructured_point(session, sparsity))
    if plan.structured_heads is not None:
        report(f"removing {plan.structured_heads} attention heads per layer")
        finish(_heads_point(session, per_layer=plan.structured_heads))
    if plan.structured_heads_total is not None:
        report(f"removing {plan.structured_heads_total} attention heads in all")
        finish(_heads_point(session, total=plan.structured_heads_total))
    if plan.structured_ffn is not None:
        report(f"removing {plan.structured_ffn:g} of every layer's FFN neurons")
        finish(_ffn_point(session, plan.structured_ffn))
    for kind in _unique(plan.quantize):
        report(f"quantizing: {kind}")
        finish(_quantized_point(session, kind))
    return points


# --- points ------------------------------------------------------------------------------------


def _measure(session: _Session, model: nn.Module, *, kind: str, setting: str, key: str, note: str,
             bytes_value: int | None = None, bytes_kind: str = "safetensors file", **extra) -> dict:
    session.check_cancel()
    quality = _quality(session, model)
    params, nonzero = measure.parameter_counts(model)
    size = bytes_value if bytes_value is not None else measure.saved_bytes(model)
    if model is session.base:
        latency, runs = measure.latency_ms(model, session.latency_input, repeats=session.plan.latency_repeats,
                                           warmup=session.plan.latency_warmup, check_cancel=session.check_cancel,
                                           run=session.forward)
        reference_latency = latency
    else:
        latency, reference_latency, runs = measure.paired_latency_ms(
            model, session.base, session.latency_input, repeats=session.plan.latency_repeats,
            warmup=session.plan.latency_warmup, check_cancel=session.check_cancel, run=session.forward)
    point = {
        "kind": kind,
        "setting": setting,
        "key": key,
        **quality,
        "params": int(params),
        "nonzero_params": int(nonzero),
        "bytes": int(size),
        "bytes_kind": bytes_kind,
        "latency_ms": float(latency),
        "latency_runs_ms": [round(t, 3) for t in runs],
        # fp32 timed in the same alternating rounds: the speed-up holds even on a busy machine
        "baseline_latency_ms": float(reference_latency),
        "speedup": float(reference_latency / latency) if latency > 0 else None,
        "latency_batch": [int(session.latency_input["input_ids"].shape[0]),
                          int(session.latency_input["input_ids"].shape[1])],
        "threads": torch.get_num_threads(),
        "test_examples": int(len(session.test["labels"])),
        "note": note,
    }
    if session.baseline_bytes:
        point["size_ratio"] = point["bytes"] / session.baseline_bytes
    point.update(extra)
    return point


def _quality(session: _Session, model: nn.Module) -> dict:
    """How well the model predicts its test split, next to the uncompressed model; `error` when some
    outputs are not finite numbers."""
    if session.outputs_of is not None:
        scores = measure.language_model_scores(model, session.base, session.test, session.outputs_of,
                                               check_cancel=session.check_cancel, batcher=session.batcher)
        nonfinite = scores.pop("nonfinite_tokens")
        if nonfinite:
            scores["error"] = f"non-finite logits on {nonfinite} of {scores['test_tokens']} labelled test tokens"
        return scores
    logits = measure.test_logits(model, session.test, check_cancel=session.check_cancel, batcher=session.batcher)
    finite = torch.isfinite(logits).all(dim=-1)
    predicted = logits.argmax(-1)
    if session.baseline_logits is None:
        session.baseline_logits = logits
    scores = {
        "test_accuracy": float((predicted == session.test["labels"]).float().mean()),
        "agreement": float((predicted == session.baseline_logits.argmax(-1)).float().mean()),
        "logit_drift": measure.logit_drift(logits, session.baseline_logits) if bool(finite.all()) else None,
    }
    if not bool(finite.all()):
        scores["error"] = f"non-finite logits on {int((~finite).sum())} of {len(logits)} test examples"
    return scores


def _baseline_point(session: _Session, record: dict) -> dict:
    point = _measure(session, session.base, kind="baseline", setting="fp32", key="baseline",
                     note="the run's inference model as trained, fp32, nothing removed",
                     **{f"run_{session.score}": record.get("metrics", {}).get(session.score)})
    session.baseline_bytes = point["bytes"]
    point["size_ratio"] = 1.0
    return point


def _recovery_suffix(session: _Session) -> str:
    return f"+recovery={session.plan.recovery_steps}" if session.plan.recovery_steps else ""


def _recover(session: _Session, model: nn.Module) -> dict:
    """A short fine-tune of a pruned model on the run's training data (constant lr, AdamW, the
    run's grad clip and weight decay) on the parameters the method trained. Masks of unstructured
    pruning stay attached, so pruned weights stay zero."""
    before = _quality(session, model)

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(parameters, lr=session.lr, weight_decay=session.weight_decay)
    batches = session.train_batches()
    model.train()
    losses = []
    steps = session.plan.recovery_steps
    for step in range(1, steps + 1):
        session.check_cancel()
        batch = next(batches)
        loss = _training_loss(session, model, batch)
        loss.backward()
        if session.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(parameters, session.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == steps:
            session.report(f"recovery step {step}/{steps}, loss {losses[-1]:.4f}")
    model.eval()
    return {"recovery_steps": steps, "recovery_lr": session.lr,
            f"{session.score.removeprefix('test_')}_before_recovery": before[session.score],
            "recovery_loss_first": losses[0], "recovery_loss_last": losses[-1]}


def _training_loss(session: _Session, model: nn.Module, batch: dict) -> torch.Tensor:
    """The run's own loss: the next-token loss on labelled tokens, or the classes' cross-entropy."""
    if session.outputs_of is not None:
        return causal_lm_loss(*session.outputs_of(model, batch), batch["labels"])
    return F.cross_entropy(logits_of(model(**model_inputs(batch))).float(), batch["labels"])


def _sparse_bytes(model: nn.Module, targets) -> int:
    """Bytes with each target matrix stored as CSR (value + int32 column index per nonzero, int32
    row pointers) and everything else dense."""
    target_names = {f"{name}.weight" for name, _ in targets.modules}
    total = 0
    for name, tensor in measure.state_tensors(model).items():
        if name in target_names:
            nonzero = int(torch.count_nonzero(tensor))
            total += nonzero * (tensor.element_size() + 4) + (tensor.shape[0] + 1) * 4
        else:
            total += tensor.numel() * tensor.element_size()
    return total


def _unstructured_point(session: _Session, sparsity: float) -> dict:
    wanda = session.plan.unstructured_score == "wanda"
    scope = "per_row" if wanda else session.plan.scope  # Wanda compares the weights of one output row
    model = copy.deepcopy(session.base)
    if wanda:
        norms = _input_norms(session)
        targets = wanda_prune(model, sparsity, norms.groups["targets"])
        ranked = f"|w| times its input's norm on {norms.tokens} training tokens (Wanda)"
    else:
        targets, ranked = magnitude_prune(model, sparsity, scope), "|w|"
    recovery = _recover(session, model) if session.plan.recovery_steps else {}
    make_pruning_permanent(model)
    achieved = target_sparsity(targets)
    point = _measure(
        session, model, kind="unstructured", setting=f"{sparsity:g}",
        key=f"sparsity={sparsity:g}/{'wanda' if wanda else scope}" + _recovery_suffix(session),
        note=f"pruning masks the weights with the lowest {ranked} to zero: bytes is the dense safetensors file "
             "(zeros take as much room as any weight) and latency uses the same dense kernels; sparse_bytes "
             "estimates CSR storage of the pruned matrices, smaller only at high sparsity",
        score=session.plan.unstructured_score,
        sparsity=sparsity, scope=scope, achieved_sparsity=achieved, targets=targets.description,
        target_weights=targets.weight_count, sparse_bytes=_sparse_bytes(model, targets), **recovery,
    )
    _release(model)
    return point


def _input_norms(session: _Session) -> InputNorms:
    """What enters every Linear the plan's activation-ranked points read, measured once per sweep on
    the first training batches of the run's own order."""
    if session.norms is None:
        plan = session.plan
        session.report(f"measuring activations on {plan.calibration_batches} training batches")
        groups = {}
        heads = plan.structured_heads is not None or plan.structured_heads_total is not None
        if plan.structured_importance == "activation" and (heads or plan.structured_ffn is not None):
            groups["attention"], groups["ffn"] = output_projections(session.base, heads=heads,
                                                                    ffn=plan.structured_ffn is not None)
        if plan.unstructured_score == "wanda" and plan.sparsities:
            groups["targets"] = [module for _, module in linear_targets(session.base).modules]
        batches = (model_inputs(batch) for batch in itertools.islice(session.train_batches(), plan.calibration_batches))
        session.norms = measure_input_norms(session.base, groups, batches, session.forward)
    return session.norms


@dataclass
class _Ranking:
    """How a structured point ranks heads or neurons, and how the point says so."""

    norms: InputNorms | None  # None: by weights alone
    fields: dict  # stored with the point
    key_suffix: str
    phrase: str  # for the point's note


def _structured_ranking(session: _Session) -> _Ranking:
    if session.plan.structured_importance == "weight":
        return _Ranking(None, {"importance": "weight L1 norm"}, "/weight", "ranked by weight L1 norm")
    norms = _input_norms(session)
    return _Ranking(norms, {"importance": "activation", "calibration_tokens": norms.tokens}, "",
                    f"ranked by what they write on {norms.tokens} training tokens")


def _heads_point(session: _Session, *, per_layer: int | None = None, total: int | None = None) -> dict:
    model = copy.deepcopy(session.base)
    ranking = _structured_ranking(session)
    removed = prune_heads(model, per_layer=per_layer, total=total,
                          norms=ranking.norms.groups["attention"] if ranking.norms else None)
    recovery = _recover(session, model) if session.plan.recovery_steps else {}
    if per_layer is not None:
        setting, key = f"{per_layer} per layer", f"heads={per_layer}"
    else:
        setting, key = f"{total} in all", f"heads_total={total}"
    point = _measure(
        session, model, kind="heads", setting=setting, key=key + ranking.key_suffix + _recovery_suffix(session),
        note=f"attention heads {ranking.phrase}, removed by slicing q/k/v rows and output columns: parameters, bytes and "
             "latency really drop; the saved state has per-layer shapes the model config cannot describe",
        heads_removed={str(i): heads for i, heads in removed.items()},
        heads_left=heads_per_layer(model), **ranking.fields, **recovery,
    )
    _release(model)
    return point


def _ffn_point(session: _Session, fraction: float) -> dict:
    model = copy.deepcopy(session.base)
    ranking = _structured_ranking(session)
    kept = prune_ffn(model, fraction, ranking.norms.groups["ffn"] if ranking.norms else None)
    recovery = _recover(session, model) if session.plan.recovery_steps else {}
    point = _measure(
        session, model, kind="ffn", setting=f"{fraction:g}",
        key=f"ffn={fraction:g}" + ranking.key_suffix + _recovery_suffix(session),
        note=f"FFN neurons {ranking.phrase}, removed (intermediate rows and output columns): parameters, bytes and latency "
             "really drop",
        ffn_fraction=fraction, ffn_neurons_kept=kept, **ranking.fields, **recovery,
    )
    _release(model)
    return point


def _quantized_point(session: _Session, kind: str) -> dict:
    if kind in HALF_KINDS:
        model = cast_half(copy.deepcopy(session.base), kind)
        note = (f"weights cast to {kind}; CPU inference computes in {kind} where kernels exist"
                + (" (fp16 matmul on CPU may be slow: the latency shows it)" if kind == "fp16" else ""))
        try:
            point = _measure(session, model, kind=kind, setting=kind, key=kind, note=note, dtype=kind)
        except RuntimeError as exc:  # a CPU build without a kernel for this dtype: record, don't hide
            point = {"kind": kind, "setting": kind, "key": kind, "test_accuracy": None, "agreement": None,
                     "params": None, "nonzero_params": None, "bytes": measure.saved_bytes(model),
                     "bytes_kind": "safetensors file", "latency_ms": None, "dtype": kind,
                     "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                     "note": f"{kind} inference failed on this CPU"}
        _release(model)
        return point
    if kind == "int8":
        model = dynamic_int8(session.base)
        point = _measure(
            session, model, kind="int8", setting="int8", key="int8",
            note="dynamic int8 (torch.ao quantize_dynamic): every nn.Linear (layers, pooler, task head) holds int8 "
                 "weights with one scale per output row, activations quantized per batch; embeddings and LayerNorm "
                 "stay fp32 (an LM head tied to the embeddings becomes an int8 copy beside them); bytes is that "
                 "state written as safetensors",
        )
        _release(model)
        return point
    if kind == PER_TOKEN_INT8:
        model = per_token_int8(session.base)
        point = _measure(
            session, model, kind=kind, setting=kind, key=kind,
            note="torchao dynamic int8: every nn.Linear holds int8 weights with one scale per output row, and "
                 "each token's activations are quantized with their own scale at every call; embeddings and norms "
                 "stay fp32; bytes is the int8 weights, scales and the rest written as safetensors",
        )
        _release(model)
        return point
    bits = KBIT_KINDS[kind]
    model = copy.deepcopy(session.base)
    targets = fake_quantize(model, bits)
    zeroed = target_sparsity(targets)
    point = _measure(
        session, model, kind="kbit", setting=kind, key=kind,
        bytes_value=measure.packed_kbit_bytes(model, targets, bits), bytes_kind="computed packed size",
        note=f"weight fake-quant: target weights rounded to {bits}-bit per-output-channel symmetric levels"
             + (" (binary: sign x mean|w|)" if bits == 1 else
                " (ternary {-s, 0, s} with s = row max: every weight under half its row's maximum becomes 0)"
                if bits == 2 else "")
             + f"; {zeroed:.0%} of target weights end up zero; computed in fp32, so latency is the fp32 "
             "model's; bytes is computed, not written: "
             f"{bits} bits per target weight plus an fp32 scale per row, other tensors as stored",
        bits=bits, targets=targets.description, target_weights=targets.weight_count, zeroed_fraction=zeroed,
    )
    _release(model)
    return point


def _release(model: nn.Module) -> None:
    del model
    gc.collect()


def stored_points(store, run_id: str) -> list[dict]:
    """The compression points stored with a run (any earlier sweep's included)."""
    return store.records(run_id, RECORD_KIND)
