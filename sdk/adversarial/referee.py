"""The referee: scores the teacher's and the student's answer to the same instruction on a 1-10 scale.

Two referees share that scale, so their verdicts, gaps and the threshold tau mean the same thing:

* LLMReferee: renders the pack's rubric prompt with both answers (A and B) and asks for two scores
  from 1 to 10 and a short reason. Every pair is judged twice, teacher-as-A and teacher-as-B, and the
  two verdicts are averaged, which cancels position bias (as Lion does). A verdict that cannot be
  parsed is asked for once more with a format reminder; if it still cannot be read, the row keeps its
  raw text, gets status "unparsed" and is left out of the split. It is never scored as 0.

* LikelihoodReferee (white-box teacher): the teacher's mean per-token log-likelihood l of an answer,
  mapped linearly at one point per nat and clipped:

      score = clip(10 + l, 1, 10)

  l = 0 (every token certain) scores 10; l <= -9 scores 1. The gap d = score(T) - score(S) is then
  the per-token log-likelihood ratio of the two answers under the teacher (while neither is clipped):
  tau = 1.5 means the student's answer is e^1.5 ~ 4.5x less likely per token than the teacher's own.

  Likelihood alone rewards degenerate text: once a small model starts repeating itself ("any any any
  ..."), every further copy is nearly certain under the teacher, so a looping answer can outscore a
  real one (the degeneration Holtzman et al. 2020 describe). The score is therefore discounted by the
  answer's share of distinct word trigrams, rho = |distinct trigrams| / |trigrams| (1 for ordinary
  prose, towards 0 for a loop):

      score = 1 + (clip(10 + l, 1, 10) - 1) * rho

  The teacher's answers in the shipped packs have rho >= 0.9; the pruned demo student's early answers
  average about 0.6. Answers of fewer than four words, and scripts written without spaces, have rho = 1.
  An answer with no word at all (whitespace, punctuation) scores the minimum, like an empty one.

The pack's verifiers run on both answers; their findings go into the LLM prompt as evidence and into
every row. The rubric (criteria and weights) is written into every row as well.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from sdk.rows import journaled_reply

SCALE_MIN, SCALE_MAX = 1.0, 10.0
ORDERS = ("ts", "st")  # ts: A = teacher, B = student; st: A = student, B = teacher
FORMAT_REMINDER = (
    "Your reply could not be read. Reply again with only this JSON object and nothing else: "
    '{"score_a": <integer 1-10>, "score_b": <integer 1-10>, "reason": "<one short sentence>"}'
)


def loglik_to_score(loglik: float | None) -> float | None:
    """Map a mean per-token log-likelihood (nats, <= 0) onto the 1-10 referee scale."""
    if loglik is None or math.isnan(loglik):
        return None
    return max(SCALE_MIN, min(SCALE_MAX, SCALE_MAX + loglik))


def distinct_trigram_ratio(text: str) -> float:
    """Share of an answer's word trigrams that are distinct: 1.0 for prose, near 0 for a loop."""
    words = re.findall(r"\w+", text.lower())
    if len(words) < 4:
        return 1.0
    trigrams = list(zip(words, words[1:], words[2:]))
    return len(set(trigrams)) / len(trigrams)


def likelihood_score(loglik: float | None, answer: str) -> float | None:
    """The likelihood referee's score of one answer: the log-likelihood mapping, discounted for repetition."""
    score = loglik_to_score(loglik)
    if score is None:
        return None
    if not re.search(r"\w", answer):
        return SCALE_MIN  # whitespace or punctuation only: no answer, however likely the teacher finds it
    return SCALE_MIN + (score - SCALE_MIN) * distinct_trigram_ratio(answer)


# ---------------------------------------------------------------------------------------------
# parsing LLM verdicts


def _labelled(letter: str) -> re.Pattern:
    """'Score A: 7', 'score_a = 7', 'Answer A score: 7/10', '**A**: 7'."""
    return re.compile(
        r"(?:score[\s_]*(?:for[\s_]*)?(?:answer[\s_]*)?|answer[\s_]*)?(?<![a-z0-9])"
        + letter
        + r"(?![a-z0-9])(?:[\s_]*score)?\W{0,2}\s*[:=]\s*\**\s*(\d{1,2}(?:\.\d+)?)",
        re.I,
    )


