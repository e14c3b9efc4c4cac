"""Reading users' own files: CSV/TSV, JSON/JSONL, Excel, Parquet and `datasets` folders.

Files come as real tools export them: a BOM, Windows or old Mac line endings, bare carriage
returns inside fields, `;` or tab delimiters in a `.csv`, quoted multi-line fields, trailing empty
columns, numbers written as `1` in one row and `1.0` in the next. Every reader gives a table of
named columns; `corpus_from_table` turns one into labelled examples with the checks every source
shares (the columns exist, labels are single values, at least two classes). Every refusal is one
sentence naming the file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DatasetError

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".xlsx", ".parquet")
DELIMITERS = (",", ";", "\t")
# Split names of a saved DatasetDict that stand for the lab's validation split.
VALIDATION_NAMES = ("validation", "valid", "val", "dev")


def max_file_bytes() -> int:
    """Largest dataset file the lab reads (`LAB_MAX_DATASET_MB`, default 50 MB)."""
    return int(float(os.environ.get("LAB_MAX_DATASET_MB", "50")) * 1024 * 1024)


@dataclass(frozen=True)
class ColumnMap:
    text: str = "text"
    label: str = "label"
    text_pair: str | None = None


@dataclass
class RawCorpus:
    """All labelled examples of a source before splitting. `splits`, when the source came split
    (a saved DatasetDict), maps train/validation/test to example indices."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    pairs: list[str] | None = None
    splits: dict[str, list[int]] | None = None
    notes: list[str] = field(default_factory=list)


# --- references ------------------------------------------------------------------------------


def split_sheet(reference: str) -> tuple[str, str | None]:
    """`book.xlsx#Sheet` names one sheet of a workbook; anything else names a whole file."""
    base, hash_sign, sheet = reference.rpartition("#")
    if hash_sign and base.lower().endswith(".xlsx") and sheet and not Path(reference).expanduser().exists():
        return base, sheet
    return reference, None


def with_sheet(reference: str, sheet: str | None) -> str:
    return f"{reference}#{sheet}" if sheet else reference


def is_saved_dataset(path: Path) -> bool:
    """A folder written by `datasets`' `save_to_disk` (a Dataset or a DatasetDict)."""
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file()
        or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())
    )


def _check_size(path: Path, size: int) -> None:
    if size == 0:
        raise DatasetError(f"'{path.name}' is empty")
    if size > max_file_bytes():
        raise DatasetError(
            f"'{path.name}' is {size / 2**20:.1f} MB; the limit is {max_file_bytes() / 2**20:.0f} MB "
            "(set LAB_MAX_DATASET_MB to raise it)"
        )


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --- tables ----------------------------------------------------------------------------------


def read_table(path: Path, sheet: str | None = None):
    """A file's rows as a pandas DataFrame with string column names, trailing empty columns dropped."""
    path = Path(path)
    _check_size(path, path.stat().st_size)
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        table = _read_xlsx(path, sheet)
    elif suffix == ".parquet":
        table = _read_parquet(path)
    elif suffix in (".jsonl", ".json"):
        table = _read_json(path, _decode(path))
    else:
        table = _read_delimited(path, _decode(path), "\t" if suffix == ".tsv" else None)
    table.columns = [str(c) for c in table.columns]
    table = _drop_trailing_empty_columns(table)
    if len(table.columns) == 0:
        raise DatasetError(f"'{path.name}' has no columns")
    if len(table) == 0:
        raise DatasetError(f"'{path.name}' has a header but no rows")
    return table


def _decode(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"'{path.name}' is not UTF-8 text (byte {exc.start} cannot be decoded); save it as UTF-8"
        ) from exc


def _sniff_delimiter(content: str) -> str:
    """The delimiter that splits the header into the most fields (`,` when none does)."""
    header = content.split("\n", 1)[0]
    best, best_fields = ",", 1
    for delimiter in DELIMITERS:
        try:
            fields = len(next(csv.reader([header], delimiter=delimiter), []))
        except csv.Error:
            continue
        if fields > best_fields:
            best, best_fields = delimiter, fields
    return best


