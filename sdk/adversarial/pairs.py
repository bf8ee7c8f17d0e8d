"""Preference pairs for DPO, built from the loop.

Two modes:
  teacher_over_student  chosen = the teacher's answer, rejected = the student's, on hard instructions.
                        From iteration 1 on these are the previous iteration's hard rows, whose two
                        answers the referee has already seen. Iteration 0 has no split yet, so it uses
                        every instruction of its train pool, answered by the student it starts from.
  referee_ranked        the student samples several answers per instruction; the referee scores each
                        against the teacher's answer; chosen = the best, rejected = the worst.
Pairs whose two texts are the same are dropped later by the trainer (and counted there).
"""

from __future__ import annotations

from sdk.adversarial.referee import Pair


def teacher_over_student(rows: list[dict], mode: str = "teacher_over_student") -> list[dict]:
    """rows carry instruction, teacher_answer and student_answer (e.g. referee.jsonl rows)."""
    return [
        {
            "id": r["id"],
            "instruction": r["instruction"],
            "prompt": r["instruction"],
            "chosen": r["teacher_answer"],
            "rejected": r["student_answer"],
            "mode": mode,
            "provenance": r.get("provenance", {}),
        }
        for r in rows
        if r.get("teacher_answer") and r.get("student_answer") is not None
    ]


def referee_ranked(rows: list[dict], samples: dict[str, list[str]], referee) -> list[dict]:
    """rows: teacher-labelled instructions; samples: id -> several student answers; referee: a Referee."""
    pairs, index = [], []
    for row in rows:
        for j, answer in enumerate(samples.get(row["id"], [])):
            pairs.append(Pair(f"{row['id']}#{j}", row["instruction"], row["answer"], answer))
            index.append((row, answer))
    verdicts = referee.score(pairs, description="referee ranks sampled student answers") if pairs else []
    by_row: dict[str, list[tuple[float, str]]] = {}
    for (row, answer), verdict in zip(index, verdicts):
        if verdict["status"] == "ok":
            by_row.setdefault(row["id"], []).append((verdict["student_score"], answer))
    out = []
    for row in rows:
        scored = sorted(by_row.get(row["id"], []), key=lambda x: x[0])
        if len(scored) >= 2:
            (worst_score, worst), (best_score, best) = scored[0], scored[-1]
            out.append(
                {
                    "id": row["id"],
                    "instruction": row["instruction"],
                    "prompt": row["instruction"],
                    "chosen": best,
                    "rejected": worst,
                    "mode": "referee_ranked",
                    "chosen_score": best_score,
                    "rejected_score": worst_score,
                    "provenance": row.get("provenance", {}),
                }
            )
    return out
