"""The LST paper's memory claim, recreated with the lab's estimate on shipped encoder configs.

The paper (Sung et al., NeurIPS 2022, Figure 1; T5-base on GLUE, batch 100, 128 tokens, fp32,
peak `torch.cuda.max_memory_allocated`) reports each method's training memory as a share of full
fine-tuning's: Adapters 74%, LoRA 72%, BitFit 61%, prompt tuning 66%, LST 31%. No T5 weights or T5
family exist here, so this estimates BERT-base and BERT-large (`config:bert-base`,
`config:bert-large`, config only) as sequence classifiers at the paper's batch and length, every
method at its lab defaults, and prints each method's predicted peak beside full fine-tuning's.

Differences in setting: an encoder classifier, not T5's encoder-decoder answering in text; the
tensors a step holds (the estimate), not the CUDA allocator's peak; the lab's method defaults
(LoRA rank 8 on query and value, Houlsby adapters of width 64, 20 virtual tokens, LST r = 8 with
every layer laddered), not the paper's.

    python benchmarks/paper_memory.py [--backbones config:bert-base,config:bert-large] [--batch-size 100]
        [--max-length 128] [--json benchmarks/results/paper_memory.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.estimate import estimate_memory  # noqa: E402
from recorded import recorded_settings  # noqa: E402

PAPER_SHARE = {"full_ft": 1.00, "adapter": 0.74, "lora": 0.72, "bitfit": 0.61, "prompt_tuning": 0.66, "lst": 0.31}
MiB = 1024**2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="config:bert-base,config:bert-large")
    parser.add_argument("--methods", default=",".join(PAPER_SHARE))
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()

    rows = []
    for backbone in [b.strip() for b in args.backbones.split(",") if b.strip()]:
        estimates = {m: estimate_memory(backbone, m, args.batch_size, args.max_length)
                     for m in [m.strip() for m in args.methods.split(",") if m.strip()]}
        full = estimates["full_ft"].predicted_peak_bytes
        print(f"\n{backbone}, batch {args.batch_size} x {args.max_length} tokens, fp32")
        print(f"  {'method':<14} {'peak MiB':>10} {'x full FT':>10} {'paper (T5-base)':>16} {'activations MiB':>16} "
              f"{'seconds':>8}")
        for method, estimate in estimates.items():
            share = estimate.predicted_peak_bytes / full
            rows.append({"backbone": backbone, "method": method, "peak_bytes": estimate.predicted_peak_bytes,
                         "share_of_full_ft": share, "paper_share": PAPER_SHARE.get(method),
                         "breakdown": estimate.breakdown, "trainable_params": estimate.trainable_params,
                         "total_params": estimate.total_params, "seconds": estimate.seconds})
            paper = PAPER_SHARE.get(method)
            print(f"  {method:<14} {estimate.predicted_peak_bytes / MiB:>10,.0f} {share:>10.2f} "
                  f"{'' if paper is None else f'{paper:.2f}':>16} {estimate.activations / MiB:>16,.0f} "
                  f"{estimate.seconds:>8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": recorded_settings(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
