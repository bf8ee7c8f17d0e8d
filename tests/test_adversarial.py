"""The adversarial loop's parts: verdict parsing, the LLM and likelihood referees, the split, generation."""

import dataclasses
import json
import re

import pytest
from rouge_score import rouge_scorer

from sdk.adversarial.generation import (
    GenerationPlan,
    Parents,
    balanced_counts,
    extract_instruction,
    generate_instructions,
)
from sdk.adversarial.referee import (
    LLMReferee,
    Pair,
    agreement,
    distinct_trigram_ratio,
    gap_stats,
    likelihood_score,
    loglik_to_score,
    parse_verdict,
    relative_score,
    split_hard_easy,
)
from sdk.config import GenerationSettings, ModelSpec, ModelsSettings
from sdk.models import load_chat_model
from sdk.models.base import ChatBackend
from sdk.packs import resolve_pack
from sdk.store import Journal
from tests.conftest import TINY_PACKS
from tests.openai_server import FakeOpenAIServer


@pytest.fixture(scope="module")
def pack():
    return resolve_pack("tiny", [TINY_PACKS])


# ---------------------------------------------------------------------------------------------
# parsing


@pytest.mark.parametrize(
    "reply, expected",
    [
        ('{"score_a": 8, "score_b": 3, "reason": "B gives no dose"}', (8.0, 3.0, "B gives no dose")),
        ('Sure.\n```json\n{"score_a": "6", "score_b": 9.5}\n```', (6.0, 9.5, "")),
        ("Score A: 7, Score B: 4\nReason: A names the test.", (7.0, 4.0, "A names the test.")),
        ("**Answer A score**: 7/10\n**Answer B score**: 5/10", (7.0, 5.0, "")),
        ("score_a = 2; score_b = 10", (2.0, 10.0, "")),
    ],
)
def test_parse_verdict_reads_json_and_labelled_scores(reply, expected):
    assert parse_verdict(reply) == expected


@pytest.mark.parametrize(
    "reply",
    [
        "Both answers are fine.",
        "Score A: 11, Score B: 4",
        '{"score_a": 0, "score_b": 5}',
        "Answer A is better.",
        "",
        None,
    ],
)
def test_parse_verdict_refuses_garbage_and_out_of_range(reply):
    assert parse_verdict(reply) is None


def test_loglik_mapping_is_one_point_per_nat_clipped():
    assert loglik_to_score(0.0) == 10.0
    assert loglik_to_score(-1.5) == 8.5
    assert loglik_to_score(-40.0) == 1.0
    assert loglik_to_score(None) is None


def test_likelihood_score_discounts_a_looping_answer():
    prose = "Hypertension is a persistently raised blood pressure, usually defined as 140/90 mmHg or more on repeated readings."
    loop = "The patient can be treated by any " + "any " * 30
    assert distinct_trigram_ratio(prose) == 1.0
    assert distinct_trigram_ratio(loop) == pytest.approx(
        7 / 35
    )  # 37 words, 35 trigrams: 6 lead into the loop, then 'any any any' repeats
    assert distinct_trigram_ratio("Yes, twice daily.") == 1.0  # too short to judge
    # the same per-token likelihood: prose keeps its score, the loop falls towards the minimum
    assert likelihood_score(-1.5, prose) == 8.5
    assert likelihood_score(-1.5, loop) == pytest.approx(1.0 + 7.5 * distinct_trigram_ratio(loop))
    # a loop at near-certain likelihood still scores below honest prose the teacher finds less likely
    assert likelihood_score(-0.2, loop) < likelihood_score(-3.0, prose)
    assert likelihood_score(None, prose) is None
    assert likelihood_score(-0.1, "\n\n  ...  \n") == 1.0  # no words: no answer, however likely


# ---------------------------------------------------------------------------------------------
# the LLM referee against a real local endpoint


def _endpoint_referee(pack, server) -> LLMReferee:
    # no response cache: these tests count what reaches the server, and the journal alone must prevent repeats
    spec = ModelSpec(
        provider="openai",
        base_url=server.base_url,
        model="judge",
        max_retries=0,
        cache=False,
        generation=GenerationSettings(batch_size=4),
    )
    return LLMReferee(pack, load_chat_model(spec, ModelsSettings()), "judge")


