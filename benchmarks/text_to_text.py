"""Text-to-text classification against classifiers: the same methods, data and budget, two heads.

The LST paper trains T5 text-to-text: the answer is the label word, written by the frozen LM head.
Here each method trains SmolLM2-135M on a classification set twice, with the same settings and
steps: as a classifier (a new head on the last token's state) and as a language model on "text →
label word" (task causal-lm, format text_to_text), scored by the exact match of its greedy answer.
Both report test accuracy on the same test examples, beside the majority class.

    python benchmarks/text_to_text.py [--methods lora,lst] [--dataset sms-spam] [--steps 60] [--seeds 0]
        [--batch-size 8] [--max-length 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from app.preparation import prepare_run  # noqa: E402
from app.runner import execute_run  # noqa: E402
from app.store import RunStore  # noqa: E402
from recorded import recorded_settings  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "text_to_text.json"
TASKS = ("classification", "causal-lm")


def train(store: RunStore, args, method: str, task: str, seed: int) -> dict:
    config = dict(backbone=args.backbone, dataset=args.dataset, method=method, task=task, steps=args.steps,
                  eval_every=args.steps, batch_size=args.batch_size, max_length=args.max_length,
                  max_train_examples=args.max_train_examples, max_eval_examples=args.max_eval_examples,
                  seed=seed, device="cpu", generations=0)
    if task == "causal-lm":
        config["lm_format"] = "text_to_text"
    prepared = prepare_run(config, store)
    run_id = store.create_run(prepared.config.as_dict())
    record = execute_run(store, run_id, prepared=prepared)
    if record["status"] != "finished":
        raise SystemExit(f"{method} ({task}) failed: {record.get('error')}")
    metrics = record["metrics"]
    return {"test_accuracy": metrics["test_accuracy"], "val_accuracy": metrics["val_accuracy"],
            "train_seconds": metrics["train_seconds"], "peak_memory_bytes": metrics["peak_memory_bytes"],
            "majority_test": majority(prepared) if task == "classification" else None}


def majority(prepared) -> float:
    labels = prepared.dataset.test.labels
    return Counter(labels).most_common(1)[0][1] / len(labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="lora,lst")
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--dataset", default="sms-spam")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--max-train-examples", type=int, default=2000)
    parser.add_argument("--max-eval-examples", type=int, default=200)
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    args = parser.parse_args(argv)
    out: dict = {"settings": recorded_settings(args, torch_threads=torch.get_num_threads(),
                                               load_average=os.getloadavg()[0]), "runs": []}
    with tempfile.TemporaryDirectory() as folder:
        store = RunStore(Path(folder))
        for seed in [int(s) for s in args.seeds.split(",") if s]:
            for method in [m for m in args.methods.split(",") if m]:
                row = {"seed": seed, "method": method}
                for task in TASKS:
                    row[task] = train(store, args, method, task, seed)
                out["runs"].append(row)
                classifier, writer = row["classification"], row["causal-lm"]
                print(f"seed {seed} {method:<5} test accuracy: classifier {classifier['test_accuracy']:.3f}, "
                      f"text-to-text exact match {writer['test_accuracy']:.3f} (majority class "
                      f"{classifier['majority_test']:.3f}); {classifier['train_seconds']:.0f} s against "
                      f"{writer['train_seconds']:.0f} s", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
