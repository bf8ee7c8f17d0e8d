"""Benchmark: six imitation recipes on the embedded setting, same healed student, same data, same step budget.

    python bench/objectives.py                                   # 32 optimizer steps per recipe, seeds 0 1 2
    python bench/objectives.py --recipes sft kd-fkl --seeds 0 1  # a chosen few
    python bench/objectives.py --steps 2 --seeds 0 --max-eval 4 --heal-steps 2 --train-size 8 --recipes sft kd-fkl
                                                                 # a check that the bench runs (minutes; numbers meaningless)

Student: the default student, as the `student` stage builds it (sdk/stages/student.py with ModelsSettings()
defaults): the embedded teacher (SmolLM2-135M-Instruct) pruned to 24 of its 30 layers (keep_ratio 0.8, angular distance,
scored on the medicine corpus chunks that are not held out), then healed by --heal-steps optimizer steps
of forward-KL distillation on those chunks (HealSettings defaults otherwise, heal seed 0). It is built
once and kept in the user cache (<cache>/students/<key>/), so every recipe and seed, and the next
invocation, start from the same folder. Every recipe gets that folder as `init`, as the pipeline passes
the initial student to iteration 0.

Data: the teacher answers the medicine pack's first --train-size seed tasks (the training pool, as
teacher.jsonl) and the first --max-eval held-out prompts of its eval set (greedy, eval.max_new_tokens;
cached in --work-dir/data). DPO pairs are "teacher over student": the teacher's answer is chosen over the
untrained (healed) student's greedy answer to the same instruction, as the loop's first iteration builds them.

Recipes (every recipe takes the same number of optimizer steps in total, so a two-stage recipe gives each
stage half):
    sft          SFT on the teacher's answers
    kd-fkl       white-box KD, forward KL (beta 0), on-policy fraction 0.5
    kd-rkl       white-box KD, reverse KL (beta 1, MiniLLM), on-policy fraction 0.5
    sft+kd-rkl   SFT then reverse-KL KD: MiniLLM starts reverse KL from a fine-tuned student
    sft+dpo      SFT then DPO (teacher over student)
    sft+rlaif    SFT then GRPO with the likelihood-referee reward

Settings: the SDK's recipe defaults (no preset), so each objective trains at its own default learning rate:
sft at train.learning_rate, kd at kd.learning_rate (null = train.learning_rate), dpo at
dpo.learning_rate 5e-6 with rpo_alpha 1.0, rlaif at rlaif.learning_rate 1e-6 with KL beta 0.04. The bench
sets train.learning_rate to --sft-lr, 5e-5: the healed student already writes fluent text close to the
teacher (it is no longer a broken student that needs the presets' 3e-4 to 5e-4 to move at all), and a
fine-tune of a working small model usually takes 1e-5 to 1e-4; the middle of that range moves it in 32
steps without overwriting what healing restored. kd inherits the same rate (its recipe default).

Columns, per recipe the mean over seeds ± sample standard deviation (untrained: the healed student before
any recipe trains it, measured once in this run: the baseline every row is compared to):
    KL           per-token KL(teacher || student) over the full vocabulary on the teacher's held-out
                 answers, teacher forcing, nats (0 = the teacher; sdk/evaluate/fidelity.py)
    top1         share of those answer tokens where both models' most likely next token agree
    distinct     mean distinct-trigram ratio of the student's held-out answers (1.0 = prose, towards 0 = a loop)
    min_distinct the lowest distinct-trigram ratio of any held-out answer on any seed
    looping      held-out answers flagged as looping (sdk/evaluate/degeneration.py), mean over seeds
    empty        held-out answers with no word at all (a collapsed student), mean over seeds
    rougeL       ROUGE-L F of the student's held-out answers against the teacher's
    loglik       teacher's mean per-token log-likelihood of the student's answers (higher = closer; a loop
                 can score high, which is why KL and the degeneration columns stand beside it)
    keypoints    key-point recall of the eval set's reference key points
    relative     sum of likelihood-referee scores of the student / the same for the teacher's answers, in %
    step_vs_sft  training time per optimizer step relative to the sft recipe, measured in the same run
Then, per recipe, the answer to the first held-out prompt (first seed), and a verdict: "collapsed" when any
seed gave an empty answer or a distinct-trigram ratio below 0.8 (the seed's mean over its answers, as a run's
summary table prints it), else "ok". The verdict also names the worst single answer; the line above it gives the
teacher's own worst answer on the same prompts, and the untrained row gives the start's.

Everything in the table is measured in this one process; nothing is carried over from another run except
the cached teacher answers, the untrained student's answers for DPO pairs, and the healed student itself.

Measured: see docs/training.md
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
COLLAPSE_DISTINCT = 0.8  # a verdict threshold: below this, one answer repeats itself heavily


def prepare(
    data_dir: Path, pack, teacher, system: str, train_size: int, max_eval: int, max_new: int
) -> tuple[list[dict], dict[str, str]]:
    """The teacher answers the pack's seed tasks (the training pool) and the held-out eval prompts.

    Cached in data_dir per size and answer length; rows as the pipeline writes them to teacher.jsonl.
    """
    from sdk.models.chat import answer_conversations, clean_answer
    from sdk.store import atomic_write_jsonl, read_jsonl

    train_file, eval_file = (
        data_dir / f"teacher-{train_size}-{max_new}.jsonl",
        data_dir / f"eval_teacher-{max_eval}-{max_new}.jsonl",
    )
    if not (train_file.is_file() and eval_file.is_file()):
        seeds = [{"id": s.id, "instruction": s.instruction} for s in pack.seeds()][:train_size]
        evals = [{"id": r["id"], "instruction": r["instruction"]} for r in (e.model_dump() for e in pack.eval_rows())][
            :max_eval
        ]
        settings = teacher.settings.model_copy(update={"max_new_tokens": max_new, "temperature": 0.0})
        for rows, path in ((seeds, train_file), (evals, eval_file)):
            answers = teacher.generate(
                answer_conversations(system, [r["instruction"] for r in rows]),
                settings=settings,
                description="teacher answers",
            )
            labelled = [
                dict(
                    r,
                    answer=clean_answer(a),
                    status="ok" if a.strip() else "failed",
                    source="seed",
                    provenance={"stage": "bench"},
                )
                for r, a in zip(rows, answers)
            ]
            atomic_write_jsonl(path, labelled)
    train = [r for r in read_jsonl(train_file) if r["status"] == "ok"]
    return train, {r["id"]: r["answer"] for r in read_jsonl(eval_file)}


def build_student(
    pack, models, teacher, system: str, eval_prompts: list[str], eval_answers: list[str], heal_steps: int, heldout: int
) -> dict:
    """The default student: the `student` stage's prune + heal, cache on (bench/pruning.py builds its inputs the same way)."""
    from sdk.config import HealSettings
    from sdk.knowledge.heldout import split_chunks
    from sdk.knowledge.ingest import IndexSettings, ingest
    from sdk.models import describe
    from sdk.paths import cache_dir
    from sdk.stages import student as student_stage
    from sdk.store import read_jsonl

    r = pack.spec.retrieval
    index_dir = cache_dir() / "bench" / f"index-{pack.name}"
    ingest(pack.corpus_dir(), index_dir, IndexSettings(chunk_size=r.chunk_size, chunk_overlap=r.chunk_overlap))
    train_chunks, held = split_chunks(read_jsonl(index_dir / "chunks.jsonl"))
    inputs = student_stage.StudentInputs(
        [c["text"] for c in train_chunks], [c["text"] for c in held][:heldout], eval_prompts, eval_answers
    )
    record = student_stage.build(
        student_stage.StudentSettings(models, HealSettings(steps=heal_steps), 0),
        inputs,
        teacher,
        describe(models.teacher, models),
    )
    if not record.get("path"):
        raise SystemExit(f"the student stage built no folder for {record['student']}")
    return record


