"""Stage `<iter>/pool`: what the student learns from in this iteration, and everything asked so far.

iteration 0   train pool = the pack's seeds (each linked to its nearest corpus chunk) + the synthesised
iteration k   train pool = what iteration k-1 generated + carried earlier instructions (no new teacher calls)
both          + a replay_fraction share of general instructions; cache pool = every instruction so far
"""

from __future__ import annotations

import random

from sdk.curation.seeds import seed_pool
from sdk.progress import log
from sdk.stages.base import Stage


def ground_seeds(ctx, seeds: list[dict]) -> list[dict]:
    """Link each seed to its nearest corpus chunk (FAISS via llama-index) for provenance; the chunk texts go
    to iteration 0's seed_grounding.jsonl so the report can show them from the run directory alone."""
    from sdk.knowledge.retrieve import retrieve

    if not seeds or not ctx.store.read_json(ctx.layout.knowledge).get("chunks"):
        return seeds
    grounded, found = [], []
    for row in seeds:
        passage = retrieve(ctx.index_dir(), row["instruction"], k=1)
        if passage:
            p = passage[0]
            link = {"chunk_id": p.chunk_id, "document": p.document, "score": round(p.score, 4)}
            prov = {
                "document": p.document,
                "chunk_id": p.chunk_id,
                "stage": "seed_grounding",
                "model": ctx.recipe.knowledge.embedder,
            }
            found.append(
                {"id": row["id"], "instruction": row["instruction"], **link, "text": p.text, "provenance": prov}
            )
            row = dict(row, provenance=dict(row["provenance"], grounding=link))
        grounded.append(row)
    ctx.store.write_jsonl(ctx.layout.iteration(0).seed_grounding, found)
    return grounded


def carried_rows(ctx, k: int, n_new: int) -> list[dict]:
    """Earlier instructions the teacher already answered, carried into iteration k's train pool so the
    student keeps seeing the seeds and curated data while it learns the new ones (no new teacher calls)."""
    n = round(ctx.recipe.adversarial.carry_fraction * n_new)
    answered = ctx.teacher_answers(k - 1)
    earlier = {
        r["id"]: r
        for j in range(k)
        for r in ctx.store.read_jsonl(ctx.layout.iteration(j).train_pool)
        if r.get("source") not in ("replay", "carried") and r["id"] in answered
    }
    picked = random.Random(f"{ctx.recipe.seed}:carry:{k}").sample(sorted(earlier), min(n, len(earlier)))
    return [dict(earlier[i], source="carried", origin=earlier[i].get("source")) for i in sorted(picked)]


def run(ctx, k: int):
    it = ctx.layout.iteration(k)
    if k == 0:
        seeds = ground_seeds(
            ctx, [dict(r, source="seed") for r in seed_pool(ctx.pack, ctx.recipe.data.max_seeds, ctx.recipe.seed)]
        )
        synthesized = [dict(r, source="synthesized") for r in ctx.store.read_jsonl(it.synthesized)]
        train_pool = seeds + synthesized
        cache_pool = train_pool
    else:
        prev = ctx.layout.iteration(k - 1)
        train_pool = [dict(r, source="generated", origin=r["source"]) for r in ctx.store.read_jsonl(prev.generated)]
        cache_pool = ctx.store.read_jsonl(prev.cache_pool) + train_pool
        train_pool = train_pool + carried_rows(ctx, k, len(train_pool))
    fraction = ctx.recipe.train.replay_fraction
    if fraction and train_pool:
        from sdk.train.replay import replay_count, replay_instructions

        train_pool = train_pool + replay_instructions(replay_count(len(train_pool), fraction), ctx.recipe.seed + k)
    log(f"{it.dir.name}: train pool {len(train_pool)}, cache pool {len(cache_pool)}")
    return [ctx.store.write_jsonl(it.train_pool, train_pool), ctx.store.write_jsonl(it.cache_pool, cache_pool)]


STAGE = Stage(
    "pool",
    run,
    per_iteration=True,
    reads=(
        "knowledge",
        "first.synthesized",
        "previous.generated",
        "previous.cache_pool",
        "previous.train_pool",
        "previous.teacher",
    ),
    writes=("iteration.train_pool", "iteration.cache_pool", "first.seed_grounding"),
    recipe=(
        "seed",
        "domain",
        "data.max_seeds",
        "knowledge.embedder",
        "adversarial.carry_fraction",
        "train.replay_fraction",
    ),
)
