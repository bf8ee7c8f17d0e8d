"""Pieces shared by every training stage: TrainingArguments from the recipe, checkpoints, saving."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from sdk.config import TrainSettings


def use_bf16(setting: str) -> bool:
    if setting == "on":
        return True
    if setting == "off":
        return False
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def training_args_kwargs(settings: TrainSettings, seed: int) -> dict:
    """Arguments every TRL config takes (they all extend transformers.TrainingArguments)."""
    import torch

    return dict(
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_ratio,  # a float < 1 is a fraction of the total steps
        weight_decay=settings.weight_decay,
        logging_steps=settings.logging_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=1,
        report_to="none",
        bf16=use_bf16(settings.bf16),
        fp16=False,
        use_cpu=not torch.cuda.is_available(),
        activation_checkpointing=settings.gradient_checkpointing,  # transformers 5 name; TRL would default it on
        deepspeed=settings.deepspeed,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def latest_checkpoint(work_dir: Path) -> str | None:
    """The newest `checkpoint-N` folder under work_dir, for resume_from_checkpoint."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in work_dir.iterdir() if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / "trainer_state.json").exists()]
    return str(max(steps)[1]) if steps else None


def finish_training(trainer, result) -> tuple[object, dict]:
    history = [h for h in trainer.state.log_history if "loss" in h]
    metrics = {
        "train_loss": round(result.training_loss, 4),
        "steps": trainer.state.global_step,
        "first_logged_loss": history[0]["loss"] if history else None,
        "last_logged_loss": history[-1]["loss"] if history else None,
        "loss_history": [{"step": h["step"], "loss": h["loss"]} for h in history],
        "runtime_s": round(result.metrics.get("train_runtime", 0.0), 1),
    }
    return trainer.model, metrics


def save_student(model, tokenizer, out_dir: Path) -> Path:
    """Save the student so `AutoModelForCausalLM.from_pretrained(out_dir)` loads it.

    A LoRA student is merged into its (possibly pruned, unsaved) base for the loadable copy, and the
    adapter alone is kept beside it in out_dir/adapter/ (adapter_config.json + weights).
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if hasattr(model, "merge_and_unload"):  # peft model
        model.save_pretrained(tmp / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir
