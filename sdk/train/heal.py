"""Healing: white-box KD from the teacher on plain text, so a pruned student starts the loop as a working model.

Per token of a training sequence x (a corpus chunk, or a general instruction with the teacher's answer
in the chat template) the loss is TRL's generalized JSD between the teacher's and the student's
next-token distributions over the full vocabulary (GKD, arXiv 2306.13649, eq. 1):

    beta = 0:  KL(p_T(. | x_<t) || p_S(. | x_<t))     forward KL, the default (Minitron heals this way)
    beta = 1:  KL(p_S || p_T)                         reverse KL

Every token of the sequence is a target (there is no prompt): the student learns the teacher's
distribution on the domain's own text. TRL's SFTTrainer tokenizes and batches the text; HealTrainer
only replaces its loss, reusing GKDTrainer's divergence.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Sequence

from sdk.config import HealSettings
from sdk.train.common import use_bf16


def heal_texts(chunks: Sequence[str], general: Sequence[str], settings: HealSettings, seed: int) -> list[str]:
    """The sequences of steps * batch_size draws: a general_fraction share of general text, the rest corpus chunks.

    Each side is cycled in a seeded shuffled order, so every chunk is seen before any is repeated.
    """
    total = settings.steps * settings.batch_size
    n_general = round(total * settings.general_fraction) if general else 0
    if not chunks:
        n_general = total if general else 0
    rng = random.Random(f"{seed}:heal")

    def cycle(items: Sequence[str], n: int) -> list[str]:
        out: list[str] = []
        while len(out) < n and items:
            order = list(items)
            rng.shuffle(order)
            out.extend(order[: n - len(out)])
        return out

    mixed = cycle(chunks, total - n_general) + cycle(general, n_general)
    rng.shuffle(mixed)
    return mixed


def _trainer_class():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from trl import SFTTrainer
    from trl.experimental.gkd import GKDTrainer

    class HealTrainer(SFTTrainer):
        """SFTTrainer on plain text whose loss is the divergence to a frozen teacher's logits."""

        def __init__(self, *args, teacher_model=None, beta: float = 0.0, temperature: float = 1.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher_model = teacher_model.to(self.args.device).eval()
            self.beta, self.temperature = beta, temperature

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            ids, attention = inputs["input_ids"], inputs.get("attention_mask")
            student = model(input_ids=ids, attention_mask=attention)
            with torch.no_grad():
                teacher = self.teacher_model(input_ids=ids, attention_mask=attention)
            vocab = min(student.logits.shape[-1], teacher.logits.shape[-1])
            labels = inputs["labels"][:, 1:]  # position t predicts token t+1; padding is -100
            loss = GKDTrainer.generalized_jsd_loss(
                student.logits[:, :-1, :vocab], teacher.logits[:, :-1, :vocab], labels=labels, beta=self.beta, temperature=self.temperature
            )
            return (loss, student) if return_outputs else loss

    return HealTrainer


def heal_trainer(student, teacher, tokenizer, texts: list[str], settings: HealSettings, work_dir: Path, seed: int):
    """A ready-to-train HealTrainer: one pass over `texts` (steps * batch_size sequences)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig

    args = SFTConfig(
        output_dir=str(work_dir),
        max_length=settings.max_length,
        packing=False,
        dataset_text_field="text",
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_ratio,
        logging_steps=max(1, settings.steps // 20),
        save_strategy="steps",
        save_steps=max(10, settings.steps // 4),
        save_total_limit=1,
        report_to="none",
        bf16=use_bf16(settings.bf16),
        use_cpu=not torch.cuda.is_available(),
        activation_checkpointing=False,  # TRL's SFTConfig turns it on; a small student trains faster without
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    data = Dataset.from_list([{"text": t} for t in texts])
    return _trainer_class()(model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tokenizer, beta=settings.beta, temperature=settings.temperature)
