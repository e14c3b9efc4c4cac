"""Examples per second with dynamic padding, with fixed max-length padding, and with a plain
transformers `Trainer` (length-grouped sampling, `DataCollatorWithPadding`), side by side in one run.

Every configuration trains the same model (the lab's classifier on the backbone, same initial
weights) on the same data with the same optimizer (AdamW, weight decay 0.01 on matrices, linear
warm-up 6% and decay, gradient clipping at 1.0), for the same number of steps, with no evaluation
on the way. The lab's figure covers everything its loop does each step (batching, memory
measurement at its default sampling, a store write); the Trainer's is its own `train_runtime`.

Over a number of steps short of an epoch the two loops meet different examples (the Trainer's
sampler also starts with its longest batch), so besides examples/s every run reports padded
positions per second (batch × width summed over its steps, per second): the rate of work, which
compares equal work at any step count. With `--epoch` both loops train on the same examples and
examples/s compares equal work too.

Rounds run every configuration once each, in rotated order, so machine load hits all alike; the
figures are medians over rounds.

    python benchmarks/padding_speed.py [--steps 100 | --epoch] [--batch-size 32] [--max-length 64] [--rounds 1]
                                       [--methods full_ft,lst,lora] [--paddings dynamic,max]
                                       [--trainer-order length-grouped|lab] [--json out.json]
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

from app.config import RunConfig  # noqa: E402
from app.store import RunStore  # noqa: E402
from app.preparation import prepare_run  # noqa: E402
from app.runner import execute_run  # noqa: E402
from app.training import seed_everything  # noqa: E402
from recorded import recorded_settings  # noqa: E402


def lab_run(config: RunConfig, store: RunStore) -> dict:
    prepared = prepare_run(config, store)
    run_id = store.create_run(config.as_dict())
    record = execute_run(store, run_id, prepared=prepared)
    if record["status"] != "finished":
        raise SystemExit(f"{config.method} padding={config.padding}: {record['status']}: {record.get('error')}")
    steps = store.steps(run_id)
    seconds = steps[-1]["elapsed"]  # at the last step's store write: every step, not the final evaluation
    examples = sum(s["batch_shape"][0] for s in steps)
    positions = sum(s["batch_shape"][0] * s["batch_shape"][1] for s in steps)
    metrics = store.get_run(run_id)["metrics"]
    return {"seconds": seconds, "examples_per_second": examples / seconds, "positions": positions,
            "positions_per_second": positions / seconds,
            "tokens_per_second": metrics["tokens_per_second"], "padding_fraction": metrics["padding_fraction"],
            "peak_memory_mb": metrics["peak_memory_bytes"] / 2**20, "peak_shape": metrics["peak_memory_shape"]}


def trainer_run(config: RunConfig, lab_order: bool = False) -> dict:
    import datasets
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    prepared = prepare_run(config)
    tokenizer = prepared.backbone.tokenizer
    seed_everything(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = prepared.backbone.load_for_classification(prepared.dataset.label_names)
    train_split = prepared.dataset.train
    encoded = tokenizer(train_split.texts, truncation=True, max_length=config.max_length)
    dataset = datasets.Dataset.from_dict({**encoded, "labels": train_split.labels})
    shapes: list[tuple[int, int]] = []
    padder = DataCollatorWithPadding(tokenizer)

    def collate(features):
        batch = padder(features)
        shapes.append(tuple(batch["input_ids"].shape))
        return batch

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=config.batch_size, max_steps=config.steps,
            learning_rate=prepared.lr, weight_decay=config.weight_decay, warmup_steps=round(config.steps * config.warmup_ratio),
            lr_scheduler_type="linear", max_grad_norm=config.grad_clip, train_sampling_strategy="group_by_length",
            logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", use_cpu=True,
            seed=config.seed, dataloader_num_workers=0, disable_tqdm=True,
        )
        trainer_class = Trainer
        if lab_order:  # exactly the lab's batches, in the lab's order: equal work at any step count
            from app.data import tokenize_split
            from app.preparation import batcher_for

            tensors = tokenize_split(tokenizer, prepared.dataset, "train", config.max_length)
            order = [int(i) for batch in batcher_for(prepared).epoch(
                tensors, config.batch_size, torch.Generator().manual_seed(config.seed)) for i in batch]

            class LabOrderTrainer(Trainer):
                def _get_train_sampler(self, train_dataset=None):
                    return order

            trainer_class = LabOrderTrainer
        trainer = trainer_class(model=model, args=args, train_dataset=dataset, data_collator=collate,
                                processing_class=tokenizer)
        result = trainer.train()
    seconds = result.metrics["train_runtime"]
    trained = shapes[: config.steps]  # the data loader reads one batch ahead to see where the epoch ends
    examples = sum(rows for rows, _ in trained)
    positions = sum(rows * width for rows, width in trained)
    return {"seconds": seconds, "examples_per_second": examples / seconds, "positions": positions,
            "positions_per_second": positions / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--dataset", default="rotten-tomatoes")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="full_ft,lst,lora", help="lab methods to time both ways")
    parser.add_argument("--paddings", default="dynamic,max", help="lab paddings to time (dynamic, max or both)")
    parser.add_argument("--epoch", action="store_true",
                        help="train exactly one epoch (overrides --steps): every run then sees the same examples, "
                             "so examples/s compares equal work; over fewer steps each run meets other examples, "
                             "and the Trainer starts with its longest batch")
    parser.add_argument("--trainer-order", choices=("length-grouped", "lab"), default="length-grouped",
                        help="the Trainer's batches: its own length-grouped sampler, or exactly the lab's batches "
                             "in the lab's order (equal work at any step count)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.epoch:
        from app.preparation import load_run_dataset

        train_size = len(load_run_dataset(RunConfig.from_dict(dict(
            backbone=args.backbone, dataset=args.dataset, seed=args.seed))).train)
        args.steps = -(-train_size // args.batch_size)

    base = dict(backbone=args.backbone, dataset=args.dataset, steps=args.steps, batch_size=args.batch_size,
                max_length=args.max_length, eval_every=10**6, max_eval_examples=64, seed=args.seed, device="cpu")
    jobs: list[tuple[str, callable]] = []
    store = RunStore(tempfile.mkdtemp(prefix="padding-bench-"))
    for method in args.methods.split(","):
        for padding in args.paddings.split(","):
            config = RunConfig.from_dict(dict(base, method=method, padding=padding))
            jobs.append((f"{method} · lab padding={padding}", lambda c=config: lab_run(c, store)))
    jobs.append(("full_ft · transformers Trainer", lambda: trainer_run(RunConfig.from_dict(dict(base, method="full_ft")), args.trainer_order == "lab")))

    results: dict[str, list[dict]] = {name: [] for name, _ in jobs}
    for round_index in range(args.rounds):
        rotated = jobs[round_index % len(jobs):] + jobs[: round_index % len(jobs)]
        for name, job in rotated:
            started = time.perf_counter()
            results[name].append(job())
            print(f"round {round_index + 1}: {name}: {results[name][-1]['examples_per_second']:.1f} examples/s "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    def median(name, key):
        values = [r[key] for r in results[name] if r.get(key) is not None]
        return statistics.median(values) if values else None

    trainer_eps = median("full_ft · transformers Trainer", "examples_per_second")
    trainer_pps = median("full_ft · transformers Trainer", "positions_per_second")
    print(f"\n{args.backbone} + {args.dataset}, batch {args.batch_size}, max length {args.max_length}, "
          f"{args.steps} steps, no evaluation, CPU, {torch.get_num_threads()} threads, median of {args.rounds} round(s)\n")
    print("| run | examples/s | × Trainer | padded positions (k) | positions/s | × Trainer per position "
          "| × same method, padding=max | padded share | peak memory (MB) at shape |")
    print("|---|---|---|---|---|---|---|---|---|")
    table = []
    for name, _ in jobs:
        eps = median(name, "examples_per_second")
        pps = median(name, "positions_per_second")
        method = name.split(" · ")[0]
        max_name = f"{method} · lab padding=max"
        vs_max = eps / median(max_name, "examples_per_second") if max_name in results and "lab" in name else None
        row = {"run": name, "examples_per_second": eps, "vs_trainer": eps / trainer_eps if trainer_eps else None,
               "positions": median(name, "positions"), "positions_per_second": pps,
               "vs_trainer_per_position": pps / trainer_pps if trainer_pps else None,
               "vs_padding_max": vs_max, "padding_fraction": median(name, "padding_fraction"),
               "peak_memory_mb": median(name, "peak_memory_mb"),
               "peak_shape": results[name][-1].get("peak_shape")}
        table.append(row)
        shape = f" at {row['peak_shape'][0]}×{row['peak_shape'][1]}" if row["peak_shape"] else ""
        cells = [name, f"{eps:.1f}", f"{row['vs_trainer']:.2f}", f"{row['positions'] / 1000:.1f}", f"{pps:.0f}",
                 f"{row['vs_trainer_per_position']:.2f}",
                 "" if vs_max is None else f"{vs_max:.2f}",
                 "" if row["padding_fraction"] is None else f"{row['padding_fraction']:.0%}",
                 "" if row["peak_memory_mb"] is None else f"{row['peak_memory_mb']:.0f}{shape}"]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": recorded_settings(args), "rows": table, "raw": results}, indent=2))


if __name__ == "__main__":
    main()
