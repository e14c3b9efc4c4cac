"""Accuracy, size and CPU latency of a fine-tuned encoder under pruning and quantization.

Fine-tunes MiniLM-L6 on Rotten Tomatoes (full fine-tuning; a few CPU minutes) unless a finished
run id is given, then sweeps unstructured sparsity 0.1..0.9, attention-head and FFN pruning,
fp16/bf16, dynamic int8 and 8/4/2/1-bit weight fake-quant through `app.compression.compress_run`
(the same code as `python -m app compress`). The int8-vs-fp32 latency target is checked with a
separate paired measurement: the models take turns on the same batch, round after round, so
machine load falls on all of them alike.

Targets: dynamic int8 at least 1.5x faster than fp32 on CPU with at most 1.5 points of accuracy
lost; the accuracy curves over sparsity and bit width are reported as measured.

    python benchmarks/quantization_sweep.py [--run-id ID] [--runs-dir runs] [--steps 250] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from app.compression import compress_run  # noqa: E402
from app.compression.measure import latency_batch  # noqa: E402
from app.compression.quantization import cast_half, dynamic_int8  # noqa: E402
from app.store import RunStore  # noqa: E402

INT8_SPEEDUP_TARGET = 1.5
INT8_ACCURACY_LOSS_TARGET = 0.015


def train_predecessor(store: RunStore, args) -> str:
    from app.preparation import prepare_run
    from app.runner import execute_run
    from app.training import LoopHooks

    config = dict(backbone="minilm-l6", dataset="rotten-tomatoes", method="full_ft", steps=args.steps,
                  batch_size=32, max_length=64, eval_every=max(1, args.steps // 2), memory_every=50,
                  max_eval_examples=args.max_eval_examples, seed=0, name="quantization sweep predecessor")
    prepared = prepare_run(config, store)
    run_id = store.create_run(prepared.config.as_dict())
    started = time.perf_counter()

    def on_step(step, total, loss):
        if step % 25 == 0 or step == total:
            print(f"  train step {step}/{total} loss {loss:.4f} ({time.perf_counter() - started:.0f} s)",
                  file=sys.stderr, flush=True)

    threads = torch.get_num_threads()
    if args.train_threads:
        torch.set_num_threads(args.train_threads)  # training speed only; latency is timed with the default
    try:
        record = execute_run(store, run_id, LoopHooks(on_step=on_step), prepared=prepared)
    finally:
        torch.set_num_threads(threads)
    if record["status"] != "finished":
        raise SystemExit(f"training failed: {record.get('error')}")
    print(f"trained run {run_id}: test accuracy {record['metrics']['test_accuracy']:.4f} in "
          f"{record['metrics']['train_seconds']:.0f} s", file=sys.stderr)
    return run_id


@torch.inference_mode()
def paired_latency(models: dict, batch: dict, rounds: int, warmup: int) -> dict:
    """Median ms per forward pass of each model, the models taking turns every round."""
    times = {name: [] for name in models}
    for model in models.values():
        model.eval()
    for round_index in range(warmup + rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model(**batch)
            if round_index >= warmup:
                times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: {"median_ms": statistics.median(t), "min_ms": min(t), "runs_ms": [round(v, 2) for v in t]}
            for name, t in times.items()}


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_table(points: list[dict]) -> None:
    base = next(p for p in points if p["kind"] == "baseline")
    print(f"{'kind':<13}{'setting':<13}{'test acc':>9}{'Δ pts':>7}{'agree':>7}{'drift':>7}"
          f"{'params':>12}{'nonzero':>12}{'MiB':>8}{'size':>6}{'ms/batch':>10}{'speed':>7}")
    for p in points:
        acc, latency = p.get("test_accuracy"), p.get("latency_ms")
        delta = None if acc is None else (acc - base["test_accuracy"]) * 100
        speed = None if latency is None else base["latency_ms"] / latency
        print(f"{p['kind']:<13}{p['setting']:<13}{_cell(acc, '.4f'):>9}{_cell(delta, '+.1f'):>7}"
              f"{_cell(p.get('agreement'), '.3f'):>7}{_cell(p.get('logit_drift'), '.3f'):>7}"
              f"{_cell(p.get('params'), ','):>12}{_cell(p.get('nonzero_params'), ','):>12}"
              f"{p['bytes'] / 2**20:>8.1f}{p['bytes'] / base['bytes']:>6.2f}"
              f"{_cell(latency, '.1f'):>10}{_cell(speed, '.2f'):>6}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", help="a finished run to compress (default: fine-tune one first)")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--steps", type=int, default=250, help="fine-tuning steps when no run id is given")
    parser.add_argument("--max-eval-examples", type=int, default=1000,
                        help="validation/test examples of the fine-tuned run (its test split is what is scored)")
    parser.add_argument("--train-threads", type=int,
                        help="CPU threads while fine-tuning (default: torch's); timing always uses torch's default")
    parser.add_argument("--sparsities", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    parser.add_argument("--heads", type=int, default=4, help="attention heads removed per layer")
    parser.add_argument("--ffn", type=float, default=0.5, help="fraction of FFN neurons removed per layer")
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per point / paired rounds")
    parser.add_argument("--json", help="write the results here (default: RUNS_DIR/quantization_sweep.json)")
    args = parser.parse_args()

    store = RunStore(args.runs_dir)
    run_id = args.run_id or train_predecessor(store, args)
    record = store.get_run(run_id)
    plan = {
        "sparsities": [float(s) for s in args.sparsities.split(",") if s.strip()],
        "scope": "global",
        "structured_heads": args.heads,
        "structured_ffn": args.ffn,
        "quantize": ["fp16", "bf16", "int8", "8bit", "4bit", "2bit", "1bit"],
        "latency_repeats": args.repeats,
        "latency_warmup": 2,
    }
    started = time.perf_counter()
    points = compress_run(store, run_id, plan, progress=lambda done, total, message: print(
        f"  [{done}/{total}] {message} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True))
    sweep_seconds = time.perf_counter() - started
    by_key = {p["key"]: p for p in points}

    # Paired latency: fp32, int8, bf16 (and fp16 when it is not far slower) take turns.
    from app.checkpoints import load_run_model
    from app.data import tokenize_split
    from app.preparation import prepare_run

    loaded = load_run_model(store, run_id, "cpu")
    fp32 = loaded.method.inference_model(loaded.model).eval()
    prepared = prepare_run(dict(record["config"], device="cpu"), store)
    test = tokenize_split(prepared.backbone.tokenizer, prepared.dataset, "test", prepared.config.max_length)
    batch = latency_batch(test, 32)
    models = {"fp32": fp32, "int8": dynamic_int8(fp32), "bf16": cast_half(copy.deepcopy(fp32), "bf16")}
    if by_key["fp16"].get("latency_ms") and by_key["fp16"]["latency_ms"] < 5 * by_key["baseline"]["latency_ms"]:
        models["fp16"] = cast_half(copy.deepcopy(fp32), "fp16")
    paired = paired_latency(models, batch, rounds=args.repeats * 2, warmup=2)

    base_acc = by_key["baseline"]["test_accuracy"]
    int8_speedup = paired["fp32"]["median_ms"] / paired["int8"]["median_ms"]
    int8_loss = base_acc - by_key["int8"]["test_accuracy"]
    print()
    print(f"run {run_id}: {record['backbone']} on {record['dataset']}, {record['method']}, "
          f"{record['config']['steps']} steps; test split {by_key['baseline']['test_examples']} examples; "
          f"latency batch {by_key['baseline']['latency_batch']} on {torch.get_num_threads()} CPU threads; "
          f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print_table(points)
    print()
    print("paired latency (models taking turns on one batch of 32 x max length):")
    for name, value in paired.items():
        print(f"  {name:<5} median {value['median_ms']:8.1f} ms ({paired['fp32']['median_ms'] / value['median_ms']:.2f}x "
              f"fp32), fastest {value['min_ms']:8.1f} ms ({paired['fp32']['min_ms'] / value['min_ms']:.2f}x fp32)")
    print(f"target int8 >= {INT8_SPEEDUP_TARGET}x faster: {int8_speedup:.2f}x -> "
          f"{'met' if int8_speedup >= INT8_SPEEDUP_TARGET else 'NOT met'}")
    print(f"target int8 loses <= {INT8_ACCURACY_LOSS_TARGET * 100:.1f} points: {int8_loss * 100:+.2f} -> "
          f"{'met' if int8_loss <= INT8_ACCURACY_LOSS_TARGET else 'NOT met'}")
    print(f"sweep took {sweep_seconds:.0f} s")

    out = Path(args.json) if args.json else Path(args.runs_dir) / "quantization_sweep.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "run_id": run_id, "backbone": record["backbone"], "dataset": record["dataset"],
        "steps": record["config"]["steps"], "threads": torch.get_num_threads(), "plan": plan,
        "points": points, "paired_latency": paired,
        "targets": {"int8_speedup": int8_speedup, "int8_speedup_target": INT8_SPEEDUP_TARGET,
                    "int8_accuracy_loss": int8_loss, "int8_accuracy_loss_target": INT8_ACCURACY_LOSS_TARGET},
        "sweep_seconds": sweep_seconds, "load_average": os.getloadavg(), "cpu_count": os.cpu_count(),
    }, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
