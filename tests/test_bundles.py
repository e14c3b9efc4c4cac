"""Run bundles: ended runs carried to another runs folder with everything their pages show, and
every malformed bundle refused with one line before anything is written."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from conftest import train_now

from app.bundles import BUNDLE_VERSION, MANIFEST, BundleError, export_bundle, import_bundle
from app.store import RunStore


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Two finished runs with telemetry and a lesson-style record."""
    store = RunStore(tmp_path_factory.mktemp("source-runs"))
    quick = dict(steps=4, eval_every=2, max_eval_examples=32)
    runs = {"full_ft": train_now(store, method="full_ft", **quick), "lst": train_now(store, method="lst", **quick)}
    for record in runs.values():
        assert record["status"] == "finished", record.get("error")
    store.put_record(runs["lst"]["id"], "lesson", "a-lesson-id", {"lesson": "lst-memory", "role": "lst"})
    return store, runs


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith("lab.sqlite3")}


def test_runs_travel_with_every_row_their_pages_read_and_a_second_import_adds_nothing(source, tmp_path):
    store, runs = source
    ids = [runs["full_ft"]["id"], runs["lst"]["id"]]
    made = export_bundle(store, ids, tmp_path / "two.zip")
    assert made["runs"] == ids and not made["checkpoints"]
    target = RunStore(tmp_path / "class")
    assert import_bundle(target, tmp_path / "two.zip") == {"imported": ids, "skipped": [],
                                                            "bundle_version": BUNDLE_VERSION}
    for run_id in ids:
        original, copied = store.raw_rows(run_id), target.raw_rows(run_id)
        for row in (original["runs"][0], copied["runs"][0]):
            row.pop("owner_pid"), row.pop("owner_token")
        assert copied == original
        assert target.telemetry_kinds(run_id) == store.telemetry_kinds(run_id)
        assert (target.run_dir(run_id) / "run.json").read_bytes() == (store.run_dir(run_id) / "run.json").read_bytes()
        assert not (target.run_dir(run_id) / "trainable.safetensors").exists()  # no checkpoints asked for
    assert target.records_of_kind("lesson", key="a-lesson-id")
    again = import_bundle(target, tmp_path / "two.zip")
    assert again["imported"] == [] and again["skipped"] == ids
    assert len(target.list_runs()) == 2


def test_checkpoints_travel_on_request_and_the_imported_model_predicts_the_same(source, tmp_path):
    from app.predict import load_predictor

    store, runs = source
    run_id = runs["lst"]["id"]
    made = export_bundle(store, [run_id], tmp_path / "weights.zip", checkpoints=True)
    assert made["file_bytes"] > (store.run_dir(run_id) / "trainable.safetensors").stat().st_size
    target = RunStore(tmp_path / "class")
    import_bundle(target, tmp_path / "weights.zip")
    texts = ["free entry to win a prize", "see you at lunch"]
    assert load_predictor(target, run_id).predict(texts)["logits"] == load_predictor(store, run_id).predict(texts)["logits"]


def _rewrite(bundle: Path, out: Path, change) -> Path:
    """A copy of the bundle with its members passed through `change(name, data) -> [(name, data)]`."""
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            for new_name, data in change(name, src.read(name)):
                dst.writestr(new_name, data)
    return out


def _manifest_edit(edit):
    def change(name, data):
        if name == MANIFEST:
            manifest = json.loads(data)
            edit(manifest)
            data = json.dumps(manifest).encode()
        return [(name, data)]
    return change


def _consistent(bundle: Path, out: Path, change_rows) -> Path:
    """A copy whose rows.json is changed and whose manifest is updated to match: a bundle that lies
    coherently, which only the rows' own checks can catch."""
    import hashlib

    with zipfile.ZipFile(bundle) as src:
        members = {name: src.read(name) for name in src.namelist()}
    manifest = json.loads(members[MANIFEST])
    for entry in manifest["runs"]:
        name = f"runs/{entry['id']}/rows.json"
        members[name] = change_rows(members[name])
        entry.update(rows_bytes=len(members[name]), rows_sha256=hashlib.sha256(members[name]).hexdigest())
    members[MANIFEST] = json.dumps(manifest).encode()
    with zipfile.ZipFile(out, "w") as dst:
        for name, data in members.items():
            dst.writestr(name, data)
    return out


