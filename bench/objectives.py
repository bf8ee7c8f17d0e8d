"""Benchmark: five imitation recipes on the embedded setting, same student, same data, same step budget.

    python bench/objectives.py                         # 16 optimizer steps per recipe, seeds 0 1 2
    python bench/objectives.py --steps 32 --seeds 0 1  # longer, fewer seeds

Data: the embedded teacher (SmolLM2-135M-Instruct) answers the medicine pack's seed tasks (the training
pool, as teacher.jsonl) and the first --max-eval held-out prompts of its eval set (cached in --work-dir).
DPO pairs are "teacher over student": the teacher's answer is chosen over the untrained student's greedy
answer to the same instruction (the loop's first iteration builds them the same way).

Recipes (the pruned SmolLM2 student, 10 of 30 layers; every recipe takes the same number of optimizer
steps in total, so a two-stage recipe gives each stage half):
    sft          SFT on the teacher's answers
    kd-fkl       white-box KD, forward KL (beta 0), on-policy fraction 0.5
    kd-rkl       white-box KD, reverse KL (beta 1, MiniLLM), on-policy fraction 0.5
    sft+kd-rkl   SFT then reverse-KL KD: MiniLLM starts reverse KL from a fine-tuned student
    sft+dpo      SFT then DPO (teacher over student)
    sft+rlaif    SFT then GRPO with the likelihood-referee reward

Columns, means over seeds (± sample standard deviation):
    rougeL       ROUGE-L F of the student's eval answers against the teacher's
    loglik       teacher's mean per-token log-likelihood of the student's answers (higher = closer)
    keypoints    key-point recall of the eval set's reference key points
    relative     sum of likelihood-referee scores of the student / the same for the teacher's answers, in %
    empty        held-out answers that came back empty (a collapsed student), mean over seeds
    step_vs_sft  training time per optimizer step relative to the sft recipe
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

RECIPES = {
    "sft": {"stages": ["sft"]},
    "kd-fkl": {"stages": ["kd"], "kd": {"beta": 0.0, "lmbda": 0.5}},
    "kd-rkl": {"stages": ["kd"], "kd": {"beta": 1.0, "lmbda": 0.5}},
    "sft+kd-rkl": {"stages": ["sft", "kd"], "kd": {"beta": 1.0, "lmbda": 0.5}},
    "sft+dpo": {"stages": ["sft", "dpo"]},
    "sft+rlaif": {"stages": ["sft", "rlaif"]},
}


def prepare(data_dir: Path, pack, teacher, system: str, train_size: int, max_eval: int) -> tuple[list[dict], dict[str, str]]:
    """The teacher answers the pack's seed tasks (the training pool) and the held-out eval prompts.

    Cached in data_dir; rows as the pipeline writes them to teacher.jsonl.
    """
    from sdk.evaluate.domain import answer_conversations, clean_answer
    from sdk.store import atomic_write_jsonl, read_jsonl

    train_file, eval_file = data_dir / f"teacher-{train_size}.jsonl", data_dir / f"eval_teacher-{max_eval}.jsonl"  # cached per size
    if not (train_file.is_file() and eval_file.is_file()):
        seeds = [{"id": s.id, "instruction": s.instruction} for s in pack.seeds()][:train_size]
        evals = [{"id": r["id"], "instruction": r["instruction"]} for r in (e.model_dump() for e in pack.eval_rows())][:max_eval]
        for rows, path in ((seeds, train_file), (evals, eval_file)):
            answers = teacher.generate(answer_conversations(system, [r["instruction"] for r in rows]), description="teacher answers")
            labelled = [dict(r, answer=clean_answer(a), status="ok" if a.strip() else "failed", source="seed", provenance={"stage": "bench"}) for r, a in zip(rows, answers)]
            atomic_write_jsonl(path, labelled)
    train = [r for r in read_jsonl(train_file) if r["status"] == "ok"]
    return train, {r["id"]: r["answer"] for r in read_jsonl(eval_file)}


def student_answers(model_dir_or_none, recipe, system_prompt: str, instructions: list[str], max_new_tokens: int) -> list[str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdk.evaluate.domain import answer_conversations, clean_answer
    from sdk.models import load_local
    from sdk.models.local import LocalChatModel

    if model_dir_or_none is None:
        model, tok = load_local(recipe.models.student, recipe.models)
    else:
        model, tok = AutoModelForCausalLM.from_pretrained(model_dir_or_none), AutoTokenizer.from_pretrained(model_dir_or_none)
    settings = recipe.models.student.generation.model_copy(update={"max_new_tokens": max_new_tokens, "temperature": 0.0, "batch_size": 8})
    chat = LocalChatModel(model, tok, "student", settings)
    return [clean_answer(a) for a in chat.generate(answer_conversations(system_prompt, instructions), description="student answers")]


def referee_scores(teacher, system_prompt: str, instructions: list[str], answers: list[str]) -> tuple[list, list[float]]:
    """(teacher log-likelihoods, likelihood-referee scores); an empty answer scores the floor, 1."""
    from sdk.adversarial.referee import likelihood_score
    from sdk.evaluate.domain import answer_conversations

    lls = teacher.loglik(answer_conversations(system_prompt, instructions), answers)
    return lls, [likelihood_score(ll, a) or 1.0 for ll, a in zip(lls, answers)]


def evaluate(teacher, pack, eval_rows, teacher_answers, answers: list[str], teacher_total: float) -> dict:
    from sdk.evaluate.domain import score_answers

    instructions = [r["instruction"] for r in eval_rows]
    lls, scores = referee_scores(teacher, pack.spec.system_prompt, instructions, answers)
    ids = [r["id"] for r in eval_rows]
    summary = score_answers(eval_rows, dict(zip(ids, answers)), teacher_answers, dict(zip(ids, lls)))["summary"]
    return {
        "rougeL": summary["rougeL_vs_teacher"],
        "loglik": summary["teacher_loglik"],
        "keypoints": summary["key_point_recall"],
        "relative": round(100.0 * sum(scores) / teacher_total, 2),
        "empty": summary["empty_answers"],
        "answers": answers[:3],  # a look at what the recipe produces (a collapsed student shows here)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=48, help="seed tasks the teacher answers for training")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/distillery-bench-objectives/work"))
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per recipe (split evenly over its stages)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-eval", type=int, default=20)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = parser.parse_args()

    from sdk.config import load_recipe
    from sdk.models import load_chat_model
    from sdk.packs import resolve_pack
    from sdk.pipeline import quiet_libraries
    from sdk.adversarial.pairs import teacher_over_student
    from sdk.train.runner import train_student

    quiet_libraries()
    pack = resolve_pack("medicine")
    system = pack.spec.system_prompt
    base = load_recipe("smoke", overrides=[f"data.max_eval={args.max_eval}"])
    teacher = load_chat_model(base.models.teacher, base.models)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    train_rows, teacher_answers = prepare(args.work_dir / "data", pack, teacher, system, args.train_size, args.max_eval)
    eval_rows = [r.model_dump() for r in pack.eval_rows()][: args.max_eval]
    instructions = [r["instruction"] for r in eval_rows]
    _, teacher_scores = referee_scores(teacher, system, instructions, [teacher_answers[r["id"]] for r in eval_rows])
    teacher_total = sum(teacher_scores)
    max_new = base.eval.max_new_tokens

    # DPO pairs: teacher's answer over the untrained student's (as the loop's first iteration would build them)
    initial_file = args.work_dir / f"student_initial_train_answers-{args.train_size}.json"
    if not initial_file.is_file():
        initial_file.write_text(json.dumps(student_answers(None, base, system, [r["instruction"] for r in train_rows], base.models.teacher.generation.max_new_tokens)))
    initial = json.loads(initial_file.read_text())
    pairs = teacher_over_student([{"id": r["id"], "instruction": r["instruction"], "teacher_answer": r["answer"], "student_answer": s} for r, s in zip(train_rows, initial)])

    results: dict[str, list[dict]] = {"untrained": [evaluate(teacher, pack, eval_rows, teacher_answers, student_answers(None, base, system, instructions, max_new), teacher_total)]}
    for name in args.recipes:
        spec = RECIPES[name]
        for seed in args.seeds:
            work = args.work_dir / f"{name}-seed{seed}"
            shutil.rmtree(work, ignore_errors=True)
            iter_dir = work / "iter_00"
            iter_dir.mkdir(parents=True)
            (iter_dir / "teacher.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_rows))
            (iter_dir / "dpo_pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
            overrides = {"seed": seed, "train.max_steps": args.steps // len(spec["stages"]), "train.save_steps": 10_000, "train.logging_steps": 1, "train.stages": spec["stages"]}
            for key, value in spec.get("kd", {}).items():
                overrides[f"train.kd.{key}"] = value
            recipe = load_recipe("smoke", overrides=overrides)
            start = time.perf_counter()
            metrics = train_student(recipe, iter_dir, None, work / "student", system)
            wall = time.perf_counter() - start
            stages = metrics["stages"].values()
            steps = sum(m["steps"] for m in stages)
            row = evaluate(teacher, pack, eval_rows, teacher_answers, student_answers(work / "student", base, system, instructions, max_new), teacher_total)
            row.update(seed=seed, steps=steps, time_per_step=sum(m["runtime_s"] for m in stages) / steps, wall_s=round(wall, 1))
            results.setdefault(name, []).append(row)
            shown = {k: v for k, v in row.items() if k != "answers"}
            print(f"{name} seed {seed}: {json.dumps(shown)}; first answer {row['answers'][0][:100]!r}", flush=True)
            shutil.rmtree(work, ignore_errors=True)

    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print_table(results, args)


def fmt(values: list[float], digits: int) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def print_table(results: dict[str, list[dict]], args) -> None:
    sft_step = statistics.fmean(r["time_per_step"] for r in results["sft"]) if "sft" in results else None
    print(f"\n{args.steps} optimizer steps per recipe, seeds {args.seeds}, {args.train_size} training and {args.max_eval} held-out medicine prompts")
    print(f"{'recipe':<11} {'rougeL':>15} {'loglik':>15} {'keypoints':>15} {'relative %':>15} {'empty':>6} {'step_vs_sft':>11}")
    for name, rows in results.items():
        step = "-"
        if sft_step and "time_per_step" in rows[0]:
            step = f"{statistics.fmean(r['time_per_step'] for r in rows) / sft_step:.2f}"
        print(
            f"{name:<11} {fmt([r['rougeL'] for r in rows], 3):>15} {fmt([r['loglik'] for r in rows], 2):>15} "
            f"{fmt([r['keypoints'] for r in rows], 3):>15} {fmt([r['relative'] for r in rows], 1):>15} {statistics.fmean(r['empty'] for r in rows):>6.1f} {step:>11}"
        )


if __name__ == "__main__":
    main()