def _answers_in(prompt: str) -> tuple[str, str]:
    a = re.search(r"ANSWER A:\n(.*?)\n\nANSWER B:", prompt, re.S).group(1)
    b = re.search(r"ANSWER B:\n(.*?)\n\nReply with", prompt, re.S).group(1)
    return a, b


def test_garbage_verdict_is_retried_once_then_recorded_and_excluded(pack):
    with FakeOpenAIServer(reply=lambda messages: "I like both answers a lot!") as server:
        referee = _endpoint_referee(pack, server)
        rows = referee.score([Pair("q1", "What is 2 + 2?", "4, because 2 + 2 = 4.", "5")])
        asked = len(server.requests)
    assert asked == 4  # two orders, each retried once with a format reminder
    row = rows[0]
    assert (
        row["status"] == "unparsed"
        and row["teacher_score"] is None
        and row["student_score"] is None
        and row["gap"] is None
    )
    assert [v["raw"] for v in row["verdicts"]] == ["I like both answers a lot!"] * 2 and all(
        v["retried"] for v in row["verdicts"]
    )
    assert split_hard_easy(rows, tau=1.0) and row["hard"] is None  # neither hard nor easy
    stats = gap_stats(rows)
    assert stats["unparsed"] == 1 and stats["hard"] == stats["easy"] == 0 and stats["gap_mean"] is None


def test_retry_reads_a_verdict_given_after_the_format_reminder(pack):
    def reply(messages):
        if "could not be read" in messages[-1]["content"]:
            return '{"score_a": 6, "score_b": 6, "reason": "same"}'
        return "hmm"

    with FakeOpenAIServer(reply=reply) as server:
        rows = _endpoint_referee(pack, server).score([Pair("q1", "Name a prime.", "2", "3")])
    assert rows[0]["status"] == "ok" and rows[0]["gap"] == 0.0


def test_both_orders_cancel_position_bias(pack):
    """A judge that prefers position A by one point: averaging both orders removes the bias exactly."""

    def biased(messages):
        a, b = _answers_in(messages[-1]["content"])
        quality = lambda text: 8 if "correct" in text else 3  # noqa: E731
        return json.dumps({"score_a": quality(a) + 1, "score_b": quality(b), "reason": "A first"})

    good, bad = "The correct answer is 4.", "It is 5."
    with FakeOpenAIServer(reply=biased) as server:
        referee = _endpoint_referee(pack, server)
        forward = referee.score([Pair("q", "What is 2 + 2?", good, bad)])[0]
        swapped = referee.score([Pair("q", "What is 2 + 2?", bad, good)])[0]
        prompts = [r["messages"][-1]["content"] for r in server.requests]
    assert forward["teacher_score"] == swapped["student_score"] == 8.5
    assert forward["student_score"] == swapped["teacher_score"] == 3.5
    assert forward["gap"] == -swapped["gap"] == 5.0
    assert {v["order"] for v in forward["verdicts"]} == {"teacher=A", "teacher=B"}
    assert any(_answers_in(p) == (good, bad) for p in prompts) and any(_answers_in(p) == (bad, good) for p in prompts)


def test_referee_prompt_shows_rubric_weights_and_findings(pack):
    seen = []

    def reply(messages):
        seen.append(messages[-1]["content"])
        return "Score A: 5, Score B: 5"

    with FakeOpenAIServer(reply=reply) as server:
        rows = _endpoint_referee(pack, server).score(
            [Pair("q", "How many days in a week?", "A week has 7 days.", "Several days.")]
        )
    for criterion in pack.spec.referee.criteria:
        assert f"{criterion.name} (weight {criterion.weight})" in seen[0]
    # the tiny pack's verifier flags an answer without a number: it is shown against that answer only
    assert rows[0]["findings"]["student"] and not rows[0]["findings"]["teacher"]
    assert any("answer B [" in p for p in seen) and any("answer A [" in p for p in seen)


# ---------------------------------------------------------------------------------------------
# the split


def _scored(gaps, findings=None):
    findings = findings or {}
    return [
        {
            "id": f"r{i}",
            "status": "ok",
            "gap": g,
            "teacher_score": 9.0,
            "student_score": 9.0 - g,
            "findings": {"teacher": [], "student": findings.get(i, [])},
        }
        for i, g in enumerate(gaps)
    ]


