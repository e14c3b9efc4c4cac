"""Run bundles: finished runs in one zip, to hand to someone who explores them without training.

A bundle holds every row the pages read (the run, its step and evaluation series, its telemetry:
gates, activations, replacement draws, memory, and its records such as lesson links) and, on
request, its checkpoint files. It is data only: JSON and safetensors, nothing that runs on import.

    bundle.json                 what is inside: format, version, and per run its row counts and
                                every file with its size and SHA-256
    runs/<id>/rows.json         the run's rows, table by table
    runs/<id>/files/<name>      run.json, and with checkpoints the run's .safetensors files

Import checks everything before it writes anything: a zip that does not open, a member name
outside that layout (`../x`), a manifest from a newer lab, or a manifest that disagrees with the
members (a missing or extra member, a size, a checksum, a row count) is refused with one line and
the runs folder is left as it was. A run already in the folder is skipped, so importing twice adds
nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
import zipfile
from pathlib import Path

from .errors import LabError
from .store import ACTIVE_STATUSES, RUN_ID_PATTERN, TABLES, RunStore

BUNDLE_FORMAT = "ladder-theseus-lab/run-bundle"
BUNDLE_VERSION = 1
MANIFEST = "bundle.json"
DATA_FILES = (".json",)  # always carried
CHECKPOINT_FILES = (".safetensors",)  # carried on request
MAX_BYTES = 32 * 2**30  # what a bundle may unpack to: checkpoints of a few large runs, not a zip bomb
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MEMBER = re.compile(r"^runs/(?P<run>[A-Za-z0-9][A-Za-z0-9_-]{0,63})/(?:rows\.json|files/(?P<file>[^/]+))$")


class BundleError(LabError):
    """A bundle that cannot be read or imported as it is."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _run_files(store: RunStore, run_id: str, checkpoints: bool) -> list[Path]:
    folder = store.run_dir(run_id)
    wanted = DATA_FILES + (CHECKPOINT_FILES if checkpoints else ())
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in wanted and FILE_NAME.match(p.name)) \
        if folder.is_dir() else []


def checkpoint_bytes(store: RunStore, run_ids: list[str]) -> int:
    """What the runs' checkpoints would add to a bundle."""
    return sum(p.stat().st_size for run_id in run_ids for p in _run_files(store, run_id, True)
               if p.suffix in CHECKPOINT_FILES)


def export_bundle(store: RunStore, run_ids: list[str], out_path: str | Path, *, checkpoints: bool = False) -> dict:
    """Write the runs (finished, failed or cancelled; not running) into one zip."""
    if not run_ids:
        raise BundleError("name one or more runs to bundle")
    out_path = Path(out_path).expanduser()
    if out_path.exists():
        raise BundleError(f"'{out_path}' exists; choose a new file name")
    records = [store.get_run(run_id) for run_id in dict.fromkeys(run_ids)]
    active = [r["id"] for r in records if r["status"] in ACTIVE_STATUSES]
    if active:
        raise BundleError(f"run(s) {', '.join(active)} are still queued or running; bundle them once they end")
    manifest = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "created_at": time.time(), "runs": []}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for record in records:
                run_id = record["id"]
                rows = json.dumps(store.raw_rows(run_id), separators=(",", ":")).encode()
                archive.writestr(f"runs/{run_id}/rows.json", rows)
                entry = {"id": run_id, "name": record.get("name") or "", "method": record["method"],
                         "rows_sha256": _sha256(rows), "rows_bytes": len(rows), "files": []}
                for path in _run_files(store, run_id, checkpoints):
                    data = path.read_bytes()
                    archive.writestr(f"runs/{run_id}/files/{path.name}", data)
                    entry["files"].append({"name": path.name, "bytes": len(data), "sha256": _sha256(data)})
                manifest["runs"].append(entry)
            archive.writestr(MANIFEST, json.dumps(manifest, indent=2))
        partial.replace(out_path)
    finally:
        partial.unlink(missing_ok=True)
    files = sum(f["bytes"] for run in manifest["runs"] for f in run["files"])
    return {"path": str(out_path), "runs": [r["id"] for r in records], "checkpoints": checkpoints,
            "bytes": out_path.stat().st_size, "file_bytes": files}


def _read_manifest(archive: zipfile.ZipFile) -> dict:
    try:
        manifest = json.loads(archive.read(MANIFEST))
    except KeyError:
        raise BundleError(f"not a run bundle: it has no {MANIFEST}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"not a run bundle: {MANIFEST} is not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"not a run bundle: {MANIFEST} does not say format '{BUNDLE_FORMAT}'")
    version = manifest.get("version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"not a run bundle: unknown bundle version {version!r}")
    if version > BUNDLE_VERSION:
        raise BundleError(f"this bundle was written by a newer version of the lab (bundle version {version}; this "
                          f"lab reads up to {BUNDLE_VERSION}): update the lab to import it")
    if not isinstance(manifest.get("runs"), list) or not manifest["runs"]:
        raise BundleError("the bundle lists no runs")
    return manifest


def _expected_members(manifest: dict) -> dict[str, tuple[int, str]]:
    """Member name -> (bytes, sha256), as the manifest declares them."""
    expected = {}
    for entry in manifest["runs"]:
        run_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id):
            raise BundleError(f"the bundle lists an invalid run id {run_id!r}")
        expected[f"runs/{run_id}/rows.json"] = (entry.get("rows_bytes"), entry.get("rows_sha256"))
        for item in entry.get("files") or []:
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str) or not FILE_NAME.match(name) or \
                    not name.endswith(DATA_FILES + CHECKPOINT_FILES):
                raise BundleError(f"the bundle lists a file it may not carry: {name!r}")
            expected[f"runs/{run_id}/files/{name}"] = (item.get("bytes"), item.get("sha256"))
    return expected


