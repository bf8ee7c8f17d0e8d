"""Stages `forgetting_before` and `forgetting_after`: general-ability benchmarks (lm-eval) on the student
before and after the loop, and the gate that compares them (docs/forgetting.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from sdk.progress import log
from sdk.stages.base import Stage


def general_scores(ctx, student_path: Optional[Path], tag: str) -> dict:
    from sdk.evaluate.forgetting import evaluate_general

    f, tasks = ctx.recipe.forgetting, ctx.forgetting_tasks()
    student = ctx.load_student(student_path, tag)
    log(f"forgetting check ({tag}): {', '.join(tasks)}" + (f", {f.limit} items per task" if f.limit else ""))
    return evaluate_general(student.model, student.tokenizer, tasks, limit=f.limit, batch_size=f.batch_size)


def run_before(ctx):
    from sdk.evaluate.forgetting import load_tasks

    load_tasks(ctx.forgetting_tasks())  # an unknown task or missing data fails here, in seconds
    return [ctx.store.write_json(ctx.layout.eval.forgetting_before, general_scores(ctx, ctx.student_dir(-1), "before"))]


def run_after(ctx):
    from sdk.evaluate.forgetting import forgetting_record

    f = ctx.recipe.forgetting
    after = general_scores(ctx, ctx.student_dir(ctx.recipe.adversarial.iterations - 1), "after")
    before = ctx.store.read_json(ctx.layout.eval.forgetting_before)
    record = forgetting_record(
        before, after, f.max_drop, replay_fraction=ctx.recipe.train.replay_fraction, limit=f.limit
    )
    log(("[green]" if record["gate"]["passed"] else "[bold red]") + record["gate"]["verdict"] + "[/]")
    return [ctx.store.write_json(ctx.layout.eval.forgetting, record)]


BEFORE = Stage(
    "forgetting_before",
    run_before,
    reads=("student_init",),
    writes=("eval.forgetting_before",),
    recipe=("forgetting", "models.student"),
)
AFTER = Stage(
    "forgetting_after",
    run_after,
    reads=("eval.forgetting_before", "last.student"),
    writes=("eval.forgetting",),
    recipe=("forgetting", "train.replay_fraction"),
)
