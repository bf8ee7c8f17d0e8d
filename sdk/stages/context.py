"""The run context every stage gets: the resolved recipe, the pack, the run store and its layout, and
the models, budgets and referees, loaded on first use and shared between stages."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from sdk.config import Recipe
from sdk.errors import ConfigError, DistilleryError
from sdk.models import describe, load_chat_model, load_local
from sdk.models.local import LocalChatModel
from sdk.models.student import load_student_model, student_kind
from sdk.packs import Pack
from sdk.progress import log
from sdk.store import RunStore, referee_journal


class RunContext:
    def __init__(self, recipe: Recipe, pack: Pack, store: RunStore):
        self.recipe, self.pack, self.store = recipe, pack, store
        self.layout = store.layout
        self.timings: dict[str, float] = dict(
            store.manifest.get("timings", {})
        )  # seconds per stage, kept across resumes
        self._models: dict[str, object] = {}
        self._student: Optional[tuple[tuple, LocalChatModel]] = None  # the last student loaded, with its folder's key
        self._budgets: dict[str, object] = {}
        self.check_roles()

    def check_roles(self) -> None:
        """Every model-role check, before any compute: a recipe that cannot work fails in seconds."""
        from sdk.train.kd import check_kd_teacher

        models = self.recipe.models
        if models.student.provider == "pruned" and getattr(models, models.student.base).provider not in (
            "embedded",
            "hf",
        ):
            raise ConfigError(
                f"models.student is pruned from models.{models.student.base}, an {getattr(models, models.student.base).provider} "
                "endpoint without local weights; set models.student.base to a local role, or give the student its own "
                "weights (provider: hf)"
            )
        if "kd" in self.recipe.train.stages:
            check_kd_teacher(self.recipe)
        if not self.white_box_teacher():  # an endpoint scores given answers only as vLLM does: ask its free /tokenize
            if "rlaif" in self.recipe.train.stages:
                self.teacher.check_loglik("train.stages 'rlaif' (its reward)", "use train.stages [sft] or [sft, dpo]")
            if "likelihood" in self.referee_kinds():
                self.teacher.check_loglik(f"adversarial.referee={self.recipe.adversarial.referee}")
        if self.recipe.forgetting.enabled:
            from sdk.evaluate.forgetting import check_task_names

            check_task_names(self.forgetting_tasks())

    # models -----------------------------------------------------------------------------------
    def model(self, role: str):
        """A chat model for a role; roles with identical specs share one loaded model."""
        spec = getattr(self.recipe.models, role)
        key = spec.model_dump_json()
        if key not in self._models:
            self._models[key] = load_chat_model(spec, self.recipe.models)
        return self._models[key]

    def release_models(self) -> None:
        """Drop every loaded model (they reload on next use), e.g. before a launched training job."""
        import gc

        import torch

        self._models.clear()
        self._student = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def budget(self, role: str):
        """The role's budget (calls, tokens, cost), persisted in the run directory so a resume keeps counting."""
        from sdk.models.budget import Budget

        if role not in self._budgets:
            self._budgets[role] = Budget(getattr(self.recipe.models, role).budget, self.layout.budget(role), label=role)
        return self._budgets[role]

    @property
    def teacher(self):
        return self.model("teacher")

    def name(self, role: str) -> str:
        return describe(getattr(self.recipe.models, role), self.recipe.models)

    def white_box_teacher(self) -> bool:
        return self.recipe.models.teacher.provider != "openai"

    def embedder(self):
        from sdk.knowledge.embeddings import load_embedder

        return load_embedder(self.recipe.knowledge.embedder) if self.recipe.curation.cosine_threshold else None

    # the student ------------------------------------------------------------------------------
    def initial_student(self) -> Optional[Path]:
        """The student the loop starts from: the pruned and healed folder the `student` stage built
        (rebuilt if the cache was cleared), or None for a student that loads from its own spec."""
        from sdk.stages import student

        if not self.layout.student_init.is_file():
            raise DistilleryError("the initial student is not built yet (the `student` stage has not run)")
        path = self.store.read_json(self.layout.student_init).get("path")
        if path is not None and student_kind(path) is None:
            log(f"[yellow]the initial student {path} is gone from the cache; building it again[/yellow]")
            student.run(self)
            path = self.store.read_json(self.layout.student_init)["path"]
        return Path(path) if path else None

    def student_dir(self, k: int) -> Optional[Path]:
        """The student after iteration k (k = -1: the initial student). An iteration whose train stage
        recorded that it had nothing to train keeps the one before; anything else without a student is an error."""
        if k < 0:
            return self.initial_student()
        it = self.layout.iteration(k)
        if student_kind(it.student) is not None:
            return it.student
        if it.train_metrics.is_file() and self.store.read_json(it.train_metrics).get("skipped"):
            return self.student_dir(k - 1)
        raise DistilleryError(
            f"{it.student} holds no student (neither full weights nor a LoRA adapter); run `distill resume {self.store.root}` to train it again"
        )

    def load_student(self, path: Optional[Path], tag: str) -> LocalChatModel:
        """The student in `path` (None: from its spec) as a chat model. The last one loaded is kept: an iteration's
        eval and discriminate (and the last one's forgetting check) read the same folder; its key includes the
        folder's inode and mtime, so a folder trained again is loaded again."""
        settings = self.recipe.models.student.generation.model_copy(
            update={"max_new_tokens": self.recipe.eval.max_new_tokens, "batch_size": self.recipe.eval.batch_size}
        )
        stat = path.stat() if path is not None else None
        key = (str(path.resolve()), stat.st_ino, stat.st_mtime_ns) if path is not None else None
        if self._student is not None and key is not None and self._student[0] == key:
            student = self._student[1]
            student.name, student.settings = f"student ({tag})", settings
            return student
        self._student = None  # freed before the next one loads
        model, tok = (
            load_student_model(path) if path is not None else load_local(self.recipe.models.student, self.recipe.models)
        )
        student = LocalChatModel(model, tok, f"student ({tag})", settings)
        if key is not None:
            self._student = (key, student)
        return student

    def release_student(self) -> None:
        """Drop the kept student (before training, which loads its own copy)."""
        self._student = None

    def teacher_answers(self, k: int) -> dict[str, dict]:
        """Every usable teacher answer from iterations 0..k, by instruction id."""
        answers = {}
        for j in range(k + 1):
            for row in self.store.read_jsonl(self.layout.iteration(j).teacher):
                if row["status"] == "ok":
                    answers[row["id"]] = row
        return answers

    # referees ---------------------------------------------------------------------------------
    def referee_kinds(self) -> list[str]:
        """Which referees run; the first one decides the hard/easy split."""
        mode = self.recipe.adversarial.referee
        if mode == "auto":  # an endpoint teacher scores answers only if it is a vLLM server: ask for that explicitly
            return ["likelihood"] if self.white_box_teacher() else ["llm"]
        return {"likelihood": ["likelihood"], "llm": ["llm"], "both": ["llm", "likelihood"]}[mode]

    def teacher_scores_answers(self) -> bool:
        """Whether the teacher's log-likelihood of an answer can be had: a local teacher, or an endpoint that
        check_roles found able to score (vLLM), because the likelihood referee uses it."""
        return self.white_box_teacher() or "likelihood" in self.referee_kinds()

    def teacher_loglik(self, conversations, answers, description: str) -> list:
        """The teacher's mean per-token log-likelihood of each answer; an endpoint's calls are charged to its budget."""
        if self.white_box_teacher():
            return self.teacher.loglik(conversations, answers)
        return self.teacher.loglik(conversations, answers, budget=self.budget("teacher"), description=description)

    def referee(self, kind: str):
        from sdk.adversarial.referee import LikelihoodReferee, LLMReferee

        if kind == "likelihood":
            return LikelihoodReferee(self.pack, self.teacher_loglik, self.pack.spec.system_prompt)
        return LLMReferee(self.pack, self.model("referee"), self.name("referee"), self.budget("referee"))

    def run_referees(self, pairs, verdicts_file: Path, description: str) -> dict[str, list[dict]]:
        """Score pairs with every configured referee; verdicts are journaled beside verdicts_file."""
        results = {}
        for kind in self.referee_kinds():
            journal = self.store.journal(referee_journal(verdicts_file, kind))
            results[kind] = self.referee(kind).score(
                pairs, journal=journal, description=f"{description} ({kind} referee)"
            )
        return results

    def remove_referee_journals(self, verdicts_file: Path) -> None:
        for kind in self.referee_kinds():
            self.store.journal(referee_journal(verdicts_file, kind)).remove()

    # the corpus and the held-out set ------------------------------------------------------------
    def index_dir(self) -> Path:
        from sdk.paths import cache_dir

        if self.recipe.knowledge.index_dir:
            return Path(self.recipe.knowledge.index_dir)
        corpus_key = hashlib.sha256(str(self.pack.corpus_dir()).encode()).hexdigest()[:8]
        return cache_dir() / "indexes" / f"{self.pack.name}-{corpus_key}"

    def corpus_split(self) -> tuple[list[dict], list[dict]]:
        """(chunks for calibration and healing, held-out chunks for domain perplexity)."""
        from sdk.knowledge.heldout import split_chunks
        from sdk.store import read_jsonl

        path = self.index_dir() / "chunks.jsonl"
        return split_chunks(read_jsonl(path)) if path.is_file() else ([], [])

    def heldout_texts(self) -> list[str]:
        return [c["text"] for c in self.corpus_split()[1]][: self.recipe.eval.heldout_chunks]

    def eval_rows(self) -> list[dict]:
        rows = [r.model_dump() for r in self.pack.eval_rows()]
        return rows[: self.recipe.data.max_eval] if self.recipe.data.max_eval else rows

    def forgetting_tasks(self) -> list[str]:
        """The resolved recipe's task list (resolve_recipe), empty when the check is off."""
        f = self.recipe.forgetting
        return list(f.tasks or []) if f.enabled else []


def resolve_recipe(recipe: Recipe, pack: Pack) -> Recipe:
    """The recipe with the pack's defaults merged in, once: what config.yaml holds and every stage and the
    report read. (tau, the forgetting gate's max_drop and its tasks default to the pack's.)"""
    from sdk.evaluate.forgetting import resolve_tasks

    adv, f = recipe.adversarial, recipe.forgetting
    tau = adv.tau if adv.tau is not None else pack.spec.referee.tau
    max_drop = f.max_drop if f.max_drop is not None else pack.spec.forgetting.max_drop
    tasks = resolve_tasks(f.tasks, pack.spec.forgetting.tasks, local_only=f.local_only) if f.enabled else f.tasks
    return recipe.model_copy(
        update={
            "adversarial": adv.model_copy(update={"tau": tau}),
            "forgetting": f.model_copy(update={"max_drop": max_drop, "tasks": tasks}),
        }
    )