def _check_rows(run_id: str, rows) -> dict[str, list[dict]]:
    if not isinstance(rows, dict) or set(rows) - set(TABLES) or not isinstance(rows.get("runs"), list):
        raise BundleError(f"run {run_id}: its rows are not the lab's tables")
    run = rows["runs"][0] if len(rows["runs"]) == 1 else None
    if not isinstance(run, dict) or run.get("id") != run_id:
        raise BundleError(f"run {run_id}: its rows describe another run")
    if run.get("status") in ACTIVE_STATUSES:
        raise BundleError(f"run {run_id}: it is marked {run.get('status')}; only ended runs travel")
    for table in TABLES[1:]:
        items = rows.get(table, [])
        if not isinstance(items, list) or any(not isinstance(i, dict) or i.get("run_id") != run_id for i in items):
            raise BundleError(f"run {run_id}: its {table} rows belong to another run")
    for table, items in rows.items():
        for item in items:
            if any(not isinstance(v, (str, int, float, type(None))) for v in item.values()):
                raise BundleError(f"run {run_id}: a {table} row holds something other than text and numbers")
    run["owner_pid"] = run["owner_token"] = None  # no process here owns it
    return rows


def read_bundle(path) -> tuple[dict, dict[str, dict], dict[str, dict[str, bytes]]]:
    """The manifest, each run's rows and each run's files, every member checked against the manifest.
    `path` is a file path or a binary file object (an upload)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise BundleError(f"not a readable zip file: {exc}") from None
    with archive:
        names = archive.namelist()
        for name in names:
            if name != MANIFEST and not MEMBER.match(name):
                raise BundleError(f"the bundle holds a member outside its layout: {name!r}")
            match = MEMBER.match(name)
            if match and match["file"] is not None and not FILE_NAME.match(match["file"]):
                raise BundleError(f"the bundle holds a member outside its layout: {name!r}")
        if len(set(names)) != len(names):
            raise BundleError("the bundle holds a member twice")
        manifest = _read_manifest(archive)
        expected = _expected_members(manifest)
        present = set(names) - {MANIFEST}
        if present != set(expected):
            missing, extra = sorted(set(expected) - present), sorted(present - set(expected))
            raise BundleError("the bundle's contents disagree with its manifest: "
                              + "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                                        extra and f"not listed {', '.join(extra)}"])))
        unpacked = sum(archive.getinfo(name).file_size for name in names)
        if unpacked > MAX_BYTES:
            raise BundleError(f"the bundle would unpack to {unpacked / 2**30:.1f} GiB, more than the "
                              f"{MAX_BYTES / 2**30:.0f} GiB a bundle may hold")
        rows, files = {}, {}
        for name, (size, digest) in expected.items():
            if archive.getinfo(name).file_size != size:
                raise BundleError(f"the bundle's manifest gives another size for {name}")
            try:
                data = archive.read(name)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise BundleError(f"the bundle is damaged at {name}: {exc}") from None
            if _sha256(data) != digest:
                raise BundleError(f"the bundle's manifest gives another checksum for {name}")
            match = MEMBER.match(name)
            if match["file"] is None:
                try:
                    rows[match["run"]] = _check_rows(match["run"], json.loads(data))
                except ValueError as exc:
                    raise BundleError(f"run {match['run']}: rows.json is not JSON ({exc})") from None
            else:
                files.setdefault(match["run"], {})[match["file"]] = data
    return manifest, rows, files


def import_bundle(store: RunStore, path) -> dict:
    """Add the bundle's runs that this runs folder lacks; all of them or, on any error, none."""
    manifest, rows, files = read_bundle(path)
    order = [entry["id"] for entry in manifest["runs"]]
    skipped = [run_id for run_id in order if store.has_run(run_id)]
    new = [run_id for run_id in order if run_id not in skipped]
    staging = store.runs_dir / f".import-{time.time_ns()}"
    try:
        for run_id in new:
            target = store.run_dir(run_id)
            if target.exists():
                raise BundleError(f"run {run_id}: its folder exists in {store.runs_dir} without a stored run")
            folder = staging / run_id
            folder.mkdir(parents=True)
            for name, data in files.get(run_id, {}).items():
                (folder / name).write_bytes(data)
        store.insert_raw_rows([rows[run_id] for run_id in new])
        for run_id in new:
            store.run_dir(run_id).parent.mkdir(parents=True, exist_ok=True)
            (staging / run_id).replace(store.run_dir(run_id))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"imported": new, "skipped": skipped, "bundle_version": manifest["version"]}
