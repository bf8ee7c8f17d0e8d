"""Chat formatting shared by every stage: the conversation a model is asked, and the answer it gives back."""

from __future__ import annotations

import re


def answer_conversations(system_prompt: str, instructions: list[str]) -> list[list[dict]]:
    return [[{"role": "system", "content": system_prompt}, {"role": "user", "content": q}] for q in instructions]


def clean_answer(text: str) -> str:
    """Collapse runs of blank lines; a model that loops is still scored on what it said."""
    return re.sub(r"\n{3,}", "\n\n", text).strip()
