"""Tiny models and an iteration folder for the training tests (no network, seconds per stage)."""

from __future__ import annotations

import json
from pathlib import Path

from sdk.config import ModelSpec, ModelsSettings, Recipe, TrainSettings

SYSTEM = "You are a concise assistant."

ROWS = [
    ("What is hypertension?", "Hypertension is persistently high blood pressure in the arteries."),
    ("Name a symptom of dehydration.", "Thirst and dark urine are common symptoms of dehydration."),
    ("Define sepsis.", "Sepsis is a life-threatening response of the body to an infection."),
    ("What does an antibiotic do?", "An antibiotic kills bacteria or stops them from growing."),
    ("What is a fever?", "A fever is a body temperature above the normal range, often due to infection."),
    ("Why wash hands?", "Washing hands removes germs and prevents the spread of infection."),
]


def tiny_model_dir(path: Path, layers: int = 2, hidden: int = 32, seed: int = 0, tokenizer=None) -> Path:
    """A randomly initialised Llama with SmolLM2's tokenizer (or the given one), saved to path."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from sdk.models.embedded import embedded_model_dir

    tok = tokenizer or AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_recipe(student_dir: Path, teacher_dir: Path, **train) -> Recipe:
    base = dict(
        max_steps=3,
        batch_size=2,
        save_steps=2,
        logging_steps=1,
        max_seq_length=128,
        learning_rate=1e-3,
        warmup_ratio=0.0,
    )
    base.update(train)
    spec = lambda p: ModelSpec(provider="hf", name_or_path=str(p))  # noqa: E731
    models = ModelsSettings(
        teacher=spec(teacher_dir), student=spec(student_dir), referee=spec(teacher_dir), generator=spec(teacher_dir)
    )
    return Recipe(models=models, train=TrainSettings.model_validate(base))


def write_iteration(iter_dir: Path, pairs: list[dict] | None = None, failed: int = 1) -> Path:
    iter_dir.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": f"t{i}", "instruction": q, "answer": a, "status": "ok", "source": "seed", "provenance": {}}
        for i, (q, a) in enumerate(ROWS)
    ]
    rows += [
        {"id": f"f{i}", "instruction": "broken", "answer": None, "status": "failed", "source": "seed", "provenance": {}}
        for i in range(failed)
    ]
    (iter_dir / "teacher.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if pairs is not None:
        (iter_dir / "dpo_pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return iter_dir


PRUNING_TEXTS = [
    "Hypertension is persistently raised blood pressure.",
    "Sepsis is organ dysfunction caused by infection.",
    "Asthma narrows the airways.",
    "Insulin lowers blood glucose.",
]


def tiny_pruning_setup(teacher_path: Path, teacher):
    """The roles for a 4-layer pruned student of the tiny teacher in teacher_path, and the `student` stage's
    inputs (calibration and healing text, one held-out chunk, one held-out prompt with the teacher's answer)."""
    from sdk.stages.student import StudentInputs

    hf = ModelSpec(provider="hf", name_or_path=str(teacher_path))
    pruned = ModelSpec(provider="pruned", base="teacher", num_layers=4, calibration_chunks=4, calibration_tokens=32)
    models = ModelsSettings(teacher=hf, referee=hf, generator=hf, student=pruned)
    prompt = teacher.render([{"role": "user", "content": "What is sepsis?"}])
    return models, StudentInputs(PRUNING_TEXTS, PRUNING_TEXTS[:1], [prompt], ["An infection response."])
