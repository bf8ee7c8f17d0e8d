"""Benchmark: the diversity filter's exact ROUGE-L test against the Alpaca/Lion baseline and against MinHash LSH.

Part 1, baseline: rouge_score's `_score_lcs` of each candidate against every pool instruction (and every
candidate kept before it), spread over a multiprocessing Pool, as self-instruct/Alpaca/Lion do. Ours: sdk's
DiversityFilter (token-code strings + rapidfuzz LCSseq + length bound + threaded cdist).

Part 2, MinHash LSH, as distilabel's `MinHashDedup` step does it: each text becomes a set of shingles,
hashed into a datasketch `MinHash` (num_perm 128, seed 1, `MinHash.bulk` over a batch); a candidate whose
MinHash `MinHashLSH(threshold=0.7, num_perm=128).query` returns anything is dropped, otherwise it is
inserted and kept. Two shingle sets: "words" (word and punctuation tokens, case kept: distilabel's
default nltk `word_tokenize`, approximated by a regex) and "char5" (character 5-grams, distilabel's
`tokenizer="ngrams"`, n=5). The pool is hashed and inserted first (setup, not counted per candidate);
per candidate counts hashing the candidates, the query and the insert of a kept one.

Ours is timed twice in part 2: "batch" is `filter_candidates` (what the synthesize stage calls), less the
time it takes to index the pool; "stream" is `DiversityFilter.check` one candidate at a time (what
adversarial generation calls), the same access pattern as MinHash's query + insert. Their decisions are
identical (checked) and are exact ROUGE-L F >= 0.7; MinHash's decisions are compared with them:
    false keep   MinHash kept a candidate whose ROUGE-L to the pool or an earlier kept one is >= 0.7
    false drop   MinHash dropped a candidate that exact ROUGE-L keeps
Each filter decides against its own earlier kept candidates; with these candidates (30% one-word edits of
pool instructions, the rest new) a disagreement rarely carries over to a later candidate.

    python bench/diversity_filter.py                       # part 1 at 5,000 and 50,000; part 2 at 50,000 and 500,000
    python bench/diversity_filter.py --part minhash --minhash-pools 50000
    python bench/diversity_filter.py --baseline-sample 500 # run the baseline on every candidate (slow)

The baseline is run on the first --baseline-sample candidates at each pool size (all 500 at 5,000 by
default); agreement is reported over exactly the candidates both methods decided.

Measured 2026-11-29, part 2 (`python bench/diversity_filter.py --part minhash`, under `nice -n 15`), 2-core
AMD EPYC, 2 cores, loaded machine (another benchmark held about one core), datasketch 2.0.0, rapidfuzz
threads = 2; 500 candidates, 4 minutes in all, 3 GB peak memory:

       pool  cands method          setup s  ms/cand  kept  false keep  false drop
      50000    500 ours batch          0.7    2.807    80           -           -
      50000    500 ours stream         0.7    4.886    80           -           -
      50000    500 minhash words       5.4    0.174   143    75 15.0%    12  2.4%
      50000    500 minhash char5       9.2    0.143   335   256 51.2%     1  0.2%
     500000    500 ours batch          7.0   38.455    44           -           -
     500000    500 ours stream         7.0  145.505    44           -           -
     500000    500 minhash words      33.8    0.438    82    55 11.0%    17  3.4%
     500000    500 minhash char5      61.0    0.102   278   235 47.0%     1  0.2%

The issue's goal, ours per candidate <= MinHash LSH at 50,000, is not met: ours is exact and scans the
pool, MinHash is approximate and sublinear. Per candidate at 50,000 ours batch is 16-20x slower than
MinHash and ours stream 28-34x; at 500,000 batch is 88-380x and stream 330x or more.

Where ours spends it (cProfile at 50,000): the length window t/(2-t)*|c| .. (2-t)/t*|c| keeps 92% of the
pool, because instruction lengths cluster (5-20 tokens), so each candidate is scored against ~46,000
texts. In batch, rapidfuzz `cdist` (about 38 ns a pair) and `rouge_f` (the float64 F over the whole
chunk x window matrix) take about half each. In stream, all of it is `cdist` with one query: 5 ms at
50,000, 149 ms at 500,000; a one-query call costs 4.5x a query's share of a 64-query call (3.0 ms against
0.6 ms over 50,000 strings, measured apart), as the batch call passes the pool to C++ once for 64
queries and scores them together.

What MinHash buys in speed it pays in decisions. Exact ROUGE-L drops 420 of the 500 candidates at 50,000:
171 are the one-word edits, 249 are instructions on the same template as a pool instruction with other
topic words (8 templates, so this pool is template-heavy; ROUGE-L counts the shared template words in
order). MinHash (words) keeps 75 of those: 59 have a word-set Jaccard below 0.7 to their closest pool
text (the new topic words dilute the set), and 16 are LSH misses, pairs at Jaccard 0.75-0.83 whose
signatures share no band (14 bands of 9 rows find a pair at Jaccard 0.75 with probability 0.66). Its 12
false drops are LSH false positives: the query returns a text whose Jaccard is only 0.44-0.58 (ROUGE-L
0.55-0.70), and distilabel's step does not check the estimate. Character 5-grams dilute far more (47-51%
false keeps). Reaching the goal exactly would need a sublinear candidate generator with an exact bound,
e.g. prefix filtering on rare tokens (F >= t needs LCS >= t(|c|+|p|)/2 shared tokens, so a pair that can
reach t shares one of the candidate's rarest tokens), not a tuning of the present scan.
"""

