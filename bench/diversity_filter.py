"""Benchmark: the diversity filter's ROUGE-L test against the Alpaca/Lion baseline, in one process.

Baseline: rouge_score's `_score_lcs` of each candidate against every pool instruction (and every candidate
kept before it), spread over a multiprocessing Pool, as self-instruct/Alpaca/Lion do. Ours: sdk's
DiversityFilter (token-code strings + rapidfuzz LCSseq + length bound + threaded cdist).

    python bench/diversity_filter.py                       # pools 5,000 and 50,000, 500 candidates
    python bench/diversity_filter.py --baseline-sample 500 # run the baseline on every candidate (slow)

The baseline is run on the first --baseline-sample candidates at each pool size (all 500 at 5,000 by
default); agreement is reported over exactly the candidates both methods decided.
"""

from __future__ import annotations

import argparse
import random
import time
from functools import partial
from multiprocessing import Pool

from rouge_score import rouge_scorer

from sdk.curation.diversity import filter_candidates

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", type=int, nargs="+", default=[5000, 50000])
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

    print(
        f"{'pool':>7} {'cands':>6} {'checked':>8} {'agree':>7} {'kept':>5} {'baseline ms/cand':>17} {'ours ms/cand':>13} {'speed-up':>9}"
    )
    for size in args.pools:
        rng = random.Random(args.seed + size)
        vocab = make_vocabulary(rng)
        pool = synthetic_instructions(size, rng, vocab)
        candidates = synthetic_instructions(args.candidates, rng, vocab, near_copy_rate=0.3, base=pool)
        sample = args.baseline_sample or (args.candidates if size <= 5000 else 40)
        sample = min(sample, args.candidates)

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


if __name__ == "__main__":
    main()
