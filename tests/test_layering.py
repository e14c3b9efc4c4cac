"""The code's layering, checked by import-linter with the contracts in `.importlinter`: the engine
never imports streamlit, pages or components (its entry script aside), components never import
pages, the engine's modules import only from the layers below them, and no package holds an
import circle (imports inside functions count)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(tree / ".importlinter")], cwd=tree,
                          capture_output=True, text=True, timeout=300)


def test_the_code_keeps_every_layering_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "4 kept, 0 broken" in result.stdout


def copy_of_the_code(tmp_path: Path) -> Path:
    for name in ("app", "components", "pages"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def add_import(module: Path, line: str) -> None:
    """An import inside a function, the place where import circles used to hide."""
    module.write_text(module.read_text() + f"\n\ndef _added():\n    {line}\n")


@pytest.mark.parametrize("module, line, broken", [
    ("app/backbones.py", "from .methods import METHODS", "No import circles among the modules of any package BROKEN"),
    ("app/store.py", "import streamlit", "never imports streamlit, pages or components BROKEN"),
    ("components/common.py", "import pages.home", "Components never import pages BROKEN"),
    ("app/methods/base.py", "from ..training import train", "The engine's layers: each imports only from the layers "
                                                              "below it BROKEN"),
])
def test_a_wrong_arrow_breaks_its_contract(tmp_path, module, line, broken):
    tree = copy_of_the_code(tmp_path)
    add_import(tree / module, line)
    result = lint_imports(tree)
    assert result.returncode != 0
    assert broken in " ".join(result.stdout.split()), result.stdout[-3000:]
