"""The run, stage by stage. Each finished stage is recorded in the manifest; a resumed run skips it.

    ingest       knowledge.json                 the pack's corpus indexed (llama-index + FAISS), reused when unchanged
    synthesize   iter_00/synthesized.jsonl      instructions written from sampled passages, quality- and diversity-filtered
    pool         iter_00/train_pool.jsonl       the pack's seeds plus the synthesised instructions
    label        iter_00/teacher.jsonl          the teacher answers them (journaled per chunk)
    eval_teacher eval/teacher.jsonl             the teacher answers the held-out set
    eval_before  eval/student_before.jsonl      the untrained student answers it
    train        student/                       SFT on the teacher's answers (checkpointed)
    eval_after   eval/student_after.jsonl       the trained student answers it
    finalize     eval/domain.json metrics.json report.html
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from sdk.config import Recipe
from sdk.errors import DistilleryError
from sdk.curation.labeling import label_rows
from sdk.curation.seeds import provenance, seed_pool
from sdk.evaluate.domain import answer_conversations, clean_answer, score_answers
from sdk.models import describe, load_chat_model, load_local
from sdk.models.local import LocalChatModel
from sdk.packs import Pack, resolve_pack
from sdk.progress import log
from sdk.store import RunStore

ITER = "iter_00"


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    student_path: Path


def quiet_libraries() -> None:
    """Keep our own progress bars and the trainer's; silence library load bars and chatter."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()