def _read_delimited(path: Path, content: str, delimiter: str | None):
    import pandas as pd

    if "\n" in content:
        # Lines end in \n or \r\n; a carriage return left alone is part of a field's text.
        content = content.replace("\r\n", "\n")
    else:
        content = content.replace("\r", "\n")  # old Mac line endings
    if not content.strip():
        raise DatasetError(f"'{path.name}' is empty")
    delimiter = delimiter or _sniff_delimiter(content)
    kind = "TSV" if delimiter == "\t" and path.suffix.lower() == ".tsv" else "CSV"
    try:
        with warnings.catch_warnings():
            # Rows longer than the header (a delimiter at each line's end) keep their named columns.
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            return pd.read_csv(
                io.StringIO(content), sep=delimiter, dtype=str, keep_default_na=False, lineterminator="\n",
                index_col=False, skip_blank_lines=True,
            )
    except pd.errors.EmptyDataError as exc:
        raise DatasetError(f"'{path.name}' is empty") from exc
    except (pd.errors.ParserError, ValueError) as exc:
        raise DatasetError(f"'{path.name}' is not valid {kind}: {_one_line(exc)}") from exc


def _read_json(path: Path, content: str):
    import pandas as pd

    rows = []
    stripped = content.strip()
    if not stripped:
        raise DatasetError(f"'{path.name}' is empty")
    if path.suffix.lower() == ".json" and stripped.startswith("["):
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
    table = pd.DataFrame(rows, dtype=object)
    if not rows:
        raise DatasetError(f"'{path.name}' has no rows")
    return table


def sheet_names(path: Path) -> list[str]:
    """The sheets of an Excel workbook, in the workbook's order."""
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True)
    except Exception as exc:
        raise DatasetError(f"'{path.name}' is not an Excel workbook (.xlsx): {_one_line(exc)}") from exc
    try:
        return list(book.sheetnames)
    finally:
        book.close()


def _read_xlsx(path: Path, sheet: str | None):
    import pandas as pd

    names = sheet_names(path)
    if sheet is not None and sheet not in names:
        raise DatasetError(f"'{path.name}' has no sheet '{sheet}'; its sheets are: {', '.join(names)}")
    try:
        return pd.read_excel(path, sheet_name=sheet if sheet is not None else 0, engine="openpyxl", dtype=object)
    except Exception as exc:
        raise DatasetError(f"'{path.name}' cannot be read as an Excel workbook: {_one_line(exc)}") from exc


def _read_parquet(path: Path):
    import pandas as pd

    try:
        return pd.read_parquet(path, engine="pyarrow")
    except Exception as exc:
        raise DatasetError(f"'{path.name}' is not a Parquet file: {_one_line(exc)}") from exc