from __future__ import annotations

import argparse
import random
import re
import time
from functools import partial
from multiprocessing import Pool

from rouge_score import rouge_scorer

from sdk.curation.diversity import DiversityFilter, filter_candidates
from sdk.rouge import tokenize

VERBS = "explain compare describe summarise calculate classify draft list outline evaluate assess estimate contrast define justify".split()
FRAMES = [
    "{v} {t} for a {a}.",
    "{v} how {t} affects {t2} in practice.",
    "Please {v} {t} and give one worked example.",
    "{v} the key differences between {t} and {t2}.",
    "In two paragraphs, {v} {t} for a {a} who is new to the field.",
    "What should a {a} know about {t}? {v} it briefly.",
    "Why does {t} matter when {t2} changes?",
    "Give three reasons {t} is often confused with {t2}.",
]
SYLLABLES = "ka lo mi ne ru sa ti vo ze bra cle dro fen gal hor ist jun kel mor nal pel qua ros sut tem ung vor wex yal zor".split()


def make_vocabulary(rng: random.Random, size: int = 6000) -> list[str]:
    """Pseudo-words of 2-4 syllables: enough distinct terms that random instructions rarely collide."""
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def synthetic_instructions(
    n: int, rng: random.Random, vocab: list[str], near_copy_rate: float = 0.0, base: list[str] | None = None
) -> list[str]:
    """Instruction-like sentences: templates filled with 1-3 word topics; optionally light edits of `base`."""
    out = []
    for _ in range(n):
        if base and rng.random() < near_copy_rate:  # a light edit of an existing instruction
            words = rng.choice(base).split()
            words[rng.randrange(len(words))] = rng.choice(vocab)
            out.append(" ".join(words))
            continue
        topic = lambda: " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 3)))  # noqa: E731
        text = rng.choice(FRAMES).format(v=rng.choice(VERBS), t=topic(), t2=topic(), a=rng.choice(vocab))
        out.append(
            text[0].upper() + text[1:] + (f" Use {rng.randint(2, 9)} bullet points." if rng.random() < 0.3 else "")
        )
    return out


