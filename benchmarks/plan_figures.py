"""What fits where at 7-8B: the estimate of full fine-tuning, LoRA and LST on shipped decoder
configs, each point stepped two ways side by side (extended from 1-3 layers, and at full depth),
and the Plan page's nine-step surface per method with its time.

For each model, method and batch at one length: the predicted peak and its parts, the smallest
listed device it fits with the documented CUDA allowance, and the seconds of both ways of
estimating (which must agree to the byte). Then, per model and method, the seconds to measure
the surface the Plan page draws from.

    python benchmarks/plan_figures.py [--models config:llama-3.1-8b,config:qwen2.5-7b] [--methods full_ft,lora,lst]
        [--batches 1,8] [--max-length 2048] [--json benchmarks/results/plan_figures.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.estimate import DEVICE_SIZES_GB, GiB, estimate_memory  # noqa: E402
from app.planning import measure_surface  # noqa: E402
from recorded import recorded_settings  # noqa: E402


def _smallest_device(fits: dict) -> str:
    return next((f"{gb} GB" for gb in DEVICE_SIZES_GB if fits[f"{gb}GB"]), "none")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="config:llama-3.1-8b,config:qwen2.5-7b")
    parser.add_argument("--methods", default="full_ft,lora,lst")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    batches = [int(b) for b in args.batches.split(",") if b.strip()]

    estimate_memory(models[0], methods[0], 1, 64)  # imports and first-call caches, outside the timings
    rows, surfaces = [], []
    print(f"batch x {args.max_length} tokens; peak and parts in GiB; seconds extended from 1-3 layers / full depth")
    print(f"  {'model':<22} {'method':<8} {'batch':>5} {'peak':>8}  {'weights/gradients/optimizer/activations':<40} "
          f"{'smallest':>9} {'s (1-3)':>8} {'s (full)':>8}")
    for model in models:
        for method in methods:
            for batch in batches:
                extended = estimate_memory(model, method, batch, args.max_length)
                full = estimate_memory(model, method, batch, args.max_length, extrapolate=False)
                if extended.breakdown != full.breakdown:
                    raise SystemExit(f"{model} {method} batch {batch}: the two ways disagree "
                                     f"({extended.breakdown} against {full.breakdown})")
                parts = " / ".join(f"{v / GiB:.2f}" for v in extended.breakdown.values())
                smallest = _smallest_device(extended.fits)
                rows.append({"model": model, "method": method, "batch_size": batch, "max_length": args.max_length,
                             "peak_bytes": extended.predicted_peak_bytes, "breakdown": extended.breakdown,
                             "trainable_params": extended.trainable_params, "total_params": extended.total_params,
                             "smallest_device": smallest, "seconds_extended": extended.seconds,
                             "seconds_full_depth": full.seconds})
                print(f"  {model:<22} {method:<8} {batch:>5} {extended.predicted_peak_bytes / GiB:>8.2f}  {parts:<40} "
                      f"{smallest:>9} {extended.seconds:>8.2f} {full.seconds:>8.2f}")
    print("\nPlan page surfaces (nine fake steps each)")
    for model in models:
        for method in methods:
            started = time.perf_counter()
            surface = measure_surface(model, method)
            seconds = time.perf_counter() - started
            surfaces.append({"model": model, "method": method, "lengths": list(surface.lengths), "seconds": seconds})
            print(f"  {model:<22} {method:<8} at {surface.lengths} tokens: {seconds:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": recorded_settings(args), "rows": rows,
                                               "surfaces": surfaces}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
