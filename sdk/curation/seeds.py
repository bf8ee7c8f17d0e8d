"""The first training pool: the pack's seed instructions, with provenance."""

from __future__ import annotations

import random

from sdk.packs import Pack
from sdk.rows import provenance


def seed_pool(pack: Pack, max_seeds: int | None = None, seed: int = 0) -> list[dict]:
    """Seed instructions as pool rows. A cap samples across sub-areas rather than taking the first N."""
    seeds = pack.seeds()
    if max_seeds is not None and max_seeds < len(seeds):
        rng = random.Random(seed)
        by_area: dict[str, list] = {}
        for s in seeds:
            by_area.setdefault(s.subarea, []).append(s)
        for rows in by_area.values():
            rng.shuffle(rows)
        picked = []
        while len(picked) < max_seeds:  # round-robin over sub-areas
            for rows in by_area.values():
                if rows and len(picked) < max_seeds:
                    picked.append(rows.pop())
        order = {s.id: i for i, s in enumerate(seeds)}
        seeds = sorted(picked, key=lambda s: order[s.id])
    return [
        {
            "id": s.id,
            "instruction": s.instruction,
            "subarea": s.subarea,
            "task_type": s.task_type,
            "provenance": provenance("seed", document=f"{pack.name}/{pack.spec.seeds}"),
        }
        for s in seeds
    ]
