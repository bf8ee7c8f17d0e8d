"""Degeneration: does an answer read as prose, or does it loop?

A metric the training objective can optimise directly (the teacher's likelihood of a short, likely
answer) can rise while the student loops ("any any any ..."). These checks look at the text itself:

  distinct_trigram_ratio  |distinct word trigrams| / |word trigrams|: 1.0 for prose, towards 0 for a loop
  longest_repeat          the most consecutive copies of one word n-gram (n = 1..4): 1 for prose,
                          5 for "any any any any any", 3 for "the cat sat the cat sat the cat sat"
  phrase_repeats          the most times any word 6-gram occurs anywhere in the answer, in a row or not
  empty                   no word at all

An answer is flagged as looping when longest_repeat >= LOOP_REPEATS, or its distinct-trigram ratio is
below LOOP_DISTINCT, or it is a paraphrase loop: one 6-gram occurs at least PHRASE_REPEATS times and those
copies make up at least PHRASE_SHARE of its words. A paraphrase loop varies the words between the copies
("... a high risk of having a myocardial infarction (AMI), which indicates a high risk of having a
myocardial infarction (MIA), indicating a high risk of having ..."), so neither of the other two checks
sees it. Six words, because shorter phrases recur in prose: "the World Health Organization" three times,
or "in the case of a" before three different cases. On the demo's 24 held-out prompts no teacher answer
repeats a 6-gram, and only that student answer repeats one three times (five). The share keeps a long
answer that repeats one stock phrase a few times from being flagged.
"""

from __future__ import annotations

import re
from collections import Counter
from statistics import mean

from sdk.adversarial.referee import distinct_trigram_ratio

LOOP_REPEATS = 3  # three copies of the same n-gram in a row
LOOP_DISTINCT = 0.6
MAX_NGRAM = 4
PHRASE_N = 6
PHRASE_REPEATS = 3
PHRASE_SHARE = 0.1


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


def phrase_repeats(text: str, n: int = PHRASE_N) -> int:
    """The most occurrences of any word n-gram anywhere in the text (overlapping ones count); 0 for fewer words."""
    w = words(text)
    return max(Counter(tuple(w[i : i + n]) for i in range(len(w) - n + 1)).values(), default=0)


def degeneration(text: str) -> dict:
    """The checks for one answer."""
    repeat = longest_repeat(text)
    ratio = distinct_trigram_ratio(text or "")
    n_words = len(words(text))
    phrases = phrase_repeats(text)
    paraphrase_loop = phrases >= PHRASE_REPEATS and phrases * PHRASE_N >= PHRASE_SHARE * n_words
    return {
        "distinct_trigram_ratio": round(ratio, 4),
        "longest_repeat": repeat,
        "phrase_repeats": phrases,
        "empty": n_words == 0,
        "looping": n_words > 0 and (repeat >= LOOP_REPEATS or ratio < LOOP_DISTINCT or paraphrase_loop),
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
