"""Stage `ingest`: the pack's corpus indexed with llama-index + FAISS (reused while the corpus is unchanged)."""

from __future__ import annotations

from sdk.stages.base import Stage


def run(ctx):
    from sdk.knowledge.ingest import IndexSettings, ingest

    k, r = ctx.recipe.knowledge, ctx.pack.spec.retrieval
    settings = IndexSettings(
        chunk_size=r.chunk_size,
        chunk_overlap=r.chunk_overlap,
        embedder=k.embedder,
        index_type=k.index_type,
        flat_max_vectors=k.flat_max_vectors,
    )
    summary = ingest(ctx.pack.corpus_dir(), ctx.index_dir(), settings)
    return [ctx.store.write_json(ctx.layout.knowledge, summary.as_dict())]


STAGE = Stage("ingest", run, writes=("knowledge",), recipe=("domain", "knowledge"))