class Pipeline:
    def __init__(self, recipe: Recipe, store: RunStore):
        self.recipe = recipe
        self.store = store
        self.pack: Pack = resolve_pack(recipe.domain, recipe.pack_paths)
        self._models: dict[str, object] = {}
        self.timings: dict[str, float] = dict(store.manifest.get("timings", {}))

    # models -----------------------------------------------------------------------------------
    def model(self, role: str):
        """A chat model for a role; roles with identical specs share one loaded model."""
        spec = getattr(self.recipe.models, role)
        key = spec.model_dump_json()
        if key not in self._models:
            self._models[key] = load_chat_model(spec, self.recipe.models)
        return self._models[key]

    @property
    def teacher(self):
        return self.model("teacher")

    def teacher_name(self) -> str:
        return describe(self.recipe.models.teacher, self.recipe.models)

    def student_name(self) -> str:
        return describe(self.recipe.models.student, self.recipe.models)

    def load_student(self, trained: bool) -> LocalChatModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        settings = self.recipe.models.student.generation.model_copy(
            update={"max_new_tokens": self.recipe.eval.max_new_tokens, "batch_size": self.recipe.eval.batch_size}
        )
        if trained:
            path = self.store.path("student")
            model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
            return LocalChatModel(model, tok, "student (trained)", settings)
        model, tok = load_local(self.recipe.models.student, self.recipe.models)
        return LocalChatModel(model, tok, "student (initial)", settings)

    # stages -----------------------------------------------------------------------------------
    def _stage(self, name: str, fn) -> None:
        if self.store.is_done(name):
            log(f"[dim]skip[/dim] {name} (finished in an earlier session)")
            return
        log(f"[bold cyan]stage[/bold cyan] {name}")
        start = time.time()
        outputs = fn() or []
        self.timings[name] = round(time.time() - start, 1)
        self.store.manifest["timings"] = self.timings
        self.store.mark_done(name, outputs=[str(o) for o in outputs])

    def run(self) -> RunResult:
        from transformers import set_seed

        quiet_libraries()
        set_seed(self.recipe.seed)
        self.store.set_status("running")
        self._stage("ingest", self.stage_ingest)
        self._stage("synthesize", self.stage_synthesize)
        self._stage("pool", self.stage_pool)
        self._stage("label", self.stage_label)
        self._stage("eval_teacher", self.stage_eval_teacher)
        self._stage("eval_before", lambda: self.stage_eval_student(trained=False))
        self._stage("train", self.stage_train)
        self._stage("eval_after", lambda: self.stage_eval_student(trained=True))
        self._stage("finalize", self.stage_finalize)
        self.store.set_status("finished")
        return RunResult(self.store.root, self.store.read_json("metrics.json"), self.store.path("student"))

    def index_dir(self) -> Path:
        from sdk.paths import cache_dir

        configured = self.recipe.knowledge.index_dir
        if configured:
            return Path(configured)
        corpus_key = hashlib.sha256(str(self.pack.corpus_dir()).encode()).hexdigest()[:8]
        return cache_dir() / "indexes" / f"{self.pack.name}-{corpus_key}"

    def stage_ingest(self):
        from sdk.knowledge.ingest import IndexSettings, ingest

        k, r = self.recipe.knowledge, self.pack.spec.retrieval
        settings = IndexSettings(chunk_size=r.chunk_size, chunk_overlap=r.chunk_overlap, embedder=k.embedder, index_type=k.index_type, flat_max_vectors=k.flat_max_vectors)
        summary = ingest(self.pack.corpus_dir(), self.index_dir(), settings)
        return [self.store.write_json("knowledge.json", summary.as_dict())]

    def stage_synthesize(self):
        from sdk.curation.diversity import filter_candidates
        from sdk.curation.synthesis import sample_passages, synthesize
        from sdk.knowledge.embeddings import load_embedder
        from sdk.store import read_jsonl

        cur = self.recipe.curation
        candidates, rejected = [], []
        if cur.passages > 0:
            chunks = read_jsonl(self.index_dir() / "chunks.jsonl")
            subareas = sorted({s.subarea for s in self.pack.seeds()})
            passages = sample_passages(chunks, cur.passages, subareas, self.recipe.seed)
            generator_name = describe(self.recipe.models.generator, self.recipe.models)
            journal = self.store.journal(f"{ITER}/synthesis.partial.jsonl")
            candidates, rejected = synthesize(self.pack, passages, self.model("generator"), generator_name, cur.per_passage, cur.min_words, cur.max_words, journal=journal)
        kept = []
        if candidates:
            seeds = [r["instruction"] for r in seed_pool(self.pack, self.recipe.data.max_seeds, self.recipe.seed)]
            embedder = load_embedder(self.recipe.knowledge.embedder) if cur.cosine_threshold else None
            decisions = filter_candidates(seeds, [c["instruction"] for c in candidates], cur.rouge_threshold, cur.cosine_threshold, embedder)
            for row, d in zip(candidates, decisions):
                if d.kept:
                    kept.append(row)
                else:
                    score = d.max_cosine if d.reason == "cosine" else d.max_rouge
                    rejected.append(dict(row, reason=f"too similar ({d.reason} {score:.2f} to {d.match})"))
        log(f"synthesised {len(kept)} instructions ({len(rejected)} rejected, reasons in {ITER}/synthesis_rejected.jsonl)")
        outputs = [self.store.write_jsonl(f"{ITER}/synthesized.jsonl", kept), self.store.write_jsonl(f"{ITER}/synthesis_rejected.jsonl", rejected)]
        self.store.journal(f"{ITER}/synthesis.partial.jsonl").remove()
        return outputs

    def stage_pool(self):
        pool = seed_pool(self.pack, self.recipe.data.max_seeds, self.recipe.seed) + self.store.read_jsonl(f"{ITER}/synthesized.jsonl")
        return [self.store.write_jsonl(f"{ITER}/train_pool.jsonl", pool)]

    def stage_label(self):
        pool = self.store.read_jsonl(f"{ITER}/train_pool.jsonl")
        journal = self.store.journal(f"{ITER}/teacher.partial.jsonl")
        use_context = self.recipe.curation.teacher_context == "passage"
        rows = label_rows(pool, self.teacher, self.teacher_name(), self.pack.spec.system_prompt, journal, use_context=use_context)
        path = self.store.write_jsonl(f"{ITER}/teacher.jsonl", rows)
        journal.remove()
        return [path]

    def _eval_rows(self) -> list[dict]:
        rows = [r.model_dump() for r in self.pack.eval_rows()]
        return rows[: self.recipe.data.max_eval] if self.recipe.data.max_eval else rows

    def _eval_provenance(self, stage: str, model: str | None = None) -> dict:
        return provenance(stage, model=model, document=f"{self.pack.name}/{self.pack.spec.eval.path}")

    def stage_eval_teacher(self):
        rows = [{"id": r["id"], "instruction": r["instruction"], "provenance": self._eval_provenance("eval")} for r in self._eval_rows()]
        journal = self.store.journal("eval/teacher.partial.jsonl")
        labeled = label_rows(rows, self.teacher, self.teacher_name(), self.pack.spec.system_prompt, journal, description="teacher answers eval set")
        path = self.store.write_jsonl("eval/teacher.jsonl", labeled)
        journal.remove()
        return [path]

    def stage_eval_student(self, trained: bool):
        tag = "after" if trained else "before"
        eval_rows = self._eval_rows()
        student = self.load_student(trained)
        answers = student.generate(
            answer_conversations(self.pack.spec.system_prompt, [r["instruction"] for r in eval_rows]),
            description=f"student answers eval set ({tag})",
        )
        out = [
            {"id": row["id"], "instruction": row["instruction"], "answer": clean_answer(answer), "provenance": self._eval_provenance(f"eval_{tag}", student.name)}
            for row, answer in zip(eval_rows, answers)
        ]
        if isinstance(self.teacher, LocalChatModel):
            convs = answer_conversations(self.pack.spec.system_prompt, [r["instruction"] for r in out])
            for row, ll in zip(out, self.teacher.loglik(convs, [r["answer"] for r in out])):
                row["teacher_loglik"] = ll
        del student
        return [self.store.write_jsonl(f"eval/student_{tag}.jsonl", out)]

    def stage_train(self):
        from sdk.train.common import save_student
        from sdk.train.sft import train_sft

        rows = [r for r in self.store.read_jsonl(f"{ITER}/teacher.jsonl") if r["status"] == "ok"]
        if not rows:
            raise DistilleryError(f"no usable teacher answers to train on (see {self.store.path(ITER, 'teacher.jsonl')} for the reasons)")
        model, tokenizer = load_local(self.recipe.models.student, self.recipe.models)
        model, metrics = train_sft(model, tokenizer, rows, self.pack.spec.system_prompt, self.recipe.train, self.store.path(ITER, "checkpoints"), self.recipe.seed)
        path = save_student(model, tokenizer, self.store.path("student"))
        self.store.write_json(f"{ITER}/train_metrics.json", metrics)
        return [path]

    def stage_finalize(self):
        from sdk.report import write_report

        eval_rows = self._eval_rows()
        teacher_rows = {r["id"]: r for r in self.store.read_jsonl("eval/teacher.jsonl")}
        teacher_answers = {k: (r.get("answer") or "") for k, r in teacher_rows.items()}
        domain = {}
        for tag in ("before", "after"):
            rows = self.store.read_jsonl(f"eval/student_{tag}.jsonl")
            ll = {r["id"]: r["teacher_loglik"] for r in rows if "teacher_loglik" in r} or None
            domain[tag] = score_answers(eval_rows, {r["id"]: r["answer"] for r in rows}, teacher_answers, ll)
        domain["teacher_vs_reference"] = score_answers(eval_rows, teacher_answers, teacher_answers)["summary"]
        self.store.write_json("eval/domain.json", domain)

        labeled = self.store.read_jsonl(f"{ITER}/teacher.jsonl")
        knowledge = self.store.read_json("knowledge.json")
        metrics = {
            "domain": self.pack.name,
            "preset": self.recipe.preset,
            "models": {"teacher": self.teacher_name(), "student": self.student_name()},
            "data": {
                "corpus_chunks": knowledge["chunks"],
                "corpus_files_skipped": len(knowledge["skipped"]),
                "synthesized": len(self.store.read_jsonl(f"{ITER}/synthesized.jsonl")),
                "synthesis_rejected": len(self.store.read_jsonl(f"{ITER}/synthesis_rejected.jsonl")),
                "train_pool": len(labeled),
                "teacher_ok": sum(r["status"] == "ok" for r in labeled),
                "teacher_failed": sum(r["status"] != "ok" for r in labeled),
                "eval_prompts": len(eval_rows),
            },
            "train": self.store.read_json(f"{ITER}/train_metrics.json"),
            "eval": {"before": domain["before"]["summary"], "after": domain["after"]["summary"], "teacher_vs_reference": domain["teacher_vs_reference"]},
            "timings_s": self.timings,
        }
        self.store.write_json("metrics.json", metrics)
        report = write_report(self.store.root, metrics)
        return [self.store.path("eval/domain.json"), self.store.path("metrics.json"), report]
