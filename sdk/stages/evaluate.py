"""Stages `eval_before` and `<iter>/eval`: the student answers the held-out set, before the loop and
after each iteration. Fidelity to the teacher (KL, top-1 agreement, perplexity on the teacher's
answers) and degeneration lead its summary; ROUGE-L, key-point recall and the referee's relative
score stand beside them (docs/metrics.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sdk.models.chat import answer_conversations, clean_answer
from sdk.models.local import LocalChatModel
from sdk.rows import provenance
from sdk.stages.base import Stage
from sdk.store import referee_file


@dataclass(frozen=True)
class EvalFiles:
    answers: Path  # the student's answers, with degeneration figures per answer
    referee: Path  # the primary referee's verdicts (a second referee's sit beside it)
    summary: Path  # the summary and per-item scores


def eval_provenance(ctx, stage: str, model: Optional[str] = None) -> dict:
    return provenance(stage, model=model, document=f"{ctx.pack.name}/{ctx.pack.spec.eval.path}")


def fidelity_start(ctx) -> Optional[float]:
    """KL to the teacher the student started from: before healing when it was healed, else before the loop."""
    layout = ctx.layout
    record = ctx.store.read_json(layout.student_init) if layout.student_init.is_file() else {}
    if record.get("before_heal"):
        return record["before_heal"].get("kl_per_token")
    return (
        ctx.store.read_json(layout.eval.before)["summary"].get("kl_per_token") if layout.eval.before.is_file() else None
    )


def fidelity_summary(ctx, student: LocalChatModel, student_path: Optional[Path] = None) -> dict:
    """KL(T||S), top-1 agreement and perplexity on the teacher's held-out answers, domain perplexity on
    held-out chunks; for the student the loop starts from, the student stage's figures (initial_figures), which
    measured it on the same set. For an endpoint teacher, estimated from its stored top-k where the eval_teacher stage asked
    for it; otherwise unavailable (None), and the student's domain perplexity alone."""
    from sdk.evaluate.fidelity import gap_closed, perplexity

    empty = {
        "kl_per_token": None,
        "top1_agreement": None,
        "student_ppl": None,
        "kl_gap_closed": None,
        "domain_ppl": None,
    }
    if not ctx.white_box_teacher():
        heldout = ctx.heldout_texts()
        domain_ppl = perplexity(student.model, student.tokenizer, heldout)["ppl"] if heldout else None
        estimate = endpoint_fidelity(ctx, student)
        if estimate is None:
            why = "unavailable: the teacher is an endpoint that was not asked for its top-k log-probabilities"
            return dict(empty, domain_ppl=domain_ppl, fidelity=why)
        estimate["kl_gap_closed"] = gap_closed(fidelity_start(ctx), estimate["kl_per_token"])
        return dict(estimate, domain_ppl=domain_ppl)
    if student.tokenizer.get_vocab() != ctx.teacher.tokenizer.get_vocab():
        return dict(empty, fidelity="unavailable: the teacher's tokenizer differs from the student's")
    from sdk.stages.student import heldout_inputs, initial_figures, measure

    inputs = heldout_inputs(ctx)
    measured = initial_figures(ctx, student_path, inputs) or measure(
        ctx.teacher.model, student.model, student.tokenizer, inputs
    )
    summary = {k: measured[k] for k in ("kl_per_token", "top1_agreement", "student_ppl")}
    summary["kl_gap_closed"] = gap_closed(fidelity_start(ctx), summary["kl_per_token"])
    summary["domain_ppl"] = measured["domain_ppl"]
    return summary


def endpoint_fidelity(ctx, student: LocalChatModel) -> Optional[dict]:
    """Fidelity estimated from the endpoint teacher's top-k on its held-out answers (eval/teacher_logits), or None."""
    from sdk.evaluate.fidelity import fidelity_from_topk
    from sdk.train.logit_store import LogitStore, completion_tokens, prompt_digest
    from sdk.train.sft import sft_dataset

    folder = ctx.layout.eval.teacher_logits
    if not (folder / "meta.json").is_file():
        return None
    store = LogitStore(folder)
    rows = [r for r in ctx.store.read_jsonl(ctx.layout.eval.teacher) if r["status"] == "ok" and store.has(r["id"])]
    items = []
    for row, example in zip(rows, sft_dataset(rows, ctx.pack.spec.system_prompt) if rows else []):
        full, prompt_len = completion_tokens(student.tokenizer, example["prompt"], example["completion"])
        stored = store.get(row["id"])
        if stored.prompt == prompt_digest(full[:prompt_len]) and list(stored.token_ids) == full[prompt_len:]:
            items.append((full, prompt_len, stored))  # the student's tokenizer reads the stored tokens the same way
    if not items:
        return None
    summary = fidelity_from_topk(student.model, items)
    return dict(
        summary, fidelity=f"estimated from the endpoint's top-{store.top_k} log-probabilities ({len(items)} answers)"
    )


