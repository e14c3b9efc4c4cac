"""Ladder Side-Tuning against full fine-tuning at convergence, and LST's memory-vs-accuracy trade-off.

For each seed: full fine-tuning, then LST with each reduction factor r (`--factors`) and each layer
dropping (`--droppings`: all layers, every other), then each named variant (`--variants`, see
VARIANTS: LST's final-state merge, the official code's schedule, a gate start nearer 1, and the
linear probe on the frozen backbone's final state, the floor of what a frozen backbone gives). Every run trains up to `--epochs` epochs with
validation twice an epoch and the run-level early stopping (`--patience` passes without a better
validation accuracy), keeping the best weights; test accuracy is that model's. LST caches the frozen
backbone's hidden states, so its later epochs run only the side network (same results, fewer
seconds). Each method's learning rate is the lab's default for it unless a variant sets one.

Memory is measured apart, once per configuration, on one shape for all (`--batch-size` x
`--max-length`, padding = max, 3 steps, no cache): the peak training memory with its breakdown.

Reported: test accuracy mean ± std over seeds, the gap to full fine-tuning in points, the epoch of
the best weights, trainable parameters, and peak memory as a fraction of full fine-tuning's.
Results are written after every run, so a stopped benchmark keeps what it finished, and a rerun
with the same shared settings (budget, data, shape) continues it: runs already in the JSON are kept,
not repeated, whatever roles the rerun asks for, and the table covers every role the JSON holds.

    python benchmarks/lst_convergence.py [--seeds 0,1,2] [--epochs 5] [--patience 2] [--factors 4,8,16]
        [--droppings all,every_other] [--variants merge,schedule,...] [--backbone minilm-l6] [--dataset rotten-tomatoes] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from app.config import RunConfig  # noqa: E402
from app.store import RunStore  # noqa: E402
from app.preparation import load_run_dataset, prepare_run  # noqa: E402
from app.runner import execute_run  # noqa: E402
from app.training import LoopHooks  # noqa: E402
from recorded import recorded_settings  # noqa: E402

FULL_FT = "full_ft"
CACHE_MB = 4096  # every hidden state of Rotten Tomatoes' training split at length 64 fits


# The official code's schedule (ylsung/Ladder-Side-Tuning): lr 3e-3 at batch 100, so 1e-3 at batch 32
# by the linear rule, weight decay 0, and (here) early stopping only in the second half, once the
# rate has fallen. Its warm-up (500 of some 7,000 steps) is the lab's 6% already.
OFFICIAL_SCHEDULE = {"lr": 1e-3, "weight_decay": 0.0, "patience_from": 0.5}
# variant name -> (role name, method, method settings, run settings)
VARIANTS: dict[str, tuple[str, str, dict, dict]] = {
    "merge": ("lst r=8 merge", "lst", {"final_merge": True}, {}),
    "schedule": ("lst r=8 official schedule", "lst", {}, OFFICIAL_SCHEDULE),
    "merge_schedule": ("lst r=8 merge + official schedule", "lst", {"final_merge": True}, OFFICIAL_SCHEDULE),
    "gate_0.9": ("lst r=8 gates start at 0.9", "lst", {"gate_init": 0.9}, {}),
    "probe": ("linear probe", "linear_probe", {}, {"lr": 1e-2}),
}


def configurations(args) -> dict[str, dict]:
    """Role name -> (method, method settings, run settings)."""
    roles = {FULL_FT: {"method": "full_ft", "method_config": {}, "run": {}}}
    for dropping in filter(None, args.droppings.split(",")):
        for factor in (int(f) for f in filter(None, args.factors.split(","))):
            roles[f"lst r={factor} {dropping}"] = {
                "method": "lst", "method_config": {"reduction_factor": factor, "layer_dropping": dropping}, "run": {}}
    for variant in filter(None, args.variants.split(",")):
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant '{variant}'; known: {', '.join(VARIANTS)}")
        role, method, method_config, run = VARIANTS[variant]
        roles[role] = {"method": method, "method_config": method_config, "run": run}
    return roles


def run_once(store: RunStore, config: dict, label: str) -> dict:
    prepared = prepare_run(config, store)
    run_id = store.create_run(prepared.config.as_dict())

    def on_step(step, total, loss):
        if step % 100 == 0:
            print(f"  {label}: step {step}/{total}, loss {loss:.3f}", flush=True)

    record = execute_run(store, run_id, LoopHooks(on_step=on_step), prepared=prepared)
    if record["status"] != "finished":
        raise SystemExit(f"{label}: {record['status']}: {record.get('error')}")
    return record


def measure_memory(store: RunStore, args, roles: dict[str, dict]) -> dict[str, dict]:
    out = {}
    for role, spec in roles.items():
        config = dict(backbone=args.backbone, dataset=args.dataset, method=spec["method"],
                      method_config=spec["method_config"], steps=3, eval_every=3,
                      batch_size=args.batch_size, max_length=args.max_length, padding="max", max_eval_examples=32,
                      seed=0, device="cpu")
        record = run_once(store, config, f"{role} memory")
        metrics = record["metrics"]
        out[role] = {"peak_memory_bytes": metrics["peak_memory_bytes"],
                     "memory_breakdown": metrics.get("memory_breakdown"),
                     "trainable_params": record["summary"]["trainable_params"]}
        print(f"{role}: peak {metrics['peak_memory_bytes'] / 2**20:.0f} MiB", flush=True)
    return out


def summarise(runs: list[dict], memory: dict[str, dict], roles: list[str]) -> dict:
    def stats(values):
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values}

    out = {}
    for role in roles:
        rows = [r for r in runs if r["role"] == role]
        if not rows:
            continue
        entry = {"test_accuracy": stats([r["test_accuracy"] for r in rows]),
                 "best_epoch": stats([r["best_epoch"] for r in rows]),
                 "epochs_trained": stats([r["epochs_trained"] for r in rows])}
        paired = [(r["test_accuracy"] - f["test_accuracy"]) * 100 for r in rows for f in runs
                  if f["role"] == FULL_FT and f["seed"] == r["seed"]]
        if role != FULL_FT and paired:
            entry["gap_to_full_ft_points"] = stats(paired)
        if role in memory:
            entry.update(memory[role])
            if FULL_FT in memory:
                entry["memory_vs_full_ft"] = memory[role]["peak_memory_bytes"] / memory[FULL_FT]["peak_memory_bytes"]
        out[role] = entry
    return out


# Which roles run, and the thread count (it changes the seconds, not the accuracies): not how.
ROLE_CHOICES = ("json", "seeds", "factors", "droppings", "variants", "torch_threads")


def shared(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in ROLE_CHOICES}


def earlier_results(path: Path, settings: dict) -> tuple[list[dict], dict[str, dict]]:
    """The runs and measured memory of an earlier invocation with the same shared settings (any
    seeds and roles), to continue it."""
    if not path.exists():
        return [], {}
    earlier = json.loads(path.read_text())
    if shared(earlier.get("settings", {})) != shared(settings):
        print(f"{path} holds runs with other settings; starting afresh", flush=True)
        return [], {}
    memory_fields = ("peak_memory_bytes", "memory_breakdown", "trainable_params")
    memory = {role: {k: row[k] for k in memory_fields if k in row}
              for role, row in earlier.get("summary", {}).items() if "peak_memory_bytes" in row}
    return list(earlier.get("runs", [])), memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=float, default=5.0, help="most epochs a run may take")
    parser.add_argument("--patience", type=int, default=2, help="validation passes without gain before stopping")
    parser.add_argument("--factors", default="4,8,16")
    parser.add_argument("--droppings", default="all,every_other")
    parser.add_argument("--variants", default="", help=f"named variants, comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--dataset", default="rotten-tomatoes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "lst_convergence.json"))
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    roles = configurations(args)

    train_examples = len(load_run_dataset(RunConfig(dataset=args.dataset, max_eval_examples=None)).train)
    steps_per_epoch = math.ceil(train_examples / args.batch_size)
    steps = int(round(args.epochs * steps_per_epoch))
    eval_every = max(1, steps_per_epoch // 2)
    print(f"{args.backbone} on {args.dataset}: up to {steps} steps ({args.epochs:g} epochs of batch "
          f"{args.batch_size}), validation every {eval_every} steps, patience {args.patience}", flush=True)

    settings = recorded_settings(args, steps=steps, eval_every=eval_every, train_examples=train_examples,
                                 torch_threads=torch.get_num_threads())
    del settings["seeds"]
    runs, memory = earlier_results(Path(args.json), settings)
    if runs:
        print(f"continuing {args.json}: {len(runs)} runs kept", flush=True)
    with tempfile.TemporaryDirectory() as runs_dir:
        store = RunStore(Path(runs_dir))
        memory.update(measure_memory(store, args, {role: spec for role, spec in roles.items() if role not in memory}))

        def all_roles() -> list[str]:
            return list(dict.fromkeys([r["role"] for r in runs] + list(roles)))

        def write(final: bool) -> None:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({
                "settings": dict(settings, seeds=",".join(sorted({str(r["seed"]) for r in runs} | set(map(str, seeds))))),
                "complete": final, "summary": summarise(runs, memory, all_roles()), "runs": runs}, indent=2) + "\n")

        write(False)
        for seed in seeds:
            for role, spec in roles.items():
                if any(r["role"] == role and r["seed"] == seed for r in runs):
                    continue
                method_config = dict(spec["method_config"])
                if spec["method"] == "lst":
                    method_config.update(cache_hidden_states=True, cache_mb=CACHE_MB)
                config = dict(backbone=args.backbone, dataset=args.dataset, method=spec["method"],
                              method_config=method_config, steps=steps, eval_every=eval_every,
                              patience=args.patience, batch_size=args.batch_size, max_length=args.max_length,
                              max_eval_examples=None, seed=seed, device="cpu", memory_every=50, **spec["run"])
                started = time.perf_counter()
                record = run_once(store, config, f"{role} seed {seed}")
                early = record["summary"]["early_stopping"]
                row = {"role": role, "seed": seed, "test_accuracy": record["metrics"]["test_accuracy"],
                       "val_accuracy": record["metrics"]["val_accuracy"], "best_step": early["best_step"],
                       "best_epoch": early["best_step"] / steps_per_epoch,
                       "epochs_trained": early["stopped_at_step"] / steps_per_epoch,
                       "seconds": time.perf_counter() - started}
                runs.append(row)
                print(f"{role} seed {seed}: test {row['test_accuracy']:.4f} (best at epoch {row['best_epoch']:.1f} "
                      f"of {row['epochs_trained']:.1f}, {row['seconds'] / 60:.1f} min)", flush=True)
                write(False)
        write(True)

    summary = summarise(runs, memory, list(dict.fromkeys([r["role"] for r in runs] + list(roles))))
    print("\n| configuration | test accuracy | vs full FT (points) | best epoch | peak memory | vs full FT |"
          "\n|---|---:|---:|---:|---:|---:|")
    for role, row in summary.items():
        gap = row.get("gap_to_full_ft_points")
        print(f"| {role} | {100 * row['test_accuracy']['mean']:.2f} ± {100 * row['test_accuracy']['std']:.2f} "
              f"| {'' if gap is None else format(gap['mean'], '+.2f')} | {row['best_epoch']['mean']:.1f} "
              f"| {row['peak_memory_bytes'] / 2**20:.0f} MiB | {row.get('memory_vs_full_ft', 1.0):.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
