"""Supervised fine-tuning of the student on the teacher's answers, with TRL's SFTTrainer.

The dataset is conversational prompt-completion ({"prompt": [system, user], "completion": [assistant]}),
so TRL applies the tokenizer's chat template and computes the loss on the completion tokens only:
    loss = -(1/|a|) * sum_t log p_student(a_t | prompt, a_<t)     over the teacher's answer a
"""

from __future__ import annotations

from sdk.train.common import StageContext, lora_config, training_args_kwargs


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


def sft_trainer(model, tokenizer, ctx: StageContext):
    """An SFTTrainer on the teacher's answers (completion-only loss), checkpointing in ctx.stage_dir("sft")."""
    from trl import SFTConfig, SFTTrainer

    settings = ctx.settings
    args = SFTConfig(
        output_dir=str(ctx.stage_dir("sft")),
        max_length=settings.max_seq_length,
        completion_only_loss=True,
        packing=False,
        **training_args_kwargs(settings, ctx.seed),
    )
    already_peft = hasattr(model, "peft_config")
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=sft_dataset(ctx.rows, ctx.system_prompt),
        processing_class=tokenizer,
        peft_config=None if already_peft else lora_config(settings),
    )


def sft_stage(model, tokenizer, ctx: StageContext):
    """The `sft` stage of train_student: returns the trainer, ready to train."""
    return sft_trainer(model, tokenizer, ctx), {"examples": len(ctx.rows)}
