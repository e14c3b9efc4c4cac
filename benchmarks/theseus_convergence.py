"""BERT-of-Theseus 6 → 3 (`--layers`) at a budget long enough to converge, with seeds, against its baselines.

For each seed, one chain on the run manager: the predecessor (full fine-tuning of the backbone),
then from it Theseus with the linear scheduler (its automatic slope) and with the constant one
(p = 0.5, the paper's), and, with the same 3 layers, truncation (the backbone's first 3 layers,
fine-tuned) and distillation from the same predecessor. Every run trains `--epochs` epochs of the
training split with validation twice an epoch; Theseus's phase 2 stops early on validation and
keeps its best successor. Then each compressed model's CPU inference time is taken against the
predecessor's in alternating passes (batch 32 × max length), and its test accuracy retention.

Reported: test accuracy mean ± std over seeds, retention (compressed / predecessor), the margin
over truncation in points, and the inference speed-up. The paper's goal for Theseus: ≥ 97% of the
predecessor and above truncation. Results are written after every seed, so a stopped run keeps
what it finished.

    python benchmarks/theseus_convergence.py [--seeds 0,1,2] [--epochs 3] [--backbone minilm-l6]
        [--dataset rotten-tomatoes] [--layers 3] [--batch-size 32] [--max-length 64] [--runs-dir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from app.batching import Batcher  # noqa: E402
from app.checkpoints import load_run_model  # noqa: E402
from app.compression.measure import latency_batch, paired_latency_ms  # noqa: E402
from app.config import RunConfig  # noqa: E402
from app.data import tokenize_split  # noqa: E402
from app.manager import RunManager  # noqa: E402
from app.pipelines import queue_recipe, theseus_recipe  # noqa: E402
from app.store import RunStore  # noqa: E402
from app.preparation import load_run_dataset  # noqa: E402
from recorded import recorded_settings  # noqa: E402

ROLES = ("predecessor", "theseus linear", "theseus constant", "truncate", "distill")
COMPRESSED = ROLES[1:]


def seed_recipe(args, seed: int, steps: int, eval_every: int) -> dict[str, dict]:
    base = dict(backbone=args.backbone, dataset=args.dataset, batch_size=args.batch_size, max_length=args.max_length,
                steps=steps, eval_every=eval_every, max_eval_examples=None, seed=seed, device="cpu",
                name=f"theseus-convergence seed {seed}")
    recipe = theseus_recipe(base, layers=args.layers, include_truncate=True, include_distill=True,
                            theseus_settings={"scheduler": "linear"})
    linear = recipe["theseus"]
    constant = dict(linear, name=linear["name"].replace("Theseus", "Theseus (constant p)"),
                    method_config=dict(linear["method_config"], scheduler="constant", replace_rate=0.5))
    return dict(zip(ROLES, (recipe["predecessor"], linear, constant, recipe["truncate"], recipe["distill"])))


def inference_speedups(store: RunStore, ids: dict[str, str], args, repeats: int = 15) -> dict[str, float]:
    predecessor = load_run_model(store, ids["predecessor"])
    dataset = load_run_dataset(predecessor.config)
    tensors = tokenize_split(predecessor.backbone.tokenizer, dataset, "test", args.max_length)
    batch = latency_batch(tensors, 32, Batcher("max"))
    reference = predecessor.method.inference_model(predecessor.model)
    speedups = {}
    with torch.inference_mode():
        for role in COMPRESSED:
            loaded = load_run_model(store, ids[role])
            model_ms, reference_ms, _ = paired_latency_ms(loaded.method.inference_model(loaded.model), reference,
                                                          batch, repeats=repeats, warmup=2)
            speedups[role] = reference_ms / model_ms
    return speedups


def summarise(per_seed: list[dict]) -> dict:
    def stats(values):
        return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values}

    out = {}
    for role in ROLES:
        accuracy = [seed["test_accuracy"][role] for seed in per_seed]
        row = {"test_accuracy": stats(accuracy)}
        if role != "predecessor":
            row["retention"] = stats([s["test_accuracy"][role] / s["test_accuracy"]["predecessor"] for s in per_seed])
            row["speedup"] = stats([s["speedup"][role] for s in per_seed])
            row["over_truncation_points"] = stats([100 * (s["test_accuracy"][role] - s["test_accuracy"]["truncate"])
                                                   for s in per_seed])
        out[role] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--dataset", default="rotten-tomatoes")
    parser.add_argument("--layers", type=int, default=3, help="successor layers (the predecessor's count must divide)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--runs-dir", default="runs-benchmarks")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "theseus_convergence.json"))
    args = parser.parse_args()

    train_examples = len(load_run_dataset(RunConfig(dataset=args.dataset, max_eval_examples=None)).train)
    steps_per_epoch = math.ceil(train_examples / args.batch_size)
    steps = int(round(args.epochs * steps_per_epoch))
    eval_every = max(1, steps_per_epoch // 2)
    print(f"{args.backbone} on {args.dataset}: {train_examples} training examples, {steps} steps "
          f"({args.epochs:g} epochs of batch {args.batch_size}), validation every {eval_every} steps", flush=True)

    manager = RunManager(RunStore(args.runs_dir))
    per_seed = []
    try:
        for seed in (int(s) for s in args.seeds.split(",")):
            started = time.perf_counter()
            ids = queue_recipe(manager, seed_recipe(args, seed, steps, eval_every)).runs
            records = {role: manager.wait(run_id) for role, run_id in ids.items()}
            failed = {role: r.get("error") for role, r in records.items() if r["status"] != "finished"}
            if failed:
                raise SystemExit(f"seed {seed}: runs did not finish: {failed}")
            result = {
                "seed": seed, "run_ids": ids, "wall_seconds": time.perf_counter() - started,
                "test_accuracy": {role: r["metrics"]["test_accuracy"] for role, r in records.items()},
                "steps_done": {role: r["metrics"]["steps_done"] for role, r in records.items()},
                "theseus_best_step": {role: (records[role]["summary"].get("method_summary") or {}).get("best_step")
                                      for role in ("theseus linear", "theseus constant")},
                "speedup": inference_speedups(manager.store, ids, args),
            }
            per_seed.append(result)
            print(f"seed {seed} ({result['wall_seconds'] / 60:.1f} min): "
                  + ", ".join(f"{role} {acc:.4f}" for role, acc in result["test_accuracy"].items())
                  + "; speed-up " + ", ".join(f"{role} {s:.2f}x" for role, s in result["speedup"].items()), flush=True)
            Path(args.json).write_text(json.dumps({
                "settings": recorded_settings(args, steps=steps, eval_every=eval_every, train_examples=train_examples),
                "seeds": per_seed, "summary": summarise(per_seed)}, indent=2))
    finally:
        manager.shutdown(wait=True)

    summary = summarise(per_seed)
    print(f"\n{len(per_seed)} seeds, {args.epochs:g} epochs; test accuracy mean ± std")
    for role, row in summary.items():
        line = f"{role:<17} {100 * row['test_accuracy']['mean']:.2f} ± {100 * row['test_accuracy']['std']:.2f}"
        if "retention" in row:
            line += (f"  retention {100 * row['retention']['mean']:.1f}%  vs truncation "
                     f"{row['over_truncation_points']['mean']:+.2f} points  speed-up {row['speedup']['mean']:.2f}x")
        print(line)


if __name__ == "__main__":
    main()