def test_split_by_tau_and_severe_findings():
    rows = _scored([2.0, 1.0, 0.5, 0.0], findings={3: [{"severity": "error", "label": "x", "message": ""}]})
    rows.append({"id": "bad", "status": "unparsed", "gap": None, "findings": {"teacher": [], "student": []}})
    rule = split_hard_easy(rows, tau=1.0)
    assert rule.startswith("gap >= tau")
    assert [r["hard"] for r in rows] == [True, True, False, True, None]
    assert rows[3]["hard_because"] == "severe finding" and rows[0]["hard_because"] == "gap"
    assert gap_stats(rows)["hard_ratio"] == 0.75


def test_split_falls_back_to_the_median_when_tau_leaves_one_side_empty():
    rows = _scored([4.0, 3.0, 5.0, 2.5])
    rule = split_hard_easy(rows, tau=1.5)
    assert "median" in rule
    assert [r["hard"] for r in rows] == [True, False, True, False]


def test_relative_score_and_agreement():
    rows = _scored([1.0, 3.0])
    assert relative_score(rows) == round(100 * (8.0 + 6.0) / 18.0, 2)
    split_hard_easy(rows, tau=2.0)
    other = _scored([0.5, 2.5])
    split_hard_easy(other, tau=2.0)
    assert agreement(rows, other) == {"n": 2, "split_agreement": 1.0, "gap_spearman": None}


# ---------------------------------------------------------------------------------------------
# generation


class ScriptedGenerator(ChatBackend):
    """A local backend with canned replies chosen from the prompt; counts every conversation it answers."""

    name = "scripted"

    def __init__(self, reply):
        self.reply = reply
        self.settings = GenerationSettings(batch_size=4)
        self.asked, self.replies = [], []
        self.rounds: list[int] = []  # conversations per generate_journaled call

    def generate_journaled(self, keys, *args, **kwargs):
        self.rounds.append(len(keys))
        return super().generate_journaled(keys, *args, **kwargs)

    def _generate_chunk(self, conversations, settings):
        out = []
        for m in conversations:
            self.asked.append(m)
            out.append(self.reply(m[-1]["content"], len(self.asked)))
        self.replies.extend(out)
        return out


def _rows(prefix, texts):
    return [
        {"id": f"{prefix}{i}", "instruction": t, "provenance": {"document": "doc.md", "chunk_id": f"c{i}"}}
        for i, t in enumerate(texts)
    ]


HARD = _rows(
    "h",
    [
        "Calculate the dose of amoxicillin for a 20 kg child at 25 mg/kg.",
        "Compare type 1 and type 2 diabetes in adults.",
    ],
)
EASY = _rows("e", ["Explain what a fever is.", "Explain why people should wash their hands."])
DISTINCT = [
    "Outline the first-line treatment of high blood pressure during pregnancy.",
    "How should a patient use a spacer with a metered-dose asthma inhaler?",
    "Which dietary changes lower the risk of calcium oxalate kidney stones?",
    "List common migraine triggers and a sensible headache diary for tracking them.",
    "Interpret a raised TSH with a normal free T4 in a tired woman of 40.",
    "Calculate the elemental iron in two 200 mg ferrous sulfate tablets.",
    "Describe how obstructive sleep apnoea is diagnosed with overnight oximetry.",
    "Advise a man with an acute gout flare who already takes allopurinol.",
    "Draft a leaflet for parents on treating head lice with wet combing.",
    "Classify these sunburn cases by severity: redness only, blistering, fever with blistering.",
    "Summarise the warning signs of meningitis in teenagers.",
    "Explain why vitamin B12 deficiency can cause numbness in the feet.",
    "Compare paracetamol and ibuprofen for back pain in older adults.",
    "What does a positive nitrite test on urine dipstick suggest?",
]


def _plan(**kw):
    base = dict(
        n_new=6,
        max_attempts=30,
        hard_share=0.5,
        rouge_threshold=0.7,
        cosine_threshold=None,
        min_words=4,
        max_words=150,
        seed=0,
        iteration=0,
    )
    return GenerationPlan(**{**base, **kw})


def test_generation_keeps_diverse_balanced_instructions_with_parents(pack):
    def reply(prompt, n):
        if n % 3 == 0:
            return "Explain what a fever is."  # a copy of the cache pool: ROUGE-L rejects it
        if n % 5 == 0:
            return "ok"  # too short
        return DISTINCT[n % len(DISTINCT)]

    generator = ScriptedGenerator(reply)
    cache = HARD + EASY
    out = generate_instructions(pack, generator, Parents(HARD, EASY, cache), _plan(generator_name="scripted"))
    assert len(out.kept) == 6 and out.stats["kept"] == 6
    sources = [r["source"] for r in out.kept]
    assert abs(sources.count("hard") - sources.count("easy")) <= 1
    parents = {"hard": {r["id"] for r in HARD}, "easy": {r["id"] for r in EASY}}
    assert all(r["parent_id"] in parents[r["source"]] for r in out.kept)
    assert out.stats["attempts"] == len(generator.asked) <= 30
    assert (
        out.stats["rejected_by_reason"].get("rouge", 0) >= 1 and out.stats["rejected_by_reason"].get("quality", 0) >= 1
    )
    assert out.stats["kept"] + out.stats["rejected"] == out.stats["attempts"]
    # independently: each kept instruction against the cache pool as it stood before it
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    reference = [r["instruction"] for r in cache]
    for row in out.kept:
        assert max(scorer.score(ref, row["instruction"])["rougeL"].fmeasure for ref in reference) < 0.7
        reference.append(row["instruction"])
    hard_prompts = [m[-1]["content"] for m in generator.asked if "HARD" in m[-1]["content"]]
    assert hard_prompts and all(any(h["instruction"] in p for h in HARD) for p in hard_prompts)


def test_generation_rejects_off_domain_replies_with_the_real_embedder(pack):
    """The domain check (MiniLM cosine to the nearest seed) drops a small generator's drift, keeps clinical tasks."""
    from sdk.knowledge.embeddings import load_embedder

    drift = [
        "Do not copy this as your first response, just add an asterisk.",
        "Write a limerick about a lighthouse keeper and his cat.",
    ]

    def reply(prompt, n):
        return drift[n % 2] if n % 3 == 0 else DISTINCT[n % len(DISTINCT)]

    plan = _plan(n_new=6, max_attempts=12, min_domain_similarity=0.25, domain_references=tuple(DISTINCT))
    out = generate_instructions(
        pack,
        ScriptedGenerator(reply),
        Parents(HARD, EASY, HARD + EASY),
        dataclasses.replace(plan, generator_name="scripted", embedder=load_embedder()),
    )
    off = [r for r in out.rejected if r["reason"] == "off_domain"]
    assert off and {r["instruction"] for r in off} <= set(drift)
    assert "to the nearest seed, below 0.25" in off[0]["detail"]
    assert out.kept and not {r["instruction"] for r in out.kept} & set(drift)
    assert out.stats["rejected_by_reason"]["off_domain"] == len(off)


def test_generation_sizes_later_rounds_by_the_share_kept_so_far(pack):
    """Three replies in four are too short: the second round asks for what is lacking divided by that share, so
    the target is met in two rounds, and what a round keeps beyond a side's target is rejected as surplus."""

    generator = ScriptedGenerator(lambda prompt, n: DISTINCT[n // 4] if n % 4 == 0 else "ok")
    out = generate_instructions(
        pack, generator, Parents(HARD, EASY, HARD + EASY), _plan(n_new=6, max_attempts=60, generator_name="scripted")
    )
    assert len(out.kept) == 6 and out.stats["reached_target"]
    assert generator.rounds[0] == 6 and len(generator.rounds) <= 3
    assert generator.rounds[1] >= 4 * 5  # one kept of six: the 5 lacking at a rate floored at 1/8, at least x4
    assert out.stats["kept"] + out.stats["rejected"] == out.stats["attempts"] == sum(generator.rounds)
    surplus = [r for r in out.rejected if r["reason"] == "surplus"]
    assert surplus and all(r["instruction"] in DISTINCT for r in surplus)


def test_the_first_round_is_sized_by_the_previous_iterations_share_kept(pack):
    """An iteration whose predecessor kept one reply in four asks four times its target in its first round,
    and with the same replies meets the target in that one round."""
    from sdk.adversarial.generation import prior_acceptance

    assert prior_acceptance(None) == 1.0 and prior_acceptance({"attempts": 0, "kept": 0}) == 1.0
    previous = {"attempts": 24, "kept": 5, "rejected_by_reason": {"quality": 18, "surplus": 1}}
    assert prior_acceptance(previous) == 0.25  # surplus rows passed every check

    # one reply in four is usable, on both sides (the rounds alternate hard, easy)
    generator = ScriptedGenerator(lambda prompt, n: DISTINCT[n // 8 * 2 + n % 8] if n % 8 < 2 else "ok")
    plan = _plan(n_new=6, max_attempts=60, generator_name="scripted", prior_acceptance=prior_acceptance(previous))
    out = generate_instructions(pack, generator, Parents(HARD, EASY, HARD + EASY), plan)
    assert generator.rounds == [24] and len(out.kept) == 6 and out.stats["reached_target"]


def test_generation_stops_at_the_attempt_budget(pack):
    generator = ScriptedGenerator(lambda prompt, n: "Explain what a fever is.")  # always a duplicate
    out = generate_instructions(
        pack, generator, Parents(HARD, EASY, HARD + EASY), _plan(max_attempts=7, generator_name="scripted")
    )
    assert len(generator.asked) == 7 and out.stats["attempts"] == 7
    assert out.kept == [] and out.stats["rejected_by_reason"] == {"rouge": 7} and not out.stats["reached_target"]


def test_generation_resumes_from_its_journal_without_asking_again(pack, tmp_path):
    reply = lambda prompt, n: DISTINCT[n % len(DISTINCT)]  # noqa: E731
    first = ScriptedGenerator(reply)
    journal_path = tmp_path / "generation.partial.jsonl"
    full = generate_instructions(
        pack, first, Parents(HARD, EASY, HARD + EASY), _plan(generator_name="scripted"), journal=Journal(journal_path)
    )
    # a kill after the first three replies: keep only those journal lines
    lines = journal_path.read_text().splitlines()
    journal_path.write_text("\n".join(lines[:3]) + "\n")
    second = ScriptedGenerator(lambda prompt, n: first.replies[n - 1 + 3])  # the same replies the rest got before
    resumed = generate_instructions(
        pack, second, Parents(HARD, EASY, HARD + EASY), _plan(generator_name="scripted"), journal=Journal(journal_path)
    )
    assert len(second.asked) == len(first.asked) - 3
    assert [(r["id"], r["instruction"], r["parent_id"]) for r in resumed.kept] == [
        (r["id"], r["instruction"], r["parent_id"]) for r in full.kept
    ]


def test_one_sided_split_hands_the_share_to_the_other_side(pack):
    generator = ScriptedGenerator(lambda prompt, n: DISTINCT[n % len(DISTINCT)])
    out = generate_instructions(pack, generator, Parents(HARD, [], HARD), _plan(n_new=4, generator_name="scripted"))
    assert [r["source"] for r in out.kept] == ["hard"] * 4 and out.stats["targets"] == {"hard": 4, "easy": 0}


def test_balance_and_extraction_helpers():
    assert balanced_counts(5, 2, 0.5) == (2, 2)
    assert balanced_counts(3, 3, 0.5) == (3, 3)
    assert balanced_counts(4, 3, 0.5) == (4, 3)
    assert (
        extract_instruction("Here is a new instruction:\n\nExplain how statins lower LDL cholesterol.")
        == "Explain how statins lower LDL cholesterol."
    )
    assert (
        extract_instruction("1. Compare two antibiotics for otitis media.\n2. Another")
        == "Compare two antibiotics for otitis media."
    )
    assert (
        extract_instruction('New instruction: "Describe the signs of sepsis in adults."')
        == "Describe the signs of sepsis in adults."
    )


def test_llm_referee_resumes_from_its_journal(pack, tmp_path):
    """A kill mid-refereeing: the resumed referee asks only for verdicts it never received."""
    judge = lambda messages: '{"score_a": 7, "score_b": 5, "reason": "ok"}'  # noqa: E731
    pairs = [Pair(f"q{i}", f"How many legs does animal {i} have?", "It has 4 legs.", "Some legs.") for i in range(3)]
    journal_path = tmp_path / "referee.llm.partial.jsonl"
    with FakeOpenAIServer(reply=judge) as server:
        full = _endpoint_referee(pack, server).score(pairs, journal=Journal(journal_path))
        assert len(server.requests) == 6
    lines = journal_path.read_text().splitlines()
    journal_path.write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])  # four verdicts kept, a torn fifth line
    with FakeOpenAIServer(reply=judge) as server:
        resumed = _endpoint_referee(pack, server).score(pairs, journal=Journal(journal_path))
        assert len(server.requests) == 2
    assert [(r["id"], r["teacher_score"], r["student_score"]) for r in resumed] == [
        (r["id"], r["teacher_score"], r["student_score"]) for r in full
    ]
