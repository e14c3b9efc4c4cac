"""Full fine-tuning of a language model: the lab's loop against transformers' `Trainer` on equal work.

Both train `--backbone` (SmolLM2-135M by default) as a causal LM on the same packed blocks of
`--dataset` (the lab's own tokenisation: `--batch-size` × `--max-length` tokens, no padding), with
AdamW at the lab's default learning rate, weight decay, warm-up and gradient clipping, a linear
schedule, the same seed and the same number of steps. The Trainer gets its batches from
`DataCollatorForLanguageModeling(mlm=False)`, as its documentation does it, and logs, evaluates
and saves nothing while it trains. The lab's run is an engine run as the app launches it (its
validation passes, generations and memory probes left out of the timed steps: only its step times
count).

Each repeat times both, one after the other (A then B, then B then A on the next repeat); a step's
time is the wall time from the start of one optimizer step to the start of the next, and the first
`--skip` steps of each run (warm-up of allocators and kernels) are left out. Reported: tokens per
second of each (median over repeats of the median step) and the lab's as a multiple of the
Trainer's. Run it alone on the machine, pinned to one core for a steady figure:

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/lm_trainer.py [--steps 12] [--repeats 3]
        [--backbone smollm2-135m] [--dataset bbc-news] [--batch-size 8] [--max-length 256] [--json out.json]
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
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from app.config import RunConfig  # noqa: E402
from app.preparation import prepare_run  # noqa: E402
from app.runner import execute_run  # noqa: E402
from app.store import RunStore  # noqa: E402
from recorded import recorded_settings  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "lm_trainer.json"


def run_config(args) -> dict:
    return dict(backbone=args.backbone, dataset=args.dataset, method="full_ft", task="causal-lm", steps=args.steps,
                eval_every=args.steps, batch_size=args.batch_size, max_length=args.max_length, padding="max",
                max_train_examples=args.max_train_examples, max_eval_examples=8, generations=0, seed=args.seed,
                device="cpu")


def lab_step_seconds(store: RunStore, args) -> list[float]:
    prepared = prepare_run(run_config(args), store)
    run_id = store.create_run(prepared.config.as_dict())
    record = execute_run(store, run_id, prepared=prepared)
    if record["status"] != "finished":
        raise SystemExit(f"the lab's run failed: {record.get('error')}")
    return [s["step_seconds"] for s in store.steps(run_id)]


def trainer_step_seconds(store: RunStore, args, folder: Path) -> list[float]:
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    prepared = prepare_run(run_config(args), store)
    blocks = prepared.tokens("train")
    dataset = Dataset.from_dict({"input_ids": blocks["input_ids"].tolist()})
    tokenizer = prepared.backbone.tokenizer
    lab = RunConfig.from_dict(run_config(args))
    torch.manual_seed(args.seed)
    model = prepared.backbone.load_for_causal_lm()
    times: list[float] = []

    class StepClock(TrainerCallback):
        def __init__(self):
            self.started = None

        def on_step_begin(self, *_, **__):
            now = time.perf_counter()
            if self.started is not None:
                times.append(now - self.started)
            self.started = now

        def on_train_end(self, *_, **__):
            if self.started is not None:
                times.append(time.perf_counter() - self.started)

    training = TrainingArguments(
        output_dir=str(folder), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=prepared.lr, weight_decay=lab.weight_decay,
        warmup_steps=int(round(args.steps * lab.warmup_ratio)),  # the lab's count of warm-up steps
        max_grad_norm=lab.grad_clip, lr_scheduler_type="linear", optim="adamw_torch", seed=args.seed,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    Trainer(model=model, args=training, train_dataset=dataset, data_collator=collator,
            callbacks=[StepClock()]).train()
    return times


def steady_median(seconds: list[float], skip: int) -> float:
    return statistics.median(seconds[skip:] or seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--skip", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--dataset", default="bbc-news")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--max-train-examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    args = parser.parse_args(argv)
    tokens = args.batch_size * args.max_length
    out: dict = {"settings": recorded_settings(args, torch_threads=torch.get_num_threads(),
                                               load_average=os.getloadavg()[0]),
                 "repeats": []}
    with tempfile.TemporaryDirectory() as folder:
        store = RunStore(Path(folder) / "runs")
        for repeat in range(args.repeats):
            order = ("lab", "trainer") if repeat % 2 == 0 else ("trainer", "lab")
            row = {"order": list(order)}
            for who in order:
                seconds = (lab_step_seconds(store, args) if who == "lab"
                           else trainer_step_seconds(store, args, Path(folder) / f"trainer-{repeat}"))
                row[who] = {"step_seconds": seconds, "median_step_seconds": steady_median(seconds, args.skip)}
            row["lab_over_trainer_tokens_per_second"] = (row["trainer"]["median_step_seconds"]
                                                         / row["lab"]["median_step_seconds"])
            out["repeats"].append(row)
            print(f"repeat {repeat + 1} ({' then '.join(order)}): lab {row['lab']['median_step_seconds']:.3f} s/step, "
                  f"Trainer {row['trainer']['median_step_seconds']:.3f} s/step, lab tokens/s "
                  f"{row['lab_over_trainer_tokens_per_second']:.3f} x the Trainer's", flush=True)
    lab = statistics.median(r["lab"]["median_step_seconds"] for r in out["repeats"])
    trainer = statistics.median(r["trainer"]["median_step_seconds"] for r in out["repeats"])
    ratios = [r["lab_over_trainer_tokens_per_second"] for r in out["repeats"]]
    out["summary"] = {"lab_tokens_per_second": tokens / lab, "trainer_tokens_per_second": tokens / trainer,
                      "lab_over_trainer": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}
    summary = out["summary"]
    print(f"tokens/s: lab {summary['lab_tokens_per_second']:.0f}, Trainer {summary['trainer_tokens_per_second']:.0f}; "
          f"lab {summary['lab_over_trainer']:.3f} x the Trainer's (repeats {summary['ratio_min']:.3f}-"
          f"{summary['ratio_max']:.3f})", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
