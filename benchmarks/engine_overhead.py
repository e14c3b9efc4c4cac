"""What the engine's loop costs over a bare PyTorch loop, side by side in one process.

Both loops train the same model from the same initial weights on the same batches in the same
order, with AdamW, linear warm-up/decay and gradient clipping. The engine adds what it always
does: store writes every step, memory measurement at its default sampling, telemetry hooks.
Both pad every batch to max_length (the engine with padding=max), so each step does the same work.
Runs alternate (engine, bare, engine, bare, ...) so machine load affects both alike; the
figure is the ratio of median per-step times.

    python benchmarks/engine_overhead.py [--backbone minilm-l6] [--steps 30] [--repeats 3] [--json out.json]
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
import torch.nn.functional as F  # noqa: E402

from app.config import RunConfig  # noqa: E402
from app.data import tokenize_split  # noqa: E402
from app.store import RunStore  # noqa: E402
from app.preparation import prepare_run  # noqa: E402
from app.runner import execute_run  # noqa: E402
from app.training import adamw, linear_schedule, seed_everything  # noqa: E402


def engine_step_seconds(config: RunConfig, store: RunStore) -> float:
    prepared = prepare_run(config, store)
    run_id = store.create_run(config.as_dict())
    record = execute_run(store, run_id, prepared=prepared)
    if record["status"] != "finished":
        raise SystemExit(f"engine run {record['status']}: {record.get('error')}")
    steps = store.steps(run_id)
    # elapsed at the last step's log covers every step and every store write, not the final eval
    return steps[-1]["elapsed"] / len(steps)


def bare_step_seconds(config: RunConfig) -> float:
    prepared = prepare_run(config)
    seed_everything(config.seed)
    tensors = tokenize_split(prepared.backbone.tokenizer, prepared.dataset, "train", config.max_length)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = prepared.backbone.load_for_classification(prepared.dataset.label_names)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, lr=prepared.lr, weight_decay=config.weight_decay)  # the engine's optimizer
    warmup = int(round(config.steps * config.warmup_ratio))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, config.steps, warmup))
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(tensors["labels"]), generator=generator)
    start = time.perf_counter()
    for step in range(config.steps):
        idx = order[step * config.batch_size : (step + 1) * config.batch_size]
        batch = {k: v[idx] for k, v in tensors.items()}
        labels = batch.pop("labels")
        logits = model(**batch).logits
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
    return (time.perf_counter() - start) / config.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--dataset", default="rotten-tomatoes")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-every", type=int, default=RunConfig().memory_every)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()

    config = RunConfig(
        backbone=args.backbone, dataset=args.dataset, method="full_ft", steps=args.steps,
        batch_size=args.batch_size, max_length=args.max_length, eval_every=10**6,
        max_train_examples=args.steps * args.batch_size, max_eval_examples=64,
        memory_every=args.memory_every, seed=0,
        # the bare loop pads every batch to max_length, so the engine does too: same work per step
        padding="max",
    )
    engine_times, bare_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(tmp)
        bare_step_seconds(config)  # warm-up: tokenisation cache, weights in the page cache, kernels
        for repeat in range(args.repeats):
            engine_times.append(engine_step_seconds(config, store))
            bare_times.append(bare_step_seconds(config))
            print(f"repeat {repeat + 1}: engine {engine_times[-1] * 1000:.1f} ms/step, "
                  f"bare {bare_times[-1] * 1000:.1f} ms/step", file=sys.stderr)
    engine, bare = statistics.median(engine_times), statistics.median(bare_times)
    result = {
        "backbone": args.backbone, "batch_size": args.batch_size, "max_length": args.max_length,
        "steps": args.steps, "repeats": args.repeats, "memory_every": args.memory_every,
        "engine_ms_per_step": engine * 1000, "bare_ms_per_step": bare * 1000,
        "engine_over_bare": engine / bare,
        "engine_runs_ms": [t * 1000 for t in engine_times], "bare_runs_ms": [t * 1000 for t in bare_times],
    }
    print(f"{args.backbone}, batch {args.batch_size}, length {args.max_length}, memory measured every "
          f"{args.memory_every} step(s): engine {engine * 1000:.1f} ms/step vs bare loop {bare * 1000:.1f} ms/step "
          f"-> ratio {engine / bare:.3f} ({(engine / bare - 1) * 100:+.1f}%)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