def load_student(folder, device):
    from sdk.models.student import load_student_model

    model, tok = load_student_model(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.to(device), tok


def generate(model, tok, generation, system_prompt: str, instructions: list[str], max_new_tokens: int) -> list[str]:
    from sdk.models.chat import answer_conversations, clean_answer
    from sdk.models.local import LocalChatModel

    settings = generation.model_copy(update={"max_new_tokens": max_new_tokens, "temperature": 0.0, "batch_size": 8})
    chat = LocalChatModel(model, tok, "student", settings)
    return [
        clean_answer(a)
        for a in chat.generate(answer_conversations(system_prompt, instructions), description="student answers")
    ]


def referee_scores(
    teacher, system_prompt: str, instructions: list[str], answers: list[str]
) -> tuple[list, list[float]]:
    """(teacher log-likelihoods, likelihood-referee scores); an empty answer scores the floor, 1."""
    from sdk.adversarial.referee import likelihood_score
    from sdk.models.chat import answer_conversations

    lls = teacher.loglik(answer_conversations(system_prompt, instructions), answers)
    return lls, [likelihood_score(ll, a) or 1.0 for ll, a in zip(lls, answers)]


def assess(folder, teacher, generation, ctx: dict) -> dict:
    """Load one student folder and measure it: fidelity to the teacher, degeneration, and the answer scores."""
    import gc

    import torch

    from sdk.evaluate.degeneration import degeneration_summary
    from sdk.evaluate.domain import score_answers
    from sdk.evaluate.fidelity import fidelity

    model, tok = load_student(folder, teacher.device)
    answers = generate(model, tok, generation, ctx["system"], ctx["instructions"], ctx["max_new"])
    fid = fidelity(teacher.model, model, tok, ctx["prompts"], ctx["teacher_list"])["summary"]
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    degen = degeneration_summary(answers)
    lls, scores = referee_scores(teacher, ctx["system"], ctx["instructions"], answers)
    ids = [r["id"] for r in ctx["eval_rows"]]
    summary = score_answers(ctx["eval_rows"], dict(zip(ids, answers)), ctx["teacher_answers"], dict(zip(ids, lls)))[
        "summary"
    ]
    return {
        "kl": fid["kl_per_token"],
        "top1": fid["top1_agreement"],
        "fidelity_tokens": fid["fidelity_tokens"],
        "distinct": degen["distinct_trigram_ratio"],  # mean over non-empty answers
        "min_distinct": degen["min_distinct_trigram_ratio"],
        "looping": degen["looping_answers"],
        "empty": degen["empty_answers"],  # no word at all
        "rougeL": summary["rougeL_vs_teacher"],
        "loglik": summary["teacher_loglik"],
        "keypoints": summary["key_point_recall"],
        "relative": round(100.0 * sum(scores) / ctx["teacher_total"], 2),
        "answers": answers,  # every held-out answer, to read (a collapsed student shows here)
    }


def held_out_context(teacher, pack, system: str, teacher_answers: dict, max_eval: int, max_new: int) -> dict:
    """What assess() scores against: the held-out prompts, the teacher's answers to them and its referee total."""
    from sdk.models.chat import answer_conversations

    eval_rows = [r.model_dump() for r in pack.eval_rows()][:max_eval]
    instructions = [r["instruction"] for r in eval_rows]
    teacher_list = [teacher_answers[r["id"]] for r in eval_rows]
    _, teacher_scores = referee_scores(teacher, system, instructions, teacher_list)
    return {
        "system": system,
        "instructions": instructions,
        "prompts": [teacher.render(c) for c in answer_conversations(system, instructions)],  # generation prompt on
        "teacher_list": teacher_list,
        "teacher_answers": teacher_answers,
        "eval_rows": eval_rows,
        "teacher_total": sum(teacher_scores),
        "max_new": max_new,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=48, help="seed tasks the teacher answers for training")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/distillery-bench-objectives/work"))
    parser.add_argument(
        "--batch-size", type=int, default=2, help="train.batch_size of every stage (sequences up to 256 tokens)"
    )
    parser.add_argument(
        "--steps", type=int, default=32, help="optimizer steps per recipe (split evenly over its stages)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-eval", type=int, default=20, help="held-out prompts scored")
    parser.add_argument(
        "--heal-steps", type=int, default=40, help="healing steps of the default student (HealSettings.steps)"
    )
    parser.add_argument(
        "--sft-lr", type=float, default=5e-5, help="train.learning_rate: sft's (and kd's, by its default) learning rate"
    )
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = parser.parse_args(argv)

    from sdk.adversarial.pairs import teacher_over_student
    from sdk.config import ModelsSettings, load_recipe
    from sdk.models import load_chat_model
    from sdk.packs import resolve_pack
    from sdk.progress import quiet_libraries
    from sdk.store import atomic_write_jsonl
    from sdk.train.common import TrainRequest
    from sdk.train.runner import train_student

    quiet_libraries()
    pack = resolve_pack("medicine")
    system = pack.spec.system_prompt
    models = ModelsSettings()
    base = load_recipe(None, overrides={"data.max_eval": args.max_eval})  # the SDK's defaults, no preset
    max_new = base.eval.max_new_tokens
    teacher = load_chat_model(models.teacher, models)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    train_rows, teacher_answers = prepare(
        args.work_dir / "data", pack, teacher, system, args.train_size, args.max_eval, max_new
    )
    ctx = held_out_context(teacher, pack, system, teacher_answers, args.max_eval, max_new)
    prompts, instructions, teacher_list = ctx["prompts"], ctx["instructions"], ctx["teacher_list"]

    record = build_student(
        pack, models, teacher, system, prompts, teacher_list, args.heal_steps, base.eval.heldout_chunks
    )
    init = Path(record["path"])
    heal_line = {k: record.get(k) for k in ("key", "before_heal", "after_heal")}
    print(
        f"default student {record['student']}: {len(record['prune']['kept'])} layers kept {record['prune']['kept']}, heal steps {args.heal_steps}, folder {init}; {json.dumps(heal_line)}",
        flush=True,
    )
    generation = models.student.generation

    # DPO pairs: the teacher's answer over the untrained student's (as the loop's first iteration builds them)
    pairs: list[dict] = []
    if any("dpo" in RECIPES[name]["stages"] for name in args.recipes):
        initial_file = (
            args.work_dir
            / f"student_initial_train_answers-{record['key']}-{args.train_size}-{models.teacher.generation.max_new_tokens}.json"
        )
        if not initial_file.is_file():
            model, tok = load_student(init, teacher.device)
            initial_file.write_text(
                json.dumps(
                    generate(
                        model,
                        tok,
                        generation,
                        system,
                        [r["instruction"] for r in train_rows],
                        models.teacher.generation.max_new_tokens,
                    )
                )
            )
            del model
        initial = json.loads(initial_file.read_text())
        pairs = teacher_over_student(
            [
                {"id": r["id"], "instruction": r["instruction"], "teacher_answer": r["answer"], "student_answer": s}
                for r, s in zip(train_rows, initial)
            ]
        )

    # the same data for every recipe and seed, written once
    data_file, pairs_file = args.work_dir / "train_teacher.jsonl", args.work_dir / "train_dpo_pairs.jsonl"
    atomic_write_jsonl(data_file, train_rows)
    if pairs:
        atomic_write_jsonl(pairs_file, pairs)
    results: dict[str, list[dict]] = {"untrained": [dict(assess(init, teacher, generation, ctx), seed=args.seeds[0])]}
    show(results["untrained"][0], "untrained")
    for name in args.recipes:
        spec = RECIPES[name]
        for seed in args.seeds:
            work = args.work_dir / f"{name}-seed{seed}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            overrides = {
                "seed": seed,
                "data.max_eval": args.max_eval,
                "train.stages": spec["stages"],
                "train.learning_rate": args.sft_lr,
                "train.batch_size": args.batch_size,
                "train.max_seq_length": 256,
                "train.max_steps": max(1, args.steps // len(spec["stages"])),
                "train.save_steps": 10_000,
                "train.logging_steps": 1,
            }
            for key, value in spec.get("kd", {}).items():
                overrides[f"train.kd.{key}"] = value  # the divergence only; kd.learning_rate stays the recipe default
            recipe = load_recipe(None, overrides=overrides)
            start = time.perf_counter()
            request = TrainRequest(
                recipe, data_file, work / "student", work, init, system, pairs_file if pairs else None
            )
            metrics = train_student(request)
            wall = time.perf_counter() - start
            stages = metrics["stages"].values()
            steps = sum(m["steps"] for m in stages)
            row = assess(work / "student", teacher, generation, ctx)
            row.update(
                seed=seed,
                steps=steps,
                time_per_step=sum(m["runtime_s"] for m in stages) / steps,
                wall_s=round(wall, 1),
                learning_rates=learning_rates(recipe),
            )
            results.setdefault(name, []).append(row)
            show(row, f"{name} seed {seed}")
            shutil.rmtree(work, ignore_errors=True)

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "student": record,
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "results": results,
                },
                indent=2,
            )
        )
    print_table(results, args, record, instructions[0], teacher_list)