def _is_blank(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _drop_trailing_empty_columns(table):
    """Spreadsheets export a delimiter after the last column; such columns have no name and no values."""
    while len(table.columns):
        last = table.columns[-1]
        unnamed = not last.strip() or last.startswith("Unnamed:")
        if unnamed and all(_is_blank(v) for v in table[last].tolist()):
            table = table.drop(columns=[last])
        else:
            break
    return table


# --- labels ----------------------------------------------------------------------------------


def label_key(value) -> str:
    """A label's class name: `1`, `1.0` and `"1.0"` are one class; booleans are `False`/`True`."""
    if isinstance(value, (list, dict, set, tuple, np.ndarray)):
        raise DatasetError(f"label {_short(value)} is a {type(value).__name__}; labels must be single values")
    if _is_blank(value):
        raise DatasetError("a row has an empty label")
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return _number_name(float(value))
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return _number_name(number) if math.isfinite(number) else text


def _number_name(number: float) -> str:
    if math.isfinite(number) and number == int(number):
        return str(int(number))
    return repr(number)


def _short(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def sorted_labels(keys) -> list[str]:
    """Class names in the order users expect: numeric order for numbers, alphabetical otherwise."""
    keys = set(keys)
    try:
        return sorted(keys, key=float)
    except ValueError:
        return sorted(keys)


def label_counts(table, column: str) -> dict[str, int]:
    """Examples per class of one column, classes in the lab's order (for previews)."""
    counts: dict[str, int] = {}
    for value in table[column].tolist():
        try:
            key = label_key(value)
        except DatasetError:
            key = "(no single label)"
        counts[key] = counts.get(key, 0) + 1
    ordered = sorted_labels(k for k in counts if k != "(no single label)")
    if "(no single label)" in counts:
        ordered.append("(no single label)")
    return {k: counts[k] for k in ordered}


# --- corpora ---------------------------------------------------------------------------------


def _check_columns(source: str, available: list[str], columns: ColumnMap) -> None:
    wanted = [columns.text, columns.label] + ([columns.text_pair] if columns.text_pair else [])
    for column in wanted:
        if column not in available:
            raise DatasetError(f"{source} has no column '{column}'; its columns are: {', '.join(available)}")


def _rows(source: str, table, columns: ColumnMap, start: int = 1):
    """(text, pair, class name) per usable row; rows without text are left out."""
    texts = table[columns.text].tolist()
    labels = table[columns.label].tolist()
    pairs = table[columns.text_pair].tolist() if columns.text_pair else [None] * len(texts)
    for number, (text, label, pair) in enumerate(zip(texts, labels, pairs), start):
        if _is_blank(text):
            continue
        try:
            key = label_key(label)
        except DatasetError as exc:
            raise DatasetError(f"{source} row {number}: {exc}") from exc
        yield str(text), ("" if _is_blank(pair) else str(pair)), key


def _corpus(source: str, columns: ColumnMap, examples: list[tuple[str, str, str]]) -> RawCorpus:
    if not examples:
        raise DatasetError(f"{source}: column '{columns.text}' holds no text")
    label_names = sorted_labels(key for _, _, key in examples)
    if len(label_names) < 2:
        raise DatasetError(
            f"{source}: column '{columns.label}' holds a single class ({label_names[0]!r}); "
            "classification needs at least two"
        )
    index = {name: i for i, name in enumerate(label_names)}
    return RawCorpus(
        [text for text, _, _ in examples],
        [index[key] for _, _, key in examples],
        label_names,
        [pair for _, pair, _ in examples] if columns.text_pair else None,
    )


def corpus_from_table(source: str, table, columns: ColumnMap) -> RawCorpus:
    _check_columns(source, list(table.columns), columns)
    return _corpus(source, columns, list(_rows(source, table, columns)))


def read_file_corpus(reference: str | Path, columns: ColumnMap) -> RawCorpus:
    """A CSV/TSV/JSON/JSONL/XLSX/Parquet file (`book.xlsx#Sheet` for one sheet) as labelled examples."""
    name, sheet = split_sheet(str(reference))
    path = Path(name).expanduser()
    table = read_table(path, sheet)
    source = f"'{path.name}'"
    if path.suffix.lower() == ".xlsx":
        sheets = sheet_names(path)
        if len(sheets) > 1:
            source = f"'{path.name}' sheet '{sheet or sheets[0]}' (of {', '.join(sheets)})"
    return corpus_from_table(source, table, columns)


def read_saved_dataset(path: Path, columns: ColumnMap) -> RawCorpus:
    """A `save_to_disk` folder. A DatasetDict's train/validation/test splits stay those splits (a
    missing validation or test split is carved from train later); a single split, or splits
    without a train split, are pooled and split like any file."""
    import datasets as hf_datasets

    _check_size(path, sum(p.stat().st_size for p in path.rglob("*") if p.is_file()))
    try:
        loaded = hf_datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DatasetError(f"'{path.name}' is not a readable saved dataset: {_one_line(exc)}") from exc
    parts = dict(loaded) if isinstance(loaded, hf_datasets.DatasetDict) else {"train": loaded}
    if not parts:
        raise DatasetError(f"'{path.name}' holds no splits")
    source = f"'{path.name}'"
    label_names_from_feature = None
    examples: list[tuple[str, str, str]] = []
    owners: list[str] = []
    for split_name, part in parts.items():
        _check_columns(f"{source} split '{split_name}'", list(part.column_names), columns)
        feature = part.features[columns.label]
        names = getattr(feature, "names", None)
        if names:
            label_names_from_feature = list(names)
        table = part.select_columns(
            [c for c in (columns.text, columns.label, columns.text_pair) if c]
        ).to_pandas()
        if names:  # ClassLabel: ints stand for names; negative ones mark unlabelled rows
            table = table[table[columns.label] >= 0]
            table[columns.label] = [names[int(i)] for i in table[columns.label]]
        for example in _rows(f"{source} split '{split_name}'", table, columns):
            examples.append(example)
            owners.append(split_name)
    corpus = _corpus(source, columns, examples)
    if label_names_from_feature and set(corpus.label_names) <= set(label_names_from_feature):
        # The feature's own order (its ints) beats sorting the names.
        present = [n for n in label_names_from_feature if n in set(corpus.label_names)]
        remap = {corpus.label_names.index(n): i for i, n in enumerate(present)}
        corpus.labels = [remap[i] for i in corpus.labels]
        corpus.label_names = present
    lab_split = {name: ("validation" if name in VALIDATION_NAMES else name) for name in parts}
    if "train" in parts and len(parts) > 1:
        splits: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
        for i, owner in enumerate(owners):
            # Splits under other names (an "unsupervised" one, say) add to training.
            splits.get(lab_split[owner], splits["train"]).append(i)
        corpus.splits = {k: v for k, v in splits.items() if v}
    return corpus
