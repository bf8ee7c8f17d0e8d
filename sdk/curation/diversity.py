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
    and each candidate compares against that window only;
  - the window is scored in one multi-threaded `process.cdist` call.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from sdk.rouge import tokenize


class _TokenCodec:
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


def rouge_f(lcs: np.ndarray, len_cand: int, len_pool: np.ndarray) -> np.ndarray:
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
    codec: _TokenCodec = field(default_factory=_TokenCodec)
    _lengths: list[int] = field(default_factory=list)  # sorted
    _strings: list[str] = field(default_factory=list)  # same order as _lengths
    _labels: list[str] = field(default_factory=list)

    def add(self, text: str, label: str) -> None:
        s = self.codec.encode(text)
        pos = bisect.bisect_right(self._lengths, len(s))
        self._lengths.insert(pos, len(s))
        self._strings.insert(pos, s)
        self._labels.insert(pos, label)

    def extend(self, texts: Sequence[str], labels: Sequence[str]) -> None:
        encoded = sorted(zip((self.codec.encode(t) for t in texts), labels), key=lambda x: len(x[0]))
        merged = sorted(list(zip(self._strings, self._labels)) + encoded, key=lambda x: len(x[0]))
        self._strings = [s for s, _ in merged]
        self._labels = [lab for _, lab in merged]
        self._lengths = [len(s) for s in self._strings]

    def max_rouge(self, text: str) -> tuple[float, Optional[str]]:
        """Highest ROUGE-L F of `text` against the index among texts that could reach the threshold.

        Pairs outside the length window cannot reach the threshold and are not scored, so a returned
        value below the threshold is a lower bound on the true maximum, never a wrong decision.
        """
        s = self.codec.encode(text)
        n = len(s)
        if n == 0 or not self._strings:
            return 0.0, None
        t = self.threshold
        lo = bisect.bisect_left(self._lengths, int(np.floor(n * t / (2 - t))))
        hi = bisect.bisect_right(self._lengths, int(np.ceil(n * (2 - t) / t)))
        if hi <= lo:
            return 0.0, None
        window = self._strings[lo:hi]
        lcs = process.cdist([s], window, scorer=LCSseq.similarity, dtype=np.int32, workers=self.workers)[0]
        f = rouge_f(lcs, n, np.asarray(self._lengths[lo:hi], dtype=np.float64))
        best = int(np.argmax(f))
        return float(f[best]), self._labels[lo + best]


class DiversityFilter:
    """Streaming filter: `check(text)` decides one candidate and, if kept, adds it to the references."""

    def __init__(self, pool: Sequence[str], rouge_threshold: float = 0.7, cosine_threshold: Optional[float] = 0.9, embedder=None, workers: int = -1):
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

            v = np.ascontiguousarray((vector if vector is not None else self.embedder([text])[0]).reshape(1, -1), dtype=np.float32)
            faiss.normalize_L2(v)
            if self._faiss is not None and self._faiss.ntotal:
                sims, ids = self._faiss.search(v, 1)
                cosine = float(sims[0, 0])
                if cosine >= self.cosine_threshold:
                    return Decision(False, "cosine", score, match=self._vector_labels[int(ids[0, 0])], max_cosine=cosine)
            self._add_vectors(v, [label])
        self.rouge.add(text, label)
        self._kept += 1
        return Decision(True, None, score, match=match, max_cosine=cosine)


def filter_candidates(pool: Sequence[str], candidates: Sequence[str], rouge_threshold: float = 0.7, cosine_threshold: Optional[float] = 0.9, embedder=None, workers: int = -1) -> list[Decision]:
    """Decide every candidate in order; a kept candidate joins the references for later ones.

    `embedder(texts) -> np.ndarray` enables the cosine test; without one only ROUGE-L is applied.
    """
    filt = DiversityFilter(pool, rouge_threshold, cosine_threshold, embedder, workers)
    vectors = embedder(list(candidates)) if embedder is not None and cosine_threshold is not None and candidates else None
    return [filt.check(c, None if vectors is None else vectors[i], f"cand:{i}") for i, c in enumerate(candidates)]


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


def filter_jsonl(pool_file, candidates_file, out_file, rejected_file=None, rouge_threshold: float = 0.7, cosine_threshold: Optional[float] = 0.9) -> dict:
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
                row["rejected"] = {"reason": d.reason, "rouge_l": round(d.max_rouge, 4), "cosine": None if d.max_cosine is None else round(d.max_cosine, 4), "closest": d.match}
                rows.append(json.dumps(row, ensure_ascii=False) + "\n")
        atomic_write_text(Path(rejected_file), "".join(rows))
    return {"candidates": len(candidates), "kept": sum(d.kept for d in decisions), "rouge": sum(d.reason == "rouge" for d in decisions), "cosine": sum(d.reason == "cosine" for d in decisions)}
