"""Users' own files as real tools export them, each made here: through the engine, the CLI and the
Launch page's upload widget, each loads with its row count and classes, and each bad file gets
its one-line reason. Plus a real-weights run on BBC News."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT, train_now

ROWS = 30
QUIRK_CASES = [
    "bare CR inside a field, CRLF", "semicolon, BOM, trailing empty column", "tab delimiter in a .csv",
    "quoted multi-line field", "1 and 1.0 labels", "boolean labels (JSONL)", "parquet with a pair column",
    "xlsx, first sheet", "xlsx, chosen sheet", "save_to_disk with splits", "save_to_disk, one split",
]
BAD_CASES = [
    "empty", "header only", "not UTF-8", "missing column", "1 and 1.0 are a single class", "list-valued labels",
    "not a workbook", "no such sheet", "saved dataset without the text column",
]


@dataclass
class Quirk:
    reference: str  # file name in the test folder, `#Sheet` for one sheet of a workbook
    rows: int
    classes: list[str]
    columns: dict = field(default_factory=dict)  # ColumnMap fields other than the defaults
    sizes: tuple[int, int, int] | None = None  # train/validation/test when the source brings its own


def _write_xlsx(path: Path) -> None:
    with pd.ExcelWriter(path, engine="openpyxl") as book:
        pd.DataFrame({"post": [f"first sheet post {i}" for i in range(ROWS)],
                      "label": [bool(i % 2) for i in range(ROWS)]}).to_excel(book, sheet_name="First", index=False)
        pd.DataFrame({"post": [f"second sheet post {i}" for i in range(20)],
                      "label": [[1, 2.0, 10][i % 3] for i in range(20)]}).to_excel(book, sheet_name="Second",
                                                                                  index=False)


def _write_saved_datasets(folder: Path) -> None:
    import datasets

    full = datasets.Dataset.from_dict({
        "sentence": [f"saved sentence {i}" for i in range(ROWS)],
        "label": [i % 2 for i in range(ROWS)],
    }).cast_column("label", datasets.ClassLabel(names=["tech", "sport"]))  # not alphabetical on purpose
    datasets.DatasetDict(
        train=full.select(range(20)), validation=full.select(range(20, 24)), test=full.select(range(24, ROWS))
    ).save_to_disk(str(folder / "saved-splits"))
    datasets.Dataset.from_dict({
        "text": [f"one split text {i}" for i in range(ROWS)],
        "label": ["b" if i % 3 else "a" for i in range(ROWS)],
    }).save_to_disk(str(folder / "saved-one-split"))


def make_quirks(folder: Path) -> dict[str, Quirk]:
    """Every quirk the readers accept, as a small file; the expected rows and classes beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    # A social-media export: Windows line endings and a bare carriage return inside unquoted text.
    (folder / "bare-cr.csv").write_bytes(
        b"text,label\r\n" + b"".join(b"post %d first part\rsecond part,%d\r\n" % (i, i % 2) for i in range(ROWS)))
    # A European spreadsheet: BOM, `;` delimiter, commas inside text, a trailing empty column.
    (folder / "semicolon.csv").write_bytes("\ufefftext;label;\n".encode() + "".join(
        f"hello, world {i};{'pos' if i % 2 else 'neg'};\n" for i in range(ROWS)).encode())
    (folder / "tab.csv").write_text("text\tlabel\n" + "".join(f"tabbed {i}, with comma\t{i % 2}\n" for i in range(ROWS)))
    (folder / "multiline.csv").write_text(
        "text,label\n" + "".join(f'"line one {i}\nline two, quoted",{"yes" if i % 2 else "no"}\n' for i in range(ROWS)))
    # Numbers as a spreadsheet writes them: 1 in one row, 1.0 in the next; 10 sorts after 2.
    (folder / "numeric.csv").write_text(
        "text,label\n" + "".join(f"numbered {i},{['1', '1.0', '2', '10', '2.0'][i % 5]}\n" for i in range(ROWS)))
    (folder / "booleans.jsonl").write_text(
        "".join(json.dumps({"text": f"json {i}", "label": bool(i % 2)}) + "\n" for i in range(ROWS)))
    pd.DataFrame({"text": [f"parquet {i}" for i in range(ROWS)], "other": [f"pair {i}" for i in range(ROWS)],
                  "label": [i % 3 for i in range(ROWS)]}).to_parquet(folder / "table.parquet")
    _write_xlsx(folder / "book.xlsx")
    _write_saved_datasets(folder)
    return {
        "bare CR inside a field, CRLF": Quirk("bare-cr.csv", ROWS, ["0", "1"]),
        "semicolon, BOM, trailing empty column": Quirk("semicolon.csv", ROWS, ["neg", "pos"]),
        "tab delimiter in a .csv": Quirk("tab.csv", ROWS, ["0", "1"]),
        "quoted multi-line field": Quirk("multiline.csv", ROWS, ["no", "yes"]),
        "1 and 1.0 labels": Quirk("numeric.csv", ROWS, ["1", "2", "10"]),
        "boolean labels (JSONL)": Quirk("booleans.jsonl", ROWS, ["False", "True"]),
        "parquet with a pair column": Quirk("table.parquet", ROWS, ["0", "1", "2"], {"text_pair": "other"}),
        "xlsx, first sheet": Quirk("book.xlsx", ROWS, ["False", "True"], {"text": "post"}),
        "xlsx, chosen sheet": Quirk("book.xlsx#Second", 20, ["1", "2", "10"], {"text": "post"}),
        "save_to_disk with splits": Quirk("saved-splits", ROWS, ["tech", "sport"], {"text": "sentence"},
                                          sizes=(20, 4, 6)),
        "save_to_disk, one split": Quirk("saved-one-split", ROWS, ["a", "b"], sizes=(24, 3, 3)),
    }


