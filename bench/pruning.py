"""Benchmark: which layers should the pruned student keep? Methods x sizes, before and after healing.

    python bench/pruning.py                                  # the default grid, 40 healing steps each
    python bench/pruning.py --heal-steps 0                   # pruning alone (fast)
    python bench/pruning.py --configs angular:20 angular:24  # a chosen few

Setting: the embedded teacher (SmolLM2-135M-Instruct, 30 layers) and the medicine pack. Calibration and
healing text are the corpus chunks that are not held out; the figures are measured on the teacher's own
answers to the first --max-eval held-out prompts (greedy, 96 tokens) and on the held-out corpus chunks:

    KL        per-token KL(teacher || student) over the full vocabulary, nats (0 = the teacher)
    top1      share of answer tokens where both models' most likely next token agree
    ppl       student perplexity on the held-out corpus chunks (the teacher's is printed first)
    rougeL    (--rouge) ROUGE-L F of the healed student's greedy answers to the held-out prompts against the
              teacher's, generated as a run generates them (batches of 32, bf16 where the CPU has it). Two
              references are printed first: the teacher's answers against the teacher's own in float32 (the same
              model, other rounding) and against its answers to the other prompts (same style, other content)

Each configuration is the real `student` stage (sdk/stages/student.py) with the cache off, so what is
measured is what a run does. The baseline named in the ratio column is `every_k:3` (the old default).

Measured: see docs/pruning.md (the table there is this script's output).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

DEFAULT_CONFIGS = ["every_k:3", "every_k:2", "block_influence:20", "angular:20", "angular:15", "angular:24"]


def spec_for(config: str):
    from sdk.config import ModelSpec

    method, _, size = config.partition(":")
    if method == "every_k":
        return ModelSpec(provider="pruned", base="teacher", prune_method="every_k", keep_every=int(size))
    return ModelSpec(provider="pruned", base="teacher", prune_method=method, num_layers=int(size))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", nargs="+", default=DEFAULT_CONFIGS, help="method:size, size = layers kept (every_k: k)"
    )
    parser.add_argument("--heal-steps", type=int, default=40)
    parser.add_argument("--max-eval", type=int, default=24)
    parser.add_argument("--domain", default="medical")
    parser.add_argument("--rouge", action="store_true", help="also ROUGE-L of the student's answers to the teacher's")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from sdk.config import HealSettings, ModelsSettings
    from sdk.evaluate.fidelity import perplexity
    from sdk.knowledge.heldout import split_chunks
    from sdk.knowledge.ingest import IndexSettings, ingest
    from sdk.models import describe, load_chat_model
    from sdk.models.chat import answer_conversations, clean_answer
    from sdk.packs import resolve_pack
    from sdk.paths import cache_dir
    from sdk.progress import quiet_libraries
    from sdk.stages import student as student_stage
    from sdk.store import read_jsonl

    quiet_libraries()
    pack = resolve_pack(args.domain, [])
    r = pack.spec.retrieval
    index_dir = cache_dir() / "bench" / f"index-{pack.name}"
    ingest(pack.corpus_dir(), index_dir, IndexSettings(chunk_size=r.chunk_size, chunk_overlap=r.chunk_overlap))
    train_chunks, held = split_chunks(read_jsonl(index_dir / "chunks.jsonl"))
    models = ModelsSettings()
    teacher = load_chat_model(models.teacher, models)
    teacher.settings = teacher.settings.model_copy(update={"max_new_tokens": 96, "batch_size": 32})
    evals = [e.instruction for e in pack.eval_rows()][: args.max_eval]
    convs = answer_conversations(pack.spec.system_prompt, evals)
    answers = [clean_answer(a) for a in teacher.generate(convs, description="teacher answers eval set")]
    inputs = student_stage.StudentInputs(
        [c["text"] for c in train_chunks], [c["text"] for c in held][:16], [teacher.render(c) for c in convs], answers
    )
    teacher_ppl = perplexity(teacher.model, teacher.tokenizer, inputs.heldout_chunks)["ppl"]
    print(
        f"{len(train_chunks)} calibration/healing chunks, {len(held)} held out; {len(evals)} held-out prompts; teacher ppl on held-out chunks {teacher_ppl}"
    )
    if args.rouge:
        print_rouge_references(teacher, convs, answers)

    results = []
    heal = HealSettings(steps=args.heal_steps, cache=False)
    scratch = Path(tempfile.mkdtemp(prefix="distillery-bench-pruning-"))
    for config in args.configs:
        start = time.time()
        record = student_stage.build(
            # cache off, built in a folder of its own: never in the user cache, where a run's healed student of the
            # same settings lives under the same key
            student_stage.StudentSettings(
                models.model_copy(update={"student": spec_for(config)}), heal, 0, private_dir=scratch
            ),
            inputs,
            teacher,
            describe(models.teacher, models),
        )
        before, after = record.get("before_heal") or {}, record.get("after_heal") or {}
        results.append(
            {
                "config": config,
                "kept": record["prune"]["kept"],
                "before": before,
                "after": after,
                "rougeL": student_rouge(record["path"], teacher, convs, answers) if args.rouge else None,
                "seconds": round(time.time() - start, 1),
            }
        )
        print(f"  {config}: {json.dumps(results[-1])}", flush=True)

    shutil.rmtree(scratch, ignore_errors=True)
    base = next((r for r in results if r["config"] == "every_k:3"), None)
    print(f"\nheal steps {args.heal_steps}; KL and ppl before -> after healing; ratio = after KL / every_k:3 after KL")
    print(f"{'config':<20} {'layers':>6} {'KL':>15} {'top1':>15} {'ppl':>17} {'ratio':>6} {'rougeL':>7}")
    for r in results:
        b, a = r["before"], r["after"] or r["before"]
        ratio = f"{a['kl_per_token'] / ((base['after'] or base['before'])['kl_per_token']):.2f}" if base else "-"
        rouge = f"{r['rougeL']:.3f}" if r["rougeL"] is not None else "-"
        print(
            f"{r['config']:<20} {len(r['kept']):>6} {b['kl_per_token']:>6.2f} -> {a['kl_per_token']:<5.2f} {b['top1_agreement']:>6.1%} -> {a['top1_agreement']:<6.1%} {b['domain_ppl']:>7.0f} -> {a['domain_ppl']:<7.0f} {ratio:>6} {rouge:>7}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"teacher_ppl": teacher_ppl, "heal_steps": args.heal_steps, "results": results}, indent=2)
        )


def mean_rouge(references: list[str], answers: list[str]) -> float:
    from sdk.rouge import rouge_l_f

    return sum(rouge_l_f(r, a, use_stemmer=True) for r, a in zip(references, answers)) / len(answers)


def student_rouge(path, teacher, convs, teacher_answers) -> float:
    """The student in `path` answers as the teacher did (same generation settings); ROUGE-L to the teacher's."""
    from transformers import AutoModelForCausalLM

    from sdk.models import LocalChatModel
    from sdk.models.chat import clean_answer

    student = LocalChatModel(AutoModelForCausalLM.from_pretrained(path), teacher.tokenizer, "student", teacher.settings)
    answers = [clean_answer(a) for a in student.generate(convs, description="student answers eval set")]
    return round(mean_rouge(teacher_answers, answers), 4)


def print_rouge_references(teacher, convs, answers) -> None:
    """What ROUGE-L to the teacher's greedy answers reads when the content is the same and when it is not."""
    from sdk.models import LocalChatModel
    from sdk.models.chat import clean_answer

    fp32 = LocalChatModel(teacher.model, teacher.tokenizer, "fp32", teacher.settings.model_copy(update={"bf16": "off"}))
    same = [clean_answer(a) for a in fp32.generate(convs, description="teacher answers in float32")]
    n = len(answers)
    other = mean_rouge(
        [answers[i] for i in range(n) for j in range(n) if i != j],
        [answers[j] for i in range(n) for j in range(n) if i != j],
    )
    print(
        f"ROUGE-L references: the teacher against itself in float32 {mean_rouge(answers, same):.3f}; against its answers to the other prompts {other:.3f}"
    )


if __name__ == "__main__":
    main()
