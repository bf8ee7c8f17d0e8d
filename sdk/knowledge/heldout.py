"""Which corpus chunks are held out: used for domain perplexity, never for calibration or healing.

A chunk is held out when a hash of its id falls in the first `share` of the buckets, so the split is
stable across runs and does not move when another document is added.
"""

from __future__ import annotations

import hashlib

HELDOUT_SHARE = 0.1


def is_heldout(chunk_id: str, share: float = HELDOUT_SHARE) -> bool:
    bucket = int(hashlib.sha256(chunk_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < share


def split_chunks(chunks: list[dict], share: float = HELDOUT_SHARE) -> tuple[list[dict], list[dict]]:
    """(train chunks, held-out chunks). With two chunks or more, at least one is held out."""
    held = [c for c in chunks if is_heldout(c["chunk_id"], share)]
    if not held and len(chunks) >= 2:
        held = [min(chunks, key=lambda c: hashlib.sha256(c["chunk_id"].encode()).hexdigest())]
    ids = {c["chunk_id"] for c in held}
    return [c for c in chunks if c["chunk_id"] not in ids], held