def make_bad_files(folder: Path) -> dict[str, tuple[str, str]]:
    """Files the lab must refuse: (file name, the reason's words)."""
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.csv").write_bytes(b"")
    (folder / "header-only.csv").write_text("text,label\n")
    (folder / "latin1.csv").write_bytes("text,label\ncaf\xe9 au lait,1\nthe,0\n".encode("latin-1"))
    (folder / "no-text.csv").write_text("words,label\nhello,1\nbye,0\n")
    (folder / "one-class.csv").write_text("text,label\n" + "same again,1\n" * 10 + "once more,1.0\n" * 10)
    pd.DataFrame({"text": ["a", "b", "c"], "label": [[1, 2], [3], [4]]}).to_parquet(folder / "lists.parquet")
    (folder / "renamed.xlsx").write_text("text,label\na,1\nb,0\n")
    _write_xlsx(folder / "book.xlsx")
    datasets.Dataset.from_dict({"body": ["x", "y"], "label": [0, 1]}).save_to_disk(str(folder / "saved-no-text"))
    return {
        "empty": ("empty.csv", "is empty"),
        "header only": ("header-only.csv", "has a header but no rows"),
        "not UTF-8": ("latin1.csv", "is not UTF-8 text (byte 14 cannot be decoded)"),
        "missing column": ("no-text.csv", "has no column 'text'; its columns are: words, label"),
        "1 and 1.0 are a single class": ("one-class.csv", "holds a single class ('1')"),
        "list-valued labels": ("lists.parquet", "labels must be single values"),
        "not a workbook": ("renamed.xlsx", "is not an Excel workbook"),
        "no such sheet": ("book.xlsx#Nope", "has no sheet 'Nope'; its sheets are: First, Second"),
        "saved dataset without the text column": ("saved-no-text", "has no column 'text'"),
    }


@pytest.fixture(scope="module")
def quirks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quirks")
    cases = make_quirks(folder)
    assert list(cases) == QUIRK_CASES
    return folder, cases


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    cases = make_bad_files(folder)
    assert list(cases) == BAD_CASES
    return folder, cases


