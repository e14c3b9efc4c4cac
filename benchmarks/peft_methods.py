"""Every registered training method side by side: what it trains, what it costs, what it reaches.

Two phases, both through the engine (the same loop, memory measurement and store the app uses):

1. Cost. Each method trains `--steps` steps on the same batches (batch size, length and seed
   equal for all, every batch padded to the maximum length so every method sees one shape) and
   reports trainable parameters, the measured peak training memory with its breakdown (weights,
   gradients, optimizer state, activations saved for backward) and the median step time.
   Training uses the first `--cost-examples` examples, so a method that caches per example
   (LST's hidden-state cache) gets its later epochs measured separately.
2. Accuracy at an equal time budget (`--seconds` per method; 0 skips this phase). A method that
   steps faster takes more steps: each method gets the number of steps its phase-1 step time fits
   into the budget, with its full learning-rate schedule, on the whole training set. The budget
   covers training steps only; evaluations are not counted. Reported: validation and test
   accuracy and the training time really spent.

Time is wall-clock by default. `--clock cpu` counts the process's CPU seconds instead: on a
machine shared with other work, wall time swings with the load while CPU time stays close to what
the step costs (with `--threads 1` it is what an idle core would take).

Every figure is also given as a ratio to full fine-tuning (accuracy as a difference in points).
Methods that need a fine-tuned reference (predecessor or teacher) get the full fine-tuning run of
phase 2 (or a short one when phase 2 is skipped); its training time is not charged to them.

    python benchmarks/peft_methods.py [--seconds 180] [--steps 20] [--clock wall|cpu] [--threads N]
        [--methods lst,full_ft] [--variant 'lst-r4=lst:{"method_config": {"reduction_factor": 4}}'] [--json out.json]

CPU figures depend on machine load: the script records the load average and torch's thread count
next to the results. Run it on an otherwise idle machine for figures worth quoting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from app.methods import METHODS  # noqa: E402
from app.store import RunStore  # noqa: E402
from app.preparation import prepare_run  # noqa: E402
from app.runner import execute_run  # noqa: E402
from app.training import LoopHooks  # noqa: E402
from recorded import recorded_settings  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "peft_methods.json"
REFERENCE = "full_ft"


@dataclass
class Variant:
    label: str
    method: str
    method_config: dict = field(default_factory=dict)
    lr: float | None = None


def parse_variant(text: str) -> Variant:
    """LABEL=METHOD or LABEL=METHOD:{"method_config": {...}, "lr": 0.001}"""
    label, _, rest = text.partition("=")
    method, _, extra = rest.partition(":")
    if not label or method not in METHODS:
        raise SystemExit(f"bad --variant {text!r}: expected LABEL=METHOD[:JSON] with METHOD one of {', '.join(METHODS)}")
    options = json.loads(extra) if extra else {}
    return Variant(label, method, options.get("method_config", {}), options.get("lr"))


class RunFailed(Exception):
    pass


def run_engine(store: RunStore, config: dict) -> tuple[dict, dict[str, list[float]]]:
    """Train one run; returns its record and per-step seconds by wall clock and by process CPU time
    (the CPU figure is what a step costs whatever else the machine runs; step 1 is left out of it)."""
    prepared = prepare_run(config, store)
    run_id = store.create_run(prepared.config.as_dict())
    cpu_marks: list[float] = []
    hooks = LoopHooks(on_step=lambda step, total, loss: cpu_marks.append(time.process_time()))
    record = execute_run(store, run_id, hooks, prepared=prepared)
    if record["status"] != "finished":
        raise RunFailed(f"{record.get('error')}\n{record.get('traceback') or ''}".strip())
    wall = [s["step_seconds"] for s in store.steps(run_id)]
    cpu = [b - a for a, b in zip(cpu_marks, cpu_marks[1:])]
    return store.get_run(run_id), {"wall": wall, "cpu": [cpu[0] if cpu else wall[0]] + cpu}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def inference_speedups(store: RunStore, results: dict, args) -> None:
    """For methods whose served model is smaller (Theseus' successor, truncation): forward-pass time
    of full fine-tuning's model over theirs, timed in alternating passes on one test batch."""
    from app.batching import Batcher
    from app.checkpoints import load_run_model
    from app.compression.measure import latency_batch, paired_latency_ms
    from app.data import tokenize_split
    from app.preparation import load_run_dataset

    if "run_id" not in results.get(REFERENCE, {}):
        return
    reference = load_run_model(store, results[REFERENCE]["run_id"])
    tensors = tokenize_split(reference.backbone.tokenizer, load_run_dataset(reference.config),
                             "test", args.max_length)
    batch = latency_batch(tensors, args.batch_size, Batcher("max"))
    reference_model = reference.method.inference_model(reference.model)
    with torch.inference_mode():
        for label, row in results.items():
            if row.get("method") not in ("theseus", "truncate") or "run_id" not in row:
                continue
            loaded = load_run_model(store, row["run_id"])
            model_ms, reference_ms, _ = paired_latency_ms(loaded.method.inference_model(loaded.model),
                                                          reference_model, batch, repeats=9, warmup=2)
            row["inference_speedup"] = reference_ms / model_ms
            print(f"[latency] {label}: {reference_ms:.0f} ms -> {model_ms:.0f} ms per batch", file=sys.stderr)


def ratio(value, reference):
    return None if value is None or not reference else value / reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--dataset", default="rotten-tomatoes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="steps of the cost phase")
    parser.add_argument("--cost-examples", type=int, default=320,
                        help="training examples of the cost phase (fewer than steps x batch: later epochs repeat them)")
    parser.add_argument("--seconds", type=float, default=180.0,
                        help="training budget per method for the accuracy phase (0 skips it)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="what step times and the budget count: wall-clock seconds, or the process's CPU "
                             "seconds (steadier on a shared machine; with --threads 1 it is what an idle core "
                             "would take)")
    parser.add_argument("--max-eval-examples", type=int, default=1000)
    parser.add_argument("--methods", default="", help="comma-separated method names (default: every registered one)")
    parser.add_argument("--variant", action="append", default=[],
                        help='extra LABEL=METHOD[:{"method_config": {...}, "lr": x}] rows, e.g. other settings')
    parser.add_argument("--no-cache-row", action="store_true", help="leave out the 'lst+cache' row")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0 keeps torch's default); on a shared machine 1 avoids "
                             "oversubscription, which penalises methods made of many small operations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write results (default {DEFAULT_JSON})")
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from app.backbones import get_backbone

    backbone = get_backbone(args.backbone)
    refused = {n: cls.backbone_refusal(backbone) for n, cls in METHODS.items() if cls.backbone_refusal(backbone)}
    names = [n.strip() for n in args.methods.split(",") if n.strip()] or [n for n in METHODS if n not in refused]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; registered: {', '.join(METHODS)}")
    for name, reason in refused.items():
        print(f"left out: {reason}", file=sys.stderr)
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    variants = [Variant(n, n) for n in names]
    if "lst" in names and not args.no_cache_row:
        variants.append(Variant("lst+cache", "lst", {"cache_hidden_states": True, "cache_mb": 16384}))
    variants += [parse_variant(v) for v in args.variant]
    # the reference first: methods that need a fine-tuned predecessor/teacher use its run
    variants.sort(key=lambda v: v.label != REFERENCE)

    base = dict(backbone=args.backbone, dataset=args.dataset, batch_size=args.batch_size,
                max_length=args.max_length, seed=args.seed, max_eval_examples=args.max_eval_examples,
                # every method measured on the same batch shape, so memory and speed compare like for like
                padding="max")
    machine = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
               "platform": platform.platform(), "load_average_start": load_average(),
               "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(tmp)
        reference_run: str | None = None

        def settings_for(variant: Variant) -> dict:
            method_config = dict(variant.method_config)
            for field_name in METHODS[variant.method].reference_fields:
                method_config.setdefault(field_name, reference_run)
            extra = {"lr": variant.lr} if variant.lr is not None else {}
            return dict(base, method=variant.method, method_config=method_config, **extra)

        def ensure_reference(steps: int) -> None:
            nonlocal reference_run
            if reference_run is None:
                record, _ = run_engine(store, dict(base, method=REFERENCE, steps=steps, eval_every=steps))
                reference_run = record["id"]

        # -- phase 1: cost --------------------------------------------------------------------
        for variant in variants:
            if METHODS[variant.method].reference_fields:
                ensure_reference(max(args.steps, 60))
            config = dict(settings_for(variant), steps=args.steps, eval_every=args.steps,
                          max_train_examples=args.cost_examples, max_eval_examples=64, memory_every=1)
            print(f"[cost] {variant.label} ...", file=sys.stderr, flush=True)
            try:
                record, clocks = run_engine(store, config)
            except RunFailed as exc:
                if variant.label == REFERENCE:
                    raise SystemExit(f"the reference {REFERENCE} failed: {exc}")
                print(f"[cost] {variant.label} failed: {exc}", file=sys.stderr, flush=True)
                results[variant.label] = {"method": variant.method, "error": str(exc).splitlines()[0]}
                continue
            times = clocks[args.clock]
            epoch_steps = max(1, record["summary"]["dataset"]["sizes"]["train"] // args.batch_size)
            row = {
                "method": variant.method, "method_config": variant.method_config, "lr": record["summary"]["lr"],
                "trainable_params": record["summary"]["trainable_params"],
                "total_params": record["summary"]["total_params"],
                "peak_memory_bytes": record["metrics"]["peak_memory_bytes"],
                "memory_breakdown": record["metrics"]["memory_breakdown"],
                "cuda_max_allocated_bytes": record["metrics"].get("cuda_max_allocated_bytes"),
                # the first step pays one-off costs (allocations, optimizer state)
                "step_seconds_all": statistics.median(times[1:] or times),
                "step_seconds_first_epoch": statistics.median(times[1:epoch_steps] or times[:1]),
                "step_seconds_later_epochs": statistics.median(times[epoch_steps:]) if len(times) > epoch_steps else None,
                "wall_step_seconds": statistics.median(clocks["wall"][1:] or clocks["wall"]),
                "cpu_step_seconds": statistics.median(clocks["cpu"][1:] or clocks["cpu"]),
                "cost_steps": len(times), "cost_epoch_steps": epoch_steps,
            }
            summary = record["summary"].get("method_summary") or {}
            cached = "hidden_state_cache" in summary and row["step_seconds_later_epochs"] is not None
            if "hidden_state_cache" in summary:
                row["hidden_state_cache"] = summary["hidden_state_cache"]
            # with a cache the steady state is what later epochs cost; the first epoch is reported apart
            row["step_seconds"] = row["step_seconds_later_epochs"] if cached else row["step_seconds_all"]
            results[variant.label] = row

        # -- phase 2: accuracy at an equal training-time budget -----------------------------------
        if args.seconds > 0:
            for variant in variants:
                row = results[variant.label]
                if "error" in row:
                    continue
                if METHODS[variant.method].reference_fields:
                    ensure_reference(max(args.steps, 60))
                config = settings_for(variant)
                prepared_sizes = prepare_run(dict(config, steps=1), store).dataset.summary()["sizes"]
                epoch_steps = max(1, prepared_sizes["train"] // args.batch_size)
                first, later = row["step_seconds_first_epoch"], row["step_seconds_later_epochs"] or row["step_seconds"]
                if first * epoch_steps >= args.seconds:
                    steps = int(args.seconds / first)
                else:  # a cache makes every epoch after the first cheaper
                    steps = epoch_steps + int((args.seconds - first * epoch_steps) / later)
                steps = max(1, steps)
                print(f"[accuracy] {variant.label}: {steps} steps in ~{args.seconds:.0f} s ...", file=sys.stderr, flush=True)
                try:
                    record, clocks = run_engine(store, dict(config, steps=steps, eval_every=steps))
                except RunFailed as exc:
                    if variant.label == REFERENCE:
                        raise SystemExit(f"the reference {REFERENCE} failed: {exc}")
                    print(f"[accuracy] {variant.label} failed: {exc}", file=sys.stderr, flush=True)
                    row["accuracy_error"] = str(exc).splitlines()[0]
                    continue
                if variant.label == REFERENCE:  # a better predecessor/teacher than the short one
                    reference_run = record["id"]
                row.update({
                    "budget_steps": steps,
                    "budget_train_seconds": sum(clocks[args.clock]),
                    "budget_train_wall_seconds": sum(clocks["wall"]),
                    "val_accuracy": record["metrics"]["val_accuracy"],
                    "test_accuracy": record["metrics"]["test_accuracy"],
                })
                summary = record["summary"].get("method_summary") or {}
                if "hidden_state_cache" in summary:
                    row["budget_hidden_state_cache"] = summary["hidden_state_cache"]
                row["run_id"] = record["id"]
            inference_speedups(store, results, args)
    machine["load_average_end"] = load_average()

    ref = results[REFERENCE]
    for row in results.values():
        if "error" in row:
            continue
        row["vs_full_ft"] = {
            "trainable_params": ratio(row["trainable_params"], ref["trainable_params"]),
            "peak_memory": ratio(row["peak_memory_bytes"], ref["peak_memory_bytes"]),
            "activations": ratio(row["memory_breakdown"]["activations"], ref["memory_breakdown"]["activations"]),
            "step_time": ratio(row["step_seconds"], ref["step_seconds"]),
        }
        if "test_accuracy" in row and "test_accuracy" in ref:
            row["vs_full_ft"]["val_accuracy_points"] = 100 * (row["val_accuracy"] - ref["val_accuracy"])
            row["vs_full_ft"]["test_accuracy_points"] = 100 * (row["test_accuracy"] - ref["test_accuracy"])

    print_table(results, args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "settings": recorded_settings(args),
        "machine": machine, "methods": results,
    }, indent=2))
    print(f"\nwritten to {args.json}")


