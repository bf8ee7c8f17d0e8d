"""Teacher labeling: the teacher answers the training pool.

Finished answers are journaled chunk by chunk, so a killed run pays again only for unanswered rows.
A row the teacher could not answer (error after retries, or an empty reply) stays in the artifact with
`status: failed` and its reason; it is never dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from sdk.models.chat import answer_conversations, clean_answer
from sdk.store import Journal
from sdk.train.endpoint_topk import TOPK_FIELD


def teacher_prompt(row: dict, use_context: bool) -> str:
    """The user turn the teacher sees: the instruction, with its source passage for a RAG teacher."""
    if use_context and row.get("context"):
        return f"Reference passage:\n{row['context']}\n\nUsing the passage where it is relevant, answer the following.\n{row['instruction']}"
    return row["instruction"]


@dataclass(frozen=True)
class Teacher:
    """The teacher as labeling sees it: the chat model, its name for provenance, the pack's system prompt,
    and whether it sees each row's source passage (use_context: the student is later trained on the bare
    instruction, so the grounding is distilled into it). With `topk`, each answered row also records the
    reply's top-k log-probabilities (sdk/train/endpoint_topk.py) for the teacher logit store."""

    model: object  # a ChatBackend
    name: str
    system_prompt: str
    use_context: bool = False
    topk: Optional[Callable[[object], dict]] = None  # reply -> its encoded top-k, kept in the journal (endpoint KD)


def label_rows(
    rows: list[dict], teacher: Teacher, journal: Journal, description: str = "teacher labels", budget=None
) -> list[dict]:
    """Return rows (in input order) with `answer`, `status` and labeling provenance."""
    teacher_name, system_prompt, use_context = teacher.name, teacher.system_prompt, teacher.use_context

    def to_row(i: int, out) -> dict:
        row = rows[i]
        labeled = dict(
            row,
            provenance=dict(
                row.get("provenance", {}),
                labeled_by=teacher_name,
                teacher_saw_passage=bool(use_context and row.get("context")),
            ),
        )
        answer = None if isinstance(out, BaseException) else clean_answer(out)
        if answer is None:
            labeled.update(answer=None, status="failed", error=f"{type(out).__name__}: {out}")
        elif not answer:
            labeled.update(answer=None, status="failed", error="empty answer")
        else:
            labeled.update(answer=answer, status="ok")
            if teacher.topk is not None:
                labeled[TOPK_FIELD] = teacher.topk(out)
        return labeled

    conversations = answer_conversations(system_prompt, [teacher_prompt(r, use_context) for r in rows])
    teacher.model.generate_journaled(
        [r["id"] for r in rows], conversations, journal, to_row, description, budget=budget
    )
    return [journal.done[r["id"]] for r in rows]