def learning_rates(recipe) -> dict[str, float]:
    """The learning rate each stage trains at, resolved as sdk.train.common.training_args_kwargs does."""
    t = recipe.train
    own = {"sft": None, "kd": t.kd.learning_rate, "dpo": t.dpo.learning_rate, "rlaif": t.rlaif.learning_rate}
    return {stage: own[stage] or t.learning_rate for stage in t.stages}


def show(row: dict, label: str) -> None:
    shown = {k: v for k, v in row.items() if k != "answers"}
    print(f"{label}: {json.dumps(shown)}; first answer {row['answers'][0][:100]!r}", flush=True)


def fmt(values: list, digits: int) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def verdict(rows: list[dict]) -> str:
    """collapsed: an empty answer on any seed, or a seed whose distinct-trigram ratio (the mean over its answers,
    the figure a run's summary table prints) is below COLLAPSE_DISTINCT. The worst single answer is reported
    beside it, to be read against the untrained start's and the teacher's worst answer."""
    empty = [r["seed"] for r in rows if r["empty"]]
    low_seeds = [r["seed"] for r in rows if r["distinct"] is None or r["distinct"] < COLLAPSE_DISTINCT]
    worst_seed = min((r["distinct"] for r in rows if r["distinct"] is not None), default=None)
    worst_answer = min((r["min_distinct"] for r in rows if r["min_distinct"] is not None), default=None)
    reasons = []
    if empty:
        reasons.append(f"empty answers on seeds {empty}")
    if low_seeds:
        reasons.append(f"distinct-trigram ratio < {COLLAPSE_DISTINCT} on seeds {low_seeds}")
    if reasons:
        return f"collapsed ({'; '.join(reasons)})"
    return f"ok (no empty answer; lowest seed ratio {worst_seed:.2f}; worst single answer {worst_answer:.2f})"


