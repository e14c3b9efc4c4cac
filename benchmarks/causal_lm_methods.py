"""Every method that trains language models, side by side on one shape: what it costs, what it reaches.

Through the engine (the loop, memory measurement and store the app uses), task causal-lm, packed
text (BBC News by default), every batch the full `--batch-size` × `--max-length`:

1. Cost: `--steps` steps per method: trainable parameters, the measured peak training memory with
   its breakdown, the median step time.
2. Perplexity at an equal time budget (`--seconds` per method; 0 skips it): each method takes as many
   steps as its phase-1 step time fits into the budget, with its full schedule; validation
   perplexity before the first step (the untuned model, the same for every method) and at the end.
3. The loss alone: the saved-for-backward bytes and time of the chunked loss (`app.lm_loss`)
   against the plain one (the whole logits tensor, then cross-entropy) on the same final states.

Ratios are to full fine-tuning. Theseus and distillation compress the full fine-tuning run of the
cost pass (their predecessor and teacher), to half its layers. An entry `METHOD+NAME=VALUE` runs
a method with one setting changed, of the method or of the run (`lst+lm_output=side`: LST with the
official side-only head; `lst+backbone_precision=int8`: LST on an int8 frozen backbone). Run it
on an otherwise idle machine;
the load average and torch's thread count are recorded with the figures.

    python benchmarks/causal_lm_methods.py [--methods full_ft,lora,lst,lst+lm_output=side,theseus,distill]
        [--steps 10] [--seconds 120]
        [--backbone smollm2-135m] [--dataset bbc-news] [--batch-size 8] [--max-length 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
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
import torch.nn.functional as F  # noqa: E402

from app.backbones import get_backbone  # noqa: E402
from app.config import RunConfig  # noqa: E402
from app.lm_loss import causal_lm_loss  # noqa: E402
from app.memory import LOSS, SavedActivationMeter  # noqa: E402
from app.preparation import prepare_run  # noqa: E402
from app.runner import execute_run  # noqa: E402
from app.store import RunStore  # noqa: E402
from recorded import recorded_settings  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "causal_lm_methods.json"
REFERENCE = "full_ft"


# An entry's setting that is a run setting (`lst+backbone_precision=int8`) rather than a method's.
RUN_SETTINGS = {f.name for f in dataclasses.fields(RunConfig)}
# The finished run a method needs, by the config field that names it.
REFERENCE_FIELDS = {"theseus": "predecessor", "distill": "teacher"}


def run(store: RunStore, args, entry: str, steps: int, reference: str | None = None) -> dict:
    method, _, setting = entry.partition("+")
    method_config = {REFERENCE_FIELDS[method]: reference} if method in REFERENCE_FIELDS else {}
    run_settings = {}
    if setting:
        name, _, value = setting.partition("=")
        (run_settings if name in RUN_SETTINGS else method_config)[name] = value
    if method == "theseus":
        method_config["patience"] = 0  # the budget is the same for every method: no early stop
    config = dict(backbone=args.backbone, dataset=args.dataset, method=method, method_config=method_config,
                  task="causal-lm", steps=steps,
                  eval_every=steps, batch_size=args.batch_size, max_length=args.max_length, padding="max",
                  max_train_examples=args.max_train_examples, max_eval_examples=args.max_eval_examples,
                  generations=0, seed=args.seed, device="cpu", **run_settings)
    prepared = prepare_run(config, store)
    run_id = store.create_run(prepared.config.as_dict())
    record = execute_run(store, run_id, prepared=prepared)
    if record["status"] != "finished":
        raise SystemExit(f"{method} failed: {record.get('error')}")
    validation = store.evals(run_id, "validation")
    seconds = [s["step_seconds"] for s in store.steps(run_id)]
    metrics = record["metrics"]
    return {"run_id": run_id, "steps": steps, "trainable_params": record["summary"]["trainable_params"],
            "peak_memory_bytes": metrics["peak_memory_bytes"], "memory_breakdown": metrics["memory_breakdown"],
            "median_step_seconds": statistics.median(seconds[1:] or seconds),
            "val_perplexity_start": validation[0]["perplexity"], "val_perplexity_end": validation[-1]["perplexity"],
            "train_seconds": metrics["train_seconds"]}


def loss_alone(args) -> dict:
    """The chunked loss against the plain one on the backbone's LM head and states of the run's shape."""
    language_model = get_backbone(args.backbone).load_for_causal_lm()
    head = language_model.get_output_embeddings()
    head.requires_grad_(False)
    width = head.weight.shape[1]
    generator = torch.Generator().manual_seed(args.seed)
    labels = torch.randint(0, head.weight.shape[0], (args.batch_size, args.max_length), generator=generator)
    results = {}

    def plain(hidden):
        logits = head(hidden[:, :-1]).float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))

    for name, loss_of in (("plain", plain), ("chunked", lambda hidden: causal_lm_loss(hidden, head, labels))):
        hidden = torch.randn(args.batch_size, args.max_length, width, generator=generator, requires_grad=True)
        meter = SavedActivationMeter(set())
        started = time.perf_counter()
        with meter.track():
            loss = loss_of(hidden)
        loss.backward()
        saved = meter.total + meter.part_total(LOSS)  # the chunked loss counts what it keeps as its own part
        results[name] = {"saved_bytes": saved, "seconds": time.perf_counter() - started, "loss": float(loss.detach())}
    results["saved_ratio"] = results["chunked"]["saved_bytes"] / max(1, results["plain"]["saved_bytes"])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="full_ft,lora,lst,lst+lm_output=side,theseus,distill")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--dataset", default="bbc-news")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--max-train-examples", type=int, default=400)
    parser.add_argument("--max-eval-examples", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    out: dict = {"settings": recorded_settings(args, torch_threads=torch.get_num_threads(),
                                               load_average=os.getloadavg()[0]),
                 "cost": {}, "equal_time": {}}
    with tempfile.TemporaryDirectory() as folder:
        store = RunStore(Path(folder))
        if any(m.partition("+")[0] in REFERENCE_FIELDS for m in methods) and REFERENCE not in methods:
            methods.insert(0, REFERENCE)  # their predecessor and teacher
        for method in methods:
            reference = out["cost"].get(REFERENCE, {}).get("run_id")
            out["cost"][method] = run(store, args, method, args.steps, reference)
            row = out["cost"][method]
            print(f"{method:<8} trainable {row['trainable_params']:>11,}  peak {row['peak_memory_bytes'] / 2**20:8.1f} MiB"
                  f"  {row['median_step_seconds']:.2f} s/step", flush=True)
        if args.seconds > 0:
            for method in methods:
                steps = max(1, int(args.seconds / out["cost"][method]["median_step_seconds"]))
                out["equal_time"][method] = run(store, args, method, steps, out["cost"][REFERENCE]["run_id"]
                                                if method.partition("+")[0] in REFERENCE_FIELDS else None)
                row = out["equal_time"][method]
                print(f"{method:<8} {steps} steps in {row['train_seconds']:.0f} s: validation perplexity "
                      f"{row['val_perplexity_start']:.2f} -> {row['val_perplexity_end']:.2f}", flush=True)
    out["loss"] = loss_alone(args)
    if REFERENCE in out["cost"]:
        reference = out["cost"][REFERENCE]
        out["ratios_to_full_ft"] = {
            method: {"peak_memory": row["peak_memory_bytes"] / reference["peak_memory_bytes"],
                     "step_time": row["median_step_seconds"] / reference["median_step_seconds"]}
            for method, row in out["cost"].items()}
        for method, ratio in out["ratios_to_full_ft"].items():
            print(f"{method:<8} peak {ratio['peak_memory']:.3f} x full fine-tuning's, step time "
                  f"{ratio['step_time']:.3f} x", flush=True)
    loss = out["loss"]
    print(f"loss alone: chunked saves {loss['chunked']['saved_bytes'] / 2**20:.1f} MiB for backward, the plain loss "
          f"{loss['plain']['saved_bytes'] / 2**20:.1f} MiB ({loss['saved_ratio']:.3f} x); "
          f"{loss['chunked']['seconds']:.2f} s against {loss['plain']['seconds']:.2f} s", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