def _column_flags(columns: dict) -> list[str]:
    flags = []
    for name, flag in (("text", "--text-column"), ("label", "--label-column"), ("text_pair", "--text-pair-column")):
        if name in columns:
            flags += [flag, columns[name]]
    return flags


# --- the engine ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", QUIRK_CASES)
def test_engine_reads_each_quirk_with_its_rows_and_classes(quirks, case):
    from app.data import ColumnMap, load_dataset

    folder, cases = quirks
    quirk = cases[case]
    data = load_dataset(str(folder / quirk.reference), columns=ColumnMap(**quirk.columns))
    sizes = (len(data.train), len(data.validation), len(data.test))
    assert sum(sizes) == quirk.rows
    assert data.label_names == quirk.classes
    if quirk.sizes:
        assert sizes == quirk.sizes
    every_text = data.train.texts + data.validation.texts + data.test.texts
    assert len(set(every_text)) == quirk.rows  # no row split in two, none merged


def test_quirky_texts_keep_their_content(quirks):
    from app.data import ColumnMap, load_dataset

    folder, _ = quirks
    texts = load_dataset(str(folder / "bare-cr.csv")).train.texts
    assert all(t.endswith("first part\rsecond part") for t in texts)
    texts = load_dataset(str(folder / "multiline.csv")).train.texts
    assert all(t.endswith("\nline two, quoted") for t in texts)
    texts = load_dataset(str(folder / "semicolon.csv")).train.texts
    assert all(t.startswith("hello, world ") for t in texts)  # the BOM is not part of the header or text
    data = load_dataset(str(folder / "table.parquet"), columns=ColumnMap(text_pair="other"))
    assert all(p == t.replace("parquet", "pair") for t, p in zip(data.train.texts, data.train.pairs))


def test_saved_splits_are_used_as_given(quirks):
    from app.data import ColumnMap, load_dataset

    folder, _ = quirks
    data = load_dataset(str(folder / "saved-splits"), columns=ColumnMap(text="sentence"))
    assert sorted(data.test.texts) == sorted(f"saved sentence {i}" for i in range(24, ROWS))
    assert sorted(data.validation.texts) == sorted(f"saved sentence {i}" for i in range(20, 24))
    # ClassLabel ints keep their meaning: sentence i has label i % 2, and names[0] is "tech".
    for text, label in zip(data.train.texts, data.train.labels):
        assert label == int(text.rsplit(" ", 1)[1]) % 2


