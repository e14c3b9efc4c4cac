"""How exact is the memory estimate? Every method on MiniLM-L6, estimated before any step and then
measured by real short runs, on a grid of batch shapes; plus the estimate of a BERT too large for
this machine.

1. Grid: each method trains `--steps` steps at each batch x length of `--shapes` with padding=max
   (every batch has exactly that shape), through the engine; the lab's meter measures the peak
   step. The estimate (`app.estimate.estimate_memory`) is made for the same setup. Printed: both
   totals and the relative error, and the worst error per method. Theseus runs phase 2 from its
   first step (the successor alone) and is compared with that kind of step of its estimate; its
   reported peak is the module-replacement step, which a run only meets by chance.
   Predecessor and teacher: a one-step full fine-tuning run (only its shape matters).
2. Big config: a 24-layer, 1024-wide BERT (BERT-large) at batch 32, length 512, for full
   fine-tuning, LoRA and LST, with the CUDA devices each would fit (the documented allowance of
   `app.estimate`: 512 MiB context plus 10% allocator slack).

    python benchmarks/memory_estimate.py [--shapes 4x16,16x64,32x128] [--steps 1] [--methods lst,lora]
        [--backbone minilm-l6] [--skip-grid] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.estimate import GiB, bert_config, estimate_memory  # noqa: E402
from app.memory import PARTS  # noqa: E402
from app.methods import METHODS  # noqa: E402
from app.store import RunStore  # noqa: E402
from app.preparation import prepare_run  # noqa: E402
from app.runner import execute_run  # noqa: E402

DEFAULT_SHAPES = "4x16,16x64,32x128"
MiB = 1024**2
BIG_METHODS = ("full_ft", "lora", "lst")


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        batch, _, length = item.strip().partition("x")
        shapes.append((int(batch), int(length)))
    return shapes


def reference_settings(method: str, reference_id: str | None) -> dict:
    if method == "theseus":
        return {"predecessor": reference_id, "phase2_start": 0.0}
    if method == "distill":
        return {"teacher": reference_id}
    return {}


def short_run(store: RunStore, backbone: str, method: str, batch: int, length: int, *, steps: int = 1,
              settings: dict | None = None, device: str = "cpu", bf16: bool = False,
              backbone_precision: str = "fp32", task: str = "classification") -> dict:
    """A real run of a few steps at one fixed batch shape; returns its finished record. A causal-lm
    run learns packed BBC News (every block full, as `padding=max` makes a classifier's batches)."""
    config = dict(backbone=backbone, dataset="sms-spam", method=method, method_config=settings or {},
                  batch_size=batch, max_length=length, padding="max", steps=steps, eval_every=10_000,
                  max_train_examples=max(64, batch * steps), max_eval_examples=8, seed=0, device=device, bf16=bf16,
                  backbone_precision=backbone_precision)
    if task == "causal-lm":
        config.update(task=task, dataset="bbc-news", generations=0)
    prepared = prepare_run(config, store)
    run_id = store.create_run(prepared.config.as_dict())
    record = execute_run(store, run_id, prepared=prepared)
    if record["status"] != "finished":
        raise RuntimeError(f"{method} b{batch} L{length}: {record.get('error')}")
    return record


def comparable_estimate(estimate, method: str) -> dict:
    """The estimate's breakdown for the kind of step the benchmark run takes."""
    if method == "theseus":
        step = next(s for s in estimate.steps if s["kind"] == "successor alone")
        return {k: step[k] for k in PARTS}
    return dict(estimate.breakdown)


def run_grid(backbone: str, methods: list[str], shapes: list[tuple[int, int]], steps: int) -> list[dict]:
    store = RunStore(Path(tempfile.mkdtemp(prefix="memory-estimate-")))
    reference_id = None
    if any(METHODS[m].reference_fields for m in methods):
        reference_id = short_run(store, backbone, "full_ft", 8, 32)["id"]
    rows = []
    for method in methods:
        for batch, length in shapes:
            settings = reference_settings(method, reference_id)
            started = time.perf_counter()
            record = short_run(store, backbone, method, batch, length, steps=steps, settings=settings)
            run_seconds = time.perf_counter() - started
            measured = record["metrics"]["memory_breakdown"]
            estimate = estimate_memory(backbone, method, batch, length, settings)
            predicted = comparable_estimate(estimate, method)
            total_m, total_p = sum(measured.values()), sum(predicted.values())
            row = {"method": method, "batch": batch, "length": length, "measured_bytes": total_m,
                   "estimated_bytes": total_p, "error": (total_p - total_m) / total_m,
                   "measured": measured, "estimated": predicted, "estimate_seconds": estimate.seconds,
                   "run_seconds": run_seconds}
            rows.append(row)
            print(f"{method:<14} b{batch:<3} L{length:<4} measured {total_m / MiB:9.2f} MiB  estimated "
                  f"{total_p / MiB:9.2f} MiB  error {row['error']:+.3%}  ({estimate.seconds:.2f} s vs "
                  f"{run_seconds:.1f} s run)", flush=True)
    return rows


def worst_errors(rows: list[dict]) -> dict[str, float]:
    worst: dict[str, float] = {}
    for row in rows:
        worst[row["method"]] = max(worst.get(row["method"], 0.0), abs(row["error"]))
    return worst


def big_config() -> list[dict]:
    rows = []
    for method in BIG_METHODS:
        estimate = estimate_memory(bert_config(), method, 32, 512)
        rows.append({"method": method, "predicted_peak_bytes": estimate.predicted_peak_bytes,
                     "breakdown": estimate.breakdown, "trainable_params": estimate.trainable_params,
                     "total_params": estimate.total_params, "fits": estimate.fits,
                     "cuda_requirement_bytes": estimate.cuda_requirement_bytes, "seconds": estimate.seconds})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="batch x length pairs, comma-separated")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--methods", help="comma-separated (default: every method)")
    parser.add_argument("--skip-grid", action="store_true", help="only the big-config estimate")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(METHODS)
    result: dict = {"backbone": args.backbone, "steps": args.steps}
    if not args.skip_grid:
        rows = run_grid(args.backbone, methods, parse_shapes(args.shapes), args.steps)
        result["grid"] = rows
        result["worst_error"] = worst_errors(rows)
        print("\nworst |error| per method:")
        for method, error in result["worst_error"].items():
            print(f"  {method:<14} {error:.3%}")
    print("\nBERT config, 24 layers x 1024 wide (BERT-large shape), batch 32 x 512 tokens:")
    result["big_config"] = big_config()
    for row in result["big_config"]:
        fits = ", ".join(size for size, ok in row["fits"].items() if ok) or "none"
        print(f"  {row['method']:<8} {row['predicted_peak_bytes'] / GiB:6.2f} GiB  "
              + " ".join(f"{k} {v / GiB:.2f}" for k, v in row["breakdown"].items())
              + f"  fits: {fits}  ({row['seconds']:.2f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