_SCORE_A, _SCORE_B = _labelled("a"), _labelled("b")
_REASON = re.compile(r"reason(?:ing)?\W{0,3}\s*[:=\-]\s*(.+)", re.I | re.S)


def _valid(x) -> Optional[float]:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if SCALE_MIN <= value <= SCALE_MAX else None


def _from_json(text: str) -> Optional[tuple[float, float, str]]:
    for match in re.finditer(r"\{[^{}]*\}", text, re.S):
        try:
            obj = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        keys = {re.sub(r"[\s_\-]", "", str(k)).lower(): v for k, v in obj.items()}
        a = next((keys[k] for k in ("scorea", "a", "answera", "scoreanswera") if k in keys), None)
        b = next((keys[k] for k in ("scoreb", "b", "answerb", "scoreanswerb") if k in keys), None)
        a, b = _valid(a), _valid(b)
        if a is not None and b is not None:
            return a, b, str(obj.get("reason", obj.get("reasoning", ""))).strip()
    return None


def parse_verdict(text: str | None) -> Optional[tuple[float, float, str]]:
    """(score_a, score_b, reason) from a referee reply, or None when it cannot be read.

    Accepts a JSON object ({"score_a": 7, "score_b": 4, "reason": "..."}) anywhere in the reply, or
    labelled scores such as "Score A: 7, Score B: 4". Scores outside 1-10 make a verdict unreadable.
    """
    if not text:
        return None
    parsed = _from_json(text)
    if parsed:
        return parsed
    a, b = _SCORE_A.search(text), _SCORE_B.search(text)
    if not (a and b):
        return None
    score_a, score_b = _valid(a.group(1)), _valid(b.group(1))
    if score_a is None or score_b is None:
        return None
    reason = _REASON.search(text)
    return score_a, score_b, (reason.group(1).strip().splitlines()[0] if reason else "")


# ---------------------------------------------------------------------------------------------
# referees


@dataclass
class Pair:
    """One instruction with the teacher's and the student's answer."""

    id: str
    instruction: str
    teacher_answer: str
    student_answer: str


def rubric(pack) -> dict:
    return {c.name: c.weight for c in pack.spec.referee.criteria}


def _findings(pack, pair: Pair) -> dict:
    return {
        "teacher": pack.run_verifiers(pair.instruction, pair.teacher_answer),
        "student": pack.run_verifiers(pair.instruction, pair.student_answer),
    }


def _row(pair: Pair, kind: str, teacher_score, student_score, findings: dict, **extra) -> dict:
    scored = teacher_score is not None and student_score is not None
    return {
        "id": pair.id,
        "instruction": pair.instruction,
        "teacher_answer": pair.teacher_answer,
        "student_answer": pair.student_answer,
        "referee": kind,
        "status": "ok" if scored else "unparsed",
        "teacher_score": round(teacher_score, 4) if scored else None,
        "student_score": round(student_score, 4) if scored else None,
        "gap": round(teacher_score - student_score, 4) if scored else None,
        "findings": findings,
        **extra,
    }


class LikelihoodReferee:
    """Scores answers by the teacher's mean per-token log-likelihood; see the module docstring.

    `loglik(conversations, answers, description)` gives those (RunContext.teacher_loglik: a local teacher's
    forward pass, or a vLLM endpoint's echoed prompt log-probs)."""

    kind = "likelihood"

    def __init__(self, pack, loglik, system_prompt: str):
        self.pack, self.loglik, self.system_prompt = pack, loglik, system_prompt

    def score(self, pairs: Sequence[Pair], journal=None, description: str = "likelihood referee") -> list[dict]:
        from sdk.models.chat import answer_conversations
        from sdk.progress import log

        pairs = list(pairs)
        if not pairs:
            return []
        log(f"{description}: teacher log-likelihood of {2 * len(pairs)} answers")
        convs = answer_conversations(self.system_prompt, [p.instruction for p in pairs])
        teacher_ll = self.loglik(convs, [p.teacher_answer for p in pairs], description)
        student_ll = self.loglik(convs, [p.student_answer for p in pairs], description)
        rows = []
        for pair, t_ll, s_ll in zip(pairs, teacher_ll, student_ll):
            # An empty student answer has no likelihood: it is the worst answer, so it scores the minimum.
            t_score = likelihood_score(t_ll, pair.teacher_answer)
            s_score = likelihood_score(s_ll, pair.student_answer) if pair.student_answer.strip() else SCALE_MIN
            rows.append(
                _row(
                    pair,
                    self.kind,
                    t_score,
                    s_score,
                    _findings(self.pack, pair),
                    loglik={"teacher": t_ll, "student": s_ll},
                )
            )
        return rows


