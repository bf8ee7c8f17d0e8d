"""Preference optimisation of the student with TRL's DPOTrainer, on pairs built by the loop.

Two ways to build the pairs (sdk.adversarial.pairs; the pipeline writes them to iter_dir/dpo_pairs.jsonl):
  teacher_over_student  on hard instructions, the teacher's answer is chosen, the student's rejected
  referee_ranked        of several sampled student answers, the referee's best is chosen, its worst rejected

The DPO loss (arXiv 2305.18290), with pi the student and pi_ref the student at the start of the stage:
    loss = -log sigmoid( beta * [ (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x)) ] )

A pair whose chosen and rejected texts are identical (after whitespace normalisation) teaches nothing
and is dropped; the count is in the stage metrics and the dropped rows in dpo_pairs_dropped.jsonl.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from sdk.errors import DistilleryError
from sdk.store import atomic_write_jsonl, read_jsonl
from sdk.train.common import StageContext, is_main_process, training_args_kwargs

DROPPED_FILE = "dpo_pairs_dropped.jsonl"


def normalize(text: str) -> str:
    return " ".join((text or "").split())


def clean_pairs(pairs: list[dict]) -> tuple[list[dict], list[dict]]:
    """(kept, dropped): a pair whose chosen equals rejected after whitespace normalisation is dropped."""
    kept, dropped = [], []
    for p in pairs:
        if normalize(p["chosen"]) == normalize(p["rejected"]):
            dropped.append(dict(p, reason="chosen and rejected are identical"))
        else:
            kept.append(p)
    return kept, dropped


def load_pairs(path: Optional[Path]) -> tuple[list[dict], list[dict]]:
    if path is None or not Path(path).is_file():
        raise DistilleryError(
            f"train.stages has 'dpo' but {path} does not exist (the loop writes the preference pairs before training)"
        )
    kept, dropped = clean_pairs(read_jsonl(path))
    if not kept:
        raise DistilleryError(
            f"no usable DPO pairs in {path}: {len(dropped)} of {len(dropped)} had identical chosen and rejected answers"
        )
    return kept, dropped


def dpo_dataset(pairs: list[dict], system_prompt: str):
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "system", "content": system_prompt}, {"role": "user", "content": p["prompt"]}],
                "chosen": [{"role": "assistant", "content": p["chosen"]}],
                "rejected": [{"role": "assistant", "content": p["rejected"]}],
            }
            for p in pairs
        ]
    )


def dpo_stage(model, tokenizer, ctx: StageContext):
    from trl import DPOConfig, DPOTrainer

    kept, dropped = load_pairs(ctx.request.dpo_pairs)
    if is_main_process():
        atomic_write_jsonl(Path(ctx.request.work_dir) / DROPPED_FILE, dropped)
    dpo = ctx.settings.dpo
    args = DPOConfig(
        output_dir=str(ctx.stage_dir("dpo")),
        max_length=ctx.settings.max_seq_length,
        beta=dpo.beta,
        # RPO: the preference loss plus rpo_alpha * NLL of the chosen answer (TRL's "sft" loss term)
        loss_type=[dpo.loss_type, "sft"] if dpo.rpo_alpha > 0 else [dpo.loss_type],
        loss_weights=[1.0, dpo.rpo_alpha] if dpo.rpo_alpha > 0 else None,
        **training_args_kwargs(ctx.settings, ctx.seed, dpo.learning_rate),
    )
    # ref_model=None: TRL keeps a frozen copy of the starting student (or, with LoRA, disables the adapter)
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=dpo_dataset(kept, ctx.system_prompt), processing_class=tokenizer
    )
    modes = sorted({p.get("mode", "?") for p in kept})
    return trainer, {
        "pairs": len(kept),
        "pairs_dropped": len(dropped),
        "modes": modes,
        "beta": dpo.beta,
        "rpo_alpha": dpo.rpo_alpha,
        "learning_rate": dpo.learning_rate,
    }
