import random

import pytest
from rouge_score import rouge_scorer

from sdk.rouge import max_rouge_l, rouge_l

WORDS = "the heart pumps blood through arteries veins and capillaries running runs ran dose mg insulin glucose".split()


@pytest.mark.parametrize("stem", [False, True])
def test_matches_rouge_score_exactly(stem):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem)
    rng = random.Random(0)
    for _ in range(300):
        a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 25)))
        b = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 25)))
        ref = scorer.score(a, b)["rougeL"]
        ours = rouge_l(a, b, use_stemmer=stem)
        assert (ours.precision, ours.recall, ours.fmeasure) == (ref.precision, ref.recall, ref.fmeasure)


def test_identical_and_disjoint():
    assert rouge_l("Insulin lowers glucose.", "insulin lowers glucose").fmeasure == 1.0
    assert rouge_l("insulin", "arteries").fmeasure == 0.0
    assert rouge_l("", "anything").fmeasure == 0.0


def test_max_over_pool():
    assert max_rouge_l("the heart pumps blood", ["veins", "the heart pumps blood"]) == 1.0
    assert max_rouge_l("x", []) == 0.0
