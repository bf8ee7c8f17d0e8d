"""Where the SDK's bundled data lives, for an editable install and for a built wheel alike.

A wheel carries `domains/`, `corpora/` and `configs/` as `sdk/_data/...` (see pyproject.toml);
an editable install reads them from the repository root, next to the `sdk/` folder.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the bundled folder `name` (one of domains, corpora, configs)."""
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"bundled folder '{name}' not found next to {_PACKAGE_DIR}")


def cache_dir() -> Path:
    """The user cache directory for converted models (override with DISTILLERY_CACHE)."""
    root = os.environ.get("DISTILLERY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "distillery"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
