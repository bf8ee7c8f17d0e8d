"""White-box knowledge distillation on the teacher's logits, with TRL's GKDTrainer.

Per completion token the loss is the generalized Jensen-Shannon divergence between the teacher's and
the student's next-token distributions (GKD, arXiv 2306.13649, eq. 1), both softened by temperature T:
    JSD_b(P_t || P_s) = b * KL(P_t || M) + (1 - b) * KL(P_s || M),   M = b * P_t + (1 - b) * P_s
which is forward KL(P_t || P_s) at b = 0 (mean-seeking, as in classic KD) and reverse KL(P_s || P_t)
at b = 1 (mode-seeking, MiniLLM's objective, arXiv 2306.08543). With probability `lmbda` a step
trains on completions the student samples itself (on-policy); otherwise on the teacher's answers.

The two models must share a vocabulary: a teacher with another tokenizer is refused before any
training, with a message that suggests the black-box objectives (sft, dpo).
"""

from __future__ import annotations

import os
from pathlib import Path

from sdk.config import Recipe
from sdk.errors import DistilleryError
from sdk.progress import log
from sdk.train.common import StageContext, full_weights, training_args_kwargs


def check_local_teacher(recipe: Recipe) -> None:
    """Online KD runs the teacher beside the student, so it needs the teacher's weights."""
    if recipe.models.teacher.provider == "openai":
        raise DistilleryError(
            "train.stages has 'kd' with kd.source online but models.teacher is an openai endpoint: online KD runs the "
            "teacher beside the student; an endpoint teacher is distilled white-box from its top-k log-probabilities "
            "instead (kd.source store or auto, with beta 0, lmbda 0); or use stages [sft] or [sft, dpo], or a local teacher"
        )


def tokenizer_for(spec, models):
    """A local spec's tokenizer alone (fast: no weights), to compare vocabularies before training."""
    from transformers import AutoTokenizer

    from sdk.models.embedded import embedded_model_dir

    if spec.provider == "pruned":  # a pruned model keeps its base's tokenizer
        return tokenizer_for(getattr(models, spec.base), models)
    if spec.provider == "embedded":
        return AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    kwargs = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    return AutoTokenizer.from_pretrained(spec.name_or_path, **kwargs)


def student_tokenizer(recipe: Recipe, init=None):
    from transformers import AutoTokenizer

    return (
        AutoTokenizer.from_pretrained(init) if init is not None else tokenizer_for(recipe.models.student, recipe.models)
    )


def check_same_tokenizer(teacher_tok, student_tok, teacher_name: str = "teacher") -> None:
    """Refuse KD when the token ids do not mean the same strings in both models."""
    t_vocab, s_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    if t_vocab != s_vocab:
        differ = len(set(t_vocab.items()) ^ set(s_vocab.items()))
        raise DistilleryError(
            f"train.stages has 'kd' but the {teacher_name}'s tokenizer differs from the student's "
            f"({len(t_vocab)} vs {len(s_vocab)} tokens, {differ} entries differ): white-box KD compares next-token "
            f"distributions over one shared vocabulary; use stages [sft] or [sft, dpo] for this teacher"
        )


def check_kd_teacher(recipe: Recipe) -> bool:
    """The teacher kd can learn from; True for a local one. An endpoint teacher is distilled from its top-k
    log-probabilities (the label stage stores them), which trains forward KL on its own answers only."""
    kd = recipe.train.kd
    if recipe.models.teacher.provider != "openai" or kd.source == "online":
        check_local_teacher(recipe)
        return True
    if kd.beta != 0 or kd.lmbda != 0 or kd.temperature != 1.0:
        raise DistilleryError(
            "white-box KD from an endpoint teacher trains on its stored top-k log-probabilities, forward KL on its "
            f"own answers: set train.kd.beta 0 and train.kd.lmbda 0 (got beta {kd.beta}, lmbda {kd.lmbda}, "
            f"temperature {kd.temperature}), or kd.source online with a local teacher"
        )
    return False


def kd_preflight(recipe: Recipe, init=None) -> None:
    """Fail fast, before any stage runs: a local teacher with the student's tokenizer."""
    from sdk.models import describe

    if not check_kd_teacher(recipe):
        return  # an endpoint's vocabulary is checked when the label stage asks it (/tokenize, or the first reply)
    check_same_tokenizer(
        tokenizer_for(recipe.models.teacher, recipe.models),
        student_tokenizer(recipe, init),
        f"teacher ({describe(recipe.models.teacher, recipe.models)})",
    )


