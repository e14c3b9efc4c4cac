"""Safe defaults: local-only server, no usage statistics, no remote code, no unpickling of
anything the project did not write itself."""

from __future__ import annotations

import pickle
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("app", "pages", "components", "benchmarks", "scripts")


def project_sources():
    for folder in SOURCE_DIRS:
        yield from (ROOT / folder).rglob("*.py")


def test_server_binds_loopback_and_sends_no_usage_statistics():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["browser"]["gatherUsageStats"] is False
    assert "0.0.0.0" not in (ROOT / "Makefile").read_text()


@pytest.mark.parametrize(
    "pattern, why",
    [
        (r"trust_remote_code\s*=\s*True", "remote code is never enabled"),
        (r"^\s*import pickle|^\s*from pickle|import cloudpickle|import dill", "nothing is unpickled"),
        (r"torch\.load\((?![^)]*weights_only\s*=\s*True)", "torch.load only with weights_only=True"),
        (r"allow_pickle\s*=\s*True", "numpy never unpickles"),
        (r"read_pickle\(", "pandas never unpickles"),
        (r"0\.0\.0\.0", "servers stay on 127.0.0.1"),
    ],
)
def test_source_has_no_unsafe_calls(pattern, why):
    offenders = []
    for path in project_sources():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(pattern, line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, f"{why}: {offenders}"


class _Payload:
    """Unpickling this writes a marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_pickled_checkpoint_in_a_model_folder_never_runs_code(tmp_path):
    from app.backbones import get_backbone
    from app.errors import BackboneError

    folder = tmp_path / "evil-model"
    tiny = get_backbone("tiny-random")
    tiny.config.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    marker = tmp_path / "marker.txt"
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"embeddings.word_embeddings.weight": _Payload(marker)}, handle)
    with pytest.raises(BackboneError):
        get_backbone(str(folder)).load_encoder()
    assert not marker.exists(), "loading a model folder executed pickled code"
