"""Stage `<iter>/label`: the teacher answers the train pool (journaled row by row, so a killed run never
pays twice); an instruction it answered in an earlier iteration is reused, not asked again."""

from __future__ import annotations

from sdk.curation.labeling import Teacher, label_rows
from sdk.stages.base import Stage


def run(ctx, k: int):
    it = ctx.layout.iteration(k)
    pool = ctx.store.read_jsonl(it.train_pool)
    earlier = ctx.teacher_answers(k - 1) if k > 0 else {}
    journal = ctx.store.journal(it.teacher_journal)
    use_context = ctx.recipe.curation.teacher_context == "passage"
    teacher = Teacher(ctx.teacher, ctx.name("teacher"), ctx.pack.spec.system_prompt, use_context)
    fresh = label_rows([r for r in pool if r["id"] not in earlier], teacher, journal, budget=ctx.budget("teacher"))
    answers = {r["id"]: r for r in fresh}

    def reused(r: dict) -> dict:
        before = earlier[r["id"]]
        return dict(r, answer=before["answer"], status="ok", provenance=dict(before["provenance"], reused=True))

    rows = [answers[r["id"]] if r["id"] in answers else reused(r) for r in pool]
    stored = store_teacher_logits(ctx, k, [r for r in rows if r["status"] == "ok"])  # before the journal goes
    path = ctx.store.write_jsonl(it.teacher, rows)
    journal.remove()
    return [path] + stored


LOGIT_KEYS = tuple(
    f"train.kd.{k}" for k in ("source", "top_k", "beta", "lmbda", "temperature")
)  # what the store depends on


def stores_logits(recipe) -> bool:
    """The label stage stores the teacher's top-k when the recipe asks kd to train from it (kd.source store)
    and the teacher is local; kd.source auto then trains from the store it finds."""
    return (
        "kd" in recipe.train.stages and recipe.train.kd.source == "store" and recipe.models.teacher.provider != "openai"
    )


def store_teacher_logits(ctx, k: int, rows: list[dict]) -> list:
    """One teacher forward pass over each answer; its top-k per token goes to iter_<k>/teacher_logits/ (resumable)."""
    if not stores_logits(ctx.recipe):
        return []
    from sdk.progress import log
    from sdk.train.logit_store import FillSettings, LogitStore, fill_from_local_teacher

    folder = ctx.layout.iteration(k).teacher_logits
    with LogitStore(folder, ctx.recipe.train.kd.top_k) as store:
        settings = FillSettings(batch_size=ctx.recipe.eval.batch_size)
        summary = fill_from_local_teacher(
            store, ctx.teacher.model, ctx.teacher.tokenizer, rows, ctx.pack.spec.system_prompt, settings
        )
    log(
        f"stored the teacher's top-{summary['top_k']} for {summary['rows']} answers ({summary['tokens']} tokens, {summary['bytes_per_token']:.0f} bytes per token)"
    )
    return [folder]


STAGE = Stage(
    "label",
    run,
    per_iteration=True,
    reads=("iteration.train_pool", "previous.teacher"),
    writes=("iteration.teacher", "iteration.teacher_logits"),
    recipe=("domain", "models.teacher", "curation.teacher_context", "train.stages", *LOGIT_KEYS),
)
