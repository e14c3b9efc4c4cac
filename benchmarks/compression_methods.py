"""BERT-of-Theseus against its baselines on MiniLM-L6 + Rotten Tomatoes, side by side in one run.

Trains, one after another in this process (CPU unless --device says otherwise):
  predecessor          full fine-tuning of all 6 layers
  theseus              BERT-of-Theseus 6 -> 3 from that predecessor (official init: layers 0..2)
  theseus_block_last   the same, each successor layer starting as the last layer of its block
  truncate             fine-tuning of the backbone's first 3 layers only
  distill              distillation of the predecessor into the backbone's first 3 layers
  (distill_teacher_init on request: the student starts as teacher layers 2, 4, 6)
then reports, for each inference model: test accuracy (the whole test split), CPU inference time
for one batch of 32 (the same inputs for every model; models alternate within each repeat so
machine load hits all alike; median over repeats), parameters and bytes.

Targets from the paper, checked at the end: the Theseus successor keeps >= 97% of the
predecessor's accuracy, beats truncation by >= 1 point, and is >= 1.8x faster than the predecessor.

    python benchmarks/compression_methods.py [--predecessor-steps 300] [--steps 300] [--batch-size 32]
        [--max-length 64] [--theseus KEY=VALUE ...] [--predecessor RUN_ID --runs-dir DIR] [--json out.json]
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

import torch  # noqa: E402

from app.checkpoints import load_run_model  # noqa: E402
from app.cli import parse_sets  # noqa: E402
from app.data import load_dataset, tokenize_split  # noqa: E402
from app.methods.base import model_inputs  # noqa: E402
from app.memory import count_parameters  # noqa: E402
from app.methods.layer_surgery import parameter_bytes  # noqa: E402
from app.store import RunStore  # noqa: E402
from app.preparation import prepare_run  # noqa: E402
from app.runner import execute_run  # noqa: E402
from recorded import recorded_settings  # noqa: E402

# name -> (method, extra method settings); "layers" and the predecessor/teacher are added per run
VARIANTS: dict[str, tuple[str, dict]] = {
    "theseus": ("theseus", {}),  # official: successor starts as predecessor layers 0..m-1
    "theseus_block_last": ("theseus", {"successor_init": "block_last"}),
    "truncate": ("truncate", {}),
    "distill": ("distill", {}),  # student: the backbone's first m layers
    "distill_teacher_init": ("distill", {"student_init": "teacher"}),
}

TARGET_ACCURACY_KEPT = 0.97
TARGET_MARGIN_OVER_TRUNCATE = 0.01
TARGET_SPEEDUP = 1.8


def train_run(store: RunStore, config: dict, label: str) -> dict:
    prepared = prepare_run(config, store)
    run_id = store.create_run(prepared.config.as_dict())
    started = time.perf_counter()
    print(f"[{label}] training {config['method']} for {config['steps']} steps (run {run_id}) ...", flush=True)
    record = execute_run(store, run_id, prepared=prepared)
    if record["status"] != "finished":
        raise SystemExit(f"[{label}] run {run_id} {record['status']}: {record.get('error')}")
    metrics = record["metrics"]
    print(f"[{label}] done in {time.perf_counter() - started:.0f} s: val {metrics['val_accuracy']:.4f}, "
          f"test {metrics['test_accuracy']:.4f}", flush=True)
    return record


def time_inference(models: dict[str, torch.nn.Module], batch: dict, repeats: int, warmup: int = 3) -> dict[str, list[float]]:
    inputs = model_inputs(batch)
    timings: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):
                model(**inputs)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(**inputs)
                timings[name].append((time.perf_counter() - start) * 1000.0)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--dataset", default="rotten-tomatoes")
    parser.add_argument("--layers", type=int, default=3, help="layers of the compressed models")
    parser.add_argument("--predecessor-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=300, help="steps of each compressed model's run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--max-train-examples", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="training device; inference is always timed on CPU")
    parser.add_argument("--repeats", type=int, default=20, help="timed batches per model")
    parser.add_argument("--theseus", action="append", metavar="KEY=VALUE", help="a Theseus setting (repeatable)")
    parser.add_argument("--distill", action="append", metavar="KEY=VALUE", help="a distillation setting")
    parser.add_argument("--theseus-lr", type=float)
    parser.add_argument("--methods", default="theseus,theseus_block_last,truncate,distill",
                        help=f"compressed models to train, comma separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--predecessor", help="reuse this finished predecessor run of --runs-dir")
    parser.add_argument("--runs-dir", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", help="write the results here (default: <runs-dir>/compression_methods.json)")
    args = parser.parse_args(argv)

    runs_dir = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="compression-bench-"))
    store = RunStore(runs_dir)
    base = dict(backbone=args.backbone, dataset=args.dataset, batch_size=args.batch_size,
                max_length=args.max_length, eval_every=args.eval_every, max_eval_examples=None,
                max_train_examples=args.max_train_examples, seed=args.seed, device=args.device,
                memory_every=25)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in VARIANTS]
    if unknown:
        parser.error(f"unknown --methods {unknown}; choose from {', '.join(VARIANTS)}")
    print(f"runs in {runs_dir}; torch threads: {torch.get_num_threads()}", flush=True)

    if args.predecessor:
        predecessor = store.get_run(args.predecessor)
        print(f"[predecessor] reusing run {args.predecessor}: test {predecessor['metrics']['test_accuracy']:.4f}")
    else:
        predecessor = train_run(store, dict(base, method="full_ft", steps=args.predecessor_steps,
                                            name="predecessor"), "predecessor")
    records = {"predecessor": predecessor}
    shared = {
        "theseus": {"predecessor": predecessor["id"], **parse_sets(args.theseus)},
        "truncate": {},
        "distill": {"teacher": predecessor["id"], **parse_sets(args.distill)},
    }
    for name in methods:
        method, extra = VARIANTS[name]
        settings = {"layers": args.layers, **shared[method], **extra}
        config = dict(base, method=method, steps=args.steps, method_config=settings, name=name)
        if method == "theseus" and args.theseus_lr:
            config["lr"] = args.theseus_lr
        records[name] = train_run(store, config, name)

    print("timing CPU inference ...", flush=True)
    data = load_dataset(args.dataset, split_seed=0, max_eval_examples=None)
    models, rows = {}, {}
    for name, record in records.items():
        loaded = load_run_model(store, record["id"], "cpu")
        model = loaded.method.inference_model(loaded.model).eval()
        models[name] = model
        rows[name] = {
            "name": name,
            "method": record["method"],
            "run_id": record["id"],
            "layers": model.config.num_hidden_layers,
            "steps": record["metrics"]["steps_done"],
            "lr": record["summary"].get("lr"),
            "train_seconds": record["metrics"]["train_seconds"],
            "val_accuracy": record["metrics"]["val_accuracy"],
            "test_accuracy": record["metrics"]["test_accuracy"],
            "params": count_parameters(model),
            "bytes": parameter_bytes(model),
        }
        if record["method"] == "theseus":
            rows[name]["theseus"] = record["summary"].get("method_summary")
    tokenizer = loaded.backbone.tokenizer
    test = tokenize_split(tokenizer, data, "test", args.max_length)
    batch = {k: v[:32] for k, v in test.items()}
    timings = time_inference(models, batch, args.repeats)
    reference_ms = statistics.median(timings["predecessor"])
    reference_accuracy = rows["predecessor"]["test_accuracy"]
    for name, row in rows.items():
        row["latency_ms"] = statistics.median(timings[name])
        row["latency_ms_all"] = [round(t, 3) for t in timings[name]]
        row["speedup"] = reference_ms / row["latency_ms"]
        row["accuracy_kept"] = row["test_accuracy"] / reference_accuracy if reference_accuracy else None

    header = f"{'model':<20} {'layers':>6} {'steps':>6} {'test acc':>9} {'kept':>7} {'ms/batch32':>11} " \
             f"{'speedup':>8} {'params':>11} {'MB':>7} {'train s':>8}"
    print()
    print(header)
    print("-" * len(header))
    for row in rows.values():
        print(f"{row['name']:<20} {row['layers']:>6} {row['steps']:>6} {row['test_accuracy']:>9.4f} "
              f"{row['accuracy_kept']:>7.1%} {row['latency_ms']:>11.1f} {row['speedup']:>7.2f}x "
              f"{row['params']:>11,} {row['bytes'] / 2**20:>7.1f} {row['train_seconds']:>8.0f}")
    print(f"(test split: {len(test['labels'])} examples; inference: CPU, batch of 32 at length {args.max_length}, "
          f"median of {args.repeats}, {torch.get_num_threads()} threads)")

    targets: dict[str, dict[str, bool]] = {}
    for name, row in rows.items():
        if row["method"] != "theseus":
            continue
        met = {
            "keeps_97_percent": row["accuracy_kept"] >= TARGET_ACCURACY_KEPT,
            "speedup_1_8x": row["speedup"] >= TARGET_SPEEDUP,
        }
        print()
        if "truncate" in rows:
            margin = row["test_accuracy"] - rows["truncate"]["test_accuracy"]
            met["beats_truncate_by_1_point"] = margin >= TARGET_MARGIN_OVER_TRUNCATE
            print(f"{name} - truncate: {100 * margin:+.1f} points")
        summary = row.get("theseus") or {}
        print(f"{name}: predecessor val accuracy {summary.get('predecessor', {}).get('val_accuracy')}, "
              f"phase 2 from step {summary.get('phase2_start_step')}, best step {summary.get('best_step')}, "
              f"stopped early: {summary.get('stopped_early')}")
        for target, ok in met.items():
            print(f"  target {target}: {'met' if ok else 'MISSED'}")
        targets[name] = met

    out = Path(args.json) if args.json else runs_dir / "compression_methods.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "settings": recorded_settings(args),
        "test_examples": int(len(test["labels"])),
        "threads": torch.get_num_threads(),
        "rows": list(rows.values()),
        "targets": targets,
    }, indent=2, default=str))
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
