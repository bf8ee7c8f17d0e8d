"""Stage `synthesize`: instructions written by the generator from sampled corpus passages, quality- and
diversity-filtered against the seeds (journaled, so a resume does not ask again)."""

from __future__ import annotations

from sdk.curation.seeds import seed_pool
from sdk.progress import log
from sdk.stages.base import Stage
from sdk.store import read_jsonl


def run(ctx):
    from sdk.curation.diversity import filter_candidates
    from sdk.curation.synthesis import SynthesisPlan, sample_passages, synthesize

    cur, first = ctx.recipe.curation, ctx.layout.iteration(0)
    candidates, rejected = [], []
    if cur.passages > 0:
        chunks = read_jsonl(ctx.index_dir() / "chunks.jsonl")
        subareas = sorted({s.subarea for s in ctx.pack.seeds()})
        passages = sample_passages(chunks, cur.passages, subareas, ctx.recipe.seed)
        plan = SynthesisPlan(ctx.name("generator"), cur.per_passage, cur.min_words, cur.max_words)
        journal = ctx.store.journal(first.synthesis_journal)
        candidates, rejected = synthesize(
            ctx.pack, passages, ctx.model("generator"), plan, journal=journal, budget=ctx.budget("generator")
        )
    kept = []
    if candidates:
        seeds = [r["instruction"] for r in seed_pool(ctx.pack, ctx.recipe.data.max_seeds, ctx.recipe.seed)]
        decisions = filter_candidates(
            seeds, [c["instruction"] for c in candidates], cur.rouge_threshold, cur.cosine_threshold, ctx.embedder()
        )
        for row, d in zip(candidates, decisions):
            if d.kept:
                kept.append(row)
            else:
                score = d.max_cosine if d.reason == "cosine" else d.max_rouge
                rejected.append(dict(row, reason=f"too similar ({d.reason} {score:.2f} to {d.match})"))
    log(
        f"synthesised {len(kept)} instructions ({len(rejected)} rejected, reasons in {ctx.layout.relative(first.synthesis_rejected)})"
    )
    outputs = [
        ctx.store.write_jsonl(first.synthesized, kept),
        ctx.store.write_jsonl(first.synthesis_rejected, rejected),
    ]
    ctx.store.journal(first.synthesis_journal).remove()
    return outputs


STAGE = Stage(
    "synthesize",
    run,
    reads=("knowledge",),
    writes=("first.synthesized", "first.synthesis_rejected"),
    recipe=("seed", "domain", "models.generator", "curation", "data.max_seeds", "knowledge.embedder"),
)
