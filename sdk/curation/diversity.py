"""The diversity filter: keep a candidate instruction only if it is new enough.

A candidate is kept when both hold, against every pool instruction and every candidate kept before it:
  1. ROUGE-L F < rouge_threshold (default 0.7), exactly rouge_score's `rougeL` F-measure with its
     tokeniser and no stemmer, so decisions match the Alpaca/Lion filter one for one;
  2. embedding cosine < cosine_threshold (default 0.9), searched with FAISS (optional).

Speed, for pools of 10^4-10^5 instructions:
  - each text is tokenised once and its tokens mapped to code points, so a text becomes a short string
    and rapidfuzz's bit-parallel C++ LCSseq computes the LCS of token sequences;
  - F = 2PR/(P+R) with P = L/|c|, R = L/|p| is at most 2*min(|c|,|p|)/(|c|+|p|), so only pool texts whose
    length lies in [t/(2-t) * |c|, (2-t)/t * |c|] can reach the threshold t; the pool is sorted by length
    and candidates, sorted by length too, are scored in chunks against their chunk's window only;
  - each chunk is one multi-threaded `process.cdist` call; scores against the fixed pool are computed
    up front, and each candidate is then checked in order against the few candidates kept before it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from sdk.rouge import tokenize


class TokenCodec:
    """Maps tokens to distinct code points (skipping the surrogate range) so token lists become strings."""

    def __init__(self):
        self.ids: dict[str, int] = {}

    def encode(self, text: str) -> str:
        chars = []
        for tok in tokenize(text):
            i = self.ids.get(tok)
            if i is None:
                i = self.ids[tok] = len(self.ids)
            cp = i + 0x100 if i + 0x100 < 0xD800 else i + 0x100 + 0x800
            chars.append(chr(cp))
        return "".join(chars)


def rouge_f(lcs: np.ndarray, len_cand, len_pool) -> np.ndarray:
    """rouge_score's F-measure, the same float expression: P = L/|c|, R = L/|p|, F = 2PR/(P+R)."""
    lcs = lcs.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # an empty text has L = 0: 0/0 is masked below
        precision = lcs / len_cand
        recall = lcs / len_pool
        denom = precision + recall
        f = 2 * precision * recall / denom
    return np.where(denom > 0, f, 0.0)  # NaN > 0 is False


@dataclass
class Decision:
    kept: bool
    reason: Optional[str] = None  # "rouge" or "cosine" when dropped
    max_rouge: float = 0.0
    match: Optional[str] = None  # the closest text: "pool:<i>" or "cand:<i>" (input positions)
    max_cosine: Optional[float] = None


