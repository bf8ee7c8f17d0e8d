"""Stage `<iter>/train`: the student imitates the teacher's answers with the recipe's objectives
(sdk/train/: SFT, white-box KD, DPO, RLAIF with TRL), in this process or as a launched job."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from sdk.errors import DistilleryError
from sdk.models.chat import answer_conversations, clean_answer
from sdk.progress import log
from sdk.stages.base import Stage


def write_dpo_pairs(ctx, k: int, rows: list[dict], init: Optional[Path]) -> None:
    """Preference pairs for this iteration (sdk/adversarial/pairs.py explains the two modes)."""
    from sdk.adversarial import pairs

    it, mode = ctx.layout.iteration(k), ctx.recipe.train.dpo.mode
    if it.dpo_pairs.is_file():
        return
    rows = [r for r in rows if r.get("source") != "replay"]
    if mode == "teacher_over_student" and k > 0:
        out = pairs.teacher_over_student(
            [r for r in ctx.store.read_jsonl(ctx.layout.iteration(k - 1).referee) if r["hard"]]
        )
    else:
        student = ctx.load_student(init, "for preference pairs")
        n = 1 if mode == "teacher_over_student" else ctx.recipe.train.dpo.samples
        settings = student.settings.model_copy(update={"temperature": 0.0 if n == 1 else 0.9})
        convs = answer_conversations(ctx.pack.spec.system_prompt, [r["instruction"] for r in rows for _ in range(n)])
        answers = [
            clean_answer(a)
            for a in student.generate(convs, settings=settings, description=f"student samples for DPO ({mode})")
        ]
        del student
        samples = {r["id"]: answers[i * n : (i + 1) * n] for i, r in enumerate(rows)}
        if mode == "teacher_over_student":
            out = pairs.teacher_over_student(
                [dict(r, teacher_answer=r["answer"], student_answer=samples[r["id"]][0]) for r in rows]
            )
        else:
            out = pairs.referee_ranked(rows, samples, ctx.referee(ctx.referee_kinds()[0]))
    ctx.store.write_jsonl(it.dpo_pairs, out)


def run(ctx, k: int):
    from sdk.train.common import TrainRequest
    from sdk.train.runner import record_skipped, train_student

    it = ctx.layout.iteration(k)
    rows = [r for r in ctx.store.read_jsonl(it.teacher) if r["status"] == "ok"]
    if not rows:
        if k == 0:
            raise DistilleryError(f"no usable teacher answers to train on (see {it.teacher} for the reasons)")
        log(f"[yellow]{it.dir.name}: nothing new to train on; the student from the previous iteration is kept[/yellow]")
        record_skipped(TrainRequest.in_folder(ctx.recipe, it.dir, it.student), "empty train pool")
        return [it.train_metrics]
    init = ctx.student_dir(k - 1)
    if "dpo" in ctx.recipe.train.stages:
        write_dpo_pairs(ctx, k, rows, init)
    ctx.release_student()  # training loads its own copy
    if ctx.recipe.train.launcher.kind != "local":
        ctx.release_models()  # the launched processes load what they need; this one keeps no weights meanwhile
    request = TrainRequest(
        ctx.recipe, it.teacher, it.student, it.dir, init, ctx.pack.spec.system_prompt, it.dpo_pairs, it.teacher_logits
    )
    train_student(request, verifier=ctx.pack.run_verifiers)
    dpo = [it.dpo_pairs, it.dpo_pairs_dropped] if "dpo" in ctx.recipe.train.stages else []
    return [it.student, it.train_metrics, it.checkpoints] + dpo


STAGE = Stage(
    "train",
    run,
    per_iteration=True,
    reads=("iteration.teacher", "previous.student", "previous.referee", "student_init"),
    writes=(
        "iteration.student",
        "iteration.train_metrics",
        "iteration.checkpoints",
        "iteration.dpo_pairs",
        "iteration.dpo_pairs_dropped",
        "iteration.train_recipe",
        "iteration.train_request",
        "iteration.accelerate_config",
        "iteration.train_launch_log",
    ),
    recipe=("seed", "domain", "train", "models.student", "models.teacher"),
)
