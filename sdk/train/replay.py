"""Replay: general-domain instructions mixed into every training stage, to guard against forgetting.

The pipeline asks for `replay_count(len(pool), recipe.train.replay_fraction)` rows with
`replay_instructions(n, seed)`, has the teacher answer them like any other instruction, and writes them
into teacher.jsonl with source "replay". From there every stage sees them: sft and kd train on their
answers, rlaif samples on their prompts, dpo on whatever pairs the loop built for them.

The instructions ship in configs/general/instructions.jsonl (everyday knowledge, writing, reasoning,
arithmetic, commonsense, how-to, language).
"""

from __future__ import annotations

import json
import random
from functools import lru_cache

from sdk.errors import DistilleryError
from sdk.paths import data_dir

GENERAL_FILE = "general/instructions.jsonl"


@lru_cache(maxsize=1)
def general_instructions() -> tuple[dict, ...]:
    """The shipped general instruction set, rows {id, instruction, category}."""
    path = data_dir("configs") / GENERAL_FILE
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return tuple(rows)


def replay_count(pool_size: int, fraction: float) -> int:
    """How many replay rows make up `fraction` of the mixed set: n / (pool_size + n) ~= fraction.

    n = round(pool_size * f / (1 - f)), capped at the size of the shipped set.
    """
    if not 0.0 <= fraction < 1.0:
        raise DistilleryError(f"replay fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0 or pool_size <= 0:
        return 0
    return min(len(general_instructions()), max(1, round(pool_size * fraction / (1.0 - fraction))))


def replay_instructions(n: int, seed: int) -> list[dict]:
    """n general instructions sampled without replacement (the same n and seed give the same rows)."""
    rows = list(general_instructions())
    if n > len(rows):
        raise DistilleryError(f"asked for {n} replay instructions but only {len(rows)} ship in configs/{GENERAL_FILE}")
    picked = random.Random(seed).sample(rows, n) if n > 0 else []
    return [
        {
            "id": f"replay-{r['id']}",
            "instruction": r["instruction"],
            "source": "replay",
            "provenance": {
                "document": f"configs/{GENERAL_FILE}",
                "chunk_id": None,
                "stage": "replay",
                "model": None,
                "category": r["category"],
            },
        }
        for r in picked
    ]
