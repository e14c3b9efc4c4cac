"""Frozen backbones in fp32, bf16, int8 and int4: peak memory, step time and accuracy, side by side.

Every variant trains the same backbone on the same batches (one shape for all: `--batch-size` x
`--max-length` with padding=max, seed `--seed`) for the same number of steps, on each dataset in
turn, one run after another in this process; the variants of one dataset alternate with nothing
else running, so their step times compare as ratios. Reported per variant: measured peak memory
and its parts (x full fine-tuning's), median s/step (x full fine-tuning's), the estimate's peak
against the measurement, and test accuracy after the equal number of steps.

Targets (CPU): LST int8 <= 0.12 x full fine-tuning's peak, <= 0.5 x LoRA int8's, step time <= LST
fp32's, accuracy within 1 point of LST fp32; LST int4 <= 0.09 x full fine-tuning's peak.

    python benchmarks/quantized_backbones.py [--backbone smollm2-135m] [--datasets sms-spam,rotten-tomatoes]
        [--steps 120] [--batch-size 8] [--max-length 64] [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.estimate import estimate_memory  # noqa: E402
from app.memory import PARTS  # noqa: E402
from app.preparation import prepare_run  # noqa: E402
from app.runner import execute_run  # noqa: E402
from app.store import RunStore  # noqa: E402

VARIANTS = [("full_ft", "fp32"), ("lora", "fp32"), ("lora", "int8"), ("lora", "int4"),
            ("lst", "fp32"), ("lst", "bf16"), ("lst", "int8"), ("lst", "int4")]
MiB = 1024**2


def run_variant(store: RunStore, method: str, precision: str, dataset: str, args) -> dict:
    config = dict(backbone=args.backbone, dataset=dataset, method=method, backbone_precision=precision,
                  steps=args.steps, batch_size=args.batch_size, max_length=args.max_length, padding="max",
                  eval_every=args.steps, memory_every=max(1, args.steps // 4), seed=args.seed,
                  max_train_examples=args.max_train_examples, max_eval_examples=args.max_eval_examples,
                  name=f"{method} {precision}")
    prepared = prepare_run(config, store)
    run_id = store.create_run(prepared.config.as_dict())
    started = time.perf_counter()
    record = execute_run(store, run_id, prepared=prepared)
    if record["status"] != "finished":
        raise SystemExit(f"{method} {precision} on {dataset}: {record.get('error')}")
    step_seconds = [s["step_seconds"] for s in store.steps(run_id)][1:]  # the first step warms caches
    metrics = record["metrics"]
    estimate = estimate_memory(args.backbone, method, args.batch_size, args.max_length, backbone_precision=precision,
                               label_names=record["summary"]["dataset"]["label_names"], padding="max")
    return {
        "method": method, "precision": precision, "dataset": dataset, "run_id": run_id,
        "peak_bytes": metrics["peak_memory_bytes"], "breakdown": metrics["memory_breakdown"],
        "estimate_bytes": estimate.predicted_peak_bytes,
        "step_seconds": statistics.median(step_seconds),
        "test_accuracy": metrics["test_accuracy"], "val_accuracy": metrics["val_accuracy"],
        "trainable_params": record["summary"]["trainable_params"],
        "library": record["summary"].get("backbone_precision", {}).get("library"),
        "wall_seconds": time.perf_counter() - started,
    }


def print_table(rows: list[dict]) -> None:
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        group = [r for r in rows if r["dataset"] == dataset]
        full = next(r for r in group if r["method"] == "full_ft")
        print(f"\n{dataset}")
        print(f"{'variant':<12}{'peak MiB':>9}{'x ft':>7}" + "".join(f"{p[:6]:>8}" for p in PARTS)
              + f"{'est/meas':>9}{'s/step':>8}{'x ft':>7}{'test acc':>9}")
        for r in group:
            parts = "".join(f"{r['breakdown'].get(p, 0) / MiB:>8.1f}" for p in PARTS)
            print(f"{r['method'] + ' ' + r['precision']:<12}{r['peak_bytes'] / MiB:>9.1f}"
                  f"{r['peak_bytes'] / full['peak_bytes']:>7.3f}{parts}{r['estimate_bytes'] / r['peak_bytes']:>9.4f}"
                  f"{r['step_seconds']:>8.3f}{r['step_seconds'] / full['step_seconds']:>7.3f}"
                  f"{r['test_accuracy']:>9.3f}")
        by = {(r["method"], r["precision"]): r for r in group}
        lst8, lora8, lst32, lst4 = by[("lst", "int8")], by[("lora", "int8")], by[("lst", "fp32")], by[("lst", "int4")]
        checks = [
            ("LST int8 peak <= 0.12 x full FT", lst8["peak_bytes"] / full["peak_bytes"], 0.12),
            ("LST int8 peak <= 0.5 x LoRA int8", lst8["peak_bytes"] / lora8["peak_bytes"], 0.5),
            ("LST int8 s/step <= LST fp32", lst8["step_seconds"] / lst32["step_seconds"], 1.0),
            ("LST int4 peak <= 0.09 x full FT", lst4["peak_bytes"] / full["peak_bytes"], 0.09),
        ]
        for label, value, target in checks:
            print(f"  {label}: {value:.3f} ({'met' if value <= target else 'missed'})")
        gap = (lst8["test_accuracy"] - lst32["test_accuracy"]) * 100
        verdict = "met" if abs(gap) <= 1 else "missed"
        print(f"  LST int8 - LST fp32 test accuracy: {gap:+.1f} points ({verdict}: within 1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--datasets", default="sms-spam,rotten-tomatoes")
    parser.add_argument("--variants", default=",".join(f"{m}:{p}" for m, p in VARIANTS),
                        help="method:precision pairs; full_ft:fp32 must be one (the reference)")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--max-train-examples", type=int, default=2000)
    parser.add_argument("--max-eval-examples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    store = RunStore(args.runs_dir or tempfile.mkdtemp(prefix="quantized-backbones-"))
    variants = [tuple(v.split(":")) for v in args.variants.split(",")]
    rows = []
    for dataset in args.datasets.split(","):
        for method, precision in variants:
            print(f"[{dataset}] {method} {precision} ...", file=sys.stderr, flush=True)
            rows.append(run_variant(store, method, precision, dataset, args))
            r = rows[-1]
            print(f"  peak {r['peak_bytes'] / MiB:.1f} MiB, {r['step_seconds']:.3f} s/step, "
                  f"test {r['test_accuracy']:.3f} "
                  f"({r['wall_seconds']:.0f} s)", file=sys.stderr, flush=True)
    print_table(rows)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("runs_dir", "json")}  # no local paths
        Path(args.json).write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
