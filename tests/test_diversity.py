"""The diversity filter's ROUGE-L decisions equal rouge_score's (Alpaca/Lion style), on random and
adversarial inputs; the cosine test drops paraphrases through FAISS."""

import random

import pytest
from rouge_score import rouge_scorer

from sdk.curation.diversity import filter_candidates

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
VOCAB = "explain compare the a of dose insulin heart contract tort bond yield rate acid base force energy why how what draft classify advise patient court".split()


def reference_decisions(pool, candidates, threshold):
    """The baseline: score each candidate against the whole pool and earlier kept candidates with rouge_score."""
    refs, decisions = list(pool), []
    for c in candidates:
        best = max((SCORER.score(r, c)["rougeL"].fmeasure for r in refs), default=0.0)
        keep = best < threshold
        decisions.append(keep)
        if keep:
            refs.append(c)
    return decisions


def random_sentence(rng, lo=1, hi=20):
    return " ".join(rng.choice(VOCAB) for _ in range(rng.randint(lo, hi)))


@pytest.mark.parametrize("threshold", [0.7, 0.5, 0.9])
def test_random_sets_match_rouge_score(threshold):
    rng = random.Random(threshold)
    pool = [random_sentence(rng) for _ in range(300)]
    candidates = [random_sentence(rng) for _ in range(150)]
    # near-copies of pool items, so that both decisions occur often
    candidates += [" ".join(p.split()[: max(1, len(p.split()) - rng.randint(0, 3))]) for p in rng.sample(pool, 60)]
    ours = [d.kept for d in filter_candidates(pool, candidates, rouge_threshold=threshold, cosine_threshold=None)]
    expected = reference_decisions(pool, candidates, threshold)
    assert ours == expected
    assert 0 < sum(ours) < len(ours)


ADVERSARIAL = [
    "the the the the the the the",
    "the the the the the the the the the the the the the the",
    "!!! ??? ... ,,,",
    "",
    "   ",
    "Explain the dose of insulin " * 40,
    "Explain the dose of insulin " * 39 + "please",
    "Erklären Sie die Dosis von Insulin für Kinder",
    "Expliquez la dose d'insuline pour les enfants",
    "解释 胰岛素 剂量",
    "Explain the dose of insulin for children",
    "explain THE dose, of insulin -- for children!!",
    "café naïve résumé coöperate",
    "cafe naive resume cooperate",
    "a b c d e f g h i j",
    "j i h g f e d c b a",
    "1 2 3 4 5 6 7",
    "1 2 3 4 5 6 8",
    "x" * 500,
]


def test_adversarial_sets_match_rouge_score():
    pool = ADVERSARIAL[::2]
    candidates = ADVERSARIAL[1::2] + ADVERSARIAL
    for threshold in (0.7, 0.3, 1.0):
        ours = [d.kept for d in filter_candidates(pool, candidates, rouge_threshold=threshold, cosine_threshold=None)]
        assert ours == reference_decisions(pool, candidates, threshold), threshold


def test_exact_threshold_boundary():
    # 7 shared tokens, lengths 10 and 10: F = 0.7 exactly, which must be dropped at threshold 0.7
    pool = ["a b c d e f g h i j"]
    cand = ["a b c d e f g x y z"]
    assert SCORER.score(pool[0], cand[0])["rougeL"].fmeasure >= 0.7
    assert [d.kept for d in filter_candidates(pool, cand, cosine_threshold=None)] == [False]


def test_reasons_and_matches_are_reported():
    decisions = filter_candidates(
        ["explain the dose of insulin for children"],
        ["explain the dose of insulin for kids", "a new question about bonds"],
        cosine_threshold=None,
    )
    assert decisions[0].kept is False and decisions[0].reason == "rouge" and decisions[0].match == "pool:0"
    assert decisions[1].kept is True and decisions[1].reason is None


def test_cosine_drops_paraphrases_with_real_embeddings():
    from sdk.knowledge.embeddings import load_embedder

    embed = load_embedder()
    pool = ["How does insulin lower blood glucose?"]
    candidates = [
        "In what way does insulin reduce blood sugar levels?",
        "What is the statute of limitations for breach of contract in England?",
    ]
    decisions = filter_candidates(pool, candidates, cosine_threshold=0.8, embedder=embed)
    assert decisions[0].kept is False and decisions[0].reason == "cosine" and decisions[0].max_cosine >= 0.8
    assert decisions[1].kept is True and decisions[1].max_cosine < 0.5


