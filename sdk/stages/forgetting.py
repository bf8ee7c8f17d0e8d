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


def cached_scores_file(ctx, student_path: Optional[Path]) -> Optional[Path]:
    """Where the general scores of a built student folder (pruned, healed: the student stage's, usually in the
    user cache) are kept, keyed by the tasks, their bundled files, the item limit, the batch size and lm-eval's
    version; None for any other student. A second run on the same pack reuses them."""
    import hashlib
    import json
    from importlib.metadata import version

    from sdk.stages.student import initial_record

    record = initial_record(ctx, student_path)
    if record is None or not (Path(record["path"]) / ".complete").is_file():
        return None
    folder = record["path"]
    f = ctx.recipe.forgetting
    bundled = Path(__file__).resolve().parents[1] / "evaluate" / "tasks"
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(bundled.glob("*")) if p.is_file()}
    key = [ctx.forgetting_tasks(), f.limit, f.batch_size, version("lm_eval"), files]
    return Path(folder) / f"general-{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]}.json"


def run_before(ctx):
    from sdk.evaluate.forgetting import load_tasks
    from sdk.store import atomic_write_json, read_json_or_none

    load_tasks(ctx.forgetting_tasks())  # an unknown task or missing data fails here, in seconds
    student_path = ctx.student_dir(-1)
    cached = cached_scores_file(ctx, student_path)
    scores = read_json_or_none(cached) if cached is not None else None  # a damaged file is measured again
    if scores is not None:
        log(f"forgetting check (before): reusing the scores of the same student on the same tasks from {cached}")
    else:
        scores = general_scores(ctx, student_path, "before")
        if cached is not None:
            atomic_write_json(cached, scores)  # a concurrent run reads all of it or none
    return [ctx.store.write_json(ctx.layout.eval.forgetting_before, scores)]


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
