"""Stage `<iter>/generate`: new instructions from the hard and easy ones (Lion's generation), filtered
for quality, domain and diversity (ROUGE-L and embeddings) against everything asked so far."""

from __future__ import annotations

from sdk.progress import log
from sdk.stages.base import Stage

# What the last iteration records when adversarial.generate_last is false.
SKIPPED = {
    "skipped": "last iteration (adversarial.generate_last is false)",
    "kept": 0,
    "target": 0,
    "attempts": 0,
    "kept_hard": 0,
    "kept_easy": 0,
    "rejected_by_reason": {},
}


def run(ctx, k: int):
    from sdk.adversarial.generation import (
        GenerationOutcome,
        GenerationPlan,
        Parents,
        generate_instructions,
        generation_stats,
        parent_pools,
        prior_acceptance,
        side_targets,
    )

    it, adv, cur = ctx.layout.iteration(k), ctx.recipe.adversarial, ctx.recipe.curation
    previous = ctx.layout.iteration(k - 1).generation if k > 0 else None
    plan = GenerationPlan(
        n_new=adv.new_per_iteration,
        max_attempts=adv.max_attempts,
        hard_share=adv.hard_share,
        rouge_threshold=cur.rouge_threshold,
        cosine_threshold=cur.cosine_threshold,
        min_words=cur.min_words,
        max_words=cur.max_words,
        seed=ctx.recipe.seed,
        iteration=k,
        min_domain_similarity=adv.min_domain_similarity,
        domain_references=tuple(s.instruction for s in ctx.pack.seeds()),
        feedback=adv.feedback,
        generator_name=ctx.name("generator"),
        embedder=ctx.embedder(),
        # the first round is sized by the share of replies the previous iteration kept
        prior_acceptance=prior_acceptance(ctx.store.read_json(previous) if previous and previous.is_file() else None),
    )
    cache_pool = ctx.store.read_jsonl(it.cache_pool)
    # the parents of the generate_hard and generate_easy prompts: the referee's split, or (feedback none) the whole cache pool
    hard, easy = parent_pools(adv.feedback, ctx.store.read_jsonl(it.hard), ctx.store.read_jsonl(it.easy), cache_pool)
    journal = ctx.store.journal(it.generation_journal)
    if plan.n_new and (hard or easy):
        outcome = generate_instructions(
            ctx.pack, ctx.model("generator"), Parents(hard, easy, cache_pool), plan, journal, ctx.budget("generator")
        )
    else:
        outcome = GenerationOutcome()
        outcome.stats = generation_stats(
            outcome, 0, side_targets(plan.n_new, plan.hard_share, bool(hard), bool(easy)), plan
        )
    stats = outcome.stats
    log(
        f"{it.dir.name}: generated {stats['kept']}/{stats['target']} new instructions ({stats['kept_hard']} from hard, {stats['kept_easy']} from easy) in {stats['attempts']} attempts; rejected {stats['rejected_by_reason']}"
    )
    outputs = [
        ctx.store.write_jsonl(it.generated, outcome.kept),
        ctx.store.write_jsonl(it.generation_rejected, outcome.rejected),
        ctx.store.write_json(it.generation, stats),
    ]
    journal.remove()
    return outputs


STAGE = Stage(
    "generate",
    run,
    per_iteration=True,
    reads=("iteration.cache_pool", "iteration.hard", "iteration.easy", "previous.generation"),
    writes=("iteration.generated", "iteration.generation_rejected", "iteration.generation"),
    recipe=("seed", "domain", "models.generator", "adversarial", "curation", "knowledge.embedder"),
)