def _bad_bundles(good: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    data = good.read_bytes()
    (tmp / "noise.zip").write_bytes(b"PK\x03\x04 this is not a zip at all")
    (tmp / "truncated.zip").write_bytes(data[: len(data) // 2])
    first_files = lambda m: m["runs"][0]["files"][0]  # noqa: E731
    return {
        "not a zip": (tmp / "noise.zip", "not a readable zip file"),
        "truncated": (tmp / "truncated.zip", "not a readable zip file"),
        "path traversal": (_rewrite(good, tmp / "escape.zip", lambda n, d: [(n, d)] + (
            [("../evil.json", b"{}")] if n == MANIFEST else [])), "outside its layout: '../evil.json'"),
        "traversal inside runs/": (_rewrite(good, tmp / "escape2.zip", lambda n, d: [(n, d)] + (
            [("runs/../../x.json", b"{}")] if n == MANIFEST else [])), "outside its layout"),
        "an unlisted member": (_rewrite(good, tmp / "extra.zip", lambda n, d: [(n, d)] + (
            [(n.replace("run.json", "extra.json"), d)] if n.endswith("/files/run.json") else [])),
            "disagree with its manifest: not listed"),
        "a listed member missing": (_rewrite(good, tmp / "missing.zip", lambda n, d: [] if n.endswith(
            "/files/run.json") else [(n, d)]), "disagree with its manifest: missing"),
        "a size that lies": (_rewrite(good, tmp / "size.zip", _manifest_edit(
            lambda m: first_files(m).update(bytes=first_files(m)["bytes"] + 1))), "another size"),
        "a checksum that lies": (_rewrite(good, tmp / "sum.zip", _manifest_edit(
            lambda m: first_files(m).update(sha256="0" * 64))), "another checksum"),
        "rows of another run, the manifest in step": (_consistent(good, tmp / "rows.zip", lambda rows: rows.replace(
            b'"run_id":"', b'"run_id":"x')), "its steps rows belong to another run"),
        "a run still training": (_consistent(good, tmp / "active.zip", lambda rows: rows.replace(
            b'"status":"finished"', b'"status":"running"')), "only ended runs travel"),
        "a newer lab": (_rewrite(good, tmp / "newer.zip", _manifest_edit(lambda m: m.update(version=BUNDLE_VERSION + 1))),
                        "written by a newer version of the lab"),
        "not a bundle": (_rewrite(good, tmp / "format.zip", _manifest_edit(lambda m: m.update(format="other"))),
                         "not a run bundle"),
    }


def test_every_malformed_bundle_is_refused_with_one_line_and_nothing_written(source, tmp_path):
    store, runs = source
    good = tmp_path / "good.zip"
    export_bundle(store, [runs["full_ft"]["id"]], good)
    target = RunStore(tmp_path / "class")
    before = _snapshot(target.runs_dir)
    for case, (bundle, says) in _bad_bundles(good, tmp_path).items():
        with pytest.raises(BundleError, match=None) as caught:
            import_bundle(target, bundle)
        message = str(caught.value)
        assert says in message and "\n" not in message, (case, message)
        assert target.list_runs() == [] and _snapshot(target.runs_dir) == before, case
    assert not list((tmp_path / "evil.json").parent.glob("evil.json"))


def test_the_cli_bundles_and_imports_with_one_line_on_bad_input(source, tmp_path, capsys):
    from app.cli import main

    store, runs = source
    run_id = runs["full_ft"]["id"]
    assert main(["runs", "export", run_id, "--out", str(tmp_path / "b.zip"), "--runs-dir", str(store.runs_dir),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"] == [run_id]
    assert main(["runs", "import", str(tmp_path / "b.zip"), "--runs-dir", str(tmp_path / "class"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["imported"] == [run_id]
    (tmp_path / "bad.zip").write_bytes(b"garbage")
    assert main(["runs", "import", str(tmp_path / "bad.zip"), "--runs-dir", str(tmp_path / "class")]) == 2
    assert "not a readable zip file" in capsys.readouterr().err


def test_an_upload_is_read_from_memory_like_a_file(source, tmp_path):
    store, runs = source
    export_bundle(store, [runs["lst"]["id"]], tmp_path / "one.zip")
    target = RunStore(tmp_path / "class")
    assert import_bundle(target, io.BytesIO((tmp_path / "one.zip").read_bytes()))["imported"] == [runs["lst"]["id"]]
