"""The diversity filter: keep a candidate instruction only if it is new enough.

A candidate is kept when both hold, against every pool instruction and every candidate kept before it:
  1. ROUGE-L F < rouge_threshold t (default 0.7), exactly rouge_score's `rougeL` F-measure with its
     tokeniser and no stemmer, so decisions match the Alpaca/Lion filter one for one;
  2. embedding cosine < cosine_threshold (default 0.9), searched with FAISS (optional).

ROUGE-L is not computed against the whole pool. An exact pruning step, the prefix filter of set-similarity
joins (AllPairs, Bayardo et al. 2007; PPJoin, Xiao et al. 2008), leaves the texts that can reach t, and only
those are scored. For a candidate c of a tokens and a text p of b tokens:
  - with L their token LCS, P = L/a and R = L/b, F = 2PR/(P+R) = 2L/(a+b). L is at most their multiset
    overlap O = sum over tokens of min(count in c, count in p), so F >= t needs O >= o = ceil(t(a+b)/2);
  - numbering repeats ((tok, 1), (tok, 2), ...) turns a multiset into a set with the same overlap. Each
    text's elements are sorted by one global order, rarest first (document frequency over the pool, ties
    by first appearance; an element the pool lacks counts as rarest);
  - prefix filter: if c and p share o elements, the rarest of them sits at a position i of c and j of p
    (0-based) with i <= a - o and j <= b - o, as the other o - 1 come after it in both. With o >= t(a+b)/2:
        (2-t)*b - 2j >= t*a      and      (2-t)*a - 2i >= t*b;
    and as F <= 2*min(a,b)/(a+b) gives b >= t/(2-t)*a, i can only be among c's first a - ceil(t*a/(2-t)) + 1
    elements (its prefix), and likewise j among p's;
  - an inverted index maps each element to the texts holding it in their prefix, sorted by 2j - (2-t)*b, so
    a probe reads a contiguous run of postings that holds all those passing both tests (some others too).
    No element rarer than the first shared one is shared, so O <= min(a - i, b - j) and F <= 2*min(a - i,
    b - j)/(a + b) at a text's first posting, and a text can reach t only if that bound does;
  - the same holds for any level s >= t in place of t. The candidate's elements are probed rarest first and
    the postings scored in batches (largest bound first, until no bound left reaches the best so far): once
    a text with F = f >= t is found only texts reaching f matter, so the elements after are probed at level
    f, with a shorter prefix and narrower runs. Rare elements are shared by the nearest texts, so the level
    usually rises before the long postings of common elements are read;
  - scoring is exact: tokens (rouge_score's tokeniser, reimplemented in one pass) are mapped to code points,
    so a text is a short string and rapidfuzz's bit-parallel C++ LCSseq gives L; F is rouge_score's own
    float expression.
Bounds use t - 1e-9 in place of t (and the best so far less 1e-9), so float rounding never prunes a pair
whose rouge_score F reaches them. Candidates kept by the filter join the index as they are kept (in a side
table, merged in when large), so the streaming `check` is pruned alike. A dropped candidate's max_rouge and
match are the true maximum and its text (ties: the shorter text, then the earlier one), as every text
scoring at least t is scored; a kept candidate's max_rouge is the best among the texts scored, a lower bound
on the true maximum, which is below t.
"""

from __future__ import annotations

import json
import math
import re
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Optional, Union

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

_SLACK = 1e-9  # bounds use t - _SLACK: rouge_score's float F (a few ulp off 2L/(a+b)) is never pruned
_UNSEEN = -(2**62)  # the rank of an element no indexed text holds: rarest of all, in no posting
_FIRST_CHUNK = 128  # up to this many postings are scored at once; more, in chunks of growing size
_FLUSH = 256  # postings collected before scoring them and raising the floor
_THREADED_FROM = 20_000  # chunks this large are scored with `workers` threads (thread start-up ~0.2 ms)

Element = Union[str, tuple[str, int]]


_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def _tokenize(text: str) -> list[str]:
    """rouge_score's tokens without stemming (as sdk.rouge.tokenize), in one pass: lowercased, every run of
    characters other than a-z and 0-9 made a space, split on spaces. rouge_score splits on whitespace runs and
    then drops the tokens not matching ^[a-z0-9]+$, which after that substitution are only the empty strings
    at either end, so the lists are equal (tests/test_diversity.py checks it on arbitrary text)."""
    return _NON_ALPHANUMERIC.sub(" ", text.lower()).split()


