"""Degeneration: does an answer read as prose, or does it loop?

A metric the training objective can optimise directly (the teacher's likelihood of a short, likely
answer) can rise while the student loops ("any any any ..."). These checks look at the text itself:

  distinct_trigram_ratio  |distinct word trigrams| / |word trigrams|: 1.0 for prose, towards 0 for a loop
  longest_repeat          the most consecutive copies of one word n-gram (n = 1..4): 1 for prose,
                          5 for "any any any any any", 3 for "the cat sat the cat sat the cat sat"
  empty                   no word at all

An answer is flagged as looping when longest_repeat >= LOOP_REPEATS or its distinct-trigram ratio is
below LOOP_DISTINCT.
"""

from __future__ import annotations

import re
from statistics import mean

from sdk.adversarial.referee import distinct_trigram_ratio

LOOP_REPEATS = 3  # three copies of the same n-gram in a row
LOOP_DISTINCT = 0.6
MAX_NGRAM = 4


def words(text: str) -> list[str]:
    return re.findall(r"\w+", (text or "").lower())


def longest_repeat(text: str, max_n: int = MAX_NGRAM) -> int:
    """The most consecutive copies of any word n-gram (n <= max_n) in the text; 0 for no words."""
    w = words(text)
    if not w:
        return 0
    best = 1
    for n in range(1, max_n + 1):
        for start in range(len(w) - n + 1):
            gram, copies, pos = w[start : start + n], 1, start + n
            while w[pos : pos + n] == gram:
                copies, pos = copies + 1, pos + n
            best = max(best, copies)
    return best


def degeneration(text: str) -> dict:
    """The checks for one answer."""
    repeat = longest_repeat(text)
    ratio = distinct_trigram_ratio(text or "")
    empty = not words(text)
    return {
        "distinct_trigram_ratio": round(ratio, 4),
        "longest_repeat": repeat,
        "empty": empty,
        "looping": (not empty) and (repeat >= LOOP_REPEATS or ratio < LOOP_DISTINCT),
    }


def degeneration_summary(texts: list[str]) -> dict:
    """Means and counts over a set of answers (empty answers count as empty, not in the ratio mean)."""
    rows = [degeneration(t) for t in texts]
    spoken = [r for r in rows if not r["empty"]]
    return {
        "distinct_trigram_ratio": round(mean(r["distinct_trigram_ratio"] for r in spoken), 4) if spoken else None,
        "min_distinct_trigram_ratio": round(min(r["distinct_trigram_ratio"] for r in spoken), 4) if spoken else None,
        "longest_repeat": max((r["longest_repeat"] for r in rows), default=0),
        "looping_answers": sum(r["looping"] for r in rows),
        "empty_answers": sum(r["empty"] for r in rows),
    }
