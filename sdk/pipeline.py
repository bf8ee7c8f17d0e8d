"""The run, stage by stage. Each finished stage is recorded in the manifest; a resumed run skips it.

    ingest        knowledge.json                 the pack's corpus indexed (llama-index + FAISS), reused when unchanged
    synthesize    iter_00/synthesized.jsonl      instructions written from sampled passages, quality- and diversity-filtered
    eval_teacher  eval/teacher.jsonl             the teacher answers the held-out set
    eval_before   eval/student_before.jsonl      the untrained student answers it; the referee scores both

  then, for k = 0 .. adversarial.iterations-1, in iter_<k>/ (Lion's loop):

    pool          train_pool.jsonl cache_pool.jsonl   k=0: seeds (+ seed_grounding.jsonl) + synthesised; k>0: what k-1 generated
    label         teacher.jsonl                  imitation: the teacher answers the train pool (journaled)
    train         student/                       imitation: the student is trained on those answers (checkpointed)
    eval          eval_student.jsonl eval.json   the student's held-out score and relative score after this iteration
    discriminate  referee.jsonl hard.jsonl easy.jsonl   the student answers the cache pool; the referee splits it
    generate      generated.jsonl                new instructions from hard and easy ones, diversity-filtered

    finalize      eval/domain.json metrics.json report.html student/
"""

from __future__ import annotations

import hashlib
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from sdk.config import Recipe
from sdk.errors import BudgetExhausted, ConfigError, DistilleryError
from sdk.curation.labeling import label_rows
from sdk.curation.seeds import provenance, seed_pool
from sdk.evaluate.domain import answer_conversations, clean_answer, score_answers
from sdk.models import describe, load_chat_model, load_local
from sdk.models.local import LocalChatModel
from sdk.models.student import load_student_model, student_kind
from sdk.stages import student as student_stage
from sdk.packs import Pack, resolve_pack
from sdk.progress import log
from sdk.store import RunStore


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    student_path: Path
    status: str = "finished"


def quiet_libraries() -> None:
    """Keep our own progress bars and the trainer's; silence library load bars and chatter."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()


def summarise_train(metrics: dict, rows: int, init) -> dict:
    """One iteration's training: per-stage metrics plus the totals the report plots."""
    stages = metrics.get("stages", {})
    history, offset = [], 0
    for name, m in stages.items():
        for h in m.get("loss_history", []):
            history.append({"step": h["step"] + offset, "loss": h["loss"], "stage": name})
        offset += m.get("steps", 0)
    losses = [h["loss"] for h in history]
    return dict(metrics, rows=rows, init=str(init) if init else "initial student", steps=offset, loss_history=history,
                first_logged_loss=losses[0] if losses else None, last_logged_loss=losses[-1] if losses else None)  # fmt: skip


SKIPPED_GENERATION = {"skipped": "last iteration (adversarial.generate_last is false)", "kept": 0, "target": 0, "attempts": 0, "kept_hard": 0, "kept_easy": 0, "rejected_by_reason": {}}


def it_name(k: int) -> str:
    return f"iter_{k:02d}"