@dataclass
class RougeIndex:
    """Texts indexed by token length for fast max-ROUGE-L queries."""

    threshold: float = 0.7
    workers: int = -1
    codec: TokenCodec = field(default_factory=TokenCodec)
    _lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # sorted
    _strings: list[str] = field(default_factory=list)  # same order as _lengths
    _labels: list[str] = field(default_factory=list)

    def _window(self, shortest: int, longest: int) -> tuple[int, int]:
        """Positions of texts whose length lets F reach the threshold for some query length in [shortest, longest]."""
        t = self.threshold
        lo = int(np.searchsorted(self._lengths, np.floor(shortest * t / (2 - t)), side="left"))
        hi = int(np.searchsorted(self._lengths, np.ceil(longest * (2 - t) / t), side="right"))
        return lo, hi

    def add(self, text: str, label: str) -> None:
        s = self.codec.encode(text)
        pos = int(np.searchsorted(self._lengths, len(s), side="right"))
        self._lengths = np.insert(self._lengths, pos, len(s))
        self._strings.insert(pos, s)
        self._labels.insert(pos, label)

    def extend(self, texts: Sequence[str], labels: Sequence[str]) -> None:
        merged = sorted(
            list(zip(self._strings, self._labels)) + [(self.codec.encode(t), lab) for t, lab in zip(texts, labels)],
            key=lambda x: len(x[0]),
        )
        self._strings = [s for s, _ in merged]
        self._labels = [lab for _, lab in merged]
        self._lengths = np.array([len(s) for s in self._strings], dtype=np.int64)

    def max_rouge(self, text: str) -> tuple[float, Optional[str]]:
        """Highest ROUGE-L F of `text` against the index among texts that could reach the threshold.

        Pairs outside the length window cannot reach the threshold and are not scored, so a returned
        value below the threshold is a lower bound on the true maximum, never a wrong decision.
        """
        scores, labels = self.max_rouge_many([text])
        return scores[0], labels[0]

    def max_rouge_many(self, texts: Sequence[str], chunk: int = 64) -> tuple[list[float], list[Optional[str]]]:
        """max_rouge for many texts: sorted by length and scored in chunks, one cdist call per chunk."""
        encoded = [self.codec.encode(t) for t in texts]
        scores: list[float] = [0.0] * len(texts)
        labels: list[Optional[str]] = [None] * len(texts)
        order = sorted((i for i, s in enumerate(encoded) if s), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), chunk):
            rows = order[start : start + chunk]
            lo, hi = self._window(len(encoded[rows[0]]), len(encoded[rows[-1]]))
            if hi <= lo:
                continue
            lcs = process.cdist(
                [encoded[i] for i in rows],
                self._strings[lo:hi],
                scorer=LCSseq.similarity,
                dtype=np.int32,
                workers=self.workers,
            )
            cand_len = np.array([len(encoded[i]) for i in rows], dtype=np.float64)[:, None]
            f = rouge_f(lcs, cand_len, self._lengths[lo:hi].astype(np.float64)[None, :])  # (rows, window)
            best = f.argmax(axis=1)
            for r, i in enumerate(rows):
                scores[i] = float(f[r, best[r]])
                labels[i] = self._labels[lo + int(best[r])]
        return scores, labels


class DiversityFilter:
    """Streaming filter: `check(text)` decides one candidate and, if kept, adds it to the references."""

    def __init__(
        self,
        pool: Sequence[str],
        rouge_threshold: float = 0.7,
        cosine_threshold: Optional[float] = 0.9,
        embedder=None,
        workers: int = -1,
    ):
        if not 0 < rouge_threshold <= 1:
            raise ValueError(f"rouge_threshold must be in (0, 1], got {rouge_threshold}")
        self.rouge = RougeIndex(threshold=rouge_threshold, workers=workers)
        self.rouge.extend(list(pool), [f"pool:{i}" for i in range(len(pool))])
        self.cosine_threshold = cosine_threshold
        self.embedder = embedder if cosine_threshold is not None else None
        self._faiss = None
        self._vector_labels: list[str] = []
        self._kept = 0
        if self.embedder is not None and len(pool):
            self._add_vectors(self.embedder(list(pool)), [f"pool:{i}" for i in range(len(pool))])

    def _add_vectors(self, vectors: np.ndarray, labels: list[str]) -> None:
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        faiss.normalize_L2(vectors)
        if self._faiss is None:
            self._faiss = faiss.IndexFlatIP(vectors.shape[1])
        self._faiss.add(vectors)
        self._vector_labels += labels

    def check(self, text: str, vector: Optional[np.ndarray] = None, label: Optional[str] = None) -> Decision:
        """Decide one candidate; a kept one is added under `label` (default 'kept:<n>')."""
        label = label or f"kept:{self._kept}"
        score, match = self.rouge.max_rouge(text)
        if score >= self.rouge.threshold:
            return Decision(False, "rouge", score, match=match)
        cosine = None
        if self.embedder is not None:
            import faiss

            v = np.ascontiguousarray(
                (vector if vector is not None else self.embedder([text])[0]).reshape(1, -1), dtype=np.float32
            )
            faiss.normalize_L2(v)
            if self._faiss is not None and self._faiss.ntotal:
                sims, ids = self._faiss.search(v, 1)
                cosine = float(sims[0, 0])
                if cosine >= self.cosine_threshold:
                    return Decision(
                        False, "cosine", score, match=self._vector_labels[int(ids[0, 0])], max_cosine=cosine
                    )
            self._add_vectors(v, [label])
        self.rouge.add(text, label)
        self._kept += 1
        return Decision(True, None, score, match=match, max_cosine=cosine)


