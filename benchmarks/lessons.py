"""Every lesson at its default preset on several seeds: wall time, the numbers its claim is checked
on, and whether it was demonstrated, exactly as `python -m app lesson NAME --seed N --json` runs it.

Each lesson and seed starts from an empty runs folder, so nothing is reused and the wall time is
what a first click costs; `shrink` then compresses the Theseus lesson's predecessor of the same
seed (its wall time is the sweep's). Run it alone on the machine: wall times are the claim.

    python benchmarks/lessons.py [--seeds 0,1,2] [--lessons lst-memory,theseus,shrink] [--preset cpu]
        [--json benchmarks/results/lessons.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.lessons import LESSONS, default_preset_name, run_lesson  # noqa: E402
from app.manager import RunManager  # noqa: E402
from app.store import RunStore  # noqa: E402

KEY_FINDINGS = {
    "lst-memory": ("lst_peak_ratio", "adapter_activation_share", "lora_activation_share",
                   "prompt_tuning_activation_share", "full_ft_test_accuracy", "lst_test_accuracy",
                   "lst_minus_full_ft_test"),
    "theseus": ("predecessor_test", "successor_test", "truncation_test", "successor_minus_truncation",
                "majority_test"),
    "shrink": ("baseline_test", "int8_speedup", "int8_points_lost", "2bit_points_lost", "1bit_points_lost",
               "fastest_mask_speedup"),
    "lst-language-model": ("lst_peak_ratio", "lora_peak_ratio", "full_ft_ppl_start", "full_ft_ppl_end",
                           "lora_ppl_end", "lst_ppl_end", "lst_over_lora_fall", "lst_answers_changed"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lessons", default=",".join(LESSONS))
    parser.add_argument("--preset", default=None, help="default: the one for this machine")
    parser.add_argument("--json", default="benchmarks/results/lessons.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [n.strip() for n in args.lessons.split(",") if n.strip()]
    preset = args.preset or default_preset_name()
    rows = []
    for seed in seeds:
        theseus_store: RunStore | None = None
        predecessor = None
        for name in names:
            if name == "shrink" and theseus_store is not None:
                store, given = theseus_store, {"model": predecessor}
            else:
                store, given = RunStore(tempfile.mkdtemp(prefix=f"lesson-{name}-")), None
            manager = RunManager(store)
            try:
                result = run_lesson(manager, name, seed=seed, preset=preset, given=given)
            finally:
                manager.shutdown(wait=True)
            if name == "theseus":
                theseus_store, predecessor = store, result["runs"]["predecessor"]
            row = {"lesson": name, "seed": seed, "preset": preset, "wall_seconds": result["wall_seconds"],
                   "demonstrated": result["demonstrated"], "reason": result["reason"],
                   "findings": result["findings"], "checks": result["checks"]}
            rows.append(row)
            shown = " ".join(f"{k}={_fmt(result['findings'].get(k))}" for k in KEY_FINDINGS.get(name, ()))
            print(f"{name:<11} seed {seed}  {result['wall_seconds']:6.1f} s  demonstrated={result['demonstrated']}  "
                  f"{shown}", flush=True)
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"preset": preset, "seeds": seeds, "rows": rows}, indent=2))
    print()
    print(f"{'lesson':<11} {'demonstrated':>12} {'wall s (max)':>13}")
    for name in names:
        mine = [r for r in rows if r["lesson"] == name]
        print(f"{name:<11} {sum(bool(r['demonstrated']) for r in mine):>9} / {len(mine)} "
              f"{max(r['wall_seconds'] for r in mine):>13.1f}")
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    raise SystemExit(main())
