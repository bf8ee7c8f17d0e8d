"""Generation: new instructions made from the referee's hard and easy ones (Lion's third step).

Each attempt samples a parent from one side and renders the pack's prompt for it:
  hard -> `generate_hard`: same domain and task type, harder
  easy -> `generate_easy`: same domain, a different, more long-tail topic
The reply goes through the quality rules, the domain check (cosine similarity to the nearest seed at
least `adversarial.min_domain_similarity`) and the diversity filter (exact ROUGE-L, then embedding
cosine) against the cache pool as it stands, which grows with every kept instruction.

Attempts run in rounds until N_new are kept or the attempt budget is spent. Each round asks only for
what each side still lacks, so the kept instructions follow `hard_share` (Lion: 1:1). Every reply is
journaled under its attempt number, and parents are drawn from a per-attempt seed, so a resumed run
replays the same decisions and asks the generator only for attempts it never answered.

`adversarial.feedback: none` is the ablation baseline for Lion's claim that the referee's feedback helps:
`parent_pools` then gives both prompts parents drawn from the whole cache pool, and everything else
(prompts, filters, N_new, attempt budget, seeding, journal) stays the same.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from sdk.curation.synthesis import parse_instructions, quality_problem, split_task_label
from sdk.rows import journaled_reply, provenance

SIDES = ("hard", "easy")
_PREAMBLE = re.compile(
    r"^(here('s| is| are)|sure|certainly|okay|ok|new (instruction|task|question)|instruction|task)\b.*:\s*$", re.I
)
# A small generator often talks about the task instead of writing one.
_META = re.compile(
    r"^(sure|certainly|okay|of course)\b|\b(this|above|given|previous|original|new) (example|instruction)s?\b|\bthe example\b(?! of)|\b(easy|hard|difficult|harder) example\b|\bthe student model\b|\bas an ai\b",
    re.I,
)
_LABEL = re.compile(r"^\**(new\s+)?(instruction|question|task)\**\s*:\s*", re.I)


def extract_instruction(reply: str) -> str:
    """The instruction in a generator reply: the first list item or the first line that is not a preamble."""
    items = parse_instructions(reply)
    if items:
        text = items[0]
    else:
        lines = [ln.strip() for ln in reply.splitlines() if ln.strip() and not _PREAMBLE.match(ln.strip())]
        text = lines[0] if lines else ""
    return _LABEL.sub("", text).strip().strip('"*').strip()


@dataclass
class GenerationPlan:
    n_new: int
    max_attempts: int
    hard_share: float
    rouge_threshold: float
    cosine_threshold: Optional[float]
    min_words: int
    max_words: int
    seed: int
    iteration: int
    min_domain_similarity: Optional[float] = None  # cosine to the nearest domain reference (the seeds); None = off
    domain_references: tuple[str, ...] = ()
    feedback: str = "referee"  # recorded in the stats; parent_pools builds the parents it stands for
    generator_name: str = "generator"  # recorded in provenance
    embedder: Optional[Callable] = field(default=None, compare=False, repr=False)  # for the cosine and domain checks
    prior_acceptance: float = 1.0  # the share kept assumed before any reply: the previous iteration's, when known


@dataclass(frozen=True)
class Parents:
    """What generation starts from: the parents of the generate_hard and generate_easy prompts, and the
    cache pool (every instruction so far) that a new one must differ from."""

    hard: list[dict]
    easy: list[dict]
    cache_pool: list[dict]


@dataclass
class GenerationOutcome:
    kept: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


def side_targets(n_new: int, hard_share: float, have_hard: bool, have_easy: bool) -> dict[str, int]:
    """How many of N_new come from each side. A side with no instructions hands its share to the other."""
    n_hard = round(n_new * hard_share)
    targets = {"hard": n_hard, "easy": n_new - n_hard}
    if not have_hard:
        targets = {"hard": 0, "easy": n_new if have_easy else 0}
    elif not have_easy:
        targets = {"hard": n_new, "easy": 0}
    return targets


def parent_pools(
    feedback: str, hard: list[dict], easy: list[dict], cache_pool: list[dict]
) -> tuple[list[dict], list[dict]]:
    """The parents of the `generate_hard` and of the `generate_easy` prompt.

    "referee" (Lion): the referee's hard and easy instructions. "none" (the ablation baseline): both prompts
    draw uniformly from the whole cache pool, hard, easy or never split (unrefereed, unanswered, unparsed).
    """
    if feedback == "none":
        return list(cache_pool), list(cache_pool)
    if feedback != "referee":
        raise ValueError(f"feedback must be 'referee' or 'none', got {feedback!r}")
    return list(hard), list(easy)


def acceptance_rate(kept: int, attempts: int, prior: float = 1.0) -> float:
    """The share of replies kept so far, as the next round's sizing assumes it: `prior` before any reply (the
    previous iteration's share, or 1), and never below one in eight, so a run of rejections does not spend the
    whole budget in one round."""
    return max(kept / attempts if attempts else prior, 1 / 8)


def prior_acceptance(previous_stats: Optional[dict]) -> float:
    """The share of replies the previous iteration kept (its generation.json), counting surplus rows as kept (they
    passed every check); 1 when there is none, so the first round asks for exactly the target."""
    if not previous_stats or not previous_stats.get("attempts"):
        return 1.0
    passed = previous_stats["kept"] + sum(
        n for reason, n in previous_stats.get("rejected_by_reason", {}).items() if reason in ("surplus", "balance")
    )
    return min(1.0, passed / previous_stats["attempts"])


def balanced_counts(kept_hard: int, kept_easy: int, hard_share: float) -> tuple[int, int]:
    """The largest (h, e) with h <= kept_hard, e <= kept_easy and h = round((h + e) * hard_share)."""
    for total in range(kept_hard + kept_easy, -1, -1):
        h = round(total * hard_share)
        if h <= kept_hard and total - h <= kept_easy:
            return h, total - h
    return 0, 0


def generate_instructions(
    pack, generator, pools: Parents, plan: GenerationPlan, journal=None, budget=None
) -> GenerationOutcome:
    """Make up to plan.n_new new instructions; returns kept rows, rejected rows (with reasons) and counts."""
    from sdk.curation.diversity import DiversityFilter
    from sdk.store import Journal

    journal = journal if journal is not None else Journal.in_memory()
    parents = {"hard": pools.hard, "easy": pools.easy}
    targets = side_targets(plan.n_new, plan.hard_share, bool(pools.hard), bool(pools.easy))
    versions = {
        side: hashlib.sha256(pack.prompt_path(f"generate_{side}").read_bytes()).hexdigest()[:12] for side in SIDES
    }
    judge = _Judge(
        plan,
        DiversityFilter(
            [r["instruction"] for r in pools.cache_pool], plan.rouge_threshold, plan.cosine_threshold, plan.embedder
        ),
        DomainCheck(plan.domain_references, plan.min_domain_similarity, plan.embedder),
        [r["id"] for r in pools.cache_pool],
        versions,
    )

    out = GenerationOutcome()
    kept = {side: [] for side in SIDES}
    attempts = 0
    while attempts < plan.max_attempts:
        lacking = {side: targets[side] - len(kept[side]) for side in SIDES}
        if not any(n > 0 for n in lacking.values()):
            break
        # Ask for what is lacking divided by the share kept so far, so a generator whose replies are mostly
        # rejected fills its target in one or two large batches rather than in many small ones.
        rate = acceptance_rate(sum(len(v) for v in kept.values()), attempts, plan.prior_acceptance)
        lacking = {side: math.ceil(n / rate) if n > 0 else 0 for side, n in lacking.items()}
        # Interleave the sides so a budget that runs out mid-round still leaves them balanced.
        round_sides = []
        while any(lacking[s] > 0 for s in SIDES) and attempts + len(round_sides) < plan.max_attempts:
            for side in SIDES:
                if lacking[side] > 0 and attempts + len(round_sides) < plan.max_attempts:
                    round_sides.append(side)
                    lacking[side] -= 1
        specs = []
        for offset, side in enumerate(round_sides):
            j = attempts + offset
            parent = random.Random(f"{plan.seed}:{plan.iteration}:{j}").choice(parents[side])
            specs.append((f"gen-{plan.iteration:02d}-{j:04d}", side, parent))
        attempts += len(specs)

        convs = [
            [
                {
                    "role": "user",
                    "content": pack.render(
                        f"generate_{side}",
                        instruction=parent["instruction"],
                        task_type=parent.get("task_type"),
                        subarea=parent.get("subarea"),
                    ),
                }
            ]
            for _, side, parent in specs
        ]
        keys = [key for key, _, _ in specs]

        # A budget that runs out raises here; the journal keeps every reply, so a resume replays them.
        generator.generate_journaled(
            keys,
            convs,
            journal,
            journaled_reply(keys),
            f"generating instructions (iteration {plan.iteration})",
            budget=budget,
        )
        for key, side, parent in specs:
            judge.decide(journal.done[key], side, parent, kept, out)

    # A large round can overshoot a side's target: keep the earliest.
    for side in SIDES:
        for row in kept[side][targets[side] :]:
            out.rejected.append(dict(row, reason="surplus", detail=f"{side} already had its {targets[side]}"))
        kept[side] = kept[side][: targets[side]]
    # Keep the sides in proportion (Lion: 1:1): trim the latest of an over-full side.
    if all(targets[s] > 0 for s in SIDES):
        n_hard, n_easy = balanced_counts(len(kept["hard"]), len(kept["easy"]), plan.hard_share)
        for side, n in (("hard", n_hard), ("easy", n_easy)):
            for row in kept[side][n:]:
                out.rejected.append(
                    dict(row, reason="balance", detail=f"hard/easy kept in the ratio {plan.hard_share:g}")
                )
            kept[side] = kept[side][:n]
    out.kept = sorted(kept["hard"] + kept["easy"], key=lambda r: r["id"])
    out.stats = generation_stats(out, attempts, targets, plan)
    return out


@dataclass
class _Judge:
    """Decides one generator reply: parsed, good enough, in the domain, and new against the cache pool."""

    plan: GenerationPlan
    filt: object  # DiversityFilter
    domain: DomainCheck
    pool_ids: list[str]
    versions: dict[str, str]  # prompt version per side

    def decide(self, reply: dict, side: str, parent: dict, kept: dict, out: GenerationOutcome) -> None:
        plan, filt, domain, pool_ids, version, generator_name = (
            self.plan,
            self.filt,
            self.domain,
            self.pool_ids,
            self.versions[side],
            self.plan.generator_name,
        )
        prov = provenance(
            "generate",
            model=generator_name,
            document=parent.get("provenance", {}).get("document"),
            chunk_id=parent.get("provenance", {}).get("chunk_id"),
            parent_id=parent["id"],
            iteration=plan.iteration,
            prompt_version=version,
        )
        row = {
            "id": reply["id"],
            "instruction": None,
            "source": side,
            "parent_id": parent["id"],
            "subarea": parent.get("subarea"),
            "task_type": None,
            "provenance": prov,
        }
        if reply["error"]:
            out.rejected.append(dict(row, reason="failed", detail=reply["error"], raw=None))
            return
        task_type, text = split_task_label(extract_instruction(reply["reply"]))
        row.update(
            instruction=text or None, task_type=task_type or (parent.get("task_type") if side == "hard" else None)
        )
        if side == "easy":
            row["subarea"] = None  # a different, long-tail topic: the parent's sub-area no longer applies
        if not text:
            out.rejected.append(
                dict(row, reason="unparseable", detail="no instruction in the reply", raw=reply["reply"])
            )
            return
        problem = quality_problem(text, "", plan.min_words, plan.max_words) or (
            "talks about the task instead of stating one" if _META.search(text) else None
        )
        if problem:
            out.rejected.append(dict(row, reason="quality", detail=problem, raw=reply["reply"]))
            return
        vector = domain.vector(text)
        similarity = domain.similarity(vector)
        if similarity is not None and similarity < domain.threshold:
            out.rejected.append(
                dict(
                    row,
                    reason="off_domain",
                    detail=f"cosine {similarity:.3f} to the nearest seed, below {domain.threshold:g}",
                    raw=reply["reply"],
                )
            )
            return
        decision = filt.check(text, vector=vector, label=row["id"])
        if not decision.kept:
            match = decision.match or ""
            if match.startswith("pool:"):
                match = pool_ids[int(match.split(":", 1)[1])]
            score = decision.max_cosine if decision.reason == "cosine" else decision.max_rouge
            out.rejected.append(
                dict(row, reason=decision.reason, detail=f"{decision.reason} {score:.3f} to {match}", similar_to=match)
            )
            return
        kept[side].append(dict(row, max_rouge_vs_pool=round(decision.max_rouge, 4)))


class DomainCheck:
    """Keeps generation in the pack's field: a candidate must come within `threshold` cosine similarity of
    at least one reference instruction (the seeds). A small generator drifts into text about the task, other
    fields or noise; answering and training on those teaches the student nothing about the domain."""

    def __init__(self, references: Sequence[str], threshold: Optional[float], embedder=None):
        self.threshold = threshold
        self.embedder = embedder
        self._refs = None
        if threshold is not None and embedder is not None and references:
            refs = np.asarray(embedder(list(references)), dtype=np.float32)
            self._refs = refs / np.linalg.norm(refs, axis=1, keepdims=True)

    def vector(self, text: str) -> Optional[np.ndarray]:
        return None if self.embedder is None else np.asarray(self.embedder([text])[0], dtype=np.float32)

    def similarity(self, vector: Optional[np.ndarray]) -> Optional[float]:
        if self._refs is None or vector is None:
            return None
        return float((self._refs @ (vector / np.linalg.norm(vector))).max())


def generation_stats(out: GenerationOutcome, attempts: int, targets: dict, plan: GenerationPlan) -> dict:
    reasons: dict[str, int] = {}
    for r in out.rejected:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    return {
        "target": plan.n_new,
        "targets": targets,
        "attempts": attempts,
        "max_attempts": plan.max_attempts,
        "kept": len(out.kept),
        "kept_hard": sum(r["source"] == "hard" for r in out.kept),
        "kept_easy": sum(r["source"] == "easy" for r in out.kept),
        "rejected": len(out.rejected),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "reached_target": len(out.kept) >= plan.n_new,
        "feedback": plan.feedback,
    }
