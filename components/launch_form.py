"""The launch form's parts: backbone, dataset (with uploads), method settings, general settings."""

from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st

from app.data_files import TABLE_SUFFIXES, label_counts, max_file_bytes, read_table, sheet_names, with_sheet
from app.errors import LabError
from components.common import fmt_count, runs_dir
from components.forms import settings_form

UPLOAD_SUFFIXES = TABLE_SUFFIXES
UPLOAD_KINDS = "CSV, TSV, JSONL, JSON, Excel .xlsx or Parquet"
UPLOAD_CHOICE = "Upload a file…"
GENERAL_FIELDS = ("steps", "batch_size", "max_length", "padding", "lr", "eval_every", "max_train_examples", "seed",
                  "backbone_precision")
ADVANCED_FIELDS = ("patience", "patience_from", "decoder_pooling", "max_eval_examples", "weight_decay", "warmup_ratio", "grad_clip", "split_seed", "memory_every",
                   "bf16", "report_to_mlflow", "name")
# report_to has one choice besides none, so the form shows it as a checkbox rather than a selectbox.
REPORT_TO_MLFLOW = {
    "name": "report_to_mlflow", "type": "bool", "default": False, "optional": False,
    "help": "Also send the run's settings, metrics, end status, record and exported model to MLflow. "
            "Uses MLFLOW_TRACKING_URI (unset: MLflow's own default, sqlite:///mlflow.db in the app's folder, "
            "which needs the full mlflow package) and MLFLOW_EXPERIMENT_NAME from the app's environment. "
            "A server that does not answer never holds up the run; the run's page says what happened.",
}


@st.cache_data(show_spinner=False, ttl=300)
def backbone_info(name: str) -> dict:
    # imported on first use: it loads torch (1.0 s here), which a page's first draw does not wait for
    from app.backbones import get_backbone
    from app.methods import describe_backbone

    return describe_backbone(get_backbone(name))


@st.cache_data(show_spinner=False)
def backbone_registry() -> dict[str, str]:
    # imported on first use: it loads torch (1.0 s here), which a page's first draw does not wait for
    from app.backbones import REGISTRY

    return {name: entry.description for name, entry in REGISTRY.items()}


@st.cache_data(show_spinner=False)
def dataset_registry(task: str = "classification") -> dict[str, str]:
    if task == "causal-lm":
        from app.lm_data import LM_REGISTRY

        return {name: entry.description for name, entry in LM_REGISTRY.items()}
    from app.data import REGISTRY

    return {name: entry.description for name, entry in REGISTRY.items()}


TASK_HELP = {
    "classification": "a label per text: the model learns to predict classes",
    "causal-lm": "decoders learn to continue text: the loss on the tokens to write, validation perplexity and the "
                 "model's answers to a few validation prompts at every evaluation",
}


def task_picker(info: dict | None) -> str:
    """What the run teaches: classification always, causal-lm on decoders."""
    choices = ["classification", "causal-lm"] if info and info.get("causal") else ["classification"]
    if st.session_state.get("launch.task") not in choices:
        st.session_state["launch.task"] = "classification"
    task = st.radio("Task", choices, key="launch.task", horizontal=True, format_func=lambda t: t,
                    help="; ".join(f"{t}: {TASK_HELP[t]}" for t in TASK_HELP))
    if len(choices) == 1:
        st.caption("An encoder trains classifiers; pick a decoder (SmolLM2, the tiny LLaMA or GPT-2) to train a "
                   "language model.")
    return task


ALL_GPUS = "all GPUs (DDP)"


def devices() -> list[str]:
    import torch

    options = ["auto", "cpu"]
    if torch.cuda.is_available():
        options.append("cuda")
        options += [f"cuda:{i}" for i in range(1, torch.cuda.device_count())]
        if torch.cuda.device_count() > 1:
            options.append(ALL_GPUS)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        options.append("mps")
    return options


def device_settings(choice: str) -> dict:
    """The run settings a device choice stands for: all GPUs is one process per GPU under torchrun."""
    if choice == ALL_GPUS:
        import torch

        return {"device": "cuda", "processes": torch.cuda.device_count()}
    return {"device": choice}


def backbone_picker() -> tuple[str, dict | None]:
    registry = backbone_registry()
    if "launch.backbone" not in st.session_state:
        st.session_state["launch.backbone"] = "minilm-l6"
    name = st.selectbox(
        "Backbone", list(registry), key="launch.backbone", accept_new_options=True,
        format_func=lambda n: f"{n} — {registry[n]}" if n in registry else n,
        help="A registry name, or type a local model folder or a Hugging Face hub id: encoders (BERT, RoBERTa, "
             "XLM-RoBERTa, ELECTRA, MPNet) or decoders (LLaMA, Mistral, Qwen2, Qwen3, GPT-2).",
    )
    info = None
    if name:
        try:
            with st.spinner("Reading the backbone's config…"):
                info = backbone_info(name)
        except LabError as exc:
            st.warning(str(exc))
    if info:
        kind = "decoder" if info.get("causal") else "encoder"
        st.caption(f"{info['model_type']} {kind} · {info['num_layers']} layers · hidden {info['hidden_size']} · "
                   f"{info['num_heads']} heads · {fmt_count(info['num_params'])} parameters · "
                   f"up to {info['max_length']} tokens")
    return name or "", info