def test_label_names_follow_numeric_order_and_merge_spellings():
    from app.data_files import label_key, sorted_labels

    assert {label_key(v) for v in (1, 1.0, "1", "1.0", " 1 ")} == {"1"}
    assert sorted_labels({label_key(v) for v in ("10", "2", "1.5", "-1")}) == ["-1", "1.5", "2", "10"]
    assert [label_key(v) for v in (True, False)] == ["True", "False"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_engine_refuses_each_bad_file_with_one_line(bad_files, case):
    from app.data import load_dataset
    from app.errors import DatasetError

    folder, cases = bad_files
    name, reason = cases[case]
    with pytest.raises(DatasetError) as caught:
        load_dataset(str(folder / name))
    message = str(caught.value)
    assert reason in message and "\n" not in message


def test_size_limit_holds_for_every_kind(quirks, monkeypatch):
    from app.data import ColumnMap, load_dataset
    from app.errors import DatasetError

    folder, cases = quirks
    monkeypatch.setenv("LAB_MAX_DATASET_MB", "0.0001")  # about 100 bytes
    for case in ("semicolon, BOM, trailing empty column", "xlsx, first sheet", "parquet with a pair column",
                 "save_to_disk with splits"):
        quirk = cases[case]
        with pytest.raises(DatasetError, match="the limit is"):
            load_dataset(str(folder / quirk.reference), columns=ColumnMap(**quirk.columns))


# --- the CLI ---------------------------------------------------------------------------------


def _train_args(dataset: str, runs: Path, *extra: str) -> list[str]:
    return ["train", "--backbone", "tiny-random", "--dataset", dataset, "--steps", "2", "--batch-size", "4",
            "--max-length", "16", "--eval-every", "2", "--json", "--quiet", "--runs-dir", str(runs), *extra]


def test_cli_trains_on_every_quirk(quirks, tmp_path, capsys):
    """`app.cli.main` is what `python -m app` runs; in-process here so that eleven runs stay quick
    (the two subprocess tests below cover the shell)."""
    from app.cli import main
    from app.store import RunStore

    folder, cases = quirks
    runs = tmp_path / "runs"
    for case, quirk in cases.items():
        reference, _, sheet = quirk.reference.partition("#")
        extra = _column_flags(quirk.columns) + (["--sheet", sheet] if sheet else [])
        assert main(_train_args(str(folder / reference), runs, *extra)) == 0, (case, capsys.readouterr().err)
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["status"] == "finished", (case, out.get("error"))
        shown = RunStore(runs).get_run(out["run_id"])["summary"]["dataset"]
        assert sum(shown["sizes"].values()) == quirk.rows, case
        assert shown["label_names"] == quirk.classes, case
        if quirk.sizes:
            assert tuple(shown["sizes"][s] for s in ("train", "validation", "test")) == quirk.sizes, case


def test_cli_refuses_every_bad_file_with_status_2_and_one_line(bad_files, tmp_path, capsys):
    from app.cli import main
    from app.store import RunStore

    folder, cases = bad_files
    runs = tmp_path / "runs"
    for case, (name, reason) in cases.items():
        reference, _, sheet = name.partition("#")
        assert main(_train_args(str(folder / reference), runs, *(["--sheet", sheet] if sheet else []))) == 2, case
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and reason in lines[0], (case, lines)
    assert main(_train_args(str(folder / "empty.csv"), runs, "--sheet", "First")) == 2
    assert "--sheet applies to .xlsx files" in capsys.readouterr().err
    assert RunStore(runs).list_runs() == []


def _lab(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def test_python_m_app_trains_on_a_chosen_sheet(quirks, tmp_path):
    folder, cases = quirks
    result = _lab(*_train_args(str(folder / "book.xlsx"), tmp_path / "runs", "--sheet", "Second",
                               "--text-column", "post"))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["status"] == "finished" and out["dataset"].endswith("book.xlsx#Second")
    shown = json.loads(_lab("runs", "show", out["run_id"], "--json", "--runs-dir", str(tmp_path / "runs"))
                       .stdout.strip().splitlines()[-1])
    assert shown["summary"]["dataset"]["label_names"] == ["1", "2", "10"]
    assert sum(shown["summary"]["dataset"]["sizes"].values()) == 20


def test_python_m_app_refuses_a_file_that_is_not_utf8(bad_files, tmp_path):
    folder, _ = bad_files
    result = _lab(*_train_args(str(folder / "latin1.csv"), tmp_path / "runs"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is not UTF-8 text (byte 14 cannot be decoded)" in lines[0], result.stderr


# --- the upload widget -----------------------------------------------------------------------


def _open_launch(runs_dir: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("LAB_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=240)
    at.switch_page("../pages/launch.py")
    at.run()
    at.button(key="preset.1").click().run()  # the tiny CPU preset
    at.number_input(key="run.steps").set_value(2).run()
    at.checkbox(key="launch.open").uncheck().run()
    at.selectbox(key="launch.dataset").set_value("Upload a file…").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _selectbox(at: AppTest, label: str):
    return next(s for s in at.selectbox if s.label == label)


def _balance(at: AppTest) -> dict[str, int]:
    table = next(d.value for d in at.dataframe if "class" in d.value.columns)
    return dict(zip(table["class"], table["examples"]))


UPLOADABLE = [case for case in QUIRK_CASES if not case.startswith("save_to_disk")]  # folders are typed, not uploaded


def test_upload_previews_each_quirk_maps_its_columns_and_shows_the_class_balance(quirks, runs_dir, monkeypatch):
    folder, cases = quirks
    at = _open_launch(runs_dir, monkeypatch)
    for case in UPLOADABLE:
        quirk = cases[case]
        name, _, sheet = quirk.reference.partition("#")
        at.file_uploader[0].set_value((name, (folder / name).read_bytes(), "application/octet-stream")).run()
        if name.endswith(".xlsx"):
            _selectbox(at, "Sheet").set_value(sheet or "First").run()
        assert not at.exception and not at.error, (case, [e.value for e in at.error])
        assert any(f"{quirk.rows:,} rows" in c.value for c in at.caption), case
        text_box, label_box = _selectbox(at, "Text column"), _selectbox(at, "Label column")
        expected_text = quirk.columns.get("text", "text")
        assert expected_text in text_box.options and "label" in label_box.options, case
        text_box.set_value(expected_text)
        label_box.set_value("label")
        if "text_pair" in quirk.columns:
            _selectbox(at, "Second text (optional)").set_value(quirk.columns["text_pair"])
        at.run()
        balance = _balance(at)
        assert list(balance) == quirk.classes and sum(balance.values()) == quirk.rows, (case, balance)
        preview = next(d.value for d in at.dataframe if expected_text in d.value.columns)
        assert len(preview) == 5 and "Unnamed: 2" not in preview.columns, case


def test_upload_of_a_chosen_sheet_launches_a_run_on_that_sheet(quirks, runs_dir, monkeypatch):
    from app.manager import get_manager

    folder, _ = quirks
    at = _open_launch(runs_dir, monkeypatch)
    at.file_uploader[0].set_value(("My Book.xlsx", (folder / "book.xlsx").read_bytes(), "application/octet-stream"))
    at.run()
    _selectbox(at, "Sheet").set_value("Second").run()
    _selectbox(at, "Text column").set_value("post")
    _selectbox(at, "Label column").set_value("label")
    at.run()
    at.button(key="launch.submit").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    manager = get_manager(runs_dir)
    [run] = manager.store.list_runs()
    final = manager.wait(run["id"], timeout=180)
    assert final["status"] == "finished", final.get("error")
    assert run["config"]["dataset"].endswith(".xlsx#Second") and "My Book" not in run["config"]["dataset"]
    assert final["summary"]["dataset"]["label_names"] == ["1", "2", "10"]
    assert sum(final["summary"]["dataset"]["sizes"].values()) == 20


def test_upload_refuses_each_bad_file_with_its_reason(bad_files, runs_dir, monkeypatch):
    from app.store import RunStore

    folder, cases = bad_files
    at = _open_launch(runs_dir, monkeypatch)
    # A missing column cannot be asked for here: the column pickers offer the file's own columns.
    for case in ("empty", "header only", "not UTF-8", "1 and 1.0 are a single class", "list-valued labels",
                 "not a workbook"):
        name, reason = cases[case]
        at.file_uploader[0].set_value((name, (folder / name).read_bytes(), "application/octet-stream")).run()
        if not at.error:  # a file that reads is refused when launching
            at.button(key="launch.submit").click().run()
        assert not at.exception, case
        errors = [e.value for e in at.error]
        assert any(reason in e or (case == "empty" and "empty" in e) for e in errors), (case, errors)
        assert all("\n" not in e for e in errors), (case, errors)
    assert RunStore(runs_dir).list_runs() == []


# --- a real run on BBC News ------------------------------------------------------------------


@pytest.mark.real
def test_minilm_learns_bbc_news_topics_well_above_the_majority_class(store):
    from app.data import load_dataset

    test = load_dataset("bbc-news").test
    majority = max(collections.Counter(test.labels).values()) / len(test)
    record = train_now(store, backbone="minilm-l6", dataset="bbc-news", method="full_ft", steps=24, batch_size=8,
                       max_length=128, eval_every=24, max_train_examples=None, max_eval_examples=1000)
    assert record["status"] == "finished", record.get("error")
    accuracy = record["metrics"]["test_accuracy"]
    print(f"bbc-news test accuracy {accuracy:.3f}, majority class {majority:.3f}")
    assert accuracy >= majority + 0.3, (accuracy, majority)
