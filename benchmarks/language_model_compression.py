"""Test perplexity, next-token agreement, size and CPU latency of a fine-tuned language model under
pruning and quantization.

Fine-tunes SmolLM2-135M on the shipped film dialogue (causal-lm, the loss on the reply) unless a
finished run id is given, then sweeps it through `app.compression.compress_run`, the code behind
`python -m app compress` and the Compress page: magnitude pruning, attention-head and FFN pruning,
bf16, dynamic int8 (one activation scale per batch, and per token) and 8/4-bit weight fake-quant; the
pruning points twice, weights, heads and neurons ranked by measured activations (Wanda's score for
single weights) and by weight magnitude alone. Every point is scored on the run's test split's
labelled tokens against the uncompressed model on the same batches; latency is one pass over a batch
of prompts up to the next token's scores, timed in alternating rounds with the fp32 model.

    python benchmarks/language_model_compression.py [--run-id ID] [--runs-dir DIR] [--steps 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from app.compression import compress_run  # noqa: E402
from app.store import RunStore  # noqa: E402

# The pruning points again, ranked by weights alone instead of measured activations.
WEIGHT_RANKED = {"sparsities": [0.3, 0.5], "structured_heads": 3, "structured_ffn": 0.25,
                 "structured_importance": "weight", "latency_batch_size": 8, "latency_repeats": 5, "latency_warmup": 2}
PLAN = {"sparsities": [0.3, 0.5], "unstructured_score": "wanda", "structured_heads": 3, "structured_ffn": 0.25,
        "quantize": ["bf16", "int8", "int8_per_token", "8bit", "4bit"], "latency_batch_size": 8, "latency_repeats": 5,
        "latency_warmup": 2}


def train(store: RunStore, args) -> str:
    from app.preparation import prepare_run
    from app.runner import execute_run

    config = dict(backbone="smollm2-135m", task="causal-lm", dataset="movie-dialog", method=args.method,
                  steps=args.steps, batch_size=16, max_length=64, padding="max", eval_every=args.steps,
                  max_train_examples=2000, max_eval_examples=args.max_eval_examples, generations=0,
                  seed=args.seed, device="cpu", name="language-model compression benchmark")
    if args.lr:
        config["lr"] = args.lr
    prepared = prepare_run(config, store)
    run_id = store.create_run(prepared.config.as_dict())
    started = time.perf_counter()
    execute_run(store, run_id, prepared=prepared)
    record = store.get_run(run_id)
    if record["status"] != "finished":
        raise SystemExit(f"training failed: {record.get('error')}")
    print(f"trained {run_id} in {time.perf_counter() - started:.0f} s: test perplexity "
          f"{record['metrics']['test_perplexity']:.2f}", file=sys.stderr)
    return run_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", help="a finished causal-lm run to sweep instead of training one")
    parser.add_argument("--runs-dir", help="runs folder (default: a temporary one)")
    parser.add_argument("--method", default="full_ft")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-eval-examples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the points here")
    args = parser.parse_args()

    folder = args.runs_dir or tempfile.mkdtemp(prefix="lm-compression-")
    store = RunStore(folder)
    run_id = args.run_id or train(store, args)
    started = time.perf_counter()
    def progress(done, total, message):
        print(f"  [{done}/{total}] {message}", file=sys.stderr)

    points = compress_run(store, run_id, PLAN, progress=progress)
    points += compress_run(store, run_id, WEIGHT_RANKED, progress=progress)[1:]
    record = store.get_run(run_id)
    baseline = points[0]
    print(f"run {run_id} ({record['config']['method']}, {record['config']['backbone']}), sweep "
          f"{time.perf_counter() - started:.0f} s, {torch.get_num_threads()} threads, "
          f"{baseline['test_tokens']} labelled test tokens")
    print("| point | test perplexity | × fp32 | token accuracy | agreement | MiB | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for p in points:
        print(f"| {p['key']} | {p['test_perplexity']:.2f} | {p['test_perplexity'] / baseline['test_perplexity']:.3f} "
              f"| {p['test_token_accuracy']:.3f} | {p['agreement']:.3f} | {p['bytes'] / 2**20:.1f} "
              f"| {p['speedup']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"run_id": run_id, "config": record["config"], "plan": PLAN,
                                               "weight_ranked_plan": WEIGHT_RANKED,
                                               "threads": torch.get_num_threads(), "points": points}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
