"""Do LST's early ladder gates learn on a deep stack? Per-block gradient norms after one backward.

For each backbone (`--backbones`) and each starting gate value (`--gate-inits`), LST is built with
the lab's defaults otherwise (magnitude-pruned side network, r = 8, a ladder from every layer), one
batch of real training examples runs forward and backward, and the gradient of every gate
alpha_k and the norm of every ladder projection's weight gradient are printed, block by block.

The issue this measures: side block k's output reaches the head scaled by the product of the later
gates, mu^(n - k) at a uniform start, so at mu = 0.5 on a 30-layer decoder the first gates get
gradients near 1e-11, far below Adam's epsilon (1e-8): they do not move.

    python benchmarks/lst_gate_gradients.py [--backbones smollm2-135m,minilm-l6] [--gate-inits 0.5,0.9,auto]
        [--dataset sms-spam] [--batch-size 8] [--max-length 64] [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from app.backbones import get_backbone  # noqa: E402
from app.batching import Batcher  # noqa: E402
from app.config import RunConfig  # noqa: E402
from app.data import tokenize_split  # noqa: E402
from app.methods import create_method  # noqa: E402
from app.methods.base import BuildContext, model_inputs  # noqa: E402
from app.preparation import load_run_dataset  # noqa: E402
from app.training import seed_everything  # noqa: E402
from recorded import recorded_settings  # noqa: E402

THRESHOLD = 1e-6


def gradients(backbone_name: str, gate_init, args) -> dict:
    seed_everything(args.seed)
    backbone = get_backbone(backbone_name)
    dataset = load_run_dataset(RunConfig(dataset=args.dataset, max_eval_examples=None))
    tensors = tokenize_split(backbone.tokenizer, dataset, "train", args.max_length)
    batch = Batcher("max").batch(tensors, torch.arange(args.batch_size))
    settings = {} if gate_init == "default" else {"gate_init": float(gate_init)}
    method = create_method("lst", settings)
    model = method.build(BuildContext(backbone=backbone, label_names=dataset.label_names,
                                      device=torch.device("cpu"), seed=args.seed))
    model.train()
    logits = model(**model_inputs(batch))
    F.cross_entropy(logits.float(), batch["labels"]).backward()
    gate = model.gate_alpha.grad.abs().tolist()
    ladder = [down.weight.grad.norm().item() for down in model.downs[1:]]
    return {"gate_init": model.gates()[0].item(), "gate_grad": gate, "ladder_grad_norm": ladder,
            "blocks": len(gate), "smallest_gate_grad": min(gate),
            "blocks_below_threshold": sum(g <= THRESHOLD for g in gate)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="smollm2-135m,minilm-l6")
    parser.add_argument("--gate-inits", default="default,0.5,0.9",
                        help="starting gate values; 'default' is the lab's default setting")
    parser.add_argument("--dataset", default="sms-spam")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "lst_gate_gradients.json"))
    args = parser.parse_args(argv)
    results = []
    for backbone_name in args.backbones.split(","):
        for gate_init in args.gate_inits.split(","):
            row = {"backbone": backbone_name, "setting": gate_init, **gradients(backbone_name, gate_init, args)}
            results.append(row)
            print(f"\n{backbone_name}, gate_init {gate_init} (mu = {row['gate_init']:.3f}): "
                  f"{row['blocks_below_threshold']} of {row['blocks']} gates at or below {THRESHOLD:g}, "
                  f"smallest {row['smallest_gate_grad']:.2e}")
            print("| block | gate gradient | ladder gradient norm |\n|---:|---:|---:|")
            for k, (g, ladder) in enumerate(zip(row["gate_grad"], row["ladder_grad_norm"])):
                print(f"| {k + 1} | {g:.2e} | {ladder:.2e} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"settings": recorded_settings(args), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
