"""Stage `finalize`: the last trained student is handed back in `student/`, and metrics.json, the
report and the student's model card (student/README.md) are written from the run directory."""

from __future__ import annotations

import shutil

from sdk.errors import DistilleryError
from sdk.models.student import student_kind
from sdk.stages.base import Stage
from sdk.stages.generate import SKIPPED


def hand_back_student(ctx, last: int) -> None:
    """Copy the last trained student, in its own shape, to the run's student/ (an adapter re-pointed at its base)."""
    final = ctx.student_dir(last)
    if final is None:
        raise DistilleryError("no student was trained or built in this run, so there is none to hand back")
    target = ctx.layout.student
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(final, tmp, symlinks=False)
    if student_kind(final) == "adapter" and (tmp / "adapter_config.json").is_file():
        from sdk.train.common import point_adapter_at

        point_adapter_at(tmp / "adapter_config.json", target / "base")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def iteration_metrics(ctx, k: int) -> dict:
    it = ctx.layout.iteration(k)
    labeled = ctx.store.read_jsonl(it.teacher)
    return {
        "iteration": k,
        "train_pool": len(labeled),
        "cache_pool": len(ctx.store.read_jsonl(it.cache_pool)),
        "teacher_ok": sum(r["status"] == "ok" for r in labeled),
        "teacher_failed": sum(r["status"] != "ok" for r in labeled),
        "train": ctx.store.read_json(it.train_metrics),
        "eval": ctx.store.read_json(it.eval)["summary"],
        "discrimination": ctx.store.read_json(it.discrimination),
        "generation": ctx.store.read_json(it.generation) if it.generation.is_file() else SKIPPED,
    }


def student_init_metrics(ctx) -> dict:
    """The pruning record and the healing before/after, as metrics.json carries them."""
    record = ctx.store.read_json(ctx.layout.student_init)
    heal = record.get("heal") or {}
    keys = ("steps", "train_loss", "runtime_s", "sequences", "corpus_chunks", "general_texts", "loss_history")
    return {
        "prune": record.get("prune"),
        "heal": {k: heal.get(k) for k in keys} if heal else None,
        "before_heal": record.get("before_heal"),
        "after_heal": record.get("after_heal"),
        "path": record.get("path"),
    }


def training_totals(iterations: list[dict]) -> dict:
    """One loss curve over the run's iterations (each iteration's curve is already one over its objectives)."""
    from sdk.train.common import concat_loss_curves

    return concat_loss_curves(
        [
            (m["train"].get("loss_history", []), m["train"].get("steps", 0), {"iteration": m["iteration"]})
            for m in iterations
        ]
    )


def forgetting_metrics(ctx) -> dict:
    if not ctx.layout.eval.forgetting.is_file():
        return {}
    record = ctx.store.read_json(ctx.layout.eval.forgetting)
    gate = record["gate"]
    keep = {
        "passed": gate["passed"],
        "verdict": gate["verdict"],
        "max_drop": gate["max_drop"],
        "replay_fraction": record["replay_fraction"],
        "limit": record["limit"],
        "hint": record["hint"],
        "tasks": gate["tasks"],
    }
    return {"forgetting": keep, "checks": {"forgetting": "passed" if gate["passed"] else "failed forgetting check"}}


def run(ctx):
    from sdk.evaluate.domain import score_answers
    from sdk.report import write_report
    from sdk.report.model_card import write_model_card

    layout, last = ctx.layout, ctx.recipe.adversarial.iterations - 1
    hand_back_student(ctx, last)
    shutil.copyfile(layout.iteration(last).eval_student, layout.eval.student_after)

    eval_rows = ctx.eval_rows()
    teacher_answers = {r["id"]: (r.get("answer") or "") for r in ctx.store.read_jsonl(layout.eval.teacher)}
    before, after = ctx.store.read_json(layout.eval.before), ctx.store.read_json(layout.iteration(last).eval)
    domain = {
        "before": before,
        "after": after,
        "teacher_vs_reference": score_answers(eval_rows, teacher_answers, teacher_answers)["summary"],
    }
    ctx.store.write_json(layout.eval.domain, domain)

    iterations = [iteration_metrics(ctx, k) for k in range(last + 1)]
    knowledge = ctx.store.read_json(layout.knowledge)
    first = layout.iteration(0)
    metrics = {
        "domain": ctx.pack.name,
        "preset": ctx.recipe.preset,
        "models": {"teacher": ctx.name("teacher"), "student": ctx.name("student"), "referee": ctx.referee_kinds()[0]},
        "data": {
            "corpus_chunks": knowledge["chunks"],
            "corpus_files_skipped": len(knowledge["skipped"]),
            "synthesized": len(ctx.store.read_jsonl(first.synthesized)),
            "synthesis_rejected": len(ctx.store.read_jsonl(first.synthesis_rejected)),
            "train_pool": iterations[0]["train_pool"],
            "teacher_ok": sum(m["teacher_ok"] for m in iterations),
            "teacher_failed": sum(m["teacher_failed"] for m in iterations),
            "generated": sum(m["generation"]["kept"] for m in iterations),
            "cache_pool": iterations[-1]["cache_pool"] + iterations[-1]["generation"]["kept"],
            "eval_prompts": len(eval_rows),
        },
        "train": training_totals(iterations),
        "eval": {
            "before": before["summary"],
            "after": after["summary"],
            "teacher": ctx.store.read_json(layout.eval.teacher_summary)["summary"],
            "teacher_vs_reference": domain["teacher_vs_reference"],
        },
        "student_init": student_init_metrics(ctx),
        "relative_score": {
            "referee": ctx.referee_kinds()[0],
            "before": before["summary"]["relative_score"],
            "per_iteration": [m["eval"]["relative_score"] for m in iterations],
        },
        "iterations": iterations,
        "timings_s": ctx.timings,
        **forgetting_metrics(ctx),
    }
    ctx.store.write_json(layout.metrics, metrics)
    report = write_report(ctx.store.root, metrics, status="finished")
    card = write_model_card(ctx.store.root, metrics, ctx.pack.spec)
    return [layout.eval.domain, layout.eval.student_after, layout.metrics, report, layout.student, card]


STAGE = Stage(
    "finalize",
    run,
    reads=(
        "knowledge",
        "student_init",
        "eval.teacher",
        "eval.teacher_summary",
        "eval.before",
        "eval.forgetting",
        "first.synthesized",
        "first.train_pool",
        "every.eval",
        "every.train_metrics",
        "every.discrimination",
        "last.student",
    ),
    writes=("eval.domain", "eval.student_after", "metrics", "report", "student", "model_card"),
    recipe=("domain",),
)
