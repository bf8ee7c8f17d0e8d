"""Supervised fine-tuning of the student on the teacher's answers, with TRL's SFTTrainer.

The dataset is conversational prompt-completion ({"prompt": [system, user], "completion": [assistant]}),
so TRL applies the tokenizer's chat template and computes the loss on the completion tokens only:
    loss = -(1/|a|) * sum_t log p_student(a_t | prompt, a_<t)     over the teacher's answer a
"""

from __future__ import annotations

from pathlib import Path

from sdk.config import TrainSettings
from sdk.train.common import StageContext, finish_training, latest_checkpoint, lora_config, training_args_kwargs


def sft_dataset(rows: list[dict], system_prompt: str):
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "system", "content": system_prompt}, {"role": "user", "content": r["instruction"]}],
                "completion": [{"role": "assistant", "content": r["answer"]}],
            }
            for r in rows
        ]
    )


def sft_trainer(model, tokenizer, rows: list[dict], system_prompt: str, settings: TrainSettings, work_dir: Path, seed: int = 0):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(work_dir),
        max_length=settings.max_seq_length,
        completion_only_loss=True,
        packing=False,
        **training_args_kwargs(settings, seed),
    )
    already_peft = hasattr(model, "peft_config")
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=sft_dataset(rows, system_prompt),
        processing_class=tokenizer,
        peft_config=None if already_peft else lora_config(settings),
    )


def train_sft(model, tokenizer, rows: list[dict], system_prompt: str, settings: TrainSettings, work_dir: Path, seed: int = 0):
    """Train in place and return (model, train_metrics). Checkpoints in work_dir let a killed run resume."""
    trainer = sft_trainer(model, tokenizer, rows, system_prompt, settings, work_dir, seed)
    checkpoint = latest_checkpoint(work_dir)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    model, metrics = finish_training(trainer, result)
    metrics["resumed_from_checkpoint"] = checkpoint
    return model, metrics


def sft_stage(model, tokenizer, ctx: StageContext):
    """The `sft` stage of train_student: returns the trainer, ready to train."""
    return sft_trainer(model, tokenizer, ctx.rows, ctx.system_prompt, ctx.settings, ctx.stage_dir("sft"), ctx.seed), {"examples": len(ctx.rows)}