_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def baseline(pool: list[str], candidates: list[str], threshold: float, processes: int) -> tuple[list[bool], float]:
    """Alpaca/Lion: tokenise once, then score each candidate against all references with a process Pool."""
    tokens = [_SCORER._tokenizer.tokenize(t) for t in pool]
    decisions = []
    start = time.perf_counter()
    with Pool(processes) as p:
        for cand in candidates:
            cand_tokens = _SCORER._tokenizer.tokenize(cand)
            scores = p.map(
                partial(rouge_scorer._score_lcs, cand_tokens), tokens, chunksize=max(1, len(tokens) // (processes * 4))
            )
            keep = max((s.fmeasure for s in scores), default=0.0) < threshold
            decisions.append(keep)
            if keep:
                tokens.append(cand_tokens)
    return decisions, time.perf_counter() - start


def ours(pool: list[str], candidates: list[str], threshold: float) -> tuple[list[bool], float]:
    start = time.perf_counter()
    decisions = filter_candidates(pool, candidates, rouge_threshold=threshold, cosine_threshold=None)
    return [d.kept for d in decisions], time.perf_counter() - start


# --- part 2: MinHash LSH ----------------------------------------------------------------------------

NUM_PERM = 128
MINHASH_SEED = 1  # distilabel's default
_WORD = re.compile(r"\w+|[^\w\s]")


def shingles(text: str, kind: str) -> set[bytes]:
    """A text's shingle set: "words" (word and punctuation tokens) or "char5" (character 5-grams)."""
    if kind == "words":
        return {w.encode() for w in _WORD.findall(text)}
    return {text[i : i + 5].encode() for i in range(max(1, len(text) - 4))}


def minhashes(texts: list[str], kind: str) -> list:
    from datasketch import MinHash

    return MinHash.bulk([shingles(t, kind) for t in texts], num_perm=NUM_PERM, seed=MINHASH_SEED)


def minhash_filter(
    pool: list[str], candidates: list[str], kind: str, threshold: float
) -> tuple[list[bool], float, float]:
    """distilabel's MinHashDedup over pool + candidates; returns (candidate keep decisions, setup s, candidates s)."""
    from datasketch import MinHashLSH

    start = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    batch = 10_000  # bounded memory: MinHash objects of one batch at a time
    with lsh.insertion_session() as session:
        for lo in range(0, len(pool), batch):
            for i, m in enumerate(minhashes(pool[lo : lo + batch], kind), lo):
                session.insert(f"pool:{i}", m, check_duplication=False)
    setup = time.perf_counter() - start

    start = time.perf_counter()
    decisions = []
    for i, m in enumerate(minhashes(candidates, kind)):
        keep = not lsh.query(m)
        if keep:
            lsh.insert(f"cand:{i}", m)
        decisions.append(keep)
    return decisions, setup, time.perf_counter() - start


def ours_timed(pool: list[str], candidates: list[str], threshold: float) -> dict:
    """Our filter's decisions and times: pool indexing, batch (filter_candidates) and stream (check)."""
    tokenize.cache_clear()  # every timing starts from cold token caches, as a fresh process would
    start = time.perf_counter()
    filter_candidates(pool, [], rouge_threshold=threshold, cosine_threshold=None)
    setup = time.perf_counter() - start

    tokenize.cache_clear()
    start = time.perf_counter()
    batch = [d.kept for d in filter_candidates(pool, candidates, rouge_threshold=threshold, cosine_threshold=None)]
    batch_s = time.perf_counter() - start - setup

    tokenize.cache_clear()
    filt = DiversityFilter(pool, rouge_threshold=threshold, cosine_threshold=None)
    start = time.perf_counter()
    stream = [filt.check(c, label=f"cand:{i}").kept for i, c in enumerate(candidates)]
    stream_s = time.perf_counter() - start
    if stream != batch:
        raise SystemExit("DiversityFilter.check and filter_candidates disagree: this is a bug")
    return {"decisions": batch, "setup": setup, "batch": batch_s, "stream": stream_s}


def compare_minhash(sizes: list[int], n_candidates: int, threshold: float, seed: int) -> None:
    """Part 2: per pool size, per-candidate time of ours and MinHash LSH, and MinHash's disagreements."""
    print(
        f"{'pool':>7} {'cands':>6} {'method':<14} {'setup s':>8} {'ms/cand':>8} {'kept':>5}"
        f" {'false keep':>11} {'false drop':>11}"
    )
    for size in sizes:
        rng = random.Random(seed + size)
        vocab = make_vocabulary(rng)
        pool = synthetic_instructions(size, rng, vocab)
        candidates = synthetic_instructions(n_candidates, rng, vocab, near_copy_rate=0.3, base=pool)
        exact = ours_timed(pool, candidates, threshold)
        kept = exact["decisions"]
        per = {k: exact[k] / n_candidates * 1000 for k in ("batch", "stream")}
        for name in ("batch", "stream"):
            setup = f"{exact['setup']:>8.1f}"
            print(
                f"{size:>7} {n_candidates:>6} {'ours ' + name:<14} {setup} {per[name]:>8.3f} {sum(kept):>5} {'-':>11} {'-':>11}"
            )
        for kind in ("words", "char5"):
            mh, setup, seconds = minhash_filter(pool, candidates, kind, threshold)
            false_keep = sum(m and not e for m, e in zip(mh, kept))
            false_drop = sum(e and not m for m, e in zip(mh, kept))
            print(
                f"{size:>7} {n_candidates:>6} {'minhash ' + kind:<14} {setup:>8.1f} {seconds / n_candidates * 1000:>8.3f}"
                f" {sum(mh):>5} {false_keep:>5} {false_keep / n_candidates:>5.1%} {false_drop:>5} {false_drop / n_candidates:>5.1%}",
                flush=True,
            )


def compare_baseline(sizes: list[int], n_candidates: int, args: argparse.Namespace) -> None:
    """Part 1: ours against rouge_score over a process Pool, on the same candidates; decisions must agree."""
    print(
        f"{'pool':>7} {'cands':>6} {'checked':>8} {'agree':>7} {'kept':>5} {'baseline ms/cand':>17} {'ours ms/cand':>13} {'speed-up':>9}"
    )
    for size in sizes:
        rng = random.Random(args.seed + size)
        vocab = make_vocabulary(rng)
        pool = synthetic_instructions(size, rng, vocab)
        candidates = synthetic_instructions(n_candidates, rng, vocab, near_copy_rate=0.3, base=pool)
        sample = args.baseline_sample or (n_candidates if size <= 5000 else 40)
        sample = min(sample, n_candidates)

        mine, t_ours = ours(pool, candidates, args.threshold)
        # The baseline's decisions depend on which earlier candidates were kept; deciding only a prefix
        # of the candidates keeps the comparison exact.
        theirs, t_base = baseline(pool, candidates[:sample], args.threshold, args.processes)
        agree = sum(a == b for a, b in zip(mine[:sample], theirs)) / sample
        per_ours = t_ours / len(candidates) * 1000
        per_base = t_base / sample * 1000
        print(
            f"{size:>7} {len(candidates):>6} {sample:>8} {agree:>7.1%} {sum(mine):>5} {per_base:>17.2f} {per_ours:>13.3f} {per_base / per_ours:>8.0f}x"
        )
        if agree < 1.0:
            raise SystemExit("decisions differ from rouge_score's: this is a bug")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["baseline", "minhash", "both"], default="both")
    parser.add_argument("--pools", type=int, nargs="+", default=[5000, 50000], help="pool sizes of part 1")
    parser.add_argument(
        "--minhash-pools", type=int, nargs="+", default=[50000, 500000], help="pool sizes of part 2 (MinHash LSH)"
    )
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument(
        "--baseline-sample",
        type=int,
        default=None,
        help="candidates the baseline decides (default: all at 5,000, 40 at 50,000)",
    )
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.part in ("baseline", "both"):
        compare_baseline(args.pools, args.candidates, args)
    if args.part in ("minhash", "both"):
        if args.part == "both":
            print()
        compare_minhash(args.minhash_pools, args.candidates, args.threshold, args.seed)


if __name__ == "__main__":
    main()