def kd_dataset(rows: list[dict], system_prompt: str):
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "system", "content": system_prompt},
                    {"role": "user", "content": r["instruction"]},
                    {"role": "assistant", "content": r["answer"]},
                ]
            }
            for r in rows
        ]
    )


def _trainer_class():
    os.environ.setdefault(
        "TRL_EXPERIMENTAL_SILENCE", "1"
    )  # GKDTrainer (the TRL trainer with an on-policy fraction) lives in trl.experimental
    from trl.experimental.gkd import GKDTrainer

    class KDTrainer(GKDTrainer):
        """GKDTrainer whose divergence uses the configured temperature (GKD applies it to sampling only) and is
        computed in float32: under DeepSpeed's bf16 the logits are bf16, and a log-softmax over 49k entries in
        bf16 is off by about 0.01 nats, as large as the KL itself near the end of training (it read negative)."""

        def generalized_jsd_loss(self, student_logits, teacher_logits, *args, **kwargs):
            kwargs.setdefault("temperature", self.temperature)
            return GKDTrainer.generalized_jsd_loss(student_logits.float(), teacher_logits.float(), *args, **kwargs)

    return KDTrainer


def teacher_store(ctx: StageContext):
    """The teacher's stored top-k to train from (kd.source store, or auto when the label stage filled one), or None."""
    from sdk.train.logit_store import LogitStore

    kd, folder = ctx.settings.kd, ctx.request.teacher_logits
    found = folder is not None and (Path(folder) / "meta.json").is_file()
    if kd.source == "online" or (kd.source == "auto" and not found):
        return None
    if not found:
        raise DistilleryError(
            f"kd.source is 'store' but {folder} holds no stored teacher top-k (the label stage fills it)"
        )
    return LogitStore(folder)


def kd_stage(model, tokenizer, ctx: StageContext):
    """The kd objective: from the teacher's stored top-k when there is one (no teacher in memory), else online."""
    store = teacher_store(ctx)
    if store is not None:
        from sdk.train.kd_store import store_kd_trainer

        kd = ctx.settings.kd
        trainer = store_kd_trainer(model, tokenizer, ctx, store, kd.ce_weight)
        return trainer, {"examples": len(ctx.rows), "source": "store", "top_k": store.top_k, "ce_weight": kd.ce_weight}
    return online_kd(model, tokenizer, ctx)


def online_kd(model, tokenizer, ctx: StageContext):
    """GKD with the teacher loaded beside the student: any beta, on-policy sampling (lmbda), temperature."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gkd import GKDConfig

    from sdk.models import load_local

    recipe, kd = ctx.recipe, ctx.settings.kd
    check_local_teacher(recipe)
    with full_weights():
        teacher, t_tok = load_local(recipe.models.teacher, recipe.models)
    check_same_tokenizer(t_tok, tokenizer)
    stages = recipe.train.stages
    first = (
        ctx.init is None or (Path(ctx.init) / "prune.json").is_file()
    )  # the initial student: the spec's, or the pruned folder
    unhealed = recipe.heal.steps == 0 and first
    if kd.beta > 0.5 and unhealed and "sft" not in stages[: stages.index("kd")]:
        log(
            f"[yellow]kd with beta {kd.beta} (mostly reverse KL) starts from a student that was not fine-tuned: reverse KL is "
            "mode-seeking and can collapse such a student (heal.steps is 0) to empty answers (see docs/training.md); MiniLLM starts it from an "
            "SFT student, so consider train.stages [sft, kd][/yellow]"
        )
    args = GKDConfig(
        output_dir=str(ctx.stage_dir("kd")),
        max_length=ctx.settings.max_seq_length,
        beta=kd.beta,
        lmbda=kd.lmbda,
        temperature=kd.temperature,
        max_new_tokens=kd.max_new_tokens,
        packing=False,
        **training_args_kwargs(ctx.settings, ctx.seed, kd.learning_rate),
    )
    trainer = _trainer_class()(
        model=model,
        teacher_model=teacher,
        args=args,
        train_dataset=kd_dataset(ctx.rows, ctx.system_prompt),
        processing_class=tokenizer,
    )
    summary = {"examples": len(ctx.rows), "source": "online", "beta": kd.beta, "lmbda": kd.lmbda}
    return trainer, dict(summary, temperature=kd.temperature)
