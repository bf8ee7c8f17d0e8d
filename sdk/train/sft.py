"""Supervised fine-tuning of the student on the teacher's answers, with TRL's SFTTrainer.

The dataset is conversational prompt-completion ({"prompt": [system, user], "completion": [assistant]}),
so TRL applies the tokenizer's chat template and computes the loss on the completion tokens only.
"""

from __future__ import annotations

from pathlib import Path

from sdk.config import TrainSettings
from sdk.train.common import finish_training, latest_checkpoint, training_args_kwargs


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


def train_sft(model, tokenizer, rows: list[dict], system_prompt: str, settings: TrainSettings, work_dir: Path, seed: int = 0):
    """Train in place and return (model, train_metrics). Checkpoints in work_dir let a killed run resume."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(work_dir),
        max_length=settings.max_seq_length,
        completion_only_loss=True,
        packing=False,
        **training_args_kwargs(settings, seed),
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=sft_dataset(rows, system_prompt),
        processing_class=tokenizer,
        peft_config=lora_config(settings),
    )
    checkpoint = latest_checkpoint(work_dir)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    model, metrics = finish_training(trainer, result)
    metrics["resumed_from_checkpoint"] = checkpoint
    return model, metrics


def lora_config(settings: TrainSettings):
    if not settings.lora.enabled:
        return None
    from peft import LoraConfig

    lora = settings.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules, task_type="CAUSAL_LM")
