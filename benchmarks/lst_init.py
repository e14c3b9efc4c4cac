"""How LST's side network should start: pruned by magnitude, pruned by Fisher importance, or random.

Trains LST (r = 8, every layer) on MiniLM-L6 + Rotten Tomatoes once per init and seed, the same
budget, data order and evaluation examples for all, and reports mean and standard deviation over
seeds of validation and test accuracy, with the seconds the init itself took (Fisher scores one
training example per backward pass).

    python benchmarks/lst_init.py [--seeds 0,1,2] [--steps 80] [--batch-size 16] [--max-length 64]
        [--max-eval-examples 300] [--inits magnitude,fisher,random] [--json out.json]
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

from app.cli import parse_sets  # noqa: E402
from app.store import RunStore  # noqa: E402
from app.preparation import prepare_run  # noqa: E402
from app.runner import execute_run  # noqa: E402
from app.training import LoopHooks  # noqa: E402


def summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def report(args, seeds: list[int], inits: list[str], extra: dict, runs: list[dict], *, final: bool) -> None:
    """Summarise the runs so far; print the table at the end, write the JSON every time."""
    results = {"setup": {"backbone": args.backbone, "dataset": args.dataset, "steps": args.steps,
                         "batch_size": args.batch_size, "max_length": args.max_length,
                         "max_eval_examples": args.max_eval_examples, "seeds": seeds, "lst": extra,
                         "torch_threads": torch.get_num_threads()},
               "complete": final, "inits": {}, "runs": runs}
    if final:
        print("\n| init | val acc | test acc | s to first step |\n|---|---:|---:|---:|")
    for init in inits:
        rows = [r for r in runs if r["init"] == init]
        if not rows:
            continue
        entry = {key: summary([r[key] for r in rows]) for key in ("val_accuracy", "test_accuracy", "seconds_to_first_step")}
        results["inits"][init] = entry
        if final:
            print(f"| {init} | {entry['val_accuracy']['mean']:.3f} ± {entry['val_accuracy']['std']:.3f} "
                  f"| {entry['test_accuracy']['mean']:.3f} ± {entry['test_accuracy']['std']:.3f} "
                  f"| {entry['seconds_to_first_step']['mean']:.0f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        if final:
            print(f"wrote {args.json}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--dataset", default="rotten-tomatoes")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--inits", default="magnitude,fisher,random")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--max-eval-examples", type=int, default=300)
    parser.add_argument("--lst", action="append", metavar="KEY=VALUE", help="another LST setting (repeatable)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    inits = args.inits.split(",")
    extra = parse_sets(args.lst or [])

    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as runs_dir:
        store = RunStore(Path(runs_dir))
        for seed in seeds:
            for init in inits:  # inits alternate within a seed so machine load falls on all alike
                config = {"backbone": args.backbone, "dataset": args.dataset, "method": "lst",
                          "method_config": {"init": init, **extra}, "steps": args.steps,
                          "batch_size": args.batch_size, "max_length": args.max_length, "seed": seed,
                          "eval_every": args.steps, "max_eval_examples": args.max_eval_examples,
                          "memory_every": args.steps, "device": args.device}
                prepared = prepare_run(config, store)
                run_id = store.create_run(prepared.config.as_dict())
                marks: dict[str, float] = {"start": time.perf_counter()}

                def on_step(step, total, loss, init=init, seed=seed, marks=marks):
                    marks.setdefault("first_step", time.perf_counter())
                    if step % 20 == 0:
                        print(f"  {init} seed {seed}: step {step}/{total}, loss {loss:.3f}", flush=True)

                hooks = LoopHooks(on_step=on_step,
                                  on_message=lambda message: print(f"  {init} seed {seed}: {message}", flush=True))
                record = execute_run(store, run_id, hooks, prepared=prepared)
                if record["status"] != "finished":
                    raise SystemExit(f"{init} seed {seed}: {record['status']}: {record.get('error')}")
                metrics = record["metrics"]
                row = {"init": init, "seed": seed, "val_accuracy": metrics["val_accuracy"],
                       "test_accuracy": metrics["test_accuracy"],
                       "seconds_to_first_step": marks["first_step"] - marks["start"],
                       "seconds": time.perf_counter() - marks["start"]}
                runs.append(row)
                print(f"{init:9s} seed {seed}: val {row['val_accuracy']:.4f} test {row['test_accuracy']:.4f} "
                      f"({row['seconds_to_first_step']:.0f} s to the first step, {row['seconds']:.0f} s in all)",
                      flush=True)
                report(args, seeds, inits, extra, runs, final=False)  # a cut-short benchmark keeps its runs

    report(args, seeds, inits, extra, runs, final=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
