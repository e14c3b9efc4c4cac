"""The memory estimate and the lab's meter against CUDA's own allocator, on a GPU.

For every method on MiniLM-L6 (and MPNet-base when installed) at two batch shapes, a few training
steps through the engine in fp32 and with bf16 autocast, each figure side by side:

- measured: the lab's breakdown of the peak step (weights, gradients, optimizer, saved activations);
- estimate: `app.estimate.estimate_memory` for the same setup, made before the run with fake
  tensors on the same CUDA device (so the same attention kernels are chosen);
- `torch.cuda.max_memory_allocated` of that step (reset with `reset_peak_memory_stats` as the
  step starts, which the training loop does on every measured step);
- `torch.cuda.max_memory_reserved` (what the caching allocator held, close to what nvidia-smi
  shows for the process minus the CUDA context) and the median seconds per step;
- once per process: the CUDA context, read as device memory in use (`mem_get_info`) minus what
  PyTorch has reserved, after cuBLAS has been loaded.

Then the same for language models (`--lm-backbone`, SmolLM2-135M by default; `--lm-backbone none`
skips it): every method that trains for causal-lm, packed BBC News, fp32 and bf16 autocast, where the
chunked loss (its gradients computed in the forward pass) and the LM head run on CUDA.

Goals: estimate within 5% of measured, both within 10% of `max_memory_allocated`. Whatever is
left is printed per row as allocated/estimate and reserved/allocated, to say where it goes.

Without CUDA it runs the lab-measurement-against-estimate part on the CPU (fp32, the first
shape only unless `--shapes` is given) and says that the CUDA parts were skipped.

    python benchmarks/gpu_check.py [--steps 3] [--shapes 8x64,32x128] [--methods full_ft,lst]
        [--budget-seconds 420] [--json out.json]

On an H200 it is meant to finish in about 8 minutes including model loading; `--budget-seconds`
stops starting new runs once that much time has passed and records what was left out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from app.backbones import REGISTRY  # noqa: E402
from app.estimate import ALLOCATOR_SLACK, CUDA_CONTEXT_BYTES, estimate_memory  # noqa: E402
from app.methods import METHODS  # noqa: E402
from app.precision import allowed_precisions  # noqa: E402
from app.store import RunStore  # noqa: E402
from memory_estimate import comparable_estimate, parse_shapes, reference_settings, short_run  # noqa: E402

MiB = 1024**2
CUDA_SHAPES = "8x64,32x128"
CPU_SHAPES = "8x64"
ESTIMATE_GOAL = 0.05
ALLOCATOR_GOAL = 0.10


def cuda_context_bytes(device: torch.device) -> int:
    """Device memory in use that PyTorch's allocator does not hold: context, kernels, cuBLAS handles
    (and anything else on the device)."""
    a = torch.randn(256, 256, device=device)
    (a @ a).sum().item()  # loads cuBLAS
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    return int(total - free - torch.cuda.memory_reserved(device))


def backbones_to_check() -> list[str]:
    names = ["minilm-l6"]
    available, _ = REGISTRY["mpnet-base"].availability()
    if available:
        names.append("mpnet-base")
    return names


def step_seconds(store: RunStore, run_id: str) -> float | None:
    def seconds(step: dict):
        return step.get("step_seconds") or (step.get("data") or {}).get("step_seconds")

    times = [seconds(s) for s in store.steps(run_id) if seconds(s)]
    # The first step pays for kernel selection and allocator warm-up; the median of the rest is the cost.
    later = times[1:] or times
    return statistics.median(later) if later else None


def check_one(store, backbone, method, batch, length, *, steps, settings, device, bf16, precision="fp32",
              task="classification") -> dict:
    estimate_device = device
    try:
        estimate = estimate_memory(backbone, method, batch, length, settings, bf16=bf16, device=estimate_device,
                                   backbone_precision=precision, task=task)
    except Exception as exc:  # fake tensors on this device failed: fall back to the CPU's kernels
        estimate_device = "cpu"
        estimate = estimate_memory(backbone, method, batch, length, settings, bf16=bf16, device="cpu",
                                   backbone_precision=precision, task=task)
        print(f"  (estimate on {device} failed, used the CPU's kernels: {exc})")
    predicted = comparable_estimate(estimate, method)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    record = short_run(store, backbone, method, batch, length, steps=steps, settings=settings, device=device,
                       bf16=bf16, backbone_precision=precision, task=task)
    metrics = record["metrics"]
    measured = metrics["memory_breakdown"]
    row = {
        "backbone": backbone, "method": method, "batch": batch, "length": length, "bf16": bf16, "device": device,
        "backbone_precision": precision, "task": task,
        "estimate_device": estimate_device, "measured": measured, "measured_bytes": sum(measured.values()),
        "estimated": predicted, "estimated_bytes": sum(predicted.values()),
        "estimate_seconds": estimate.seconds, "seconds_per_step": step_seconds(store, record["id"]),
    }
    row["estimate_error"] = (row["estimated_bytes"] - row["measured_bytes"]) / row["measured_bytes"]
    if device == "cuda":
        allocated = metrics.get("cuda_max_allocated_bytes")
        row["cuda_max_allocated_bytes"] = allocated
        # Peak reserved since the last measured step began (the loop resets peaks there).
        row["cuda_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
        if allocated:
            row["allocated_vs_estimate"] = allocated / row["estimated_bytes"] - 1
            row["allocated_vs_measured"] = allocated / row["measured_bytes"] - 1
            row["reserved_vs_allocated"] = row["cuda_max_reserved_bytes"] / allocated - 1
    return row


def print_row(row: dict) -> None:
    line = (f"{row['backbone']:<10} {row.get('task', 'classification'):<14} {row['method']:<14} "
            f"b{row['batch']:<3} L{row['length']:<4} "
            f"{'bf16' if row['bf16'] else 'fp32'} {row.get('backbone_precision', 'fp32'):<4}  "
            f"measured {row['measured_bytes'] / MiB:9.1f}  "
            f"estimate {row['estimated_bytes'] / MiB:9.1f} ({row['estimate_error']:+.2%})")
    if row.get("cuda_max_allocated_bytes"):
        line += (f"  max_allocated {row['cuda_max_allocated_bytes'] / MiB:9.1f} "
                 f"({row['allocated_vs_estimate']:+.2%} vs estimate)  reserved "
                 f"{row['cuda_max_reserved_bytes'] / MiB:9.1f} ({row['reserved_vs_allocated']:+.1%})")
    if row.get("seconds_per_step"):
        line += f"  {row['seconds_per_step']:.3f} s/step"
    print(line + "  MiB", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--shapes", help=f"batch x length pairs (default {CUDA_SHAPES} on CUDA, {CPU_SHAPES} on CPU)")
    parser.add_argument("--methods", help="comma-separated (default: every method)")
    parser.add_argument("--backbones", help="comma-separated (default: minilm-l6, and mpnet-base when installed)")
    parser.add_argument("--lm-backbone", default="smollm2-135m",
                        help="a decoder to check as a language model after the classifiers ('none' skips it)")
    parser.add_argument("--budget-seconds", type=float, default=420.0)
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    on_cuda = torch.cuda.is_available()
    device = "cuda" if on_cuda else "cpu"
    precisions = [False, True] if on_cuda else [False]
    shapes = parse_shapes(args.shapes or (CUDA_SHAPES if on_cuda else CPU_SHAPES))
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(METHODS)
    backbones = [b.strip() for b in args.backbones.split(",")] if args.backbones else backbones_to_check()
    steps = args.steps if on_cuda else min(args.steps, 1)
    result: dict = {"device": torch.cuda.get_device_name() if on_cuda else "cpu", "torch": torch.__version__,
                    "steps": steps, "documented_overhead": {"context_bytes": CUDA_CONTEXT_BYTES,
                                                            "allocator_slack": ALLOCATOR_SLACK},
                    "rows": [], "left_out": []}
    if on_cuda:
        result["cuda_context_bytes"] = cuda_context_bytes(torch.device("cuda"))
        print(f"CUDA on {result['device']}: context and other non-PyTorch device memory "
              f"{result['cuda_context_bytes'] / MiB:.0f} MiB (documented allowance {CUDA_CONTEXT_BYTES / MiB:.0f} MiB)")
    else:
        print("No CUDA device: CUDA parts skipped (max_memory_allocated, memory_reserved, bf16 autocast, CUDA "
              "context); checking the lab's measurement against the estimate on the CPU, fp32, one step per run.")
        result["cuda_skipped"] = True
    store = RunStore(Path(tempfile.mkdtemp(prefix="gpu-check-")))
    passes = [(backbone, "classification") for backbone in backbones]
    if args.lm_backbone != "none":
        passes.append((args.lm_backbone, "causal-lm"))
    for backbone, task in passes:
        task_methods = [m for m in methods if task in METHODS[m].tasks]
        reference_id = None
        if any(METHODS[m].reference_fields for m in task_methods):
            reference_id = short_run(store, backbone, "full_ft", 8, 32, device=device, task=task)["id"]
        # Every method in fp32 and with bf16 autocast, then every method that keeps a frozen backbone with
        # that backbone in bf16, int8 and int4 (the first shape, fp32 autocast).
        grid = [(bf16, method, shape, "fp32") for bf16 in precisions for method in task_methods for shape in shapes]
        grid += [(False, method, shapes[0], precision) for precision in ("bf16", "int8", "int4")
                 for method in task_methods if precision in allowed_precisions(METHODS[method])]
        for bf16, method, (batch, length), precision in grid:
            label = (f"{backbone} {task} {method} b{batch} L{length} {'bf16' if bf16 else 'fp32'} "
                     f"backbone {precision}")
            if time.perf_counter() - started > args.budget_seconds:
                result["left_out"].append(label)
                continue
            try:
                row = check_one(store, backbone, method, batch, length, steps=steps,
                                settings=reference_settings(method, reference_id), device=device, bf16=bf16,
                                precision=precision, task=task)
            except Exception as exc:  # one failing row must not cost the others
                print(f"{label}: FAILED {type(exc).__name__}: {exc}", flush=True)
                result["rows"].append({"label": label, "error": f"{type(exc).__name__}: {exc}"})
                continue
            result["rows"].append(row)
            print_row(row)
    good = [r for r in result["rows"] if "error" not in r]
    result["worst_estimate_error"] = max((abs(r["estimate_error"]) for r in good), default=None)
    if on_cuda:
        gaps = [abs(r["allocated_vs_estimate"]) for r in good if "allocated_vs_estimate" in r]
        result["worst_allocated_vs_estimate"] = max(gaps, default=None)
    result["seconds"] = time.perf_counter() - started
    print(f"\nworst |estimate - measured| / measured: {result['worst_estimate_error']:.2%} "
          f"(goal {ESTIMATE_GOAL:.0%})" if result["worst_estimate_error"] is not None else "\nno rows")
    if on_cuda and result.get("worst_allocated_vs_estimate") is not None:
        print(f"worst |max_memory_allocated - estimate| / estimate: {result['worst_allocated_vs_estimate']:.2%} "
              f"(goal {ALLOCATOR_GOAL:.0%})")
    if result["left_out"]:
        print(f"left out after {args.budget_seconds:.0f} s: {len(result['left_out'])} rows")
    if not on_cuda:
        print("CUDA parts skipped: no CUDA device on this machine.")
    print(f"{result['seconds']:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
