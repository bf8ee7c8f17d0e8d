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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sdk.config import HealSettings
from sdk.store import atomic_write_json, atomic_write_jsonl, read_jsonl
from sdk.train.common import barrier, device_kwargs, full_weights, is_main_process, run_trainer, save_stage_output


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
    from trl.models import prepare_deepspeed

    class HealTrainer(SFTTrainer):
        """SFTTrainer on plain text whose loss is the divergence to a frozen teacher's logits."""

        def __init__(self, *args, teacher_model=None, beta: float = 0.0, temperature: float = 1.0, **kwargs):
            super().__init__(*args, **kwargs)
            # as GKDTrainer does: under DeepSpeed the teacher is sharded too (ZeRO-3), else placed for inference
            if self.is_deepspeed_enabled:  # a launched job: the teacher is sharded like the student (ZeRO-3)
                self.teacher_model = prepare_deepspeed(teacher_model, self.accelerator)
            else:  # the run's own teacher: moved, never wrapped (it labels in full precision after healing)
                self.teacher_model = teacher_model.to(self.args.device)
            self.teacher_model.eval()
            self.beta, self.temperature = beta, temperature

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            ids, attention = inputs["input_ids"], inputs.get("attention_mask")
            student = model(input_ids=ids, attention_mask=attention)
            with torch.no_grad():
                teacher = self.teacher_model(input_ids=ids, attention_mask=attention)
            vocab = min(student.logits.shape[-1], teacher.logits.shape[-1])
            labels = inputs["labels"][:, 1:]  # position t predicts token t+1; padding is -100
            loss = GKDTrainer.generalized_jsd_loss(  # in float32: bf16 logits (DeepSpeed) give a KL off by ~0.01
                student.logits[:, :-1, :vocab].float(),
                teacher.logits[:, :-1, :vocab].float(),
                labels=labels,
                beta=self.beta,
                temperature=self.temperature,
            )
            return (loss, student) if return_outputs else loss

    return HealTrainer


@dataclass(frozen=True)
class HealJob:
    texts: list[str]  # steps * batch_size sequences (heal_texts)
    settings: HealSettings
    work_dir: Path  # checkpoints: a killed job resumes from the newest
    out_dir: Path  # the healed student, with heal.json
    seed: int = 0
    deepspeed: Optional[str] = None  # the ZeRO config of a launched job (train.deepspeed); None in this process


def heal_trainer(student, teacher, tokenizer, job: HealJob):
    """A ready-to-train HealTrainer: one pass over job.texts."""
    from datasets import Dataset
    from trl import SFTConfig

    settings, seed = job.settings, job.seed
    args = SFTConfig(
        output_dir=str(job.work_dir),
        max_length=settings.max_length,
        packing=False,
        dataset_text_field="text",
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_ratio,  # a float < 1 is a fraction of the total steps
        logging_steps=max(1, settings.steps // 20),
        save_strategy="steps",
        save_steps=max(10, settings.steps // 4),
        save_total_limit=1,
        report_to="none",
        activation_checkpointing=False,  # TRL's SFTConfig turns it on; a small student trains faster without
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
        **device_kwargs(settings.bf16, job.deepspeed),
    )
    data = Dataset.from_list([{"text": t} for t in job.texts])
    return _trainer_class()(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        beta=settings.beta,
        temperature=settings.temperature,
    )


def heal(student, teacher, tokenizer, job: HealJob) -> dict:
    """Train, resuming from job.work_dir's newest checkpoint; save the healed student to job.out_dir; return its record.

    Every rank of a launched job calls this (ZeRO-3 gathers the sharded weights for the save); rank 0
    writes out_dir/heal.json.
    """
    trainer = heal_trainer(student, teacher, tokenizer, job)
    metrics = run_trainer(trainer, job.work_dir)
    save_stage_output(trainer, tokenizer, job.out_dir)
    record = {
        "steps": metrics["steps"],
        "train_loss": metrics["train_loss"],
        "runtime_s": metrics["runtime_s"],
        "loss_history": metrics["loss_history"],
        "sequences": len(job.texts),
        "processes": trainer.accelerator.num_processes,
        "deepspeed": bool(job.deepspeed),
    }
    if is_main_process():
        atomic_write_json(Path(job.out_dir) / RECORD_FILE, record)
    barrier()
    return record


# a launched heal: the parent writes the request and the texts, `python -m sdk.train.worker --task heal` trains

REQUEST_FILE = "heal_request.json"
TEXTS_FILE = "heal_texts.jsonl"
RECORD_FILE = "heal.json"


def write_heal_request(
    job_dir: Path, init: Path, out_dir: Path, texts: list[str], settings: HealSettings, seed: int
) -> None:
    job_dir = Path(job_dir)
    atomic_write_jsonl(job_dir / TEXTS_FILE, [{"text": t} for t in texts])
    atomic_write_json(
        job_dir / REQUEST_FILE,
        {
            "init": str(Path(init).resolve()),
            "out_dir": str(Path(out_dir).resolve()),
            "heal": settings.model_dump(),
            "seed": seed,
        },
    )


def run_heal_request(job_dir: Path, recipe) -> None:
    """One rank of a launched heal: the pruned student from the request's init folder, the teacher from the recipe."""
    import json

    from sdk.models import load_local
    from sdk.models.student import load_student_model

    job_dir = Path(job_dir)
    request = json.loads((job_dir / REQUEST_FILE).read_text())
    with full_weights():
        student, tokenizer = load_student_model(request["init"])
        teacher, _ = load_local(recipe.models.teacher, recipe.models)
    texts = [row["text"] for row in read_jsonl(job_dir / TEXTS_FILE)]
    settings = HealSettings.model_validate(request["heal"])
    heal(
        student,
        teacher,
        tokenizer,
        HealJob(
            texts, settings, job_dir / "checkpoints", Path(request["out_dir"]), request["seed"], recipe.train.deepspeed
        ),
    )