class Pipeline:
    def __init__(self, recipe: Recipe, store: RunStore):
        self.recipe = recipe
        self.store = store
        self.pack: Pack = resolve_pack(recipe.domain, recipe.pack_paths)
        self._models: dict[str, object] = {}
        self._budgets: dict[str, object] = {}
        self.timings: dict[str, float] = dict(store.manifest.get("timings", {}))
        self.ran: list[str] = []  # stages run in this session
        self.referee_kinds()  # a referee that cannot work with these models fails before any compute

    # models -----------------------------------------------------------------------------------
    def model(self, role: str):
        """A chat model for a role; roles with identical specs share one loaded model."""
        spec = getattr(self.recipe.models, role)
        key = spec.model_dump_json()
        if key not in self._models:
            self._models[key] = load_chat_model(spec, self.recipe.models)
        return self._models[key]

    def release_models(self) -> None:
        """Drop every loaded model (they reload on next use), e.g. before a launched training stage."""
        import gc

        import torch

        self._models.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def budget(self, role: str):
        """The role's budget (calls, tokens, cost), persisted in the run directory so a resume keeps counting."""
        from sdk.models.budget import Budget

        if role not in self._budgets:
            settings = getattr(self.recipe.models, role).budget
            self._budgets[role] = Budget(settings, self.store.path("budget", f"{role}.json"), label=role)
        return self._budgets[role]

    @property
    def teacher(self):
        return self.model("teacher")

    def teacher_name(self) -> str:
        return describe(self.recipe.models.teacher, self.recipe.models)

    def student_name(self) -> str:
        return describe(self.recipe.models.student, self.recipe.models)

    def white_box_teacher(self) -> bool:
        return self.recipe.models.teacher.provider != "openai"

    def initial_student(self) -> Path | None:
        """The student the loop starts from: the pruned and healed folder the `student` stage built
        (rebuilt if the cache was cleared), or None for a student that loads from its own spec."""
        if not self.store.path(student_stage.RECORD).is_file():
            raise DistilleryError("the initial student is not built yet (the `student` stage has not run)")
        path = self.store.read_json(student_stage.RECORD).get("path")
        if path is not None and student_kind(path) is None:
            log(f"[yellow]the initial student {path} is gone from the cache; building it again[/yellow]")
            self.stage_student()
            path = self.store.read_json(student_stage.RECORD)["path"]
        return Path(path) if path else None

    def student_dir(self, k: int) -> Path | None:
        """The student after iteration k (k = -1: the initial student). An iteration whose train stage
        recorded that it had nothing to train keeps the one before; anything else without a student is an error."""
        if k < 0:
            return self.initial_student()
        it = it_name(k)
        folder = self.store.path(it, "student")
        if student_kind(folder) is not None:
            return folder
        if self.store.path(it, "train_metrics.json").is_file() and self.store.read_json(f"{it}/train_metrics.json").get("skipped"):
            return self.student_dir(k - 1)
        raise DistilleryError(f"{folder} holds no student (neither full weights nor a LoRA adapter); run `distill resume {self.store.root}` to train it again")

    def load_student(self, path: Path | None, tag: str) -> LocalChatModel:
        settings = self.recipe.models.student.generation.model_copy(
            update={"max_new_tokens": self.recipe.eval.max_new_tokens, "batch_size": self.recipe.eval.batch_size}
        )
        model, tok = load_student_model(path) if path is not None else load_local(self.recipe.models.student, self.recipe.models)
        return LocalChatModel(model, tok, f"student ({tag})", settings)

    # referees ---------------------------------------------------------------------------------
    def referee_kinds(self) -> list[str]:
        """Which referees run; the first one decides the hard/easy split."""
        mode = self.recipe.adversarial.referee
        if mode == "auto":
            return ["likelihood"] if self.white_box_teacher() else ["llm"]
        if mode in ("likelihood", "both") and not self.white_box_teacher():
            raise ConfigError(f"adversarial.referee={mode} needs a local (white-box) teacher; with an endpoint teacher use 'llm'")
        return {"likelihood": ["likelihood"], "llm": ["llm"], "both": ["llm", "likelihood"]}[mode]

    def referee(self, kind: str):
        from sdk.adversarial.referee import LikelihoodReferee, LLMReferee

        if kind == "likelihood":
            return LikelihoodReferee(self.pack, self.teacher, self.pack.spec.system_prompt)
        return LLMReferee(self.pack, self.model("referee"), describe(self.recipe.models.referee, self.recipe.models), self.budget("referee"))

    def run_referees(self, pairs, journal_prefix: str, description: str) -> dict[str, list[dict]]:
        """Score pairs with every configured referee; LLM verdicts are journaled under journal_prefix."""
        results = {}
        for kind in self.referee_kinds():
            journal = self.store.journal(f"{journal_prefix}.{kind}.partial.jsonl")
            results[kind] = self.referee(kind).score(pairs, journal=journal, description=f"{description} ({kind} referee)")
        return results

    def tau(self) -> float:
        return self.recipe.adversarial.tau if self.recipe.adversarial.tau is not None else self.pack.spec.referee.tau

    # stages -----------------------------------------------------------------------------------
    def _stage(self, name: str, fn) -> None:
        if self.store.is_done(name):
            log(f"[dim]skip[/dim] {name} (finished in an earlier session)")
            return
        log(f"[bold cyan]stage[/bold cyan] {name}")
        start = time.time()
        outputs = fn() or []
        self.ran.append(name)
        self.timings[name] = round(time.time() - start, 1)
        self.store.manifest["timings"] = self.timings
        self.store.mark_done(name, outputs=[str(o) for o in outputs])

    def run(self) -> RunResult:
        from transformers import set_seed

        quiet_libraries()
        set_seed(self.recipe.seed)
        self.store.set_status("running")
        try:
            self._stage("ingest", self.stage_ingest)
            self._stage("eval_teacher", self.stage_eval_teacher)
            self._stage("student", self.stage_student)
            if self.forgetting_tasks():
                self._stage("forgetting_before", self.stage_forgetting_before)
            self._stage("synthesize", self.stage_synthesize)
            self._stage("eval_before", self.stage_eval_before)
            for k in range(self.recipe.adversarial.iterations):
                it = it_name(k)
                self._stage(f"{it}/pool", lambda k=k: self.stage_pool(k))
                self._stage(f"{it}/label", lambda k=k: self.stage_label(k))
                self._stage(f"{it}/train", lambda k=k: self.stage_train(k))
                self._stage(f"{it}/eval", lambda k=k: self.stage_eval_iteration(k))
                self._stage(f"{it}/discriminate", lambda k=k: self.stage_discriminate(k))
                if k < self.recipe.adversarial.iterations - 1 or self.recipe.adversarial.generate_last:
                    self._stage(f"{it}/generate", lambda k=k: self.stage_generate(k))
            if self.ran:  # e.g. `distill resume --set adversarial.iterations=N+1` of a finished run: the ending is redone
                for stage in ("forgetting_after", "finalize"):
                    self.store.mark_stale(stage)
            if self.forgetting_tasks():
                self._stage("forgetting_after", self.stage_forgetting_after)
            self._stage("finalize", self.stage_finalize)
        except BudgetExhausted as exc:
            reason = f"stopped: budget reached ({exc})"
            self.store.set_status("stopped", reason=reason)
            log(f"[bold yellow]{reason}[/bold yellow]")
            log(f"everything finished so far is kept; raise the budget and run `distill resume {self.store.root}`")
            return RunResult(self.store.root, {}, self.store.path("student"), status="stopped")
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

    def corpus_split(self) -> tuple[list[dict], list[dict]]:
        """(chunks for calibration and healing, held-out chunks for domain perplexity)."""
        from sdk.knowledge.heldout import split_chunks
        from sdk.store import read_jsonl

        path = self.index_dir() / "chunks.jsonl"
        return split_chunks(read_jsonl(path)) if path.is_file() else ([], [])

    def heldout_texts(self) -> list[str]:
        return [c["text"] for c in self.corpus_split()[1]][: self.recipe.eval.heldout_chunks]

    def stage_student(self):
        """Prune and heal the student the loop starts from (sdk/stages/student.py)."""
        train_chunks, _ = self.corpus_split()
        white_box = self.white_box_teacher()
        teacher_rows = [r for r in self.store.read_jsonl("eval/teacher.jsonl") if r["status"] == "ok" and r.get("answer")]
        convs = answer_conversations(self.pack.spec.system_prompt, [r["instruction"] for r in teacher_rows])
        inputs = student_stage.StudentInputs(
            train_chunks=[c["text"] for c in train_chunks],
            heldout_chunks=self.heldout_texts(),
            eval_prompts=[self.teacher.render(c) for c in convs] if white_box else [],
            eval_answers=[r["answer"] for r in teacher_rows] if white_box else [],
        )
        record = student_stage.run(self.recipe.models, self.recipe.heal, self.recipe.seed, inputs, self.teacher if white_box else None, self.teacher_name(), private_dir=self.store.path("student_init"), train=self.recipe.train)
        return [self.store.write_json(student_stage.RECORD, record)]

    def embedder(self):
        from sdk.knowledge.embeddings import load_embedder

        return load_embedder(self.recipe.knowledge.embedder) if self.recipe.curation.cosine_threshold else None

    def stage_synthesize(self):
        from sdk.curation.diversity import filter_candidates
        from sdk.curation.synthesis import sample_passages, synthesize
        from sdk.store import read_jsonl

        cur, it = self.recipe.curation, it_name(0)
        candidates, rejected = [], []
        if cur.passages > 0:
            chunks = read_jsonl(self.index_dir() / "chunks.jsonl")
            subareas = sorted({s.subarea for s in self.pack.seeds()})
            passages = sample_passages(chunks, cur.passages, subareas, self.recipe.seed)
            generator_name = describe(self.recipe.models.generator, self.recipe.models)
            journal = self.store.journal(f"{it}/synthesis.partial.jsonl")
            candidates, rejected = synthesize(self.pack, passages, self.model("generator"), generator_name, cur.per_passage, cur.min_words, cur.max_words, journal=journal, budget=self.budget("generator"))
        kept = []
        if candidates:
            seeds = [r["instruction"] for r in seed_pool(self.pack, self.recipe.data.max_seeds, self.recipe.seed)]
            decisions = filter_candidates(seeds, [c["instruction"] for c in candidates], cur.rouge_threshold, cur.cosine_threshold, self.embedder())
            for row, d in zip(candidates, decisions):
                if d.kept:
                    kept.append(row)
                else:
                    score = d.max_cosine if d.reason == "cosine" else d.max_rouge
                    rejected.append(dict(row, reason=f"too similar ({d.reason} {score:.2f} to {d.match})"))
        log(f"synthesised {len(kept)} instructions ({len(rejected)} rejected, reasons in {it}/synthesis_rejected.jsonl)")
        outputs = [self.store.write_jsonl(f"{it}/synthesized.jsonl", kept), self.store.write_jsonl(f"{it}/synthesis_rejected.jsonl", rejected)]
        self.store.journal(f"{it}/synthesis.partial.jsonl").remove()
        return outputs

    # forgetting ---------------------------------------------------------------------------------
    def forgetting_tasks(self) -> list[str]:
        from sdk.evaluate.forgetting import resolve_tasks

        f = self.recipe.forgetting
        return resolve_tasks(f.tasks, self.pack.spec.forgetting.tasks, local_only=f.local_only) if f.enabled else []

    def general_scores(self, student_path: Path | None, tag: str) -> dict:
        from sdk.evaluate.forgetting import evaluate_general

        f, tasks = self.recipe.forgetting, self.forgetting_tasks()
        student = self.load_student(student_path, tag)
        log(f"forgetting check ({tag}): {', '.join(tasks)}" + (f", {f.limit} items per task" if f.limit else ""))
        return evaluate_general(student.model, student.tokenizer, tasks, limit=f.limit, batch_size=f.batch_size)

    def stage_forgetting_before(self):
        from sdk.evaluate.forgetting import load_tasks

        load_tasks(self.forgetting_tasks())  # an unknown task or missing data fails here, in seconds
        return [self.store.write_json("eval/forgetting_before.json", self.general_scores(self.student_dir(-1), "before"))]

    def stage_forgetting_after(self):
        from sdk.evaluate.forgetting import forgetting_record

        f = self.recipe.forgetting
        max_drop = f.max_drop if f.max_drop is not None else self.pack.spec.forgetting.max_drop
        after = self.general_scores(self.student_dir(self.recipe.adversarial.iterations - 1), "after")
        before = self.store.read_json("eval/forgetting_before.json")
        record = forgetting_record(before, after, max_drop, replay_fraction=self.recipe.train.replay_fraction, limit=f.limit)
        log(("[green]" if record["gate"]["passed"] else "[bold red]") + record["gate"]["verdict"] + "[/]")
        return [self.store.write_json("eval/forgetting.json", record)]

    # the held-out set -------------------------------------------------------------------------
    def _eval_rows(self) -> list[dict]:
        rows = [r.model_dump() for r in self.pack.eval_rows()]
        return rows[: self.recipe.data.max_eval] if self.recipe.data.max_eval else rows

    def _eval_provenance(self, stage: str, model: str | None = None) -> dict:
        return provenance(stage, model=model, document=f"{self.pack.name}/{self.pack.spec.eval.path}")

    def stage_eval_teacher(self):
        rows = [{"id": r["id"], "instruction": r["instruction"], "provenance": self._eval_provenance("eval")} for r in self._eval_rows()]
        journal = self.store.journal("eval/teacher.partial.jsonl")
        labeled = label_rows(rows, self.teacher, self.teacher_name(), self.pack.spec.system_prompt, journal, description="teacher answers eval set", budget=self.budget("teacher"))
        path = self.store.write_jsonl("eval/teacher.jsonl", labeled)
        journal.remove()
        from sdk.evaluate.degeneration import degeneration_summary

        summary = degeneration_summary([r.get("answer") or "" for r in labeled if r["status"] == "ok"])
        if self.white_box_teacher():
            from sdk.evaluate.fidelity import perplexity

            heldout = self.heldout_texts()
            summary["domain_ppl"] = perplexity(self.teacher.model, self.teacher.tokenizer, heldout)["ppl"] if heldout else None
        return [path, self.store.write_json("eval/teacher.json", {"summary": summary})]

    def fidelity_start(self) -> float | None:
        """KL to the teacher the student started from: before healing when it was healed, else before the loop."""
        record = self.store.read_json(student_stage.RECORD) if self.store.path(student_stage.RECORD).is_file() else {}
        if record.get("before_heal"):
            return record["before_heal"].get("kl_per_token")
        return self.store.read_json("eval/before.json")["summary"].get("kl_per_token") if self.store.path("eval/before.json").is_file() else None

    def fidelity_summary(self, student: LocalChatModel) -> dict:
        """KL(T||S), top-1 agreement and perplexity on the teacher's held-out answers, domain perplexity on
        held-out chunks; None where the teacher is an endpoint (no logits)."""
        from sdk.evaluate.fidelity import fidelity, gap_closed, perplexity

        empty = {"kl_per_token": None, "top1_agreement": None, "student_ppl": None, "kl_gap_closed": None, "domain_ppl": None}
        if not self.white_box_teacher():
            return dict(empty, fidelity="unavailable: the teacher is an endpoint (no logits)")
        teacher_rows = [r for r in self.store.read_jsonl("eval/teacher.jsonl") if r["status"] == "ok" and r.get("answer")]
        if student.tokenizer.get_vocab() != self.teacher.tokenizer.get_vocab():
            return dict(empty, fidelity="unavailable: the teacher's tokenizer differs from the student's")
        convs = answer_conversations(self.pack.spec.system_prompt, [r["instruction"] for r in teacher_rows])
        result = fidelity(self.teacher.model, student.model, student.tokenizer, [self.teacher.render(c) for c in convs], [r["answer"] for r in teacher_rows])
        summary = {k: result["summary"][k] for k in ("kl_per_token", "top1_agreement", "student_ppl")}
        summary["kl_gap_closed"] = gap_closed(self.fidelity_start(), summary["kl_per_token"])
        heldout = self.heldout_texts()
        summary["domain_ppl"] = perplexity(student.model, student.tokenizer, heldout)["ppl"] if heldout else None
        return summary

    def evaluate_student(self, student_path: Path | None, tag: str, answers_rel: str, referee_rel: str, summary_rel: str) -> list[Path]:
        """The student answers the held-out set; domain metrics and the referee's relative score."""
        from sdk.adversarial.referee import Pair, relative_score, score_summary

        eval_rows = self._eval_rows()
        student = self.load_student(student_path, tag)
        answers = student.generate(
            answer_conversations(self.pack.spec.system_prompt, [r["instruction"] for r in eval_rows]),
            description=f"student answers eval set ({tag})",
        )
        from sdk.evaluate.degeneration import degeneration, degeneration_summary

        out = [
            {"id": row["id"], "instruction": row["instruction"], "answer": clean_answer(answer), "provenance": self._eval_provenance(f"eval_{tag}", student.name)}
            for row, answer in zip(eval_rows, answers)
        ]
        for row in out:
            row["degeneration"] = degeneration(row["answer"])
        fidelity = self.fidelity_summary(student)
        del student
        if isinstance(self.teacher, LocalChatModel):
            convs = answer_conversations(self.pack.spec.system_prompt, [r["instruction"] for r in out])
            for row, ll in zip(out, self.teacher.loglik(convs, [r["answer"] for r in out])):
                row["teacher_loglik"] = ll
        teacher = {r["id"]: r for r in self.store.read_jsonl("eval/teacher.jsonl")}
        pairs = [Pair(r["id"], r["instruction"], teacher[r["id"]]["answer"], r["answer"]) for r in out if teacher[r["id"]]["status"] == "ok"]
        verdicts = self.run_referees(pairs, referee_rel.removesuffix(".jsonl"), f"referee scores eval set ({tag})")
        primary = self.referee_kinds()[0]
        for kind, rows in verdicts.items():
            for row in rows:
                row["provenance"] = self._eval_provenance(f"eval_referee_{tag}", rows and row.get("model", kind))
            self.store.write_jsonl(referee_rel if kind == primary else referee_rel.replace(".jsonl", f".{kind}.jsonl"), rows)
        teacher_answers = {k: (r.get("answer") or "") for k, r in teacher.items()}
        ll = {r["id"]: r["teacher_loglik"] for r in out if "teacher_loglik" in r} or None
        domain = score_answers(eval_rows, {r["id"]: r["answer"] for r in out}, teacher_answers, ll)
        summary = dict(fidelity, **degeneration_summary([r["answer"] for r in out]))
        summary.update({k: v for k, v in domain["summary"].items() if k != "empty_answers"})
        summary.update(relative_score=relative_score(verdicts[primary]), referee=primary, **score_summary(verdicts[primary]))
        for kind, rows in verdicts.items():
            summary[f"relative_score_{kind}"] = relative_score(rows)
        for kind in verdicts:
            self.store.journal(referee_rel.removesuffix(".jsonl") + f".{kind}.partial.jsonl").remove()
        return [self.store.write_jsonl(answers_rel, out), self.store.write_json(summary_rel, {"summary": summary, "items": domain["items"]})]

    def stage_eval_before(self):
        return self.evaluate_student(self.student_dir(-1), "before", "eval/student_before.jsonl", "eval/referee_before.jsonl", "eval/before.json")

    def stage_eval_iteration(self, k: int):
        it = it_name(k)
        return self.evaluate_student(self.student_dir(k), f"after iteration {k}", f"{it}/eval_student.jsonl", f"{it}/eval_referee.jsonl", f"{it}/eval.json")

    def carried_rows(self, k: int, n_new: int) -> list[dict]:
        """Earlier instructions the teacher already answered, carried into iteration k's train pool so the
        student keeps seeing the seeds and curated data while it learns the new ones (no new teacher calls)."""
        n = round(self.recipe.adversarial.carry_fraction * n_new)
        answered = self.teacher_answers(k - 1)
        earlier = {r["id"]: r for j in range(k) for r in self.store.read_jsonl(f"{it_name(j)}/train_pool.jsonl") if r.get("source") not in ("replay", "carried") and r["id"] in answered}
        picked = random.Random(f"{self.recipe.seed}:carry:{k}").sample(sorted(earlier), min(n, len(earlier)))
        return [dict(earlier[i], source="carried", origin=earlier[i].get("source")) for i in sorted(picked)]

    def ground_seeds(self, seeds: list[dict]) -> list[dict]:
        """Link each seed to its nearest corpus chunk (FAISS via llama-index) for provenance; the chunk texts go
        to iter_00/seed_grounding.jsonl so the report can show them from the run directory alone."""
        from sdk.knowledge.retrieve import retrieve

        if not seeds or not self.store.read_json("knowledge.json").get("chunks"):
            return seeds
        grounded, found = [], []
        for row in seeds:
            passage = retrieve(self.index_dir(), row["instruction"], k=1)
            if passage:
                p = passage[0]
                found.append({"id": row["id"], "instruction": row["instruction"], "chunk_id": p.chunk_id, "document": p.document, "score": round(p.score, 4), "text": p.text,
                              "provenance": {"document": p.document, "chunk_id": p.chunk_id, "stage": "seed_grounding", "model": self.recipe.knowledge.embedder}})  # fmt: skip
                row = dict(row, provenance=dict(row["provenance"], grounding={"chunk_id": p.chunk_id, "document": p.document, "score": round(p.score, 4)}))
            grounded.append(row)
        self.store.write_jsonl(f"{it_name(0)}/seed_grounding.jsonl", found)
        return grounded

    # one iteration of the loop ----------------------------------------------------------------
    def stage_pool(self, k: int):
        """The train pool (what the student learns from now) and the cache pool (everything so far)."""
        it = it_name(k)
        if k == 0:
            seeds = self.ground_seeds([dict(r, source="seed") for r in seed_pool(self.pack, self.recipe.data.max_seeds, self.recipe.seed)])
            synthesized = [dict(r, source="synthesized") for r in self.store.read_jsonl(f"{it}/synthesized.jsonl")]
            train_pool = seeds + synthesized
            cache_pool = train_pool
        else:
            prev = it_name(k - 1)
            train_pool = [dict(r, source="generated", origin=r["source"]) for r in self.store.read_jsonl(f"{prev}/generated.jsonl")]
            cache_pool = self.store.read_jsonl(f"{prev}/cache_pool.jsonl") + train_pool
            train_pool = train_pool + self.carried_rows(k, len(train_pool))
        fraction = self.recipe.train.replay_fraction
        if fraction and train_pool:
            from sdk.train.replay import replay_count, replay_instructions

            train_pool = train_pool + replay_instructions(replay_count(len(train_pool), fraction), self.recipe.seed + k)
        log(f"{it}: train pool {len(train_pool)}, cache pool {len(cache_pool)}")
        return [self.store.write_jsonl(f"{it}/train_pool.jsonl", train_pool), self.store.write_jsonl(f"{it}/cache_pool.jsonl", cache_pool)]

    def stage_label(self, k: int):
        it = it_name(k)
        pool = self.store.read_jsonl(f"{it}/train_pool.jsonl")
        earlier = self.teacher_answers(k - 1) if k > 0 else {}
        journal = self.store.journal(f"{it}/teacher.partial.jsonl")
        use_context = self.recipe.curation.teacher_context == "passage"
        # an instruction the teacher answered in an earlier iteration (carried, replay) is not asked again
        fresh = label_rows([r for r in pool if r["id"] not in earlier], self.teacher, self.teacher_name(), self.pack.spec.system_prompt, journal, use_context=use_context, budget=self.budget("teacher"))
        answers = {r["id"]: r for r in fresh}
        rows = [answers[r["id"]] if r["id"] in answers else dict(r, answer=earlier[r["id"]]["answer"], status="ok", provenance=dict(earlier[r["id"]]["provenance"], reused=True)) for r in pool]
        path = self.store.write_jsonl(f"{it}/teacher.jsonl", rows)
        journal.remove()
        return [path]

    def teacher_answers(self, k: int) -> dict[str, dict]:
        """Every usable teacher answer from iterations 0..k, by instruction id."""
        answers = {}
        for j in range(k + 1):
            for row in self.store.read_jsonl(f"{it_name(j)}/teacher.jsonl"):
                if row["status"] == "ok":
                    answers[row["id"]] = row
        return answers

    def stage_train(self, k: int):
        from sdk.train.runner import train_student

        it = it_name(k)
        rows = [r for r in self.store.read_jsonl(f"{it}/teacher.jsonl") if r["status"] == "ok"]
        if not rows:
            if k == 0:
                raise DistilleryError(f"no usable teacher answers to train on (see {self.store.path(it, 'teacher.jsonl')} for the reasons)")
            log(f"[yellow]{it}: nothing new to train on; the student from the previous iteration is kept[/yellow]")
            self.store.write_json(f"{it}/train_metrics.json", {"skipped": "empty train pool", "steps": 0, "loss_history": []})
            return []
        init = self.student_dir(k - 1)
        if "dpo" in self.recipe.train.stages:
            self.write_dpo_pairs(k, rows, init)
        if self.recipe.train.launcher.kind != "local":
            self.release_models()  # the launched processes load what they need; this one keeps no weights meanwhile
        metrics = train_student(self.recipe, self.store.path(it), init, self.store.path(it, "student"), self.pack.spec.system_prompt, verifier=self.pack.run_verifiers)
        self.store.write_json(f"{it}/train_metrics.json", summarise_train(metrics, len(rows), init))
        return [self.store.path(it, "student")]

    def write_dpo_pairs(self, k: int, rows: list[dict], init: Path | None) -> None:
        """Preference pairs for this iteration (sdk/adversarial/pairs.py explains the two modes)."""
        from sdk.adversarial import pairs

        it, mode = it_name(k), self.recipe.train.dpo.mode
        if self.store.path(it, "dpo_pairs.jsonl").is_file():
            return
        rows = [r for r in rows if r.get("source") != "replay"]
        if mode == "teacher_over_student" and k > 0:
            out = pairs.teacher_over_student([r for r in self.store.read_jsonl(f"{it_name(k - 1)}/referee.jsonl") if r["hard"]])
        else:
            student = self.load_student(init, "for preference pairs")
            n = 1 if mode == "teacher_over_student" else self.recipe.train.dpo.samples
            settings = student.settings.model_copy(update={"temperature": 0.0 if n == 1 else 0.9})
            convs = answer_conversations(self.pack.spec.system_prompt, [r["instruction"] for r in rows for _ in range(n)])
            answers = [clean_answer(a) for a in student.generate(convs, settings=settings, description=f"student samples for DPO ({mode})")]
            del student
            samples = {r["id"]: answers[i * n : (i + 1) * n] for i, r in enumerate(rows)}
            if mode == "teacher_over_student":
                out = pairs.teacher_over_student([dict(r, teacher_answer=r["answer"], student_answer=samples[r["id"]][0]) for r in rows])
            else:
                out = pairs.referee_ranked(rows, samples, self.referee(self.referee_kinds()[0]))
        self.store.write_jsonl(f"{it}/dpo_pairs.jsonl", out)

    def stage_discriminate(self, k: int):
        """The student answers the cache pool; the referee scores teacher vs student; hard/easy split."""
        from sdk.adversarial.referee import Pair, agreement, gap_stats, rubric, split_hard_easy

        it, adv = it_name(k), self.recipe.adversarial
        cache_pool = self.store.read_jsonl(f"{it}/cache_pool.jsonl")
        teacher = self.teacher_answers(k)
        candidates = [r for r in cache_pool if r["id"] in teacher]  # an instruction the teacher failed on cannot be judged
        if adv.max_refereed and len(candidates) > adv.max_refereed:
            picked = set(r["id"] for r in random.Random(f"{self.recipe.seed}:{k}:referee").sample(candidates, adv.max_refereed))
            candidates = [r for r in candidates if r["id"] in picked]

        # S answers the cache pool (journaled: a resumed run does not answer twice)
        student = self.load_student(self.student_dir(k), f"iteration {k}")
        journal = self.store.journal(f"{it}/student_answers.partial.jsonl")

        def to_row(i: int, out) -> dict:
            row = candidates[i]
            answer = "" if isinstance(out, BaseException) else clean_answer(out)
            return {"id": row["id"], "instruction": row["instruction"], "answer": answer, "provenance": dict(row["provenance"], stage="student_answer", model=student.name)}

        convs = answer_conversations(self.pack.spec.system_prompt, [r["instruction"] for r in candidates])
        student.generate_journaled([r["id"] for r in candidates], convs, journal, to_row, f"student answers cache pool (iteration {k})")
        del student
        student_rows = [journal.done[r["id"]] for r in candidates]

        pairs = [Pair(r["id"], r["instruction"], teacher[r["id"]]["answer"], s["answer"]) for r, s in zip(candidates, student_rows)]
        verdicts = self.run_referees(pairs, f"{it}/referee", f"referee scores cache pool (iteration {k})")
        kinds = self.referee_kinds()
        by_id = {r["id"]: r for r in candidates}
        criteria = rubric(self.pack)
        rules = {}
        for kind, rows in verdicts.items():
            rules[kind] = split_hard_easy(rows, self.tau(), adv.severe_findings_hard)
            for row in rows:
                src = by_id[row["id"]]
                row.update(subarea=src.get("subarea"), task_type=src.get("task_type"), source=src.get("source"), tau=self.tau(), rubric=criteria)
                row["provenance"] = dict(src["provenance"], stage="referee", model=row.get("model", f"{self.teacher_name()} (likelihood)"))
        primary = verdicts[kinds[0]]
        hard = [self._split_row(by_id[r["id"]], r) for r in primary if r["hard"] is True]
        easy = [self._split_row(by_id[r["id"]], r) for r in primary if r["hard"] is False]
        stats = dict(gap_stats(primary), tau=self.tau(), split_rule=rules[kinds[0]], referee=kinds[0], criteria=criteria, cache_pool=len(cache_pool), without_teacher_answer=len(cache_pool) - len(teacher.keys() & {r["id"] for r in cache_pool}))
        if len(kinds) > 1:
            stats["agreement"] = agreement(primary, verdicts[kinds[1]])
            stats[kinds[1]] = gap_stats(verdicts[kinds[1]])
        log(f"{it}: {stats['hard']} hard, {stats['easy']} easy, {stats['unparsed']} unparsed; mean gap {stats['gap_mean']}; split by {stats['split_rule']}")
        outputs = [
            self.store.write_jsonl(f"{it}/student_answers.jsonl", student_rows),
            self.store.write_jsonl(f"{it}/referee.jsonl", primary),
            self.store.write_jsonl(f"{it}/hard.jsonl", hard),
            self.store.write_jsonl(f"{it}/easy.jsonl", easy),
            self.store.write_json(f"{it}/discrimination.json", stats),
        ]
        for kind in kinds[1:]:
            outputs.append(self.store.write_jsonl(f"{it}/referee.{kind}.jsonl", verdicts[kind]))
        journal.remove()
        for kind in kinds:
            self.store.journal(f"{it}/referee.{kind}.partial.jsonl").remove()
        return outputs

    @staticmethod
    def _split_row(source: dict, verdict: dict) -> dict:
        keep = ("id", "instruction", "subarea", "task_type", "source", "provenance")
        return {**{k: source.get(k) for k in keep}, "gap": verdict["gap"], "teacher_score": verdict["teacher_score"], "student_score": verdict["student_score"], "hard_because": verdict["hard_because"]}

    def stage_generate(self, k: int):
        from sdk.adversarial.generation import GenerationPlan, generate_instructions, parent_pools

        it, adv, cur = it_name(k), self.recipe.adversarial, self.recipe.curation
        plan = GenerationPlan(
            n_new=adv.new_per_iteration, max_attempts=adv.max_attempts, hard_share=adv.hard_share,
            rouge_threshold=cur.rouge_threshold, cosine_threshold=cur.cosine_threshold,
            min_words=cur.min_words, max_words=cur.max_words, seed=self.recipe.seed, iteration=k,
            min_domain_similarity=adv.min_domain_similarity, domain_references=tuple(s.instruction for s in self.pack.seeds()),
            feedback=adv.feedback,
        )  # fmt: skip
        cache_pool = self.store.read_jsonl(f"{it}/cache_pool.jsonl")
        # the parents of the generate_hard and generate_easy prompts: the referee's split, or (feedback none) the whole cache pool
        hard, easy = parent_pools(adv.feedback, self.store.read_jsonl(f"{it}/hard.jsonl"), self.store.read_jsonl(f"{it}/easy.jsonl"), cache_pool)
        journal = self.store.journal(f"{it}/generation.partial.jsonl")
        if plan.n_new and (hard or easy):
            generator_name = describe(self.recipe.models.generator, self.recipe.models)
            outcome = generate_instructions(self.pack, self.model("generator"), generator_name, hard, easy, cache_pool, plan, self.embedder(), journal, self.budget("generator"))
        else:
            from sdk.adversarial.generation import GenerationOutcome, generation_stats, side_targets

            outcome = GenerationOutcome()
            outcome.stats = generation_stats(outcome, 0, side_targets(plan.n_new, plan.hard_share, bool(hard), bool(easy)), plan)
        stats = outcome.stats
        log(f"{it}: generated {stats['kept']}/{stats['target']} new instructions ({stats['kept_hard']} from hard, {stats['kept_easy']} from easy) in {stats['attempts']} attempts; rejected {stats['rejected_by_reason']}")
        outputs = [
            self.store.write_jsonl(f"{it}/generated.jsonl", outcome.kept),
            self.store.write_jsonl(f"{it}/generation_rejected.jsonl", outcome.rejected),
            self.store.write_json(f"{it}/generation.json", stats),
        ]
        journal.remove()
        return outputs

    # the end ----------------------------------------------------------------------------------
    def iteration_metrics(self, k: int) -> dict:
        it = it_name(k)
        labeled = self.store.read_jsonl(f"{it}/teacher.jsonl")
        return {
            "iteration": k,
            "train_pool": len(labeled),
            "cache_pool": len(self.store.read_jsonl(f"{it}/cache_pool.jsonl")),
            "teacher_ok": sum(r["status"] == "ok" for r in labeled),
            "teacher_failed": sum(r["status"] != "ok" for r in labeled),
            "train": self.store.read_json(f"{it}/train_metrics.json"),
            "eval": self.store.read_json(f"{it}/eval.json")["summary"],
            "discrimination": self.store.read_json(f"{it}/discrimination.json"),
            "generation": self.store.read_json(f"{it}/generation.json") if self.store.path(it, "generation.json").is_file() else SKIPPED_GENERATION,
        }

    def student_init_metrics(self) -> dict:
        """The pruning record and the healing before/after, as metrics.json carries them."""
        record = self.store.read_json(student_stage.RECORD)
        heal = record.get("heal") or {}
        return {
            "prune": record.get("prune"),
            "heal": {k: heal.get(k) for k in ("steps", "train_loss", "runtime_s", "sequences", "corpus_chunks", "general_texts", "loss_history")} if heal else None,
            "before_heal": record.get("before_heal"),
            "after_heal": record.get("after_heal"),
            "path": record.get("path"),
        }

    def stage_finalize(self):
        from sdk.report import write_report

        last = self.recipe.adversarial.iterations - 1
        final = self.student_dir(last)
        if final is None:
            raise DistilleryError("no student was trained or built in this run, so there is none to hand back")
        tmp = self.store.path("student.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(final, tmp, symlinks=False)  # the last trained student is the run's student, in its own shape
        if student_kind(final) == "adapter" and (tmp / "adapter_config.json").is_file():
            from sdk.train.common import point_adapter_at

            point_adapter_at(tmp / "adapter_config.json", self.store.path("student", "base"))
        shutil.rmtree(self.store.path("student"), ignore_errors=True)
        tmp.rename(self.store.path("student"))
        shutil.copyfile(self.store.path(it_name(last), "eval_student.jsonl"), self.store.path("eval/student_after.jsonl"))

        eval_rows = self._eval_rows()
        teacher_answers = {r["id"]: (r.get("answer") or "") for r in self.store.read_jsonl("eval/teacher.jsonl")}
        before = self.store.read_json("eval/before.json")
        after = self.store.read_json(f"{it_name(last)}/eval.json")
        domain = {"before": before, "after": after, "teacher_vs_reference": score_answers(eval_rows, teacher_answers, teacher_answers)["summary"]}
        self.store.write_json("eval/domain.json", domain)

        iterations = [self.iteration_metrics(k) for k in range(last + 1)]
        knowledge = self.store.read_json("knowledge.json")
        steps, history, offset = 0, [], 0
        for m in iterations:
            for h in m["train"].get("loss_history", []):
                history.append({"step": h["step"] + offset, "loss": h["loss"], "iteration": m["iteration"], "stage": h["stage"]})
            offset += m["train"].get("steps", 0)
        first_losses = [m["train"].get("first_logged_loss") for m in iterations if m["train"].get("first_logged_loss") is not None]
        last_losses = [m["train"].get("last_logged_loss") for m in iterations if m["train"].get("last_logged_loss") is not None]
        metrics = {
            "domain": self.pack.name,
            "preset": self.recipe.preset,
            "models": {"teacher": self.teacher_name(), "student": self.student_name(), "referee": self.referee_kinds()[0]},
            "data": {
                "corpus_chunks": knowledge["chunks"],
                "corpus_files_skipped": len(knowledge["skipped"]),
                "synthesized": len(self.store.read_jsonl(f"{it_name(0)}/synthesized.jsonl")),
                "synthesis_rejected": len(self.store.read_jsonl(f"{it_name(0)}/synthesis_rejected.jsonl")),
                "train_pool": iterations[0]["train_pool"],
                "teacher_ok": sum(m["teacher_ok"] for m in iterations),
                "teacher_failed": sum(m["teacher_failed"] for m in iterations),
                "generated": sum(m["generation"]["kept"] for m in iterations),
                "cache_pool": iterations[-1]["cache_pool"] + iterations[-1]["generation"]["kept"],
                "eval_prompts": len(eval_rows),
            },
            "train": {
                "steps": offset,
                "first_logged_loss": first_losses[0] if first_losses else None,
                "last_logged_loss": last_losses[-1] if last_losses else None,
                "loss_history": history,
            },
            "eval": {"before": before["summary"], "after": after["summary"], "teacher": self.store.read_json("eval/teacher.json")["summary"], "teacher_vs_reference": domain["teacher_vs_reference"]},
            "student_init": self.student_init_metrics(),
            "relative_score": {
                "referee": self.referee_kinds()[0],
                "before": before["summary"]["relative_score"],
                "per_iteration": [m["eval"]["relative_score"] for m in iterations],
            },
            "iterations": iterations,
            "timings_s": self.timings,
        }
        if self.store.path("eval/forgetting.json").is_file():
            record = self.store.read_json("eval/forgetting.json")
            gate = record["gate"]
            metrics["forgetting"] = {"passed": gate["passed"], "verdict": gate["verdict"], "max_drop": gate["max_drop"], "replay_fraction": record["replay_fraction"], "limit": record["limit"], "hint": record["hint"], "tasks": gate["tasks"]}
            metrics["checks"] = {"forgetting": "passed" if gate["passed"] else "failed forgetting check"}
        self.store.write_json("metrics.json", metrics)
        report = write_report(self.store.root, metrics, status="finished")
        return [self.store.path("eval/domain.json"), self.store.path("metrics.json"), report, self.store.path("student")]
