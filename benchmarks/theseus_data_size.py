"""BERT-of-Theseus against truncation as the training set shrinks: where does module replacement pay?

The paper's margins over truncation are largest on its small tasks (RTE, MRPC, CoLA). For each
training-set size (`--sizes`, the first N examples of the shuffled training split) and seed, one
chain on the run manager: the predecessor (full fine-tuning of the backbone), Theseus 6 → 3 from it
with the linear scheduler and with the constant one (p = 0.5), and truncation to the same 3 layers.
Every run takes the same number of steps (`--steps`, however many epochs that is) and evaluates
every `--eval-every` steps on the whole validation split, and every run stops early the same way:
after `--patience` passes without a better validation accuracy, never before half the run, keeping
its best weights (Theseus' phase 2 starts at half the run and stops by its own patience, set equal).
Test accuracy is on the whole test split.

Reported per size: test accuracy mean ± std over seeds, and successor − truncation in points,
paired by seed. Results are written after every chain, and a rerun with the same settings keeps
the chains already done.

    python benchmarks/theseus_data_size.py [--sizes 500,1000,2000] [--seeds 0,1,2] [--steps 300]
        [--eval-every 25] [--patience 3] [--backbone minilm-l6] [--dataset rotten-tomatoes] [--json out.json]
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

from app.manager import RunManager  # noqa: E402
from app.pipelines import queue_recipe, theseus_recipe  # noqa: E402
from app.store import RunStore  # noqa: E402
from recorded import recorded_settings  # noqa: E402

ROLES = ("predecessor", "theseus linear", "theseus constant", "truncate")
SUCCESSORS = ("theseus linear", "theseus constant")


def chain(args, size: int, seed: int) -> dict[str, dict]:
    stopping = {"patience": args.patience, "patience_from": 0.5}
    base = dict(backbone=args.backbone, dataset=args.dataset, batch_size=args.batch_size, max_length=args.max_length,
                steps=args.steps, eval_every=args.eval_every, max_train_examples=size, max_eval_examples=None,
                seed=seed, device="cpu", name=f"theseus data size {size} seed {seed}")
    recipe = theseus_recipe(base, layers=args.layers, include_truncate=True,
                            predecessor_overrides=stopping,
                            theseus_settings={"scheduler": "linear", "patience": args.patience})
    linear = recipe["theseus"]
    constant = dict(linear, name=linear["name"] + " (constant p)",
                    method_config=dict(linear["method_config"], scheduler="constant", replace_rate=0.5))
    truncate = dict(recipe["truncate"], **stopping)
    return dict(zip(ROLES, (recipe["predecessor"], linear, constant, truncate)))


def summarise(chains: list[dict]) -> dict:
    def stats(values):
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values}

    out = {}
    for size in sorted({c["size"] for c in chains}):
        rows = [c for c in chains if c["size"] == size]
        entry = {"seeds": [c["seed"] for c in rows],
                 "test_accuracy": {role: stats([c["test_accuracy"][role] for c in rows]) for role in ROLES}}
        entry["over_truncation_points"] = {
            role: stats([100 * (c["test_accuracy"][role] - c["test_accuracy"]["truncate"]) for c in rows])
            for role in SUCCESSORS}
        out[str(size)] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500,1000,2000")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--dataset", default="rotten-tomatoes")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "theseus_data_size.json"))
    args = parser.parse_args(argv)
    settings = recorded_settings(args)
    shared = {k: v for k, v in settings.items() if k not in ("sizes", "seeds")}
    path = Path(args.json)
    chains: list[dict] = []
    if path.exists():
        earlier = json.loads(path.read_text())
        if {k: v for k, v in earlier["settings"].items() if k not in ("sizes", "seeds")} == shared:
            chains = earlier["chains"]
            print(f"continuing {path}: {len(chains)} chains kept", flush=True)

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"settings": settings, "summary": summarise(chains), "chains": chains}, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as runs_dir:
        manager = RunManager(RunStore(Path(runs_dir)))
        try:
            for seed in (int(s) for s in args.seeds.split(",")):
                for size in (int(s) for s in args.sizes.split(",")):
                    if any(c["size"] == size and c["seed"] == seed for c in chains):
                        continue
                    started = time.perf_counter()
                    ids = queue_recipe(manager, chain(args, size, seed)).runs
                    records = {role: manager.wait(run_id) for role, run_id in ids.items()}
                    failed = {role: r.get("error") for role, r in records.items() if r["status"] != "finished"}
                    if failed:
                        raise SystemExit(f"size {size} seed {seed}: runs did not finish: {failed}")
                    row = {"size": size, "seed": seed, "minutes": (time.perf_counter() - started) / 60,
                           "test_accuracy": {role: r["metrics"]["test_accuracy"] for role, r in records.items()},
                           "steps_done": {role: r["metrics"]["steps_done"] for role, r in records.items()}}
                    chains.append(row)
                    write()
                    print(f"size {size} seed {seed} ({row['minutes']:.1f} min): "
                          + ", ".join(f"{role} {acc:.4f}" for role, acc in row["test_accuracy"].items()), flush=True)
        finally:
            manager.shutdown(wait=True)
    write()
    print("\n| training examples | predecessor | Theseus linear | Theseus constant | truncation "
          "| linear − truncation | constant − truncation |\n|---:|---:|---:|---:|---:|---:|---:|")
    for size, entry in summarise(chains).items():
        accuracy, over = entry["test_accuracy"], entry["over_truncation_points"]
        cells = [f"{100 * accuracy[r]['mean']:.2f} ± {100 * accuracy[r]['std']:.2f}" for r in ROLES]
        gaps = [f"{over[r]['mean']:+.2f} ± {over[r]['std']:.2f}" for r in SUCCESSORS]
        print(f"| {size} ({len(entry['seeds'])} seeds) | " + " | ".join(cells + gaps) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