def print_table(results: dict, args) -> None:
    mb = 1024 * 1024
    header = (f"{'method':<14}{'trainable':>12}{'x ft':>8}{'peak MB':>9}{'x ft':>7}{'weights':>9}{'grads':>8}"
              f"{'optim':>8}{'activ':>8}{'s/step':>8}{'x ft':>7}{'steps':>7}{'val':>7}{'test':>7}{'Δtest':>7}")
    print(f"\n{args.backbone} + {args.dataset}, batch {args.batch_size}, every batch padded to length {args.max_length} "
          f"(padding=max, the same shape for every method); "
          f"memory in MB (breakdown: weights, gradients, optimizer state, activations saved for backward); "
          f"s/step and the accuracy budget ({args.seconds:.0f} s of training per method) count "
          f"{'wall-clock' if args.clock == 'wall' else 'process CPU'} seconds, {torch.get_num_threads()} thread(s)")
    print(header)
    print("-" * len(header))
    for label, row in results.items():
        if "error" in row:
            print(f"{label:<14}failed: {row['error']}")
            continue
        vs = row["vs_full_ft"]
        bd = row["memory_breakdown"]
        acc = ""
        if "test_accuracy" in row:
            delta = vs.get("test_accuracy_points")
            acc = (f"{row['budget_steps']:>7}{row['val_accuracy']:>7.3f}{row['test_accuracy']:>7.3f}"
                   f"{'' if delta is None else format(delta, '+.1f'):>7}")
        print(f"{label:<14}{row['trainable_params']:>12,}{vs['trainable_params']:>8.4f}"
              f"{row['peak_memory_bytes'] / mb:>9.1f}{vs['peak_memory']:>7.2f}"
              f"{bd['weights'] / mb:>9.1f}{bd['gradients'] / mb:>8.1f}{bd['optimizer'] / mb:>8.1f}"
              f"{bd['activations'] / mb:>8.1f}{row['step_seconds']:>8.3f}{vs['step_time']:>7.2f}{acc}")
    for label, row in results.items():
        if "inference_speedup" in row:
            print(f"{label}: its served model answers {row['inference_speedup']:.2f}x as fast as full fine-tuning's "
                  f"(forward pass, batch {args.batch_size} x {args.max_length}, alternating timed passes)")
    for label, row in results.items():
        if row.get("step_seconds_later_epochs") is not None and "hidden_state_cache" in row:
            print(f"{label}: s/step above is for cached epochs; first epoch {row['step_seconds_first_epoch']:.3f} "
                  f"s/step, later (cached) epochs "
                  f"{row['step_seconds_later_epochs']:.3f} s/step; cache {row['hidden_state_cache']['bytes'] / mb:.1f} MB")


if __name__ == "__main__":
    main()
