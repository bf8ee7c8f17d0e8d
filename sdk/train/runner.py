"""The imitation step of one iteration: run the recipe's objectives (`train.stages`) in order, then save the student.

    train_student(TrainRequest(recipe, data, out_dir, work_dir, init, system_prompt, dpo_pairs), verifier) -> metrics

Inputs: request.data (teacher.jsonl: rows with status "ok" are trained on), request.dpo_pairs for dpo.
Outputs in request.work_dir: checkpoints/<objective>/ (resume points while it runs, final/ when it is
done), train_metrics.json {"stages": {<objective>: {...}}, "student": out_dir, totals}; the student in
request.out_dir. This module is train_metrics.json's only writer.

A stage whose metrics are recorded is not run again: a resumed call starts the next stage from the
finished one's final/ folder, and a stage killed mid-way resumes from its newest checkpoint.

With train.launcher.kind "accelerate" or "deepspeed" the stages run in a child job (sdk.train.launch);
this process then never loads the student.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from sdk.errors import DistilleryError
from sdk.progress import log
from sdk.store import atomic_write_json, read_jsonl
from sdk.train.common import (
    StageContext,
    TrainRequest,
    Verifier,
    barrier,
    concat_loss_curves,
    export_student,
    is_main_process,
    load_stage_model,
    reset_accelerator_state,
    run_trainer,
    save_stage_output,
)
from sdk.train.dpo import dpo_stage
from sdk.train.kd import kd_preflight, kd_stage
from sdk.train.rlaif import rlaif_stage
from sdk.train.sft import sft_stage

OBJECTIVES = {"sft": sft_stage, "kd": kd_stage, "dpo": dpo_stage, "rlaif": rlaif_stage}  # train.stages names them


def train_student(request: TrainRequest, verifier=None) -> dict:
    """Run the recipe's objectives in order on the request's data; save the student to out_dir; return metrics."""
    preflight(request)
    if request.recipe.train.launcher.kind != "local":
        from sdk.train.launch import launch_stages

        return launch_stages(request, use_pack_verifiers=verifier is not None)
    return run_stages(request, verifier)


def preflight(request: TrainRequest) -> None:
    """Checks that need no student, so a bad recipe fails in seconds rather than after an SFT stage."""
    recipe, stages = request.recipe, request.recipe.train.stages
    if not Path(request.data).is_file():
        raise DistilleryError(f"nothing to train on: {request.data} does not exist")
    if "kd" in stages:
        kd_preflight(recipe, request.init)
    if "dpo" in stages:
        from sdk.train.dpo import load_pairs

        load_pairs(request.dpo_pairs)


def read_metrics(path: Path) -> dict:
    data = json.loads(path.read_text()) if path.is_file() else {}
    return (
        data if isinstance(data.get("stages"), dict) else {"stages": {}}
    )  # a file the caller rewrote is no resume point


def training_rows(path: Path) -> list[dict]:
    rows = [r for r in read_jsonl(path) if r.get("status") == "ok" and r.get("answer")]
    if not rows:
        raise DistilleryError(f"no usable teacher answers to train on (see {path} for the reasons)")
    return rows


def log_summary(trainer) -> dict:
    """Reward statistics a stage logged (GRPO logs 'reward' per logging step)."""
    rewards = [{"step": h["step"], "reward": h["reward"]} for h in trainer.state.log_history if "reward" in h]
    if not rewards:
        return {}
    values = [r["reward"] for r in rewards]
    return {
        "rewards_mean": round(sum(values) / len(values), 4),
        "first_reward": values[0],
        "last_reward": values[-1],
        "reward_history": rewards,
    }


def process_summary(trainer) -> dict:
    """How the stage ran: processes, and the ZeRO stage when DeepSpeed drove it."""
    state = trainer.accelerator.state
    plugin = getattr(state, "deepspeed_plugin", None)
    return {
        "processes": trainer.accelerator.num_processes,
        "deepspeed_zero_stage": plugin.zero_stage if plugin is not None else None,
    }


def run_stages(request: TrainRequest, verifier: Optional[Verifier] = None) -> dict:
    """Run every objective in this process (one rank of a launched job, or the only process)."""
    from transformers import set_seed

    recipe, init, out_dir = request.recipe, request.init, Path(request.out_dir)
    ctx = StageContext(request=request, rows=training_rows(request.data), verifier=verifier)
    metrics = read_metrics(request.metrics_file)
    previous: Optional[Path] = None
    for stage in recipe.train.stages:
        final = ctx.stage_dir(stage) / "final"
        if stage in metrics["stages"] and final.is_dir():
            log(f"[dim]skip[/dim] training stage {stage} (finished earlier)")
            previous = final
            continue
        log(f"[bold cyan]train[/bold cyan] {stage}")
        set_seed(recipe.seed)
        reset_accelerator_state()
        model, tokenizer = load_stage_model(recipe, init, previous)
        trainer, stage_metrics = OBJECTIVES[stage](model, tokenizer, ctx)
        stage_metrics = {"objective": stage, **stage_metrics, **run_trainer(trainer, ctx.stage_dir(stage))}
        stage_metrics.update(log_summary(trainer))
        stage_metrics.update(process_summary(trainer))
        save_stage_output(trainer, tokenizer, final)
        metrics["stages"][stage] = stage_metrics
        if is_main_process():
            atomic_write_json(request.metrics_file, metrics)
        previous = final
        del trainer, model
    if is_main_process():
        export_student(recipe, init, previous, out_dir)
        metrics.update(
            student=str(out_dir.resolve()),
            lora=recipe.train.lora.enabled,
            rows=len(ctx.rows),
            init=str(init) if init else "initial student",
        )
        atomic_write_json(request.metrics_file, with_totals(metrics))
    barrier()
    return metrics


def with_totals(metrics: dict) -> dict:
    """The per-objective metrics plus the totals the report plots: steps and one loss curve over all objectives."""
    stages = metrics.get("stages", {}).items()
    return dict(
        metrics,
        **concat_loss_curves([(m.get("loss_history", []), m.get("steps", 0), {"stage": name}) for name, m in stages]),
    )


def record_skipped(request: TrainRequest, reason: str) -> None:
    """An iteration with nothing to train on keeps the previous student; its metrics say why."""
    atomic_write_json(request.metrics_file, {"skipped": reason, "steps": 0, "loss_history": []})