def evaluate_student(ctx, student_path: Optional[Path], tag: str, files: EvalFiles) -> list[Path]:
    """The student answers the held-out set; domain metrics and the referee's relative score."""
    from sdk.adversarial.referee import Pair, relative_score, score_summary
    from sdk.evaluate.degeneration import degeneration, degeneration_summary
    from sdk.evaluate.domain import score_answers

    eval_rows = ctx.eval_rows()
    system = ctx.pack.spec.system_prompt
    student = ctx.load_student(student_path, tag)
    answers = student.generate(
        answer_conversations(system, [r["instruction"] for r in eval_rows]),
        description=f"student answers eval set ({tag})",
    )
    out = [
        {
            "id": row["id"],
            "instruction": row["instruction"],
            "answer": clean_answer(answer),
            "provenance": eval_provenance(ctx, f"eval_{tag}", student.name),
        }
        for row, answer in zip(eval_rows, answers)
    ]
    for row in out:
        row["degeneration"] = degeneration(row["answer"])
    fidelity = fidelity_summary(ctx, student, student_path)
    del student
    teacher = {r["id"]: r for r in ctx.store.read_jsonl(ctx.layout.eval.teacher)}
    pairs = [
        Pair(r["id"], r["instruction"], teacher[r["id"]]["answer"], r["answer"])
        for r in out
        if teacher[r["id"]]["status"] == "ok"
    ]
    verdicts = ctx.run_referees(pairs, files.referee, f"referee scores eval set ({tag})")
    if ctx.teacher_scores_answers():
        teacher_loglik_of_answers(ctx, out, verdicts.get("likelihood", []), tag)
    primary = ctx.referee_kinds()[0]
    for kind, rows in verdicts.items():
        for row in rows:
            row["provenance"] = eval_provenance(ctx, f"eval_referee_{tag}", rows and row.get("model", kind))
        ctx.store.write_jsonl(referee_file(files.referee, kind, kind == primary), rows)
    teacher_answers = {k: (r.get("answer") or "") for k, r in teacher.items()}
    ll = {r["id"]: r["teacher_loglik"] for r in out if "teacher_loglik" in r} or None
    domain = score_answers(eval_rows, {r["id"]: r["answer"] for r in out}, teacher_answers, ll)
    summary = dict(fidelity, **degeneration_summary([r["answer"] for r in out]))
    summary.update({k: v for k, v in domain["summary"].items() if k != "empty_answers"})
    summary.update(
        relative_score=relative_score(verdicts[primary]), referee=primary, **score_summary(verdicts[primary])
    )
    for kind, rows in verdicts.items():
        summary[f"relative_score_{kind}"] = relative_score(rows)
    ctx.remove_referee_journals(files.referee)
    return [
        ctx.store.write_jsonl(files.answers, out),
        ctx.store.write_json(files.summary, {"summary": summary, "items": domain["items"]}),
    ]


def teacher_loglik_of_answers(ctx, out: list[dict], likelihood_verdicts: list[dict], tag: str) -> None:
    """Each answer's teacher log-likelihood per token into its row: taken from the likelihood referee's verdicts,
    which scored the same conversation and answer, and computed only for the answers it did not score."""
    known = {v["id"]: v["loglik"]["student"] for v in likelihood_verdicts}
    rest = [r for r in out if r["id"] not in known]
    if rest:
        convs = answer_conversations(ctx.pack.spec.system_prompt, [r["instruction"] for r in rest])
        scored = ctx.teacher_loglik(convs, [r["answer"] for r in rest], f"teacher scores eval answers ({tag})")
        known.update({r["id"]: ll for r, ll in zip(rest, scored)})
    for row in out:
        row["teacher_loglik"] = known[row["id"]]


def run_before(ctx):
    e = ctx.layout.eval
    return evaluate_student(ctx, ctx.student_dir(-1), "before", EvalFiles(e.student_before, e.referee_before, e.before))


def run_iteration(ctx, k: int):
    it = ctx.layout.iteration(k)
    return evaluate_student(
        ctx, ctx.student_dir(k), f"after iteration {k}", EvalFiles(it.eval_student, it.eval_referee, it.eval)
    )


_EVAL_RECIPE = ("domain", "data.max_eval", "eval", "models.student.generation", "adversarial.referee", "models.referee")
BEFORE = Stage(
    "eval_before",
    run_before,
    reads=("eval.teacher", "student_init"),
    writes=("eval.student_before", "eval.referee_before", "eval.before"),
    recipe=_EVAL_RECIPE,
)
ITERATION = Stage(
    "eval",
    run_iteration,
    per_iteration=True,
    reads=("eval.teacher", "iteration.student"),
    writes=("iteration.eval_student", "iteration.eval_referee", "iteration.eval"),
    recipe=_EVAL_RECIPE,
)