def test_cli_filter_keeps_lines_unchanged_in_order(tmp_path):
    import json
    import subprocess

    from tests.conftest import distill_cmd

    pool = tmp_path / "pool.jsonl"
    cands = tmp_path / "cands.jsonl"
    pool.write_text(json.dumps({"instruction": "Explain how insulin lowers blood glucose."}) + "\n")
    lines = [
        json.dumps({"id": 1, "instruction": "Explain how insulin lowers the blood glucose.", "extra": "x"}),
        json.dumps({"id": 2, "instruction": "Draft a letter terminating a commercial lease early."}),
        json.dumps({"id": 3, "instruction": "Draft a letter terminating a commercial lease early, politely."}),
        json.dumps({"instruction": "Calculate the future value of 1,000 dollars at 5% over 10 years.", "id": 4}),
    ]
    cands.write_text("\n".join(lines) + "\n")
    out, rejected = tmp_path / "kept.jsonl", tmp_path / "rejected.jsonl"
    proc = subprocess.run(
        distill_cmd()
        + [
            "filter",
            "--pool",
            str(pool),
            "--candidates",
            str(cands),
            "--out",
            str(out),
            "--rejected",
            str(rejected),
            "--cosine-threshold",
            "1.0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().splitlines() == [lines[1], lines[3]]
    rej = [json.loads(x) for x in rejected.read_text().splitlines()]
    assert [r["id"] for r in rej] == [1, 3]
    assert rej[0]["rejected"]["reason"] == "rouge" and rej[0]["rejected"]["closest"] == "pool:0"
    assert rej[1]["rejected"]["closest"] == "cand:1"


def test_cli_filter_bad_line_names_file_and_line(tmp_path):
    import subprocess

    from tests.conftest import distill_cmd

    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"instruction": "ok"}\n{"text": "no instruction field"}\n')
    proc = subprocess.run(
        distill_cmd() + ["filter", "--pool", str(pool), "--candidates", str(pool), "--out", str(tmp_path / "o.jsonl")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "pool.jsonl:2" in proc.stderr and "Traceback" not in proc.stderr


def test_streaming_check_agrees_with_batched_filter():
    from sdk.curation.diversity import DiversityFilter

    rng = random.Random(7)
    pool = [random_sentence(rng) for _ in range(200)]
    candidates = [random_sentence(rng) for _ in range(80)] + [p + " why" for p in rng.sample(pool, 30)]
    batched = [d.kept for d in filter_candidates(pool, candidates, cosine_threshold=None)]
    stream = DiversityFilter(pool, cosine_threshold=None)
    assert [stream.check(c).kept for c in candidates] == batched == reference_decisions(pool, candidates, 0.7)


# --- exact candidate pruning (prefix filter): decisions, maxima and matches equal brute force ---------------

WORDS = "alpha beta gamma delta eps zeta eta theta iota kappa".split()


def near_duplicates(rng, base, n):
    """Edits of `base` sentences: one-word swaps, deletions, insertions, reorders, repeats, case and punctuation."""
    out = []
    for _ in range(n):
        words = rng.choice(base).split() or ["alpha"]
        kind = rng.randrange(8)
        if kind == 0:
            words[rng.randrange(len(words))] = rng.choice(WORDS)
        elif kind == 1 and len(words) > 1:
            del words[rng.randrange(len(words))]
        elif kind == 2:
            words.insert(rng.randrange(len(words) + 1), rng.choice(WORDS))
        elif kind == 3 and len(words) > 1:
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
        elif kind == 4:
            words = words[::-1]
        elif kind == 5:
            k = rng.randrange(len(words))
            words[k:k] = [words[k]] * rng.randint(1, 3)
        elif kind == 6:
            words = [w.upper() + "," for w in words]
        out.append(" ".join(words))
    return out


def random_set(seed, n_pool=120, n_cand=90):
    rng = random.Random(seed)
    pool = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(n_pool)]
    pool += ["", "!!! ...", "alpha alpha alpha alpha", "alpha"]
    candidates = near_duplicates(rng, pool, n_cand // 2)
    candidates += [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 12))) for _ in range(n_cand // 2)]
    candidates += ["", "?", "alpha", "alpha alpha alpha alpha", pool[0], pool[0]]
    rng.shuffle(candidates)
    return pool, candidates


def score_matrix(pool, candidates):
    """rouge_score's F of every candidate against every pool text and every earlier candidate."""
    tok = [SCORER._tokenizer.tokenize(t) for t in list(pool) + list(candidates)]
    return [
        [rouge_scorer._score_lcs(tok[r], tok[len(pool) + c]).fmeasure for r in range(len(pool) + c)]
        for c in range(len(candidates))
    ], [len(x) for x in tok]


def brute_force(pool, candidates, threshold, matrix, lengths, stream):
    """(kept, max ROUGE-L, match) of each candidate, deciding in order as the filter does. A dropped
    candidate's match is its highest-F reference, ties going to the shorter, then the earlier one; in batch
    mode (filter_candidates) the pool is looked at first, streaming looks at pool and kept candidates as one."""
    n, kept, out = len(pool), [], []
    for c, row in enumerate(matrix):
        pool_refs = list(range(n))
        refs = pool_refs + kept if stream else (pool_refs if max(row[:n], default=0.0) >= threshold else kept)
        best = max((row[r] for r in refs), default=0.0)
        if best >= threshold:
            r = min((r for r in refs if row[r] == best), key=lambda r: (lengths[r], r))
            out.append((False, best, f"pool:{r}" if r < n else f"cand:{r - n}"))
        else:
            out.append((True, None, None))
            kept.append(n + c)
    return out


def ours(decisions):
    return [(d.kept, None if d.kept else d.max_rouge, None if d.kept else d.match) for d in decisions]


@pytest.mark.parametrize("seed", [1, 2])
def test_pruned_filter_equals_brute_force_at_many_thresholds(seed):
    from sdk.curation.diversity import DiversityFilter

    pool, candidates = random_set(seed)
    matrix, lengths = score_matrix(pool, candidates)
    for threshold in (0.05, 0.3, 0.5, 2 / 3, 0.7, 0.75, 0.9, 0.999, 1.0):
        batch = filter_candidates(pool, candidates, rouge_threshold=threshold, cosine_threshold=None)
        assert ours(batch) == brute_force(pool, candidates, threshold, matrix, lengths, False), threshold
        stream = DiversityFilter(pool, rouge_threshold=threshold, cosine_threshold=None)
        checked = [stream.check(c, label=f"cand:{i}") for i, c in enumerate(candidates)]
        assert ours(checked) == brute_force(pool, candidates, threshold, matrix, lengths, True), threshold
        assert [d.kept for d in batch] == [d.kept for d in checked]
        assert 0 < sum(d.kept for d in batch) < len(batch) or threshold in (0.05, 1.0)


def test_thresholds_at_achieved_scores_are_not_pruned():
    """A threshold equal to a pair's float F (rouge_score's), so that pair sits exactly on the boundary."""
    from sdk.curation.diversity import DiversityFilter

    pool, candidates = random_set(3, 80, 60)
    matrix, lengths = score_matrix(pool, candidates)
    scores = sorted({f for row in matrix for f in row[: len(pool)] if f > 0})
    for threshold in random.Random(3).sample(scores, 12):
        batch = filter_candidates(pool, candidates, rouge_threshold=threshold, cosine_threshold=None)
        assert ours(batch) == brute_force(pool, candidates, threshold, matrix, lengths, False), threshold
        stream = DiversityFilter(pool, rouge_threshold=threshold, cosine_threshold=None)
        checked = [stream.check(c, label=f"cand:{i}") for i, c in enumerate(candidates)]
        assert ours(checked) == brute_force(pool, candidates, threshold, matrix, lengths, True), threshold


def test_prefix_filter_never_prunes_a_match():
    """Every pool text whose ROUGE-L F reaches the threshold survives the prefix filter."""
    from sdk.curation.diversity import RougeIndex

    pool, candidates = random_set(4, 150, 80)
    matrix, _ = score_matrix(pool, candidates)
    for threshold in (1e-12, 0.01, 0.2, 0.5, 0.6, 0.7, 0.8, 0.95, 1.0):
        index = RougeIndex(threshold)
        index.extend(pool, [f"pool:{i}" for i in range(len(pool))])
        for c, row in zip(candidates, matrix):
            found = set(index.survivors(index.codec.encode(c)).tolist())
            assert {r for r in range(len(pool)) if row[r] >= threshold} <= found, (threshold, c)


def test_tiny_threshold_drops_anything_sharing_a_token():
    pool = ["alpha beta", "", "gamma"]
    candidates = ["beta", "delta", "", "!!", "epsilon delta", "epsilon", "zeta GAMMA"]
    decisions = filter_candidates(pool, candidates, rouge_threshold=1e-12, cosine_threshold=None)
    assert [d.kept for d in decisions] == [False, True, True, True, False, True, False]
    assert [d.match for d in decisions if not d.kept] == ["pool:0", "cand:1", "pool:2"]


def test_empty_pool_and_empty_candidates():
    from sdk.curation.diversity import DiversityFilter

    assert filter_candidates([], [], cosine_threshold=None) == []
    decisions = filter_candidates([], ["a b c", "a b c", "", ""], cosine_threshold=None)
    assert [(d.kept, d.match) for d in decisions] == [(True, None), (False, "cand:0"), (True, None), (True, None)]
    stream = DiversityFilter([""], cosine_threshold=None)
    assert [stream.check(t).kept for t in ("", "x y", "x y", "...")] == [True, True, False, True]


def test_streaming_index_merges_many_added_texts():
    """Kept candidates go to a side index that is merged into the main one once large; decisions stay exact."""
    from sdk.curation.diversity import DiversityFilter

    rng = random.Random(5)
    pool = [random_sentence(rng, 3, 9) for _ in range(40)]
    candidates = [random_sentence(rng, 3, 9) for _ in range(700)]
    stream = DiversityFilter(pool, rouge_threshold=0.9, cosine_threshold=None)
    checked = [stream.check(c, label=f"cand:{i}").kept for i, c in enumerate(candidates)]
    assert stream.rouge._size > 1024  # the side table of added texts was merged into the main one
    assert checked == [d.kept for d in filter_candidates(pool, candidates, 0.9, None)]
    assert checked == reference_decisions(pool, candidates, 0.9)


def test_property_matches_rouge_score():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from sdk.curation.diversity import DiversityFilter

    text = st.lists(st.sampled_from(["a", "b", "c", "d", "e", "A,", "!", "b b"]), max_size=9).map(" ".join)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        st.lists(text, max_size=8),
        st.lists(text, max_size=8),
        st.sampled_from([1e-9, 0.1, 0.3, 0.5, 0.6, 2 / 3, 0.7, 0.8, 0.9, 1.0]),
    )
    def check(pool, candidates, threshold):
        matrix, lengths = score_matrix(pool, candidates)
        batch = filter_candidates(pool, candidates, rouge_threshold=threshold, cosine_threshold=None)
        assert ours(batch) == brute_force(pool, candidates, threshold, matrix, lengths, False)
        stream = DiversityFilter(pool, rouge_threshold=threshold, cosine_threshold=None)
        checked = [stream.check(c, label=f"cand:{i}") for i, c in enumerate(candidates)]
        assert ours(checked) == brute_force(pool, candidates, threshold, matrix, lengths, True)

    check()


def test_one_pass_tokeniser_equals_rouge_score():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from rouge_score import tokenizers

    from sdk.curation.diversity import _tokenize

    theirs = tokenizers.DefaultTokenizer(use_stemmer=False).tokenize
    for text in ADVERSARIAL + ["İstanbul ǅemal ﬁnd Ⅻ ２０２４ x\u00a0y\u2028z\tq\nr", "ABC-def_ghi", "\x00a\x1fb"]:
        assert _tokenize(text) == theirs(text), text

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.text(max_size=60))
    def check(text):
        assert _tokenize(text) == theirs(text)

    check()
