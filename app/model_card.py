"""The README.md of an exported model: a model card with the YAML header the Hugging Face hub reads,
written from the run's record (method, settings, data, budget, results) and the formats written."""

from __future__ import annotations

import json

from .backbones import hub_id_of
from .tasks import CAUSAL_LM

METRICS = ("test_accuracy", "test_macro_f1", "val_accuracy", "test_perplexity", "val_perplexity",
           "test_token_accuracy")
HUB_METRIC = {"test_accuracy": "accuracy", "test_macro_f1": "f1", "test_perplexity": "perplexity"}  # the hub's ids


def _yaml_value(value) -> str:
    return json.dumps(value)  # a JSON string or number is a valid YAML scalar


def _front_matter(record: dict, formats: list[dict]) -> str:
    config = record["config"]
    lines = ["---"]
    base = hub_id_of(config["backbone"])
    if base:
        lines.append(f"base_model: {_yaml_value(base)}")
    library = "transformers" if any(f["format"] == "transformers" for f in formats) else "onnx"
    lines.append(f"library_name: {library}")
    writes = config.get("task") == CAUSAL_LM
    lines.append(f"pipeline_tag: {'text-generation' if writes else 'text-classification'}")
    dataset = str(config.get("dataset", ""))
    if dataset.count("/") == 1 and not dataset.startswith((".", "/", "~")):
        lines += ["datasets:", f"- {_yaml_value(dataset)}"]
    shown = ("test_perplexity",) if config.get("task") == CAUSAL_LM else ("test_accuracy", "test_macro_f1")
    measured = [HUB_METRIC[m] for m in shown if (record.get("metrics") or {}).get(m) is not None]
    if measured:
        lines += ["metrics:"] + [f"- {m}" for m in measured]
    lines += ["tags:", "- ladder-theseus-lab", f"- {_yaml_value(config['method'])}", "---"]
    return "\n".join(lines)


def _how_to_load(item: dict, max_length: int, writes: bool = False) -> str:
    kind = item["format"]
    if kind == "transformers" and writes:
        return (f"**transformers** (this folder; no lab code; {item.get('checked', '')}):\n\n"
                "    from transformers import pipeline\n"
                "    write = pipeline(\"text-generation\", model=\"PATH\")\n"
                "    write(\"where were you last night?\", max_new_tokens=32, do_sample=False)\n")
    if kind == "state_dict" and writes:
        return (f"**Ladder & Theseus Lab state** (`model.safetensors` + `lab_config.json`; needs the lab's code and the "
                f"backbone; {item.get('checked', '')}):\n\n"
                "    from app.checkpoints import rebuild_exported\n    from app.predict import TextWriter\n"
                "    writer = TextWriter(*rebuild_exported(\"PATH\"))\n"
                "    print(writer.generate(\"where were you last night?\", max_new_tokens=32).text)\n")
    if kind == "transformers":
        return ("**transformers** (this folder; no lab code):\n\n"
                "    from transformers import pipeline\n"
                "    classify = pipeline(\"text-classification\", model=\"PATH\")\n"
                "    classify(\"a warm, funny film\")\n")
    if kind == "onnx":
        inputs = ", ".join(f'"{n}"' for n in item["inputs"])
        return (f"**ONNX** (`onnx/`, the pooling in the graph; checked in ONNX Runtime, largest logit difference "
                f"{item['max_difference']:.1e}):\n\n"
                "    import onnxruntime\n    from transformers import AutoTokenizer\n"
                "    tokenizer = AutoTokenizer.from_pretrained(\"PATH/onnx\")\n"
                "    session = onnxruntime.InferenceSession(\"PATH/onnx/model.onnx\")\n"
                f"    batch = tokenizer([\"a warm, funny film\"], truncation=True, max_length={max_length}, padding=True, "
                "return_tensors=\"np\")\n"
                f"    logits = session.run([\"logits\"], {{k: batch[k] for k in ({inputs},)}})[0]\n")
    if kind == "state_dict":
        return ("**Ladder & Theseus Lab state** (`model.safetensors` + `lab_config.json`; needs the lab's code):\n\n"
                "    from app.export import load_exported\n    model = load_exported(\"PATH\")\n")
    return ""


def model_card(record: dict, formats: list[dict], notes: list[str], sections: list[str] = ()) -> str:
    """`notes`: one-line remarks; `sections`: markdown the method wrote about its own files."""
    config, summary, metrics = record["config"], record.get("summary") or {}, record.get("metrics") or {}
    data = summary.get("dataset") or {}
    settings = {k: v for k, v in (summary.get("method_config") or config.get("method_config") or {}).items()
                if v is not None}
    rows = [("method", config["method"]), ("backbone", config["backbone"]), ("dataset", config.get("dataset")),
            ("classes", ", ".join(data.get("label_names") or [])),
            ("examples (train / validation / test)", " / ".join(str(v) for v in (data.get("sizes") or {}).values())),
            ("steps", metrics.get("steps_done", config.get("steps"))), ("batch size", config.get("batch_size")),
            ("max length", config.get("max_length")), ("learning rate", summary.get("lr", config.get("lr"))),
            ("seed", config.get("seed")), ("method settings", json.dumps(settings, sort_keys=True)),
            ("trainable parameters", f"{summary.get('trainable_params', 0):,} of {summary.get('total_params', 0):,}")]
    for name in METRICS:
        if metrics.get(name) is not None:
            rows.append((name.replace("_", " "), f"{metrics[name]:.4f}"))
    if metrics.get("peak_memory_bytes"):
        rows.append(("peak training memory (measured)", f"{metrics['peak_memory_bytes'] / 2**20:,.1f} MiB"))
    table = "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])
    writes = config.get("task") == CAUSAL_LM
    loading = "\n".join(_how_to_load(item, int(config.get("max_length") or 512), writes) for item in formats)
    said = "".join(f"- {note}\n" for note in notes)
    return (f"{_front_matter(record, formats)}\n\n# {record.get('name') or record['id']}\n\n"
            f"A {'language model' if writes else 'text classifier'} trained with Ladder & Theseus Lab (run "
            f"`{record['id']}`).\n\n{table}\n\n"
            f"## How to load it\n\nReplace PATH with this folder.\n\n{loading}\n"
            + (f"## Notes\n\n{said}\n" if said else "") + "".join(f"{section}\n\n" for section in sections if section))