def _safe_upload_name(data: bytes, original: str) -> str:
    """A generated file name: content hash plus an allowed suffix; the user's name is never a path."""
    suffix = Path(original).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise LabError(f"files ending in {suffix or '(no suffix)'} are not read; use {UPLOAD_KINDS}")
    return f"upload-{hashlib.sha256(data).hexdigest()[:16]}{suffix}"


def save_upload(uploaded) -> Path:
    data = uploaded.getvalue()
    limit = max_file_bytes()
    if len(data) > limit:
        raise LabError(f"the file is {len(data) / 2**20:.1f} MB; the limit is {limit / 2**20:.0f} MB")
    if not data:
        raise LabError("the file is empty")
    folder = Path(runs_dir()) / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / _safe_upload_name(data, uploaded.name)
    if not path.exists():
        partial = path.with_suffix(path.suffix + ".partial")
        partial.write_bytes(data)
        partial.replace(path)
    return path


@st.cache_data(show_spinner=False, max_entries=8)
def read_upload(path: str, size: int, sheet: str | None):
    """A saved upload as a table (`size` keys the cache to the content), read by the engine's own
    reader so that the preview refuses a file with the engine's message."""
    return read_table(Path(path), sheet)


@st.cache_data(show_spinner=False, max_entries=8)
def workbook_sheets(path: str, size: int) -> list[str]:
    return sheet_names(Path(path))


