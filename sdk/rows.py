"""Rows: every JSONL artifact of a run is a list of dicts keyed by `id`, each carrying its provenance."""

from __future__ import annotations


def provenance(
    stage: str, model: str | None = None, document: str | None = None, chunk_id: str | None = None, **extra
) -> dict:
    """Where a sample came from: source document, chunk id, the stage and the model that made it."""
    return {"document": document, "chunk_id": chunk_id, "stage": stage, "model": model, **extra}


def journaled_reply(ids: list[str], field: str = "reply"):
    """A `to_row` for generate_journaled: reply i as {"id", field, "error"}, the text or the error that replaced it."""

    def to_row(i: int, out) -> dict:
        failed = isinstance(out, BaseException)
        return {
            "id": ids[i],
            field: None if failed else out,
            "error": f"{type(out).__name__}: {out}" if failed else None,
        }

    return to_row