def print_table(results: dict[str, list[dict]], args, record: dict, first_prompt: str, teacher_list: list[str]) -> None:
    from sdk.evaluate.degeneration import degeneration_summary

    first_teacher = teacher_list[0]
    teacher_worst = degeneration_summary(teacher_list)["min_distinct_trigram_ratio"]
    sft_step = statistics.fmean(r["time_per_step"] for r in results["sft"]) if "sft" in results else None
    print(
        f"\n{args.steps} optimizer steps per recipe, seeds {args.seeds}, {args.train_size} training and {args.max_eval} held-out medicine prompts; "
        f"student: the default ({record['prune']['method']}, {len(record['prune']['kept'])} of {record['prune']['base_layers']} layers) healed {args.heal_steps} steps; sft lr {args.sft_lr}, other objectives at their recipe defaults"
    )
    print(
        f"{'recipe':<11} {'KL':>15} {'top1':>15} {'distinct':>13} {'min_distinct':>12} {'looping':>7} {'empty':>6} "
        f"{'rougeL':>15} {'loglik':>15} {'keypoints':>15} {'relative %':>15} {'step_vs_sft':>11}"
    )
    for name, rows in results.items():
        step = "-"
        if sft_step and "time_per_step" in rows[0]:
            step = f"{statistics.fmean(r['time_per_step'] for r in rows) / sft_step:.2f}"
        mins = [r["min_distinct"] for r in rows if r["min_distinct"] is not None]
        print(
            f"{name:<11} {fmt([r['kl'] for r in rows], 3):>15} {fmt([r['top1'] for r in rows], 3):>15} {fmt([r['distinct'] for r in rows], 2):>13} "
            f"{(f'{min(mins):.2f}' if mins else '-'):>12} {statistics.fmean(r['looping'] for r in rows):>7.1f} {statistics.fmean(r['empty'] for r in rows):>6.1f} "
            f"{fmt([r['rougeL'] for r in rows], 3):>15} {fmt([r['loglik'] for r in rows], 2):>15} {fmt([r['keypoints'] for r in rows], 3):>15} "
            f"{fmt([r['relative'] for r in rows], 1):>15} {step:>11}"
        )
    print(f"\nfirst held-out prompt (seed {args.seeds[0]}): {first_prompt[:160]!r}")
    print(f"  {'teacher':<11} {first_teacher[:200]!r}")
    for name, rows in results.items():
        first = next((r for r in rows if r["seed"] == args.seeds[0]), rows[0])
        print(f"  {name:<11} {first['answers'][0][:200]!r}")
    print(
        f"\nverdict (collapsed = an empty answer, or a seed's distinct-trigram ratio < {COLLAPSE_DISTINCT}); for the worst "
        f"single answer, the teacher's own worst on these prompts is {teacher_worst:.2f}"
    )
    for name, rows in results.items():
        print(f"  {name:<11} {verdict(rows)}")


if __name__ == "__main__":
    main()
