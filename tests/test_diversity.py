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
