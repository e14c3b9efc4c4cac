"""Started by torchrun from tests/test_data_parallel.py: one process of a data-parallel test.

    data_parallel_worker.py runs RUNS_DIR CONFIGS_JSON   train each config in turn, in one process group
    data_parallel_worker.py fail-at STEP -- CLI ARGS     `python -m app` with rank 1 failing at STEP
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def train_each(runs_dir: str, configs_path: str) -> int:
    from app.config import RunConfig
    from app.distributed import DataParallel
    from app.runner import prepare_on_every_rank, train_on_this_rank
    from app.store import RunStore
    from app.training import LoopHooks

    store = RunStore(runs_dir)
    world = DataParallel.start("cpu")
    finished = False
    try:
        for values in json.loads(Path(configs_path).read_text()):
            config = RunConfig.from_dict(dict(values, processes=world.world_size))
            prepared = prepare_on_every_rank(world, config, store)
            run_id = world.broadcast(store.create_run(config.as_dict()) if world.is_main else None)
            train_on_this_rank(world, store, run_id, prepared, LoopHooks())
        finished = True
    finally:
        world.close(finished=finished)
    return 0


def fail_at(step: int, cli_args: list[str]) -> int:
    import os

    from app.cli import main
    from app.methods.base import Method

    if os.environ.get("RANK") == "1":
        original = Method.on_step_start

        def on_step_start(self, model, state):
            if state.step == step:
                raise ValueError(f"a deliberate failure at step {step}")
            return original(self, model, state)

        Method.on_step_start = on_step_start
    return main(cli_args)


if __name__ == "__main__":
    if sys.argv[1] == "runs":
        sys.exit(train_each(sys.argv[2], sys.argv[3]))
    if sys.argv[1] == "fail-at":
        sys.exit(fail_at(int(sys.argv[2]), sys.argv[4:]))
    sys.exit(f"unknown mode {sys.argv[1]}")
