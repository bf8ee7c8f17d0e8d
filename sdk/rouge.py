"""ROUGE-L exactly as `rouge_score` defines it, but fast.

rouge_score tokenises (lowercase, non-alphanumerics to spaces, optionally Porter stemming of tokens
longer than 3 chars) and then runs a pure-Python O(n*m) LCS. We keep its tokeniser and hand the token lists to
rapidfuzz's C++ `LCSseq`, which gives the same LCS length.

    P = LCS / |candidate|,  R = LCS / |reference|,  F = 2PR / (P + R)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from rapidfuzz.distance import LCSseq
from rouge_score import tokenizers

_TOKENIZERS = {stem: tokenizers.DefaultTokenizer(use_stemmer=stem) for stem in (False, True)}


class RougeL(NamedTuple):
    precision: float
    recall: float
    fmeasure: float


@functools.lru_cache(maxsize=65536)
def tokenize(text: str, use_stemmer: bool = False) -> tuple[str, ...]:
    return tuple(_TOKENIZERS[use_stemmer].tokenize(text))


def rouge_l(reference: str, candidate: str, use_stemmer: bool = False) -> RougeL:
    """ROUGE-L of `candidate` against `reference` (argument order as rouge_score's `score(target, prediction)`).

    The F-measure is computed with rouge_score's own float expression, so threshold decisions agree exactly.
    """
    ref, cand = tokenize(reference, use_stemmer), tokenize(candidate, use_stemmer)
    if not ref or not cand:
        return RougeL(0.0, 0.0, 0.0)
    lcs = LCSseq.similarity(ref, cand)
    precision, recall = lcs / len(cand), lcs / len(ref)
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return RougeL(precision, recall, f)


def rouge_l_f(reference: str, candidate: str, use_stemmer: bool = False) -> float:
    return rouge_l(reference, candidate, use_stemmer).fmeasure


def max_rouge_l(candidate: str, pool: list[str], use_stemmer: bool = False) -> float:
    """Highest ROUGE-L F between `candidate` and any text in `pool` (0 for an empty pool)."""
    return max((rouge_l_f(p, candidate, use_stemmer) for p in pool), default=0.0)
