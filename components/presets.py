"""One-click lessons and presets: the run configurations they queue (plain data, no widgets)."""

from __future__ import annotations

from app.methods import METHODS

# Settings written into the launch form's widgets (keys "launch.*" and "run.*").
PRESETS = {
    "Quick demo (CPU, ~1 min)": {
        "launch.backbone": "minilm-l6",
        "launch.dataset": "rotten-tomatoes",
        "launch.device": "cpu",
        "run.steps": 60,
        "run.batch_size": 16,
        "run.max_length": 48,
        "run.eval_every": 20,
        "run.max_train_examples": 2000,
        "run.max_eval_examples": 400,
        "run.lr": None,
        "run.seed": 42,
    },
    "Tiny smoke test (seconds)": {
        "launch.backbone": "tiny-random",
        "launch.dataset": "sms-spam",
        "launch.device": "cpu",
        "run.steps": 30,
        "run.batch_size": 8,
        "run.max_length": 32,
        "run.eval_every": 10,
        "run.max_train_examples": 256,
        "run.max_eval_examples": 64,
        "run.lr": None,
        "run.seed": 0,
    },
}
PRESET_HELP = {
    "Quick demo (CPU, ~1 min)": "MiniLM-L6 on Rotten Tomatoes: batch 16, 48 tokens, 60 steps on the CPU.",
    "Tiny smoke test (seconds)": "The 4-layer random tiny-random backbone on SMS spam: checks the whole path in seconds.",
}

LST_LESSON_METHODS = ("full_ft", "adapter", "prompt_tuning", "lora", "lst")
SHRINK_PLAN = {
    "sparsities": [0.3, 0.5, 0.7, 0.9],
    "quantize": ["fp16", "int8", "8bit", "4bit", "2bit", "1bit"],
}


def lst_lesson(base: dict) -> tuple[list[dict], list[str]]:
    """Same setup, five methods (those installed here); returns configs and the methods missing.
    Every batch is padded to max_length, so every method's memory is measured on the same shape."""
    present = [m for m in LST_LESSON_METHODS if m in METHODS]
    missing = [m for m in LST_LESSON_METHODS if m not in METHODS]
    configs = []
    for method in present:
        config = dict(base, method=method, method_config={}, lr=None, padding="max")
        config["name"] = f"lesson: memory · {method}"
        configs.append(config)
    return configs, missing


def theseus_lesson(base: dict, num_layers: int) -> list[dict]:
    """Predecessor (full fine-tuning), Theseus to half its layers, and the truncation baseline."""
    for name in ("theseus", "truncate"):
        if name not in METHODS:
            raise LookupError(name)
    successor_layers = max(1, num_layers // 2)
    common = dict(base, lr=None)
    try:
        from app.pipelines import theseus_chain
    except ImportError:
        theseus_chain = None
    if theseus_chain is not None:
        configs = theseus_chain(dict(common, name=f"lesson: theseus {num_layers}→{successor_layers}"),
                                layers=successor_layers)
    else:
        configs = [
            dict(common, method="full_ft", method_config={}),
            dict(common, method="theseus", method_config={"predecessor": "@chain:0", "layers": successor_layers}),
            dict(common, method="truncate", method_config={"layers": successor_layers}),
        ]
    for config in configs:
        config.setdefault("name", f"lesson: theseus {num_layers}→{successor_layers} · {config['method']}")
    return configs