class LLMReferee:
    """Asks a chat model (local or endpoint) for pairwise rubric scores, in both answer orders."""

    kind = "llm"

    def __init__(self, pack, model, model_name: str, budget=None):
        self.pack, self.model, self.model_name, self.budget = pack, model, model_name, budget

    def _prompt(self, pair: Pair, order: str, findings: dict) -> list[dict]:
        first, second = ("teacher", "student") if order == "ts" else ("student", "teacher")
        answers = {"teacher": pair.teacher_answer, "student": pair.student_answer}
        text = self.pack.render(
            "referee",
            instruction=pair.instruction,
            answer_a=answers[first],
            answer_b=answers[second],
            findings_a=findings[first],
            findings_b=findings[second],
        )
        return [{"role": "user", "content": text}]

    def _ask(self, keys: list[str], conversations: list[list[dict]], journal, description: str) -> None:
        self.model.generate_journaled(
            keys, conversations, journal, journaled_reply(keys, "raw"), description, budget=self.budget
        )

    def score(self, pairs: Sequence[Pair], journal=None, description: str = "LLM referee") -> list[dict]:
        from sdk.store import Journal

        journal = journal if journal is not None else Journal.in_memory()
        pairs = list(pairs)
        findings = {p.id: _findings(self.pack, p) for p in pairs}
        prompts = {f"{p.id}:{o}": self._prompt(p, o, findings[p.id]) for p in pairs for o in ORDERS}
        keys = list(prompts)
        self._ask(keys, [prompts[k] for k in keys], journal, description)

        # One retry for each unreadable verdict, with the reply and a format reminder in the conversation.
        unread = [
            k for k in keys if journal.done[k]["raw"] is not None and parse_verdict(journal.done[k]["raw"]) is None
        ]
        retry_keys = [f"{k}:retry" for k in unread]
        retry_convs = [
            prompts[k]
            + [{"role": "assistant", "content": journal.done[k]["raw"]}, {"role": "user", "content": FORMAT_REMINDER}]
            for k in unread
        ]
        if retry_keys:
            self._ask(retry_keys, retry_convs, journal, f"{description} (format retry)")

        rows = []
        for pair in pairs:
            verdicts, teacher_scores, student_scores = [], [], []
            for order in ORDERS:
                key = f"{pair.id}:{order}"
                reply = journal.done[key]
                if f"{key}:retry" in journal.done:
                    reply = journal.done[f"{key}:retry"]
                parsed = parse_verdict(reply["raw"])
                verdict = {
                    "order": "teacher=A" if order == "ts" else "teacher=B",
                    "raw": reply["raw"],
                    "error": reply["error"],
                    "retried": f"{key}:retry" in journal.done,
                }
                if parsed:
                    a, b, reason = parsed
                    t, s = (a, b) if order == "ts" else (b, a)
                    teacher_scores.append(t)
                    student_scores.append(s)
                    verdict.update(score_a=a, score_b=b, reason=reason)
                verdicts.append(verdict)
            complete = len(teacher_scores) == len(ORDERS)  # both orders read, or the pair is excluded
            t_score = sum(teacher_scores) / len(ORDERS) if complete else None
            s_score = sum(student_scores) / len(ORDERS) if complete else None
            rows.append(
                _row(pair, self.kind, t_score, s_score, findings[pair.id], verdicts=verdicts, model=self.model_name)
            )
        return rows


# ---------------------------------------------------------------------------------------------
# the split and its statistics


def has_severe_finding(findings: list[dict]) -> bool:
    return any(f.get("severity") == "error" for f in findings)