def filter_candidates(
    pool: Sequence[str],
    candidates: Sequence[str],
    rouge_threshold: float = 0.7,
    cosine_threshold: Optional[float] = 0.9,
    embedder=None,
    workers: int = -1,
) -> list[Decision]:
    """Decide every candidate in order; a kept candidate joins the references for later ones.

    `embedder(texts) -> np.ndarray` enables the cosine test; without one only ROUGE-L is applied.
    """
    filt = DiversityFilter(pool, rouge_threshold, cosine_threshold, embedder, workers)
    vectors = (
        embedder(list(candidates)) if embedder is not None and cosine_threshold is not None and candidates else None
    )
    # Scores against the fixed pool do not depend on earlier decisions: compute them in one batched pass,
    # then decide in order, checking each candidate only against the (few) candidates kept before it.
    pool_scores, pool_matches = filt.rouge.max_rouge_many(candidates)
    kept = RougeIndex(threshold=rouge_threshold, workers=workers, codec=filt.rouge.codec)
    filt.rouge = kept
    decisions = []
    for i, c in enumerate(candidates):
        if pool_scores[i] >= rouge_threshold:
            decisions.append(Decision(False, "rouge", pool_scores[i], match=pool_matches[i]))
            continue
        d = filt.check(c, None if vectors is None else vectors[i], f"cand:{i}")
        if d.max_rouge < pool_scores[i]:
            d.max_rouge, d.match = pool_scores[i], pool_matches[i]
        decisions.append(d)
    return decisions


def _read_instructions(path: Path) -> tuple[list[str], list[str]]:
    """(raw lines, instructions) of a JSONL file; a bad line is an error naming file and line."""
    from sdk.errors import DistilleryError

    lines, texts = [], []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["instruction"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DistilleryError(f"{path}:{lineno}: expected a JSON object with an 'instruction' field") from None
            if not isinstance(text, str):
                raise DistilleryError(f"{path}:{lineno}: field 'instruction' must be a string")
            lines.append(line.rstrip("\n"))
            texts.append(text)
    return lines, texts


def filter_jsonl(
    pool_file,
    candidates_file,
    out_file,
    rejected_file=None,
    rouge_threshold: float = 0.7,
    cosine_threshold: Optional[float] = 0.9,
) -> dict:
    """The `distill filter` command: kept candidate lines are written unchanged, in input order."""
    from sdk.store import atomic_write_text

    _, pool = _read_instructions(Path(pool_file))
    lines, candidates = _read_instructions(Path(candidates_file))
    if cosine_threshold is not None and cosine_threshold >= 1.0:
        cosine_threshold = None
    embedder = None
    if cosine_threshold is not None:
        from sdk.knowledge.embeddings import load_embedder

        embedder = load_embedder()
    decisions = filter_candidates(pool, candidates, rouge_threshold, cosine_threshold, embedder)
    atomic_write_text(Path(out_file), "".join(line + "\n" for line, d in zip(lines, decisions) if d.kept))
    if rejected_file is not None:
        rows = []
        for line, d in zip(lines, decisions):
            if not d.kept:
                row = json.loads(line)
                row["rejected"] = {
                    "reason": d.reason,
                    "rouge_l": round(d.max_rouge, 4),
                    "cosine": None if d.max_cosine is None else round(d.max_cosine, 4),
                    "closest": d.match,
                }
                rows.append(json.dumps(row, ensure_ascii=False) + "\n")
        atomic_write_text(Path(rejected_file), "".join(rows))
    return {
        "candidates": len(candidates),
        "kept": sum(d.kept for d in decisions),
        "rouge": sum(d.reason == "rouge" for d in decisions),
        "cosine": sum(d.reason == "cosine" for d in decisions),
    }