def _cell(value) -> str:
    text = "" if value is None or (isinstance(value, float) and value != value) else str(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _pick(columns: list[str], wanted: str, fallback: int) -> int:
    lower = [c.lower() for c in columns]
    return lower.index(wanted) if wanted in lower else fallback


def class_balance(table, label_column: str) -> None:
    """Examples per class of the chosen label column, as the engine will count them."""
    counts = label_counts(table, label_column)
    total = sum(counts.values()) or 1
    st.caption(f"Class balance of `{label_column}`: {len(counts)} classes")
    st.dataframe([{"class": name, "examples": n, "share": f"{n / total:.1%}"} for name, n in counts.items()],
                 hide_index=True, key="launch.class_balance")
    if len(counts) < 2:
        st.warning(f"Column `{label_column}` holds a single class; classification needs at least two.")


def uploaded_table(label: str, hint: str):
    """The file the user uploads: saved under a generated name, its sheet picked, read and previewed.
    (reference for the run config, table, saved file name), or None while there is none or it cannot be read."""
    limit_mb = max(1, int(max_file_bytes() / 2**20))
    uploaded = st.file_uploader(f"{label} ({UPLOAD_KINDS}; up to {limit_mb} MB)", type=[s[1:] for s in UPLOAD_SUFFIXES],
                                key="launch.upload", max_upload_size=limit_mb)
    if uploaded is None:
        st.info(hint)
        return None
    sheet = None
    try:
        path = save_upload(uploaded)
        size = path.stat().st_size
        if path.suffix == ".xlsx":
            sheets = workbook_sheets(str(path), size)
            if len(sheets) > 1:
                sheet = st.selectbox("Sheet", sheets, key=f"launch.sheet.{path.name}")
        table = read_upload(str(path), size, sheet)
    except LabError as exc:
        st.error(str(exc))
        return None
    st.caption(f"Saved as `{path.name}` in the runs folder: {len(table):,} rows, {len(table.columns)} columns. "
               "First rows:")
    st.dataframe([{c: _cell(v) for c, v in row.items()} for row in table.head(5).to_dict("records")],
                 hide_index=True, key="launch.preview")
    return with_sheet(str(path), sheet), table, path.name


def upload_picker() -> dict:
    """An uploaded file of labelled texts, its columns mapped by the user."""
    found = uploaded_table("Labelled texts", "Upload a file with a text column and a label column; you map the "
                                             "columns next.")
    if found is None:
        return {"dataset": ""}
    reference, table, name = found
    columns = list(table.columns)
    cols = st.columns(3)
    text = cols[0].selectbox("Text column", columns, index=_pick(columns, "text", 0), key=f"launch.text_col.{name}")
    pair = cols[1].selectbox("Second text (optional)", ["(none)"] + columns, index=0, key=f"launch.pair_col.{name}")
    label = cols[2].selectbox("Label column", columns, index=_pick(columns, "label", len(columns) - 1),
                              key=f"launch.label_col.{name}")
    class_balance(table, label)
    return {"dataset": reference, "text_column": text, "label_column": label,
            "text_pair_column": None if pair == "(none)" else pair}


def dataset_picker(task: str = "classification") -> dict:
    """Returns the dataset part of a run config (`dataset` and the column mapping)."""
    registry = dataset_registry(task)
    options = list(registry) + [UPLOAD_CHOICE]
    if "launch.dataset" not in st.session_state:
        st.session_state["launch.dataset"] = "rotten-tomatoes"
    if task == "causal-lm" and st.session_state["launch.dataset"] not in options:
        st.session_state["launch.dataset"] = "movie-dialog"
    choice = st.selectbox(
        "Dataset", options, key="launch.dataset", accept_new_options=True,
        format_func=lambda n: f"{n} — {registry[n]}" if n in registry else n,
        help=f"A packaged dataset, a file you upload ({UPLOAD_KINDS}), or type a file path, a folder written "
             "by datasets' save_to_disk, or a hub dataset id.",
    )
    if choice != UPLOAD_CHOICE:
        return {"dataset": choice or ""}
    return lm_upload_picker() if task == "causal-lm" else upload_picker()


LM_UPLOAD_FORMATS = {
    "auto": "by its columns: messages → chat, instruction + output → Alpaca, prompt + response, else text",
    "text": "a text column; documents are packed into blocks of max_length",
    "prompt_response": "a prompt and a response column; the loss on the response only",
    "alpaca": "instruction, optional input, output",
    "chat": "a messages column of {role, content} lists, rendered with the tokenizer's chat template",
}


def lm_upload_picker() -> dict:
    """An uploaded file of text to learn, its format and columns chosen."""
    found = uploaded_table("Text to learn", "Upload documents (a text column), prompt/response pairs, Alpaca JSON or "
                                            "chat JSONL (a messages column); you pick the format and columns next.")
    if found is None:
        return {"dataset": ""}
    reference, table, name = found
    columns = list(table.columns)
    lm_format = st.selectbox("Format", list(LM_UPLOAD_FORMATS), key=f"launch.lm_format.{name}",
                             format_func=lambda f: f"{f}: {LM_UPLOAD_FORMATS[f]}")
    part = {"dataset": reference, "lm_format": lm_format}
    if lm_format == "text":
        part["text_column"] = st.selectbox("Text column", columns, index=_pick(columns, "text", 0),
                                           key=f"launch.text_col.{name}")
    elif lm_format == "prompt_response":
        cols = st.columns(2)
        part["prompt_column"] = cols[0].selectbox("Prompt column", columns, index=_pick(columns, "prompt", 0),
                                                  key=f"launch.prompt_col.{name}")
        part["response_column"] = cols[1].selectbox("Response column", columns,
                                                    index=_pick(columns, "response", len(columns) - 1),
                                                    key=f"launch.response_col.{name}")
    return part


LM_FIELDS = ("generations", "max_new_tokens")


def general_settings(max_length_limit: int | None, default_lr: float, task: str = "classification") -> dict:
    # imported on first use: it loads torch (1.0 s here), which a page's first draw does not wait for
    from app.config import describe_fields_cache

    fields = describe_fields_cache()
    overrides = {
        "lr": {"label": "learning rate", "placeholder": f"default {default_lr:g}", "step": 1e-5},
        "max_length": {"max": max_length_limit} if max_length_limit else {},
        "max_train_examples": {"placeholder": "all"},
        "max_eval_examples": {"placeholder": "all"},
    }
    current = st.session_state.get("run.max_length")
    if max_length_limit and isinstance(current, int) and current > max_length_limit:
        st.session_state["run.max_length"] = max_length_limit  # a shorter backbone was picked
    basic = [dict(fields[name]) for name in GENERAL_FIELDS + (LM_FIELDS if task == "causal-lm" else ())]
    advanced = [dict(fields.get(name) or REPORT_TO_MLFLOW, advanced=True) for name in ADVANCED_FIELDS]
    overrides["report_to_mlflow"] = {"label": "Report to MLflow"}
    values = settings_form(basic + advanced, "run", columns=4, overrides=overrides)
    if values.get("name") is None:
        values["name"] = ""
    values["report_to"] = "mlflow" if values.pop("report_to_mlflow", False) else "none"
    return values


def _widget_value(field: dict | None, value):
    """A preset value in the type its widget holds (number inputs refuse an int for a float field)."""
    kind = (field or {}).get("type")
    if value is None:
        return None
    if kind == "float":
        return float(value)
    if kind == "int":
        return int(value)
    return value


def apply_method_preset(method_name: str, preset: dict, method_fields: list[dict]) -> None:
    # imported on first use: it loads torch (1.0 s here), which a page's first draw does not wait for
    from app.config import describe_fields_cache

    by_name = {f["name"]: f for f in method_fields}
    for name, value in preset["method_config"].items():
        st.session_state[f"method.{method_name}.{name}"] = _widget_value(by_name.get(name), value)
    run_fields = describe_fields_cache()
    for name, value in preset["run"].items():
        st.session_state[f"run.{name}"] = _widget_value(run_fields.get(name), value)


def method_preset_buttons(method_name: str, described: dict) -> None:
    """One button per preset of the chosen method; a click fills the method and training settings."""
    presets = described.get("presets") or {}
    if not presets:
        return
    columns = st.columns(len(presets) + 1)
    for column, (name, preset) in zip(columns, presets.items()):
        column.button(f"Preset: {name}", key=f"method_preset.{method_name}.{name}", help=preset["help"],
                      on_click=apply_method_preset, args=(method_name, preset, described["fields"]),
                      icon=":material/tune:")
