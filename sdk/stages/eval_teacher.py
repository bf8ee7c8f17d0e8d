"""Stage `eval_teacher`: the teacher answers the held-out set (journaled), with its degeneration figures
and, for a local teacher, its perplexity on held-out corpus chunks."""

from __future__ import annotations

from sdk.curation.labeling import Teacher, label_rows
from sdk.stages.base import Stage
from sdk.stages.evaluate import eval_provenance


def run(ctx):
    from sdk.evaluate.degeneration import degeneration_summary

    out = ctx.layout.eval
    rows = [
        {"id": r["id"], "instruction": r["instruction"], "provenance": eval_provenance(ctx, "eval")}
        for r in ctx.eval_rows()
    ]
    journal = ctx.store.journal(out.teacher_journal)
    labeled = label_rows(
        rows,
        Teacher(ctx.teacher, ctx.name("teacher"), ctx.pack.spec.system_prompt),
        journal,
        "teacher answers eval set",
        ctx.budget("teacher"),
    )
    path = ctx.store.write_jsonl(out.teacher, labeled)
    journal.remove()
    summary = degeneration_summary([r.get("answer") or "" for r in labeled if r["status"] == "ok"])
    if ctx.white_box_teacher():
        from sdk.evaluate.fidelity import perplexity

        heldout = ctx.heldout_texts()
        summary["domain_ppl"] = (
            perplexity(ctx.teacher.model, ctx.teacher.tokenizer, heldout)["ppl"] if heldout else None
        )
    return [path, ctx.store.write_json(out.teacher_summary, {"summary": summary})]


STAGE = Stage(
    "eval_teacher",
    run,
    reads=("knowledge",),
    writes=("eval.teacher", "eval.teacher_summary"),
    recipe=("domain", "models.teacher", "data.max_eval", "eval.heldout_chunks"),
)
