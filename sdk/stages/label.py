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

    path = ctx.store.write_jsonl(it.teacher, [answers[r["id"]] if r["id"] in answers else reused(r) for r in pool])
    journal.remove()
    return [path]


STAGE = Stage(
    "label",
    run,
    per_iteration=True,
    reads=("iteration.train_pool", "previous.teacher"),
    writes=("iteration.teacher",),
    recipe=("domain", "models.teacher", "curation.teacher_context"),
)
