"""Domain evaluation on the pack's held-out set.

For each eval prompt we compare the student's answer with
  - the teacher's answer: ROUGE-L F (how closely the student imitates the teacher)
  - the pack's reference: ROUGE-L F and key-point recall
and score it under the teacher: mean per-token log-likelihood log p_T(answer | prompt) / |answer|.
"""

from __future__ import annotations

import math
from statistics import mean
from typing import Optional

from sdk.rouge import rouge_l_f, tokenize

# Words too common to count as evidence that a key point is covered.
_STOPWORDS = frozenset(
    "a an the of to in on for and or but is are was were be been by with as at from that this these those it its "
    "into than then so such not no can may must should would could will".split()
)


def key_point_covered(key_point: str, answer: str, threshold: float = 0.6) -> bool:
    """A key point counts as covered when >= threshold of its content tokens (stemmed) occur in the answer."""
    point = [t for t in tokenize(key_point, use_stemmer=True) if t not in _STOPWORDS]
    if not point:
        return False
    have = set(tokenize(answer, use_stemmer=True))
    return sum(t in have for t in point) / len(point) >= threshold


def key_point_recall(key_points: list[str], answer: str) -> float:
    if not key_points:
        return 0.0
    return sum(key_point_covered(k, answer) for k in key_points) / len(key_points)


def score_answers(
    eval_rows: list[dict],
    answers: dict[str, str],
    teacher_answers: dict[str, str],
    teacher_loglik: Optional[dict[str, float]] = None,
) -> dict:
    """Per-item and mean scores for one set of answers (keyed by eval id)."""
    items = []
    for row in eval_rows:
        answer = answers.get(row["id"], "")
        item = {
            "id": row["id"],
            "rougeL_vs_teacher": rouge_l_f(teacher_answers.get(row["id"], ""), answer, use_stemmer=True),
            "rougeL_vs_reference": rouge_l_f(row["reference"], answer, use_stemmer=True),
            "key_point_recall": key_point_recall(row["key_points"], answer),
            "answer_tokens": len(tokenize(answer)),
        }
        if teacher_loglik is not None:
            item["teacher_loglik"] = teacher_loglik.get(row["id"])
        items.append(item)

    def avg(key: str) -> Optional[float]:
        values = [i[key] for i in items if i.get(key) is not None and math.isfinite(i[key])]
        return round(mean(values), 4) if values else None

    summary = {k: avg(k) for k in ("rougeL_vs_teacher", "rougeL_vs_reference", "key_point_recall", "answer_tokens")}
    summary["teacher_loglik"] = avg("teacher_loglik") if teacher_loglik is not None else None  # over non-empty answers
    summary["empty_answers"] = sum(i["answer_tokens"] == 0 for i in items)
    summary["n"] = len(items)
    return {"summary": summary, "items": items}
