"""One process against N data-parallel processes on this machine, side by side in one run.

Each configuration is the CLI a user types: `python -m app train ...` for one process and
`torchrun --standalone --nproc_per_node N -m app train ...` for N (gloo on the CPU, NCCL with
`--device cuda` on a machine with N GPUs). Same global batch, seed, steps and data. Rounds
alternate the two, so machine load hits both alike; figures are medians over rounds.

Reported per method: training examples per second (the steps alone, evaluation excluded),
seconds to the last step, the whole command's wall time (start-up included), peak training
memory per process, and the final test accuracy (the same steps give the same model, up to
rounding).

On a CPU the processes share the cores one process would use (torch runs one thread per
process under torchrun, two in one process here), so this measures DDP's overhead rather than
a speed-up; on N GPUs it measures the scaling.

    python benchmarks/data_parallel.py [--processes 2] [--methods full_ft,lst] [--steps 40] [--rounds 2]
                                       [--backbone minilm-l6] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.store import RunStore  # noqa: E402
from recorded import recorded_settings  # noqa: E402


def train_command(processes: int, runs_dir: Path, args, method: str) -> list[str]:
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return launcher + [
        "-m", "app", "train", "--runs-dir", str(runs_dir), "--backbone", args.backbone, "--dataset", args.dataset,
        "--method", method, "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-length",
        str(args.max_length), "--eval-every", str(args.steps), "--max-eval-examples", "500", "--seed", "0",
        "--device", args.device, "--quiet", "--json"]


def one_run(processes: int, method: str, args) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        runs_dir = Path(folder) / "runs"
        started = time.perf_counter()
        result = subprocess.run(train_command(processes, runs_dir, args, method), cwd=ROOT, capture_output=True,
                                text=True)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"{method} on {processes} process(es) failed:\n{result.stderr[-2000:]}")
        store = RunStore(runs_dir)
        [record] = store.list_runs()
        metrics = record["metrics"]
        ranks = (record["summary"].get("data_parallel") or {}).get("ranks") or [
            {"peak_memory_bytes": metrics["peak_memory_bytes"]}]
        return {"examples_per_second": metrics["examples_per_second"],
                "seconds_to_last_step": store.steps(record["id"])[-1]["elapsed"],
                "wall_seconds": wall,
                "peak_memory_mb_per_process": [round(r["peak_memory_bytes"] / 2**20, 1) for r in ranks],
                "test_accuracy": metrics["test_accuracy"],
                "torch_threads": metrics["torch_threads"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--methods", default="full_ft,lst")
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--dataset", default="sms-spam")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()

    counts = (1, args.processes)
    runs: dict[tuple[str, int], list[dict]] = {}
    for round_index in range(args.rounds):
        for method in args.methods.split(","):
            order = counts if round_index % 2 == 0 else counts[::-1]
            for processes in order:
                figures = one_run(processes, method, args)
                runs.setdefault((method, processes), []).append(figures)
                print(f"round {round_index + 1} {method:<8} {processes} process(es): "
                      f"{figures['examples_per_second']:.1f} examples/s, wall {figures['wall_seconds']:.1f} s",
                      flush=True)

    rows = []
    for method in args.methods.split(","):
        one, many = runs[(method, 1)], runs[(method, args.processes)]
        median = lambda rows_, key: statistics.median(r[key] for r in rows_)  # noqa: E731
        rows.append({
            "method": method,
            "examples_per_second": {"1": median(one, "examples_per_second"),
                                    str(args.processes): median(many, "examples_per_second")},
            "speed_ratio": median(many, "examples_per_second") / median(one, "examples_per_second"),
            "wall_seconds": {"1": median(one, "wall_seconds"), str(args.processes): median(many, "wall_seconds")},
            "peak_memory_mb_per_process": {"1": one[0]["peak_memory_mb_per_process"],
                                           str(args.processes): many[0]["peak_memory_mb_per_process"]},
            "test_accuracy": {"1": one[0]["test_accuracy"], str(args.processes): many[0]["test_accuracy"]},
            "torch_threads": {"1": one[0]["torch_threads"], str(args.processes): many[0]["torch_threads"]},
        })
    print(f"\n{args.backbone} on {args.dataset}, global batch {args.batch_size} x {args.max_length}, "
          f"{args.steps} steps, device {args.device}, {os.cpu_count()} CPU cores, medians of {args.rounds} rounds")
    print(f"{'method':<8} {'ex/s 1p':>9} {f'ex/s {args.processes}p':>9} {'ratio':>6} {'wall 1p':>8} "
          f"{f'wall {args.processes}p':>8}  peak MiB per process (1p | {args.processes}p)  test acc (1p | {args.processes}p)")
    for row in rows:
        eps, wall = row["examples_per_second"], row["wall_seconds"]
        peaks, accuracy = row["peak_memory_mb_per_process"], row["test_accuracy"]
        print(f"{row['method']:<8} {eps['1']:>9.1f} {eps[str(args.processes)]:>9.1f} {row['speed_ratio']:>6.2f} "
              f"{wall['1']:>8.1f} {wall[str(args.processes)]:>8.1f}  {peaks['1']} | {peaks[str(args.processes)]}"
              f"  {accuracy['1']:.4f} | {accuracy[str(args.processes)]:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": recorded_settings(args), "rows": rows, "runs": {
            f"{m}/{p}": r for (m, p), r in runs.items()}}, indent=2))


if __name__ == "__main__":
    main()
