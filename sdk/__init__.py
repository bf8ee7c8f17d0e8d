"""Distillery: distill a small domain assistant from a strong teacher LLM."""

import os

# The Hugging Face libraries report usage to the Hub (TRL on every trainer it builds). A run on a
# hospital's or a bank's machine sends nothing it was not asked to: off unless the user sets it. Set
# here, before anything imports huggingface_hub, which reads it once; training workers import sdk too.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from sdk.errors import ConfigError, DistilleryError, ModelError, PackError  # noqa: E402

__version__ = "0.1.0"


def distill(*args, **kwargs):
    """See sdk.api.distill (imported lazily: torch and transformers load only when a run starts)."""
    from sdk.api import distill as _distill

    return _distill(*args, **kwargs)


def resume(*args, **kwargs):
    from sdk.api import resume as _resume

    return _resume(*args, **kwargs)


def __getattr__(name):
    if name == "RunResult":
        from sdk.pipeline import RunResult

        return RunResult
    raise AttributeError(name)


__all__ = ["distill", "resume", "RunResult", "ConfigError", "DistilleryError", "ModelError", "PackError", "__version__"]