def split_hard_easy(rows: list[dict], tau: float, severe_findings_hard: bool = True) -> str:
    """Label each scored row hard or easy, in place; returns the rule that was used.

    Lion's rule: hard when the gap d = score(T) - score(S) >= tau. A severe verifier finding (severity
    "error") on the student's answer also makes a row hard. When tau puts every scored row on one side
    (typical of a young student under the likelihood referee, whose gaps are all large), the split
    falls back to the median gap: rows above it are hard. That keeps both hard and easy parents for
    generation; the rule used is recorded. Unparsed rows get hard=None and stay out of both sets.
    """
    scored = [r for r in rows if r["status"] == "ok"]
    threshold, rule = tau, f"gap >= tau ({tau:g})"
    by_gap = [r["gap"] >= tau for r in scored]
    if len(scored) >= 2 and (all(by_gap) or not any(by_gap)):
        gaps = sorted(r["gap"] for r in scored)
        median = (gaps[(len(gaps) - 1) // 2] + gaps[len(gaps) // 2]) / 2
        if gaps[0] < gaps[-1]:
            threshold, rule = median, f"gap > median ({median:.3f}): tau {tau:g} left one side empty"
    for row in rows:
        if row["status"] != "ok":
            row["hard"], row["hard_because"] = None, None
            continue
        severe = severe_findings_hard and has_severe_finding(row["findings"]["student"])
        over = row["gap"] >= threshold if threshold == tau else row["gap"] > threshold
        row["hard"] = bool(over or severe)
        row["hard_because"] = "gap" if over else "severe finding" if severe else None
    return rule


def relative_score(rows: list[dict]) -> Optional[float]:
    """Lion's headline figure: the student's total score as a % of the teacher's, over scored rows."""
    scored = [r for r in rows if r["status"] == "ok"]
    teacher_total = sum(r["teacher_score"] for r in scored)
    if not scored or teacher_total <= 0:
        return None
    return round(100.0 * sum(r["student_score"] for r in scored) / teacher_total, 2)


def score_summary(rows: list[dict]) -> dict:
    """Mean referee scores and verifier findings over the held-out answers (the report's domain table)."""
    scored = [r for r in rows if r["status"] == "ok"]

    def mean(values: list[float]) -> Optional[float]:
        return round(sum(values) / len(values), 4) if values else None

    return {
        "referee_teacher_mean": mean([r["teacher_score"] for r in scored]),
        "referee_student_mean": mean([r["student_score"] for r in scored]),
        "findings_teacher": sum(len(r["findings"]["teacher"]) for r in rows),
        "findings_student": sum(len(r["findings"]["student"]) for r in rows),
    }


def agreement(primary: list[dict], secondary: list[dict]) -> Optional[dict]:
    """How often two referees put the same instruction on the same side, and how their gaps correlate."""
    other = {r["id"]: r for r in secondary if r.get("hard") is not None}
    both = [(r, other[r["id"]]) for r in primary if r.get("hard") is not None and r["id"] in other]
    if not both:
        return None
    same = sum(a["hard"] == b["hard"] for a, b in both)
    return {
        "n": len(both),
        "split_agreement": round(same / len(both), 4),
        "gap_spearman": _spearman([a["gap"] for a, _ in both], [b["gap"] for _, b in both]),
    }


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def _spearman(x: list[float], y: list[float]) -> Optional[float]:
    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return round(cov / (sx * sy), 4) if sx and sy else None


def gap_stats(rows: list[dict]) -> dict:
    from statistics import mean, median

    gaps = [r["gap"] for r in rows if r["status"] == "ok"]
    labelled = [r for r in rows if r.get("hard") is not None]
    hard = sum(r["hard"] for r in labelled)
    return {
        "refereed": len(rows),
        "scored": len(gaps),
        "unparsed": len(rows) - len(gaps),
        "hard": hard,
        "easy": len(labelled) - hard,
        "hard_ratio": round(hard / len(labelled), 4) if labelled else None,
        "gap_mean": round(mean(gaps), 4) if gaps else None,
        "gap_median": round(median(gaps), 4) if gaps else None,
    }
