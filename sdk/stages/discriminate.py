"""Stage `<iter>/discriminate`: the student answers the cache pool (journaled), the referee scores
teacher against student, and the gap splits the instructions into hard and easy (Lion's discrimination)."""

from __future__ import annotations

import random

from sdk.models.chat import answer_conversations, clean_answer
from sdk.progress import log
from sdk.stages.base import Stage
from sdk.store import referee_file

SPLIT_KEEP = ("id", "instruction", "subarea", "task_type", "source", "provenance")


def split_row(source: dict, verdict: dict) -> dict:
    """A hard or easy row: the instruction with its verdict."""
    return {
        **{k: source.get(k) for k in SPLIT_KEEP},
        "gap": verdict["gap"],
        "teacher_score": verdict["teacher_score"],
        "student_score": verdict["student_score"],
        "hard_because": verdict["hard_because"],
    }


def refereed_candidates(ctx, k: int, cache_pool: list[dict], teacher: dict) -> list[dict]:
    """Cache-pool instructions the teacher answered (one it failed on cannot be judged), at most max_refereed."""
    cap = ctx.recipe.adversarial.max_refereed
    candidates = [r for r in cache_pool if r["id"] in teacher]
    if cap and len(candidates) > cap:
        picked = set(r["id"] for r in random.Random(f"{ctx.recipe.seed}:{k}:referee").sample(candidates, cap))
        candidates = [r for r in candidates if r["id"] in picked]
    return candidates


def student_answers(ctx, k: int, candidates: list[dict]) -> list[dict]:
    """The student after iteration k answers the candidates (journaled: a resumed run does not answer twice)."""
    it = ctx.layout.iteration(k)
    student = ctx.load_student(ctx.student_dir(k), f"iteration {k}")
    journal = ctx.store.journal(it.student_answers_journal)

    def to_row(i: int, out) -> dict:
        row = candidates[i]
        answer = "" if isinstance(out, BaseException) else clean_answer(out)
        return {
            "id": row["id"],
            "instruction": row["instruction"],
            "answer": answer,
            "provenance": dict(row["provenance"], stage="student_answer", model=student.name),
        }

    convs = answer_conversations(ctx.pack.spec.system_prompt, [r["instruction"] for r in candidates])
    student.generate_journaled(
        [r["id"] for r in candidates], convs, journal, to_row, f"student answers cache pool (iteration {k})"
    )
    return [journal.done[r["id"]] for r in candidates]


def run(ctx, k: int):
    from sdk.adversarial.referee import Pair, agreement, gap_stats, rubric, split_hard_easy

    it, adv, tau = ctx.layout.iteration(k), ctx.recipe.adversarial, ctx.recipe.adversarial.tau
    cache_pool = ctx.store.read_jsonl(it.cache_pool)
    teacher = ctx.teacher_answers(k)
    candidates = refereed_candidates(ctx, k, cache_pool, teacher)
    answered = student_answers(ctx, k, candidates)

    pairs = [
        Pair(r["id"], r["instruction"], teacher[r["id"]]["answer"], s["answer"]) for r, s in zip(candidates, answered)
    ]
    verdicts = ctx.run_referees(pairs, it.referee, f"referee scores cache pool (iteration {k})")
    kinds = ctx.referee_kinds()
    by_id = {r["id"]: r for r in candidates}
    criteria = rubric(ctx.pack)
    rules = {}
    for kind, rows in verdicts.items():
        rules[kind] = split_hard_easy(rows, tau, adv.severe_findings_hard)
        for row in rows:
            src = by_id[row["id"]]
            row.update(
                subarea=src.get("subarea"),
                task_type=src.get("task_type"),
                source=src.get("source"),
                tau=tau,
                rubric=criteria,
            )
            row["provenance"] = dict(
                src["provenance"], stage="referee", model=row.get("model", f"{ctx.name('teacher')} (likelihood)")
            )
    primary = verdicts[kinds[0]]
    hard = [split_row(by_id[r["id"]], r) for r in primary if r["hard"] is True]
    easy = [split_row(by_id[r["id"]], r) for r in primary if r["hard"] is False]
    without_answer = len(cache_pool) - len(teacher.keys() & {r["id"] for r in cache_pool})
    stats = dict(
        gap_stats(primary),
        tau=tau,
        split_rule=rules[kinds[0]],
        referee=kinds[0],
        criteria=criteria,
        cache_pool=len(cache_pool),
        without_teacher_answer=without_answer,
    )
    if len(kinds) > 1:
        stats["agreement"] = agreement(primary, verdicts[kinds[1]])
        stats[kinds[1]] = gap_stats(verdicts[kinds[1]])
    log(
        f"{it.dir.name}: {stats['hard']} hard, {stats['easy']} easy, {stats['unparsed']} unparsed; mean gap {stats['gap_mean']}; split by {stats['split_rule']}"
    )
    outputs = [
        ctx.store.write_jsonl(it.student_answers, answered),
        ctx.store.write_jsonl(it.referee, primary),
        ctx.store.write_jsonl(it.hard, hard),
        ctx.store.write_jsonl(it.easy, easy),
        ctx.store.write_json(it.discrimination, stats),
    ]
    for kind in kinds[1:]:
        outputs.append(ctx.store.write_jsonl(referee_file(it.referee, kind, False), verdicts[kind]))
    ctx.store.journal(it.student_answers_journal).remove()
    ctx.remove_referee_journals(it.referee)
    return outputs


STAGE = Stage(
    "discriminate",
    run,
    per_iteration=True,
    reads=("iteration.cache_pool", "iteration.teacher", "iteration.student"),
    writes=(
        "iteration.student_answers",
        "iteration.referee",
        "iteration.hard",
        "iteration.easy",
        "iteration.discrimination",
    ),
    recipe=(
        "seed",
        "domain",
        "adversarial.max_refereed",
        "adversarial.tau",
        "adversarial.severe_findings_hard",
        "adversarial.referee",
        "models.referee",
        "eval",
    ),
)