class TokenCodec:
    """Maps tokens to distinct code points (skipping the surrogate range) so token lists become strings."""

    def __init__(self):
        self.ids: dict[str, int] = {}
        self._chars: dict[str, str] = {}

    def _new(self, tok: str) -> str:
        i = self.ids[tok] = len(self.ids)
        ch = self._chars[tok] = chr(i + 0x100 if i + 0x100 < 0xD800 else i + 0x100 + 0x800)
        return ch

    def encode(self, text: str) -> str:
        chars = self._chars
        return "".join([chars.get(tok) or self._new(tok) for tok in _tokenize(text)])


def rouge_f(lcs: np.ndarray, len_cand, len_pool) -> np.ndarray:
    """rouge_score's F-measure, the same float expression: P = L/|c|, R = L/|p|, F = 2PR/(P+R)."""
    lcs = lcs.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # an empty text has L = 0: 0/0 is masked below
        precision = lcs / len_cand
        recall = lcs / len_pool
        denom = precision + recall
        f = 2 * precision * recall / denom
    return np.where(denom > 0, f, 0.0)  # NaN > 0 is False


def _rouge_f(lcs: int, len_cand: int, len_pool: int) -> float:
    """rouge_score's F-measure of one pair, its float expression: P = L/|c|, R = L/|p|, F = 2PR/(P+R)."""
    if not lcs:
        return 0.0
    precision, recall = lcs / len_cand, lcs / len_pool
    return 2 * precision * recall / (precision + recall)


def elements(encoded: str) -> Sequence[Element]:
    """A token string as a set: the k-th occurrence of a token is the element (token, k), the first one
    just the token (so a string without repeats is its own set)."""
    if len(set(encoded)) == len(encoded):
        return encoded
    seen: dict[str, int] = {}
    out: list[Element] = []
    for ch in encoded:
        k = seen[ch] = seen.get(ch, 0) + 1
        out.append(ch if k == 1 else (ch, k))
    return out


class ElementOrder:
    """The global order of elements, as integer ranks (smaller = rarer). A rank never changes once given."""

    def __init__(self):
        self.ranks: dict[Element, int] = {}
        self._lowest = 0

    def fit(self, frequencies: dict[Element, int]) -> None:
        """Rank the unranked elements of `frequencies` (element -> document frequency, in order of first
        appearance) rarest first, ties in that order, all below (as rarer than) the elements ranked before."""
        new = sorted((e for e in frequencies if e not in self.ranks), key=frequencies.__getitem__)  # stable
        base = self._lowest - len(new)
        for i, e in enumerate(new):
            self.ranks[e] = base + i
        self._lowest = base

    def rank(self, element: Element) -> int:
        """The element's rank, giving an unranked one the rarest rank so far."""
        r = self.ranks.get(element)
        if r is None:
            self._lowest -= 1
            r = self.ranks[element] = self._lowest
        return r


@dataclass
class Decision:
    kept: bool
    reason: Optional[str] = None  # "rouge" or "cosine" when dropped
    max_rouge: float = 0.0
    match: Optional[str] = None  # the closest text: "pool:<i>" or "cand:<i>" (input positions)
    max_cosine: Optional[float] = None


class RougeIndex:
    """Texts indexed by the prefixes of their element sets, for exact max-ROUGE-L queries at a threshold."""

    def __init__(
        self,
        threshold: float = 0.7,
        workers: int = -1,
        codec: Optional[TokenCodec] = None,
        order: Optional[ElementOrder] = None,
    ):
        self.threshold = threshold
        self.workers = workers
        self.codec = codec if codec is not None else TokenCodec()
        self.order = order if order is not None else ElementOrder()  # shared by the indexes a filter probes
        self._t = max(threshold - _SLACK, 0.0)
        self._n = 0
        self._strings = np.empty(1024, dtype=object)  # entry id -> token string (capacity grows)
        self._lengths = np.zeros(1024, dtype=np.int32)  # entry id -> token count
        self._labels: list[str] = []
        # element rank -> (2j - (2-t)b ascending, int32 rows [entry id, b, b - j]) over the texts holding the
        # element at position j < _prefix_len(b) of their sorted elements
        self._postings: dict[int, tuple[list[float], np.ndarray]] = {}
        self._size = 0  # postings in _postings
        # postings of texts added one at a time, in the same layout; merged into _postings once they are many,
        # so that adding a text does not copy long posting arrays
        self._recent: dict[int, tuple[list[float], np.ndarray]] = {}
        self._recent_size = 0
        self._bounds_t: dict[int, tuple[int, float, float, float]] = {}  # _bounds(a, t) by a

    def __len__(self) -> int:
        return self._n

    def _prefix_len(self, n: int) -> int:
        """How many leading elements of an n-token text can hold the first shared element of a pair with
        F >= t: n - ceil(t*n/(2-t)) + 1, or one more when t*n/(2-t) is an integer."""
        t = self._t
        return min(n, n - math.floor(t * n / (2 - t)) + 1)

    def _append(self, encoded: str, label: str) -> int:
        i = self._n
        if i == len(self._lengths):
            self._lengths = np.concatenate([self._lengths, np.zeros(i, dtype=np.int32)])
            self._strings = np.concatenate([self._strings, np.empty(i, dtype=object)])
        self._lengths[i] = len(encoded)
        self._strings[i] = encoded
        self._labels.append(label)
        self._n += 1
        return i

    def add(self, text: str, label: str) -> None:
        """Index one more text (a kept candidate); elements new to the order rank as the rarest."""
        s = self.codec.encode(text)
        i, b = self._append(s, label), len(s)
        ranks = sorted(map(self.order.rank, elements(s)))
        for j in range(self._prefix_len(b) if b else 0):
            key, row = 2 * j - (2 - self._t) * b, (i, b, b - j)
            post = self._recent.get(ranks[j])
            if post is None:
                self._recent[ranks[j]] = ([key], np.array(row, dtype=np.int32).reshape(3, 1))
            else:
                keys, old = post
                k = bisect_right(keys, key)
                keys.insert(k, key)
                rows = np.empty((3, len(keys)), dtype=np.int32)
                rows[:, :k], rows[:, k], rows[:, k + 1 :] = old[:, :k], row, old[:, k:]
                self._recent[ranks[j]] = (keys, rows)
            self._recent_size += 1
        if self._recent_size > max(1024, self._size // 8):
            self._merge_recent()

    def _merge_recent(self) -> None:
        for rank, (keys, rows) in self._recent.items():
            post = self._postings.get(rank)
            if post is not None:
                keys, rows = post[0] + keys, np.concatenate([post[1], rows], axis=1)
                by = np.argsort(keys, kind="stable")
                keys, rows = np.array(keys)[by].tolist(), rows[:, by]
            self._postings[rank] = (keys, rows)
        self._size += self._recent_size
        self._recent, self._recent_size = {}, 0

    def extend(self, texts: Sequence[str], labels: Sequence[str]) -> None:
        """Index many texts; elements new to the order are ranked by document frequency among them."""
        encoded = [self.codec.encode(t) for t in texts]
        sets = [elements(s) for s in encoded]
        self.order.fit(Counter(e for es in sets for e in es))  # an element occurs at most once per text
        if self._n:
            for t, lab in zip(texts, labels):
                self.add(t, lab)
            return
        ranks, ids, lengths, positions = [], [], [], []
        rank = self.order.ranks.__getitem__
        for es, s, lab in zip(sets, encoded, labels):
            i, b = self._append(s, lab), len(s)
            p = self._prefix_len(b) if b else 0
            ranks += sorted(map(rank, es))[:p]
            ids += [i] * p
            lengths += [b] * p
            positions += range(p)
        r = np.array(ranks, dtype=np.int64)
        rows = np.array([ids, lengths, positions], dtype=np.int32).reshape(3, -1)
        keys = 2 * rows[2] - (2 - self._t) * rows[1]
        rows[2] = rows[1] - rows[2]
        by = np.lexsort((keys, r))
        r, keys, rows = r[by], keys[by], rows[:, by]
        cuts = (np.flatnonzero(np.diff(r)) + 1).tolist()
        for lo, hi in zip([0, *cuts], [*cuts, len(r)]) if len(r) else ():
            self._postings[int(r[lo])] = (keys[lo:hi].tolist(), rows[:, lo:hi])
        self._size = len(r)

    def _bounds(self, a: int, level: float) -> tuple[int, float, float, float]:
        """For a query of a tokens and a pair to reach F >= level (>= t): how many of the query's leading
        elements to probe, and the key range [bottom + step*i, top] to read in the postings of element i."""
        if level == self._t and a in self._bounds_t:
            return self._bounds_t[a]
        bounds = self._bounds_at(a, level)
        if level == self._t:
            self._bounds_t[a] = bounds
        return bounds

    def _bounds_at(self, a: int, level: float) -> tuple[int, float, float, float]:
        t = self._t
        # the text's side: 2j - (2-s)b <= -s*a, so 2j - (2-t)b <= -s*a - (s-t)b, and b >= s*a/(2-s)
        top = -level * a - (level - t) * level * a / (2 - level)
        if not level:
            return a, top, -math.inf, 0.0
        # the query's side, b <= ((2-s)a - 2i)/s, so 2j - (2-t)b >= -(2-t)((2-s)a - 2i)/s (with a margin)
        bottom = -(2 - t) * (2 - level) * a / level * (1 + 1e-9) - 1e-9
        step = 2 * (2 - t) / level * (1 + 1e-9)
        return min(a, a - math.floor(level * a / (2 - level)) + 1), top, bottom, step

    def survivors(self, encoded: str) -> np.ndarray:
        """Sorted entry ids of the texts that pass the prefix filter with `encoded`: all that can reach F >= t."""
        a = len(encoded)
        ranks = sorted(map(self.order.ranks.get, elements(encoded), repeat(_UNSEEN)))
        n_prefix, top, bottom, step = self._bounds(a, self._t)
        found = [np.zeros(0, dtype=np.int32)]
        for i in range(n_prefix):
            for post in (self._postings.get(ranks[i]), self._recent.get(ranks[i])):
                if post is not None:
                    rows = post[1][:, bisect_left(post[0], bottom + step * i) : bisect_right(post[0], top)]
                    found.append(rows[0][2 * np.minimum(a - i, rows[2]) >= self._t * (a + rows[1])])
        return np.unique(np.concatenate(found))

    def max_rouge(self, text: str) -> tuple[float, Optional[str]]:
        """Highest ROUGE-L F of `text` against the index among the texts that can reach the threshold.

        The value is exact when it reaches the threshold; below it, it is a lower bound on the true maximum
        (texts that cannot reach the threshold are not scored), never a wrong decision. The label is that of
        the best text (ties: the shorter, then the earlier indexed), None when no text was scored.
        """
        s = self.codec.encode(text)
        a, t = len(s), self._t
        ranks = sorted(map(self.order.ranks.get, elements(s), repeat(_UNSEEN)))
        postings, recent = self._postings, self._recent
        # Probe the query's prefix elements rarest first, collecting postings; score them whenever the next
        # run of postings would make more than _FLUSH, and raise the floor to the best F so far (less _SLACK,
        # so that float ties with the best are scored too): the elements after are probed at that level, with
        # shorter prefixes and narrower ranges. Rare elements are shared by the nearest texts, so the floor
        # usually rises before the long postings of common elements are read.
        floor, scored = t, []
        n_prefix, top, bottom, step = self._bounds(a, t)
        blocks, rest, counts, pending, i = [], [], [], 0, 0
        while True:
            if i < n_prefix:
                r, earlier = ranks[i], len(blocks)
                for post in (postings.get(r), recent.get(r)) if recent else (postings.get(r),):
                    if post is not None:
                        lo, hi = bisect_left(post[0], bottom + step * i), bisect_right(post[0], top)
                        if hi > lo:
                            if earlier and pending + hi - lo > _FLUSH:
                                break  # score what came before first
                            blocks.append(post[1][:, lo:hi])
                            rest.append(a - i)
                            counts.append(hi - lo)
                            pending += hi - lo
                else:
                    i += 1
                    continue
            elif not blocks:
                break
            raised = self._score_blocks(s, blocks, rest, counts, floor, scored)
            blocks, rest, counts, pending = [], [], [], 0
            if raised != floor:  # the elements after (or element i again) at the new level
                floor = raised
                n_prefix, top, bottom, step = self._bounds(a, floor)
        if not scored:
            return 0.0, None
        # The highest F is among the highest ratios L/(a+b) = F/2: a text whose ratio is lower by more than
        # 1e-12 (relative) has a lower float F, which is within ~1e-16 of 2L/(a+b). Take rouge_score's float F
        # of those, then the shorter text, then the earlier one.
        if len(scored) == 1:
            high, ratio, lcs, ids, lengths = scored[0]
        else:
            high = max(x[0] for x in scored)
            scored = [x for x in scored if x[0] >= high * (1 - 1e-12)]
            _, ratio, lcs, ids, lengths = (
                scored[0] if len(scored) == 1 else [None, *(np.concatenate(x) for x in list(zip(*scored))[1:])]
            )
        top = (ratio >= high * (1 - 1e-12)).nonzero()[0]
        if len(top) > 1:
            tied = lengths[top]
            if tied.min() != tied.max():  # keep the highest float F
                precision, recall = lcs[top] / float(a), lcs[top] / tied
                f = 2 * precision * recall / (precision + recall)
                top, tied = top[f == f.max()], tied[f == f.max()]
            # equal F (one length and ratio is one L): the shorter text, then the earlier one
            top = top[(tied.astype(np.int64) * self._n + ids[top]).argmin()]
        else:
            top = top[0]
        best = int(top)
        return _rouge_f(int(lcs[best]), a, int(lengths[best])), self._labels[int(ids[best])]

    def _score_blocks(self, s: str, blocks: list, rest: list, counts: list, floor: float, scored: list) -> float:
        """Score the texts of the posting runs `blocks` (of query elements with a - i = `rest`) that can reach
        `floor`, appending (highest F/2, F/2, LCS, ids, lengths) to `scored`; returns the raised floor.

        A text's overlap bound min(a - i, b - j) is largest, and valid, at its first appearance (its rarest
        shared element), so F <= 2*bound/(a + b). Past a chunk, texts are scored in decreasing order of that
        bound, binned to q = floor(8192 * it) (so a radix sort; a text in bin q is below (q+1)/8192), in chunks
        of growing size, until no text left can reach the floor.
        """
        a = len(s)
        rows = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
        ids, lengths = rows[0], rows[1]
        if len(ids) <= _FIRST_CHUNK:
            lcs = self._lcs(s, ids)
            ratio = lcs / (a + lengths)  # F = 2 * ratio, up to float rounding
            high = float(ratio.max())
            scored.append((high, ratio, lcs, ids, lengths))
            return max(floor, 2 * high - _SLACK)
        bound = np.minimum(rest[0], rows[2]) if len(blocks) == 1 else np.minimum(np.repeat(rest, counts), rows[2])
        bins = (bound * 16384.0 / (a + lengths)).astype(np.int16)
        order = bins.argsort(kind="stable")[::-1]
        start, chunk = 0, _FIRST_CHUNK
        while start < len(order) and (int(bins[order[start]]) + 1) / 8192 > floor:
            part = order[start : start + chunk]
            part_ids, part_lengths = ids[part], lengths[part]
            lcs = self._lcs(s, part_ids)
            ratio = lcs / (a + part_lengths)
            high = float(ratio.max())
            scored.append((high, ratio, lcs, part_ids, part_lengths))
            floor = max(floor, 2 * high - _SLACK)
            start, chunk = start + len(part), chunk * 2
        return floor

    def _lcs(self, encoded: str, ids: np.ndarray) -> np.ndarray:
        """Token LCS lengths of `encoded` with the texts `ids`."""
        return process.cdist(
            [encoded],
            self._strings[ids],
            scorer=LCSseq.similarity,
            dtype=np.int32,
            workers=self.workers if len(ids) >= _THREADED_FROM else 1,
        )[0]

    def max_rouge_many(self, texts: Sequence[str]) -> tuple[list[float], list[Optional[str]]]:
        """max_rouge for each text."""
        scores, labels = [], []
        for text in texts:
            score, label = self.max_rouge(text)
            scores.append(score)
            labels.append(label)
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
    kept = RougeIndex(rouge_threshold, workers, codec=filt.rouge.codec, order=filt.rouge.order)
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
